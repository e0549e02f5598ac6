"""The fast CIFAR-10 trainer (``wsjax.speedrun``): timed runs, airbench side by side, per-trick
ablation, and the study's two-phase warm-start experiment with this recipe.

Modes (``--mode``):
  time       --runs N timed runs: TTA test accuracy mean ± std, median seconds.
  airbench   on a CUDA GPU with the PyPI ``airbench`` (0.1.8) installed: airbench94's
             ``train94`` and ours alternately, --runs each, on the same data (ours written to
             ``cifar10/train.pt`` / ``test.pt``, which airbench reads); time ratio and
             accuracy difference.
  ablate     the full recipe, then each trick of ``wsjax.speedrun.TRICKS`` switched off
             (``--tricks`` picks some), --runs each: accuracy and time against the full recipe.
  warm-start two-phase on the training set: random init on 100% vs round 1 on 50% then 100%
             warm-started, and shrink-perturb (``--shrink``), --runs seeds each; test accuracy.

The timer covers what airbench's covers: whitening init, training and TTA evaluation, in one
compiled call; it excludes moving the data to the device and compilation (a warm-up run).

    python -m experiments.speedrun --runs 10                  # GPU
    python -m experiments.speedrun --mode airbench --runs 10  # GPU + airbench
    python -m experiments.speedrun --quick                    # CPU minutes, synthetic data
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import sys
import time

import jax
import numpy as np

from experiments.common import load_data, main_guard
from wsjax.runlog import RunDir, mean_se
from wsjax.speedrun import (AIRBENCH94, AIRBENCH94_MUON, PAGE_RESNET9, TRICKS, Recipe,
                            Speedrun, frozen_mask)
from wsjax.warmstart import reset_batch_stats, shrink_perturb

RECIPES = {"airbench94": AIRBENCH94, "airbench94_muon": AIRBENCH94_MUON,
           "page_resnet9": PAGE_RESNET9}
# 16x16 images: the net's three poolings need at least that; 16 steps learn 4 classes.
QUICK = {"dataset": "synthetic:4:16", "train_subset": 512, "runs": 2,
         "set": ["epochs=4", "batch_size=128", "widths=16,32,32", "whiten_images=256"]}


def parse_overrides(items) -> dict:
    """``['epochs=2', 'widths=16,32,32', 'bf16=false']`` -> typed recipe changes."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: write field=value with a field of Recipe "
                             f"({', '.join(sorted(fields))})")
        default = getattr(AIRBENCH94, name)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {item!r}: {name} is true or false")
            out[name] = value.lower() in ("true", "1")
        elif isinstance(default, tuple):
            out[name] = tuple(int(v) for v in value.split(","))
        else:
            out[name] = type(default)(value)
    return out


def warm_up(sr: Speedrun, data) -> None:
    """One untimed run: compilation stays out of the timings (airbench warms up too)."""
    jax.block_until_ready(sr.run(jax.random.key(10_000), *data))


def timed_run(sr: Speedrun, data, seed: int) -> dict:
    """One run of ``sr`` (already warmed up): its TTA accuracy and seconds."""
    start = time.perf_counter()
    acc = float(jax.block_until_ready(sr.run(jax.random.key(seed), *data)[0]))
    return {"seed": seed, "acc": acc, "seconds": time.perf_counter() - start}


def timed_runs(sr: Speedrun, data, runs: int) -> list[dict]:
    """``runs`` timed runs (seeds 0..runs-1) after a warm-up."""
    warm_up(sr, data)
    return [timed_run(sr, data, i) for i in range(runs)]


