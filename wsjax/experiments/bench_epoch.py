"""Benchmark: one training epoch of the study's models, wsjax's engine vs a plain loop.

wsjax: the whole epoch is one compiled call (vmapped over seeds, batches gathered on the
device). Baseline: the same jitted train step called from a Python loop, one host-made batch
per step (the usual first JAX port of a PyTorch loop). Both are timed after a warm-up call that
compiles, each epoch ending in ``block_until_ready``; figures are medians of --repeats runs.

    wsjax bench_epoch                 # this CPU: MLP 1 and 8 seeds, narrow ResNet
    wsjax bench_epoch --resnet-steps 0 --mlp-seeds 1 8 64

ResNet epochs on a CPU take minutes, so they are timed over --resnet-steps steps and scaled to
a full epoch of --epoch-size examples (the study's 33,333). --guard-cost also times the engine
without its divergence guard (``Engine(guard=None)``), to show what the guard costs.
--replicas times the ResNet rows in each replica layout named (``wsjax.replicas``: vmapped
seeds, or unrolled, the CPU default for conv nets). --torch also times the official PyTorch loop
(``wsjax.baselines.official_torch``: DataLoader with per-image transforms, same narrow
ResNet-18, Adam 1e-3) over the same steps with the installed torch, and gives the ratio of its
seconds per seed-epoch to the engine's (above 1: wsjax is faster).

    wsjax bench_epoch --mlp-seeds --resnet-seeds 1 4 --replicas vmap unroll --torch
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from wsjax import data as wdata
from wsjax.experiments.flags import HelpFormatter
from wsjax.engine import Engine
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.replicas import resolve_replicas
from wsjax.train import DivergenceGuard, make_train_step, pad_indices, replica_keys


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one that compiles and warms up."""
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_engine(model, tx, x, y, n, seeds, batch_size, repeats, guard=DivergenceGuard(),
                replicas="auto"):
    """Median seconds of one wsjax epoch over ``n`` examples for ``seeds`` replicas (with the
    divergence ``guard``, None for none, and the ``replicas`` layout)."""
    engine = Engine(model, tx, batch_size=batch_size, guard=guard, replicas=replicas)
    keys = replica_keys(range(seeds))
    box = [engine.new_state(engine.init(keys))]
    idx, n = pad_indices(np.arange(n))
    idx, active = jnp.asarray(idx), jnp.ones(seeds, bool)

    def run():
        box[0], sums = engine.epoch(box[0], keys, active, x, y, idx, n)
        return sums

    return median_time(run, repeats)


def time_python_loop(model, tx, x_host, y_host, n, batch_size, repeats):
    """Median seconds of one epoch as a Python loop over a jitted step, batches made on host."""
    step = jax.jit(make_train_step(model, tx), donate_argnums=0)
    engine = Engine(model, tx, batch_size=batch_size)
    box = [jax.tree.map(lambda a: a[0], engine.new_state(engine.init(replica_keys([0]))))]
    rng = np.random.default_rng(0)

    def run():
        order = rng.permutation(n)
        for i in range(math.ceil(n / batch_size)):
            ids = order[i * batch_size:(i + 1) * batch_size]
            batch = {"image": x_host[ids], "label": y_host[ids], "mask": np.ones(len(ids), bool)}
            box[0], sums = step(box[0], batch, jax.random.key(i))
        return sums

    return median_time(run, repeats)


def time_torch(x_host, y_host, args) -> float | None:
    """Seconds per epoch of --epoch-size examples of the official PyTorch loop, timed over
    --resnet-steps steps (median of --repeats after a warm-up epoch); None without torch."""
    try:
        from wsjax.baselines import official_torch
    except ImportError as err:  # torch is optional: the benchmark goes on without it
        print(f"--torch: PyTorch is not installed ({err}); pip install torch to compare")
        return None
    n = min(args.epoch_size, args.resnet_steps * args.batch_size)
    out = official_torch.time_epochs(x_host, y_host, np.arange(n), device="cpu",
                                     repeats=args.repeats, max_steps=args.resnet_steps,
                                     batch_size=args.batch_size)
    print(f"torch {out['torch']} on cpu, {out['steps']} steps of {args.batch_size}: "
          f"{out['epoch_s']:.3f} s (median of {out['timed']})")
    return out["epoch_s"] * math.ceil(args.epoch_size / args.batch_size) / out["steps"]


