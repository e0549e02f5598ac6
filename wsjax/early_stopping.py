"""Early stopping with the best state, and the learning curves that show why.

``fit_early_stopping`` trains R replicas with an ``Engine`` and evaluates them on a validation
split every ``EarlyStopping.every`` epochs. A replica whose validation metric has not improved
(by more than ``min_delta``) for ``patience`` evaluations stops, and each replica's best
parameters and BatchNorm statistics are kept on the device as one stacked state, updated by a
compiled per-replica select after each evaluation (no host copy of any weights). The best
states can be saved with Orbax (``wsjax.checkpoint``; ``load_warm_start`` reads them back).

>>> best, last, result = fit_early_stopping(engine, states, keys, x, y, train_idx, val_idx,
...                                         EarlyStopping(patience=5, max_epochs=100))
>>> result.best_epoch          # per replica
>>> plot_learning_curves(result, "curves.png")

The curves are the epochs' running training loss and accuracy (the engine's, from every
epoch) and the validation loss and accuracy at each evaluation: a validation loss that turns
up while the training loss keeps falling is overfitting, and the best epoch sits at its low.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.train import StopRule

MONITORS = ("val_loss", "val_acc")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """When to stop: ``monitor`` (``'val_loss'``, lower is better, or ``'val_acc'``) has not
    improved by more than ``min_delta`` in ``patience`` evaluations, one every ``every``
    epochs; ``max_epochs`` caps the run either way."""

    patience: int = 10
    monitor: str = "val_loss"
    min_delta: float = 0.0
    every: int = 1
    max_epochs: int = 200

    def __post_init__(self):
        for name in ("patience", "every", "max_epochs"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"EarlyStopping({name}={value!r}): must be an integer >= 1")
        if self.monitor not in MONITORS:
            raise ValueError(f"EarlyStopping(monitor={self.monitor!r}): choose from {MONITORS}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"EarlyStopping(min_delta={self.min_delta!r}): must be >= 0")

    def better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` by more than ``min_delta``."""
        if not math.isfinite(value):
            return False
        if self.monitor == "val_loss":
            return value < best - self.min_delta
        return value > best + self.min_delta


@dataclasses.dataclass
class EarlyStopResult:
    """Per replica: the ``best_epoch`` (0: the starting state was never beaten) and its
    ``best_value``; ``epochs`` trained and ``stop_reason`` (``'early_stopping'``, or the
    engine's: ``'max_epochs'``, ``'diverged'``). Curves: ``train_loss``/``train_acc`` (E, R)
    for every epoch, ``val_epochs`` (K,) and ``val_loss``/``val_acc`` (K, R) at each
    evaluation (epoch 0 is the starting state)."""

    monitor: str
    best_epoch: list[int]
    best_value: list[float]
    epochs: list[int]
    stop_reason: list[str]
    train_loss: np.ndarray
    train_acc: np.ndarray
    val_epochs: list[int]
    val_loss: np.ndarray
    val_acc: np.ndarray


@jax.jit
def _keep_better(better, best, new):
    """Per replica (leading axis), ``new`` where ``better`` else ``best``."""
    def one(b, n):
        return jnp.where(better.reshape((-1,) + (1,) * (n.ndim - 1)), n, b)

    return jax.tree.map(one, best, new)


