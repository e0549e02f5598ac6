"""The GPU suite: one command that turns a (rare, 15-minute) GPU draw into numbers.

    python -m experiments.gpu_suite --out $OUT          # on the GPU machine (about 8 minutes)
    wsjax gpu_suite --tiny --out /tmp/suite             # any CPU, about a minute: synthetic data

Steps, in this order, each under its own time budget (seconds, ``BUDGETS``, all scaled by
``--budget`` / 480; the study step also gets whatever the steps before it left, less the
table1 step's share when that step runs); a step that
fails is recorded with its error and the suite goes on. After every step ``suite.json`` in
``--out`` is rewritten, so a suite cut short still leaves what it measured; ``suite.log`` holds
everything printed.

1. ``runtime``: backend, device, versions of the JAX stack, the compilation cache's state.
2. ``data``: CIFAR-10 from ``--data`` (``cifar10.npz``, made first from ``cifar10_jpeg.npz`` by
   ``cifar_from_jpeg.py`` when only those travelled, see ``../shared/GPU.md``); its sha256.
3. ``engine``: seconds per epoch of ``Engine.epoch`` on the study's 33,333 fitted images, batch
   128, Adam 1e-3, for the MLP and the narrow ResNet-18 with each of ``--seeds`` vmapped
   seeds, and the ResNet with one seed in the batch-parallel layout (``DataParallel('batch')``
   over all devices). Timer: one compiled epoch call on device-resident data, ended by
   ``block_until_ready``; the first call (compiling) is timed apart, then up to 3 epochs
   (median). ``compile_s`` is first call minus the median epoch. ResNets with more than one
   seed are timed over their first ``--chunk-steps`` steps and scaled to the epoch's 261 (shown
   as ``scaled``).
4. ``torch``: the same narrow ResNet-18 and step in PyTorch as the official code runs it
   (``wsjax.baselines.official_torch``: per-sample PIL transforms, DataLoader with a random
   subset sampler, ``.item()`` every step), on the machine's torch and GPU. Timer: one epoch
   through the loader, ended by a CUDA synchronize; an untimed first epoch warms up. The
   ratio ``torch per-seed-epoch / engine per-seed-epoch`` is reported for 1 and for the most
   seeds (target: at least 20x).
5. ``fast_trainer``: wsjax's airbench94 recipe against PyPI airbench 0.1.8's ``train94``,
   alternating, ``--runs`` each, same data (``fast_trainer --mode airbench``'s comparison).
   Each timer covers whitening init, training and TTA evaluation (airbench's own timer for
   it). Targets: time ratio <= 0.5, accuracy at most 0.1 pp lower. Without torch, CUDA or
   airbench only wsjax's runs are timed, and the reason is printed.
6. ``study``: the study's MLP and logistic-regression evidence under the official protocol
   (``STUDY``, in order of need: the regularization table's last two cells, online, the
   lr x batch sweep, 10-seed re-runs of the main job, Table 1's logreg and MLP-SGD cells,
   label noise, active selection and the whole regularization table, and issue 14's
   interventions on the narrow ResNet;
   ``--study-seeds`` seeds, 99% rule with the epoch cap, a split per seed), one run after
   another, each interrupted cleanly at the step's budget; their result files come back in
   one archive, ``<out>/study.tar.gz`` (``<name>/`` per run; unpack it and point ``wsjax
   claims`` at the folder).
7. ``table1``: with the time left, the Table 1 ResNet-18 Adam cell (random init, warm start,
   shrink-perturb 0.6/0.01; ``--table1-seeds`` seeds; 99% rule) as ``wsjax table1`` in a
   subprocess, interrupted cleanly (SIGINT, checkpoint kept) at the budget; how far each stage
   got is reported. ``--table1-out`` keeps its run directory for a later resume.

``--tiny`` runs every step on small synthetic data with tiny budgets (the CI test): the engine
step times the MLP only (its batch-parallel row too), the study and table1 steps run on
synthetic data (table1 with the MLP; the study's first ``TINY_STUDY_RUNS`` commands run, and
the others are checked with ``--dry-run``, which parses and validates their flags); the torch
and airbench parts skip with a message where those are missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from wsjax.experiments.flags import COUNT, POSITIVE, Checked, option, parse
from wsjax.study.runlog import write_json

STEPS = ("runtime", "data", "engine", "torch", "fast_trainer", "study", "table1")
# Seconds per step (the table1 step also gets whatever the others left of --budget).
BUDGETS = {"runtime": 5, "data": 30, "engine": 110, "torch": 45, "fast_trainer": 90,
           "study": 200, "table1": 60}
NEEDS_DATA = ("engine", "torch", "fast_trainer")  # table1 reads --data itself
EPOCH_SIZE = 33_333  # the study's fitted split of CIFAR-10 (2/3 of 50,000)
DATA_SHA256 = "42fb3ed17758280ba0a283c00442f3c598fc49fa132b4f6e52a971501020cbe7"
TINY = {"seeds": (1, 2), "chunk_steps": 2, "runs": 2, "table1_seeds": 2, "study_seeds": 2,
        "budget": 60.0, "epoch_size": 512}


@dataclasses.dataclass(frozen=True)
class SuiteConfig(Checked):
    """The GPU suite's settings."""

    out: str = option("runs/gpu_suite", "folder for suite.json and suite.log")
    data: str = option(".devdata", "folder with cifar10.npz, or with cifar10_jpeg.npz and "
                       "cifar_from_jpeg.py to make it")
    steps: tuple[str, ...] = option(STEPS, "steps to run, in the suite's order", nargs="*",
                                    choices=STEPS)
    budget: float = option(480.0, "seconds for the whole suite; the table1 step gets what the "
                           "others leave", check=POSITIVE)
    seeds: tuple[int, ...] = option((1, 8, 32), "vmapped seed counts timed in the engine step",
                                    nargs="*", check=COUNT)
    chunk_steps: int = option(64, "steps timed for ResNets with several seeds (scaled to the "
                              "epoch)", check=COUNT)
    epoch_size: int = option(EPOCH_SIZE, "examples per timed epoch", check=COUNT)
    runs: int = option(5, "timed runs of each system in the fast_trainer step", check=COUNT)
    study_seeds: int = option(10, "seeds of each run of the study step", check=COUNT)
    study_out: str | None = option(None, "folder of the study step's run directories (default: "
                                   "one in --out's parent; their result files are copied to "
                                   "<out>/study)")
    table1_seeds: int = option(5, "seeds of the table1 step", check=COUNT)
    table1_out: str | None = option(None, "run directory of the table1 step (default: a "
                                    "folder in --out's parent that is not brought back)")
    tiny: bool = option(False, "every step on small synthetic data, tiny budgets (CPU, CI)")


