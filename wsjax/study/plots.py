"""Figures drawn from saved results only (never by retraining): each ``plot_*`` takes a
record of ``wsjax.study.records`` and a folder, and returns the path of the PNG it wrote.
Needs matplotlib, imported lazily so ``import wsjax`` does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsjax.study.records import Cells, Run, StageResult
from wsjax.study.stats import column, mean_se, paired_mean_se


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _finish(fig, ax, record: Run | Cells | str, xlabel: str, ylabel: str, path) -> Path:
    """Labels a one-axes figure, titles it after the run (or the title given) and saves it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(record if isinstance(record, str) else record.title, fontsize=9)
    return _save(fig, path)


def _band(ax, x, mean, se, **kw):
    """A mean line with a +-SE band in the line's colour; returns the line."""
    line, = ax.plot(x, mean, **kw)
    ax.fill_between(x, mean - se, mean + se, alpha=0.2, color=line.get_color())
    return line


def _se_note(rows) -> str:
    """What the error bars of a figure are: mean +- 1 standard error over its seeds."""
    n = len(column(rows, "val_acc")) if rows else 0
    return f"mean ± 1 SE over {n} seed{'' if n == 1 else 's'}"


def _arms(results: dict) -> list[str]:
    return [a for a, r in results.items() if isinstance(r, StageResult)]


def _stat(rows, key, scale=1.0):
    return mean_se(column(rows, key, scale))


def plot_two_phase(record: Run, out_dir) -> Path:
    """Bar chart of the two-phase experiment: validation and test accuracy (mean +- SE over
    seeds, bars from 0, each labelled with its value) and epochs to the stop rule per arm
    (round 2 for warm arms, stacked on their round 1)."""
    plt = _pyplot()
    results = record.results
    arms = _arms(results)
    fig, (ax_acc, ax_ep) = plt.subplots(1, 2, figsize=(11, 4.4))
    width = 0.38
    for j, split in enumerate(("val", "test")):
        stats = [_stat(results[a].seeds, f"{split}_acc", 100) for a in arms]
        x = np.arange(len(arms)) + (j - 0.5) * width
        ax_acc.bar(x, [m for m, _ in stats], width, yerr=[e for _, e in stats], capsize=3,
                   label=split)
        for xi, (m, e) in zip(x, stats):
            ax_acc.text(xi, m + e, f"{m:.1f}", ha="center", va="bottom", fontsize=7)
    ax_acc.set_ylim(0, 100)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title(f"error bars: {_se_note(results[arms[0]].seeds)}", fontsize=8)
    ax_acc.legend(loc="upper right")
    r1 = [_stat(results[a].round1 or [{"epochs": 0}], "epochs")[0] for a in arms]
    r2 = [_stat(results[a].seeds, "epochs") for a in arms]
    ax_ep.bar(arms, r1, color="lightgray", label="round 1 (first part)")
    ax_ep.bar(arms, [m for m, _ in r2], bottom=r1, yerr=[e for _, e in r2], capsize=3,
              label="final round (100%), ± SE")
    ax_ep.set_ylabel("epochs to stop rule")
    ax_ep.legend()
    for ax in (ax_acc, ax_ep):
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=20, ha="right")
    fig.suptitle(record.title)
    return _save(fig, Path(out_dir) / "two_phase.png")


def _history_curve(history, key, start=None):
    """(epochs, mean over seeds, SE) of ``key`` in a stage's per-epoch history, from epoch 0
    when ``start`` (the watch on the starting weights) has ``key``."""
    rows = [h[key] for h in history]
    first = 1
    if start and key in start:
        rows, first = [start[key]] + rows, 0
    v = np.asarray(rows, dtype=float)
    se = v.std(axis=1, ddof=1) / np.sqrt(v.shape[1]) if v.shape[1] > 1 else np.zeros(len(v))
    return np.arange(first, first + len(v)), v.mean(axis=1), se


