"""Fig 5: gradient norms on old vs new data during round 2.

Round 1 trains on the first 50%; in round 2 (100%), after every epoch, the mean norm of
minibatch gradients is measured on a fixed sample of old examples (round 1's) and one of new
examples, for a plain warm start and for shrink-perturb with each --shrink (noise --noise).
The paper finds warm-started models have much smaller gradients on old data than on new data,
and that shrink-perturb balances them.

    wsjax grad_norms --model mlp --optimizer adam --seeds 5
    wsjax grad_norms --quick
"""

from __future__ import annotations

import dataclasses

from wsjax import data as wdata
from wsjax.experiments.common import (QUICK, StudyConfig, finish, main_guard, setup,
                                      with_default_out)
from wsjax.experiments.flags import COUNT, FRACTION, NON_NEGATIVE, Checked, option, parse
from wsjax.study.plots import plot_grad_norms
from wsjax.study.protocols import run_two_phase, two_phase_results
from wsjax.study.records import Run
from wsjax.warmstart import Arm


@dataclasses.dataclass(frozen=True)
class GradNormsConfig(Checked):
    """Fig 5."""

    study: StudyConfig = StudyConfig()
    shrink: tuple[float, ...] = option((0.9, 0.7, 0.5, 0.3), "shrink values of the "
                                       "shrink-perturb arms", nargs="*",
                                       check=FRACTION)
    noise: float = option(0.01, "noise scale of the shrink-perturb arms", check=NON_NEGATIVE)
    shared_round1: bool = option(False, "start every arm's round 2 from one plain round 1 "
                                 "(cheaper); by default each shrink-perturb arm transforms its "
                                 "init before round 1 too, as the official code does")
    probe_size: int = option(1024, "old and new examples each on which gradients are measured",
                             check=COUNT)


def run(cfg: GradNormsConfig) -> Run:
    """Runs Fig 5: the two-phase protocol (no random-init arm) with gradient norms on old and
    new data watched in round 2."""
    run_ = setup(cfg, "grad_norms")
    engine, data = run_.engine, run_.data
    first = wdata.first_fraction(data.fit_idx, 0.5)  # (n,), or a row per seed
    old = first[..., : cfg.probe_size]
    new = data.fit_idx[..., first.shape[-1]:][..., : cfg.probe_size]
    batch = min(engine.batch_size, old.shape[-1], new.shape[-1])

    def watch(states):
        return {"grad_old": engine.grad_norms(states, data.x, data.y, old, batch),
                "grad_new": engine.grad_norms(states, data.x, data.y, new, batch)}

    arms = [Arm("warm_start")] + [Arm(f"sp_{s:g}", s, cfg.noise) for s in cfg.shrink]
    outcome = run_two_phase(run_.stages, fit_idx=data.fit_idx, first_fraction=0.5, arms=arms,
                            include_random=False, round1_options={}, watch=watch,
                            shared_round1=cfg.shared_round1)
    return finish(run_, "two_phase", two_phase_results(outcome), plot_grad_norms)


def main(argv=None) -> Run:
    """``wsjax grad_norms``: parses the flags and runs Fig 5."""
    cfg = parse(GradNormsConfig, argv, description=__doc__, quick=QUICK)
    return run(with_default_out(cfg, "grad_norms"))


if __name__ == "__main__":
    main_guard(main)
