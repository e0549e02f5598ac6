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
import shutil
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax import warmstart
from wsjax.augment import NORMALIZATIONS, normalize
from wsjax.checkpoint import Checkpointer
from wsjax.models import init_variables
from wsjax.parallel import DataParallel
from wsjax.runlog import RunDir
from wsjax.train import (FitProgress, StopRule, TrainState, default_loop, fit, make_eval_fn,
                         summarize)


BN_MODES = ("reset", "keep", "recompute")


@dataclasses.dataclass(frozen=True)
class Arm:
    """How round 2 starts from round 1's weights.

    ``shrink=1, perturb=0`` is a plain warm start. ``noise='init'`` adds ``perturb`` times a
    fresh initialization (official semantics); ``'gaussian'`` adds N(0, perturb^2).
    ``bn`` says what happens to BatchNorm running statistics: ``'reset'`` (mean 0, var 1: the
    official code always does), ``'keep'`` (the reproduction) or ``'recompute'`` (from the
    new training set, with the new weights).
    """

    name: str
    shrink: float = 1.0
    perturb: float = 0.0
    noise: str = "init"
    bn: str = "reset"

    def __post_init__(self):
        if self.noise not in ("init", "gaussian"):
            raise ValueError(f"Arm {self.name}: noise={self.noise!r} must be 'init' or 'gaussian'")
        if self.bn not in BN_MODES:
            raise ValueError(f"Arm {self.name}: bn={self.bn!r} must be one of {BN_MODES}")
        warmstart.check_range("shrink", self.shrink, 0.0, 1.0)
        warmstart.check_range("perturb", self.perturb, 0.0, None)


def _fold_in(keys, data: int):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


