"""Figures of the interventions experiment (``wsjax.study.staged``), from saved records only:
accuracy against compute per arm, and the plasticity diagnostics across stages. Needs
matplotlib, imported lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsjax.study.plots import _band, _pyplot, _save, _se_note
from wsjax.study.records import Run
from wsjax.study.stats import mean_se

# Diagnostics drawn per stage end, with their axis labels.
DIAGNOSTICS = {"dormant": ("dormant units (%)", 100), "dead": ("dead units (%)", 100),
               "srank": ("stable rank of features", 1),
               "effective_rank": ("effective rank of features", 1),
               "distance_from_init": ("||theta - theta0||", 1),
               "grad_ratio_new_old": ("grad norm new / old data (stage start)", 1)}


def _per_seed(rounds, key) -> np.ndarray:
    """(stages, seeds) of a row field."""
    return np.asarray([[getattr(s, key) or 0 for s in r.seeds] for r in rounds], float)


def compute_and_accuracy(rounds) -> dict:
    """Per seed: final and mean-over-stages test accuracy (%), total epochs and examples."""
    acc = _per_seed(rounds, "test_acc") * 100
    return {"final_acc": acc[-1], "mean_acc": acc.mean(axis=0),
            "examples": _per_seed(rounds, "examples").sum(axis=0),
            "epochs": _per_seed(rounds, "epochs").sum(axis=0)}


def plot_interventions(record: Run, out_dir) -> list[Path]:
    """``interventions.png`` (final and mean test accuracy against examples processed, one
    point per arm, +-1 SE both ways) and ``diagnostics.png`` (each diagnostic at every stage's
    end, or start for the gradient ratio, per arm)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, rounds in record.results.items():
        c = compute_and_accuracy(rounds)
        ex, ex_se = mean_se(list(c["examples"] / 1e6))
        for ax, key in zip(axes, ("final_acc", "mean_acc")):
            acc, se = mean_se(list(c[key]))
            ax.errorbar([ex], [acc], xerr=[ex_se], yerr=[se], fmt="o", capsize=3, label=arm)
            ax.annotate(arm, (ex, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    first = next(iter(record.results.values()))[-1].seeds
    axes[0].set_ylabel("test accuracy after the last stage (%)")
    axes[1].set_ylabel("test accuracy, mean over stages (%)")
    for ax in axes:
        ax.set_xlabel("training examples processed, all stages (millions)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{record.title}\n{_se_note(first)}, both ways", fontsize=9)
    paths = [_save(fig, Path(out_dir) / "interventions.png")]

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, (label, scale)) in zip(axes.ravel(), DIAGNOSTICS.items()):
        for arm, rounds in record.results.items():
            at = "start" if key == "grad_ratio_new_old" else "end"
            points = [(r.n, mean_se([v * scale for v in getattr(r, at)[key]]))
                      for r in rounds if key in getattr(r, at)]
            if points:
                n = np.asarray([p[0] for p in points])
                _band(ax, n, np.asarray([p[1][0] for p in points]),
                      np.asarray([p[1][1] for p in points]), label=arm)
        ax.set_xlabel("training examples in the stage")
        ax.set_ylabel(label, fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"{record.title}\nmean ± 1 SE over seeds, measured on a fixed probe set, "
                 f"BatchNorm in evaluation mode", fontsize=9)
    paths.append(_save(fig, Path(out_dir) / "diagnostics.png"))
    return paths