def fit_early_stopping(engine, states, keys, x, y, train_idx, val_idx, rule: EarlyStopping,
                       *, checkpoint_dir: str | None = None,
                       on_eval: Callable[[dict], None] | None = None):
    """Trains ``states`` (R replicas) on ``x[train_idx]`` until ``rule`` stops each one;
    returns ``(best_states, last_states, EarlyStopResult)``. ``best_states`` holds each
    replica's best parameters and BatchNorm statistics (its optimizer state is the last one).
    ``on_eval(row)`` gets each evaluation's ``{'epoch', 'val_loss', 'val_acc'}`` (lists over
    replicas: for a metrics log); ``checkpoint_dir`` saves ``best_states`` there with Orbax
    (step = the latest best epoch; meta: every replica's best epoch and value)."""
    val_idx = np.asarray(val_idx)
    states = engine.place(states)
    start = engine.evaluate(states, x, y, val_idx)
    num = len(start["loss"])
    metric = "loss" if rule.monitor == "val_loss" else "acc"
    best_value = [float(v) for v in start[metric]]
    best_epoch, waited = [0] * num, [0] * num
    val_rows = [(0, start)]
    # Its own buffers: the engine donates the states it trains.
    best = jax.tree.map(jnp.copy, {"params": states.params, "batch_stats": states.batch_stats})

    def on_epoch(current, progress):
        nonlocal best
        epoch = progress.epoch
        # A replica the engine stopped this epoch (the cap) is evaluated whatever the cadence.
        finishing = [not progress.active[r] and progress.epochs[r] == epoch
                     for r in range(num)]
        if epoch % rule.every and not any(finishing):
            return
        ev = engine.evaluate(current, x, y, val_idx)
        val_rows.append((epoch, ev))
        if on_eval is not None:
            on_eval({"epoch": epoch, "val_loss": [float(v) for v in ev["loss"]],
                     "val_acc": [float(v) for v in ev["acc"]]})
        better = np.zeros(num, bool)
        for r in range(num):
            # A replica counts while it trained this epoch (active, or stopped by it).
            if progress.epochs[r] != epoch or progress.stop_reason[r] == "diverged":
                continue
            value = float(ev[metric][r])
            if rule.better(value, best_value[r]):
                better[r], best_value[r], best_epoch[r], waited[r] = True, value, epoch, 0
            else:
                waited[r] += 1
                if waited[r] >= rule.patience and progress.active[r]:
                    progress.active[r], progress.stop_reason[r] = False, "early_stopping"
        if better.any():
            best = _keep_better(jnp.asarray(better),
                                best, {"params": current.params,
                                       "batch_stats": current.batch_stats})

    # The engine's own rule only caps the epochs (the 99% rule would cut the curves short).
    last, progress = engine.fit(states, keys, x, y, train_idx,
                                StopRule(threshold=2.0, max_epochs=rule.max_epochs),
                                on_epoch=on_epoch)
    best_states = last.replace(params=best["params"], batch_stats=best["batch_stats"])
    history = progress.history

    def column(name):
        return np.array([[np.nan if v is None else v for v in h[name]] for h in history])

    result = EarlyStopResult(
        monitor=rule.monitor, best_epoch=best_epoch, best_value=best_value,
        epochs=list(progress.epochs), stop_reason=list(progress.stop_reason),
        train_loss=column("train_loss"), train_acc=column("train_acc"),
        val_epochs=[e for e, _ in val_rows],
        val_loss=np.array([ev["loss"] for _, ev in val_rows]),
        val_acc=np.array([ev["acc"] for _, ev in val_rows]))
    if checkpoint_dir is not None:
        from wsjax.checkpoint import Checkpointer

        with Checkpointer(checkpoint_dir) as ckpt:
            ckpt.save(max(best_epoch), best_states,
                      meta={"best_epoch": best_epoch, "best_value": best_value,
                            "monitor": rule.monitor})
    return best_states, last, result


def plot_learning_curves(result: EarlyStopResult, path: str, replica: int = 0) -> str:
    """Training and validation loss and accuracy of one replica against the epoch, its best
    epoch marked; saved to ``path``. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(result.train_loss) + 1)
    for ax, key in zip(axes, ("loss", "acc")):
        ax.plot(epochs, getattr(result, f"train_{key}")[:, replica], label="train (running)")
        ax.plot(result.val_epochs, getattr(result, f"val_{key}")[:, replica], "o-", ms=3,
                label="validation")
        ax.axvline(result.best_epoch[replica], color="gray", ls="--", lw=1,
                   label=f"best epoch ({result.best_epoch[replica]})")
        ax.set(xlabel="epoch", ylabel=key)
        ax.legend(fontsize=8)
    fig.suptitle(f"learning curves (replica {replica}; stopped: "
                 f"{result.stop_reason[replica]} after {result.epochs[replica]} epochs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
