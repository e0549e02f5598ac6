"""Stages of the study: named, checkpointed, resumable trainings of every seed at once.

A *stage* is one ``Engine.fit`` of all seeds (replicas) on one training set, e.g. "round 1 on
50%" or "warm start, round 2 on 100%". ``Stages`` runs stages under a run directory: each stage
checkpoints every ``checkpoint_every`` epochs and at its end, and a stage found finished on
disk is restored instead of retrained, so a killed run started again with the same arguments
picks up where it stopped and ends with the same numbers. After training, a stage is
evaluated on the study's evaluation sets (``SeedRow`` per seed).

Randomness: every stage draws its keys from the seeds' keys, the stage's name and a named use
(``KeyUse``), so a stage's numbers do not depend on which other stages ran.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import shutil
import zlib
from collections.abc import Callable

import jax
import numpy as np

from wsjax.checkpoint import Checkpointer
from wsjax.engine import Engine
from wsjax.hosts import barrier, host_value, is_main
from wsjax.study.records import SeedRow, StageResult
from wsjax.study.runlog import Progress, RunDir
from wsjax.train import FitProgress, StopRule, TrainState, fold_in_replicas, replica_keys
from wsjax.warmstart import Arm


class KeyUse(enum.IntEnum):
    """What a stage's key is for (the value is folded into the key)."""

    INIT = 0      # the stage's fresh initialization
    TRAIN = 1     # data order, augmentation and per-step noise of training
    PERTURB = 2   # the noise an arm adds to the previous round's weights
    TARGET = 3    # the initialization a transferred model is merged into (new head)


def _name_hash(name: str) -> int:
    # crc32, not hash(): stable across processes, so a resumed run draws the same keys.
    return zlib.crc32(name.encode())


def stage_keys(keys, stage: str, use: KeyUse):
    """Per-replica keys for one ``use`` in ``stage``, from the replicas' ``keys``."""
    return fold_in_replicas(fold_in_replicas(keys, _name_hash(stage)), int(use))


def sample_key(name: str):
    """One key shared by every replica, for a data sample named ``name`` (e.g. the batches
    BatchNorm statistics are recomputed on)."""
    return jax.random.fold_in(jax.random.key(0), _name_hash(name))


@dataclasses.dataclass(frozen=True)
class StudyData:
    """The study's data on the devices: ``x`` (all training images, uint8) and ``y`` (the
    labels trained on: noisy under label noise), the fitted split ``fit_idx`` (in a seeded
    random order, so its first fraction is a random subset) and the validation split
    ``val_idx``, each ``(n,)`` when every seed shares them or ``(replicas, n)`` with a row per
    seed, and ``eval_sets``: ``{name: (x, y, idx)}`` with clean labels."""

    name: str
    x: jax.Array
    y: jax.Array
    fit_idx: np.ndarray
    val_idx: np.ndarray
    eval_sets: dict
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image's (H, W, C)."""
        return tuple(self.x.shape[1:])


@dataclasses.dataclass
class Trained:
    """A finished stage: the trained ``states`` (replicas stacked), its ``progress`` and its
    ``result`` (a row per seed, with the history when the stage was watched)."""

    states: TrainState
    progress: FitProgress
    result: StageResult