def plot_curves(record: Run, out_dir) -> Path:
    """Fig 1: train and validation accuracy per epoch, random init on 100% vs warm start
    (round 1 on the first part, then round 2 on 100%, continuing the epoch axis)."""
    plt = _pyplot()
    results = record.results
    # Separate y ranges: on a shared axis the validation gap the figure is about is flattened
    # by the training curves' climb to 100%.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(axes, ("train_acc", "val_acc"), ("train", "validation")):
        for arm in _arms(results):
            r = results[arm]
            if r.history is None:
                continue
            offset, kw = 0, {}
            if r.round1_history is not None:
                e, m, s = _history_curve(r.round1_history, key)
                kw = {"color": _band(ax, e, m * 100, s * 100, ls="--").get_color()}
                offset = len(e)
            e, m, s = _history_curve(r.history, key)
            _band(ax, e + offset, m * 100, s * 100, label=arm, **kw)
        ax.set_xlabel("epoch (warm arms: round 1 dashed, then round 2)")
        ax.set_title(f"{label} accuracy")
        ax.set_ylabel(f"{label} accuracy (%)")
    axes[1].legend(title=f"bands: {_se_note(results[_arms(results)[0]].seeds)}",
                   title_fontsize=7)
    fig.suptitle(record.title)
    return _save(fig, Path(out_dir) / "curves.png")


def _cell_gap(results: dict, arm: str = "warm_start"):
    """Mean +- SE over seeds of random init minus ``arm`` validation accuracy (points)."""
    return paired_mean_se(results["random_init"].seeds, results[arm].seeds)


def plot_cells(summary: Cells, out_dir) -> Path:
    """A multi-cell two-phase experiment: validation accuracy of every arm in every cell."""
    plt = _pyplot()
    cells = summary.cells
    names = list(cells)
    arms = _arms(next(iter(cells.values())).results)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        stats = [_stat(cells[c].results[arm].seeds, "val_acc", 100) for c in names]
        ax.bar(np.arange(len(names)) + (j - (len(arms) - 1) / 2) * width,
               [m for m, _ in stats], width, yerr=[e for _, e in stats], capsize=2, label=arm)
    lo = min(_stat(cells[c].results[a].seeds, "val_acc", 100)[0]
             for c in names for a in arms)
    ax.set_ylim(max(0, lo - 5), None)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    note = _se_note(cells[names[0]].results[arms[0]].seeds)
    return _finish(fig, ax, summary, "", f"validation accuracy (%), {note}",
                   Path(out_dir) / "cells.png")


def plot_regularization(summary: Cells, out_dir) -> Path:
    """The regularization table as a figure: the warm-start gap (random init minus warm
    start, validation points, mean +- paired SE) per regularizer at each strength run (a
    categorical axis: a single strength is a point, not a log scale), with the baseline's."""
    plt = _pyplot()
    cells = summary.cells
    fig, ax = plt.subplots(figsize=(7, 4))
    base = _cell_gap(cells["none"].results)
    ax.axhline(base[0], color="k", ls="--", label=f"no regularizer ({base[0]:.2f} ± "
               f"{base[1]:.2f})")
    # Zero (no gap) stays on the axis: a gap is read against it.
    ax.axhline(0.0, color="grey", lw=0.8)
    kinds = sorted({c.rsplit("_", 1)[0] for c in cells if c != "none"})
    strengths = sorted({float(c.rsplit("_", 1)[1]) for c in cells if c != "none"})
    offset = 0.8 / max(len(kinds), 1)
    for k, kind in enumerate(kinds):
        names = [c for c in cells if c.rsplit("_", 1)[0] == kind]
        xs = [strengths.index(float(c.rsplit("_", 1)[1])) + (k - (len(kinds) - 1) / 2) * offset
              for c in names]
        st = [_cell_gap(cells[c].results) for c in names]
        ax.errorbar(xs, [m for m, _ in st], yerr=[e for _, e in st], marker="o", capsize=3,
                    ls="", label=kind)
    ax.set_xticks(range(len(strengths)))
    ax.set_xticklabels([f"{v:g}" for v in strengths])
    note = _se_note(cells["none"].results["random_init"].seeds).replace("SE", "paired SE")
    return _finish(fig, ax, summary, "strength",
                   f"random init - warm start, val acc (points)\n{note}",
                   Path(out_dir) / "regularization.png")


