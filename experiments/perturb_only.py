"""Appendix: perturb only (shrink = 1, noise added) vs warm start and random init, two-phase.
The paper reports that perturbing without shrinking does not close the gap.

    python -m experiments.perturb_only --model mlp --optimizer adam --seeds 3
"""

from __future__ import annotations

import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.plots import plot_two_phase

DEFAULTS = ["--shrink", "1.0", "--noise", "0.0001", "0.001", "0.01", "0.1"]


def main(argv=None) -> dict:
    """Runs the perturb-only arms (flags as ``experiments.warm_start``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return warm_start.main(DEFAULTS + argv, script="perturb_only", plot=plot_two_phase)


if __name__ == "__main__":
    main_guard(main)
