"""Fig 6: accuracy of a trained network after shrinking its weights (theta <- shrink * theta).

Each --models entry (default: the MLP with biases and the bias-free ReLU MLP) is trained once
from random init on the fitted split; then, for every shrink value, the validation accuracy of
the shrunk network is measured (no training). A bias-free ReLU network is positively
homogeneous, so its argmax, hence its accuracy, does not change; biases and BatchNorm break that.

    python -m experiments.shrink_only --seeds 3
    python -m experiments.shrink_only --models mlp mlp_nobias resnet18_narrow --quick
"""

from __future__ import annotations

import argparse

import jax

from experiments.common import Experiment, main_guard, make_parser, model_of, parse, plateau_window
from wsjax.plots import plot_shrink_only
from wsjax.study import per_seed
from wsjax.train import StopRule

VARIANTS = {"mlp": ("mlp", {}), "mlp_nobias": ("mlp", {"use_bias": False})}


def main(argv=None) -> dict:
    """Trains each model and records accuracy against the shrink factor."""
    p = make_parser(__doc__)
    p.add_argument("--models", nargs="+", default=["mlp", "mlp_nobias"],
                   help="mlp, mlp_nobias, logreg, resnet18_narrow, resnet18")
    p.add_argument("--shrinks", type=float, nargs="+",
                   default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    args = parse(p, argv, "shrink_only")
    exp = Experiment(args, "experiments.shrink_only", runner=False)
    results = {}
    for name in args.models:
        base, overrides = VARIANTS.get(name, (name, {}))
        sub = argparse.Namespace(**{**vars(args), "model": base})
        model = model_of(sub, exp.ds.num_classes).clone(**overrides)
        stop = StopRule(args.threshold, args.max_epochs, plateau_window(sub), args.plateau_std)
        runner = exp.make_runner(subdir=name, model=model, stop=stop)
        state, progress = runner.train("train", runner.fresh_variables("train"), exp.fit_idx)
        curve = []
        for s in args.shrinks:
            shrunk = state.replace(params=jax.tree.map(lambda w: w * s, state.params))
            curve.append(runner.evaluate(shrunk, {"val": exp.eval_sets["val"]})["val"]["acc"]
                         .tolist())
        results[name] = {"seeds": per_seed(progress, runner.evaluate(state, exp.eval_sets),
                                           exp.seeds),
                         "shrinks": args.shrinks, "val_acc": curve}
    return exp.finish(results, plot_shrink_only)


if __name__ == "__main__":
    main_guard(main)
