"""Table 1: two-phase (50% -> 100%) random init vs warm start, for every model x optimizer.

Runs the two-phase experiment once per cell (run directories ``<out>/<dataset>_<model>_<opt>``,
each resumable) and prints the table of validation accuracy next to the paper's numbers.
Every flag of ``wsjax warm_start`` applies to every cell (e.g. ``--seeds 5``); the cells have
no shrink-perturb arm unless ``--shrink`` asks for one.

    WSJAX_DATA_DIR=../shared/data wsjax table1 --models logreg mlp --seeds 5
    wsjax table1 --dataset svhn --models resnet18_narrow   # needs the data
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, replace_study
from wsjax.experiments.flags import Checked, option, parse
from wsjax.models import MODELS
from wsjax.optim import OPTIMIZERS
from wsjax.study import records
from wsjax.study.records import ArmSummary, Table1, Table1Row
from wsjax.study.runlog import RunDir
from wsjax.study.stats import column, counted, mean_se, paired_mean_se

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


@dataclasses.dataclass(frozen=True)
class Table1Config(Checked):
    """Table 1's cells; ``cell`` is the two-phase config every cell starts from."""

    cell: warm_start.TwoPhaseConfig = warm_start.TwoPhaseConfig()
    models: tuple[str, ...] = option(("resnet18_narrow", "mlp", "logreg"), "models of the "
                                     "table", nargs="+", choices=sorted(MODELS))
    optimizers: tuple[str, ...] = option(("sgd", "adam"), "optimizers of the table",
                                         nargs="+", choices=OPTIMIZERS)


def cell_row(dataset: str, model: str, opt: str, results: dict) -> Table1Row:
    """One table row: ours (mean, SE over seeds) beside the paper's."""
    arms = {}
    for arm in ("random_init", "warm_start"):
        seeds = results[arm].seeds
        kept = [s for s in seeds if counted(s)]  # diverged seeds are counted apart
        arms[arm] = ArmSummary(
            val_acc=list(mean_se(column(kept, "val_acc", 100))),
            test_acc=list(mean_se(column(kept, "test_acc", 100))),
            seconds=list(mean_se([s.total_seconds if s.total_seconds is not None
                                  else s.seconds for s in kept])),
            n=len(kept), diverged=len(seeds) - len(kept))
    paper = PAPER.get((dataset, model, opt))
    return Table1Row(dataset, model, opt, list(paper) if paper else None, arms["random_init"],
                     arms["warm_start"], list(paired_mean_se(results["random_init"].seeds,
                                                             results["warm_start"].seeds)))


def format_table(rows: list[Table1Row]) -> str:
    """Markdown table of the rows."""
    lines = ["| dataset | model | opt | random init val % | warm start val % | gap (pp) | "
             "paper (random / warm) | seeds |", "|" + "---|" * 8]
    for r in rows:
        f = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"
        paper = "{} / {}".format(*r.paper) if r.paper else "-"
        lines.append(f"| {r.dataset} | {r.model} | {r.optimizer} | "
                     f"{f(r.random_init.val_acc)} | {f(r.warm_start.val_acc)} | "
                     f"{f(r.gap)} | {paper} | {r.random_init.n} |")
    return "\n".join(lines)


def run(cfg: Table1Config) -> Table1:
    """Runs every cell of Table 1 for one dataset and writes ``<out>/results.json``."""
    study = cfg.cell.study
    out, dataset = study.run.out, study.data.dataset
    rows = []
    for model in cfg.models:
        for opt in cfg.optimizers:
            cell = replace_study(cfg.cell, model={"model": model}, optim={"optimizer": opt},
                                 run={"out": f"{out}/{dataset}_{model}_{opt}"})
            rows.append(cell_row(dataset, model, opt, warm_start.run(cell).results))
    table = Table1(script="table1", rows=rows, table=format_table(rows))
    print(table.table)
    run = RunDir(out)
    records.save(table, run.results_path)
    run.close()
    return table


def main(argv=None) -> Table1:
    """``wsjax table1``: parses the flags and runs every cell."""
    cfg = parse(Table1Config, argv, description=__doc__, quick=QUICK,
                defaults={"shrink": (), "out": "runs/table1"})
    return run(cfg)


if __name__ == "__main__":
    main_guard(main)
