"""Early stopping with each replica's best state kept on the device, and its curves."""

import jax
import numpy as np
import pytest

from wsjax import data as wdata
from wsjax.checkpoint import Checkpointer
from wsjax.early_stopping import EarlyStopping, fit_early_stopping, plot_learning_curves
from wsjax.engine import Engine
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.train import replica_keys


@pytest.fixture(scope="module")
def overfitting():
    """Synthetic images with 40% of the training labels shuffled: a wide MLP overfits."""
    ds = wdata.synthetic_dataset(600, 64, 10, image_shape=(8, 8, 3))
    rng = np.random.default_rng(0)
    y = ds.y_train.copy()
    flip = rng.random(len(y)) < 0.4
    y[flip] = rng.integers(0, 10, flip.sum())
    engine = Engine(create_model("mlp", 10, widths=(128,)), make_optimizer("adam", 3e-3),
                    batch_size=32, input_shape=(8, 8, 3))
    return engine, jax.device_put(ds.x_train), jax.device_put(y)


def test_best_state_is_the_best_epochs_and_replicas_stop_on_their_own(overfitting, tmp_path):
    engine, x, y = overfitting
    keys = replica_keys([0, 1, 2])
    val = np.arange(400, 600)
    best, last, result = fit_early_stopping(
        engine, engine.init_states(keys), keys, x, y, np.arange(400), val,
        EarlyStopping(patience=3, max_epochs=40), checkpoint_dir=str(tmp_path / "best"))
    assert result.stop_reason == ["early_stopping"] * 3
    for r in range(3):
        # Stopped after `patience` evaluations without improvement on its best.
        assert result.epochs[r] == result.best_epoch[r] + 3
    loss_best = engine.evaluate(best, x, y, val)["loss"]
    np.testing.assert_allclose(loss_best, result.best_value, rtol=1e-5)
    assert (loss_best <= engine.evaluate(last, x, y, val)["loss"]).all()
    # The curves: every epoch trained, an evaluation per epoch from epoch 0.
    assert result.train_loss.shape == (max(result.epochs), 3)
    assert result.val_epochs == list(range(max(result.epochs) + 1))
    # Saved with Orbax: the weights restore bit for bit.
    with Checkpointer(tmp_path / "best") as ckpt:
        assert ckpt.latest_step() == max(result.best_epoch)
        restored = ckpt.restore_weights()
    for a, b in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(best.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pytest.importorskip("matplotlib")
    plot_learning_curves(result, str(tmp_path / "curves.png"), replica=1)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_cadence_and_cap(overfitting):
    engine, x, y = overfitting
    keys = replica_keys([0])
    _, _, result = fit_early_stopping(
        engine, engine.init_states(keys), keys, x, y, np.arange(400), np.arange(400, 600),
        EarlyStopping(patience=50, every=2, max_epochs=5, monitor="val_acc"))
    assert result.stop_reason == ["max_epochs"] and result.epochs == [5]
    assert result.val_epochs == [0, 2, 4, 5]  # the capped last epoch is evaluated too
    assert 0 <= result.best_epoch[0] <= 5 and result.monitor == "val_acc"


def test_rule_checks_its_settings():
    with pytest.raises(ValueError, match="patience=0"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="monitor='train_loss'"):
        EarlyStopping(monitor="train_loss")
    assert EarlyStopping().better(1.0, 2.0) and not EarlyStopping().better(float("nan"), 2.0)
    assert EarlyStopping(monitor="val_acc", min_delta=0.1).better(0.75, 0.6)
    assert not EarlyStopping(monitor="val_acc", min_delta=0.1).better(0.65, 0.6)
