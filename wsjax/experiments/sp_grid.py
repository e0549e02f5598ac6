"""Fig 8: shrink x perturbation grid. Every (shrink, noise) pair is a warm arm of the two-phase
experiment (50% -> 100%); the figure shows validation accuracy and total train time per cell
beside random init.

    wsjax sp_grid --model mlp --optimizer adam --seeds 5
    wsjax sp_grid --quick
"""

from __future__ import annotations

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, with_default_out
from wsjax.experiments.flags import parse
from wsjax.study.plots import plot_grid
from wsjax.study.records import Run

DEFAULTS = {"shrink": (0.2, 0.4, 0.6, 0.8, 1.0), "noise": (0.0, 0.001, 0.01, 0.1),
            "warm_arm": False}


def run(cfg: warm_start.TwoPhaseConfig) -> Run:
    """Runs the grid (its arms are the config's shrink x noise)."""
    return warm_start.run(cfg, script="sp_grid", plot=plot_grid)


def main(argv=None) -> Run:
    """``wsjax sp_grid``: the flags of ``wsjax warm_start`` with the grid as defaults."""
    cfg = parse(warm_start.TwoPhaseConfig, argv, description=__doc__, quick=QUICK,
                defaults=DEFAULTS)
    return run(with_default_out(cfg, "sp_grid"))


if __name__ == "__main__":
    main_guard(main)
