"""Cheap convolutions under a parameter budget, with distillation (Moonshine, Crowley et al.
2018; attention transfer, Zagoruyko & Komodakis 2017), and one warm-start question.

A teacher (``--model``, full convolutions) is trained; then for each family of ``--families``
a student, the same net with its blocks' 3x3 convs replaced by that substitute
(``wsjax.models.substitutes``), sized to ``--budget`` (a fraction of the teacher's parameters,
or a count; a family written ``kind:size`` is taken at that size instead), is trained three
ways, every seed at once:

- ``alone``: from scratch, cross-entropy;
- ``distilled``: from scratch, with attention transfer (and ``--alpha`` > 0: knowledge
  distillation) from the seed's own teacher, run inside the same compiled step;
- ``warm_sp``: from scratch except the layers whose shapes the teacher shares (stem, 1x1
  shortcuts, BatchNorms, head), which start as ``shrink * teacher + noise * fresh init``
  (shrink-perturb). Does it learn faster than ``alone``? (no source measures this.)

Every run uses the recipe of that line of work: He-normal init, SGD with Nesterov momentum 0.9
and learning rate 0.1, coupled weight decay 5e-4 on every parameter (as PyTorch's), cosine
annealing (``--schedule step``: x0.2 at 30/60/80% of the epochs), crop and flip, a fixed
number of epochs (``--epochs``; no stop rule). Training is on the study's fitted split (2/3 of
the training images, one split per seed); accuracy is on the test set.

    wsjax budget                          # reduced CPU scale: WRN-16-1 on 5,000 images
    wsjax budget --model wrn28_10 --full-data --epochs 200 --schedule step \\
        --budget 0.1 --families hashed_sep acdc bottleneck separable --seeds 5   # the GPU run
    wsjax budget --quick --dataset synthetic
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from wsjax.budget import resolve_budget, solve_budget
from wsjax.distill import Distillation
from wsjax.experiments.common import (StudyConfig, build_model, finish, main_guard,
                                      replace_study, setup, with_default_out)
from wsjax.experiments.flags import (COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Checked, Rule,
                                     option, parse)
from wsjax.models.substitutes import KINDS, ConvSpec
from wsjax.optim import SCHEDULES, lr_schedule, make_optimizer
from wsjax.study.records import BudgetResult, BudgetStudent, SeedRow
from wsjax.study.stages import KeyUse
from wsjax.summary import summarize_model
from wsjax.warmstart import shrink_perturb, transplant

QUICK = {"train_subset": 600, "epochs": 2, "seeds": 2}
# The reduced CPU scale (its defaults); --full-data uses every training image.
DEFAULTS = {"model": "wrn16_1", "init": "he_normal", "optimizer": "nesterov", "lr": 0.1,
            "weight_decay": 5e-4, "augment": ("crop", "flip"), "seeds": 2, "train_subset": 5000}
ARMS = ("alone", "distilled", "warm_sp")


def _family(text: str) -> bool:
    try:
        return ConvSpec.parse(text).kind != "full"
    except ValueError:
        return False


FAMILY = Rule(_family, f"a substitute kind of {[k for k in KINDS if k != 'full']}, "
                       f"optionally kind:size")
BUDGET = Rule(lambda v: v > 0 and (v < 1 or float(v).is_integer()),
              "a fraction in (0, 1) or a whole parameter count")


@dataclasses.dataclass(frozen=True)
class BudgetConfig(Checked):
    """The budget study; ``--model`` is the teacher, and each student's host net."""

    study: StudyConfig = StudyConfig()
    families: tuple[str, ...] = option(("separable", "bottleneck", "hashed", "acdc:4"),
                                       "substitute families: a kind is sized to --budget, "
                                       "kind:size is taken as given", nargs="+", check=FAMILY)
    budget: float = option(0.2, "students' parameter budget: a fraction of the teacher's, or "
                           "a count", check=BUDGET)
    epochs: int = option(10, "epochs of every training run (fixed: no stop rule)", check=COUNT)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    beta: float = option(1e3, "attention-transfer weight (beta / 2 per map)",
                         check=NON_NEGATIVE)
    alpha: float = option(0.0, "weight of knowledge distillation (1 - alpha on the labels)",
                          check=FRACTION)
    temperature: float = option(4.0, "distillation temperature", check=POSITIVE)
    shrink: float = option(0.3, "shrink of the warm_sp arm", check=FRACTION)
    noise: float = option(0.01, "noise scale of the warm_sp arm (times a fresh init)",
                          check=NON_NEGATIVE)
    full_data: bool = option(False, "train on every training image (the reduced scale's "
                             "default is --train-subset 5000)")


def _curve(progress) -> list[list[float | None]]:
    return [list(h["train_acc"]) for h in progress.history]


