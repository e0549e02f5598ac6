"""Fig 2 and Fig 7: the online setting. Data arrive --chunk examples at a time (1,000 on
CIFAR-10: 34 rounds); after each chunk every arm retrains to the stop rule. Arms: random init
(fresh every round), warm start, and shrink-perturb for each --shrink (noise --noise). The
figure plots validation accuracy and train time per round against the number of examples.

The study notebook's claim 4 settings use the same script: ``--select margin`` (or
``entropy``) lets each arm's previous model pick the next chunk (active learning), and
``--label-noise 0.2`` corrupts a fifth of the training labels.

    python -m experiments.online --model mlp --optimizer adam --seeds 3 --shrink 0.6  # Fig 2
    python -m experiments.online --shrink 0 0.2 0.4 0.6 0.8 --no-random-init           # Fig 7
    python -m experiments.online --quick --select margin
"""

from __future__ import annotations

from experiments.common import Experiment, main_guard, make_parser, parse
from wsjax.online import SELECTORS, run_online
from wsjax.plots import plot_online
from wsjax.study import BN_MODES, Arm

QUICK = {"train_subset": 3000, "max_epochs": 20, "seeds": 2, "chunk": 250, "rounds": 6}


def main(argv=None) -> dict:
    """Runs the online experiment and writes ``results.json``."""
    p = make_parser(__doc__, QUICK)
    p.add_argument("--chunk", type=int, default=1000, help="examples added per round")
    p.add_argument("--rounds", type=int, default=None, help="stop after this many rounds")
    p.add_argument("--shrink", type=float, nargs="*", default=[0.6],
                   help="shrink-perturb arms (none: warm start vs random init only)")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--bn", default="reset", choices=BN_MODES,
                   help="BatchNorm statistics before each round of the warm arms")
    p.add_argument("--select", default="order", choices=SELECTORS,
                   help="order: random arrival (paper); margin/entropy: active selection")
    p.add_argument("--no-random-init", dest="random_init", action="store_false",
                   help="leave out the random-init arm (the most expensive)")
    p.add_argument("--no-warm-start", dest="warm_arm", action="store_false")
    args = parse(p, argv, "online")
    # --rounds only cuts the same sequence of rounds short: a run may be extended or cut.
    exp = Experiment(args, "experiments.online", may_change=("rounds",))
    arms = ([Arm("warm_start", bn=args.bn)] if args.warm_arm else []) + [
        Arm(f"sp_{s:g}", s, args.noise, bn=args.bn) for s in args.shrink]
    results = run_online(exp.runner, pool_idx=exp.fit_idx, chunk=args.chunk, arms=arms,
                         seeds=exp.seeds, eval_sets=exp.eval_sets, select=args.select,
                         num_rounds=args.rounds, include_random=args.random_init)
    return exp.finish(results, plot_online)


if __name__ == "__main__":
    main_guard(main)
