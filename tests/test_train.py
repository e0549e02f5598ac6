import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax import warmstart
from wsjax.engine import Engine, make_epoch_fn
from wsjax.models import create_model, init_variables
from wsjax.optim import kernels_only, make_optimizer
from wsjax.train import (FitProgress, StopRule, TrainState, make_train_step, pad_indices,
                         replica_keys)

# What these tests compare (loops, replica layouts) does not depend on depth: a ResNet with one
# block per stage (a ResNet-10, still with BatchNorm and projection shortcuts) compiles in half
# the time of the ResNet-18.
ONE_BLOCK = {"blocks_per_stage": (1, 1, 1, 1)}


def init_replicas(model, tx, keys, input_shape):
    return Engine(model, tx, input_shape=input_shape).init_states(keys)


def _batch(ds, n=32):
    return {"image": jnp.asarray(ds.x_train[:n]), "label": jnp.asarray(ds.y_train[:n]),
            "mask": jnp.ones(n, bool)}


class TrainStepTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_step_is_pure_and_learns(self):
        from wsjax.data import synthetic_dataset
        ds = synthetic_dataset(64, 8, 4, (8, 8, 3))
        model = create_model("mlp", 4, widths=(16,))
        tx = make_optimizer("momentum", 0.05)
        state = TrainState.create(init_variables(model, jax.random.key(0), (8, 8, 3)), tx)
        step = self.variant(make_train_step(model, tx))
        batch = _batch(ds)
        s1, m1 = step(state, batch, jax.random.key(1))
        s1b, _ = step(state, batch, jax.random.key(1))
        chex.assert_trees_all_close(s1, s1b)
        assert int(s1.step) == 1 and float(m1["count"]) == 32
        losses = [float(m1["loss_sum"])]
        s = s1
        for i in range(5):
            s, m = step(s, batch, jax.random.key(i))
            losses.append(float(m["loss_sum"]))
        assert losses[-1] < losses[0]


def test_step_updates_batch_norm_statistics(tiny):
    model = create_model("resnet18_narrow", 4, widths=(4, 4, 4, 4))
    tx = make_optimizer("sgd", 0.01)
    state = TrainState.create(init_variables(model, jax.random.key(0), (8, 8, 3)), tx)
    batch = _batch(tiny, 8)
    batch["mask"] = batch["mask"].at[6:].set(False)
    new, sums = jax.jit(make_train_step(model, tx))(state, batch, jax.random.key(0))
    assert float(sums["count"]) == 6
    assert not np.allclose(new.batch_stats["stem_bn"]["mean"], 0)
    assert not np.allclose(new.params["stem_conv"]["kernel"], state.params["stem_conv"]["kernel"])


def test_coupled_weight_decay_is_pytorch_sgd():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([0.1, 0.2]), "b": jnp.array([1.0])}
    tx = make_optimizer("sgd", 0.1, weight_decay=0.01)
    upd, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, upd)
    for k in params:  # p <- p - lr * (g + wd * p)
        np.testing.assert_allclose(new[k], params[k] - 0.1 * (grads[k] + 0.01 * params[k]),
                                   rtol=1e-6)
    tx = make_optimizer("sgd", 0.1, weight_decay=0.01, decay_mask=kernels_only)
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, upd)["b"], 0.5 - 0.1 * 1.0)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="learning_rate=0"):
        make_optimizer("sgd", 0)
    with pytest.raises(ValueError, match="weight_decay"):
        make_optimizer("adam", 1e-3, weight_decay=-1)


def test_stop_rule():
    rule = StopRule(threshold=0.99, max_epochs=10, plateau_window=3, plateau_std=0.002)
    assert rule.reason([0.5, 0.995]) == "threshold"
    assert rule.reason([0.5, 0.6, 0.7]) is None
    assert rule.reason([0.5, 0.7001, 0.7003, 0.7002]) == "plateau"
    assert rule.reason([0.1 * i % 0.9 for i in range(10)]) == "max_epochs"
    with pytest.raises(ValueError, match="max_epochs"):
        StopRule(max_epochs=0)


@pytest.fixture(scope="module")
def setup(tiny):
    model = create_model("mlp", tiny.num_classes, widths=(32,))
    tx = make_optimizer("adam", 3e-3)
    x, y = jax.device_put(tiny.x_train), jax.device_put(tiny.y_train)
    return model, tx, x, y


