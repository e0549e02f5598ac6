"""Flags and set-up shared by the experiment scripts (data, model, optimizer, devices, run dir).

A script builds a parser with ``make_parser`` (the study's flags, its own, ``--quick``), calls
``Experiment(args, script)`` for the data on the device, the model, the optimizer, the stop
rule and a ``StageRunner``, runs its protocol, and ends with ``Experiment.finish``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

from wsjax import data as wdata
from wsjax.augment import make_preprocess
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.parallel import DataParallel, make_mesh
from wsjax.runlog import RunDir
from wsjax.study import StageRunner
from wsjax.train import StopRule, make_epoch_fn, replica_keys

QUICK = {"train_subset": 3000, "max_epochs": 20, "seeds": 2}


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every study experiment; defaults are the study's."""
    p.add_argument("--dataset", default="cifar10",
                   help="cifar10, cifar100, svhn, or synthetic[:classes[:size]] (a small "
                        "learnable stand-in)")
    p.add_argument("--data-dir", default=None, help="folder with <dataset>.npz "
                   "(default: $WSJAX_DATA_DIR, else ~/.cache/wsjax)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="use only the first N official training images (quick runs)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 2/3 : 1/3 split")
    p.add_argument("--label-noise", type=float, default=0.0,
                   help="fraction of the fitted split's labels replaced by random ones "
                        "(validation and test labels stay clean)")
    p.add_argument("--model", default="mlp", help="logreg, mlp, resnet18_narrow, resnet18")
    p.add_argument("--widths", default=None,
                   help="comma-separated layer widths overriding the model's (e.g. 8,16,32,64 "
                        "for a reduced ResNet, 100,100 for the MLP)")
    p.add_argument("--optimizer", default="adam", help="sgd, momentum, nesterov, adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="coupled L2, as PyTorch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, default=4, help="replicas trained at once (vmapped)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed")
    p.add_argument("--threshold", type=float, default=0.99, help="stop at this running train acc")
    p.add_argument("--plateau-window", type=int, default=None,
                   help="also stop when train acc's std over this many epochs < --plateau-std "
                        "(default: 3 for logreg/mlp, off for ResNets; 0 turns it off)")
    p.add_argument("--plateau-std", type=float, default=0.002)
    p.add_argument("--max-epochs", type=int, default=350)
    p.add_argument("--parallel", default="auto", choices=("auto", "none", "batch", "replica"),
                   help="data parallelism over all devices (auto: batch for ResNets, replica "
                        "for small models when the seeds divide evenly; none on one device)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    p.add_argument("--out", default=None, help="run directory (results, logs, checkpoints)")


def make_parser(doc: str, quick: dict | None = None) -> argparse.ArgumentParser:
    """A parser with the common flags and ``--quick`` (which applies ``quick``, default
    ``QUICK``, to every flag left at its default)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    quick = QUICK if quick is None else quick
    p.add_argument("--quick", action="store_true",
                   help=f"a CPU-minutes run: {quick} unless set explicitly")
    p.set_defaults(_quick_values=quick)
    return p


def parse(p: argparse.ArgumentParser, argv, name: str) -> argparse.Namespace:
    """Parses ``argv``, applies ``--quick`` and names the default run directory after
    ``name`` and the dataset/model/optimizer."""
    args = p.parse_args(argv)
    if args.quick:
        for k, v in args._quick_values.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    del args._quick_values
    if args.out is None:
        args.out = f"runs/{name}_{args.dataset}_{args.model}_{args.optimizer}"
    return args


def load_data(args) -> wdata.Dataset:
    """The dataset named by the flags (``synthetic`` needs no files)."""
    if args.dataset.startswith("synthetic"):
        # "synthetic:C:S": C classes (10), SxS images (32); another C is another dataset.
        parts = args.dataset.split(":")[1:]
        try:
            classes, size = (int(v) for v in (parts + ["10", "32"][len(parts):])[:2])
        except ValueError:
            raise ValueError(f"--dataset {args.dataset!r}: write synthetic[:classes[:size]]") from None
        return wdata.synthetic_dataset(num_train=args.train_subset or 3000, num_test=500,
                                       num_classes=classes, image_shape=(size, size, 3),
                                       seed=classes)
    ds = wdata.load_dataset(args.dataset, args.data_dir)
    if args.train_subset:
        ds = wdata.Dataset(ds.name, ds.x_train[: args.train_subset],
                           ds.y_train[: args.train_subset], ds.x_test, ds.y_test, ds.num_classes)
    return ds


def choose_parallel(mode: str, model: str, num_seeds: int) -> DataParallel | None:
    """The data-parallel layout for ``mode`` (see the --parallel flag)."""
    n = jax.device_count()
    if mode == "none" or (mode == "auto" and n == 1):
        return None
    if mode == "auto":
        mode = "replica" if not model.startswith("resnet") and num_seeds % n == 0 else "batch"
    return DataParallel(make_mesh(), mode)


def plateau_window(args) -> int | None:
    """The plateau rule's window: the flag, else 3 for models that cannot reach 99%."""
    if args.plateau_window is not None:
        return args.plateau_window or None
    return None if args.model.startswith("resnet") else 3


def seeds_of(args) -> np.ndarray:
    """The seeds named by ``--seeds``/``--seed-offset``."""
    if args.seeds < 1:
        raise SystemExit(f"--seeds={args.seeds} must be at least 1")
    return np.arange(args.seed_offset, args.seed_offset + args.seeds)


def model_of(args, num_classes: int):
    """The model named by ``--model`` with ``--widths`` applied."""
    overrides = {}
    if args.widths:
        try:
            overrides["widths"] = tuple(int(w) for w in args.widths.split(","))
        except ValueError:
            raise ValueError(f"--widths={args.widths!r} must be comma-separated integers") from None
    return create_model(args.model, num_classes, **overrides)


class Experiment:
    """Everything a study script needs, built once from the flags.

    Attributes: ``args``, ``ds``, ``seeds``, ``fit_idx`` (shuffled, so first fractions are
    random subsets), ``val_idx``, ``model``, ``tx``, ``parallel``, ``run`` (``RunDir``),
    ``x``/``y`` (training images and the labels trained on, on the device), ``eval_sets``
    (``val`` and ``test`` with clean labels), ``stop``, ``runner``, ``config``.
    Flags named in ``may_change`` may differ when a run resumes.
    """

    def __init__(self, args, script: str, *, runner: bool = True, may_change=(),
                 **epoch_options):
        self.args, self.script, self.start = args, script, time.perf_counter()
        self.ds = ds = load_data(args)
        self.seeds = seeds_of(args)
        fit_idx, self.val_idx = wdata.study_split(len(ds.x_train), args.split_seed)
        self.fit_idx = wdata.shuffled(fit_idx, args.split_seed)
        self.model = model_of(args, ds.num_classes)
        self.tx = make_optimizer(args.optimizer, args.lr, weight_decay=args.weight_decay)
        self.parallel = choose_parallel(args.parallel, args.model, len(self.seeds))
        self.run = RunDir(args.out)
        self.config = {k: v for k, v in vars(args).items()
                       if k not in ("out", "checkpoint_every")}
        self.run.write_config({**self.config, "script": script}, may_change)
        labels = ds.y_train
        if args.label_noise:
            labels = labels.copy()
            labels[self.fit_idx] = wdata.relabel_fraction(labels[self.fit_idx], args.label_noise,
                                                          ds.num_classes, args.split_seed)
        self.put = self.parallel.place_data if self.parallel else jax.device_put
        self.x, self.y = self.put(ds.x_train), self.put(labels)
        clean = self.put(ds.y_train) if args.label_noise else self.y
        self.eval_sets = {"val": (self.x, clean, self.put(self.val_idx)),
                          "test": (self.put(ds.x_test), self.put(ds.y_test),
                                   self.put(np.arange(len(ds.x_test))))}
        self.stop = StopRule(args.threshold, args.max_epochs, plateau_window(args),
                             args.plateau_std)
        print(f"{ds.name}: {len(self.fit_idx)} fitted / {len(self.val_idx)} validation / "
              f"{len(ds.x_test)} test; model {args.model}; {args.optimizer} lr {args.lr} "
              f"batch {args.batch_size}; seeds {[int(s) for s in self.seeds]}; devices "
              f"{jax.device_count()} ({jax.devices()[0].platform}), parallel "
              f"{self.parallel.mode if self.parallel else 'none'}"
              + (f"; label noise {args.label_noise}" if args.label_noise else ""))
        self.runner = self.make_runner(**epoch_options) if runner else None

    def epoch_fn(self, *, batch_size: int | None = None, tx=None, model=None, **options):
        """A compiled epoch for this experiment (``options`` go to ``make_epoch_fn``)."""
        return make_epoch_fn(model or self.model, tx or self.tx,
                             batch_size=batch_size or self.args.batch_size,
                             preprocess=make_preprocess(), parallel=self.parallel,
                             input_shape=self.ds.image_shape, **options)

    def make_runner(self, *, subdir: str | None = None, batch_size: int | None = None, tx=None,
                    stop: StopRule | None = None, model=None, **options) -> StageRunner:
        """A ``StageRunner`` over this experiment's data; ``subdir`` gives it its own run
        directory inside the experiment's (for sweeps), the other arguments override the
        flags' batch size, optimizer, stop rule and model."""
        run = RunDir(self.run.path / subdir) if subdir else self.run
        batch_size = batch_size or self.args.batch_size
        model = model or self.model
        return StageRunner(model=model, tx=tx or self.tx,
                           epoch_fn=self.epoch_fn(batch_size=batch_size, tx=tx, model=model,
                                                  **options),
                           x=self.x, y=self.y, capacity=len(self.fit_idx), stop=stop or self.stop,
                           keys=replica_keys(self.seeds), run=run,
                           checkpoint_every=self.args.checkpoint_every, parallel=self.parallel,
                           input_shape=self.ds.image_shape, batch_size=batch_size)

    def describe(self) -> str:
        """A one-line title for figures."""
        a = self.args
        return (f"{self.ds.name} {a.model} {a.optimizer} lr {a.lr} batch {a.batch_size}, "
                f"{len(self.seeds)} seeds" + (" (quick)" if a.quick else ""))

    def finish(self, results: dict, plot: Callable | None = None, **extra) -> dict:
        """Writes ``results.json`` (results, config, wall time, device) and draws the figure
        with ``plot(record, run_path)`` when matplotlib is installed."""
        wall = time.perf_counter() - self.start
        record = {"script": self.script, "config": self.config, "results": results,
                  "wall_seconds": wall, "title": self.describe(),
                  "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", **extra}
        self.run.write_results(record)
        print(f"wall time {wall:.1f} s; results in {self.run.path / 'results.json'}")
        if plot is not None:
            try:
                print(f"figure {plot(record, self.run.path)}")
            except ImportError:
                print("matplotlib is not installed: no figure (pip install 'wsjax[plot]')")
        return record


def main_guard(main: Callable) -> None:
    """Runs a script's ``main``, turning bad-input errors into a one-line exit message."""
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