def _finite(x) -> float | None:
    """``x`` as a float, or None when it is not finite (a diverged seed's loss)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _lists(tree) -> dict:
    return jax.tree.map(lambda v: v.tolist(), host_value(tree))


class Stages:
    """Runs named stages of ``engine`` for ``seeds`` on ``data`` in the run directory ``run``.

    ``stop`` is the stop rule of every stage; ``capacity`` the size of the largest training
    set (default: the fitted split), so every stage reuses one compiled epoch.
    """

    def __init__(self, engine: Engine, run: RunDir, data: StudyData, *, seeds, stop: StopRule,
                 checkpoint_every: int = 1, progress: Progress | None = None,
                 capacity: int | None = None):
        self.engine, self.run, self.data = engine, run, data
        self.seeds = [int(s) for s in seeds]
        self.keys = replica_keys(self.seeds)
        self.stop, self.checkpoint_every = stop, checkpoint_every
        self.progress = progress or Progress()
        self.capacity = capacity or data.fit_idx.shape[-1]

    def with_engine(self, engine: Engine) -> Stages:
        """The same stages (run directory, data, seeds, stop rule) trained by another engine,
        e.g. an arm whose optimizer differs."""
        other = copy.copy(self)
        other.engine = engine
        return other

    def stage_keys(self, stage: str, use: KeyUse):
        """Per-replica keys of ``stage`` for ``use``."""
        return stage_keys(self.keys, stage, use)

    def fresh(self, stage: str, use: KeyUse = KeyUse.INIT) -> dict:
        """Fresh initializations (one per replica) drawn from the stage's keys."""
        return self.engine.init(self.stage_keys(stage, use))

    def arm_inputs(self, arm: Arm, stage: str, idx) -> dict:
        """What ``warmstart.apply_arm`` needs for ``arm`` at the start of ``stage`` on the
        training set ``idx``: a fresh init or per-replica keys for the noise, and a pass over
        ``x[idx]`` to recompute BatchNorm statistics."""
        inputs = {}
        if arm.noise_kind == "init":
            inputs["fresh"] = self.fresh(stage, KeyUse.PERTURB)["params"]
        else:
            inputs["key"] = self.stage_keys(stage, KeyUse.PERTURB)
        if arm.bn == "recompute":
            inputs["recompute"] = lambda params, stats: self.engine.recompute_batch_stats(
                params, stats, self.data.x, idx, sample_key(stage))
        return inputs

    def checkpointer(self, stage: str) -> Checkpointer:
        """The checkpoints of one stage: the latest two while it trains (the older is the
        fallback when the newer is damaged), its last one when it has finished."""
        return Checkpointer(self.run.checkpoints / stage, max_to_keep=2)

    def drop(self, stage: str) -> None:
        """Deletes a stage's checkpoints (runs with many rounds keep only what resuming needs);
        process 0 deletes once every process is past them."""
        barrier(f"drop {stage}")
        if is_main():
            shutil.rmtree(self.run.checkpoints / stage, ignore_errors=True)

    def rows(self, states: TrainState, progress: FitProgress, n_train: int) -> list[SeedRow]:
        """One row per seed: epochs, seconds (and compiling apart), examples processed (of
        ``n_train`` per epoch), stop reason, final running train accuracy and accuracy and loss
        on every evaluation set."""
        evals = {k: self.engine.evaluate(states, *v) for k, v in self.data.eval_sets.items()}
        rows = []
        for r, seed in enumerate(self.seeds):
            scores = {f"{k}_{m}": _finite(v[m][r]) for k, v in evals.items()
                      for m in ("acc", "loss")}
            rows.append(SeedRow(seed=seed, epochs=progress.epochs[r],
                                seconds=progress.seconds[r], stop_reason=progress.stop_reason[r],
                                train_acc=progress.history[progress.epochs[r] - 1]["train_acc"][r],
                                diverged_at=progress.diverged_at[r],
                                compile_seconds=progress.compile_seconds,
                                examples=progress.epochs[r] * n_train, **scores))
        return rows

    def train(self, stage: str, variables: dict, idx, *, opt_state=None, extra=None,
              watch: Callable[[TrainState], dict] | None = None,
              on_epoch: Callable[[TrainState, FitProgress], None] | None = None) -> Trained:
        """Trains from ``variables`` (and ``opt_state``, default a new one; ``extra``, the
        engine's step-hook state, default a new one) on ``x[idx]`` until the stop rule, resuming
        from disk, then evaluates.

        ``watch(states) -> {name: per-replica values}`` runs after every epoch; its values are
        stored in that epoch's history record (so they survive a resume), and it also measures
        the starting weights (``result.start``). ``on_epoch`` is called after the epoch is
        recorded (and checkpointed).
        """
        states = self.engine.new_state(variables, opt_state, extra)
        # Measured on the (deterministic) starting weights every time, so a resumed run has
        # it too; before training, which donates the states' buffers.
        start = _lists(watch(states)) if watch is not None else None
        ckpt, progress = self.checkpointer(stage), None
        try:
            if ckpt.latest_step() is not None:
                states, meta = ckpt.restore(states)
                progress = FitProgress.from_dict(meta["progress"])
                self.progress.note(f"[{stage}] resumed at epoch {progress.epoch}"
                                   + (" (finished)" if progress.finished else ""))
            # Epochs logged after the checkpoint resumed from are trained (and logged) again.
            self.run.metrics.rewind(stage, progress.epoch if progress is not None else 0)
            states, progress = self._fit(stage, ckpt, states, progress, idx, watch, on_epoch)
        finally:
            ckpt.close()  # also on an error or Ctrl-C: a started save is finished, not torn
        result = StageResult(seeds=self.rows(states, progress, np.shape(idx)[-1]))
        if watch is not None:
            result.history, result.start = progress.history, start
        return Trained(states, progress, result)

    def _fit(self, stage, ckpt, states, progress, idx, watch, on_epoch):
        """The training part of ``train``: epochs from ``progress`` on, each logged and
        checkpointed; a finished stage keeps only its last checkpoint."""

        def record(states, progress):
            h = progress.history[-1]
            if watch is not None:
                h.update(_lists(watch(states)))
            self.progress.epoch(stage, progress.epoch, h["train_acc"], progress.active,
                                h["seconds"])
            self.run.metrics.write(stage=stage, epoch=progress.epoch, **h,
                                   active=progress.active)
            if progress.finished or progress.epoch % self.checkpoint_every == 0:
                ckpt.save(progress.epoch, states, {"progress": progress.to_dict()})
            if progress.finished:
                ckpt.keep_only(progress.epoch)
            if on_epoch is not None:
                on_epoch(states, progress)

        if progress is None or not progress.finished:
            states, progress = self.engine.fit(
                states, self.stage_keys(stage, KeyUse.TRAIN), self.data.x, self.data.y, idx,
                self.stop, capacity=self.capacity, progress=progress, on_epoch=record)
        return states, progress
