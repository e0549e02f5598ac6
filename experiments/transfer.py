"""Fig 9: transfer. A model trained on the source dataset (to the stop rule, on its fitted
split) starts training on a fraction p of the target dataset's fitted split, vs a fresh model
and vs shrink-perturb of the source weights (default shrink 0.3, noise 1e-4, the paper's
transfer values). When the class counts differ, the classifier head is new.

    python -m experiments.transfer --source cifar10 --dataset svhn --model resnet18_narrow
    python -m experiments.transfer --quick --source synthetic:5 --dataset synthetic
"""

from __future__ import annotations

import argparse

import jax

from experiments.common import Experiment, main_guard, make_parser, parse
from wsjax import data as wdata
from wsjax.checkpoint import merge_weights
from wsjax.plots import plot_transfer
from wsjax.study import Arm, per_seed


def main(argv=None) -> dict:
    """Runs the transfer experiment for one (source, target) pair and writes results."""
    p = make_parser(__doc__)
    p.add_argument("--source", default="cifar10", help="dataset the warm model is trained on")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 0.25, 0.5, 1.0],
                   help="fractions of the target's fitted split")
    p.add_argument("--shrink", type=float, default=0.3)
    p.add_argument("--noise", type=float, default=1e-4)
    args = parse(p, argv, "transfer")
    target = Experiment(args, "experiments.transfer")
    source = Experiment(argparse.Namespace(**{**vars(args), "dataset": args.source,
                                              "out": f"{args.out}/source", "label_noise": 0.0}),
                        "experiments.transfer (source)")
    if source.ds.image_shape != target.ds.image_shape:
        raise ValueError(f"source images {source.ds.image_shape} and target images "
                         f"{target.ds.image_shape} differ; transfer needs the same shape")
    src_state, src_progress = source.runner.train(
        "source", source.runner.fresh_variables("source"), source.fit_idx)
    src_eval = per_seed(src_progress, source.runner.evaluate(src_state, source.eval_sets),
                        source.seeds)
    new_head = source.ds.num_classes != target.ds.num_classes
    runner = target.runner
    arms = [Arm("warm_start"), Arm(f"sp_{args.shrink:g}", args.shrink, args.noise)]
    results = {"source": {"dataset": source.ds.name, "seeds": src_eval}, "fractions": {}}
    src_variables = jax.device_get(src_state.variables)
    for frac in args.fractions:
        idx = wdata.first_fraction(target.fit_idx, frac)
        rows = {}
        stage = f"p{frac:g}_random_init"
        state, progress = runner.train(stage, runner.fresh_variables(stage), idx)
        rows["random_init"] = per_seed(progress, runner.evaluate(state, target.eval_sets),
                                       target.seeds)
        for arm in arms:
            stage = f"p{frac:g}_{arm.name}"
            fresh = runner.fresh_variables(stage, which=3)
            merged = merge_weights(src_variables, jax.device_get(fresh),
                                   fresh_layers=("head",) if new_head else ())
            warm = runner.warm_variables(arm, stage, runner.new_state(merged), idx)
            state, progress = runner.train(stage, warm, idx)
            rows[arm.name] = per_seed(progress, runner.evaluate(state, target.eval_sets),
                                      target.seeds)
        results["fractions"][f"{frac:g}"] = {"n": len(idx), "arms": rows}
    return target.finish(results, plot_transfer, source=args.source, new_head=new_head)


if __name__ == "__main__":
    main_guard(main)
