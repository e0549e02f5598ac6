"""Appendix: shrink-perturb applied after every optimizer step, in both rounds, vs ordinary
training. Two cells of the two-phase experiment (random init vs warm start in each):
``plain`` and ``every_step`` (``--step-shrink``, ``--step-noise``, default 0.9999 / 1e-4: the
shrink compounds over thousands of steps, so it must be close to 1).

    wsjax sp_every_step --model mlp --optimizer adam --seeds 5
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, replace_study, run_cells
from wsjax.experiments.flags import FRACTION, NON_NEGATIVE, Checked, option, parse
from wsjax.study.plots import plot_cells
from wsjax.study.records import Cells


@dataclasses.dataclass(frozen=True)
class EveryStepConfig(Checked):
    """The two cells; ``cell`` is the two-phase config both start from."""

    cell: warm_start.TwoPhaseConfig = warm_start.TwoPhaseConfig()
    step_shrink: float = option(0.9999, "shrink applied after every step", check=FRACTION)
    step_noise: float = option(1e-4, "noise (times a fresh init) added after every step",
                               check=NON_NEGATIVE)


def run(cfg: EveryStepConfig) -> Cells:
    """Runs the ``plain`` and ``every_step`` cells."""
    out = cfg.cell.study.run.out
    cells = {"plain": replace_study(cfg.cell, run={"out": f"{out}/plain"}),
             "every_step": dataclasses.replace(
                 replace_study(cfg.cell, run={"out": f"{out}/every_step"}),
                 sp_every_step=(cfg.step_shrink, cfg.step_noise))}
    return run_cells(cells, warm_start.run, script="sp_every_step", out=out, plot=plot_cells)


def main(argv=None) -> Cells:
    """``wsjax sp_every_step``: the flags of ``wsjax warm_start`` for both cells."""
    return run(parse(EveryStepConfig, argv, description=__doc__, quick=QUICK,
                     defaults={"shrink": (), "out": "runs/sp_every_step"}))


if __name__ == "__main__":
    main_guard(main)
