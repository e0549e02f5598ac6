"""Appendix: perturb only (shrink = 1, noise added) vs warm start and random init, two-phase.
The paper reports that perturbing without shrinking does not close the gap.

    wsjax perturb_only --model mlp --optimizer adam --seeds 5
"""

from __future__ import annotations

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, with_default_out
from wsjax.experiments.flags import parse
from wsjax.study.plots import plot_two_phase
from wsjax.study.records import Run

DEFAULTS = {"shrink": (1.0,), "noise": (0.0001, 0.001, 0.01, 0.1)}


def run(cfg: warm_start.TwoPhaseConfig) -> Run:
    """Runs the perturb-only arms."""
    return warm_start.run(cfg, script="perturb_only", plot=plot_two_phase)


def main(argv=None) -> Run:
    """``wsjax perturb_only``: the flags of ``wsjax warm_start`` with these arms as defaults."""
    cfg = parse(warm_start.TwoPhaseConfig, argv, description=__doc__, quick=QUICK,
                defaults=DEFAULTS)
    return run(with_default_out(cfg, "perturb_only"))


if __name__ == "__main__":
    main_guard(main)
