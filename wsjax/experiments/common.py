"""What the study's experiment scripts share: their typed configs (every field a flag, see
``wsjax.experiments.flags``) and the small builders that turn a config into the pieces of a
run: data on the devices, model, optimizer, engine, stop rule, run directory, stages.

A script's ``main(argv)`` parses its flags into its config and calls its ``run(cfg)``, which
calls ``setup(cfg, script)`` and a protocol, and ends with ``finish``. Scripts with several
cells call another script's ``run(dataclasses.replace(cfg, ...))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping

import jax
import numpy as np

from wsjax import data as wdata
from wsjax import hosts
from wsjax.augment import AUGMENTATIONS
from wsjax.engine import Engine
from wsjax.experiments.flags import (COUNT, FRACTION, INDEX, NON_NEGATIVE, POSITIVE, RATE,
                                     Checked, Rule, flatten, option)
from wsjax.models import MODELS, create_model
from wsjax.models.activations import ACTIVATIONS
from wsjax.models.init import INIT_SCHEMES
from wsjax.objectives import Objective
from wsjax.optim import OPTIMIZERS, make_optimizer
from wsjax.parallel import choose_parallel
from wsjax.study import records
from wsjax.study.runlog import Progress, RunDir, TensorBoardSink, close_all, jsonable
from wsjax.study.stages import Stages, StudyData
from wsjax.train import StopRule, has_conv
from wsjax.warmstart import shrink_perturb_every_step

QUICK = {"train_subset": 3000, "max_epochs": 20, "seeds": 2}

# Settings of how a run is carried out, not of what it computes: a resumed run may change them.
# (Where the data lies may change too: what it is, its fingerprint, may not; nor may the
# process count, which leaves the numbers as they are: a run resumes on another one.)
RUN_ONLY = ("out", "checkpoint_every", "progress", "tensorboard", "data_dir", "coordinator",
            "num_processes", "process_id", "heartbeat_timeout", "data_layout")


def comma_ints(text: str) -> tuple[int, ...]:
    """``'8,16,32'`` -> ``(8, 16, 32)`` (the ``--widths`` flag)."""
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers "
                                         f"(e.g. 8,16,32,64)") from None


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
    """Which data, and which part of it."""

    dataset: str = option("cifar10", "cifar10, cifar100, svhn, or synthetic[:classes[:size]] "
                          "(a small learnable stand-in)")
    data_dir: str | None = option(None, "folder with <dataset>.npz (when not given: "
                                  "$WSJAX_DATA_DIR, else ~/.cache/wsjax)")
    train_subset: int | None = option(None, "use only the first N official training images "
                                      "(quick runs)", check=COUNT)
    split_seed: int = option(0, "seed of the 2/3 : 1/3 split (with each seed's own split: "
                             "mixed with the seed)", check=INDEX)
    fixed_split: bool = option(False, "every seed uses --split-seed's split and subsets (by "
                               "default each seed draws its own, as the official unseeded "
                               "runs do)")
    label_noise: float = option(0.0, "fraction of the labels trained on replaced by random "
                                "ones: of the fitted split with --fixed-split, else of all "
                                "training images (about that fraction of each seed's fitted "
                                "split); validation and test labels stay clean",
                                check=FRACTION)


@dataclasses.dataclass(frozen=True)
class ModelConfig(Checked):
    """The network."""

    model: str = option("mlp", "the model", choices=sorted(MODELS))
    widths: tuple[int, ...] | None = option(
        None, "comma-separated layer widths overriding the model's (e.g. 8,16,32,64 for a "
        "reduced ResNet, 100,100 for the MLP)", parse=comma_ints, check=COUNT)
    init: str = option("torch", "initialization scheme of every layer (PyTorch's default, or "
                       "a lesson's: wsjax.models.init)", choices=INIT_SCHEMES)
    activation: str | None = option(None, "hidden-layer activation of the MLP (default relu)",
                                    choices=sorted(ACTIVATIONS))
    dropout: float = option(0.0, "dropout rate in training: the MLP's hidden layers, the "
                            "ResNet's last two stages", check=RATE)
    dropblock: float = option(0.0, "DropBlock rate of the ResNet's last two stages in "
                              "training (blocks of 3x3)", check=RATE)
    drop_path: float = option(0.0, "stochastic depth of the Wide ResNets: the last block's "
                              "rate of dropping its residual branch (linear in depth)",
                              check=RATE)
    conv: str = option("full", "the residual blocks' 3x3 convolutions: full, or a cheap "
                       "substitute kind[:size] (wsjax.models.substitutes), e.g. hashed:0.1, "
                       "acdc:4, separable:1")


@dataclasses.dataclass(frozen=True)
class OptimConfig(Checked):
    """The optimizer (PyTorch's, with coupled L2 weight decay)."""

    optimizer: str = option("adam", "the optimizer", choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate (constant)", check=POSITIVE)
    weight_decay: float = option(0.0, "coupled L2, as PyTorch", check=NON_NEGATIVE)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Checked):
    """Batches, seeds and devices."""

    batch_size: int = option(128, "training batch size (the last batch is partial)",
                             check=COUNT)
    seeds: int = option(4, "replicas trained at once (vmapped)", check=COUNT)
    seed_offset: int = option(0, "first seed", check=INDEX)
    parallel: str = option("auto", "data parallelism over all devices (auto: batch for conv "
                           "nets, replica for small models when the seeds divide evenly; "
                           "none on one device)", choices=("auto", "none", "batch", "replica"))
    data_layout: str = option("auto", "where the dataset lies on a mesh: sharded (each device "
                              "holds a share; batches are gathered across devices) or "
                              "replicated (whole on each device: faster when it fits); auto: "
                              "sharded over several processes, else replicated",
                              choices=("auto", "sharded", "replicated"))
    augment: tuple[str, ...] = option((), "on-device augmentations in training, in order "
                                      "(the study uses none)", nargs="*",
                                      choices=sorted(AUGMENTATIONS))


@dataclasses.dataclass(frozen=True)
class StopConfig(Checked):
    """When a round stops."""

    threshold: float = option(0.99, "stop at this running train accuracy (above 1: never)",
                              check=POSITIVE)
    max_epochs: int = option(350, "epoch cap of a round", check=COUNT)
    plateau_window: int | None = option(
        None, "a fallback for models that cannot reach --threshold within --max-epochs: also "
        "stop when train acc's std over this many epochs < --plateau-std (off when not given "
        "or 0: the official rule)",
        check=Rule(lambda v: v == 0 or COUNT.test(v) and v >= 2, "0 (off) or an integer >= 2"))
    plateau_std: float = option(0.002, "see --plateau-window", check=POSITIVE)
    plateau_min_epochs: int = option(20, "the plateau fallback never stops a round before this "
                                     "many epochs (a warm start's first epochs may be flat)",
                                     check=INDEX)


@dataclasses.dataclass(frozen=True)
class RunConfig(Checked):
    """Where the run goes and how it reports."""

    out: str | None = option(None, "run directory (results, logs, checkpoints; when not "
                             "given: runs/<command>_<dataset>_<model>_<optimizer>)")
    checkpoint_every: int = option(1, "epochs between checkpoints", check=COUNT)
    quick: bool = option(False, "a CPU-minutes run")
    progress: str = option("line", "progress display: a line per epoch, one updating bar, or "
                           "off", choices=Progress.MODES)
    tensorboard: bool = option(False, "also write metrics as TensorBoard events in "
                               "<out>/tensorboard (needs tensorboardX)")


@dataclasses.dataclass(frozen=True)
class HostConfig(Checked):
    """Several processes (hosts), one run: every process gets the same command with its own
    --process-id (wsjax.hosts; TPU slices, SLURM and Open MPI need none of these)."""

    coordinator: str | None = option(None, "host:port of process 0, reachable from every "
                                     "process ($JAX_COORDINATOR_ADDRESS when not given); "
                                     "auto: JAX finds the hosts itself (a Cloud TPU slice)")
    num_processes: int | None = option(None, "how many processes run this command "
                                       "($JAX_NUM_PROCESSES)", check=COUNT)
    process_id: int | None = option(None, "this process's index, from 0 ($JAX_PROCESS_ID)",
                                    check=INDEX)
    heartbeat_timeout: int = option(hosts.HEARTBEAT_TIMEOUT, "seconds after which a silent "
                                    "process counts as dead and the others stop",
                                    check=COUNT)


@dataclasses.dataclass(frozen=True)
class StudyConfig(Checked):
    """Everything a study experiment is run with, besides its protocol's own settings."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    stop: StopConfig = StopConfig()
    run: RunConfig = RunConfig()
    hosts: HostConfig = HostConfig()


def replace_study(cfg, **groups):
    """``cfg`` (a script config with a ``study`` field) with some fields of its study config
    changed, by group: ``replace_study(cfg, optim={'lr': 0.1}, run={'out': 'runs/x'})``."""
    study = cfg.study
    changes = {g: dataclasses.replace(getattr(study, g), **v) for g, v in groups.items()}
    return dataclasses.replace(cfg, study=dataclasses.replace(study, **changes))


def with_default_out(cfg, script: str):
    """``cfg`` with ``--out`` defaulted to ``runs/<script>_<dataset>_<model>_<optimizer>``."""
    s = cfg.study
    if s.run.out is not None:
        return cfg
    out = f"runs/{script}_{s.data.dataset}_{s.model.model}_{s.optim.optimizer}"
    return replace_study(cfg, run={"out": out})


# --- builders ------------------------------------------------------------------------------


def load_data(cfg: DataConfig) -> wdata.Dataset:
    """The dataset named by ``cfg`` (``synthetic`` needs no files)."""
    if cfg.dataset.startswith("synthetic"):
        # "synthetic:C:S": C classes (10), SxS images (32); another C is another dataset.
        parts = cfg.dataset.split(":")[1:]
        try:
            classes, size = (int(v) for v in (parts + ["10", "32"][len(parts):])[:2])
        except ValueError:
            classes = size = 0
        if len(parts) > 2 or classes < 2 or size < 1:
            raise ValueError(f"--dataset {cfg.dataset!r}: write synthetic[:classes[:size]] "
                             f"with at least 2 classes and images of at least 1x1 pixels, "
                             f"e.g. synthetic:10:32")
        return wdata.synthetic_dataset(num_train=cfg.train_subset or 3000, num_test=500,
                                       num_classes=classes, image_shape=(size, size, 3),
                                       seed=classes)
    ds = wdata.load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.train_subset and cfg.train_subset > len(ds.x_train):
        raise ValueError(f"--train-subset {cfg.train_subset}: {cfg.dataset} has only "
                         f"{len(ds.x_train)} training images")
    if cfg.train_subset:
        ds = wdata.Dataset(ds.name, ds.x_train[: cfg.train_subset],
                           ds.y_train[: cfg.train_subset], ds.x_test, ds.y_test, ds.num_classes)
    return ds


def data_dir_of(cfg: DataConfig) -> str | None:
    """The resolved data directory (None for synthetic data)."""
    return None if cfg.dataset.startswith("synthetic") else str(
        wdata.default_data_dir(cfg.data_dir))


def study_data(cfg: DataConfig, ds: wdata.Dataset, put: Callable = jax.device_put,
               seeds=(0,)) -> StudyData:
    """The study's split of ``ds`` on the devices (``put``), label noise applied to the
    labels trained on only. By default each of ``seeds`` draws its own split and fitted order
    (``wsjax.data.seed_splits``): ``fit_idx`` and ``val_idx`` are ``(len(seeds), n)``, one row
    per replica. With ``cfg.fixed_split`` every seed shares ``cfg.split_seed``'s (1-d
    arrays)."""
    labels = ds.y_train
    if cfg.fixed_split:
        fit_idx, val_idx = wdata.study_split(len(ds.x_train), cfg.split_seed)
        fit_idx = wdata.shuffled(fit_idx, cfg.split_seed)
        noisy = fit_idx
    else:
        fit_idx, val_idx = wdata.seed_splits(len(ds.x_train), seeds, cfg.split_seed)
        # One set of noisy labels for every seed, so the data stay shared on the device:
        # each seed's fitted split then holds about that fraction of them.
        noisy = np.arange(len(labels))
    if cfg.label_noise:
        labels = labels.copy()
        labels[noisy] = wdata.relabel_fraction(labels[noisy], cfg.label_noise, ds.num_classes,
                                               cfg.split_seed)
    x, y = put(ds.x_train), put(labels)
    clean = put(ds.y_train) if cfg.label_noise else y
    # Index arrays stay on the host: the engine cuts them into batches there.
    eval_sets = {"val": (x, clean, val_idx),
                 "test": (put(ds.x_test), put(ds.y_test), np.arange(len(ds.x_test)))}
    return StudyData(ds.name, x, y, fit_idx, val_idx, eval_sets, ds.num_classes)


def check_sizes(cfg: StudyConfig, ds: wdata.Dataset) -> None:
    """Refuses sizes that only make sense for another dataset: a split with an empty part, a
    batch larger than the fitted split (every step would be padded to it)."""
    fit, val = wdata.study_split_sizes(len(ds.x_train))
    if fit < 1 or val < 1:
        raise ValueError(f"--train-subset {cfg.data.train_subset}: {len(ds.x_train)} training "
                         f"images leave {fit} to fit and {val} to validate; use at least 3")
    if cfg.train.batch_size > fit:
        raise ValueError(f"--batch-size {cfg.train.batch_size} is larger than the {fit} fitted "
                         f"images; choose at most {fit} (the study uses 128)")


def seeds_of(cfg: TrainConfig) -> np.ndarray:
    """The seeds named by ``--seeds``/``--seed-offset`` (checked by ``TrainConfig``)."""
    return np.arange(cfg.seed_offset, cfg.seed_offset + cfg.seeds)


def build_model(cfg: ModelConfig, num_classes: int):
    """The model named by ``--model`` with ``--widths``, ``--init``, ``--activation``, the
    dropout flags and ``--conv`` applied."""
    overrides = {"widths": tuple(cfg.widths)} if cfg.widths else {}
    # Always passed: a model whose own default differs (the Wide ResNets' He init) then gets
    # the scheme its run records.
    overrides["init_scheme"] = cfg.init
    if cfg.activation is not None:
        overrides["activation"] = cfg.activation
    for name in ("dropout", "dropblock", "drop_path"):
        if getattr(cfg, name):
            overrides[name] = getattr(cfg, name)
    if cfg.conv != "full":
        overrides["conv"] = cfg.conv
    return create_model(cfg.model, num_classes, **overrides)


def stop_rule(cfg: StopConfig) -> StopRule:
    """The stop rule of the flags: the official 99% rule with its epoch cap, and the plateau
    fallback only when ``--plateau-window`` asks for it (for every model alike)."""
    return StopRule(cfg.threshold, cfg.max_epochs, cfg.plateau_window or None, cfg.plateau_std,
                    cfg.plateau_min_epochs)


def describe(cfg: StudyConfig, dataset: str, num_seeds: int) -> str:
    """A one-line title for figures."""
    return (f"{dataset} {cfg.model.model} {cfg.optim.optimizer} lr {cfg.optim.lr} batch "
            f"{cfg.train.batch_size}, {num_seeds} seed{'' if num_seeds == 1 else 's'}"
            + (" (quick)" if cfg.run.quick else ""))


def open_run(path, cfg, script: str, *, may_change=(), seeds=(), data: dict | None = None
             ) -> RunDir:
    """The run directory ``path``, with ``config.json`` written (or checked, on a resume)
    from the flattened config ``cfg`` and the ``data`` fingerprint (``wsjax.data.fingerprint``;
    a run recorded before fingerprints existed takes the current one)."""
    run = RunDir(path)
    config = {**record_config(cfg, script), "data": data}
    run.write_config(config, (*may_change, *RUN_ONLY),
                     {**record_config(type(cfg)(), script), "data": data},
                     migrate=records.migrate_config)
    # After the checks (a refused run leaves no event file); process 0 writes the metrics.
    if cfg.study.run.tensorboard and hosts.is_main():
        run.metrics.sinks.append(TensorBoardSink(run.path / "tensorboard", seeds))
    return run


def record_config(cfg, script: str) -> dict:
    """The resolved config a run records: every field but the run-only ones, and the
    script."""
    flat = {k: v for k, v in flatten(cfg).items() if k not in RUN_ONLY}
    return jsonable({**flat, "script": script})


@dataclasses.dataclass
class Setup:
    """The pieces of one study run (see ``setup``)."""

    cfg: object
    script: str
    data: StudyData
    engine: Engine
    stages: Stages
    run: RunDir
    title: str
    start: float
    data_id: dict | None = None  # wsjax.data.fingerprint of the data

    @property
    def seeds(self) -> list[int]:
        """The run's seeds, one replica each."""
        return self.stages.seeds


