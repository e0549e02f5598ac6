"""The study's two-phase experiment (Ash & Adams, Table 1): is a warm-started model worse?

Arms, each over --seeds seeds trained at once (vmapped):
  random_init      fresh init, trained on 100% of the fitted split;
  warm_start       round 1 on the first 50%, then round 2 on 100% from round 1's weights;
  sp_<shrink>      like warm_start, with shrink-perturb (shrink * w + noise * fresh init)
                   applied before round 2, for each --shrink value.
The optimizer state is new at every round; BatchNorm statistics are reset before round 2
(--no-bn-reset keeps them). Runs resume from their checkpoints when started again.

    WSJAX_DATA_DIR=../shared/data python -m experiments.warm_start --quick
    python -m experiments.warm_start --model mlp --optimizer adam --seeds 4 --out runs/mlp_adam
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from experiments.common import (add_common_flags, choose_parallel, load_data, plateau_window,
                                seeds_of)
from wsjax import data as wdata
from wsjax.augment import make_preprocess
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.runlog import RunDir, mean_se
from wsjax.study import Arm, StageRunner, run_two_phase
from wsjax.train import StopRule, make_epoch_fn, replica_keys

QUICK = {"train_subset": 3000, "max_epochs": 20, "seeds": 2}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--shrink", type=float, nargs="*", default=[0.6, 0.3],
                   help="shrink values of the shrink-perturb arms (none: no such arm)")
    p.add_argument("--noise", type=float, default=0.01,
                   help="perturbation scale of the shrink-perturb arms")
    p.add_argument("--noise-kind", default="init", choices=("init", "gaussian"),
                   help="init: noise * a fresh init (official code); gaussian: N(0, noise^2)")
    p.add_argument("--first-fraction", type=float, default=0.5, help="round 1's share of data")
    p.add_argument("--no-bn-reset", dest="bn_reset", action="store_false",
                   help="keep BatchNorm running statistics between rounds")
    p.add_argument("--quick", action="store_true",
                   help=f"a CPU-minute run: {QUICK} unless set explicitly")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    args.out = args.out or f"runs/warm_start_{args.dataset}_{args.model}_{args.optimizer}"
    return args


def print_table(results: dict) -> None:
    cols = ("arm", "val acc %", "test acc %", "epochs", "total epochs", "seconds",
            "total seconds")
    print(" | ".join(cols))
    for arm, r in results.items():
        s = r["seeds"]
        fmt = lambda key, scale=1.0, digits=2: "{:.{d}f} ± {:.{d}f}".format(
            *mean_se([x[key] * scale for x in s]), d=digits)
        total = lambda key, d: fmt(f"total_{key}", 1, d) if f"total_{key}" in s[0] else fmt(key, 1, d)
        print(" | ".join([arm, fmt("val_acc", 100), fmt("test_acc", 100), fmt("epochs", 1, 1),
                          total("epochs", 1), fmt("seconds", 1, 1), total("seconds", 1)]))


def main(argv=None) -> dict:
    args = parse(argv)
    start = time.perf_counter()
    ds = load_data(args)
    seeds = seeds_of(args)
    fit_idx, val_idx = wdata.study_split(len(ds.x_train), args.split_seed)
    fit_idx = wdata.shuffled(fit_idx, args.split_seed)  # so the first 50% is a random half
    model = create_model(args.model, ds.num_classes)
    tx = make_optimizer(args.optimizer, args.lr, weight_decay=args.weight_decay)
    parallel = choose_parallel(args.parallel, args.model, len(seeds))
    run = RunDir(args.out)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "checkpoint_every")}
    run.write_config({**config, "script": "experiments.warm_start"})
    arms = [Arm("warm_start", 1.0, 0.0, reset_bn=args.bn_reset)] + [
        Arm(f"sp_{s:g}", s, args.noise, args.noise_kind, args.bn_reset) for s in args.shrink]
    print(f"{ds.name}: {len(fit_idx)} fitted / {len(val_idx)} validation / {len(ds.x_test)} "
          f"test; model {args.model}; {args.optimizer} lr {args.lr}; seeds {list(seeds)}; "
          f"devices {jax.device_count()} ({jax.devices()[0].platform}), parallel "
          f"{parallel.mode if parallel else 'none'}")

    put = parallel.place_data if parallel else jax.device_put
    x, y = put(ds.x_train), put(ds.y_train)
    eval_sets = {"val": (x, y, put(val_idx)),
                 "test": (put(ds.x_test), put(ds.y_test), put(np.arange(len(ds.x_test))))}
    epoch_fn = make_epoch_fn(model, tx, batch_size=args.batch_size,
                             preprocess=make_preprocess(), parallel=parallel)
    stop = StopRule(args.threshold, args.max_epochs, plateau_window(args), args.plateau_std)
    runner = StageRunner(model=model, tx=tx, epoch_fn=epoch_fn, x=x, y=y,
                         capacity=len(fit_idx), stop=stop, keys=replica_keys(seeds), run=run,
                         checkpoint_every=args.checkpoint_every, parallel=parallel,
                         input_shape=ds.image_shape)
    results = run_two_phase(runner, fit_idx=fit_idx, first_fraction=args.first_fraction,
                            arms=arms, seeds=seeds, eval_sets=eval_sets)
    wall = time.perf_counter() - start
    run.write_results({"config": config, "arms": results, "wall_seconds": wall,
                       "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"})
    print_table(results)
    print(f"wall time {wall:.1f} s; results in {run.path / 'results.json'}")
    try:
        from wsjax.plots import plot_two_phase

        png = plot_two_phase(results, run.path / "two_phase.png",
                             f"{ds.name} {args.model} {args.optimizer} lr {args.lr}, "
                             f"{len(seeds)} seeds")
        print(f"figure {png}")
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'wsjax[plot]')")
    return results


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
