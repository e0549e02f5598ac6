"""Table 1: two-phase (50% -> 100%) random init vs warm start, for every model x optimizer.

Runs ``experiments.warm_start`` once per cell (run directories ``<out>/<dataset>_<model>_<opt>``,
each resumable) and prints the table of validation accuracy next to the paper's numbers.
Flags not listed below go to every cell (e.g. ``--seeds 5``, ``--max-epochs``).

    WSJAX_DATA_DIR=../shared/data python -m experiments.table1 --models logreg mlp --seeds 5
    python -m experiments.table1 --dataset svhn --models resnet18_narrow   # needs the data
"""

from __future__ import annotations

import argparse
import sys

from experiments import warm_start
from experiments.common import main_guard
from wsjax.runlog import RunDir, mean_se, paired_mean_se

# The paper's Table 1 (validation accuracy %, random init / warm start).
PAPER = {
    ("cifar10", "resnet18_narrow", "sgd"): (56.2, 51.7),
    ("cifar10", "resnet18_narrow", "adam"): (78.0, 74.4),
    ("cifar10", "mlp", "sgd"): (39.0, 37.4),
    ("cifar10", "mlp", "adam"): (39.4, 36.1),
    ("cifar10", "logreg", "sgd"): (40.5, 39.6),
    ("cifar10", "logreg", "adam"): (33.8, 33.3),
    ("svhn", "resnet18_narrow", "sgd"): (89.4, 87.5),
    ("svhn", "resnet18_narrow", "adam"): (93.6, 93.5),
    ("cifar100", "resnet18_narrow", "sgd"): (18.2, 15.5),
    ("cifar100", "resnet18_narrow", "adam"): (41.4, 35.0),
}


def cell_row(dataset: str, model: str, opt: str, results: dict) -> dict:
    """One table row: ours (mean, SE over seeds) beside the paper's."""
    row = {"dataset": dataset, "model": model, "optimizer": opt,
           "paper": PAPER.get((dataset, model, opt))}
    for arm in ("random_init", "warm_start"):
        seeds = results[arm]["seeds"]
        row[arm] = {k: mean_se([s[k] * 100 for s in seeds]) for k in ("val_acc", "test_acc")}
        row[arm]["seconds"] = mean_se([s.get("total_seconds", s["seconds"]) for s in seeds])
        row[arm]["n"] = len(seeds)
    row["gap"] = paired_mean_se(results["random_init"]["seeds"], results["warm_start"]["seeds"])
    return row


def format_table(rows) -> str:
    """Markdown table of the rows."""
    lines = ["| dataset | model | opt | random init val % | warm start val % | gap (pp) | "
             "paper (random / warm) | seeds |", "|" + "---|" * 8]
    for r in rows:
        f = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"
        paper = "{} / {}".format(*r["paper"]) if r["paper"] else "-"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['optimizer']} | "
                     f"{f(r['random_init']['val_acc'])} | {f(r['warm_start']['val_acc'])} | "
                     f"{f(r['gap'])} | {paper} | {r['random_init']['n']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Runs every cell of Table 1 for one dataset and writes ``<out>/results.json``."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--models", nargs="+", default=["resnet18_narrow", "mlp", "logreg"])
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"])
    p.add_argument("--out", default="runs/table1")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    rows = []
    for model in args.models:
        for opt in args.optimizers:
            cell = f"{args.out}/{args.dataset}_{model}_{opt}"
            record = warm_start.main(["--dataset", args.dataset, "--model", model,
                                      "--optimizer", opt, "--shrink", *rest, "--out", cell],
                                     script="warm_start")
            rows.append(cell_row(args.dataset, model, opt, record["results"]))
    table = format_table(rows)
    print(table)
    RunDir(args.out).write_results({"script": "experiments.table1", "rows": rows,
                                    "table": table})
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    main_guard(main)