def plot_sweep(summary: Cells, out_dir) -> Path:
    """Fig 3: validation accuracy vs wall time to the stop rule (warm start: both rounds),
    one point per (lr, batch) cell and arm (mean +- SE both ways), joined per cell."""
    import re

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    note = ""
    for name, cell in summary.cells.items():
        pts, errs = {}, {}
        for arm in ("random_init", "warm_start"):
            rows = cell.results[arm].seeds
            key = "total_seconds" if rows[0].total_seconds is not None else "seconds"
            (tx, ex), (ty, ey) = _stat(rows, key), _stat(rows, "val_acc", 100)
            pts[arm], errs[arm] = (tx, ty), (ex, ey)
            note = _se_note(rows)
        line, = ax.plot(*zip(*pts.values()), ls=":", lw=1)
        for (arm, marker), (x, y) in zip((("random_init", "o"), ("warm_start", "^")),
                                         pts.values()):
            ax.errorbar(x, y, xerr=errs[arm][0], yerr=errs[arm][1], marker=marker,
                        color=line.get_color(), capsize=2,
                        label=name if arm == "random_init" else None)
    ax.set_xscale("log")
    # One cell's lr and batch in the run title would name the whole grid after it.
    title = re.sub(r" lr \S+ batch \d+", "", summary.title)
    return _finish(fig, ax, f"{title}: lr x batch grid ({note})",
                   "seconds to stop rule (o random init, ^ warm start)",
                   "validation accuracy (%)", Path(out_dir) / "sweep.png")


def plot_grid(record: Run, out_dir) -> Path:
    """Fig 8: heat maps over (shrink, noise) of validation accuracy and of epochs over both
    rounds (epochs, not seconds: seconds on a shared machine are noise), each cell labelled
    mean +- SE in a colour readable on its background."""
    plt = _pyplot()
    results = record.results
    cells = {(r.arm.shrink, r.arm.noise_scale): r for r in results.values()
             if r.arm is not None}
    shrinks = sorted({s for s, _ in cells})
    noises = sorted({n for _, n in cells})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label, scale in zip(axes, ("val_acc", "total_epochs"),
                                     ("validation accuracy (%)", "epochs, both rounds"),
                                     (100, 1)):
        grid = np.full((len(shrinks), len(noises)), np.nan)
        spread = np.full_like(grid, np.nan)
        for (s, n), r in cells.items():
            grid[shrinks.index(s), noises.index(n)], spread[shrinks.index(s), noises.index(n)] \
                = _stat(r.seeds, key, scale)
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        for i in range(len(shrinks)):
            for j in range(len(noises)):
                # Dark text on the light (yellow) end of viridis, white on the dark end.
                light = np.mean(im.cmap(im.norm(grid[i, j]))[:3]) > 0.5
                ax.text(j, i, f"{grid[i, j]:.1f}\n± {spread[i, j]:.1f}", ha="center",
                        va="center", color="k" if light else "w", fontsize=8)
        ax.set_xticks(range(len(noises)))
        ax.set_xticklabels([f"{n:g}" for n in noises])
        ax.set_yticks(range(len(shrinks)))
        ax.set_yticklabels([f"{s:g}" for s in shrinks])
        ax.set_xlabel("noise")
        ax.set_ylabel("shrink")
        fig.colorbar(im, ax=ax)
        m, e = _stat(results["random_init"].seeds, key if key != "total_epochs" else "epochs",
                     scale)
        ax.set_title(f"{label}; random init {m:.1f} ± {e:.1f}", fontsize=9)
    fig.suptitle(f"{record.title}; cells: {_se_note(results['random_init'].seeds)}")
    return _save(fig, Path(out_dir) / "sp_grid.png")


