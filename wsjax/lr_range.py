"""The learning-rate range test: one replica per learning rate, all trained in one compiled
program, and which of them diverge, stall or converge.

A training lesson tries lr 100, 10, 1, 0.2 and 0.001 one run at a time; here the rates are the
replicas of one ``Engine``: the optimizer is wrapped in ``optax.inject_hyperparams``, so its
learning rate lives in the optimizer state, and each replica's state gets its own
(``wsjax.optim.injected``, ``with_hyperparams``). Every replica starts from the same
initialization (one seed) unless ``same_init=False``, so the rates are all that differs. The
engine's ``DivergenceGuard`` stops a replica whose step blew up (a non-finite loss or
parameters, or a loss above 100 x ln C) and keeps it out of the others' way.

>>> result = lr_range_test(create_model("mlp", 10), "sgd", [100, 10, 1, 0.2, 0.001],
...                        x, y, train_idx, epochs=5)
>>> result.verdicts            # e.g. ['diverged', 'diverged', 'diverged', 'stalled', ...]
>>> result.plot("lr_range.png")
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from wsjax.engine import Engine
from wsjax.optim import injected, with_hyperparams
from wsjax.train import StopRule, replica_keys

VERDICTS = ("diverged", "stalled", "converges")


@dataclasses.dataclass
class RangeResult:
    """What a range test found, one entry per learning rate (in the order given).

    ``initial_loss``: training loss at the shared start; ``train_loss``: (epochs, R) mean
    training loss of each epoch, NaN once a replica has diverged; ``final_loss``: training loss
    of the last state (for a diverged replica, its last finite one); ``val_loss``/``val_acc``
    on ``val_idx`` when given; ``diverged_at``: (epoch, step) where the guard stopped a
    replica, else None; ``verdicts``: ``'diverged'`` (the guard stopped it, or it ended with a
    higher loss than it started with), ``'converges'`` (its final loss is at least
    ``min_improvement`` (a share) below the initial loss), else ``'stalled'``.
    """

    lrs: list[float]
    initial_loss: float
    train_loss: np.ndarray
    final_loss: list[float]
    val_loss: list[float] | None
    val_acc: list[float] | None
    diverged_at: list[tuple[int, int] | None]
    verdicts: list[str]

    def table(self) -> str:
        """One line per learning rate: verdict, final training loss, validation accuracy."""
        lines = [f"initial training loss {self.initial_loss:.3f}"]
        for i, lr in enumerate(self.lrs):
            val = "" if self.val_acc is None else f"  val acc {self.val_acc[i]:.3f}"
            where = (f"  (diverged at epoch {self.diverged_at[i][0]}, step "
                     f"{self.diverged_at[i][1]})" if self.diverged_at[i] else "")
            lines.append(f"lr {lr:<10g} {self.verdicts[i]:<10} final loss "
                         f"{self.final_loss[i]:.3f}{val}{where}")
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """Final training loss against learning rate (log scale), diverged rates marked with
        a cross at the top of the axes; saved to ``path``. Needs matplotlib."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        lrs = np.asarray(self.lrs, dtype=float)
        loss = np.asarray(self.final_loss, dtype=float)
        ok = np.array([v != "diverged" for v in self.verdicts])
        ax.plot(lrs[ok], loss[ok], "o-", label="final training loss")
        ax.axhline(self.initial_loss, color="gray", ls="--", lw=1, label="initial loss")
        top = max(self.initial_loss, *loss[ok]) * 1.3 if ok.any() else self.initial_loss * 1.3
        if (~ok).any():
            ax.plot(lrs[~ok], np.full((~ok).sum(), top), "rx", ms=9, label="diverged")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
               ylim=(0, top * 1.08), title="learning-rate range test")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def lr_range_test(model, optimizer: str, lrs: Sequence[float], x, y, train_idx,
                  val_idx=None, *, epochs: int = 5, seed: int = 0, same_init: bool = True,
                  min_improvement: float = 0.1, optimizer_options: dict | None = None,
                  **engine_options) -> RangeResult:
    """Trains ``model`` with ``optimizer`` (a ``wsjax.optim`` name) at every rate of ``lrs``
    for ``epochs`` epochs on ``x[train_idx]`` (device arrays ``x``, ``y``; numpy indices),
    one replica per rate in one program, and judges each (``RangeResult``).
    ``engine_options`` go to ``Engine`` (batch size, normalization, input shape...)."""
    lrs = [float(lr) for lr in lrs]
    if not lrs or not all(math.isfinite(lr) and lr > 0 for lr in lrs):
        raise ValueError(f"lrs={lrs!r} must be positive finite learning rates")
    if not 0.0 < min_improvement < 1.0:
        raise ValueError(f"min_improvement={min_improvement!r} must be in (0, 1)")
    engine = Engine(model, injected(optimizer, lrs[0], **(optimizer_options or {})),
                    **engine_options)
    seeds = [seed] * len(lrs) if same_init else [seed + i for i in range(len(lrs))]
    init_keys = replica_keys(seeds)
    states = engine.new_state(engine.init(init_keys))
    states = states.replace(opt_state=with_hyperparams(states.opt_state, learning_rate=lrs))
    train_idx = np.asarray(train_idx)
    initial = float(engine.evaluate(states, x, y, train_idx)["loss"][0])
    # Data order differs per rate only through the rate's own key: same_init shares it too.
    keys = replica_keys([s + 1_000_003 for s in seeds])
    states, progress = engine.fit(states, keys, x, y, train_idx,
                                  StopRule(threshold=2.0, max_epochs=epochs))
    curves = np.full((epochs, len(lrs)), np.nan)
    for e, record in enumerate(progress.history):
        for r, value in enumerate(record["train_loss"]):
            # diverged_at's epoch is 1-based: history[epoch - 1] is the epoch it blew up in.
            if progress.diverged_at[r] is None or e < progress.diverged_at[r][0] - 1:
                curves[e, r] = np.nan if value is None else value
    final = engine.evaluate(states, x, y, train_idx)["loss"]
    val = engine.evaluate(states, x, y, np.asarray(val_idx)) if val_idx is not None else None
    verdicts = []
    for r in range(len(lrs)):
        if progress.diverged_at[r] is not None or not final[r] <= initial:
            verdicts.append("diverged")
        elif final[r] <= (1.0 - min_improvement) * initial:
            verdicts.append("converges")
        else:
            verdicts.append("stalled")
    return RangeResult(
        lrs=lrs, initial_loss=initial, train_loss=curves,
        final_loss=[float(v) for v in final],
        val_loss=None if val is None else [float(v) for v in val["loss"]],
        val_acc=None if val is None else [float(v) for v in val["acc"]],
        diverged_at=[tuple(d) if d is not None else None for d in progress.diverged_at],
        verdicts=verdicts)
