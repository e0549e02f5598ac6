"""The claims table: a verdict per claim of the study, computed from saved results only.

Reads every ``<root>/<run>/results.json`` (default root ``experiments/results``) through
``wsjax.study.records``, recognizes each run by the script that wrote it, and prints for every
claim the effect size (mean over paired seeds ± standard error, and n), the evidence it comes
from and a verdict from the 95% Student-t interval of the effect (n - 1 degrees of freedom:
4.30 SE at n = 3, 2.78 at n = 5), each claim tested in its stated direction (``TESTS``):

- ``greater`` / ``less``: *confirmed* when the interval lies on the claimed side of zero,
  *refuted* when it lies on the other side, *inconclusive* otherwise;
- ``non_inferior`` (a gap is closed): the effect is how much worse the arm is than random
  init; *confirmed* when the interval's upper end is below the tolerance (doing better than
  random init supports the claim), *refuted* when its lower end is above it;
- ``equivalent`` (no effect): *confirmed* when the interval lies within ± the tolerance,
  *refuted* when it lies wholly outside.

Runs in ``--quick`` mode or on synthetic data, and single seeds, get no verdict. The table
says how many claims it tests at once (no correction for multiplicity is made), and ``not
run`` with the command that would make the evidence when no run of a script is there. Seeds
that diverged are left out (``wsjax.study.stats``).

Runs of ``bn_stats`` made one seed per process (``--seed-offset k``) are pooled by cell.

    wsjax claims
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wsjax.experiments.common import main_guard
from wsjax.experiments.flags import HelpFormatter
from wsjax.experiments.plasticity_claims import interventions_claims
from wsjax.study import records
from wsjax.study.stats import mean_se, paired_differences, stop_counts

# What to run when a script's evidence is missing.
COMMANDS = {
    "table1": "table1 --models logreg mlp --seeds 5",
    "curves": "curves (Fig 1)",
    "online": "online --model mlp --shrink 0.6 --seeds 5 (Fig 2; --select margin)",
    "sweep": "sweep (Fig 3)",
    "checkpoint_age": "checkpoint_age (Fig 4)",
    "regularization": "regularization",
    "grad_norms": "grad_norms (Fig 5)",
    "shrink_only": "shrink_only (Fig 6)",
    "sp_grid": "sp_grid (Fig 8)",
    "transfer": "transfer (Fig 9: needs CIFAR-100 / SVHN)",
    "perturb_only": "perturb_only",
    "sp_every_step": "sp_every_step",
    "bn_stats": "bn_stats (claims 3, 5, 6, 7; ResNet)",
    "interventions": "interventions --seeds 5 (DASH, L2 Init, ReDo, ... under staged chunks)",
}


# "No effect" tolerances: validation accuracy within half a point counts as the gap closed;
# training accuracy within a point counts as a similar fit.
CLOSED_PP = 0.5
SIMILAR_FIT_PP = 1.0


TESTS = ("greater", "less", "non_inferior", "equivalent")
LEVEL = 0.95  # two-sided confidence of the Student-t interval


def interval(effect: tuple[float, float], n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Student-t interval (``level``, n - 1 degrees of freedom) of a mean ± SE."""
    from scipy import stats  # a dependency of jax; imported here to keep imports light

    m, se = effect
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return m - half, m + half