class Tee:
    """Writes to the terminal and to a log file."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()


def _first_time(fn):
    """Seconds of one call of ``fn`` (its result blocked on)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def timed(fn, repeats: int, deadline: float) -> dict:
    """The first call of ``fn`` (compiling) timed apart, then up to ``repeats`` timed calls,
    fewer (at least one) once ``deadline`` passes: their median, count and the compile time
    (first call minus the median)."""
    first = _first_time(fn)
    times = []
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        times.append(_first_time(fn))
    median = statistics.median(times)
    return {"first_call_s": first, "median_s": median, "timed": len(times),
            "compile_s": max(first - median, 0.0)}


# --- steps -------------------------------------------------------------------------------

def step_runtime(cfg, ctx, deadline) -> dict:
    """Backend, devices, versions and the compilation cache."""
    import jax

    from wsjax.runtime import describe

    out = describe()
    cache = jax.config.jax_compilation_cache_dir
    out["compile_cache"] = {"dir": cache, "entries": len(os.listdir(cache))
                            if cache and os.path.isdir(cache) else 0}
    out["mem_fraction"] = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default")
    ctx["gpu"] = out["backend"] == "gpu"
    print(f"{out['device_count']} x {out['device_kind']} ({out['backend']}); jax "
          f"{out.get('jax')}, flax {out.get('flax')}, optax {out.get('optax')}; compile cache "
          f"{out['compile_cache']}")
    return out


