"""Crash safety, by hand (minutes, not part of the suite): kill the main job with SIGKILL at
random moments, some of them while a checkpoint is being written, damage the newest
checkpoint step before one resume, and check that every run ends with the results of an
uninterrupted one and a metrics log without repeated rows.

    python tests/kill_trials.py --trials 20

Runs ``python -m wsjax warm_start`` on synthetic data (no files needed) in a temporary folder;
every stage trains all its 8 epochs (``--threshold 2``: never), so a stage in progress holds
two checkpoint steps, the newest of which a trial may damage.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = [sys.executable, "-m", "wsjax", "warm_start", "--dataset", "synthetic", "--train-subset",
           "600", "--seeds", "2", "--max-epochs", "8", "--shrink", "0.5", "--model", "mlp",
           "--batch-size", "64", "--threshold", "2", "--progress", "off"]


def outcome(out: Path) -> dict:
    """What a resume must reproduce: every arm's per-seed numbers, without times."""
    results = json.loads((out / "results.json").read_text())["results"]
    keep = ("seed", "epochs", "stop_reason", "train_acc", "val_acc", "test_acc", "val_loss",
            "test_loss")
    return {arm: [{k: row.get(k) for k in keep} for row in r["seeds"]]
            for arm, r in results.items()}


def repeated_rows(out: Path) -> list:
    """(stage, epoch) pairs logged more than once."""
    seen, repeated = set(), []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = (record["stage"], record["epoch"])
        if key in seen:
            repeated.append(key)
        seen.add(key)
    return repeated


def writing(out: Path) -> bool:
    """Whether Orbax is writing a step now (its temporary folder exists)."""
    root = out / "checkpoints"
    return root.exists() and any("tmp" in p.name for p in root.glob("*/*"))


def stages_with_two_steps(out: Path) -> list[Path]:
    """The stage folders holding two committed steps (a stage still training)."""
    root = out / "checkpoints"
    return [d for d in root.glob("*") if len([s for s in d.iterdir() if s.name.isdigit()]) >= 2
            ] if root.exists() else []


def damage_newest_step(out: Path) -> str | None:
    """Overwrites 8 bytes in the params of the newest step of a stage that has two steps."""
    stages = stages_with_two_steps(out)
    if not stages:
        return None
    stage = max(stages, key=lambda d: d.stat().st_mtime)
    step = max((s for s in stage.iterdir() if s.name.isdigit()), key=lambda s: int(s.name))
    files = [p for p in (step / "params").rglob("*") if p.is_file() and p.stat().st_size > 64]
    path = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return f"{stage.name}/{step.name}"


def trial(out: Path, rng: random.Random, kills: int, damage: bool, duration: float) -> dict:
    """Starts the run, kills it ``kills`` times (each at a random moment of an uninterrupted
    run's ``duration``, or at the first checkpoint write after it), then lets it finish."""
    notes = []
    for k in range(kills):
        proc = subprocess.Popen([*COMMAND, "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        mid_write = rng.random() < 0.5
        # The kill before a damage waits until a stage has two steps: the damaged newest one
        # and the older one to fall back to (a finished stage keeps one step only).
        need_two = damage and k == kills - 1
        deadline = time.time() + rng.uniform(0.15, 0.7) * duration
        while proc.poll() is None:
            if time.time() > deadline and (writing(out) or not mid_write) and (
                    not need_two or stages_with_two_steps(out)):
                break
            time.sleep(0.001)
        if proc.poll() is None:
            proc.kill()
            notes.append("killed mid-write" if mid_write and writing(out) else "killed")
        proc.wait()
    if damage and (out / "checkpoints").exists():
        notes.append(f"damaged {damage_newest_step(out)}")
    final = subprocess.run([*COMMAND, "--out", str(out)], capture_output=True, text=True)
    return {"notes": notes, "returncode": final.returncode,
            "warned": "does not match" in final.stderr or "cannot be read" in final.stderr,
            "stderr": final.stderr[-500:]}


def main(argv=None) -> int:
    """Runs the trials and prints one line per trial; exit status 1 when any failed."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--max-kills", type=int, default=2, help="kills per trial: 1 to this")
    p.add_argument("--damage-every", type=int, default=5,
                   help="every k-th trial damages the newest step before its last start")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="wsjax-kill-"))
    reference = root / "reference"
    start = time.perf_counter()
    subprocess.run([*COMMAND, "--out", str(reference)], check=True, capture_output=True)
    duration = time.perf_counter() - start
    expect = outcome(reference)
    print(f"uninterrupted run: {duration:.1f} s", flush=True)
    failures = 0
    for t in range(args.trials):
        out = root / f"trial_{t}"
        result = trial(out, rng, rng.randint(1, args.max_kills), t % args.damage_every == 0,
                       duration)
        same = result["returncode"] == 0 and outcome(out) == expect
        repeated = repeated_rows(out) if result["returncode"] == 0 else ["(no run)"]
        ok = same and not repeated
        failures += not ok
        print(f"trial {t:2d}: {'ok  ' if ok else 'FAIL'} {', '.join(result['notes'])}"
              f"{'; fell back past a damaged step' if result['warned'] else ''}"
              f"{'' if same else '; results differ: ' + result['stderr']}"
              f"{'; repeated rows ' + str(repeated[:3]) if repeated else ''}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"{args.trials - failures}/{args.trials} trials ended as the uninterrupted run")
    shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