def summary(rows) -> dict:
    accs, secs = [r["acc"] * 100 for r in rows], [r["seconds"] for r in rows]
    return {"runs": len(rows), "acc_mean": float(np.mean(accs)),
            "acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "seconds_median": float(statistics.median(secs)), "rows": rows}


def line(name, s, base=None) -> str:
    text = (f"{name:>20}: acc {s['acc_mean']:.2f} ± {s['acc_std']:.2f} % ({s['runs']} runs)  "
            f"median {s['seconds_median']:.3f} s")
    if base is not None:
        text += (f"  ({s['acc_mean'] - base['acc_mean']:+.2f} pp, "
                 f"{s['seconds_median'] / base['seconds_median']:.2f}x time)")
    return text


def mode_ablate(recipe, ds, data, args) -> dict:
    unknown = [t for t in args.tricks or [] if t not in TRICKS]
    if unknown:
        raise ValueError(f"--tricks {unknown}: choose from {sorted(TRICKS)}")
    # Only the tricks this recipe uses (switching off an unused one changes nothing).
    tricks = [t for t in args.tricks or TRICKS if recipe.replace(**TRICKS[t]) != recipe]
    n = len(data[0])
    full = summary(timed_runs(Speedrun(recipe, num_train=n), data, args.runs))
    print(line("full recipe", full))
    out = {"full": full}
    for t in tricks:
        s = summary(timed_runs(Speedrun(recipe.replace(**TRICKS[t]), num_train=n), data,
                               args.runs))
        print(line(f"without {t}", s, full))
        out[f"without_{t}"] = s
    return out


def mode_warm_start(recipe, ds, data, args) -> dict:
    x, y, xt, yt = data
    n = len(x)
    half = n // 2
    full_sr, half_sr = Speedrun(recipe, num_train=n), Speedrun(recipe, num_train=half)
    arms = {"random_init": [], "warm_start": [], **{f"sp_{s:g}": [] for s in args.shrink}}

    def train_eval(key, variables, arm, seed):
        start = time.perf_counter()
        acc = float(full_sr.evaluate(full_sr.train(key, variables, x, y), xt, yt)[0])
        arms[arm].append({"seed": seed, "acc": acc, "seconds": time.perf_counter() - start})

    for i in range(args.runs):
        k_init, k_r1, k_fresh, k_r2 = jax.random.split(jax.random.key(i), 4)
        # One init for random init and round 1 (whitening from the same first images);
        # `train` does not donate its input, so both may start from it.
        init = full_sr.init(k_init, x)
        train_eval(k_r2, init, "random_init", i)
        round1 = half_sr.train(k_r1, init, x[:half], y[:half])
        fresh = full_sr.init(k_fresh, x)
        mask = frozen_mask(round1["params"], recipe)
        for arm, shrink in [("warm_start", 1.0)] + [(f"sp_{s:g}", s) for s in args.shrink]:
            perturb = 0.0 if arm == "warm_start" else args.noise
            train_eval(k_r2, {"params": shrink_perturb(round1["params"], fresh["params"],
                                                       shrink, perturb, mask=mask),
                              "batch_stats": reset_batch_stats(round1["batch_stats"])}, arm, i)
    out = {}
    for arm, rows in arms.items():
        m, se = mean_se([r["acc"] * 100 for r in rows])
        out[arm] = {"acc_mean": m, "acc_se": se, "rows": rows}
        print(f"{arm:>12}: test acc {m:.2f} ± {se:.2f} % (mean ± SE, {len(rows)} seeds)")
    return out


def mode_airbench(recipe, ds, data, args) -> dict:
    if ds.x_train.shape[1:] != (32, 32, 3) or len(ds.x_train) != 50_000 or args.train_subset:
        raise ValueError("--mode airbench compares on the whole CIFAR-10 (50,000 32x32 training "
                         "images): drop --train-subset and --quick, use --dataset cifar10")
    try:
        import torch
    except ImportError:
        raise ValueError("--mode airbench needs torch (and the PyPI airbench package)") from None
    # airbench's loader opens its data on cuda:0 when it is imported: check first.
    if not torch.cuda.is_available():
        raise ValueError("--mode airbench needs a CUDA GPU (airbench94 runs on CUDA only)")
    _write_airbench_data(torch, ds)  # before the import, which reads the files
    try:
        import airbench  # PyPI airbench 0.1.8
    except ImportError:
        raise ValueError("--mode airbench needs the PyPI airbench package: see ../shared/GPU.md "
                         "(pip install --no-index --no-deps .devdata/airbench-0.1.8.tar.gz)"
                         ) from None
    sr = Speedrun(recipe, num_train=len(data[0]))
    warm_up(sr, data)
    with contextlib.redirect_stdout(io.StringIO()):
        airbench.warmup94()
    ours, theirs = [], []
    for i in range(args.runs):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            airbench.train94()
        theirs.append(_airbench_row(buf.getvalue(), i))
        ours.append(timed_run(sr, data, i))
        print(f"run {i}: airbench94 {theirs[-1]['acc'] * 100:.2f}% {theirs[-1]['seconds']:.3f}s"
              f" | wsjax {ours[-1]['acc'] * 100:.2f}% {ours[-1]['seconds']:.3f}s")
    a, b = summary(theirs), summary(ours)
    print(line("airbench94 (torch)", a))
    print(line("wsjax", b, a))
    return {"airbench94": a, "wsjax": b,
            "time_ratio": b["seconds_median"] / a["seconds_median"],
            "acc_diff": b["acc_mean"] - a["acc_mean"], "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name()}


def _write_airbench_data(torch, ds) -> None:
    """airbench reads ``cifar10/train.pt`` and ``test.pt`` from the working directory (and
    downloads when they are missing): write ours there, always, so both systems see the same
    data (a stale file from another run would not)."""
    os.makedirs("cifar10", exist_ok=True)
    for name, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        path = os.path.join("cifar10", f"{name}.pt")
        torch.save({"images": torch.tensor(np.asarray(x, np.uint8)),
                    "labels": torch.tensor(np.asarray(y, np.int64)),
                    "classes": [str(i) for i in range(ds.num_classes)]}, path)


def _airbench_row(printed: str, seed: int) -> dict:
    """airbench's table ends with the timed row: the last two numbers of its last data line
    are the TTA accuracy and the seconds (columns as printed by airbench 0.1.8)."""
    rows = [ln for ln in printed.splitlines() if ln.strip().startswith("|") and "eval" in ln]
    nums = []
    for cell in (rows[-1] if rows else "").split("|"):
        try:
            nums.append(float(cell))
        except ValueError:
            continue
    if len(nums) < 2:
        raise ValueError(f"could not read airbench's result table from its output:\n{printed}")
    return {"seed": seed, "acc": nums[-2], "seconds": nums[-1]}


def main(argv=None) -> dict:
    """Runs the chosen mode and writes ``results.json`` in --out."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="time", choices=("time", "airbench", "ablate", "warm-start"))
    p.add_argument("--recipe", default="airbench94", choices=sorted(RECIPES))
    p.add_argument("--set", nargs="*", default=None, metavar="FIELD=VALUE",
                   help="recipe changes, e.g. epochs=8 flip=random bf16=false")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tricks", nargs="*", default=None, help="ablate only these tricks")
    p.add_argument("--shrink", type=float, nargs="*", default=[0.6, 0.3])
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--compile-cache", default="~/.cache/wsjax/xla",
                   help="XLA's persistent compilation cache ('' for none): a second invocation "
                        "skips compiling")
    p.add_argument("--quick", action="store_true", help=f"CPU minutes: {QUICK}")
    p.add_argument("--out", default="runs/speedrun")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir",
                          os.path.expanduser(args.compile_cache))
    recipe = RECIPES[args.recipe].replace(**parse_overrides(args.set))
    ds = load_data(args)
    # On the device before any timer (airbench's timer excludes this transfer too).
    data = tuple(jax.device_put(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    print(f"{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test; {args.recipe} "
          f"{parse_overrides(args.set) or ''}; {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")
    if args.mode == "time":
        results = summary(timed_runs(Speedrun(recipe, num_train=len(ds.x_train)), data,
                                     args.runs))
        print(line(args.recipe, results))
    else:
        results = {"ablate": mode_ablate, "warm-start": mode_warm_start,
                   "airbench": mode_airbench}[args.mode](recipe, ds, data, args)
    record = {"script": "experiments.speedrun", "mode": args.mode, "recipe": args.recipe,
              "changes": parse_overrides(args.set), "dataset": ds.name,
              "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
              "results": results}
    RunDir(args.out).write_results(record)
    return record


if __name__ == "__main__":
    main_guard(main)