def run(cfg: BudgetConfig):
    """Trains the teacher, then every family's three arms; writes ``results.json`` and the
    figure of accuracy against parameters."""
    if cfg.full_data:
        cfg = replace_study(cfg, data={"train_subset": None})
    s = cfg.study
    # A fixed number of epochs: the 99% rule never fires (threshold above 1).
    cfg = replace_study(cfg, stop={"threshold": 2.0, "max_epochs": cfg.epochs})
    # Families may be added or left out when a run resumes: each student's stages stand alone.
    base = setup(cfg, "budget", models=(s.model.model,), may_change=("families",))
    data, shape = base.data, base.data.image_shape
    steps = math.ceil(data.fit_idx.shape[-1] / s.train.batch_size)
    tx = make_optimizer(s.optim.optimizer, lr_schedule(
        cfg.schedule, s.optim.lr, epochs=cfg.epochs, steps_per_epoch=steps),
        weight_decay=s.optim.weight_decay)
    teacher_model = base.engine.model
    teacher_engine = base.engine.replace(tx=tx)
    stages = base.stages.with_engine(teacher_engine)
    teacher = stages.train("teacher", stages.fresh("teacher"), data.fit_idx)
    teacher_vars = jax.device_get(teacher.states.variables)
    summary = summarize_model(teacher_model, shape, xla=False)
    build = lambda spec: build_model(dataclasses.replace(s.model, conv=str(spec)),
                                     data.num_classes)
    budget = resolve_budget(cfg.budget, summary.total_params)
    distill = Distillation(teacher_model, cfg.temperature, cfg.alpha, cfg.beta)
    students = {}
    for family in cfg.families:
        spec = ConvSpec.parse(family)
        solved = ":" not in family
        if solved:
            spec = solve_budget(build, spec, budget, shape).spec
        model = build(spec)
        plain = teacher_engine.replace(model=model)
        taught = plain.replace(distill=distill)
        rows, curves = {}, {}
        for arm in ARMS:
            name = f"{str(spec).replace(':', '-')}_{arm}"
            st = stages.with_engine(taught if arm == "distilled" else plain)
            variables = st.fresh(name)
            if arm == "warm_sp":
                fresh = st.fresh(name, KeyUse.PERTURB)["params"]
                params, mask = transplant(teacher_vars["params"],
                                          jax.device_get(variables["params"]))
                variables = {**variables, "params": shrink_perturb(
                    params, fresh, cfg.shrink, cfg.noise, mask=mask)}
            trained = st.train(name, variables, data.fit_idx,
                               extra=teacher_vars if arm == "distilled" else None)
            rows[arm], curves[arm] = trained.result.seeds, _curve(trained.progress)
            report(family, arm, rows[arm])
        cheap = summarize_model(model, shape, xla=False)
        students[str(spec)] = BudgetStudent(
            spec=str(spec), solved=solved, budget=budget, params=cheap.total_params,
            mult_adds=cheap.mult_adds, arms=rows, curves=curves)
    results = BudgetResult(teacher=s.model.model, teacher_params=summary.total_params,
                           teacher_mult_adds=summary.mult_adds,
                           teacher_seeds=teacher.result.seeds,
                           teacher_curve=_curve(teacher.progress), students=students)
    print(table(results))
    from wsjax.study.budget_plots import plot_budget

    return finish(base, "budget", results, plot_budget)


def report(family: str, arm: str, rows: list[SeedRow]) -> None:
    """One line per trained arm, as it finishes."""
    accs = [r.test_acc for r in rows if r.test_acc is not None]
    print(f"{family} {arm}: test acc {100 * np.mean(accs):.2f}% over {len(accs)} seeds")


def table(results: BudgetResult) -> str:
    """The study's table: one row per student (and the teacher), test accuracy mean +- sd
    over seeds per arm, and the paired difference distilled - alone."""
    def acc(rows):
        v = np.array([r.test_acc for r in rows if r.test_acc is not None]) * 100
        return f"{v.mean():.2f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"

    def gain(a, b):
        by_seed = {r.seed: r.test_acc for r in b}
        d = [100 * (r.test_acc - by_seed[r.seed]) for r in a if r.seed in by_seed]
        return f"{np.mean(d):+.2f}"

    lines = ["| student | params | mult-adds | alone | distilled | warm_sp | distilled - "
             "alone |", "| --- | ---: | ---: | --- | --- | --- | ---: |",
             f"| {results.teacher} (teacher, full) | {results.teacher_params:,} | "
             f"{results.teacher_mult_adds:,} | {acc(results.teacher_seeds)} | | | |"]
    for name, st in results.students.items():
        lines.append(f"| {name}{'' if st.solved else ' (given)'} | {st.params:,} | "
                     f"{st.mult_adds:,} | {acc(st.arms['alone'])} | "
                     f"{acc(st.arms['distilled'])} | {acc(st.arms['warm_sp'])} | "
                     f"{gain(st.arms['distilled'], st.arms['alone'])} |")
    return "\n".join(lines)


def main(argv=None):
    """``wsjax budget``: parses the flags and runs the budget study."""
    cfg = parse(BudgetConfig, argv, description=__doc__, quick=QUICK, defaults=DEFAULTS)
    return run(with_default_out(cfg, "budget"))


if __name__ == "__main__":
    main_guard(main)
