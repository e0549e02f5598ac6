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
  warm-start the study's two-phase protocol (``wsjax.study.protocols``) with this trainer:
             random init on 100% vs round 1 on 50% then 100% warm-started, and shrink-perturb
             (``--shrink``), --runs seeds each; test accuracy.

The timer covers what airbench's covers: whitening init, training and TTA evaluation, in one
compiled call; it excludes moving the data to the device and compilation (a warm-up run).

    wsjax fast_trainer --runs 10                  # GPU
    wsjax fast_trainer --mode airbench --runs 10  # GPU + airbench
    wsjax fast_trainer --quick                    # CPU minutes, synthetic data
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import os
import statistics
import time

import jax
import numpy as np

from wsjax.data import fingerprint
from wsjax.experiments.common import DataConfig, data_dir_of, load_data, main_guard, write_run
from wsjax.experiments.flags import COUNT, FRACTION, NON_NEGATIVE, Checked, flatten, option, parse
from wsjax.speedrun import (AIRBENCH94, AIRBENCH94_MUON, PAGE_RESNET9, TRICKS, Recipe,
                            Speedrun, frozen_mask)
from wsjax.study.protocols import run_two_phase
from wsjax.study.records import Run, TimedRow, TimedSummary, device_name
from wsjax.study.runlog import RunDir
from wsjax.study.stats import mean_se
from wsjax.train import TrainState
from wsjax.warmstart import Arm

RECIPES = {"airbench94": AIRBENCH94, "airbench94_muon": AIRBENCH94_MUON,
           "page_resnet9": PAGE_RESNET9}
MODES = ("time", "airbench", "ablate", "warm-start")
# 16x16 images: the net's three poolings need at least that; 16 steps learn 4 classes.
QUICK = {"dataset": "synthetic:4:16", "train_subset": 512, "runs": 2,
         "changes": ("epochs=4", "batch_size=128", "widths=16,32,32", "whiten_images=256")}


@dataclasses.dataclass(frozen=True)
class FastTrainerConfig(Checked):
    """The fast trainer's experiment."""

    mode: str = option("time", "what to run (see above)", choices=MODES)
    recipe: str = option("airbench94", "the recipe", choices=sorted(RECIPES))
    changes: tuple[str, ...] = option((), "recipe changes, e.g. epochs=8 flip=random "
                                      "bf16=false", flag="--set", nargs="*",
                                      metavar="FIELD=VALUE")
    runs: int = option(10, "timed runs (seeds) of each system, recipe or arm", check=COUNT)
    tricks: tuple[str, ...] = option((), "ablate only these tricks (none: all the recipe uses)",
                                     nargs="*", choices=sorted(TRICKS))
    shrink: tuple[float, ...] = option((0.6, 0.3), "shrink values of the shrink-perturb arms "
                                       "(warm-start mode)", nargs="*", check=FRACTION)
    noise: float = option(0.01, "noise scale of the shrink-perturb arms", check=NON_NEGATIVE)
    shared_round1: bool = option(False, "warm-start mode: start every arm's round 2 from one "
                                 "plain round 1 (by default a shrink-perturb arm transforms "
                                 "its init before round 1 too, as the official code does)")
    dataset: str = option("cifar10", "cifar10, or synthetic[:classes[:size]]")
    data_dir: str | None = option(None, "folder with <dataset>.npz (when not given: "
                                  "$WSJAX_DATA_DIR, else ~/.cache/wsjax)")
    train_subset: int | None = option(None, "use only the first N training images",
                                      check=COUNT)
    compile_cache: str = option("~/.cache/wsjax/xla", "XLA's persistent compilation cache "
                                "('' for none): a second invocation skips compiling")
    quick: bool = option(False, "CPU minutes")
    out: str = option("runs/fast_trainer", "run directory (results.json)")

    @property
    def data(self) -> DataConfig:
        """The data flags as the study's data config."""
        return DataConfig(self.dataset, self.data_dir, self.train_subset)


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


def timed_run(sr: Speedrun, data, seed: int) -> TimedRow:
    """One run of ``sr`` (already warmed up): its TTA accuracy and seconds."""
    start = time.perf_counter()
    acc = float(jax.block_until_ready(sr.run(jax.random.key(seed), *data)[0]))
    return TimedRow(seed, acc, time.perf_counter() - start)


def timed_runs(sr: Speedrun, data, runs: int) -> list[TimedRow]:
    """``runs`` timed runs (seeds 0..runs-1) after a warm-up."""
    warm_up(sr, data)
    return [timed_run(sr, data, i) for i in range(runs)]


def summary(rows: list[TimedRow]) -> TimedSummary:
    """Accuracy (%) mean, std and SE over the rows, and their median seconds."""
    accs = [r.acc * 100 for r in rows]
    mean, se = mean_se(accs)
    return TimedSummary(runs=len(rows), acc_mean=mean,
                        acc_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                        acc_se=se, seconds_median=float(statistics.median(
                            r.seconds for r in rows)), rows=rows)


