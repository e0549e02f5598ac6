"""A run's directory and what is written into it while it runs.

- ``RunDir``: ``config.json`` (the resolved config; a resume with another one is refused),
  ``metrics.jsonl`` and ``results.json`` (written through ``wsjax.study.records``). Figures
  and the claims table read these files; they never retrain.
- ``MetricWriter``: the one way metrics are written. The JSON-lines file is the record (one
  object per line, appended, with a timestamp); other sinks (``TensorBoardSink``) get a copy.
- ``Progress``: what a long stage shows while it trains: a line per epoch, one bar that
  updates in place, or nothing (a quiet notebook).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def jsonable(x):
    """``x`` with numpy values, tuples and paths turned into plain JSON types."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj) -> Path:
    """Writes ``obj`` as indented JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1) + "\n")
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
        """Appends one record (with a timestamp) to the file and to every sink."""
        record = jsonable({"time": time.time(), **record})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record)

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
        self.stream = stream or sys.stdout
        self._width = 0  # of the bar's last text, which a shorter one must cover

    def epoch(self, stage: str, epoch: int, train_acc: Sequence[float], active: Sequence[bool],
              seconds: float) -> None:
        """Reports one finished epoch of ``stage``."""
        if self.mode == "off":
            return
        acc = np.asarray(train_acc)
        text = (f"[{stage}] epoch {epoch:3d}  train acc {acc.mean():.4f} "
                f"[{acc.min():.4f}..{acc.max():.4f}]  active {sum(active)}/{len(acc)}  "
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


class RunDir:
    """The files of one run in ``path`` (created if needed)."""

    def __init__(self, path: str | os.PathLike, sinks: Sequence = ()):
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricWriter(self.path / "metrics.jsonl", sinks)

    @property
    def checkpoints(self) -> Path:
        """The folder of the run's checkpoints (one sub-folder per stage)."""
        return self.path / "checkpoints"

    @property
    def results_path(self) -> Path:
        """Where the run's record goes."""
        return self.path / "results.json"

    def write_config(self, config: Mapping, may_change: Sequence[str] = (),
                     defaults: Mapping | None = None, migrate=None) -> None:
        """Writes ``config.json``; refuses to resume a run that was started with another config.

        Keys in ``may_change`` (e.g. a round count: more rounds extend the same run) may differ.
        A key the saved config lacks matches when the new value is its entry in ``defaults``
        (a setting added to wsjax later, at its default, leaves an older run as it was);
        ``migrate(old) -> old`` brings a saved config of an older wsjax up to date first.
        """
        path = self.path / "config.json"
        new = jsonable(dict(config))
        if path.exists():
            old = json.loads(path.read_text())
            old = migrate(old) if migrate is not None else old
            defaults = jsonable(dict(defaults or {}))
            diff = {k for k in set(old) | set(new)
                    if k not in may_change and old.get(k, defaults.get(k)) != new.get(k)}
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with a different config ({sorted(diff)} differ): "
                    f"resume it with the same flags, or choose another --out directory")
        write_json(path, new)