def verdict(effect: tuple[float, float], n: int, test: str = "greater", tol: float = 0.0,
            scale: str | None = None) -> str:
    """The verdict on an effect (mean, SE over ``n`` paired seeds) for a claim that it is
    ``test`` (``TESTS``; ``tol`` is the tolerance of ``non_inferior`` and ``equivalent``).
    ``scale`` names why the evidence decides nothing (e.g. ``'quick run'``)."""
    if test not in TESTS:
        raise ValueError(f"test={test!r} must be one of {TESTS}")
    if scale:
        return f"no verdict ({scale})"
    if n < 2 or not np.isfinite(effect[0]):
        return f"no verdict ({n} seed{'s' if n != 1 else ''})"
    lo, hi = interval(effect, n)
    if test == "greater":
        return "confirmed" if lo > 0 else "refuted" if hi < 0 else "inconclusive"
    if test == "less":
        return "confirmed" if hi < 0 else "refuted" if lo > 0 else "inconclusive"
    if test == "non_inferior":
        return (f"confirmed (< {tol:g})" if hi < tol else
                f"refuted (> {tol:g})" if lo > tol else "inconclusive")
    return (f"confirmed (within ±{tol:g})" if -tol < lo and hi < tol else
            f"refuted (beyond ±{tol:g})" if lo > tol or hi < -tol else "inconclusive")


def small_scale(*runs) -> str | None:
    """Why the evidence of ``runs`` (records; a sweep's cells count) gets no verdict (a quick
    run, synthetic data), or None."""
    for record in runs:
        config = getattr(record, "config", None) or {}
        if config.get("quick"):
            return "quick run"
        if str(config.get("dataset", "")).startswith("synthetic"):
            return "synthetic data"
        cells = small_scale(*getattr(record, "cells", {}).values())
        if cells:
            return cells
    return None


def fmt(effect, unit="pp") -> str:
    return f"{effect[0]:+.2f} ± {effect[1]:.2f} {unit}"


def _records(root: Path) -> list[tuple[str, records.Record]]:
    """``(run name, record)`` for every run directly under ``root``, sorted by name."""
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}: name the folder whose run folders hold "
                                f"results.json")
    return [(path.parent.name, record)
            for path, record in records.load_all(sorted(root.glob("*/results.json")), warn)]