def setup(cfg, script: str, *, may_change=(), objective: Objective | None = None,
          sp_every_step: tuple[float, float] | None = None,
          models: tuple[str, ...] | None = None) -> Setup:
    """Builds a study run from a script config ``cfg`` (with a ``study: StudyConfig`` field):
    data, model, optimizer, layout, ``Engine`` (with a training ``objective`` and
    shrink-perturb after every step, ``(shrink, noise)``, when given), run directory and
    ``Stages``. Fields named in ``may_change`` may differ when a run resumes. ``models``:
    the models a script trains instead of ``--model`` (named in the header it prints)."""
    start = time.perf_counter()
    s: StudyConfig = cfg.study
    # First: the runtime of a run over several processes must start before any device is used.
    layout = hosts.initialize(s.hosts.coordinator, s.hosts.num_processes, s.hosts.process_id,
                              heartbeat_timeout=s.hosts.heartbeat_timeout)
    ds = load_data(s.data)
    seeds = seeds_of(s.train)
    model = build_model(s.model, ds.num_classes)
    shard_data = None if s.train.data_layout == "auto" else s.train.data_layout == "sharded"
    parallel = choose_parallel(s.train.parallel, len(seeds),
                               conv=has_conv(model, ds.image_shape), shard_data=shard_data)
    after_update = (shrink_perturb_every_step(model, ds.image_shape, *sp_every_step)
                    if sp_every_step else None)
    engine = Engine(model, make_optimizer(s.optim.optimizer, s.optim.lr,
                                          weight_decay=s.optim.weight_decay),
                    batch_size=s.train.batch_size, input_shape=ds.image_shape,
                    parallel=parallel, objective=objective, after_update=after_update,
                    augmentations=s.train.augment)
    check_sizes(s, ds)
    data = study_data(s.data, ds, engine.put, seeds)
    # Only now, with every value checked: a run refused above leaves no config behind.
    data_id = wdata.fingerprint(ds)
    run = open_run(s.run.out, cfg, script, may_change=may_change, seeds=seeds, data=data_id)
    if layout.process_count > 1:
        # Each process logs to its own file; only process 0's output also reaches the console.
        run.process_log = hosts.ProcessLog(run.path / "logs" / f"process_{layout.process_index}"
                                           ".log", console=layout.process_index == 0)
        print(layout.describe())
    stages = Stages(engine, run, data, seeds=seeds, stop=stop_rule(s.stop),
                    checkpoint_every=s.run.checkpoint_every, progress=Progress(s.run.progress))
    names = ", ".join(models or [s.model.model])
    print(f"{ds.name}: {data.fit_idx.shape[-1]} fitted / {data.val_idx.shape[-1]} validation / "
          f"{len(ds.x_test)} test; model {names}; {s.optim.optimizer} lr {s.optim.lr} "
          f"batch {s.train.batch_size}; seeds {[int(x) for x in seeds]}; devices "
          f"{jax.device_count()} ({jax.devices()[0].platform}"
          + (f", {layout.process_count} processes" if layout.process_count > 1 else "")
          + f"), parallel "
          f"{parallel.mode if parallel else 'none'}"
          + (", data sharded" if parallel is not None and parallel.shard_data else "")
          + (f"; label noise {s.data.label_noise}" if s.data.label_noise else "")
          + ("; one split for every seed" if s.data.fixed_split else "; a split per seed"))
    return Setup(cfg, script, data, engine, stages, run, describe(s, ds.name, len(seeds)), start,
                 data_id)


