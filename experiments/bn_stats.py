"""The study notebook's BatchNorm claims (3, 5, 6, 7): after copying round 1's weights, should
BatchNorm running statistics be kept, reset (mean 0, var 1; the official code) or recomputed
from the new data? For each --settings entry (lr:batch; large lr and small batch test claim 5)
the two-phase experiment runs random init and one warm arm per BN mode, recording after every
epoch the train accuracy (speed, stability), the validation accuracy, and the mismatch between
the running statistics and the fitted data's statistics (claims 6, 7).

    python -m experiments.bn_stats --model resnet18_narrow --optimizer sgd --seeds 3
    python -m experiments.bn_stats --quick --model resnet18_narrow --widths 8,16,32,64
"""

from __future__ import annotations

import argparse
import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.plots import plot_bn_stats


def main(argv=None) -> dict:
    """Runs every setting and writes the summary to ``<out>/results.json``."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["0.1:128", "0.01:128", "0.01:16"],
                   help="lr:batch pairs")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    rest, out = warm_start.split_out(rest, "runs/bn_stats")
    cells = {}
    for setting in args.settings:
        lr, _, batch = setting.partition(":")
        try:
            float(lr), int(batch)
        except ValueError:
            raise ValueError(f"--settings entry {setting!r} must be lr:batch, e.g. 0.1:128") from None
        cells[f"lr{float(lr):g}_b{int(batch)}"] = ["--lr", lr, "--batch-size", batch]
    records = warm_start.run_cells(
        cells, ["--model", "resnet18_narrow", "--shrink", *rest, "--bn", "keep", "reset",
                "recompute", "--curves", "--bn-probe"], out=out, script="bn_stats")
    return warm_start.summarize_cells(records, out, "experiments.bn_stats", plot_bn_stats)


if __name__ == "__main__":
    main_guard(main)
