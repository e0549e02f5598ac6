"""Fig 4: warm-starting from the checkpoint of epoch k of the round-1 (50%) run.

Round 1 is saved every ``--every`` epochs (default 5); round 2 (100%) starts from each saved
epoch k (a plain warm start: new optimizer state, BatchNorm reset). The figure plots the
validation accuracy of each against k, beside random init on 100%. The paper finds the damage
appears after only a few epochs of round 1.

    wsjax checkpoint_age --model mlp --optimizer adam --seeds 5
    wsjax checkpoint_age --quick
"""

from __future__ import annotations

import dataclasses

from wsjax.checkpoint import Checkpointer
from wsjax.experiments.common import (QUICK, StudyConfig, finish, main_guard, setup,
                                      with_default_out)
from wsjax.experiments.flags import COUNT, PROPER_SHARE, Checked, option, parse
from wsjax.study.plots import plot_checkpoint_age
from wsjax.study.protocols import run_two_phase, two_phase_results, warm_round
from wsjax.study.records import Run
from wsjax.warmstart import Arm


@dataclasses.dataclass(frozen=True)
class CheckpointAgeConfig(Checked):
    """Fig 4."""

    study: StudyConfig = StudyConfig()
    every: int = option(5, "round-1 epochs between snapshots", check=COUNT)
    first_fraction: float = option(0.5, "round 1's share of data", check=PROPER_SHARE)


def run(cfg: CheckpointAgeConfig) -> Run:
    """Runs Fig 4: the two-phase protocol without arms, round 1 snapshotted, then a warm start
    from every snapshot (stage ``from_epoch_<k>``)."""
    run_ = setup(cfg, "checkpoint_age")
    # A context: on an error or Ctrl-C, a snapshot being written is finished, not torn.
    with Checkpointer(run_.run.path / "round1_snapshots") as snapshots:
        def snapshot(states, progress):
            if progress.epoch % cfg.every == 0 or progress.finished:
                snapshots.save(progress.epoch, states, {"active": progress.active})

        fit_idx = run_.data.fit_idx
        outcome = run_two_phase(run_.stages, fit_idx=fit_idx, first_fraction=cfg.first_fraction,
                                arms=[], round1_options={"on_epoch": snapshot})
        results = two_phase_results(outcome)
        arm = Arm("warm_start")
        snapshots.wait()  # saves are asynchronous: every snapshot on disk before listing them
        for k in snapshots.all_steps():
            stage = f"from_epoch_{k:03d}"
            source, _ = snapshots.restore(outcome.round1.states, k)
            result = warm_round(run_.stages, arm, stage, source, fit_idx).result
            results[stage] = dataclasses.replace(result, arm=arm, round1_epoch=k)
    return finish(run_, "two_phase", results, plot_checkpoint_age)


def main(argv=None) -> Run:
    """``wsjax checkpoint_age``: parses the flags and runs Fig 4."""
    cfg = parse(CheckpointAgeConfig, argv, description=__doc__, quick=QUICK)
    return run(with_default_out(cfg, "checkpoint_age"))


if __name__ == "__main__":
    main_guard(main)