def line(name, s: TimedSummary, base: TimedSummary | None = None) -> str:
    """One line of a summary, against ``base`` when given."""
    text = (f"{name:>20}: acc {s.acc_mean:.2f} ± {s.acc_std:.2f} % ({s.runs} runs)  "
            f"median {s.seconds_median:.3f} s")
    if base is not None:
        text += (f"  ({s.acc_mean - base.acc_mean:+.2f} pp, "
                 f"{s.seconds_median / base.seconds_median:.2f}x time)")
    return text


def mode_ablate(recipe: Recipe, ds, data, cfg: FastTrainerConfig) -> tuple[dict, dict]:
    """The full recipe, then each trick it uses switched off."""
    # Only the tricks this recipe uses (switching off an unused one changes nothing).
    tricks = [t for t in cfg.tricks or TRICKS if recipe.replace(**TRICKS[t]) != recipe]
    n = len(data[0])
    full = summary(timed_runs(Speedrun(recipe, num_train=n), data, cfg.runs))
    print(line("full recipe", full))
    out = {"full": full}
    for t in tricks:
        s = summary(timed_runs(Speedrun(recipe.replace(**TRICKS[t]), num_train=n), data,
                               cfg.runs))
        print(line(f"without {t}", s, full))
        out[f"without_{t}"] = s
    return out, {}


Round = collections.namedtuple("Round", "states result")


class SeedTrainer:
    """The two-phase protocol's trainer for one seed of the fast trainer.

    Random init and round 1 start from the same initialization (whitening from the same
    first images); every warm arm adds the same fresh init at round 2 (an arm's own round 1
    another), and no arm touches the frozen whitening filters. A stage's ``result`` is its
    timed row (train and test-time-augmented evaluation), none for a round 1.
    """

    def __init__(self, recipe: Recipe, data, seed: int, speedruns: dict):
        self.recipe, self.data, self.seed, self._speedruns = recipe, data, seed, speedruns
        x = data[0]
        k_init, self.k_round1, k_fresh, self.k_final = jax.random.split(jax.random.key(seed), 4)
        full = self.speedrun(len(x))
        self.init = full.init(k_init, x)
        self.fresh_params = full.init(k_fresh, x)["params"]
        # An arm's own round 1 draws other noise than its round 2 (the official code builds a
        # new network at every round); computed when first needed.
        self._k_fresh_round1, self._fresh_round1 = jax.random.fold_in(k_fresh, 1), None
        self.mask = frozen_mask(self.init["params"], recipe)

    def speedrun(self, n: int) -> Speedrun:
        """The compiled trainer for ``n`` training images (built once per size)."""
        if n not in self._speedruns:
            self._speedruns[n] = Speedrun(self.recipe, num_train=n)
        return self._speedruns[n]

    def fresh(self, stage: str) -> dict:
        """The seed's initialization (the same for random init and round 1)."""
        return self.init

    def arm_inputs(self, arm: Arm, stage: str, idx) -> dict:
        """The fresh init an arm's noise comes from (one for round 2, another for an arm's
        own round 1), and the mask of trainable weights."""
        if not stage.startswith("round1"):
            return {"fresh": self.fresh_params, "mask": self.mask}
        if self._fresh_round1 is None:
            self._fresh_round1 = self.speedrun(len(self.data[0])).init(
                self._k_fresh_round1, self.data[0])["params"]
        return {"fresh": self._fresh_round1, "mask": self.mask}

    def train(self, stage: str, variables: dict, idx, opt_state=None) -> Round:
        """A whole run of the recipe on ``x[idx]`` from ``variables``; timed and evaluated
        (test-time augmentation) unless it is round 1."""
        if opt_state is not None:
            raise ValueError("the fast trainer starts every run with its own optimizer "
                             "schedule: use arms with optimizer='reset'")
        x, y, x_test, y_test = self.data
        sr = self.speedrun(len(idx))
        start = time.perf_counter()
        first_round = stage.startswith("round1")  # round1, or an arm's own (round1_<arm>)
        key = self.k_round1 if first_round else self.k_final
        out = sr.train(key, variables, x[idx], y[idx])
        row = None
        if not first_round:
            acc = float(sr.evaluate(out, x_test, y_test)[0])
            row = TimedRow(self.seed, acc, time.perf_counter() - start)
        trained = TrainState(step=np.zeros((), np.int32), params=out["params"],
                             batch_stats=out["batch_stats"], opt_state=None)
        return Round(trained, row)