def draw(plot: Callable | None, record, folder) -> None:
    """Draws ``plot(record, folder)`` when matplotlib is installed (in process 0 of a run over
    several processes)."""
    if plot is None or not hosts.is_main():
        return
    try:
        print(f"figure {plot(record, folder)}")
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'wsjax[plot]')")


def write_run(run: RunDir, *, script: str, kind: str, config: dict, results, title: str,
              start: float, data_dir: str | None, plot: Callable | None = None,
              data: dict | None = None, **extra) -> records.Run:
    """Writes ``results.json`` in ``run`` (a ``records.Run``: results, config, provenance,
    wall time since ``start`` plus that of the processes that worked on the run before;
    ``data`` the data's fingerprint) and draws its figure."""
    record = records.Run(
        script=script, kind=kind, config=config, results=results, title=title,
        wall_seconds=run.earlier_seconds + time.perf_counter() - start,
        device=records.device_name(),
        provenance=records.provenance(data_dir, data), extra=extra)
    path = records.save(record, run.results_path)
    for line in records.divergences(record):
        print(f"diverged: {line}")
    print(f"wall time {record.wall_seconds:.1f} s; results in {path}")
    draw(plot, record, run.path)
    run.close()  # last: a process log gets every line
    return record


def finish(run: Setup, kind: str, results, plot: Callable | None = None,
           **extra) -> records.Run:
    """Ends a study run: its record (``write_run``) with the run's config and title."""
    return write_run(run.run, script=run.script, kind=kind,
                     config=record_config(run.cfg, run.script), results=results,
                     title=run.title, start=run.start,
                     data_dir=data_dir_of(run.cfg.study.data), plot=plot, data=run.data_id,
                     **extra)


