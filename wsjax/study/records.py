"""The results schema: typed records of what a run produced, with JSON in and out.

Every experiment writes its ``results.json`` through ``save`` and every reader (figures, the
claims table, notebooks) goes through ``load``, so the schema is written down once, here:

- ``SeedRow``: one seed (replica) of one stage: epochs, seconds, stop reason, accuracies.
- ``StageResult``: one arm or stage over its seeds, with the round-1 rows of a warm start, the
  per-epoch ``history`` and the measurements on the starting weights when they were watched.
- ``OnlineRound``, ``ShrinkCurve``, ``TransferResult``, ``TimedSummary``: the results of the
  online, shrink-only, transfer and fast-trainer experiments.
- ``Run``: one run of a script: its ``kind`` says which of the above ``results`` holds
  (``KINDS``); ``config`` is the resolved flat config; ``provenance`` says how it was made.
- ``Cells``: a sweep of runs (one per cell); ``Table1``: the Table 1 summary.

``SCHEMA_VERSION`` 2; files without a version (version 1, before the records existed) are
migrated when loaded.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Union

import jax

from wsjax.study.runlog import write_json
from wsjax.warmstart import Arm

SCHEMA_VERSION = 2


@dataclasses.dataclass
class SeedRow:
    """One seed of one stage. Accuracies are fractions; ``total_*`` count both rounds of a
    warm start. A seed whose training diverged has ``stop_reason='diverged'`` and
    ``diverged_at=[epoch, step]``; its numbers are those of its last finite state, and a value
    that is not finite is None. ``seconds`` are training time; ``compile_seconds`` the time
    spent compiling the stage's epoch (shared by its seeds), ``examples`` the training examples
    the seed processed (epochs x training-set size). None: not recorded (older results, whose
    seconds included compiling)."""

    seed: int
    epochs: int
    seconds: float
    stop_reason: str | None
    train_acc: float
    val_acc: float | None = None
    val_loss: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    total_epochs: int | None = None
    total_seconds: float | None = None
    diverged_at: list[int] | None = None
    compile_seconds: float | None = None
    examples: int | None = None
    total_examples: int | None = None


@dataclasses.dataclass
class StageResult:
    """One arm (or stage) over its seeds.

    ``arm``: how it started from round 1 (warm arms). ``round1``: round 1's rows (warm arms of
    the two-phase protocol). ``history``: per-epoch records of the final round (``train_acc``,
    ``train_loss``, ``seconds`` and every watched value, each a list over seeds);
    ``round1_history`` the same of round 1; ``start``: the watched values on the starting
    weights. ``round1_epoch``: the round-1 epoch a warm start came from (Fig 4).
    ``own_round1``: the arm's round 1 started from its own transformed init (the official
    protocol for shrink-perturb arms); False: from the plain round 1 the arms share; None: not
    recorded (results written before the distinction, which all shared it).
    """

    seeds: list[SeedRow]
    arm: Arm | None = None
    round1: list[SeedRow] | None = None
    history: list[dict] | None = None
    round1_history: list[dict] | None = None
    start: dict[str, list[float]] | None = None
    round1_epoch: int | None = None
    own_round1: bool | None = None


@dataclasses.dataclass
class OnlineRound:
    """One round of the online protocol: ``n`` training examples."""

    round: int
    n: int
    seeds: list[SeedRow]


@dataclasses.dataclass
class StagedRound:
    """One stage of one arm of the staged protocol (``wsjax.study.staged``): ``n`` training
    examples, a row per seed, and the plasticity diagnostics at the stage's start (after the
    intervention) and end, each ``{name: [value per seed]}``."""

    stage: int
    n: int
    seeds: list[SeedRow]
    start: dict[str, list[float]]
    end: dict[str, list[float]]


@dataclasses.dataclass
class ShrinkCurve:
    """A trained model's validation accuracy after shrinking: ``val_acc[i][r]`` is seed r's
    accuracy at ``shrinks[i]``; ``seeds`` are the rows of the training itself."""

    seeds: list[SeedRow]
    shrinks: list[float]
    val_acc: list[list[float]]


@dataclasses.dataclass
class TransferFraction:
    """One fraction of the target data: ``n`` examples, the rows of each arm."""

    n: int
    arms: dict[str, list[SeedRow]]


@dataclasses.dataclass
class TransferResult:
    """Source dataset and its model's rows; target results per fraction (key: ``'0.1'``)."""

    source: str
    source_seeds: list[SeedRow]
    new_head: bool
    fractions: dict[str, TransferFraction]


