"""Statistics over seeds: means, standard errors and paired differences of per-seed rows.

A seed whose training diverged (stop reason ``'diverged'``) keeps its last finite state, a
blown-up network: it is left out of every mean here, and the tables say how many were.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np


def value(row, key: str):
    """``row.key`` of a record, or ``row[key]`` of a plain mapping (None when it has none)."""
    return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)


def counted(row) -> bool:
    """Whether a seed's row counts in means: not when its training diverged."""
    return value(row, "stop_reason") != "diverged"


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value; NaN for none)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


def paired_differences(a_rows, b_rows, key: str = "val_acc", scale: float = 100.0
                       ) -> list[float]:
    """``scale * (a.key - b.key)`` for each seed that both per-seed row lists count
    (``wsjax.study.records.SeedRow`` or anything with ``seed`` and ``key``, or mappings)."""
    b = {value(r, "seed"): value(r, key) for r in b_rows if counted(r)}
    return [(value(r, key) - b[value(r, "seed")]) * scale for r in a_rows
            if counted(r) and value(r, "seed") in b]


def paired_mean_se(a_rows, b_rows, key: str = "val_acc", scale: float = 100.0):
    """Mean and standard error over seeds of ``paired_differences``."""
    return mean_se(paired_differences(a_rows, b_rows, key, scale))


def column(rows, key: str, scale: float = 1.0) -> list[float]:
    """``scale * row.key`` for each row that counts and has a value."""
    return [value(r, key) * scale for r in rows if counted(r) and value(r, key) is not None]


def stop_counts(*row_lists) -> str:
    """How the seeds behind an effect stopped, e.g. ``'threshold 9, max_epochs 1'`` (every
    row of every list; '-' for rows without a stop reason)."""
    reasons = collections.Counter(value(r, "stop_reason") for rows in row_lists for r in rows)
    reasons.pop(None, None)
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-"

