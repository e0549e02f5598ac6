"""The study's two-phase experiment (Ash & Adams, Table 1): is a warm-started model worse?

Arms, each over --seeds seeds trained at once (vmapped):
  random_init      fresh init, trained on 100% of the fitted split;
  warm_start       round 1 on the first 50%, then round 2 on 100% from round 1's weights;
  sp_<shrink>      like warm_start, with shrink-perturb (shrink * w + noise * fresh init)
                   applied before round 2, for each --shrink value (sp_<shrink>_<noise> when
                   several --noise values make a grid).
The optimizer state is new at every round; BatchNorm statistics are reset before round 2
(--bn keep/recompute to change that). Runs resume from their checkpoints when started again.

    WSJAX_DATA_DIR=../shared/data python -m experiments.warm_start --quick
    python -m experiments.warm_start --model mlp --optimizer adam --seeds 4 --out runs/mlp_adam

Other experiments reuse it: table1, curves (Fig 1), sp_grid (Fig 8), perturb_only,
regularization and sweep (Fig 3) call ``main`` with their own flags.
"""

from __future__ import annotations

import jax

from experiments.common import Experiment, main_guard, make_parser, parse
from wsjax.models import init_variables
from wsjax.objectives import KINDS, Objective
from wsjax.probes import bn_mismatch
from wsjax.plots import plot_cells, plot_two_phase
from wsjax.runlog import RunDir, mean_se
from wsjax.study import BN_MODES, Arm, run_two_phase
from wsjax.warmstart import shrink_perturb


def add_flags(p) -> None:
    """The two-phase flags (shared with the scripts that call ``main``)."""
    p.add_argument("--shrink", type=float, nargs="*", default=[0.6, 0.3],
                   help="shrink values of the shrink-perturb arms (none: no such arm)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.01],
                   help="perturbation scale(s) of the shrink-perturb arms (several: a grid)")
    p.add_argument("--noise-kind", default="init", choices=("init", "gaussian"),
                   help="init: noise * a fresh init (official code); gaussian: N(0, noise^2)")
    p.add_argument("--no-warm-start", dest="warm_arm", action="store_false",
                   help="leave out the plain warm-start arm")
    p.add_argument("--first-fraction", type=float, default=0.5, help="round 1's share of data")
    p.add_argument("--bn", nargs="+", default=["reset"], choices=BN_MODES,
                   help="BatchNorm statistics before round 2: reset (official), keep, or "
                        "recompute from the new data; several give one warm arm each")
    p.add_argument("--objective", default="ce", choices=KINDS,
                   help="training loss in both rounds (regularization table)")
    p.add_argument("--strength", type=float, default=0.0, help="strength of --objective")
    p.add_argument("--sp-every-step", type=float, nargs=2, default=None,
                   metavar=("SHRINK", "NOISE"),
                   help="apply shrink-perturb after every optimizer step of every stage")
    p.add_argument("--curves", action="store_true",
                   help="evaluate validation accuracy after every epoch (Fig 1)")
    p.add_argument("--bn-probe", action="store_true",
                   help="after every epoch, measure how far BatchNorm running statistics are "
                        "from the statistics of the fitted data (claims 6, 7)")


def arms_of(args) -> list[Arm]:
    """The warm arms the flags ask for."""
    arms = []
    for bn in args.bn:
        suffix = "" if len(args.bn) == 1 else f"_bn_{bn}"
        if args.warm_arm:
            arms.append(Arm(f"warm_start{suffix}", 1.0, 0.0, bn=bn))
        for s in args.shrink:
            for n in args.noise:
                name = f"sp_{s:g}" if len(args.noise) == 1 else f"sp_{s:g}_{n:g}"
                arms.append(Arm(name + suffix, s, n, args.noise_kind, bn))
    return arms


def every_step(exp: Experiment, shrink: float, noise: float):
    """``after_update`` applying shrink-perturb (noise from a fresh init) at every step."""
    def after(params, key):
        fresh = init_variables(exp.model, key, exp.ds.image_shape)["params"]
        return shrink_perturb(params, fresh, shrink, noise)
    return after


