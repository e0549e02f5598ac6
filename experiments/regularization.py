"""The regularization table: does L2, adversarial training or a confidence penalty close the
warm-start gap? Each regularizer at each strength (default 1e-1..1e-4) is used in both rounds
of the two-phase experiment (random init vs warm start); ``none`` is the baseline.

    python -m experiments.regularization --model mlp --optimizer adam --seeds 3
    python -m experiments.regularization --quick --strengths 0.01 --kinds l2
"""

from __future__ import annotations

import argparse
import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.plots import plot_regularization

FLAGS = {"l2": lambda s: ["--weight-decay", s],
         "adversarial": lambda s: ["--objective", "adversarial", "--strength", s],
         "confidence": lambda s: ["--objective", "confidence", "--strength", s]}


def main(argv=None) -> dict:
    """Runs every (regularizer, strength) cell plus the baseline."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=list(FLAGS), choices=list(FLAGS))
    p.add_argument("--strengths", nargs="+", default=["0.1", "0.01", "0.001", "0.0001"])
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    rest, out = warm_start.split_out(rest, "runs/regularization")
    cells = {"none": []}
    for kind in args.kinds:
        for s in args.strengths:
            cells[f"{kind}_{float(s):g}"] = FLAGS[kind](s)
    records = warm_start.run_cells(cells, ["--shrink", *rest], out=out, script="regularization")
    return warm_start.summarize_cells(records, out, "experiments.regularization",
                                      plot_regularization)


if __name__ == "__main__":
    main_guard(main)