class StageRunner:
    """Runs named stages for R replicas of one model and records them in a ``RunDir``.

    ``x``/``y`` are the whole training set on the device; ``capacity`` is the size of the
    largest training set, so every stage reuses one compiled epoch. ``batch_size`` and
    ``normalization`` are those of training (used to recompute BatchNorm statistics).
    """

    def __init__(self, *, model, tx: optax.GradientTransformation, epoch_fn,
                 x, y, capacity: int, stop: StopRule, keys, run: RunDir,
                 checkpoint_every: int = 1, parallel: DataParallel | None = None,
                 input_shape=(32, 32, 3), echo: Callable[[str], None] = print,
                 batch_size: int = 128, normalization: str = "study",
                 eval_batch_size: int = 1000):
        self.model, self.tx, self.epoch_fn = model, tx, epoch_fn
        self.x, self.y, self.capacity, self.stop = x, y, capacity, stop
        self.keys, self.run, self.parallel = keys, run, parallel
        self.checkpoint_every, self.echo = checkpoint_every, echo
        self.batch_size, self.normalization = batch_size, normalization
        # Compiled once and reused by every stage.
        self._init = jax.jit(jax.vmap(lambda k: init_variables(model, k, input_shape)))
        self._create = jax.jit(jax.vmap(lambda v: TrainState.create(v, tx)))
        self._eval = make_eval_fn(model, batch_size=eval_batch_size,
                                  normalization=normalization, parallel=parallel,
                                  input_shape=input_shape)
        self._recompute = None  # built on first use: models without BatchNorm never need it

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

    def evaluate(self, state: TrainState, eval_sets: dict) -> dict:
        """``{name: {'acc', 'loss'}}`` (per-replica arrays) for each ``name: (x, y, idx)``."""
        return {k: summarize(self._eval(state, *v)) for k, v in eval_sets.items()}

    def checkpointer(self, stage: str) -> Checkpointer:
        """The checkpoints of one stage (the latest two are kept)."""
        return Checkpointer(self.run.checkpoints / stage, max_to_keep=2)

    def drop(self, stage: str) -> None:
        """Deletes a stage's checkpoints (runs with many rounds keep only what resuming needs)."""
        shutil.rmtree(self.run.checkpoints / stage, ignore_errors=True)

    def train(self, stage: str, variables, idx, *, epoch_fn=None, stop: StopRule | None = None,
              watch: Callable[[TrainState], dict] | None = None,
              on_epoch: Callable[[TrainState, FitProgress], None] | None = None,
              ) -> tuple[TrainState, FitProgress]:
        """Trains from ``variables`` on ``x[idx]`` until the stop rule, resuming from disk.

        ``epoch_fn``/``stop`` override the runner's for this stage (e.g. another batch size).
        ``watch(states) -> {name: per-replica values}`` runs after every epoch and its values
        are stored in that epoch's ``progress.history`` record (so they survive a resume).
        ``on_epoch`` is called after the epoch is recorded (and checkpointed).
        """
        state = self.new_state(variables)
        ckpt = self.checkpointer(stage)
        progress = None
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(state)
            progress = FitProgress.from_dict(meta["progress"])
            self.echo(f"[{stage}] resumed at epoch {progress.epoch}"
                      + (" (finished)" if progress.finished else ""))
        train_keys = self.stage_keys(stage, 1)

        def record(states, progress):
            h = progress.history[-1]
            if watch is not None:
                h.update(jax.tree.map(lambda v: np.asarray(v).tolist(), watch(states)))
            acc = np.asarray(h["train_acc"])
            self.echo(f"[{stage}] epoch {progress.epoch:3d}  train acc {acc.mean():.4f} "
                      f"[{acc.min():.4f}..{acc.max():.4f}]  active {sum(progress.active)}/"
                      f"{len(acc)}  {h['seconds']:.2f}s")
            self.run.log(stage=stage, epoch=progress.epoch, **h, active=progress.active)
            if progress.finished or progress.epoch % self.checkpoint_every == 0:
                ckpt.save(progress.epoch, states, {"progress": progress.to_dict()})
            if on_epoch is not None:
                on_epoch(states, progress)

        if progress is None or not progress.finished:
            state, progress = fit(epoch_fn or self.epoch_fn, state, train_keys, self.x, self.y,
                                  idx, stop or self.stop, capacity=self.capacity,
                                  progress=progress, on_epoch=record, parallel=self.parallel)
        ckpt.close()
        return state, progress

    def sample_images(self, idx, num_batches: int, key) -> jax.Array:
        """``(num_batches, batch_size, H, W, C)`` normalized images drawn from ``x[idx]``
        without replacement (as many whole batches as ``idx`` holds, at least one)."""
        idx = np.asarray(idx)
        num_batches = max(1, min(num_batches, len(idx) // self.batch_size))
        size = min(len(idx), num_batches * self.batch_size)
        pick = np.asarray(jax.random.choice(key, len(idx), (size,), replace=False))
        batch = min(self.batch_size, size)
        images = self.x[jnp.asarray(idx[pick[: (size // batch) * batch]])]
        mean, std = NORMALIZATIONS[self.normalization]
        images = normalize(images, mean, std)
        return images.reshape((-1, batch) + images.shape[1:])

    def recompute_stats(self, params, batch_stats, idx, stage: str):
        """BatchNorm statistics of every replica recomputed on up to 20 batches of ``x[idx]``."""
        if not jax.tree.leaves(batch_stats):
            return batch_stats
        images = self.sample_images(idx, 20, jax.random.fold_in(jax.random.key(0),
                                                                  zlib.crc32(stage.encode())))
        if self._recompute is None:
            loop = default_loop(self.model, self.x.shape[1:])
            recompute = jax.vmap(warmstart.make_recompute_batch_stats(self.model, loop=loop),
                                 in_axes=(0, 0, None))
            # The device loop compiles whole; the host loop's batches are compiled inside.
            self._recompute = jax.jit(recompute) if loop == "device" else recompute
        return self._recompute(params, batch_stats, images)

    def warm_variables(self, arm: Arm, stage: str, state: TrainState, idx=None):
        """Round-2 starting weights for ``arm`` from a trained round-1 ``state``; ``idx`` is
        the new training set (needed by ``bn='recompute'``)."""
        params, stats = state.params, state.batch_stats
        if arm.noise == "init":
            fresh = self.fresh_variables(stage, which=2)["params"]
            params = warmstart.shrink_perturb(params, fresh, arm.shrink, arm.perturb)
        else:
            params = jax.vmap(lambda k, p: warmstart.shrink_perturb_gaussian(
                k, p, arm.shrink, arm.perturb))(self.stage_keys(stage, 2), params)
        if arm.bn == "reset":
            stats = warmstart.reset_batch_stats(stats)
        elif arm.bn == "recompute":
            if idx is None:
                raise ValueError(f"Arm {arm.name}: bn='recompute' needs the new training set idx")
            stats = self.recompute_stats(params, stats, idx, stage)
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
                  seeds, eval_sets: dict, watch=None) -> dict:
    """The two-phase experiment: ``random_init`` trains on all of ``fit_idx``; ``round1``
    trains on its first ``first_fraction``; each arm starts round 2 on all of ``fit_idx`` from
    round 1's weights. ``eval_sets`` maps a name ('val', 'test') to ``(x, y, idx)`` on the
    device; ``watch`` is passed to every stage (see ``StageRunner.train``). Returns
    ``{arm: {'seeds': [...], 'round1': [...], 'history': ..., 'round1_history': ...,
    'start': ...}}`` (``round1*`` for warm arms; with ``watch``, the per-epoch histories and
    ``start``, the watch on the weights a stage starts from: after the arm's transform).
    """
    first = fit_idx[: max(1, int(round(first_fraction * len(fit_idx))))]

    def done(state, progress, variables, **extra):
        out = {"seeds": per_seed(progress, runner.evaluate(state, eval_sets), seeds), **extra}
        if watch is not None:
            out["history"] = progress.history
            # Recomputed from the (deterministic) starting weights, so a resumed run has it too.
            out["start"] = jax.tree.map(lambda v: np.asarray(v).tolist(),
                                        watch(runner.new_state(variables)))
        return out

    results = {}
    variables = runner.fresh_variables("random_init")
    state, progress = runner.train("random_init", variables, fit_idx, watch=watch)
    results["random_init"] = done(state, progress, variables)
    round1, progress1 = runner.train("round1", runner.fresh_variables("round1"), first,
                                     watch=watch)
    round1_rows = per_seed(progress1, runner.evaluate(round1, eval_sets), seeds)
    for arm in arms:
        stage = f"round2_{arm.name}"
        variables = runner.warm_variables(arm, stage, round1, fit_idx)
        state, progress = runner.train(stage, variables, fit_idx, watch=watch)
        results[arm.name] = done(state, progress, variables, arm=dataclasses.asdict(arm),
                                 round1=round1_rows)
        for row, r1 in zip(results[arm.name]["seeds"], round1_rows):
            row["total_epochs"] = row["epochs"] + r1["epochs"]
            row["total_seconds"] = row["seconds"] + r1["seconds"]
        if watch is not None:
            results[arm.name]["round1_history"] = progress1.history
    return results