def step_data(cfg, ctx, deadline) -> dict:
    """CIFAR-10 from ``cfg.data`` (made from the JPEG pack when needed); synthetic when tiny."""
    from wsjax import data as wdata

    if cfg.tiny:
        ctx["ds"] = wdata.synthetic_dataset(cfg.epoch_size + 64, 64, 10, image_shape=(16, 16, 3))
        return {"source": "synthetic", "train": len(ctx["ds"].x_train)}
    folder = Path(cfg.data)
    npz, made = folder / "cifar10.npz", None
    if not npz.exists():
        pack, tool = folder / "cifar10_jpeg.npz", folder / "cifar_from_jpeg.py"
        if not (pack.exists() and tool.exists()):
            raise FileNotFoundError(f"{folder} has neither cifar10.npz nor cifar10_jpeg.npz and "
                                    "cifar_from_jpeg.py: bring them as ../shared/GPU.md says")
        start = time.perf_counter()
        printed = subprocess.run([sys.executable, str(tool), str(pack), str(npz)], check=True,
                                 capture_output=True, text=True).stdout
        made = {"seconds": time.perf_counter() - start, "printed": printed.strip()}
    ds = wdata.load_dataset("cifar10", folder, download=False)
    ctx["ds"] = ds
    sha = wdata.fingerprint(ds)["sha256"]
    out = {"source": str(npz), "made_from_jpeg": made, "train": len(ds.x_train),
           "test": len(ds.x_test), "arrays_sha256_matches_shared": None}
    if made:
        out["arrays_sha256_matches_shared"] = DATA_SHA256 in made["printed"]
    print(f"CIFAR-10 {len(ds.x_train)} / {len(ds.x_test)}"
          + (f", decoded in {made['seconds']:.1f} s, sha256 "
             f"{'matches' if out['arrays_sha256_matches_shared'] else 'DIFFERS from'} "
             "../shared/data's" if made else "") + f"; fingerprint {sha[:12]}")
    return out


def _engine_row(name, seeds, ds, cfg, deadline, parallel=None, chunk=None) -> dict:
    """One row of the engine step (see the module docstring)."""
    import jax.numpy as jnp
    import numpy as np

    from wsjax.engine import Engine
    from wsjax.models import create_model
    from wsjax.optim import make_optimizer
    from wsjax.train import pad_indices, replica_keys

    batches = math.ceil(cfg.epoch_size / 128)
    n = min(cfg.epoch_size, chunk * 128) if chunk else cfg.epoch_size
    engine = Engine(create_model(name, ds.num_classes), make_optimizer("adam", 1e-3),
                    batch_size=128, parallel=parallel, input_shape=ds.x_train.shape[1:])
    x, y = engine.put((ds.x_train[:n], ds.y_train[:n]))
    keys = replica_keys(range(seeds))
    box = [engine.init_states(keys)]
    idx, n_real = pad_indices(np.arange(n))
    idx, active = jnp.asarray(idx), jnp.ones(seeds, bool)

    def epoch():
        box[0], sums = engine.epoch(box[0], keys, active, x, y, idx, n_real)
        return sums

    t = timed(epoch, 1 if cfg.tiny else 3, deadline)
    scale = batches / math.ceil(n / 128)
    epoch_s = t["median_s"] * scale
    row = {"model": name, "seeds": seeds, "layout": "batch-parallel" if parallel else "vmap",
           "loop": engine.loop, "timed_examples": n, "scale": scale, **t,
           "epoch_s": epoch_s, "seed_epoch_s": epoch_s / seeds,
           "examples_per_s": cfg.epoch_size * seeds / epoch_s}
    print(f"  {name:16s} {seeds:3d} seeds {row['layout']:14s} epoch {epoch_s:8.3f} s  per seed "
          f"{row['seed_epoch_s']:7.4f} s  compile {t['compile_s']:6.1f} s  ({t['timed']} timed"
          + (f", {n} examples scaled x{scale:.1f})" if scale != 1 else ")"))
    return row