def make_watch(exp: Experiment, *, curves: bool, bn_probe: bool):
    """The per-epoch measurements the flags ask for (see ``StageRunner.train``), or None."""
    if not (curves or bn_probe):
        return None
    runner = exp.runner

    def watch(states):
        out = {}
        if curves:
            out["val_acc"] = runner.evaluate(states, exp.eval_sets)["val"]["acc"]
        if bn_probe and jax.tree.leaves(states.batch_stats):
            data = runner.recompute_stats(states.params, states.batch_stats, exp.fit_idx,
                                          "bn_probe")
            gaps = bn_mismatch(states.batch_stats, data)
            out["bn_mean_gap"], out["bn_logvar_gap"] = gaps["mean_gap"], gaps["logvar_gap"]
        return out

    return watch


def print_table(results: dict) -> None:
    """The arms' mean ± SE accuracies, epochs and seconds."""
    cols = ("arm", "val acc %", "test acc %", "epochs", "total epochs", "seconds",
            "total seconds")
    print(" | ".join(cols))
    for arm, r in results.items():
        s = r["seeds"]
        fmt = lambda key, scale=1.0, digits=2: "{:.{d}f} ± {:.{d}f}".format(
            *mean_se([x[key] * scale for x in s]), d=digits)
        total = lambda key, d: fmt(f"total_{key}", 1, d) if f"total_{key}" in s[0] else fmt(key, 1, d)
        print(" | ".join([arm, fmt("val_acc", 100), fmt("test_acc", 100), fmt("epochs", 1, 1),
                          total("epochs", 1), fmt("seconds", 1, 1), total("seconds", 1)]))


def main(argv=None, *, script: str = "warm_start", plot=plot_two_phase, parser=None) -> dict:
    """Runs the two-phase experiment with ``argv``'s flags; returns the ``results.json``
    record. ``script`` names the experiment (default run directory, ``results.json``)."""
    p = parser or make_parser(__doc__)
    if parser is None:
        add_flags(p)
    args = parse(p, argv, script)
    options = {}
    if args.objective != "ce" or args.strength:
        options["objective"] = Objective(args.objective, args.strength)
    exp = Experiment(args, f"experiments.{script}", runner=False)
    if args.sp_every_step:
        options["after_update"] = every_step(exp, *args.sp_every_step)
    exp.runner = exp.make_runner(**options)
    watch = make_watch(exp, curves=args.curves, bn_probe=args.bn_probe)
    results = run_two_phase(exp.runner, fit_idx=exp.fit_idx, first_fraction=args.first_fraction,
                            arms=arms_of(args), seeds=exp.seeds, eval_sets=exp.eval_sets,
                            watch=watch)
    print_table(results)
    return exp.finish(results, plot)


def run_cells(cells: dict, argv, *, out: str, script: str, plot=None) -> dict:
    """Runs the two-phase experiment once per cell (``{name: extra flags}``) in
    ``<out>/<name>`` with ``argv``'s flags (later flags win) and returns ``{name: record}``.
    Each cell is resumable on its own."""
    records = {}
    for name, flags in cells.items():
        records[name] = main([*argv, *flags, "--out", f"{out}/{name}"], script=script,
                             plot=plot)
    return records


def split_out(argv, default: str) -> tuple[list, str]:
    """Removes ``--out DIR`` from ``argv``; returns the rest and DIR (or ``default``)."""
    argv = list(argv)
    if "--out" in argv:
        i = argv.index("--out")
        out = argv[i + 1]
        del argv[i: i + 2]
        return argv, out
    return argv, default


def summarize_cells(records: dict, out: str, script: str, plot=None) -> dict:
    """The summary record of a multi-cell experiment (written to ``<out>/results.json``)."""
    first = next(iter(records.values()))
    summary = {"script": script, "title": first["title"],
               "cells": {k: {"config": r["config"], "results": r["results"],
                             "wall_seconds": r["wall_seconds"]} for k, r in records.items()},
               "wall_seconds": sum(r["wall_seconds"] for r in records.values()),
               "device": first["device"]}
    run = RunDir(out)
    run.write_results(summary)
    plot = plot or plot_cells
    try:
        print(f"figure {plot(summary, run.path)}")
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'wsjax[plot]')")
    return summary


if __name__ == "__main__":
    main_guard(main)
