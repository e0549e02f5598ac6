"""Fig 4: warm-starting from the checkpoint of epoch k of the round-1 (50%) run.

Round 1 is saved every ``--every`` epochs (default 5); round 2 (100%) starts from each saved
epoch k (a plain warm start: new optimizer state, BatchNorm reset). The figure plots the
validation accuracy of each against k, beside random init on 100%. The paper finds the damage
appears after only a few epochs of round 1.

    python -m experiments.checkpoint_age --model mlp --optimizer adam --seeds 3
    python -m experiments.checkpoint_age --quick
"""

from __future__ import annotations

import dataclasses

from experiments.common import Experiment, main_guard, make_parser, parse
from wsjax.checkpoint import Checkpointer
from wsjax.plots import plot_checkpoint_age
from wsjax.study import Arm, per_seed


def main(argv=None) -> dict:
    """Runs Fig 4 and writes ``results.json``."""
    p = make_parser(__doc__)
    p.add_argument("--every", type=int, default=5, help="round-1 epochs between snapshots")
    p.add_argument("--first-fraction", type=float, default=0.5, help="round 1's share of data")
    args = parse(p, argv, "checkpoint_age")
    if args.every < 1:
        raise ValueError(f"--every={args.every} must be at least 1")
    exp = Experiment(args, "experiments.checkpoint_age")
    runner, fit_idx = exp.runner, exp.fit_idx
    first = fit_idx[: max(1, int(round(args.first_fraction * len(fit_idx))))]
    snapshots = Checkpointer(exp.run.path / "round1_snapshots")

    def snapshot(states, progress):
        if progress.epoch % args.every == 0 or progress.finished:
            snapshots.save(progress.epoch, states, {"active": progress.active})

    results = {}
    state, progress = runner.train("random_init", runner.fresh_variables("random_init"),
                                   fit_idx)
    results["random_init"] = {"seeds": per_seed(progress, runner.evaluate(state, exp.eval_sets),
                                                exp.seeds)}
    round1, _ = runner.train("round1", runner.fresh_variables("round1"), first,
                             on_epoch=snapshot)
    arm = Arm("warm_start")
    for k in snapshots.all_steps():
        stage = f"from_epoch_{k:03d}"
        source, _ = snapshots.restore(round1, k)
        state, progress = runner.train(stage, runner.warm_variables(arm, stage, source, fit_idx),
                                       fit_idx)
        results[stage] = {"round1_epoch": k, "arm": dataclasses.asdict(arm),
                          "seeds": per_seed(progress, runner.evaluate(state, exp.eval_sets),
                                            exp.seeds)}
    snapshots.close()
    return exp.finish(results, plot_checkpoint_age)


if __name__ == "__main__":
    main_guard(main)
