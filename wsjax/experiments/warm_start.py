"""The study's two-phase experiment (Ash & Adams, Table 1): is a warm-started model worse?

Arms, each over --seeds seeds trained at once (vmapped):
  random_init      fresh init, trained on 100% of the fitted split;
  warm_start       round 1 on the first 50%, then round 2 on 100% from round 1's weights;
  sp_<shrink>      like warm_start, with shrink-perturb (shrink * w + noise * fresh init)
                   applied before round 2, for each --shrink value (sp_<shrink>_<noise> when
                   several --noise values make a grid).
The optimizer state is new at every round (--opt-state keep carries it over); BatchNorm
statistics are reset before round 2 (--bn keep/recompute to change that). Runs resume from
their checkpoints when started again.

    WSJAX_DATA_DIR=../shared/data wsjax warm_start --quick
    wsjax warm_start --model mlp --optimizer adam --seeds 4 --out runs/mlp_adam

Other experiments run its cells: table1, curves (Fig 1), sp_grid (Fig 8), perturb_only,
regularization, sweep (Fig 3), sp_every_step and bn_stats call ``run`` with their configs.
"""

from __future__ import annotations

import collections
import dataclasses

import jax

from wsjax.experiments.common import QUICK, StudyConfig, finish, main_guard, setup, \
    with_default_out
from wsjax.experiments.flags import (FRACTION, NON_NEGATIVE, PROPER_SHARE, RATE, Checked,
                                     option, parse)
from wsjax.objectives import KINDS, Objective
from wsjax.study.plots import plot_two_phase
from wsjax.study.probes import bn_mismatch
from wsjax.study.protocols import run_two_phase, two_phase_results
from wsjax.study.records import Run
from wsjax.study.stages import sample_key
from wsjax.study.stats import column, mean_se
from wsjax.warmstart import BN_MODES, NOISE_KINDS, OPTIMIZER_MODES, Arm


@dataclasses.dataclass(frozen=True)
class ArmsConfig(Checked):
    """The warm arms of round 2."""

    shrink: tuple[float, ...] = option((0.6, 0.3), "shrink values of the shrink-perturb arms "
                                       "(none: no such arm)", nargs="*", check=FRACTION)
    noise: tuple[float, ...] = option((0.01,), "perturbation scale(s) of the shrink-perturb "
                                      "arms (several: a grid)", nargs="+",
                                      check=NON_NEGATIVE)
    noise_kind: str = option("init", "init: noise * a fresh init (official code); gaussian: "
                             "N(0, noise^2)", choices=NOISE_KINDS)
    warm_arm: bool = option(True, "leave out the plain warm-start arm", flag="--no-warm-start")
    bn: tuple[str, ...] = option(("reset",), "BatchNorm statistics before round 2: reset "
                                 "(official), keep, or recompute from the new data; several "
                                 "give one warm arm each", nargs="+", choices=BN_MODES)
    opt_state: str = option("reset", "optimizer state at the start of round 2: reset (the "
                            "study) or keep round 1's", choices=OPTIMIZER_MODES)
    shared_round1: bool = option(False, "start every arm's round 2 from one plain round 1 "
                                 "(cheaper); by default a shrink-perturb arm transforms its "
                                 "init before round 1 too, as the official code does")


@dataclasses.dataclass(frozen=True)
class TwoPhaseConfig(Checked):
    """The two-phase experiment."""

    study: StudyConfig = StudyConfig()
    arms: ArmsConfig = ArmsConfig()
    first_fraction: float = option(0.5, "round 1's share of data", check=PROPER_SHARE)
    objective: str = option("ce", "training loss in both rounds (regularization table)",
                            choices=KINDS)
    strength: float = option(0.0, "strength of --objective", check=NON_NEGATIVE)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy in both rounds",
                                    check=RATE)
    sp_every_step: tuple[float, float] | None = option(
        None, "apply shrink-perturb after every optimizer step of every stage", nargs=2,
        metavar=("SHRINK", "NOISE"))
    curves: bool = option(False, "evaluate validation accuracy after every epoch (Fig 1)")
    bn_probe: bool = option(False, "after every epoch, measure how far BatchNorm running "
                            "statistics are from the statistics of the fitted data (claims 6, 7)")


