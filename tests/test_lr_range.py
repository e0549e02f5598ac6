"""The learning-rate range test (one replica per rate, one program) and the 2-D toy sets."""

import jax
import numpy as np
import pytest

from wsjax import data as wdata
from wsjax.engine import Engine
from wsjax.lr_range import lr_range_test
from wsjax.optim import injected, with_hyperparams
from wsjax.models import create_model
from wsjax.toy_data import TOY_SETS, playground, points
from wsjax.train import StopRule, replica_keys

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once


@pytest.fixture(scope="module")
def synthetic():
    ds = wdata.synthetic_dataset(1024, 256, 10, image_shape=(8, 8, 3))
    return jax.device_put(ds.x_train), jax.device_put(ds.y_train)


def test_each_replica_steps_with_its_own_rate(synthetic):
    x, y = synthetic
    engine = Engine(create_model("mlp", 10, widths=(16,)), injected("sgd", 1.0),
                    batch_size=64, input_shape=(8, 8, 3))
    states = engine.new_state(engine.init(replica_keys([0, 0])))  # one init, twice
    states = states.replace(opt_state=with_hyperparams(states.opt_state,
                                                       learning_rate=[0.1, 0.025]))
    before = np.asarray(states.params["head"]["kernel"])  # fit donates the states
    keys = replica_keys([5, 5])
    after, _ = engine.fit(states, keys, x, y, np.arange(64), StopRule(threshold=2.0,
                                                                      max_epochs=1))
    # One plain SGD step from the same point on the same batch: the updates differ by 4x.
    delta = np.asarray(after.params["head"]["kernel"]) - before
    np.testing.assert_allclose(delta[0], 4 * delta[1], rtol=1e-4, atol=1e-7)


def test_with_hyperparams_names_what_is_wrong():
    engine = Engine(create_model("logreg", 10), injected("adam", 1e-3), input_shape=(8, 8, 3))
    states = engine.new_state(engine.init(replica_keys([0, 1])))
    with pytest.raises(ValueError, match="no hyperparameter 'momentum'"):
        with_hyperparams(states.opt_state, momentum=[0.9, 0.9])
    with pytest.raises(ValueError, match="3 values for 2 replicas"):
        with_hyperparams(states.opt_state, learning_rate=[1.0, 2.0, 3.0])


def test_range_test_finds_the_rates_that_diverge(synthetic, tmp_path):
    x, y = synthetic
    result = lr_range_test(create_model("mlp", 10, widths=(32,)), "sgd",
                           [100.0, 10.0, 0.3, 0.0003], x, y, np.arange(768),
                           np.arange(768, 1024), epochs=3, batch_size=64,
                           input_shape=(8, 8, 3))
    assert result.verdicts[:2] == ["diverged", "diverged"]
    assert result.diverged_at[0] is not None and result.diverged_at[0][0] == 1
    assert result.verdicts[2] == "converges" and result.verdicts[3] == "stalled"
    assert result.final_loss[2] < 0.9 * result.initial_loss < result.final_loss[3]
    # Curves stop where a replica diverged and run on where it did not.
    assert np.isnan(result.train_loss[:, 0]).all()
    assert np.isfinite(result.train_loss[:, 2:]).all()
    assert "diverged at epoch 1" in result.table()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "lr.png").name in result.plot(str(tmp_path / "lr.png"))


def test_range_test_rejects_bad_rates(synthetic):
    x, y = synthetic
    with pytest.raises(ValueError, match="positive finite learning rates"):
        lr_range_test(create_model("logreg", 10), "sgd", [0.1, -1.0], x, y, np.arange(8),
                      input_shape=(8, 8, 3))


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_balanced_bounded_and_reproducible(name):
    xy, labels = points(name, jax.random.PRNGKey(0), 2000, noise=0.05)
    xy, labels = np.asarray(xy), np.asarray(labels)
    assert xy.shape == (2000, 2) and xy.dtype == np.float32 and labels.dtype == np.int32
    assert 0.45 < labels.mean() < 0.55
    assert np.abs(xy).max() < 9.0
    again = np.asarray(points(name, jax.random.PRNGKey(0), 2000, noise=0.05)[0])
    np.testing.assert_array_equal(xy, again)
    clean = np.asarray(points(name, jax.random.PRNGKey(0), 2000)[0])
    assert 0 < np.abs(xy - clean).mean() < 0.5


def test_toy_geometry():
    xy, labels = map(np.asarray, points("circles", jax.random.PRNGKey(1), 1000))
    radius = np.linalg.norm(xy, axis=1)
    assert radius[labels == 0].max() <= 2.5 + 1e-5 and radius[labels == 1].min() >= 3.5 - 1e-5
    xy, labels = map(np.asarray, points("xor", jax.random.PRNGKey(1), 1000))
    np.testing.assert_array_equal(labels, (xy[:, 0] * xy[:, 1] > 0).astype(np.int32))


def test_playground_split_and_training():
    ds = playground("xor", n=600, noise=0.02, train_ratio=0.75, seed=3)
    assert ds.x_train.shape == (450, 1, 1, 2) and ds.x_test.shape == (150, 1, 1, 2)
    engine = Engine(create_model("mlp", 2, widths=(8, 8), activation="tanh"),
                    injected("adam", 0.03), batch_size=32, normalization="none",
                    input_shape=(1, 1, 2))
    keys = replica_keys([0])
    states, _ = engine.fit(engine.init_states(keys), keys, engine.put(ds.x_train),
                           engine.put(ds.y_train), np.arange(450),
                           StopRule(threshold=2.0, max_epochs=30))
    acc = engine.evaluate(states, engine.put(ds.x_test), engine.put(ds.y_test),
                          np.arange(150))["acc"]
    assert acc[0] > 0.9
    with pytest.raises(ValueError, match="unknown toy set 'moons'"):
        playground("moons")
    with pytest.raises(ValueError, match="train_ratio"):
        playground("xor", train_ratio=1.0)
