"""The figure of ``wsjax budget``: test accuracy against parameters for every student (alone,
distilled, warm-started) and the teacher; beside it, the running train accuracy per epoch of
the warm-started students against those trained from scratch. Needs matplotlib (lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsjax.study.plots import _pyplot, _save
from wsjax.study.records import Run
from wsjax.study.stats import column, mean_se

_ARMS = {"alone": ("o", "none"), "distilled": ("o", None), "warm_sp": ("s", "none")}


def _mean_curve(curve) -> np.ndarray:
    return np.array([np.mean([v for v in epoch if v is not None]) for epoch in curve]) * 100


def plot_budget(record: Run, out_dir) -> Path:
    """Writes ``budget.png`` in ``out_dir`` from a ``wsjax budget`` record."""
    plt = _pyplot()
    res = record.results
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    m, se = mean_se(column(res.teacher_seeds, "test_acc", 100))
    ax.errorbar([res.teacher_params], [m], [se], marker="*", ms=12, color="k", ls="none",
                label=f"{res.teacher} teacher (full)")
    for i, (name, st) in enumerate(res.students.items()):
        color = colors[i % len(colors)]
        for arm, (marker, face) in _ARMS.items():
            m, se = mean_se(column(st.arms[arm], "test_acc", 100))
            ax.errorbar([st.params], [m], [se], marker=marker, color=color, ls="none",
                        mfc=face or color, label=f"{name} {arm}")
        epochs = np.arange(1, len(st.curves["alone"]) + 1)
        ax2.plot(epochs, _mean_curve(st.curves["alone"]), color=color, ls="--",
                 label=f"{name} scratch")
        ax2.plot(epochs, _mean_curve(st.curves["warm_sp"]), color=color,
                 label=f"{name} warm_sp")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%), mean +- s.e. over seeds")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(record.title, fontsize=9)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("running train accuracy (%)")
    ax2.legend(fontsize=6)
    ax2.set_title("warm start from the shrink-perturbed teacher vs scratch", fontsize=9)
    return _save(fig, Path(out_dir) / "budget.png")
