"""The regularization table: does L2, adversarial training or a confidence penalty close the
warm-start gap? Each regularizer at each strength (default 1e-1..1e-4) is used in both rounds
of the two-phase experiment (random init vs warm start); ``none`` is the baseline.

    wsjax regularization --model mlp --optimizer adam --seeds 5
    wsjax regularization --quick --strengths 0.01 --kinds l2
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments import warm_start
from wsjax.experiments.common import QUICK, main_guard, replace_study, run_cells
from wsjax.experiments.flags import NON_NEGATIVE, Checked, option, parse
from wsjax.study.plots import plot_regularization
from wsjax.study.records import Cells

REGULARIZERS = ("l2", "adversarial", "confidence")


@dataclasses.dataclass(frozen=True)
class RegularizationConfig(Checked):
    """The regularizers; ``cell`` is the two-phase config every cell starts from."""

    cell: warm_start.TwoPhaseConfig = warm_start.TwoPhaseConfig()
    kinds: tuple[str, ...] = option(REGULARIZERS, "regularizers", nargs="+",
                                    choices=REGULARIZERS)
    strengths: tuple[float, ...] = option((0.1, 0.01, 0.001, 0.0001), "strengths", nargs="+",
                                          check=NON_NEGATIVE)


def regularized(cell: warm_start.TwoPhaseConfig, kind: str, strength: float, out: str):
    """``cell`` with one regularizer: L2 is the optimizer's coupled weight decay, the others
    are training objectives."""
    if kind == "l2":
        return replace_study(cell, optim={"weight_decay": strength}, run={"out": out})
    return dataclasses.replace(replace_study(cell, run={"out": out}), objective=kind,
                               strength=strength)


def run(cfg: RegularizationConfig) -> Cells:
    """Runs the baseline and every (regularizer, strength) cell in ``<out>/<kind>_<strength>``."""
    out = cfg.cell.study.run.out
    cells = {"none": replace_study(cfg.cell, run={"out": f"{out}/none"})}
    for kind in cfg.kinds:
        for s in cfg.strengths:
            cells[f"{kind}_{s:g}"] = regularized(cfg.cell, kind, s, f"{out}/{kind}_{s:g}")
    return run_cells(cells, warm_start.run, script="regularization", out=out,
                     plot=plot_regularization)


def main(argv=None) -> Cells:
    """``wsjax regularization``: the flags of ``wsjax warm_start`` for every cell, and the
    regularizers'."""
    return run(parse(RegularizationConfig, argv, description=__doc__, quick=QUICK,
                     defaults={"shrink": (), "out": "runs/regularization"}))


if __name__ == "__main__":
    main_guard(main)