@dataclasses.dataclass
class TimedRow:
    """One timed run of the fast trainer: test accuracy (fraction) and seconds."""

    seed: int
    acc: float
    seconds: float


@dataclasses.dataclass
class TimedSummary:
    """Timed runs: accuracy in percent (mean, std, SE) and the median seconds."""

    runs: int
    acc_mean: float
    acc_std: float
    acc_se: float
    seconds_median: float
    rows: list[TimedRow]


@dataclasses.dataclass
class Provenance:
    """How a run was made: package versions, the git commit of the code (None outside a
    checkout), the date (UTC, ISO 8601), the devices, the resolved data directory, the
    command line, and what the data was (``wsjax.data.fingerprint``; None in runs made before
    it was recorded)."""

    versions: dict[str, str]
    git_commit: str | None
    date: str
    device: str
    data_dir: str | None
    command: list[str]
    data: dict[str, Any] | None = None


@dataclasses.dataclass
class BudgetStudent:
    """One cheap-convolution student of ``wsjax budget``: its conv ``spec`` (knob set),
    whether the spec was ``solved`` for the ``budget`` (a count) or given, its ``params`` and
    ``mult_adds`` per example, and per arm (``alone``, ``distilled``, ``warm_sp``) the seeds'
    rows and per-epoch running train accuracy (``curves[arm][epoch][seed]``)."""

    spec: str
    solved: bool
    budget: int
    params: int
    mult_adds: int
    arms: dict[str, list[SeedRow]]
    curves: dict[str, list[list[float | None]]]


@dataclasses.dataclass
class BudgetResult:
    """``wsjax budget``: the teacher (full convolutions) and one student per family."""

    teacher: str
    teacher_params: int
    teacher_mult_adds: int
    teacher_seeds: list[SeedRow]
    teacher_curve: list[list[float | None]]
    students: dict[str, BudgetStudent]


# What ``Run.results`` holds, by ``Run.kind``.
KINDS = {
    "two_phase": dict[str, StageResult],
    "online": dict[str, list[OnlineRound]],
    "staged": dict[str, list[StagedRound]],
    "shrink_only": dict[str, ShrinkCurve],
    "transfer": TransferResult,
    "speedrun": dict[str, TimedSummary],
    "budget": BudgetResult,
}


@dataclasses.dataclass
class Run:
    """One run of a script (``script`` is its command name, e.g. ``'warm_start'``).
    ``wall_seconds`` is the wall time of every process that worked on the run, resumed ones
    included (``RunDir.wall_seconds``); a process killed outright (SIGKILL, out of memory) is
    not counted, and runs saved before wsjax kept that count have the last process's only."""

    script: str
    kind: str
    config: dict
    results: Any
    title: str = ""
    wall_seconds: float = 0.0
    device: str = ""
    provenance: Provenance | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Run kind={self.kind!r} is unknown; kinds are {sorted(KINDS)}")


@dataclasses.dataclass
class Cells:
    """A sweep: one ``Run`` per cell, each in its own folder ``<run>/<cell>``."""

    script: str
    title: str
    cells: dict[str, Run]
    wall_seconds: float
    device: str
    provenance: Provenance | None = None
    kind: str = "cells"
    schema_version: int = SCHEMA_VERSION


@dataclasses.dataclass
class ArmSummary:
    """An arm of a Table 1 cell: ``[mean, SE]`` of val and test accuracy (%) and seconds over
    its ``n`` seeds that did not diverge; ``diverged`` more did (None: not recorded)."""

    val_acc: list[float]
    test_acc: list[float]
    seconds: list[float]
    n: int
    diverged: int | None = None


@dataclasses.dataclass
class Table1Row:
    """A Table 1 cell beside the paper's ``[random, warm]`` validation accuracy (%)."""

    dataset: str
    model: str
    optimizer: str
    paper: list[float] | None
    random_init: ArmSummary
    warm_start: ArmSummary
    gap: list[float]


@dataclasses.dataclass
class Table1:
    """The Table 1 summary of one dataset (its cells are runs in sub-folders)."""

    script: str
    rows: list[Table1Row]
    table: str
    kind: str = "table1"
    schema_version: int = SCHEMA_VERSION


Record = Union[Run, Cells, Table1]
RECORD_TYPES = (Run, Cells, Table1)


# --- JSON ----------------------------------------------------------------------------------


