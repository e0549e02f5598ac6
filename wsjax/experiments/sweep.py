"""Fig 3: learning rate x batch size. For each (lr, batch) cell, the two-phase experiment
(random init vs warm start); the figure plots validation accuracy against the wall time to the
stop rule (warm start: both rounds), one point per cell and arm. The paper finds the warm-start
gap at every setting.

    wsjax sweep --model mlp --optimizer sgd --seeds 5
    wsjax sweep --quick --lrs 0.01 --batch-sizes 32 128
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, replace_study, run_cells
from wsjax.experiments.flags import COUNT, POSITIVE, Checked, option, parse
from wsjax.study.plots import plot_sweep
from wsjax.study.records import Cells


@dataclasses.dataclass(frozen=True)
class SweepConfig(Checked):
    """The grid; ``cell`` is the two-phase config every cell starts from."""

    cell: warm_start.TwoPhaseConfig = warm_start.TwoPhaseConfig()
    lrs: tuple[float, ...] = option((0.1, 0.01, 0.001), "learning rates", nargs="+",
                                    check=POSITIVE)
    batch_sizes: tuple[int, ...] = option((16, 32, 64, 128), "batch sizes", nargs="+",
                                          check=COUNT)


def run(cfg: SweepConfig) -> Cells:
    """Runs every (lr, batch size) cell in ``<out>/lr<lr>_b<batch>``."""
    out = cfg.cell.study.run.out
    cells = {f"lr{lr:g}_b{b}": replace_study(cfg.cell, optim={"lr": lr},
                                             train={"batch_size": b},
                                             run={"out": f"{out}/lr{lr:g}_b{b}"})
             for lr in cfg.lrs for b in cfg.batch_sizes}
    return run_cells(cells, warm_start.run, script="sweep", out=out, plot=plot_sweep)


def main(argv=None) -> Cells:
    """``wsjax sweep``: the flags of ``wsjax warm_start`` for every cell, and the grid's."""
    return run(parse(SweepConfig, argv, description=__doc__, quick=QUICK,
                     defaults={"shrink": (), "out": "runs/sweep"}))


if __name__ == "__main__":
    main_guard(main)