def plot_checkpoint_age(record: Run, out_dir) -> Path:
    """Fig 4: validation accuracy of round 2 warm-started from round 1's epoch k, vs k."""
    plt = _pyplot()
    results = record.results
    rows = sorted((r.round1_epoch, _stat(r.seeds, "val_acc", 100))
                  for r in results.values() if r.round1_epoch is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([k for k, _ in rows], [m for _, (m, _) in rows], yerr=[e for _, (_, e) in rows],
                marker="o", capsize=3, label="warm start from round-1 epoch k")
    m, e = _stat(results["random_init"].seeds, "val_acc", 100)
    ax.axhline(m, color="k", ls="--", label=f"random init ({m:.2f} ± {e:.2f})")
    note = _se_note(results["random_init"].seeds)
    return _finish(fig, ax, record, "round-1 epoch k of the warm-start checkpoint",
                   f"validation accuracy after round 2 (%)\n{note}",
                   Path(out_dir) / "checkpoint_age.png")


def plot_grad_norms(record: Run, out_dir) -> Path:
    """Fig 5: mean minibatch-gradient norm on old and new data per round-2 epoch, per arm."""
    plt = _pyplot()
    results = record.results
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in zip(axes, ("grad_old", "grad_new"), ("old data", "new data")):
        for arm, r in results.items():
            start = np.mean(r.start[key])
            e, m, _ = _history_curve(r.history, key)
            ax.plot(np.concatenate([[0], e]), np.concatenate([[start], m]), label=arm)
        ax.set_xlabel("round-2 epoch (0: before training)")
        ax.set_title(f"gradient norm on {label}")
        ax.set_yscale("log")
    axes[0].set_ylabel("minibatch gradient norm (mean over seeds; no error bars)")
    axes[1].legend()
    fig.suptitle(record.title)
    return _save(fig, Path(out_dir) / "grad_norms.png")


def plot_shrink_only(record: Run, out_dir) -> Path:
    """Fig 6: validation accuracy of trained networks against the shrink factor."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in record.results.items():
        acc = np.asarray(r.val_acc) * 100
        ax.errorbar(r.shrinks, acc.mean(1), yerr=acc.std(1), marker="o", capsize=2,
                    label=name)
    return _finish(fig, ax, record, "shrink (theta <- shrink * theta)",
                   "validation accuracy (%), mean ± 1 std over seeds",
                   Path(out_dir) / "shrink_only.png")


def plot_online(record: Run, out_dir) -> Path:
    """Fig 2 / Fig 7: validation accuracy and train seconds per round vs examples seen."""
    plt = _pyplot()
    fig, (ax_acc, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, rounds in record.results.items():
        n = [r.n for r in rounds]
        for ax, key, scale in ((ax_acc, "val_acc", 100), (ax_t, "seconds", 1)):
            st = [_stat(r.seeds, key, scale) for r in rounds]
            _band(ax, n, np.asarray([s[0] for s in st]), np.asarray([s[1] for s in st]),
                  label=arm)
    first = next(iter(record.results.values()))[0].seeds
    ax_acc.set_ylabel(f"validation accuracy (%), {_se_note(first)}")
    ax_t.set_ylabel("train seconds this round (± SE)")
    for ax in (ax_acc, ax_t):
        ax.set_xlabel("training examples")
    ax_acc.legend()
    fig.suptitle(record.title)
    return _save(fig, Path(out_dir) / "online.png")


def plot_transfer(record: Run, out_dir) -> Path:
    """Fig 9: target validation accuracy vs the fraction of target data, per arm."""
    plt = _pyplot()
    fr = record.results.fractions
    keys = sorted(fr, key=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in fr[keys[0]].arms:
        st = [_stat(fr[k].arms[arm], "val_acc", 100) for k in keys]
        ax.errorbar([float(k) for k in keys], [m for m, _ in st], yerr=[e for _, e in st],
                    marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    note = _se_note(fr[keys[0]].arms[next(iter(fr[keys[0]].arms))])
    return _finish(fig, ax, record, f"fraction of target data (source: {record.results.source})",
                   f"target validation accuracy (%), {note}", Path(out_dir) / "transfer.png")


def plot_bn_stats(summary: Cells, out_dir) -> Path:
    """Claims 3-7: per setting, train and validation accuracy (%) and BatchNorm mismatch per
    round-2 epoch for each BN mode (and random init), mean +- SE bands over seeds."""
    plt = _pyplot()
    cells = summary.cells
    keys = {"train_acc": "running train accuracy (%)", "val_acc": "validation accuracy (%)",
            "bn_mean_gap": "BN mean mismatch (std units)"}
    scale = {"train_acc": 100, "val_acc": 100, "bn_mean_gap": 1}
    fig, axes = plt.subplots(len(keys), len(cells), figsize=(4.5 * len(cells), 10),
                             squeeze=False)
    note = ""
    for j, (name, cell) in enumerate(cells.items()):
        for arm, r in cell.results.items():
            if r.history is None:
                continue
            note = _se_note(r.seeds)
            for i, key in enumerate(keys):
                if key in r.history[0]:
                    e, m, se = _history_curve(r.history, key, r.start)
                    _band(axes[i, j], e, m * scale[key], se * scale[key],
                          label=arm.replace("warm_start_", ""))
        axes[0, j].set_title(name)
        for i, label in enumerate(keys.values()):
            axes[i, j].set_ylabel(label)
        axes[-1, j].set_yscale("log")
        axes[-1, j].set_xlabel("epoch of the final round (0: its starting weights)")
    axes[0, 0].legend(fontsize=7, title=f"bands: {note}", title_fontsize=7)
    # Titles of runs recorded before describe() said "1 seed" read "1 seeds".
    fig.suptitle(summary.title.replace(" 1 seeds", " 1 seed"), fontsize=9)
    return _save(fig, Path(out_dir) / "bn_stats.png")
