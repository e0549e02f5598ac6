"""Benchmark: the main job on several processes against one, on this machine.

Each configuration runs ``wsjax warm_start`` (the flags after ``--``; default: the quick mode
with 4 seeds) with the same global device count (fake CPU devices): 1 process x --devices
against --processes processes x (--devices / --processes), in each --layouts layout, the
configurations alternating, --repeats times. For each it prints medians of the wall time of
the whole command (process 0: start-up, compiling, training, checkpoints, evaluation), of the
training seconds (the sum of the epochs' times, compiling apart), of one epoch and of the
epochs' checkpoint-and-log overhead, and the ratio of the processes' figure to one process's.
Processes on one machine share its cores and talk over 127.0.0.1: this measures what the
multi-controller runtime adds (start-up, cross-process reductions and barriers), not what
more hosts would gain.

    WSJAX_DATA_DIR=../shared/data wsjax bench_hosts
    wsjax bench_hosts --repeats 5 -- --dataset synthetic --seeds 4 --max-epochs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from wsjax import hosts

DEFAULT_RUN = ["--quick", "--seeds", "4"]


def timings(out: Path, wall: float) -> dict:
    """What one run took: its ``wall`` seconds, and from its ``metrics.jsonl`` the training
    seconds, the median epoch and the median gap between epochs beyond the epoch itself."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["seconds"] for r in records]
    gaps = [b["time"] - a["time"] - b["seconds"] for a, b in zip(records, records[1:])
            if a["stage"] == b["stage"]]
    return {"wall": wall, "train": sum(epochs), "epoch": statistics.median(epochs),
            "overhead": statistics.median(gaps) if gaps else 0.0}


def run_once(command, processes: int, devices: int, out: Path) -> dict:
    """One run of ``command`` on ``processes`` x ``devices`` into ``out``; its timings."""
    start = time.perf_counter()
    procs = hosts.launch_local([*command, "--out", str(out)], processes=processes,
                               devices=devices, logs=out.with_suffix(""))
    codes = hosts.wait_local(procs, timeout=3600)
    wall = time.perf_counter() - start
    if any(codes):
        log = Path(f"{out.with_suffix('')}.0.txt").read_text()[-2000:]
        raise RuntimeError(f"exit codes {codes}; process 0 said:\n{log}")
    return timings(out, wall)


def main(argv=None) -> dict:
    """``wsjax bench_hosts``: prints the table; returns the medians by configuration."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run_flags = DEFAULT_RUN
    if "--" in argv:
        cut = argv.index("--")
        argv, run_flags = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="wsjax bench_hosts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2, help="processes of the multi-process "
                   "runs (default 2)")
    p.add_argument("--devices", type=int, default=4, help="fake CPU devices in all "
                   "(default 4), split evenly over the processes")
    p.add_argument("--layouts", nargs="+", default=["batch", "replica"],
                   choices=["batch", "replica"], help="parallel layouts (default both)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration "
                   "(default 3; medians)")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary "
                   "one, deleted)")
    args = p.parse_args(argv)
    if args.processes < 2 or args.devices % args.processes or args.repeats < 1:
        raise ValueError(f"--processes {args.processes} must be >= 2 and divide --devices "
                         f"{args.devices}; --repeats must be >= 1")
    with tempfile.TemporaryDirectory(prefix="wsjax-bench-hosts-") as tmp:
        root = Path(args.out or tmp)
        root.mkdir(parents=True, exist_ok=True)
        configs = [(layout, n) for layout in args.layouts for n in (1, args.processes)]
        runs = {c: [] for c in configs}
        for r in range(args.repeats):
            for layout, n in configs:  # alternating, so drifting load hits each alike
                out = root / f"{layout}_{n}p_{r}"
                command = ["warm_start", *run_flags, "--parallel", layout]
                runs[layout, n].append(run_once(command, n, args.devices // n, out))
    medians = {c: {k: statistics.median(t[k] for t in ts) for k in ts[0]}
               for c, ts in runs.items()}
    print(f"warm_start {' '.join(run_flags)}; {args.devices} devices in all; medians of "
          f"{args.repeats} runs (seconds)")
    print("layout | processes | wall | train | epoch | overhead/epoch | wall ratio | "
          "train ratio")
    for layout, n in configs:
        m, one = medians[layout, n], medians[layout, 1]
        print(f"{layout} | {n} x {args.devices // n} | {m['wall']:.1f} | {m['train']:.2f} | "
              f"{m['epoch']:.3f} | {m['overhead']:.3f} | {m['wall'] / one['wall']:.2f} | "
              f"{m['train'] / one['train']:.2f}")
    return medians


if __name__ == "__main__":
    main()