def test_epoch_partial_batch_and_no_recompile(setup):
    model, tx, x, y = setup
    vmapped = make_epoch_fn(model, tx, batch_size=64, jit=False)
    epoch = jax.jit(chex.assert_max_traces(lambda *a: vmapped(*a), n=1))
    keys = replica_keys([0, 1])
    states = init_replicas(model, tx, keys, (8, 8, 3))
    active = jnp.array([True, True])
    for n in (150, 250):  # a new training-set size reuses the compiled epoch
        idx, n = pad_indices(np.arange(n), 300)
        states, sums = epoch(states, keys, active, x, y, jnp.asarray(idx), n)
        np.testing.assert_array_equal(sums["count"], [n, n])
    assert int(states.step[0]) == 3 + 4  # ceil(150/64) + ceil(250/64)


def test_inactive_replica_is_unchanged(setup):
    model, tx, x, y = setup
    epoch = Engine(model, tx, batch_size=64, input_shape=(8, 8, 3)).epoch
    keys = replica_keys([0, 1])
    states = init_replicas(model, tx, keys, (8, 8, 3))
    before = jax.tree.map(lambda a: np.asarray(a[1]), states)
    idx, n = pad_indices(np.arange(200))
    after, _ = epoch(states, keys, jnp.array([True, False]), x, y, jnp.asarray(idx), n)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[1], after), before)
    assert int(after.step[0]) == 4


def test_vmapped_seeds_equal_separate_runs(setup):
    model, tx, x, y = setup
    engine = Engine(model, tx, batch_size=64, input_shape=(8, 8, 3))
    stop = StopRule(threshold=0.95, max_epochs=6)
    seeds = [3, 7, 11]

    def run(seed_list):
        keys = replica_keys(seed_list)
        return engine.fit(engine.init_states(keys), keys, x, y, np.arange(240), stop)

    together, prog = run(seeds)
    for r, seed in enumerate(seeds):
        alone, prog1 = run([seed])
        assert prog1.epochs[0] == prog.epochs[r] and prog1.stop_reason[0] == prog.stop_reason[r]
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], alone.params),
                                    jax.tree.map(lambda a: a[r], together.params),
                                    rtol=1e-4, atol=1e-4)
    assert all(p.epoch == len(p.history) for p in [prog])


def test_fit_resumes_exactly(setup):
    model, tx, x, y = setup
    engine = Engine(model, tx, batch_size=64, input_shape=(8, 8, 3))
    stop = StopRule(threshold=1.01, max_epochs=4)
    keys = replica_keys([0, 1])
    fresh = lambda: engine.init_states(keys)
    full, prog = engine.fit(fresh(), keys, x, y, np.arange(200), stop)
    saved = {}

    def crash_after_two(states, progress):
        if progress.epoch == 2:
            saved["states"] = jax.tree.map(np.asarray, states)
            saved["progress"] = progress.to_dict()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(fresh(), keys, x, y, np.arange(200), stop, on_epoch=crash_after_two)
    states = jax.tree.map(jnp.asarray, saved["states"])
    resumed, prog2 = engine.fit(states, keys, x, y, np.arange(200), stop,
                                progress=FitProgress.from_dict(saved["progress"]))
    chex.assert_trees_all_close(resumed, full)
    assert prog2.epochs == prog.epochs == [4, 4]


@pytest.mark.parametrize("loop", ["device", "host"])
def test_exact_evaluation(setup, tiny, loop):
    model, tx, x, y = setup
    engine = Engine(model, tx, eval_batch_size=64, loop=loop, input_shape=(8, 8, 3))
    states = engine.init_states(replica_keys([0, 1]))
    idx = jnp.arange(37, 137)  # 100 examples: one full and one partial batch
    out = engine.evaluate(states, x, y, idx)
    variables = jax.tree.map(lambda a: a[1], states).variables
    logits = model.apply(variables, tiny.x_train[37:137] / 127.5 - 1.0)
    acc = float(np.mean(np.argmax(logits, -1) == tiny.y_train[37:137]))
    loss = float(optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                 tiny.y_train[37:137]).mean())
    np.testing.assert_allclose(out["acc"][1], acc)
    np.testing.assert_allclose(out["loss"][1], loss, rtol=1e-5)


def test_pad_indices_errors():
    with pytest.raises(ValueError, match="exceed capacity"):
        pad_indices(np.arange(5), 3)
    with pytest.raises(ValueError, match="empty"):
        pad_indices(np.arange(0))


