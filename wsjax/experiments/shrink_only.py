"""Fig 6: accuracy of a trained network after shrinking its weights (theta <- shrink * theta).

Each --models entry (default: the MLP with biases and the bias-free ReLU MLP) is trained once
from random init on the fitted split; then, for every shrink value, the validation accuracy of
the shrunk network is measured (no training). A bias-free ReLU network is positively
homogeneous, so its argmax, hence its accuracy, does not change; biases and BatchNorm break that.

    wsjax shrink_only --seeds 5
    wsjax shrink_only --models mlp mlp_nobias resnet18_narrow --quick
"""

from __future__ import annotations

import dataclasses

import jax

from wsjax.experiments.common import (QUICK, StudyConfig, build_model, finish, main_guard,
                                      setup, stop_rule, with_default_out)
from wsjax.experiments.flags import FRACTION, Checked, option, parse
from wsjax.models import MODELS
from wsjax.study.plots import plot_shrink_only
from wsjax.study.records import Run, ShrinkCurve
from wsjax.study.runlog import RunDir
from wsjax.study.stages import Stages

# Variants beside the registered models: name -> (model, field overrides).
VARIANTS = {"mlp_nobias": ("mlp", {"use_bias": False})}


@dataclasses.dataclass(frozen=True)
class ShrinkOnlyConfig(Checked):
    """Fig 6."""

    study: StudyConfig = StudyConfig()
    models: tuple[str, ...] = option(("mlp", "mlp_nobias"), "models trained and shrunk",
                                     nargs="+", choices=sorted(MODELS) + sorted(VARIANTS))
    shrinks: tuple[float, ...] = option(
        (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), "shrink factors",
        nargs="+", check=FRACTION)


def run(cfg: ShrinkOnlyConfig) -> Run:
    """Trains each model (its own stages in ``<out>/<model>``) and records accuracy against
    the shrink factor."""
    run_ = setup(cfg, "shrink_only", models=cfg.models)
    s = cfg.study
    results = {}
    for name in cfg.models:
        base, overrides = VARIANTS.get(name, (name, {}))
        model = build_model(dataclasses.replace(s.model, model=base),
                            run_.data.num_classes).clone(**overrides)
        engine = run_.engine.replace(model=model)
        stages = Stages(engine, RunDir(run_.run.path / name), run_.data, seeds=run_.seeds,
                        stop=stop_rule(s.stop), checkpoint_every=s.run.checkpoint_every,
                        progress=run_.stages.progress)
        trained = stages.train("train", stages.fresh("train"), run_.data.fit_idx)
        curve = []
        for shrink in cfg.shrinks:
            shrunk = trained.states.replace(
                params=jax.tree.map(lambda w: w * shrink, trained.states.params))
            curve.append(engine.evaluate(shrunk, *run_.data.eval_sets["val"])["acc"].tolist())
        results[name] = ShrinkCurve(seeds=trained.result.seeds, shrinks=list(cfg.shrinks),
                                    val_acc=curve)
    return finish(run_, "shrink_only", results, plot_shrink_only)


def main(argv=None) -> Run:
    """``wsjax shrink_only``: parses the flags and runs Fig 6."""
    cfg = parse(ShrinkOnlyConfig, argv, description=__doc__, quick=QUICK)
    return run(with_default_out(cfg, "shrink_only"))


if __name__ == "__main__":
    main_guard(main)
