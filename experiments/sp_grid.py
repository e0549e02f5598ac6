"""Fig 8: shrink x perturbation grid. Every (shrink, noise) pair is a warm arm of the two-phase
experiment (50% -> 100%); the figure shows validation accuracy and total train time per cell
beside random init.

    python -m experiments.sp_grid --model mlp --optimizer adam --seeds 3
    python -m experiments.sp_grid --quick
"""

from __future__ import annotations

import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.plots import plot_grid

DEFAULTS = ["--shrink", "0.2", "0.4", "0.6", "0.8", "1.0",
            "--noise", "0", "0.001", "0.01", "0.1", "--no-warm-start"]


def main(argv=None) -> dict:
    """Runs the grid (flags as ``experiments.warm_start``; later flags override)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return warm_start.main(DEFAULTS + argv, script="sp_grid", plot=plot_grid)


if __name__ == "__main__":
    main_guard(main)