def to_json(record) -> dict:
    """A record as plain JSON data (fields that are None by default and None are left out)."""
    if dataclasses.is_dataclass(record):
        out = {}
        for f in dataclasses.fields(record):
            v = getattr(record, f.name)
            if v is None and f.default is None:
                continue
            out[f.name] = to_json(v)
        return out
    if isinstance(record, dict):
        return {str(k): to_json(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [to_json(v) for v in record]
    return record


def _decode(tp, data, where: str):
    """``data`` (plain JSON) as type ``tp``, checked; ``where`` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if data is None else _decode(args[0], data, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{where} must be a list, not {type(data).__name__}")
        return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, not {type(data).__name__}")
        return {k: _decode(item, v, f"{where}.{k}") for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object ({tp.__name__})")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{where}: {tp.__name__} has no field {sorted(unknown)}")
        kwargs = {}
        for name in names & set(data):
            field_tp = hints[name]
            if tp is Run and name == "results":
                field_tp = KINDS.get(data.get("kind"), Any)
            kwargs[name] = _decode(field_tp, data[name], f"{where}.{name}")
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    return data


def from_plain(tp, data, where: str = "data"):
    """Plain JSON ``data`` as the record type ``tp`` (e.g. ``list[OnlineRound]``), checked."""
    return _decode(tp, data, where)


def from_json(data: dict, where: str = "record") -> Record:
    """A record from plain JSON data (version 1 data is migrated first)."""
    if "schema_version" not in data:
        data = migrate_v1(data)
    if data["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{where} has schema version {data['schema_version']}; this wsjax "
                         f"reads version {SCHEMA_VERSION}: upgrade wsjax")
    kind = data.get("kind")
    tp = {"cells": Cells, "table1": Table1}.get(kind, Run)
    return _decode(tp, data, where)


def load(path: str | os.PathLike) -> Record:
    """The record in ``path`` (a ``results.json``, or the run folder holding one). A file that
    is not valid JSON (e.g. truncated) raises ``ValueError`` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged (not valid JSON: {e}); rerun the run that wrote "
                         f"it, or delete it") from None
    return from_json(data, str(path))


def save(record: Record, path: str | os.PathLike) -> Path:
    """Writes ``record`` to ``path`` (a file, or a folder for its ``results.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    return write_json(path, to_json(record))


def load_all(paths, warn=print) -> list[tuple[Path, Record]]:
    """``(path, record)`` for each of ``paths`` that loads; a damaged or unreadable one is
    skipped with a warning naming it (``warn(text)``), so one bad file does not stop a whole
    table or a redraw."""
    out = []
    for path in paths:
        try:
            out.append((Path(path), load(path)))
        except (OSError, ValueError) as e:
            warn(f"warning: skipping {path}: {e}")
    return out


def seed_rows(record, where: str = ""):
    """Every ``SeedRow`` in a record (any nesting), as ``(path, row)``; e.g.
    ``('results.warm_start.round1[0]', row)``."""
    if isinstance(record, SeedRow):
        yield where, record
    elif dataclasses.is_dataclass(record):
        for f in dataclasses.fields(record):
            yield from seed_rows(getattr(record, f.name), f"{where}.{f.name}".lstrip("."))
    elif isinstance(record, dict):
        for k, v in record.items():
            yield from seed_rows(v, f"{where}.{k}".lstrip("."))
    elif isinstance(record, (list, tuple)):
        for i, v in enumerate(record):
            yield from seed_rows(v, f"{where}[{i}]")


def divergences(record) -> list[str]:
    """One line per seed run that diverged in ``record``: which stage, which seed, and when.
    The round 1 that the warm arms of a two-phase run share is listed once."""
    lines = []
    for path, row in seed_rows(record):
        if row.stop_reason != "diverged":
            continue
        stage = re.sub(r"(\.seeds)?\[\d+\]$", "", path).removeprefix("results.")
        if stage.endswith(".round1"):  # every warm arm holds the same round-1 rows
            stage = "round 1"
        when = (f" at epoch {row.diverged_at[0]}, step {row.diverged_at[1]}"
                if row.diverged_at else "")
        line = f"{stage}: seed {row.seed} diverged{when}"
        if line not in lines:
            lines.append(line)
    for row in record.rows if isinstance(record, Table1) else []:  # its cells' counts
        for arm in ("random_init", "warm_start"):
            if getattr(row, arm).diverged:
                lines.append(f"{row.dataset}_{row.model}_{row.optimizer} {arm}: "
                             f"{getattr(row, arm).diverged} seed(s) diverged (see the cell's "
                             f"results.json)")
    return lines


# --- provenance ----------------------------------------------------------------------------


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit checked out where wsjax's code lies (``+`` marks uncommitted changes), or
    None when it does not lie in a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def device_name() -> str:
    """``'<count> x <device kind>'`` of the devices JAX uses, and ``' (<n> processes)'``
    when they span several."""
    processes = jax.process_count()
    return (f"{jax.device_count()} x {jax.devices()[0].device_kind}"
            + (f" ({processes} processes)" if processes > 1 else ""))


def provenance(data_dir: str | os.PathLike | None, data: dict | None = None) -> Provenance:
    """The provenance of a run made now by this process; ``data_dir`` is the resolved data
    directory (None for data that needs none), ``data`` the data's fingerprint."""
    from wsjax.runtime import versions

    return Provenance(
        versions=versions(), git_commit=git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=device_name(), data_dir=None if data_dir is None else str(data_dir),
        command=list(sys.argv), data=data)


# --- version 1 -----------------------------------------------------------------------------


def _arm_v1(arm: dict) -> dict:
    return {"name": arm["name"], "shrink": arm["shrink"], "noise_scale": arm["perturb"],
            "noise_kind": arm["noise"], "bn": arm["bn"]}


def _results_v1(kind: str, results: dict, record: dict):
    if kind == "two_phase":
        return {name: {**r, **({"arm": _arm_v1(r["arm"])} if "arm" in r else {})}
                for name, r in results.items()}
    if kind == "transfer":
        return {"source": record["source"], "source_seeds": results["source"]["seeds"],
                "new_head": record["new_head"], "fractions": results["fractions"]}
    return results


def migrate_config_v1(config: dict) -> dict:
    """A version-1 config (before the records) as version 2 writes it: the script by its
    command name, widths as a list."""
    config = dict(config)
    if isinstance(config.get("script"), str):
        config["script"] = config["script"].removeprefix("experiments.")
    if isinstance(config.get("widths"), str):
        config["widths"] = [int(w) for w in config["widths"].split(",")]
    return config


def migrate_config(config: dict) -> dict:
    """A saved run config of any earlier wsjax as this one writes it (``migrate_config_v1``,
    then what older versions did without a flag for it): every seed shared one split
    (``fixed_split``), the arms of a two-phase run shared one plain round 1
    (``shared_round1``) and those of an online run one plain round 0 (``shared_round0``),
    and before ``plateau_min_epochs`` existed a plateau window left unset meant 3 epochs for
    every model but the ResNets, from the first epoch on. Written out, a resume with today's
    defaults is refused as a different config rather than silently switching protocols half
    way."""
    config = migrate_config_v1(config)
    if "split_seed" in config and "fixed_split" not in config:
        config["fixed_split"] = True  # every seed shared one split before the flag existed
    # The two-phase configs (their arms' opt_state; grad_norms' probe_size): every arm
    # shared one plain round 1 before shared_round1 existed.
    if ("opt_state" in config or "probe_size" in config) and "shared_round1" not in config:
        config["shared_round1"] = True
    # The online runs: every arm started from one plain round 0 before shared_round0 existed.
    if config.get("script") == "online" and "shared_round0" not in config:
        config["shared_round0"] = True
    if "plateau_window" in config and "plateau_min_epochs" not in config:
        if config["plateau_window"] is None and not str(config.get("model")).startswith(
                "resnet"):
            config["plateau_window"] = 3
        config["plateau_min_epochs"] = 0
    return config


def migrate_v1(data: dict) -> dict:
    """Version-1 data (``results.json`` as written before the records) in version 2."""
    script = str(data.get("script", "")).removeprefix("experiments.").split(" ")[0]
    if "rows" in data and "table" in data:
        return {"script": script, "kind": "table1", "rows": data["rows"],
                "table": data["table"], "schema_version": SCHEMA_VERSION}
    if "cells" in data:
        cells = {name: migrate_v1({"script": data["script"], "title": data.get("title", ""),
                                   "device": data.get("device", ""), **cell})
                 for name, cell in data["cells"].items()}
        return {"script": script, "kind": "cells", "title": data.get("title", ""),
                "cells": cells, "wall_seconds": data["wall_seconds"],
                "device": data.get("device", ""), "schema_version": SCHEMA_VERSION}
    kind = {"online": "online", "shrink_only": "shrink_only", "transfer": "transfer"}.get(
        script, "two_phase")
    if script == "speedrun":
        raise ValueError("version-1 fast-trainer results are not migrated: run it again")
    return {"script": script, "kind": kind, "config": migrate_config_v1(data.get("config", {})),
            "results": _results_v1(kind, data["results"], data),
            "title": data.get("title", ""), "wall_seconds": data.get("wall_seconds", 0.0),
            "device": data.get("device", ""), "schema_version": SCHEMA_VERSION}
