"""Fig 3: learning rate x batch size. For each (lr, batch) cell, the two-phase experiment
(random init vs warm start); the figure plots validation accuracy against the wall time to the
stop rule (warm start: both rounds), one point per cell and arm. The paper finds the warm-start
gap at every setting.

    python -m experiments.sweep --model mlp --optimizer sgd --seeds 3
    python -m experiments.sweep --quick --lrs 0.01 --batch-sizes 32 128
"""

from __future__ import annotations

import argparse
import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.plots import plot_sweep


def main(argv=None) -> dict:
    """Runs every (lr, batch size) cell."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", nargs="+", default=["0.1", "0.01", "0.001"])
    p.add_argument("--batch-sizes", nargs="+", default=["16", "32", "64", "128"])
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    rest, out = warm_start.split_out(rest, "runs/sweep")
    cells = {f"lr{float(lr):g}_b{int(b)}": ["--lr", lr, "--batch-size", b]
             for lr in args.lrs for b in args.batch_sizes}
    records = warm_start.run_cells(cells, ["--shrink", *rest], out=out, script="sweep")
    return warm_start.summarize_cells(records, out, "experiments.sweep", plot_sweep)


if __name__ == "__main__":
    main_guard(main)
