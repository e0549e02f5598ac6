"""Flags and set-up shared by the experiment scripts (data, model, optimizer, devices)."""

from __future__ import annotations

import argparse

import jax
import numpy as np

from wsjax import data as wdata
from wsjax.parallel import DataParallel, make_mesh


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every study experiment; defaults are the study's."""
    p.add_argument("--dataset", default="cifar10",
                   help="cifar10, cifar100, svhn, or synthetic (a small learnable stand-in)")
    p.add_argument("--data-dir", default=None, help="folder with <dataset>.npz "
                   "(default: $WSJAX_DATA_DIR, else ~/.cache/wsjax)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="use only the first N official training images (quick runs)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 2/3 : 1/3 split")
    p.add_argument("--model", default="mlp", help="logreg, mlp, resnet18_narrow, resnet18")
    p.add_argument("--optimizer", default="adam", help="sgd, momentum, nesterov, adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="coupled L2, as PyTorch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, default=4, help="replicas trained at once (vmapped)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed")
    p.add_argument("--threshold", type=float, default=0.99, help="stop at this running train acc")
    p.add_argument("--plateau-window", type=int, default=None,
                   help="also stop when train acc's std over this many epochs < --plateau-std "
                        "(default: 3 for logreg/mlp, off for ResNets)")
    p.add_argument("--plateau-std", type=float, default=0.002)
    p.add_argument("--max-epochs", type=int, default=350)
    p.add_argument("--parallel", default="auto", choices=("auto", "none", "batch", "replica"),
                   help="data parallelism over all devices (auto: batch for ResNets, replica "
                        "for small models when the seeds divide evenly; none on one device)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    p.add_argument("--out", default=None, help="run directory (results, logs, checkpoints)")


def load_data(args) -> wdata.Dataset:
    """The dataset named by the flags (``synthetic`` needs no files)."""
    if args.dataset == "synthetic":
        return wdata.synthetic_dataset(num_train=args.train_subset or 3000, num_test=1000)
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
    if args.plateau_window is not None:
        return args.plateau_window or None
    return None if args.model.startswith("resnet") else 3


def seeds_of(args) -> np.ndarray:
    if args.seeds < 1:
        raise SystemExit(f"--seeds={args.seeds} must be at least 1")
    return np.arange(args.seed_offset, args.seed_offset + args.seeds)
