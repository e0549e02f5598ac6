"""Fig 1: learning curves of a warm-started model vs a fresh one.

The paper trains ResNet-18 with SGD for 350 epochs on 50% of the data, then 350 on 100%, against
350 epochs on 100% from a random init, and plots train and validation accuracy per epoch. This
is the two-phase experiment with validation accuracy recorded after every epoch and, by
default, a fixed epoch budget (the 99% stop rule is off: ``--threshold 1.01``).

    wsjax curves --model resnet18_narrow --optimizer sgd --lr 0.001
    wsjax curves --quick --model mlp --optimizer adam   # CPU minutes
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, with_default_out
from wsjax.experiments.flags import parse
from wsjax.study.plots import plot_curves
from wsjax.study.records import Run

# Fig 1's settings where they differ from the two-phase experiment's.
DEFAULTS = {"model": "resnet18_narrow", "optimizer": "sgd", "shrink": (), "threshold": 1.01,
            "plateau_window": 0}


def run(cfg: warm_start.TwoPhaseConfig) -> Run:
    """Runs Fig 1: the two-phase experiment with validation curves."""
    return warm_start.run(dataclasses.replace(cfg, curves=True), script="curves",
                          plot=plot_curves)


def main(argv=None) -> Run:
    """``wsjax curves``: the flags of ``wsjax warm_start`` with Fig 1's defaults."""
    cfg = parse(warm_start.TwoPhaseConfig, argv, description=__doc__, quick=QUICK,
                defaults=DEFAULTS)
    return run(with_default_out(cfg, "curves"))


if __name__ == "__main__":
    main_guard(main)