def test_host_and_device_loops_agree(tiny):
    model = create_model("resnet18_narrow", 4, widths=(4, 4, 4, 4), **ONE_BLOCK)
    tx = make_optimizer("momentum", 0.05)
    keys = replica_keys([0, 1])
    x, y = jax.device_put(tiny.x_train), jax.device_put(tiny.y_train)
    idx, n = pad_indices(np.arange(100), 120)
    out = {}
    for loop in ("device", "host"):
        for replicas in ("vmap", "unroll"):
            engine = Engine(model, tx, batch_size=32, loop=loop, replicas=replicas,
                            input_shape=(8, 8, 3))
            out[loop, replicas] = engine.epoch(engine.init_states(keys), keys,
                                               jnp.array([True, False]), x, y,
                                               jnp.asarray(idx), n)
    # The last batch has 4 examples, so stage 4's BN sees four 1x1 maps: a one-pass variance
    # made the two compilations differ by 1e-2 here (jax 0.7); the two-pass one agrees to ~1e-5.
    for layout in out:
        chex.assert_trees_all_close(out[layout], out["device", "vmap"], rtol=1e-4, atol=1e-4)
    assert int(out["host", "unroll"][0].step[0]) == 4
    assert int(out["host", "unroll"][0].step[1]) == 0
    with pytest.raises(ValueError, match="loop='gpu'"):
        Engine(model, tx, batch_size=32, loop="gpu", input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="jit=False"):
        make_epoch_fn(model, tx, batch_size=32, loop="host", jit=False)


@pytest.mark.parametrize("loop,replicas", [("device", "vmap"), ("host", "vmap"),
                                           ("host", "unroll")])
def test_passes_over_data_are_exact(tiny, loop, replicas):
    """predict, grad_norms and recompute_batch_stats against direct computations, in both
    loop kinds and replica layouts (a padded last batch, so every example counts once)."""
    model = create_model("resnet18_narrow", 4, widths=(4, 4, 4, 4), **ONE_BLOCK)
    engine = Engine(model, make_optimizer("sgd", 0.1), batch_size=16, eval_batch_size=24,
                    loop=loop, replicas=replicas, input_shape=(8, 8, 3))
    states = engine.init_states(replica_keys([0, 1]))
    x, y = jax.device_put(tiny.x_train), jax.device_put(tiny.y_train)
    images = lambda ids: tiny.x_train[ids] / 127.5 - 1.0
    one = jax.tree.map(lambda a: a[1], states)
    idx = np.arange(10, 60)  # 50 examples: 3 batches of 24, the last padded
    probs = engine.predict(states, x, idx)
    assert probs.shape == (2, 50, 4)
    expect = jax.nn.softmax(model.apply(one.variables, images(idx), train=False))
    np.testing.assert_allclose(probs[1], expect, rtol=1e-4, atol=1e-6)

    def norm(ids):
        def loss(p):
            logits, _ = model.apply({"params": p, "batch_stats": one.batch_stats}, images(ids),
                                    train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tiny.y_train[ids]).mean()
        grads = jax.tree.leaves(jax.grad(loss)(one.params))
        return np.sqrt(sum(float(jnp.sum(g ** 2)) for g in grads))

    # Whole batches of 16 only: 50 examples give 3 (the last 2 examples are left out).
    want = np.mean([norm(idx[i * 16:(i + 1) * 16]) for i in range(3)])
    np.testing.assert_allclose(engine.grad_norms(states, x, y, idx)[1], want, rtol=1e-4)
    # One batch of all 16 examples: the statistics are those 16 examples' moments.
    stats = engine.recompute_batch_stats(states.params, states.batch_stats, x, idx[:16],
                                         jax.random.key(0), num_batches=1)
    direct = warmstart.recompute_batch_stats(model, one.params, one.batch_stats,
                                             images(idx[:16])[None])
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[1], stats), direct, rtol=1e-4,
                                atol=1e-5)


def test_engine_replace_keeps_the_other_decisions(setup):
    model, tx, _, _ = setup
    engine = Engine(model, tx, batch_size=64, eval_batch_size=32, input_shape=(8, 8, 3))
    other = engine.replace(batch_size=16)
    assert (other.batch_size, other.eval_batch_size, other.input_shape) == (16, 32, (8, 8, 3))
    with pytest.raises(ValueError, match="no option"):
        engine.replace(batchsize=16)


def test_the_plateau_fallback_cannot_stop_a_warm_start_in_its_first_epochs():
    """A warm start's first epochs may be flat: the fallback waits ``plateau_min_epochs``."""
    rule = StopRule(threshold=0.99, max_epochs=100, plateau_window=5, plateau_min_epochs=20)
    flat = [0.60] * 19
    assert rule.reason(flat) is None
    assert rule.reason(flat + [0.60]) == "plateau"
    climbing = [0.60 + 0.003 * e for e in range(40)]  # slow but steady: not a plateau
    assert rule.reason(climbing) is None
    # The official rule is the default: no plateau, however flat.
    assert StopRule(max_epochs=100).reason([0.6] * 99) is None


def test_the_flags_default_to_the_official_stop_rule():
    from wsjax.experiments.common import StopConfig, stop_rule

    assert stop_rule(StopConfig()) == StopRule(0.99, 350, None, 0.002, 20)
    assert stop_rule(StopConfig(plateau_window=5)).plateau_min_epochs == 20
    assert stop_rule(StopConfig(plateau_window=0)).plateau_window is None
