"""Redraws every figure from saved results, without training.

Finds every ``results.json`` under the given folders (default: ``runs`` and
``experiments/results``) and draws its figure next to it with the plot of the script that
wrote it.

    wsjax redraw
    wsjax redraw experiments/results/online_mlp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsjax.experiments.common import main_guard
from wsjax.experiments.flags import HelpFormatter
from wsjax.study import plots, records
from wsjax.study.budget_plots import plot_budget
from wsjax.study.plasticity_plots import plot_interventions

# One run of a script -> its figure; sweeps (records.Cells) -> theirs.
SINGLE = {"warm_start": plots.plot_two_phase, "perturb_only": plots.plot_two_phase,
          "curves": plots.plot_curves, "sp_grid": plots.plot_grid,
          "checkpoint_age": plots.plot_checkpoint_age, "grad_norms": plots.plot_grad_norms,
          "shrink_only": plots.plot_shrink_only, "online": plots.plot_online,
          "transfer": plots.plot_transfer, "interventions": plot_interventions,
          "budget": plot_budget}
DEFAULT_FOLDERS = ("runs", "experiments/results")
CELLS = {"regularization": plots.plot_regularization, "sweep": plots.plot_sweep,
         "bn_stats": plots.plot_bn_stats, "sp_every_step": plots.plot_cells}


def plot_for(record: records.Record):
    """The plot function for a record, or None (e.g. Table 1's summary)."""
    if isinstance(record, records.Cells):
        return CELLS.get(record.script)
    if not isinstance(record, records.Run):
        return None
    # A cell of a sweep is a two-phase run under the sweep's name.
    return SINGLE.get(record.script, plots.plot_two_phase if record.script in CELLS else None)


def main(argv=None) -> list[Path]:
    """Redraws the figures under the given folders; returns their paths."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("folders", nargs="*", help="folders searched for results.json (default: "
                   "runs and experiments/results, those that exist)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    folders = [Path(f) for f in args.folders]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"no folder {', '.join(missing)}: name folders that hold runs")
    folders = folders or [f for f in map(Path, DEFAULT_FOLDERS) if f.is_dir()]
    paths = [path for folder in folders for path in sorted(folder.rglob("results.json"))
             if "checkpoints" not in path.parts]
    drawn = []
    for path, record in records.load_all(paths, lambda text: print(text, file=sys.stderr)):
        plot = plot_for(record)
        if plot is None:
            continue
        drawn.append(plot(record, path.parent))
        print(f"{path} -> {drawn[-1]}")
    print(f"{len(drawn)} figures redrawn")
    return drawn


if __name__ == "__main__":
    main_guard(main)