def mode_warm_start(recipe: Recipe, ds, data, cfg: FastTrainerConfig) -> tuple[dict, dict]:
    """The two-phase protocol, one seed at a time."""
    arms = [Arm("warm_start")] + [Arm(f"sp_{s:g}", s, cfg.noise) for s in cfg.shrink]
    rows = collections.defaultdict(list)
    speedruns = {}
    for i in range(cfg.runs):
        outcome = run_two_phase(SeedTrainer(recipe, data, i, speedruns),
                                fit_idx=np.arange(len(data[0])), first_fraction=0.5, arms=arms,
                                shared_round1=cfg.shared_round1)
        for name, trained in outcome.final.items():
            rows[name].append(trained.result)
    print("shrink-perturb arms: " + ("round 2 from the plain round 1 (--shared-round1)"
                                     if cfg.shared_round1 else "their own round 1 from the "
                                     "transformed init (official)"))
    out = {}
    for arm, arm_rows in rows.items():
        out[arm] = s = summary(arm_rows)
        print(f"{arm:>12}: test acc {s.acc_mean:.2f} ± {s.acc_se:.2f} % (mean ± SE, "
              f"{s.runs} seeds)")
    return out, {}


def mode_airbench(recipe: Recipe, ds, data, cfg: FastTrainerConfig) -> tuple[dict, dict]:
    """airbench94 (PyTorch) and this recipe alternately on the same data; the results and
    the comparison (time ratio, accuracy difference, torch version, GPU)."""
    if ds.x_train.shape[1:] != (32, 32, 3) or len(ds.x_train) != 50_000 or cfg.train_subset:
        raise ValueError("--mode airbench compares on the whole CIFAR-10 (50,000 32x32 training "
                         "images): drop --train-subset and --quick, use --dataset cifar10")
    return compare_airbench(recipe, ds, data, cfg.runs)


def compare_airbench(recipe: Recipe, ds, data, runs: int,
                     deadline: float = float("inf")) -> tuple[dict, dict]:
    """``runs`` alternating timed runs of airbench94 and ``recipe`` (fewer, at least one each,
    when ``deadline``, a ``time.perf_counter`` value, passes); their summaries and the
    comparison. Raises ``ValueError`` naming what is missing (torch, CUDA, airbench)."""
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
    for i in range(runs):
        if i and time.perf_counter() > deadline:
            print(f"time budget reached after {i} runs of each")
            break
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            airbench.train94()
        theirs.append(_airbench_row(buf.getvalue(), i))
        ours.append(timed_run(sr, data, i))
        print(f"run {i}: airbench94 {theirs[-1].acc * 100:.2f}% {theirs[-1].seconds:.3f}s"
              f" | wsjax {ours[-1].acc * 100:.2f}% {ours[-1].seconds:.3f}s")
    a, b = summary(theirs), summary(ours)
    print(line("airbench94 (torch)", a))
    print(line("wsjax", b, a))
    return {"airbench94": a, "wsjax": b}, {
        "time_ratio": b.seconds_median / a.seconds_median, "acc_diff": b.acc_mean - a.acc_mean,
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}


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


def _airbench_row(printed: str, seed: int) -> TimedRow:
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
    return TimedRow(seed, nums[-2], nums[-1])


def run(cfg: FastTrainerConfig) -> Run:
    """Runs the chosen mode and writes ``results.json`` in ``cfg.out``."""
    start = time.perf_counter()
    if cfg.compile_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compile_cache))
    changes = parse_overrides(cfg.changes)
    recipe = RECIPES[cfg.recipe].replace(**changes)
    ds = load_data(cfg.data)
    out = RunDir(cfg.out)  # before the runs: an unusable --out fails now, not after them
    # On the device before any timer (airbench's timer excludes this transfer too).
    data = tuple(jax.device_put(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    print(f"{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test; {cfg.recipe} "
          f"{changes or ''}; {device_name()}")
    if cfg.mode == "time":
        results = {cfg.recipe: summary(timed_runs(Speedrun(recipe, num_train=len(ds.x_train)),
                                                  data, cfg.runs))}
        print(line(cfg.recipe, results[cfg.recipe]))
        extra = {}
    else:
        results, extra = {"ablate": mode_ablate, "warm-start": mode_warm_start,
                          "airbench": mode_airbench}[cfg.mode](recipe, ds, data, cfg)
    config = {k: v for k, v in flatten(cfg).items() if k != "out"}
    return write_run(out, script="fast_trainer", kind="speedrun", config=config,
                     results=results, title=f"{cfg.recipe} ({cfg.mode}) on {ds.name}",
                     start=start, data_dir=data_dir_of(cfg.data), data=fingerprint(ds),
                     mode=cfg.mode,
                     recipe=cfg.recipe, changes=changes, dataset=ds.name, **extra)


def main(argv=None) -> Run:
    """``wsjax fast_trainer``: parses the flags and runs the chosen mode."""
    return run(parse(FastTrainerConfig, argv, description=__doc__, quick=QUICK))


if __name__ == "__main__":
    main_guard(main)
