"""Appendix: shrink-perturb applied after every optimizer step, in both rounds, vs ordinary
training. Two cells of the two-phase experiment (random init vs warm start in each):
``plain`` and ``every_step`` (``--sp-every-step SHRINK NOISE``, default 0.9999 / 1e-4: the
shrink compounds over thousands of steps, so it must be close to 1).

    python -m experiments.sp_every_step --model mlp --optimizer adam --seeds 3
"""

from __future__ import annotations

import argparse
import sys

from experiments import warm_start
from experiments.common import main_guard


def main(argv=None) -> dict:
    """Runs both cells and writes the summary to ``<out>/results.json``."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-shrink", type=float, default=0.9999)
    p.add_argument("--step-noise", type=float, default=1e-4)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    rest, out = warm_start.split_out(rest, "runs/sp_every_step")
    cells = {"plain": [], "every_step": ["--sp-every-step", str(args.step_shrink),
                                         str(args.step_noise)]}
    records = warm_start.run_cells(cells, ["--shrink", *rest], out=out,
                                   script="sp_every_step")
    return warm_start.summarize_cells(records, out, "experiments.sp_every_step")


if __name__ == "__main__":
    main_guard(main)
