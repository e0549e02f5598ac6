"""A run's directory: ``config.json``, ``metrics.jsonl`` (one JSON object per line, appended)
and ``results.json``. Plots and reports read these files; they never retrain."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
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
    tmp.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")
    tmp.replace(path)
    return path


class RunDir:
    """The files of one run in ``path`` (created if needed)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, config: dict, may_change: Sequence[str] = ()) -> None:
        """Writes ``config.json``; refuses to resume a run that was started with another config.

        Keys in ``may_change`` (e.g. a round count: more rounds extend the same run) may differ.
        """
        path = self.path / "config.json"
        new = _jsonable(config)
        if path.exists():
            old = json.loads(path.read_text())
            diff = {k for k in set(old) | set(new)
                    if k not in may_change and old.get(k) != new.get(k)}
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with a different config ({sorted(diff)} differ): "
                    f"resume it with the same flags, or choose another --out directory")
        write_json(path, new)

    def log(self, **record) -> None:
        """Appends one record (with a timestamp) to ``metrics.jsonl``."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable({"time": time.time(), **record})) + "\n")

    def write_results(self, results: dict) -> Path:
        return write_json(self.path / "results.json", results)

    def read_results(self) -> dict:
        return json.loads((self.path / "results.json").read_text())


def paired_mean_se(a_rows, b_rows, key: str = "val_acc", scale: float = 100.0):
    """Mean and standard error over seeds of ``scale * (a[key] - b[key])``, rows of per-seed
    records matched by their ``seed``."""
    b = {r["seed"]: r[key] for r in b_rows}
    return mean_se([(r[key] - b[r["seed"]]) * scale for r in a_rows if r["seed"] in b])


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se
