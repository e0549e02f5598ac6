"""The lessons' regularizers: L1/L2 loss terms with a mask, label smoothing, coupled and
decoupled weight decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax import data as wdata
from wsjax.engine import Engine
from wsjax.models import create_model
from wsjax.objectives import Objective
from wsjax.optim import make_optimizer
from wsjax.train import StopRule, replica_keys


@pytest.fixture(scope="module")
def synthetic():
    ds = wdata.synthetic_dataset(256, 64, 10, image_shape=(8, 8, 3))
    return jax.device_put(ds.x_train), jax.device_put(ds.y_train)


def _train(synthetic, tx, objective=None, epochs=2):
    x, y = synthetic
    engine = Engine(create_model("mlp", 10, widths=(16,)), tx, batch_size=64,
                    input_shape=(8, 8, 3), objective=objective)
    keys = replica_keys([0])
    states, _ = engine.fit(engine.init_states(keys), keys, x, y, np.arange(256),
                           StopRule(threshold=2.0, max_epochs=epochs))
    return states.params


def test_l2_term_is_coupled_weight_decay(synthetic):
    as_loss = _train(synthetic, make_optimizer("momentum", 0.05),
                     Objective(l2=0.01, penalize="all"))
    as_decay = _train(synthetic, make_optimizer("momentum", 0.05, weight_decay=0.01))
    for a, b in zip(jax.tree.leaves(as_loss), jax.tree.leaves(as_decay)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_penalty_spares_biases_unless_told():
    params = {"dense": {"kernel": -jnp.ones((3, 2)), "bias": jnp.full((2,), 5.0)},
              "bn": {"scale": jnp.full((2,), 3.0)}}
    assert float(Objective(l1=0.1).penalty(params)) == pytest.approx(0.1 * 6)
    assert float(Objective(l1=0.1, penalize="all").penalty(params)) == pytest.approx(0.1 * 22)
    assert float(Objective(l2=0.1).penalty(params)) == pytest.approx(0.5 * 0.1 * 6)
    assert Objective().penalty(params) == 0.0


def test_label_smoothing_targets():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    got = Objective(label_smoothing=0.3).cross_entropy(logits, jnp.array([0]))
    targets = np.array([0.7 + 0.1, 0.1, 0.1])
    want = -(targets * jax.nn.log_softmax(logits)[0]).sum()
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        Objective(label_smoothing=1.0)
    with pytest.raises(ValueError, match="penalize"):
        Objective(penalize="biases")


def test_decoupled_weight_decay_is_adamw_and_sgdw():
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.0, 1.0])}
    grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

    def two_steps(tx):
        state, p = tx.init(params), params
        for _ in range(2):
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p

    ours = two_steps(make_optimizer("adam", 0.01, decoupled_weight_decay=0.1))
    ref = two_steps(optax.adamw(0.01, weight_decay=0.1))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # SGDW with momentum: the decay enters beside the momentum, not inside it.
    p = two_steps(make_optimizer("momentum", 0.1, momentum=0.9, decoupled_weight_decay=0.5))
    w0, g = params["w"], 0.1
    m1 = g
    w1 = w0 - 0.1 * (m1 + 0.5 * w0)
    m2 = 0.9 * m1 + g
    w2 = w1 - 0.1 * (m2 + 0.5 * w1)
    np.testing.assert_allclose(p["w"], w2, rtol=1e-6)
    # A mask leaves the biases undecayed.
    masked = two_steps(make_optimizer("sgd", 0.1, decoupled_weight_decay=0.5,
                                      decay_mask=lambda t: jax.tree.map(lambda x: x.ndim > 1,
                                                                        t)))
    np.testing.assert_allclose(masked["b"], params["b"] - 2 * 0.1 * 0.1)


def test_drop_block_drops_whole_squares_at_about_the_rate():
    from wsjax.models.dropout import drop_block

    x = jnp.ones((32, 16, 16, 4))
    y = np.asarray(drop_block(jax.random.PRNGKey(0), x, 0.15, 3))
    dropped = y == 0
    assert 0.1 < dropped.mean() < 0.2
    np.testing.assert_allclose(y.mean(), 1.0, rtol=1e-5)  # kept units rescaled
    # Every dropped unit lies in a fully dropped 3x3 square: opening the mask keeps it.
    window = (1, 3, 3, 1)
    eroded = -jax.lax.reduce_window(-dropped.astype(np.float32), -np.inf, jax.lax.max, window,
                                    (1, 1, 1, 1), "SAME")
    opened = jax.lax.reduce_window(eroded, -np.inf, jax.lax.max, window, (1, 1, 1, 1), "SAME")
    np.testing.assert_array_equal(np.asarray(opened) > 0.5, dropped)


@pytest.mark.parametrize("name, option", [("mlp", {"dropout": 0.5}),
                                          ("resnet18_narrow", {"dropblock": 0.2}),
                                          ("resnet18_narrow", {"dropout": 0.2})])
def test_dropout_only_in_training_with_a_key(name, option):
    from wsjax.models import init_variables

    model = create_model(name, 10, **option)
    variables = init_variables(model, jax.random.PRNGKey(0), (8, 8, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))

    def train(rngs=None):
        out = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
        return np.asarray(out[0])

    assert not np.allclose(train({"dropout": jax.random.PRNGKey(2)}),
                           train({"dropout": jax.random.PRNGKey(3)}))
    np.testing.assert_array_equal(train(), train())  # no key: every unit (BN recompute...)
    evaluated = model.apply(variables, x, train=False)
    plain = create_model(name, 10).apply(variables, x, train=False)
    np.testing.assert_array_equal(evaluated, plain)


def test_dropout_trains_through_the_engine(synthetic):
    params = _train(synthetic, make_optimizer("adam", 1e-3), epochs=1)
    x, y = synthetic
    engine = Engine(create_model("mlp", 10, widths=(16,), dropout=0.3),
                    make_optimizer("adam", 1e-3), batch_size=64, input_shape=(8, 8, 3))
    keys = replica_keys([0])
    states, _ = engine.fit(engine.init_states(keys), keys, x, y, np.arange(256),
                           StopRule(threshold=2.0, max_epochs=1))
    assert not np.allclose(states.params["head"]["kernel"][0], params["head"]["kernel"][0])
