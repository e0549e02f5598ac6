"""Fig 9: transfer. A model trained on the source dataset (to the stop rule, on its fitted
split) starts training on a fraction p of the target dataset's fitted split, vs a fresh model
and vs shrink-perturb of the source weights (default shrink 0.3, noise 1e-4, the paper's
transfer values). When the class counts differ, the classifier head is new.

    wsjax transfer --source cifar10 --dataset svhn --model resnet18_narrow
    wsjax transfer --quick --source synthetic:5 --dataset synthetic
"""

from __future__ import annotations

import dataclasses

import jax

from wsjax import data as wdata
from wsjax.checkpoint import merge_weights
from wsjax.experiments.common import (QUICK, StudyConfig, finish, main_guard, replace_study,
                                      setup, with_default_out)
from wsjax.experiments.flags import FRACTION, NON_NEGATIVE, SHARE, Checked, option, parse
from wsjax.study.plots import plot_transfer
from wsjax.study.protocols import RANDOM, warm_round
from wsjax.study.records import Run, TransferFraction, TransferResult
from wsjax.study.stages import KeyUse
from wsjax.warmstart import Arm


@dataclasses.dataclass(frozen=True)
class TransferConfig(Checked):
    """Fig 9; ``--dataset`` is the target."""

    study: StudyConfig = StudyConfig()
    source: str = option("cifar10", "dataset the warm model is trained on")
    fractions: tuple[float, ...] = option((0.01, 0.1, 0.25, 0.5, 1.0), "fractions of the "
                                          "target's fitted split", nargs="+",
                                          check=SHARE)
    shrink: float = option(0.3, "shrink of the shrink-perturb arm", check=FRACTION)
    noise: float = option(1e-4, "noise scale of the shrink-perturb arm", check=NON_NEGATIVE)


def run(cfg: TransferConfig) -> Run:
    """Trains on the source (its own run in ``<out>/source``), then every fraction of the
    target from random init, from the source weights, and shrink-perturbed."""
    target = setup(cfg, "transfer")
    source = setup(replace_study(cfg, data={"dataset": cfg.source, "label_noise": 0.0},
                                 run={"out": f"{cfg.study.run.out}/source"}), "transfer_source")
    if source.data.image_shape != target.data.image_shape:
        raise ValueError(f"source images {source.data.image_shape} and target images "
                         f"{target.data.image_shape} differ; transfer needs the same shape")
    trained = source.stages.train("source", source.stages.fresh("source"),
                                  source.data.fit_idx)
    new_head = source.data.num_classes != target.data.num_classes
    stages = target.stages
    arms = [Arm("warm_start"), Arm(f"sp_{cfg.shrink:g}", cfg.shrink, cfg.noise)]
    src_variables = jax.device_get(trained.states.variables)
    fractions = {}
    for frac in cfg.fractions:
        idx = wdata.first_fraction(target.data.fit_idx, frac)
        stage = f"p{frac:g}_{RANDOM}"
        rows = {RANDOM: stages.train(stage, stages.fresh(stage), idx).result.seeds}
        for arm in arms:
            stage = f"p{frac:g}_{arm.name}"
            merged = merge_weights(src_variables, jax.device_get(stages.fresh(stage,
                                                                               KeyUse.TARGET)),
                                   fresh_layers=("head",) if new_head else ())
            source_state = target.engine.new_state(merged)
            rows[arm.name] = warm_round(stages, arm, stage, source_state, idx).result.seeds
        fractions[f"{frac:g}"] = TransferFraction(n=idx.shape[-1], arms=rows)
    results = TransferResult(source=cfg.source, source_seeds=trained.result.seeds,
                             new_head=new_head, fractions=fractions)
    return finish(target, "transfer", results, plot_transfer)


def main(argv=None) -> Run:
    """``wsjax transfer``: parses the flags and runs Fig 9 for one (source, target) pair."""
    cfg = parse(TransferConfig, argv, description=__doc__, quick=QUICK)
    return run(with_default_out(cfg, "transfer"))


if __name__ == "__main__":
    main_guard(main)
