"""The study's protocol: rounds of training, warm-start arms, checkpointed and resumable.

A *stage* is one ``fit`` of all seeds (replicas) on one training set, e.g. "round 1 on 50%" or
"warm start, round 2 on 100%". ``StageRunner`` runs stages under a run directory: each stage
checkpoints every ``checkpoint_every`` epochs and at its end, and a stage found finished on
disk is restored instead of retrained, so a killed run started again with the same arguments
picks up where it stopped and ends with the same numbers.

``run_two_phase`` is the study's main experiment (Table 1): random init on 100% vs warm start
(50% then 100%) vs shrink-perturb arms.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax

from wsjax import warmstart
from wsjax.checkpoint import Checkpointer
from wsjax.models import init_variables
from wsjax.parallel import DataParallel
from wsjax.runlog import RunDir
from wsjax.train import FitProgress, StopRule, TrainState, fit, make_eval_fn, summarize


@dataclasses.dataclass(frozen=True)
class Arm:
    """How round 2 starts from round 1's weights.

    ``shrink=1, perturb=0`` is a plain warm start. ``noise='init'`` adds ``perturb`` times a
    fresh initialization (official semantics); ``'gaussian'`` adds N(0, perturb^2).
    ``reset_bn`` resets BatchNorm running statistics (the official code always does).
    """

    name: str
    shrink: float = 1.0
    perturb: float = 0.0
    noise: str = "init"
    reset_bn: bool = True

    def __post_init__(self):
        if self.noise not in ("init", "gaussian"):
            raise ValueError(f"Arm {self.name}: noise={self.noise!r} must be 'init' or 'gaussian'")
        warmstart.check_range("shrink", self.shrink, 0.0, 1.0)
        warmstart.check_range("perturb", self.perturb, 0.0, None)


def _fold_in(keys, data: int):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


class StageRunner:
    """Runs named stages for R replicas of one model and records them in a ``RunDir``.

    ``x``/``y`` are the whole training set on the device; ``capacity`` is the size of the
    largest training set, so every stage reuses one compiled epoch.
    """

    def __init__(self, *, model, tx: optax.GradientTransformation, epoch_fn,
                 x, y, capacity: int, stop: StopRule, keys, run: RunDir,
                 checkpoint_every: int = 1, parallel: DataParallel | None = None,
                 input_shape=(32, 32, 3), echo: Callable[[str], None] = print):
        self.model, self.tx, self.epoch_fn = model, tx, epoch_fn
        self.x, self.y, self.capacity, self.stop = x, y, capacity, stop
        self.keys, self.run, self.parallel = keys, run, parallel
        self.checkpoint_every, self.echo = checkpoint_every, echo
        # Compiled once and reused by every stage.
        self._init = jax.jit(jax.vmap(lambda k: init_variables(model, k, input_shape)))
        self._create = jax.jit(jax.vmap(lambda v: TrainState.create(v, tx)))

    def place(self, tree):
        return self.parallel.place_state(tree) if self.parallel else tree

    def stage_keys(self, stage: str, which: int):
        """Per-replica keys for one use (``which``) in a stage; stable across runs (crc32 of
        the stage name, not ``hash()``): 0 initializes, 1 trains, 2 perturbs."""
        return _fold_in(_fold_in(self.keys, zlib.crc32(stage.encode())), which)

    def fresh_variables(self, stage: str, which: int = 0):
        """Fresh initializations (one per replica) drawn from the stage's keys."""
        return self._init(self.stage_keys(stage, which))

    def new_state(self, variables) -> TrainState:
        """A state with a fresh optimizer state (the study starts every round with one)."""
        return self.place(self._create(variables))

    def train(self, stage: str, variables, idx) -> tuple[TrainState, FitProgress]:
        """Trains from ``variables`` on ``x[idx]`` until the stop rule, resuming from disk."""
        state = self.new_state(variables)
        ckpt = Checkpointer(self.run.checkpoints / stage, max_to_keep=2)
        progress = None
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(state)
            progress = FitProgress.from_dict(meta["progress"])
            self.echo(f"[{stage}] resumed at epoch {progress.epoch}"
                      + (" (finished)" if progress.finished else ""))
        train_keys = self.stage_keys(stage, 1)

        def on_epoch(states, progress):
            h = progress.history[-1]
            acc = np.asarray(h["train_acc"])
            self.echo(f"[{stage}] epoch {progress.epoch:3d}  train acc {acc.mean():.4f} "
                      f"[{acc.min():.4f}..{acc.max():.4f}]  active {sum(progress.active)}/"
                      f"{len(acc)}  {h['seconds']:.2f}s")
            self.run.log(stage=stage, epoch=progress.epoch, **h, active=progress.active)
            if progress.finished or progress.epoch % self.checkpoint_every == 0:
                ckpt.save(progress.epoch, states, {"progress": progress.to_dict()})

        if progress is None or not progress.finished:
            state, progress = fit(self.epoch_fn, state, train_keys, self.x, self.y, idx,
                                  self.stop, capacity=self.capacity, progress=progress,
                                  on_epoch=on_epoch, parallel=self.parallel)
        ckpt.close()
        return state, progress

    def warm_variables(self, arm: Arm, stage: str, state: TrainState):
        """Round-2 starting weights for ``arm`` from a trained round-1 ``state``."""
        params, stats = state.params, state.batch_stats
        if arm.noise == "init":
            fresh = self.fresh_variables(stage, which=2)["params"]
            params = warmstart.shrink_perturb(params, fresh, arm.shrink, arm.perturb)
        else:
            params = jax.vmap(lambda k, p: warmstart.shrink_perturb_gaussian(
                k, p, arm.shrink, arm.perturb))(self.stage_keys(stage, 2), params)
        if arm.reset_bn:
            stats = warmstart.reset_batch_stats(stats)
        return {"params": params, "batch_stats": stats}


