"""Fig 2 and Fig 7: the online setting. Data arrive --chunk examples at a time (1,000 on
CIFAR-10: 34 rounds); after each chunk every arm retrains to the stop rule. Arms: random init
(fresh every round), warm start, and shrink-perturb for each --shrink (noise --noise). The
figure plots validation accuracy and train time per round against the number of examples.

The study notebook's claim 4 settings use the same script: ``--select margin`` (or
``entropy``) lets each arm's previous model pick the next chunk (active learning), and
``--label-noise 0.2`` corrupts a fifth of the training labels.

    wsjax online --model mlp --optimizer adam --seeds 5 --shrink 0.6  # Fig 2
    wsjax online --shrink 0 0.2 0.4 0.6 0.8 --no-random-init           # Fig 7
    wsjax online --quick --select margin
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments.common import (StudyConfig, finish, main_guard, setup,
                                      with_default_out)
from wsjax.experiments.flags import COUNT, FRACTION, NON_NEGATIVE, Checked, option, parse
from wsjax.study.plots import plot_online
from wsjax.study.protocols import SELECTORS, run_online
from wsjax.study.records import Run
from wsjax.warmstart import BN_MODES, Arm

QUICK = {"train_subset": 3000, "max_epochs": 20, "seeds": 2, "chunk": 250, "rounds": 6}


@dataclasses.dataclass(frozen=True)
class OnlineConfig(Checked):
    """The online experiment."""

    study: StudyConfig = StudyConfig()
    chunk: int = option(1000, "examples added per round", check=COUNT)
    rounds: int | None = option(None, "stop after this many rounds (a finished run may be "
                                "extended or cut)", check=COUNT)
    shrink: tuple[float, ...] = option((0.6,), "shrink-perturb arms (none: warm start vs "
                                       "random init only)", nargs="*", check=FRACTION)
    noise: float = option(0.01, "noise scale of the shrink-perturb arms", check=NON_NEGATIVE)
    bn: str = option("reset", "BatchNorm statistics before each round of the warm arms",
                     choices=BN_MODES)
    select: str = option("order", "order: random arrival (paper); margin/entropy: active "
                         "selection", choices=SELECTORS)
    random_init: bool = option(True, "leave out the random-init arm (the most expensive)",
                               flag="--no-random-init")
    warm_arm: bool = option(True, "leave out the plain warm-start arm", flag="--no-warm-start")
    shared_round0: bool = option(False, "start every arm from one plain round 0 (cheaper); by "
                                 "default a shrink-perturb arm transforms its init before "
                                 "round 0 too, as the official code does")


def arms_of(cfg: OnlineConfig) -> list[Arm]:
    """The warm arms the flags ask for."""
    return ([Arm("warm_start", bn=cfg.bn)] if cfg.warm_arm else []) + [
        Arm(f"sp_{s:g}", s, cfg.noise, bn=cfg.bn) for s in cfg.shrink]


def run(cfg: OnlineConfig) -> Run:
    """Runs the online experiment and writes its record."""
    # --rounds only cuts the same sequence of rounds short: a run may be extended or cut.
    run_ = setup(cfg, "online", may_change=("rounds",))
    results = run_online(run_.stages, pool_idx=run_.data.fit_idx, chunk=cfg.chunk,
                         arms=arms_of(cfg), select=cfg.select, num_rounds=cfg.rounds,
                         include_random=cfg.random_init, shared_round0=cfg.shared_round0)
    return finish(run_, "online", results, plot_online)


def main(argv=None) -> Run:
    """``wsjax online``: parses the flags and runs the experiment."""
    cfg = parse(OnlineConfig, argv, description=__doc__, quick=QUICK)
    return run(with_default_out(cfg, "online"))


if __name__ == "__main__":
    main_guard(main)
