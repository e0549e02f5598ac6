"""Figures drawn from saved results only (never by retraining). Needs matplotlib, imported
lazily so ``import wsjax`` does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsjax.runlog import mean_se


def plot_two_phase(results: dict, path, title: str = "") -> Path:
    """Bar chart of the two-phase experiment: validation and test accuracy (mean +- SE over
    seeds) and epochs to the stop rule per arm (round 2 for warm arms, stacked on round 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results)
    fig, (ax_acc, ax_ep) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for j, split in enumerate(("val", "test")):
        stats = [mean_se([s[f"{split}_acc"] * 100 for s in results[a]["seeds"]]) for a in arms]
        ax_acc.bar(np.arange(len(arms)) + (j - 0.5) * width, [m for m, _ in stats], width,
                   yerr=[e for _, e in stats], capsize=3, label=split)
    lo = min(s[f"{k}_acc"] for a in arms for s in results[a]["seeds"] for k in ("val", "test"))
    ax_acc.set_ylim(max(0, lo * 100 - 5), None)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    r1 = [mean_se([s["epochs"] for s in results[a].get("round1", [])] or [0])[0] for a in arms]
    r2 = [mean_se([s["epochs"] for s in results[a]["seeds"]]) for a in arms]
    ax_ep.bar(arms, r1, color="lightgray", label="round 1 (50%)")
    ax_ep.bar(arms, [m for m, _ in r2], bottom=r1, yerr=[e for _, e in r2], capsize=3,
              label="final round (100%)")
    ax_ep.set_ylabel("epochs to stop rule")
    ax_ep.legend()
    for ax in (ax_acc, ax_ep):
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=20, ha="right")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