def per_seed(progress: FitProgress, evals: dict, seeds) -> list[dict]:
    """One record per seed: accuracies, epochs and seconds of a stage."""
    rows = []
    for r, seed in enumerate(seeds):
        rows.append({"seed": int(seed), "epochs": progress.epochs[r],
                     "seconds": progress.seconds[r], "stop_reason": progress.stop_reason[r],
                     "train_acc": progress.history[progress.epochs[r] - 1]["train_acc"][r],
                     **{f"{k}_acc": float(v["acc"][r]) for k, v in evals.items()},
                     **{f"{k}_loss": float(v["loss"][r]) for k, v in evals.items()}})
    return rows


def run_two_phase(runner: StageRunner, *, fit_idx, first_fraction: float, arms: Sequence[Arm],
                  seeds, eval_sets: dict, eval_batch_size: int = 1000) -> dict:
    """The two-phase experiment: ``random_init`` trains on all of ``fit_idx``; ``round1``
    trains on its first ``first_fraction``; each arm starts round 2 on all of ``fit_idx`` from
    round 1's weights. ``eval_sets`` maps a name ('val', 'test') to ``(x, y, idx)`` on the
    device. Returns ``{arm: {'seeds': [...], 'round1': [...]}}`` (``round1`` for warm arms).
    """
    evaluate = make_eval_fn(runner.model, batch_size=eval_batch_size, parallel=runner.parallel)
    first = fit_idx[: max(1, int(round(first_fraction * len(fit_idx))))]

    def evals_of(state):
        return {k: summarize(evaluate(state, *v)) for k, v in eval_sets.items()}

    results = {}
    state, progress = runner.train("random_init", runner.fresh_variables("random_init"), fit_idx)
    results["random_init"] = {"seeds": per_seed(progress, evals_of(state), seeds)}
    round1, progress1 = runner.train("round1", runner.fresh_variables("round1"), first)
    round1_rows = per_seed(progress1, evals_of(round1), seeds)
    for arm in arms:
        stage = f"round2_{arm.name}"
        state, progress = runner.train(stage, runner.warm_variables(arm, stage, round1), fit_idx)
        rows = per_seed(progress, evals_of(state), seeds)
        for row, r1 in zip(rows, round1_rows):
            row["total_epochs"] = row["epochs"] + r1["epochs"]
            row["total_seconds"] = row["seconds"] + r1["seconds"]
        results[arm.name] = {"arm": dataclasses.asdict(arm), "seeds": rows, "round1": round1_rows}
    return results