def run_cells(cells: Mapping[str, object], run_one: Callable, *, script: str, out: str,
              plot: Callable | None = None) -> records.Cells:
    """Runs ``run_one(cfg, script=script)`` for each cell config (each in its own folder
    ``<out>/<name>``, resumable on its own) and writes the summary to ``<out>/results.json``."""
    runs = {name: run_one(cfg, script=script) for name, cfg in cells.items()}
    first = next(iter(runs.values()))
    summary = records.Cells(script=script, title=first.title, cells=runs,
                            wall_seconds=sum(r.wall_seconds for r in runs.values()),
                            device=first.device, provenance=first.provenance)
    run = RunDir(out)
    records.save(summary, run.results_path)
    run.close()
    draw(plot, summary, run.path)
    return summary


# The exit status of a run that finished but had seeds diverge (2 is argparse's usage error).
DIVERGED_EXIT = 3
INTERRUPTED_EXIT = 130  # the shell's status for a process ended by Ctrl-C


def _terminated(signum, frame):
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def _leave(message: str, status: int) -> None:
    """Prints ``message`` and ends the process at once: metric sinks flushed and locks released,
    checkpoints already closed (their writes finish before Ctrl-C is let through), but no
    interpreter teardown, which could crash XLA threads mid-compilation and, in a run over
    several processes, would wait in the runtime's shutdown for processes that wait for this
    one. The coordinator notices the process gone and stops the others (``wsjax.hosts``)."""
    print(message, file=sys.stderr)
    close_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main_guard(main: Callable, argv=None) -> None:
    """Runs a script's ``main(argv)`` as a command: bad input ends with a one-line error,
    Ctrl-C or SIGTERM (``kill``, a scheduler's stop; a background job ignores Ctrl-C) with one
    line saying how to resume, and a run whose seeds diverged with a summary of which and when
    and exit status ``DIVERGED_EXIT``. In a run over several processes, a process that fails
    ends at once (``_leave``), so that the others stop too instead of waiting for it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        record = main(argv)
    except KeyboardInterrupt:
        _leave("\ninterrupted; resume with the same command", INTERRUPTED_EXIT)
    except (FileNotFoundError, ValueError) as e:
        if hosts.is_distributed():
            _leave(f"error: {e}", 1)
        sys.exit(f"error: {e}")
    except Exception:
        if not hosts.is_distributed():
            raise
        traceback.print_exc()
        _leave("error: the run stopped in this process (above: a failure here, or a lost "
               "connection to a process that died first, whose own log says why); the others "
               "stop when they miss its heartbeats. Start every process again with the same "
               "command to resume", 1)
    lines = records.divergences(record) if isinstance(record, records.RECORD_TYPES) else []
    if lines:
        print(f"error: {len(lines)} seed run(s) diverged (stop_reason 'diverged' in "
              f"results.json; their numbers are those of the last finite state):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        print("fix: lower --lr (or --weight-decay), or check the data", file=sys.stderr)
        sys.exit(DIVERGED_EXIT)
