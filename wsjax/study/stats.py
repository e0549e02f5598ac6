"""Statistics over seeds: means, standard errors and paired differences of per-seed rows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def value(row, key: str):
    """``row.key`` of a record, or ``row[key]`` of a plain mapping."""
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


def paired_mean_se(a_rows, b_rows, key: str = "val_acc", scale: float = 100.0):
    """Mean and standard error over seeds of ``scale * (a.key - b.key)``; ``a_rows`` and
    ``b_rows`` are per-seed rows (``wsjax.study.records.SeedRow`` or anything with ``seed``
    and ``key`` attributes, or mappings) matched by their seed."""
    b = {value(r, "seed"): value(r, key) for r in b_rows}
    return mean_se([(value(r, key) - b[value(r, "seed")]) * scale for r in a_rows
                    if value(r, "seed") in b])


def column(rows, key: str, scale: float = 1.0) -> list[float]:
    """``scale * row.key`` for each row."""
    return [value(r, key) * scale for r in rows]