def arms_of(cfg: ArmsConfig) -> list[Arm]:
    """The warm arms the flags ask for."""
    arms = []
    for bn in cfg.bn:
        suffix = "" if len(cfg.bn) == 1 else f"_bn_{bn}"
        if cfg.warm_arm:
            arms.append(Arm(f"warm_start{suffix}", 1.0, 0.0, bn=bn, optimizer=cfg.opt_state))
        for s in cfg.shrink:
            for n in cfg.noise:
                name = f"sp_{s:g}" if len(cfg.noise) == 1 else f"sp_{s:g}_{n:g}"
                arms.append(Arm(name + suffix, s, n, cfg.noise_kind, bn, cfg.opt_state))
    return arms


def make_watch(engine, data, *, curves: bool, bn_probe: bool):
    """The per-epoch measurements the flags ask for (see ``Stages.train``), or None."""
    if not (curves or bn_probe):
        return None

    def watch(states):
        out = {}
        if curves:
            out["val_acc"] = engine.evaluate(states, *data.eval_sets["val"])["acc"]
        if bn_probe and jax.tree.leaves(states.batch_stats):
            stats = engine.recompute_batch_stats(states.params, states.batch_stats, data.x,
                                                 data.fit_idx, sample_key("bn_probe"))
            gaps = bn_mismatch(states.batch_stats, stats)
            out["bn_mean_gap"], out["bn_logvar_gap"] = gaps["mean_gap"], gaps["logvar_gap"]
        return out

    return watch


def print_table(results: dict) -> None:
    """The arms' mean ± SE accuracies, epochs and seconds, and why their seeds stopped."""
    cols = ("arm", "val acc %", "test acc %", "epochs", "total epochs", "seconds",
            "total seconds", "total examples (k)", "compile s", "stop reasons")
    print(" | ".join(cols))
    for arm, r in results.items():
        s = r.seeds

        def fmt(key, scale=1.0, digits=2):
            values = column(s, key, scale)
            return "{:.{d}f} ± {:.{d}f}".format(*mean_se(values), d=digits) if values else "-"
        total = lambda key, d, scale=1.0: fmt(f"total_{key}", scale, d) \
            if getattr(s[0], f"total_{key}") is not None else fmt(key, scale, d)
        reasons = collections.Counter(row.stop_reason for row in s)
        # Diverged seeds are left out of the means (wsjax.study.stats): say how many.
        diverged = reasons["diverged"]
        name = f"{arm} ({diverged} diverged, not in the means)" if diverged else arm
        stops = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        print(" | ".join([name, fmt("val_acc", 100), fmt("test_acc", 100), fmt("epochs", 1, 1),
                          total("epochs", 1), fmt("seconds", 1, 1), total("seconds", 1),
                          total("examples", 0, 1e-3), fmt("compile_seconds", 1, 1), stops]))


# Arms may be added or left out when a run resumes: each arm's stages are named after what
# it does (``sp_0.6``, ``warm_start_bn_reset``), so the stages already trained are kept and only
# the new arms train. Flags that would change what an existing name means (``--noise`` with one
# value, ``--noise-kind``, ``--opt-state``) still refuse to resume.
ARMS_MAY_CHANGE = ("shrink", "bn", "warm_arm")


def run(cfg: TwoPhaseConfig, *, script: str = "warm_start", plot=plot_two_phase) -> Run:
    """Runs the two-phase experiment; returns (and writes) its record. ``script`` names the
    experiment the run belongs to (a cell of a sweep names the sweep)."""
    objective = (Objective(cfg.objective, cfg.strength, label_smoothing=cfg.label_smoothing)
                 if cfg.objective != "ce" or cfg.strength or cfg.label_smoothing else None)
    run_ = setup(cfg, script, objective=objective, sp_every_step=cfg.sp_every_step,
                 may_change=ARMS_MAY_CHANGE)
    watch = make_watch(run_.engine, run_.data, curves=cfg.curves, bn_probe=cfg.bn_probe)
    outcome = run_two_phase(run_.stages, fit_idx=run_.data.fit_idx,
                            first_fraction=cfg.first_fraction, arms=arms_of(cfg.arms),
                            shared_round1=cfg.arms.shared_round1, watch=watch)
    results = two_phase_results(outcome)
    print_table(results)
    return finish(run_, "two_phase", results, plot)


def main(argv=None) -> Run:
    """``wsjax warm_start``: parses the flags and runs the experiment."""
    cfg = parse(TwoPhaseConfig, argv, description=__doc__, quick=QUICK)
    return run(with_default_out(cfg, "warm_start"))


if __name__ == "__main__":
    main_guard(main)
