"""Every warm-start intervention of the plasticity literature under one staged protocol.

The pool (the fitted split) is cut into --chunk-sized chunks; stage t trains on chunks 0..t
until the running training accuracy reaches --threshold (DASH's stationary protocol: 0.999,
SGD with momentum 0.9, lr 1e-3, momentum kept across stages unless the method resets it).
Arms (--methods): cold, warm, warm_rm (optimizer reset), reset (head), l2_init, sp (DASH
repository form), sp_aa (Ash & Adams' form), dash, redo (at each stage's start). Each stage
records test accuracy, epochs, steps and examples per seed, and plasticity diagnostics at its
start (after the intervention) and end: dormant and dead units, feature ranks, weight
magnitude, distance from the initialization, the gradient ratio of new to old data and the
accuracy on the previous data. Figures: accuracy against compute per arm, and the
diagnostics across stages.

    wsjax interventions --model mlp --seeds 5 --chunk 1000 --stages 10
    wsjax interventions --quick
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments.common import (StudyConfig, finish, main_guard, setup,
                                      with_default_out)
from wsjax.experiments.flags import COUNT, Checked, option, parse
from wsjax.study.plasticity_plots import plot_interventions
from wsjax.study.records import Run
from wsjax.study.staged import METHODS, Method, default_methods, run_staged

QUICK = {"train_subset": 3000, "max_epochs": 20, "seeds": 2, "chunk": 250, "stages": 4}


@dataclasses.dataclass(frozen=True)
class InterventionsConfig(Checked):
    """The interventions experiment."""

    study: StudyConfig = StudyConfig()
    chunk: int = option(1000, "examples per chunk (DASH: 1,000 of 50,000)", check=COUNT)
    stages: int | None = option(None, "stop after this many stages (default: every chunk)",
                                check=COUNT)
    methods: tuple[str, ...] = option(tuple(m.name for m in default_methods()),
                                      "arms, by name", nargs="+", choices=METHODS)
    probe: int = option(500, "validation examples of the fixed probe set of the diagnostics",
                        check=COUNT)


# DASH's standard setting: the script's defaults (flags still override them).
PROTOCOL = {"optimizer": "momentum", "lr": 1e-3, "threshold": 0.999}


def methods_of(cfg: InterventionsConfig) -> list[Method]:
    """The arms the flags name, each with its source's defaults."""
    by_name = {m.name: m for m in default_methods()}
    return [by_name[n] for n in cfg.methods]


def run(cfg: InterventionsConfig) -> Run:
    """Runs every arm through the staged protocol and writes the record."""
    # More stages extend a run; arms may be added or left out (each arm has its own record).
    run_ = setup(cfg, "interventions", may_change=("stages", "methods"))
    results = run_staged(run_.stages, pool_idx=run_.data.fit_idx, chunk=cfg.chunk,
                         methods=methods_of(cfg), num_stages=cfg.stages, probe=cfg.probe)
    return finish(run_, "staged", results, plot_interventions)


def main(argv=None) -> Run:
    """``wsjax interventions``: parses the flags and runs the experiment."""
    cfg = parse(InterventionsConfig, argv, description=__doc__, defaults=PROTOCOL, quick=QUICK)
    return run(with_default_out(cfg, "interventions"))


if __name__ == "__main__":
    main_guard(main)
