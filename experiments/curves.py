"""Fig 1: learning curves of a warm-started model vs a fresh one.

The paper trains ResNet-18 with SGD for 350 epochs on 50% of the data, then 350 on 100%, against
350 epochs on 100% from a random init, and plots train and validation accuracy per epoch. This
is the two-phase experiment with validation accuracy recorded after every epoch and, by
default, a fixed epoch budget (the 99% stop rule is off: ``--threshold 1.01``).

    python -m experiments.curves --model resnet18_narrow --optimizer sgd --lr 0.001
    python -m experiments.curves --quick --model mlp --optimizer adam   # CPU minutes
"""

from __future__ import annotations

import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.plots import plot_curves

DEFAULTS = ["--model", "resnet18_narrow", "--optimizer", "sgd", "--shrink", "--threshold",
            "1.01", "--plateau-window", "0"]


def main(argv=None) -> dict:
    """Runs Fig 1 (flags as ``experiments.warm_start``; later flags override the defaults)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return warm_start.main(DEFAULTS + argv + ["--curves"], script="curves", plot=plot_curves)


if __name__ == "__main__":
    main_guard(main)
