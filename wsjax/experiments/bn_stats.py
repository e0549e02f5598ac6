"""The study notebook's BatchNorm claims (3, 5, 6, 7): after copying round 1's weights, should
BatchNorm running statistics be kept, reset (mean 0, var 1; the official code) or recomputed
from the new data? For each --settings entry (lr:batch; large lr and small batch test claim 5)
the two-phase experiment runs random init and one warm arm per BN mode, recording after every
epoch the train accuracy (speed, stability), the validation accuracy, and the mismatch between
the running statistics and the fitted data's statistics (claims 6, 7).

    wsjax bn_stats --optimizer sgd --seeds 5
    wsjax bn_stats --quick --widths 8,16,32,64
"""

from __future__ import annotations

import argparse
import dataclasses

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, replace_study, run_cells
from wsjax.experiments.flags import Checked, option, parse
from wsjax.study.plots import plot_bn_stats
from wsjax.study.records import Cells


def lr_batch(text: str) -> tuple[float, int]:
    """``'0.1:128'`` -> ``(0.1, 128)`` (a ``--settings`` entry)."""
    lr, _, batch = text.partition(":")
    try:
        return float(lr), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not lr:batch, e.g. 0.1:128") from None


@dataclasses.dataclass(frozen=True)
class BNStatsConfig(Checked):
    """The settings; ``cell`` is the two-phase config every cell starts from."""

    cell: warm_start.TwoPhaseConfig = warm_start.TwoPhaseConfig()
    settings: tuple[tuple[float, int], ...] = option(
        ((0.1, 128), (0.01, 128), (0.01, 16)), "lr:batch pairs", nargs="+", parse=lr_batch)


def run(cfg: BNStatsConfig) -> Cells:
    """Runs every setting in ``<out>/lr<lr>_b<batch>``."""
    out = cfg.cell.study.run.out
    cells = {}
    for lr, batch in cfg.settings:
        name = f"lr{lr:g}_b{batch}"
        cell = replace_study(cfg.cell, optim={"lr": lr}, train={"batch_size": batch},
                             run={"out": f"{out}/{name}"})
        cells[name] = dataclasses.replace(cell, curves=True, bn_probe=True)
    return run_cells(cells, warm_start.run, script="bn_stats", out=out, plot=plot_bn_stats)


def main(argv=None) -> Cells:
    """``wsjax bn_stats``: the flags of ``wsjax warm_start`` for every cell (a ResNet, one warm
    arm per BN mode, no shrink-perturb), and the settings."""
    return run(parse(BNStatsConfig, argv, description=__doc__, quick=QUICK,
                     defaults={"model": "resnet18_narrow", "shrink": (),
                               "bn": ("keep", "reset", "recompute"), "out": "runs/bn_stats"}))


if __name__ == "__main__":
    main_guard(main)
