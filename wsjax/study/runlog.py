"""A run's directory and what is written into it while it runs.

- ``RunDir``: ``config.json`` (the resolved config and what the data is; a resume with
  another config or other data is refused), ``metrics.jsonl`` and ``results.json`` (written
  through ``wsjax.study.records``). Figures and the claims table read these files; they
  never retrain. A run holds a lock on its directory (``.lock``), so a second process on it
  is refused with the holder's name; the lock goes with the process, so a killed run's lock
  never blocks its resume.
- ``MetricWriter``: the one way metrics are written. The JSON-lines file is the record (one
  object per line, appended, with a timestamp); other sinks (``TensorBoardSink``) get a copy.
- ``Progress``: what a long stage shows while it trains: a line per epoch, one bar that
  updates in place, or nothing (a quiet notebook).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wsjax.hosts import is_main, process_index


def jsonable(x):
    """``x`` with numpy values, tuples and paths turned into plain JSON types; a float that is
    not finite (NaN, infinity) becomes None, which every JSON reader accepts."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj) -> Path:
    """Writes ``obj`` as indented JSON atomically (a crash never leaves half a file). In a run
    over several processes only process 0 writes (the others hold the same values)."""
    path = Path(path)
    if not is_main():
        return path
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


class TensorBoardSink:
    """Copies numeric metrics to TensorBoard event files in ``directory`` (needs
    ``tensorboardX``: ``pip install 'wsjax[tensorboard]'``). Per-replica lists become one
    scalar per replica (``train_acc/seed_3``); the step is the record's ``epoch``."""

    def __init__(self, directory: str | os.PathLike, seeds: Sequence[int] | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("the TensorBoard sink needs tensorboardX: "
                              "pip install 'wsjax[tensorboard]'") from None
        self.seeds = list(seeds) if seeds is not None else None
        self._writer = SummaryWriter(str(directory))

    def write(self, record: Mapping) -> None:
        """Writes the numbers of one record under ``<stage>/<name>``."""
        step, stage = record.get("epoch", 0), record.get("stage", "run")
        for name, value in record.items():
            if name in ("epoch", "stage", "time") or isinstance(value, (bool, str)):
                continue
            if isinstance(value, (list, tuple)):
                for r, v in enumerate(value):
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        seed = self.seeds[r] if self.seeds and r < len(self.seeds) else r
                        self._writer.add_scalar(f"{stage}/{name}/seed_{seed}", v, step)
            elif isinstance(value, (int, float)):
                self._writer.add_scalar(f"{stage}/{name}", value, step)

    def close(self) -> None:
        """Flushes the event file."""
        self._writer.close()


class MetricWriter:
    """Appends metric records to ``path`` (JSON lines) and copies them to ``sinks``."""

    def __init__(self, path: str | os.PathLike, sinks: Sequence = ()):
        self.path = Path(path)
        self.sinks = list(sinks)

    def write(self, **record) -> None:
        """Appends one record (with a timestamp) to the file and to every sink (by process 0
        alone in a run over several processes)."""
        if not is_main():
            return
        record = jsonable({"time": time.time(), **record})
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for sink in self.sinks:
            sink.write(record)

    def rewind(self, stage: str, epoch: int) -> int:
        """Drops the records of ``stage`` after ``epoch`` (a stage resumed from its checkpoint
        at ``epoch`` logs the later epochs again) and any line a crash cut short; returns how
        many lines were dropped. The file is rewritten atomically (by process 0)."""
        if not self.path.exists() or not is_main():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("stage") == stage and record.get("epoch", 0) > epoch:
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        return dropped

    def close(self) -> None:
        """Closes the sinks (the JSON-lines file is closed after every record)."""
        for sink in self.sinks:
            sink.close()


class Progress:
    """Shows the epochs of a stage: ``'line'`` prints one line per epoch, ``'bar'`` one line
    per stage that updates in place (carriage return), ``'off'`` nothing."""

    MODES = ("line", "bar", "off")

    def __init__(self, mode: str = "line", stream=None):
        if mode not in self.MODES:
            raise ValueError(f"progress={mode!r} must be one of {self.MODES}")
        self.mode = mode
        self._stream = stream
        self._width = 0  # of the bar's last text, which a shorter one must cover

    @property
    def stream(self):
        """Where it prints: the given stream, else ``sys.stdout`` at the time of printing (a
        process log installed later, ``wsjax.hosts.ProcessLog``, gets the lines)."""
        return self._stream or sys.stdout

    def epoch(self, stage: str, epoch: int, train_acc: Sequence[float], active: Sequence[bool],
              seconds: float) -> None:
        """Reports one finished epoch of ``stage``."""
        if self.mode == "off":
            return
        acc = np.array([np.nan if a is None else a for a in train_acc], dtype=float)
        if np.isnan(acc).all():
            acc = np.zeros(1)  # every replica diverged before it had a finite accuracy
        text = (f"[{stage}] epoch {epoch:3d}  train acc {np.nanmean(acc):.4f} "
                f"[{np.nanmin(acc):.4f}..{np.nanmax(acc):.4f}]  active {sum(active)}/{len(acc)}  "
                f"{seconds:.2f}s")
        if self.mode == "line":
            print(text, file=self.stream)
        else:
            end = "\n" if not any(active) else ""
            print("\r" + text.ljust(self._width), end=end, file=self.stream, flush=True)
            self._width = 0 if end else len(text)

    def note(self, text: str) -> None:
        """A message outside the epochs (a resumed stage, a finished round)."""
        if self.mode != "off":
            print(text, file=self.stream)


class RunDirError(ValueError):
    """A run directory that cannot be used: not a writable folder, or in use by another run."""


# The run directories this process has open: path -> RunDir.
_OPEN: dict = {}


def close_all() -> None:
    """Closes every run directory this process has open (sinks flushed, locks released): for
    a process about to exit without its usual teardown."""
    for run in list(_OPEN.values()):
        run.close()


def _lock(path: Path):
    """Locks ``path/.lock`` for this process (released when it exits, however it exits) and
    writes who holds it; raises ``RunDirError`` naming the holder when another process does."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    # One lock per process of a run over several (they share the folder).
    index = process_index()
    handle = open(path / (".lock" if index == 0 else f".lock.{index}"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(f"{path} is in use by {holder}; wait for that run to end, or choose "
                          f"another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:200]})\n")
    handle.flush()
    return handle


# Where a run directory keeps the wall time of the processes that worked on it.
WALL_FILE = "wall.json"


def _earlier_seconds(path: Path) -> float:
    """The wall time ``path`` (``WALL_FILE``) recorded, or 0 when there is none (a new run, or
    one started before wsjax recorded it)."""
    try:
        return float(json.loads(path.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


class RunDir:
    """The files of one run in ``path`` (created if needed), locked for this process until
    ``close``. Raises ``RunDirError`` when ``path`` cannot be a run directory (a file, below a
    file, not writable) or another process holds it. Opening a directory this process already
    has open (a notebook re-running a cell) closes the earlier one and takes over."""

    def __init__(self, path: str | os.PathLike, sinks: Sequence = ()):
        self.path = Path(path).expanduser().resolve()
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {path} is a file, not a folder: choose another --out")
        if self.path in _OPEN:
            _OPEN[self.path].close()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.path)
        except OSError as e:
            raise RunDirError(f"--out {path} cannot be a run directory ({e.strerror or e}): "
                              f"choose a folder you can write to") from None
        self.metrics = MetricWriter(self.path / "metrics.jsonl", sinks)
        self.process_log = None  # a wsjax.hosts.ProcessLog, closed with the run
        self._opened = time.perf_counter()
        self.earlier_seconds = _earlier_seconds(self.path / WALL_FILE)
        _OPEN[self.path] = self

    @property
    def checkpoints(self) -> Path:
        """The folder of the run's checkpoints (one sub-folder per stage)."""
        return self.path / "checkpoints"

    @property
    def results_path(self) -> Path:
        """Where the run's record goes."""
        return self.path / "results.json"

    @property
    def wall_seconds(self) -> float:
        """Wall time spent on this run so far: the processes that worked on it before (as
        they recorded in ``wall.json`` when they closed it) and this one since it opened it."""
        return self.earlier_seconds + time.perf_counter() - self._opened

    @property
    def started(self) -> bool:
        """Whether the run has written anything beyond its config, locks and process logs
        (checkpoints, metrics, results, or a sub-run's folder)."""
        own = {"config.json", "config.json.tmp", ".lock", "logs", WALL_FILE, WALL_FILE + ".tmp"}
        return any(p.name not in own and not p.name.startswith(".lock.")
                   for p in self.path.iterdir())

    def close(self) -> None:
        """Closes the metric sinks and releases the directory's lock (once)."""
        if _OPEN.get(self.path) is not self:
            return
        del _OPEN[self.path]
        # A clean stop (finished, Ctrl-C, SIGTERM) hands its time to the next process; one
        # killed outright (SIGKILL, out of memory) leaves its time uncounted.
        write_json(self.path / WALL_FILE, {"seconds": self.wall_seconds})
        self.metrics.close()
        if self.process_log is not None:
            self.process_log.close()
            self.process_log = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def write_config(self, config: Mapping, may_change: Sequence[str] = (),
                     defaults: Mapping | None = None, migrate=None) -> None:
        """Writes ``config.json``; refuses to resume a run that was started with another config.

        Keys in ``may_change`` (e.g. a round count: more rounds extend the same run) may differ.
        A key the saved config lacks matches when the new value is its entry in ``defaults``
        (a setting added to wsjax later, at its default, leaves an older run as it was);
        ``migrate(old) -> old`` brings a saved config of an older wsjax up to date first. The
        ``data`` key (``wsjax.data.fingerprint``) gets its own message. A run that never
        started (a config and nothing else) takes the new config.
        """
        path = self.path / "config.json"
        new = jsonable(dict(config))
        if path.exists() and self.started:
            old = json.loads(path.read_text())
            old = migrate(old) if migrate is not None else old
            defaults = jsonable(dict(defaults or {}))
            diff = {k for k in set(old) | set(new)
                    if k not in may_change and old.get(k, defaults.get(k)) != new.get(k)}
            if "data" in diff:
                was, now = old["data"], new.get("data") or {}
                raise ValueError(
                    f"{self.path} was run on other data ({_data_text(was)}) than is loaded now "
                    f"({_data_text(now)}): point WSJAX_DATA_DIR or --data-dir at the data it "
                    f"was run on, or choose another --out directory")
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with a different config ({sorted(diff)} differ): "
                    f"resume it with the same flags, or choose another --out directory")
        write_json(path, new)


def _data_text(data: Mapping) -> str:
    return (f"{data.get('name')} train {data.get('train')} test {data.get('test')}, sha256 "
            f"{str(data.get('sha256'))[:12]}")