def step_engine(cfg, ctx, deadline) -> dict:
    """Engine throughput rows; the rows not reached before ``deadline`` are listed as such."""
    import jax

    from wsjax.parallel import DataParallel, make_mesh

    ds = ctx["ds"]
    # Tiny: the MLP only (a ResNet epoch compiles for up to a minute on a busy CPU); the
    # ResNet rows run the same engine code.
    conv = "mlp" if cfg.tiny else "resnet18_narrow"
    plan = [("mlp", s, None, None) for s in cfg.seeds]
    if not cfg.tiny:
        plan += [(conv, s, None, None if s == 1 else cfg.chunk_steps) for s in cfg.seeds]
    plan.append((conv, 1, DataParallel(make_mesh(jax.devices()), "batch"), None))
    rows, skipped = [], []
    for name, seeds, parallel, chunk in plan:
        label = f"{name} x{seeds}" + (" batch-parallel" if parallel else "")
        if time.perf_counter() > deadline and not cfg.tiny:  # tiny: every row, once
            skipped.append(label)
            continue
        try:
            rows.append(_engine_row(name, seeds, ds, cfg, deadline, parallel, chunk))
        except Exception as e:  # e.g. out of memory at many seeds: the other rows still count
            print(f"  {label}: {type(e).__name__}: {str(e)[:300]}")
            rows.append({"model": name, "seeds": seeds, "error": f"{type(e).__name__}: {e}"})
    if skipped:
        print(f"  not reached within the budget: {', '.join(skipped)}")
    ctx["engine_rows"] = rows
    return {"rows": rows, "skipped": skipped}