def warn(text: str) -> None:
    """Prints a warning on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr)


def _per_seed(rows, values, key):
    """Per-seed rows ``{'seed', key}`` from per-replica ``values`` (in ``rows``' order)."""
    return [{"seed": r.seed, key: float(v)} for r, v in zip(rows, values)]


def protocol_notes(*runs) -> str:
    """How the evidence of ``runs`` (records; a sweep's cells count) departs from the official
    protocol in ways the table must show: a subset of the training images, other layer widths,
    another init, activation, dropout or augmentation, an epoch cap below the official 350, the
    "stops improving" fallback beside the 99% rule, one split shared by every seed (every run
    written before per-seed splits), one plain round 1 (two-phase) or round 0 (online) shared
    by the shrink-perturb arms."""
    return "; ".join(dict.fromkeys(_deviations(runs)))


def _deviations(runs):
    """The notes of ``protocol_notes``, one per run and deviation (repeats included)."""
    for record in runs:
        # Read as this wsjax reads a saved config: what older runs left unset is filled in
        # with what it meant then (one split, shared round 1, the 3-epoch plateau rule).
        config = records.migrate_config(dict(getattr(record, "config", None) or {}))
        if config.get("train_subset"):
            yield f"{config['train_subset']:,}-image subset"
        if config.get("widths"):
            yield f"widths {config['widths']}"
        # The toolkit's model and training options, where a run changed them.
        if config.get("init", "torch") != "torch":
            yield f"{config['init']} init"
        if config.get("activation"):
            yield f"{config['activation']} activation"
        for name in ("dropout", "dropblock"):
            if config.get(name):
                yield f"{name} {config[name]:g}"
        if config.get("augment"):
            yield "augmented (" + ", ".join(config["augment"]) + ")"
        if config.get("label_smoothing"):
            yield f"label smoothing {config['label_smoothing']:g}"
        if config.get("max_epochs", 350) < 350:
            yield f"{config['max_epochs']}-epoch cap"
        if config.get("plateau_window"):
            yield (f"plateau fallback: {config['plateau_window']}-epoch train acc std < "
                   f"{config.get('plateau_std', 0.002):g}, from epoch "
                   f"{config.get('plateau_min_epochs', 0)}")
        if "split_seed" in config and config.get("fixed_split", True):
            yield "one split for all seeds"
        script = getattr(record, "script", "")
        two_phase = script not in ("online", "transfer", "shrink_only")
        if two_phase and config.get("shrink") and config.get("shared_round1", True):
            yield "S&P arms share round 1"
        if script == "online" and config.get("shrink") and config.get("shared_round0", True):
            yield "S&P arms share round 0"
        yield from _deviations(getattr(record, "cells", {}).values())


class Table:
    """Accumulates claim rows; ``scale`` (see ``small_scale``) marks the evidence of the run
    being read as too small for a verdict, ``notes`` (see ``protocol_notes``) how it departs
    from the official protocol."""

    def __init__(self):
        self.rows = []
        self.scale = None
        self.notes = ""

    def add(self, claim, evidence, effect, n, test="greater", unit="pp", tol=0.0, stops="-"):
        """A row with ``effect`` = (mean, SE) over ``n`` seeds, claimed to be ``test``;
        ``stops``: how those seeds stopped (``stop_counts``)."""
        if self.notes:
            evidence = f"{evidence} ({self.notes})"
        self.rows.append({"claim": claim, "evidence": evidence, "effect": fmt(effect, unit),
                          "n": n, "stops": stops,
                          "verdict": verdict(effect, n, test, tol, self.scale)})

    def missing(self, claim, evidence, command):
        """A row for a claim whose evidence was not run, with the command that makes it."""
        self.rows.append({"claim": claim, "evidence": evidence, "effect": "-", "n": 0,
                          "stops": "-", "verdict": f"not run: {command}"})

    def mean(self, claim, evidence, values, **kw):
        """The mean ± SE of per-seed ``values``."""
        self.add(claim, evidence, mean_se(values), len(values), **kw)

    def paired(self, claim, evidence, a_rows, b_rows, key="val_acc", scale=100.0, **kw):
        """``scale * (a - b)`` of ``key`` over the seeds both per-seed row lists have."""
        differences = paired_differences(a_rows, b_rows, key, scale)
        self.add(claim, evidence, mean_se(differences), len(differences),
                 stops=stop_counts(a_rows, b_rows), **kw)

    def gap(self, claim, evidence, res, a="random_init", b="warm_start", test="greater",
            tol=CLOSED_PP):
        """``a - b`` validation accuracy (pp), paired by seed."""
        self.paired(claim, evidence, res[a].seeds, res[b].seeds, test=test, tol=tol)


def _table1(t: Table, name: str, cells: list[tuple[str, records.Run]]):
    # Cells may come from different runs (a cell re-run alone): each carries its own notes.
    for cell, rec in cells:
        t.scale, t.notes = small_scale(rec), protocol_notes(rec)
        _gap_and_shrink_perturb(t, f"Table 1 {cell}", rec.results)
    for cell, rec in cells:
        t.scale, t.notes = small_scale(rec), protocol_notes(rec)
        _compute(t, f"Table 1 {cell}", rec)


def _gap_and_shrink_perturb(t: Table, evidence: str, res: dict):
    """The two-phase rows: the gap, and for each shrink-perturb arm (``--shrink``) whether it
    narrows the gap and whether it closes it."""
    t.gap("Warm-started models generalize worse (random init - warm start, val acc)", evidence,
          res)
    for arm in [a for a in res if a.startswith("sp_")]:
        t.gap(f"Shrink-perturb narrows the gap ({arm} - warm start)", evidence, res, arm)
        t.gap(f"... and closes it (random - {arm}; at most {CLOSED_PP:g} = closed)", evidence,
              res, b=arm, test="non_inferior")


def _compute(t: Table, evidence: str, rec: records.Run):
    """Warm start against random init in passes over the fitted split (epochs x share of the
    data): unlike seconds on a shared machine, it does not depend on what else was running."""
    res, frac = rec.results, rec.config["first_fraction"]
    r1 = {r.seed: r.epochs for r in res["warm_start"].round1}
    fresh = [{"seed": r.seed, "p": r.epochs} for r in res["random_init"].seeds]
    final = [{"seed": r.seed, "p": r.epochs} for r in res["warm_start"].seeds]
    both = [{"seed": r.seed, "p": r.epochs + frac * r1[r.seed]} for r in res["warm_start"].seeds]
    t.paired("Warm-starting saves compute (random init - warm start, final round)",
             evidence, fresh, final, "p", 1.0, unit="passes")
    t.paired("... even counting round 1 (random init - warm start, both rounds)",
             evidence, fresh, both, "p", 1.0, unit="passes")


def _label_noise(t: Table, name: str, rec: records.Run):
    res, config = rec.results, rec.config
    pct = f"{config['label_noise'] * 100:g}%"
    t.gap(f"Warm start generalizes worse with {pct} noisy labels (random - warm)", name, res)
    for arm in [a for a in res if a.startswith("sp_")]:
        t.gap(f"Shrink-perturb helps with noisy labels ({arm} - warm)", name, res, arm)
        t.gap(f"... and closes the gap (random - {arm}; at most {CLOSED_PP:g} = closed)", name,
              res, b=arm, test="non_inferior")


def _two_phase(t: Table, name: str, rec: records.Run):
    res, config = rec.results, rec.config
    if config.get("label_noise"):
        _label_noise(t, name, rec)
    else:
        _gap_and_shrink_perturb(t, name, res)
    if res["warm_start"].round1:
        _compute(t, name, rec)


def _shrink_only(t: Table, name: str, rec: records.Run):
    for model in sorted(rec.results, key=lambda n: not n.endswith("nobias")):
        r = rec.results[model]
        acc, shrinks = np.asarray(r.val_acc) * 100, r.shrinks
        i = shrinks.index(0.5) if 0.5 in shrinks else len(shrinks) // 2
        nobias = model.endswith("nobias")
        text = (f"Shrinking (x0.5) leaves a bias-free ReLU net's accuracy alone ({model})"
                if nobias else f"... but costs a net with biases accuracy ({model})"
                if not model.startswith("resnet") else
                f"Shrinking (x0.5) costs a BatchNorm ResNet accuracy ({model}; its running "
                f"statistics do not shrink)")
        t.mean(f"{text}: acc(1) - acc(0.5)", f"Fig 6 {name}", acc[-1] - acc[i],
               test="equivalent" if nobias else "greater", tol=0.1, stops=stop_counts(r.seeds))


def _online(t: Table, name: str, rec: records.Run):
    res = rec.results
    select = rec.config.get("select", "order")
    label = "online (data arrive in chunks)" if select == "order" else f"active selection ({select})"
    last = lambda arm: res[arm][-1].seeds
    at = f"{name}, n={res['warm_start'][-1].n}"
    if "random_init" in res:
        t.paired(f"Warm start generalizes worse, {label} (last round, random - warm)", at,
                 last("random_init"), last("warm_start"))
    for arm in [a for a in res if a.startswith("sp_")]:
        t.paired(f"Shrink-perturb narrows the gap, {label} (last round, {arm} - warm)", at,
                 last(arm), last("warm_start"))
        if "random_init" not in res:
            continue
        t.paired(f"... and closes it ({label}, last round, random - {arm}; at most "
                 f"{CLOSED_PP:g} = closed)", at, last("random_init"), last(arm),
                 test="non_inferior", tol=CLOSED_PP)
        # Examples processed over all rounds (epochs x training-set size), in millions.
        total = lambda a: [{"seed": s.seed, "t": sum(r.seeds[i].epochs * r.n
                                                     for r in res[a]) / 1e6}
                           for i, s in enumerate(res[a][-1].seeds)]
        t.paired(f"... with less training than random init ({label}, random - {arm})", at,
                 total("random_init"), total(arm), "t", 1.0, unit="M examples")


def _curves(t: Table, name: str, rec: records.Run):
    res = rec.results
    t.gap("Warm-started models generalize worse (Fig 1, fixed epoch budget, random - warm)",
          name, res)
    # The running train accuracy of the last 5 epochs: the last epoch's train loss alone is
    # near 0 and spiky (Adam), so a ratio of losses says nothing.
    fit = {a: 100 * np.nanmean(np.array([h["train_acc"] for h in res[a].history[-5:]],
                                        dtype=float), axis=0)  # None (diverged) -> NaN
           for a in ("random_init", "warm_start")}
    t.mean("... with a similar fit of the training data (warm - random, train acc of the last "
           "5 epochs)", name, fit["warm_start"] - fit["random_init"], test="equivalent",
           tol=SIMILAR_FIT_PP)


def _checkpoint_age(t: Table, name: str, rec: records.Run):
    res = rec.results
    ages = sorted((r.round1_epoch, a) for a, r in res.items() if a.startswith("from_epoch"))
    for k, arm in ages[:1] + ages[-1:]:
        t.gap(f"A little pretraining already hurts (random - warm from round-1 epoch {k})",
              name, res, b=arm)
    # Single snapshots are noisy: the paired gap averaged over every snapshot after the first.
    later = [arm for _, arm in ages[1:]]
    if later:
        pooled = [{"seed": r.seed, "val_acc": np.mean([res[a].seeds[i].val_acc
                                                       for a in later])}
                  for i, r in enumerate(res[later[0]].seeds)]
        t.paired(f"... from round-1 epoch {ages[1][0]} on (random - warm, mean over those "
                 f"{len(later)} checkpoints)", name, res["random_init"].seeds, pooled)


def _grad_norms(t: Table, name: str, rec: records.Run):
    res = rec.results

    def ratio(arm):  # old / new gradient norm at the start of round 2, per seed
        s = res[arm].start
        return _per_seed(res[arm].seeds, np.asarray(s["grad_old"]) / np.asarray(s["grad_new"]),
                         "r")

    warm = ratio("warm_start")
    t.mean("Warm start: smaller gradients on old than on new data (1 - old/new norm, start of "
           "round 2)", name, [1 - r["r"] for r in warm], unit="")
    sp = sorted((a for a in res if a.startswith("sp_")), key=lambda a: float(a[3:]))
    if sp:
        t.paired(f"Shrink-perturb balances them ({sp[0]} - warm, old/new norm ratio)", name,
                 ratio(sp[0]), warm, "r", 1.0, unit="")


def _sp_grid(t: Table, name: str, rec: records.Run):
    res = rec.results
    arms = {(r.arm.shrink, r.arm.noise_scale): a for a, r in res.items() if r.arm is not None}
    noises = sorted({p for _, p in arms if p > 0})
    p = 0.01 if 0.01 in noises else (noises or [None])[0]  # the paper's sigma when it was run
    for s in sorted({s for s, _ in arms if s < 1}):
        if (s, 0.0) in arms and (s, p) in arms:
            t.gap(f"Perturbing after shrinking helps accuracy (shrink {s:g}: noise {p:g} - none)",
                  name, res, arms[(s, p)], arms[(s, 0.0)])
            t.paired(f"... and time (shrink {s:g}: final-round epochs, none - noise {p:g})",
                     name, res[arms[(s, 0.0)]].seeds, res[arms[(s, p)]].seeds, "epochs",
                     1.0, unit="epochs")
    if arms:
        best = max(arms.values(), key=lambda a: np.mean([r.val_acc for r in res[a].seeds]))
        t.gap(f"Shrink-perturb closes the gap (random init - best cell {best}; at most "
              f"{CLOSED_PP:g} = closed)", name, res, "random_init", best, test="non_inferior")
        t.paired(f"... in less time than random init (random - {best}, final-round epochs)",
                 name, res["random_init"].seeds, res[best].seeds, "epochs", 1.0,
                 unit="epochs")


def _perturb_only(t: Table, name: str, rec: records.Run):
    res = rec.results
    for arm in [a for a in res if a.startswith("sp_1")]:
        t.gap(f"Perturbing alone does not close the gap (random - {arm})", name, res, b=arm)


def _cells(claim: str) -> Callable:
    def each(t: Table, name: str, rec: records.Cells):
        for cell, c in rec.cells.items():
            t.gap(claim, f"{name} {cell}", c.results)
    return each


@dataclasses.dataclass
class _Pooled:
    """An arm of a BN cell pooled over runs: its rows, the train accuracy of its first
    epoch and the watched values on its starting weights, seed by seed."""

    seeds: list = dataclasses.field(default_factory=list)
    epoch1_train_acc: list = dataclasses.field(default_factory=list)
    start: dict = dataclasses.field(default_factory=dict)


def _bn_stats(t: Table, runs: list[tuple[str, records.Cells]]):
    """Claims 3, 5, 6, 7, pooled over the runs (seeds) of each cell."""
    pooled: dict[str, dict[str, _Pooled]] = {}
    for _, rec in runs:
        for cell, c in rec.cells.items():
            for arm, r in c.results.items():
                into = pooled.setdefault(cell, {}).setdefault(arm, _Pooled())
                into.seeds += r.seeds
                if r.history:
                    into.epoch1_train_acc += r.history[0]["train_acc"]
                for k, v in (r.start or {}).items():
                    into.start.setdefault(k, []).extend(v)
    names = ", ".join(n for n, _ in runs)
    for cell, res in pooled.items():
        at = f"{names} {cell}"
        keep, reset, recompute = (f"warm_start_bn_{m}" for m in ("keep", "reset", "recompute"))
        t.gap("Warm start generalizes worse, ResNet (random - warm, BN kept)", at, res, b=keep)
        t.gap("Claim 3: resetting BN statistics improves warm-starting (reset - keep)", at, res,
              reset, keep)
        t.gap("... recomputing them on the new data (recompute - keep)", at, res, recompute, keep)
        t.paired("Claim 5: reset converges faster (keep - reset, final-round epochs)", at,
                 res[keep].seeds, res[reset].seeds, "epochs", 1.0, unit="epochs")
        first = lambda a: _per_seed(res[a].seeds, res[a].epoch1_train_acc, "acc")
        if res[reset].epoch1_train_acc and res[keep].epoch1_train_acc:
            t.paired("... and starts faster (reset - keep, round-2 train acc of epoch 1)", at,
                     first(reset), first(keep), "acc")
        t.gap("Claim 6: the gap comes from the BN mismatch, so matched statistics close it "
              f"(random - recompute; at most {CLOSED_PP:g} = closed)", at, res, b=recompute,
              test="non_inferior")
        if res[keep].start.get("bn_mean_gap"):
            gap = lambda a: _per_seed(res[a].seeds, res[a].start["bn_mean_gap"], "g")
            t.paired("Claim 7: resetting restores the alignment (keep - reset, BN mean "
                     "mismatch at the start of round 2)", at, gap(keep), gap(reset), "g", 1.0,
                     unit="std")
        # Shrink-perturb arms (--shrink) make the cell Table 1's ResNet cell as well; each is
        # paired with the warm arm of its own BN mode.
        for arm in [a for a in res if a.startswith("sp_")]:
            warm = "warm_start" + arm[arm.index("_bn_"):] if "_bn_" in arm else keep
            t.gap(f"Shrink-perturb narrows the gap, ResNet ({arm} - {warm})", at, res, arm,
                  warm)
            t.gap(f"... and closes it (random - {arm}; at most {CLOSED_PP:g} = closed)", at,
                  res, b=arm, test="non_inferior")


SINGLE = {
    "shrink_only": _shrink_only,
    "online": _online,
    "curves": _curves,
    "checkpoint_age": _checkpoint_age,
    "grad_norms": _grad_norms,
    "sp_grid": _sp_grid,
    "perturb_only": _perturb_only,
    "warm_start": _two_phase,
    "sweep": _cells("The gap appears at every lr and batch (random - warm)"),
    "regularization": _cells("Regularization does not close the gap (random - warm)"),
    "sp_every_step": _cells("Warm start vs random init, shrink-perturb every step "
                            "(random - warm)"),
    "interventions": interventions_claims,
}


def claims(root: Path, runs=None) -> list[dict]:
    """Every claim with its evidence, effect and verdict; with ``runs`` (names of run folders
    under ``root``), only the claims those runs give evidence for."""
    t = Table()
    found = _records(Path(root))
    if runs is not None:
        found = [(name, rec) for name, rec in found if name in set(runs)]
    seen = {rec.script for _, rec in found}
    for name, rec in found:
        if rec.script == "table1":
            _table1(t, name, _records(Path(root) / name))
        elif rec.script in SINGLE:
            t.scale, t.notes = small_scale(rec), protocol_notes(rec)
            SINGLE[rec.script](t, name, rec)
    bn = [(n, r) for n, r in found if r.script == "bn_stats"]
    if bn:
        t.scale = small_scale(*(r for _, r in bn))
        t.notes = protocol_notes(*(r for _, r in bn))
        _bn_stats(t, bn)
    for script, command in COMMANDS.items():
        if runs is None and script not in seen:
            t.missing(f"(evidence of {script})", "-", command)
    return t.rows


def main(argv=None) -> list[dict]:
    """Prints the claims table as markdown."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("root", nargs="?", default="experiments/results",
                   help="folder whose run folders hold results.json")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    rows = claims(Path(args.root))
    print(markdown(rows))
    return rows


def markdown(rows: list[dict]) -> str:
    """Claim rows as a markdown table, with how many claims it tests at once."""
    lines = ["| claim | evidence | effect (mean ± SE over seeds) | n | stop reasons | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['claim']} | {r['evidence']} | {r['effect']} | {r.get('n', '-')} | "
              f"{r.get('stops', '-')} | {r['verdict']} |" for r in rows]
    tested = sum(not r["verdict"].startswith(("not run", "no verdict")) for r in rows)
    lines += ["", f"{tested} claims tested at once, each on its own {LEVEL:.0%} Student-t "
              f"interval: each verdict alone errs with about {1 - LEVEL:.0%} probability, and "
              f"no correction for making {tested} of them is applied."]
    return "\n".join(lines)


VERDICT_GROUPS = (("confirmed", "Confirmed"), ("refuted", "Refuted"),
                  ("inconclusive", "Inconclusive"), ("no verdict", "No verdict"),
                  ("not run", "Not run"))


def prose(rows: list[dict]) -> str:
    """The verdicts of claim ``rows`` in words (markdown), grouped by verdict, each with its
    effect, n and evidence: text generated from the table, so it cannot go stale."""
    parts, last = [], ""
    rows = [dict(r) for r in rows]
    for r in rows:  # a "... and" row continues the claim before it: say which
        if r["claim"].startswith("..."):
            r["claim"] = f"{last} {r['claim']}"
        else:
            last = r["claim"]
    for prefix, title in VERDICT_GROUPS:
        group = [r for r in rows if r["verdict"].startswith(prefix)]
        if not group:
            continue
        parts.append(f"**{title}** ({len(group)} of {len(rows)}):")
        for r in group:
            detail = r["verdict"] if prefix == "not run" else (
                f"{r['effect']}, n = {r['n']}" + (f", seeds stopped by {r['stops']}"
                                                   if r.get("stops", "-") != "-" else ""))
            parts.append(f"- {r['claim']}; {r['evidence']}: {detail}.")
        parts.append("")
    return "\n".join(parts).strip() or "no claim rows"


if __name__ == "__main__":
    main_guard(main)