def main(argv=None):
    """``wsjax bench_epoch``: prints the table of epoch times."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with cifar10.npz (synthetic data "
                   "when it has none)")
    p.add_argument("--epoch-size", type=int, default=33_333, help="examples per epoch")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--mlp-seeds", type=int, nargs="*", default=[1, 8],
                   help="seed counts timed for the MLP")
    p.add_argument("--resnet-seeds", type=int, nargs="*", default=[1],
                   help="seed counts timed for the narrow ResNet-18")
    p.add_argument("--resnet-steps", type=int, default=8,
                   help="steps timed for the ResNet (0 skips it); scaled to a full epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs (the median is shown)")
    p.add_argument("--guard-cost", action="store_true", help="also time the engine without "
                   "its divergence guard")
    p.add_argument("--replicas", nargs="+", default=["auto"], choices=("auto", "vmap", "unroll"),
                   help="replica layouts timed for the ResNet rows")
    p.add_argument("--torch", action="store_true", help="also time the official PyTorch loop "
                   "on the ResNet (needs torch)")
    args = p.parse_args(argv)

    try:
        ds = wdata.load_dataset("cifar10", args.data_dir, download=False)
        source = "CIFAR-10"
    except FileNotFoundError:
        ds = wdata.synthetic_dataset(args.epoch_size, 10, 10)
        source = "synthetic CIFAR-shaped data"
    x_host, y_host = ds.x_train[: args.epoch_size], ds.y_train[: args.epoch_size]
    x, y = jax.device_put(x_host), jax.device_put(y_host)
    tx = make_optimizer("adam", 1e-3)
    steps_per_epoch = math.ceil(args.epoch_size / args.batch_size)
    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}), jax {jax.__version__}; {source}; epoch = "
          f"{args.epoch_size} examples, batch {args.batch_size}; medians of {args.repeats}")
    torch_epoch = None
    if args.torch and args.resnet_steps:
        torch_epoch = time_torch(x_host, y_host, args)
    print(f"{'model':16s} {'seeds':>5s} {'replicas':>8s} {'engine s/epoch':>15s} "
          f"{'per seed':>9s} {'python loop s/epoch':>20s} {'loop / engine per seed':>23s}"
          + (f" {'torch / engine per seed':>24s}" if torch_epoch else "")
          + (f" {'no guard s/epoch':>17s} {'guard cost':>10s}" if args.guard_cost else ""))
    rows = [("mlp", s, args.epoch_size, "auto") for s in args.mlp_seeds]
    if args.resnet_steps:
        n = min(args.epoch_size, args.resnet_steps * args.batch_size)
        rows += [("resnet18_narrow", s, n, r) for s in args.resnet_seeds for r in args.replicas]
    loops = {}
    for name, seeds, n, replicas in rows:
        model = create_model(name, 10)
        scale = steps_per_epoch / math.ceil(n / args.batch_size)
        engine = time_engine(model, tx, x, y, n, seeds, args.batch_size, args.repeats,
                             replicas=replicas) * scale
        layout = resolve_replicas(replicas, model, ds.image_shape)
        if name not in loops:
            loops[name] = time_python_loop(model, tx, x_host, y_host, n, args.batch_size,
                                           args.repeats) * scale
        bare = ""
        if args.guard_cost:
            unguarded = time_engine(model, tx, x, y, n, seeds, args.batch_size, args.repeats,
                                    guard=None, replicas=replicas) * scale
            bare = f" {unguarded:17.2f} {engine / unguarded - 1:+10.1%}"
        versus = ""
        if torch_epoch:
            versus = (f" {torch_epoch / (engine / seeds):24.2f}" if name == "resnet18_narrow"
                      else f" {'-':>24s}")
        print(f"{name:16s} {seeds:5d} {layout:>8s} {engine:15.2f} {engine / seeds:9.3f} "
              f"{loops[name]:20.2f} {loops[name] / (engine / seeds):23.2f}" + versus + bare
              + ("" if scale == 1 else f"   (timed {n} examples, x{scale:.1f})"))
    if torch_epoch:
        print(f"PyTorch official loop (narrow ResNet-18, 1 seed): {torch_epoch:.2f} s/epoch")


if __name__ == "__main__":
    main()
