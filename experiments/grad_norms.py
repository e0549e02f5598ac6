"""Fig 5: gradient norms on old vs new data during round 2.

Round 1 trains on the first 50%; in round 2 (100%), after every epoch, the mean norm of
minibatch gradients is measured on a fixed sample of old examples (round 1's) and one of new
examples, for a plain warm start and for shrink-perturb with each --shrink (noise --noise).
The paper finds warm-started models have much smaller gradients on old data than on new data,
and that shrink-perturb balances them.

    python -m experiments.grad_norms --model mlp --optimizer adam --seeds 3
    python -m experiments.grad_norms --quick
"""

from __future__ import annotations

import dataclasses

from experiments.common import Experiment, main_guard, make_parser, parse
from wsjax.plots import plot_grad_norms
from wsjax.probes import make_grad_norm_fn
from wsjax.study import Arm, per_seed


def main(argv=None) -> dict:
    """Runs Fig 5 and writes ``results.json``."""
    p = make_parser(__doc__)
    p.add_argument("--shrink", type=float, nargs="*", default=[0.9, 0.7, 0.5, 0.3])
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--probe-size", type=int, default=1024,
                   help="old and new examples each on which gradients are measured")
    args = parse(p, argv, "grad_norms")
    exp = Experiment(args, "experiments.grad_norms")
    runner, fit_idx = exp.runner, exp.fit_idx
    half = len(fit_idx) // 2
    old, new = fit_idx[:half][: args.probe_size], fit_idx[half:][: args.probe_size]
    norms = make_grad_norm_fn(exp.model, batch_size=min(args.batch_size, len(old), len(new)))

    def watch(states):
        return {"grad_old": norms(states, exp.x, exp.y, old),
                "grad_new": norms(states, exp.x, exp.y, new)}

    round1, _ = runner.train("round1", runner.fresh_variables("round1"), fit_idx[:half])
    arms = [Arm("warm_start")] + [Arm(f"sp_{s:g}", s, args.noise) for s in args.shrink]
    results = {}
    for arm in arms:
        stage = f"round2_{arm.name}"
        variables = runner.warm_variables(arm, stage, round1, fit_idx)
        start = watch(runner.new_state(variables))
        state, progress = runner.train(stage, variables, fit_idx, watch=watch)
        results[arm.name] = {
            "arm": dataclasses.asdict(arm),
            "seeds": per_seed(progress, runner.evaluate(state, exp.eval_sets), exp.seeds),
            "start": {k: v.tolist() for k, v in start.items()},
            "history": progress.history}
    return exp.finish(results, plot_grad_norms)


if __name__ == "__main__":
    main_guard(main)