def step_torch(cfg, ctx, deadline) -> dict:
    """The official PyTorch loop's seconds per epoch, and the engine's speed-up over it."""
    try:
        import torch

        from wsjax.baselines import official_torch
    except ImportError as e:
        print(f"  skipped: {e} (the GPU machine has torch; pip install torch here)")
        return {"skipped": str(e)}
    import numpy as np

    ds = ctx["ds"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = math.ceil(cfg.epoch_size / 128)
    # A CPU epoch takes minutes: time a chunk there and scale, as for the vmapped ResNets.
    max_steps = None if device == "cuda" else cfg.chunk_steps
    t = official_torch.time_epochs(ds.x_train, ds.y_train, np.arange(cfg.epoch_size),
                                   device=device, repeats=3, deadline=deadline,
                                   max_steps=max_steps)
    scale = batches / t["steps"]
    t["scale"], t["seed_epoch_s"] = scale, t["epoch_s"] * scale
    print(f"  PyTorch ({t['torch']}, {device}) narrow ResNet-18, 1 seed: epoch "
          f"{t['seed_epoch_s']:.3f} s ({t['timed']} timed"
          + (f", {t['steps']} steps scaled x{scale:.1f})" if scale != 1 else ")"))
    resnet = [r for r in ctx.get("engine_rows", []) if r.get("model") == "resnet18_narrow"
              and r.get("layout") == "vmap" and "seed_epoch_s" in r]
    t["speedup"] = {str(r["seeds"]): t["seed_epoch_s"] / r["seed_epoch_s"] for r in resnet}
    for seeds, x in t["speedup"].items():
        print(f"  engine with {seeds} seeds: {x:.1f}x the PyTorch loop per seed-epoch "
              "(target >= 20x)")
    _free_torch_memory()
    return t


def _free_torch_memory() -> None:
    """Returns PyTorch's cached GPU memory, for the JAX run of the table1 step."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_fast_trainer(cfg, ctx, deadline) -> dict:
    """wsjax's airbench94 recipe against airbench94, or alone where airbench cannot run."""
    import jax

    from wsjax.experiments import fast_trainer as ft
    from wsjax.speedrun import AIRBENCH94, Speedrun

    ds = ctx["ds"]
    recipe = AIRBENCH94
    if cfg.tiny:
        recipe = recipe.replace(**ft.parse_overrides(ft.QUICK["changes"]))
    data = tuple(jax.device_put(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    try:
        results, extra = ft.compare_airbench(recipe, ds, data, cfg.runs, deadline)
    except ValueError as e:
        print(f"  airbench skipped: {e}; timing wsjax alone")
        sr = Speedrun(recipe, num_train=len(ds.x_train))
        start = time.perf_counter()
        ft.warm_up(sr, data)
        warm_s = time.perf_counter() - start
        rows = []
        for i in range(cfg.runs):
            if i and time.perf_counter() > deadline:
                break
            rows.append(ft.timed_run(sr, data, i))
        results, extra = {"wsjax": ft.summary(rows)}, {"airbench_skipped": str(e),
                                                       "warm_up_s": warm_s}
        print(ft.line("wsjax", results["wsjax"]))
    _free_torch_memory()
    out = {k: dataclasses.asdict(v) for k, v in results.items()}
    out.update(extra)
    if "time_ratio" in extra:
        print(f"  time ratio {extra['time_ratio']:.3f} (target <= 0.5), accuracy "
              f"{extra['acc_diff']:+.2f} pp (target >= -0.1)")
    return out


def _table1_command(cfg, run_dir: str) -> list[str]:
    """The table1 step's command (tiny: the MLP on synthetic data, which compiles in
    seconds on a CPU)."""
    model, data = "resnet18_narrow", ["--data-dir", cfg.data]
    if cfg.tiny:
        model = "mlp"
        data = ["--dataset", "synthetic:10:16", "--train-subset", "256", "--max-epochs", "2"]
    return [sys.executable, "-m", "wsjax", "table1", "--models", model,
            "--optimizers", "adam", "--seeds", str(cfg.table1_seeds), "--shrink", "0.6",
            "--noise", "0.01", "--progress", "line", "--out", run_dir, *data]


def step_table1(cfg, ctx, deadline) -> dict:
    """The Table 1 ResNet-18 Adam cell until ``deadline``; how far each stage got."""
    run_dir = cfg.table1_out or str(Path(cfg.out).resolve().parent / "gpu_suite_table1")
    return _run_wsjax(_table1_command(cfg, run_dir), run_dir, deadline)


# The study's MLP and logistic-regression evidence (issue 12): minutes on a GPU, hours here.
# Checkpoints every 25 epochs: a checkpoint per epoch would cost more than the epoch.
STUDY = {
    # In order of what the claims table most needs now (resumable runs, issue 12's list):
    # first what no committed run covers at full scale under the official protocol (the CPU
    # ran the two confidence cells, online and the sweep on a 15,000-image subset, the sweep
    # on a 2 x 2 corner of the grid), then 10-seed re-runs of what this CPU did with 5. Done
    # on an H200 and committed (session 6): label noise, active selection (with the round 0
    # the arms then shared), 11 of the regularization table's 13 cells.
    "regularization_confidence_mlp_adam": ["regularization", "--model", "mlp", "--optimizer",
                                           "adam", "--plateau-window", "10", "--kinds",
                                           "confidence", "--strengths", "0.001", "0.0001"],
    "online_mlp_adam": ["online", "--model", "mlp", "--optimizer", "adam", "--shrink", "0.6"],
    "sweep_mlp_sgd": ["sweep", "--model", "mlp", "--optimizer", "sgd", "--plateau-window", "10"],
    "two_phase_mlp_adam": ["warm_start", "--model", "mlp", "--optimizer", "adam", "--shrink",
                           "0.6", "0.3"],
    "table1": ["table1", "--models", "logreg", "--plateau-window", "10"],
    "table1_mlp_sgd": ["table1", "--models", "mlp", "--optimizers", "sgd", "--plateau-window",
                       "10"],
    "label_noise_mlp_adam": ["warm_start", "--model", "mlp", "--optimizer", "adam",
                             "--label-noise", "0.2", "--shrink", "0.6", "0.3"],
    "active_mlp_adam": ["online", "--model", "mlp", "--optimizer", "adam", "--shrink", "0.6",
                        "--select", "margin", "--chunk", "2000", "--rounds", "10"],
    "regularization_mlp_adam": ["regularization", "--model", "mlp", "--optimizer", "adam",
                                "--plateau-window", "10"],
    # Issue 14 at DASH's own scale (the narrow ResNet, SGD with momentum, 99.9%), which this
    # CPU cannot reach: as many stages as the budget allows, resumable like the rest.
    "interventions_resnet": ["interventions", "--model", "resnet18_narrow", "--chunk", "1000",
                             "--stages", "10"],
}

# --tiny: the first commands of STUDY run, on grids small enough for synthetic data and CI;
# the rest only parse their flags (--dry-run): each run is a fresh interpreter that imports
# JAX and compiles, about 10 s on CI's CPU, and the commands themselves are tested elsewhere.
TINY_STUDY_RUNS = 2
TINY_FLAGS = {"online": ["--chunk", "32", "--rounds", "2"],
              "regularization": ["--strengths", "0.01", "--kinds", "l2"],
              "sweep": ["--lrs", "0.01", "--batch-sizes", "64"],
              # A conv net's ten arms would take minutes to compile on CI's CPU.
              "interventions": ["--model", "mlp", "--methods", "warm", "dash", "--chunk", "64",
                                "--stages", "2"]}


def step_study(cfg, ctx, deadline) -> dict:
    """The runs of ``STUDY`` (``--study-seeds`` seeds, official protocol) one after another
    until ``deadline``; after each, the result files (not the checkpoints) of every run so far
    are packed into ``<out>/study.tar.gz``, one ``<name>/`` folder per run."""
    root = Path(cfg.study_out or Path(cfg.out).resolve().parent / "gpu_suite_study")
    out = {}
    for i, (name, flags) in enumerate(STUDY.items()):
        if cfg.tiny:
            data = ["--dataset", "synthetic:10:16", "--train-subset", "256", "--max-epochs", "2",
                    *TINY_FLAGS.get(flags[0], [])]
        else:
            data = ["--data-dir", cfg.data]
        args = [*flags, "--seeds", str(cfg.study_seeds), "--checkpoint-every", "25",
                "--progress", "off", "--out", str(root / name), *data]
        if cfg.tiny and i >= TINY_STUDY_RUNS:
            out[name] = {"checked": _dry_run(args)}
            print(f"  {name}: flags checked (--dry-run)")
            continue
        if time.perf_counter() > deadline:
            out[name] = {"stopped": "not started: no time left in the step's budget"}
            print(f"  {name}: not started (budget)")
            continue
        command = [sys.executable, "-m", "wsjax", *args]
        out[name] = _run_wsjax(command, str(root / name), deadline, keep_results=False)
        packed = pack_results(root, [n for n in STUDY if n in out and "command" in out[n]],
                              Path(cfg.out) / "study.tar.gz")
        out[name]["copied"] = [f[len(name) + 1:] for f in packed if f.startswith(name + "/")]
    return out


def _dry_run(flags: list[str]) -> dict:
    """The settings ``wsjax <flags> --dry-run`` resolves (parsed and checked, nothing run)."""
    import importlib
    import io

    module = importlib.import_module(f"wsjax.experiments.{flags[0]}")
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            module.main([*flags[1:], "--dry-run"])
    except SystemExit as e:
        if e.code:
            raise ValueError(f"wsjax {' '.join(flags)}: its flags are refused") from None
    else:
        raise RuntimeError(f"wsjax {flags[0]} ran instead of stopping at --dry-run")
    return json.loads(text.getvalue())


# What comes back from a GPU machine is a handful of files, not a tree of them (a suite's
# study writes hundreds), so the study's results travel as one archive.
RESULT_SUFFIXES = (".json", ".jsonl", ".png")


def pack_results(root: Path, names: list[str], archive: Path) -> list[str]:
    """Writes the result files (results, configs, metrics, figures; no checkpoints) of the
    run directories ``root/<name>`` into the gzipped tar ``archive`` (replaced whole, so an
    archive never holds half a write) as ``<name>/...``; returns those member names."""
    import tarfile

    members = []
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name in names:
            for path in sorted((root / name).rglob("*")):
                rel = path.relative_to(root)
                if (path.is_file() and "checkpoints" not in rel.parts
                        and path.suffix in RESULT_SUFFIXES):
                    tar.add(path, arcname=rel.as_posix())
                    members.append(rel.as_posix())
    partial.replace(archive)
    return members


def _run_wsjax(command: list[str], run_dir: str, deadline: float,
               keep_results: bool = True) -> dict:
    """Runs ``command`` (a ``python -m wsjax ...`` run writing to ``run_dir``) until it ends
    or ``deadline``, when it is interrupted cleanly (SIGINT: its checkpoints are kept, so the
    same command resumes it); how it ended and how far each of its stages got (and its
    results when ``keep_results``)."""
    print("  " + " ".join(command[1:]))
    start = time.perf_counter()
    # This process keeps its share of the GPU: the run gets part of the rest.
    env = {**os.environ, "PYTHONPATH": _source_root(), "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.35"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines = []
    reader = _reader(proc, lines)
    try:
        proc.wait(timeout=max(deadline - time.perf_counter(), 1.0))
        stopped = "finished"
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the run saves what it has and exits 130
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stopped = "budget reached (interrupted; resume with the same command)"
    reader.join(timeout=5)
    out = {"command": command[1:], "run_dir": run_dir, "returncode": proc.returncode,
           "stopped": stopped, "seconds": time.perf_counter() - start,
           "stages": _stage_progress(Path(run_dir)),
           "output_tail": lines[-25:]}
    if keep_results:
        out["results"] = {str(p.parent.relative_to(run_dir)): json.loads(p.read_text())
                          for p in sorted(Path(run_dir).rglob("results.json"))}
    print(f"  {stopped}, exit {proc.returncode}, {out['seconds']:.0f} s")
    for stage, s in out["stages"].items():
        print(f"  {stage:48s} epoch {s['epoch']:3d}  train acc {s['train_acc_mean']:.1%}  "
              f"active {s['active']}")
    return out


def _source_root() -> str:
    """The folder holding the ``wsjax`` package (so the subprocess runs this source)."""
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


def _reader(proc, lines):
    """A thread that copies ``proc``'s output to ``lines`` as it comes."""
    import threading

    def read():
        for text in proc.stdout:
            lines.append(text.rstrip("\n"))
            print("  | " + lines[-1])

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _stage_progress(run_dir: Path) -> dict:
    """The last epoch logged for each stage (of each cell) in a run's ``metrics.jsonl``
    files."""
    stages = {}
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        where = str(path.parent.relative_to(run_dir))
        for text in path.read_text().splitlines():
            row = json.loads(text)
            accs = [a for a in row.get("train_acc", []) if a is not None]
            stage = row.get("stage", "run") if where == "." else f"{where}/{row.get('stage')}"
            stages[stage] = {
                "epoch": row.get("epoch", 0), "active": sum(row.get("active", [])),
                "train_acc_mean": sum(accs) / len(accs) if accs else float("nan")}
    return stages


RUNNERS = {"runtime": step_runtime, "data": step_data, "engine": step_engine,
           "torch": step_torch, "fast_trainer": step_fast_trainer, "study": step_study,
           "table1": step_table1}


def summary_lines(results: dict) -> list[str]:
    """The summary table printed at the end."""
    lines = [f"{'step':14s} {'status':8s} {'seconds':>8s}  result"]
    for name, r in results["steps"].items():
        value = r.get("value") or {}
        if name == "engine":
            text = "; ".join(
                f"{x['model']} x{x['seeds']}"
                f"{' bp' if x.get('layout') == 'batch-parallel' else ''}"
                f" {x['seed_epoch_s']:.4f} s/seed-epoch"
                for x in value.get("rows", []) if "seed_epoch_s" in x)
        elif name == "torch":
            text = (f"{value['seed_epoch_s']:.3f} s/epoch; engine speed-up per seed-epoch "
                    + ", ".join(f"{k} seeds {v:.1f}x" for k, v in value.get("speedup", {}).items())
                    if "seed_epoch_s" in value else value.get("skipped", ""))
        elif name == "fast_trainer":
            text = " | ".join(f"{k} {v['acc_mean']:.2f}% {v['seconds_median']:.3f} s"
                              for k, v in value.items() if isinstance(v, dict) and "acc_mean" in v)
            if "time_ratio" in value:
                text += f" | ratio {value['time_ratio']:.3f}, {value['acc_diff']:+.2f} pp"
        elif name == "table1":
            text = f"{value.get('stopped', '')}: " + ", ".join(
                f"{s} epoch {v['epoch']}" for s, v in value.get("stages", {}).items())
        elif name == "study":
            text = "; ".join(f"{k}: {v.get('stopped', '')}" for k, v in value.items())
        elif name == "runtime":
            text = (f"{value.get('device_count')} x {value.get('device_kind')}, "
                    f"jax {value.get('jax')}")
        else:
            text = f"{value.get('train', '')} train images from {value.get('source', '')}"
        if r["status"] != "ok":
            text = r.get("error", "").splitlines()[-1] if r.get("error") else r["status"]
        lines.append(f"{name:14s} {r['status']:8s} {r['seconds']:8.1f}  {text}")
    return lines


def run(cfg: SuiteConfig) -> dict:
    """Runs the chosen steps in order and writes ``suite.json`` after each."""
    if cfg.tiny:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in TINY.items()
                                          if getattr(cfg, k) == getattr(SuiteConfig, k)})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    end = start + cfg.budget
    scale = cfg.budget / SuiteConfig.budget  # step budgets shrink with a smaller --budget
    results = {"config": dataclasses.asdict(cfg), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "steps": {}}
    ctx: dict = {}
    with contextlib.ExitStack() as stack:
        log = Tee(sys.stdout, out / "suite.log")
        stack.callback(log.file.close)
        stack.enter_context(contextlib.redirect_stdout(log))
        for name in STEPS:
            if name not in cfg.steps:
                continue
            if name in NEEDS_DATA and "ds" not in ctx and "data" not in cfg.steps:
                step_data(cfg, ctx, end)
            step_start = time.perf_counter()
            budget = BUDGETS[name] * scale
            deadline = end if name == "table1" else min(step_start + budget, end)
            if name == "study":  # the hungriest step gets what the steps before it left
                reserve = BUDGETS["table1"] * scale if "table1" in cfg.steps else 0.0
                deadline = max(deadline, end - reserve)
            if cfg.tiny:  # a test of every step: none is skipped or cut short for time
                floor = {"study": 120, "table1": 120}.get(name, 10)  # study: 2 short runs
                deadline = max(deadline, step_start + floor)
            print(f"== {name} (budget {deadline - step_start:.0f} s)")
            record = {"status": "ok"}
            try:
                if deadline <= step_start:
                    record["status"] = "skipped"
                    record["error"] = "no time left in --budget"
                else:
                    record["value"] = RUNNERS[name](cfg, ctx, deadline)
            except Exception as e:
                record["status"] = "failed"
                record["error"] = "".join(traceback.format_exception(e))[-3000:]
                print(f"  failed: {type(e).__name__}: {e}")
            record["seconds"] = time.perf_counter() - step_start
            results["steps"][name] = record
            results["seconds"] = time.perf_counter() - start
            write_json(out / "suite.json", results)
        print("== summary")
        for text in summary_lines(results):
            print(text)
    return results


def main(argv=None) -> dict:
    """``wsjax gpu_suite``: parses the flags and runs the suite."""
    # JAX takes 75% of the GPU at its first use by default; PyTorch runs beside it here.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.4")
    return run(parse(SuiteConfig, argv, description=__doc__))


if __name__ == "__main__":
    main()
