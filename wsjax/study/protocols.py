"""The study's protocols: how rounds of training follow each other.

- ``run_two_phase`` (Table 1 and most figures): ``random_init`` trains on all of the fitted
  split; ``round1`` trains on its first fraction; each ``Arm`` starts round 2 on all of it
  from round 1's weights (``warm_round``: ``warmstart.apply_arm``, then training), a
  shrink-perturb arm from its own round 1 that began from its transformed init (the official
  code; ``shared_round1`` for the plain one). It runs on
  any trainer with the methods below, so the study's ``Stages`` and the fast trainer's
  warm-start experiment share it.
- ``run_online`` (Fig 2, 7 and active learning): data arrive in chunks and every arm retrains
  after each chunk, from its own previous model (a shrink-perturb arm's first round from its
  transformed init, as in two-phase; ``shared_round0`` for the plain one).

A *trainer* has ``fresh(stage) -> variables`` (a new initialization), ``arm_inputs(arm,
stage, idx) -> dict`` (what ``apply_arm`` needs beside the weights) and ``train(stage,
variables, idx, opt_state=None, **options)``, which returns an object with ``states`` (the
trained ``TrainState``, replicas stacked or one) and ``result``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from wsjax import data as wdata
from wsjax.hosts import host_value
from wsjax.objectives import entropy
from wsjax.study.records import OnlineRound, StageResult, from_plain, to_json
from wsjax.study.runlog import write_json
from wsjax.warmstart import Arm, apply_arm

RANDOM = "random_init"
SELECTORS = ("order", "margin", "entropy")


def warm_round(trainer, arm: Arm, stage: str, source, idx, **options):
    """Trains ``stage`` on ``idx`` from ``source`` (trained states) transformed by ``arm``."""
    params, batch_stats, opt_state = apply_arm(arm, source.params, source.batch_stats,
                                               source.opt_state,
                                               **trainer.arm_inputs(arm, stage, idx))
    return trainer.train(stage, {"params": params, "batch_stats": batch_stats}, idx,
                         opt_state=opt_state, **options)


@dataclasses.dataclass
class TwoPhase:
    """What ``run_two_phase`` trained: ``round1`` (the plain one; None when no arm started
    from it), the final round of every arm (``random_init`` first when it ran), and
    ``round1s``: the round 1 of each arm that transforms the initialization (the others
    started from ``round1``)."""

    round1: Any
    final: dict[str, Any]
    arms: dict[str, Arm]
    round1s: dict[str, Any] = dataclasses.field(default_factory=dict)

    def round1_of(self, arm: str):
        """The round 1 that ``arm``'s round 2 started from."""
        return self.round1s.get(arm, self.round1)


def transforms_init(arm: Arm) -> bool:
    """Whether ``arm`` changes a fresh initialization's weights (shrink or noise), so that
    under the official protocol its round 1 starts from its own transformed init."""
    return arm.shrink != 1.0 or arm.noise_scale != 0.0


def _transform(arm: Arm) -> tuple:
    """What ``arm`` does to an initialization: arms that differ only in what they do later
    (BN statistics, optimizer state) share their first round, noise draw included."""
    return arm.shrink, arm.noise_scale, arm.noise_kind


def _first_round(trainer, arm: Arm, stage: str, init_stage: str, idx, **options):
    """Trains ``stage`` on ``idx`` from ``init_stage``'s fresh initialization transformed by
    ``arm``, begun like the official code's first round: fresh BN statistics, a new
    optimizer, whatever ``arm`` keeps at later rounds."""
    init = trainer.fresh(init_stage)
    first_arm = dataclasses.replace(arm, bn="reset", optimizer="reset")
    return warm_round(trainer, first_arm, stage, _Start(init["params"], init["batch_stats"], None),
                      idx, **options)


def run_two_phase(trainer, *, fit_idx, first_fraction: float = 0.5, arms: Sequence[Arm],
                  include_random: bool = True, round1_options: dict | None = None,
                  shared_round1: bool = False, **options) -> TwoPhase:
    """The two-phase protocol (see the module docstring). ``options`` go to the trainer's
    ``train`` of every stage (e.g. ``watch``), ``round1_options`` (default ``options``) to
    round 1's. Stages are named ``random_init``, ``round1`` and ``round2_<arm>``.

    As in the official code, an arm that shrinks or perturbs (``transforms_init``) applies
    its transform before round 1 too: its round 1 (stage ``round1_<arm>``, named after the
    first arm with that shrink and noise; the others share it) trains from the transformed
    fresh init, on the same data as ``round1``. ``shared_round1`` instead starts every arm's
    round 2 from the one plain ``round1`` (cheaper; the arms then differ only from round 2
    on). The plain ``round1`` is trained only when an arm starts from it or there are no arms
    (``TwoPhase.round1`` is None otherwise). ``fit_idx`` is ``(n,)``, or ``(replicas, n)``
    with a row per seed.
    """
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or RANDOM in names:
        raise ValueError(f"arm names must be unique and not {RANDOM!r}; got {names}")
    first = wdata.first_fraction(fit_idx, first_fraction)
    r1_options = options if round1_options is None else round1_options
    own = [] if shared_round1 else [a for a in arms if transforms_init(a)]
    final = {}
    if include_random:
        final[RANDOM] = trainer.train(RANDOM, trainer.fresh(RANDOM), fit_idx, **options)
    round1 = None
    if len(own) < len(arms) or not arms:  # an arm (or the caller: no arms) starts from it
        round1 = trainer.train("round1", trainer.fresh("round1"), first, **r1_options)
    round1s, by_transform = {}, {}
    for arm in arms:
        if arm in own:
            if _transform(arm) not in by_transform:  # round1's init, then the arm's transform
                by_transform[_transform(arm)] = _first_round(
                    trainer, arm, f"round1_{arm.name}", "round1", first, **r1_options)
            round1s[arm.name] = by_transform[_transform(arm)]
        source = round1s.get(arm.name, round1)
        final[arm.name] = warm_round(trainer, arm, f"round2_{arm.name}", source.states, fit_idx,
                                     **options)
    return TwoPhase(round1, final, {a.name: a for a in arms}, round1s)


_Start = collections.namedtuple("_Start", "params batch_stats opt_state")


def two_phase_results(outcome: TwoPhase) -> dict[str, StageResult]:
    """The study's results of a two-phase run: each final round's ``StageResult``; warm arms
    also get their ``Arm``, their round 1's rows (and history when watched), and rows counting
    both rounds (``total_epochs``, ``total_seconds``)."""
    results = {}
    for name, trained in outcome.final.items():
        result = trained.result
        if name in outcome.arms:
            round1 = outcome.round1_of(name).result
            result.arm, result.round1 = outcome.arms[name], round1.seeds
            for row, r1 in zip(result.seeds, round1.seeds):
                row.total_epochs = row.epochs + r1.epochs
                row.total_seconds = row.seconds + r1.seconds
                if row.examples is not None and r1.examples is not None:
                    row.total_examples = row.examples + r1.examples
            result.round1_history = round1.history
            result.own_round1 = name in outcome.round1s
        results[name] = result
    return results


# --- online --------------------------------------------------------------------------------


def acquisition_scores(probs, select: str) -> np.ndarray:
    """Higher = more wanted. ``probs`` is (R, N, C); the seeds' softmax is averaged."""
    p = host_value(probs).mean(axis=0)
    if select == "margin":
        top2 = np.sort(p, axis=-1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])
    if select == "entropy":
        return np.asarray(entropy(jnp.log(jnp.clip(jnp.asarray(p), 1e-12))))
    raise ValueError(f"select={select!r} has no scores; choose from {SELECTORS}")


def _open_book(path, names: list[str], pool_idx, chunk: int, select: str) -> dict:
    """The online run's bookkeeping: finished rounds per arm and, under active selection,
    each arm's order of arrival so far (the first chunk to begin with)."""
    book = json.loads(path.read_text()) if path.exists() else {"rounds": {a: [] for a in names}}
    if select == "order":
        book.pop("order", None)  # the pool's own order: nothing to record
    else:
        book.setdefault("order", {a: pool_idx[..., :chunk].tolist() for a in names})
    return book


def _choose_next(stages, states, order: list, pool_idx, size: int, select: str) -> None:
    """Extends ``order`` to ``size`` with the examples of the pool that ``states`` (the arm's
    previous model) wants most: one order for all seeds (their softmax averaged), or with a
    pool per seed (``(R, n)``) each seed's order by its own model."""
    if pool_idx.ndim == 1:
        rest = pool_idx[~np.isin(pool_idx, order)]
        scores = acquisition_scores(stages.engine.predict(states, stages.data.x, rest), select)
        order.extend(rest[np.argsort(-scores, kind="stable")[: size - len(order)]].tolist())
        return
    rest = np.stack([pool[~np.isin(pool, mine)] for pool, mine in zip(pool_idx, order)])
    probs = stages.engine.predict(states, stages.data.x, rest)
    for r, mine in enumerate(order):
        scores = acquisition_scores(probs[r:r + 1], select)
        mine.extend(rest[r][np.argsort(-scores, kind="stable")[: size - len(mine)]].tolist())


def run_online(stages, *, pool_idx, chunk: int, arms: Sequence[Arm], select: str = "order",
               num_rounds: int | None = None, include_random: bool = True,
               shared_round0: bool = False) -> dict[str, list[OnlineRound]]:
    """The online protocol: data arrive ``chunk`` examples at a time from ``pool_idx``.

    Round 0 trains a fresh model on the first chunk (stage ``round000``). As in the official
    code, an arm that shrinks or perturbs (``transforms_init``) applies its transform before
    round 0 too: its round 0 (stage ``round000_<arm>``, named after the first arm with that
    shrink and noise; the others share it) trains from round 0's fresh init transformed, with
    fresh BN statistics and a new optimizer. ``shared_round0`` instead starts every arm from
    the plain round 0 (cheaper; the arms then differ from round 1 on). In round r >= 1 the
    training set grows by one chunk and each arm starts from its own round r-1 model: the
    ``random_init`` arm ignores it (a fresh init every round), a warm ``Arm`` transforms it.
    ``select`` decides which examples arrive next: ``'order'`` (the pool's order, the paper's
    setting), or ``'margin'`` / ``'entropy'`` (active learning: each arm's own previous model
    scores the remaining pool and the chunk with the smallest top-2 margin / largest entropy
    is added). ``pool_idx`` is ``(n,)`` for every seed (under active selection the seeds of
    an arm then share its selection, their softmax averaged) or ``(R, n)``, a pool per seed
    (each seed selects with its own model).

    ``stages`` is a ``wsjax.study.stages.Stages``. Resumable: ``online.json`` in the run
    directory records each arm's selected order and finished rounds; only the latest finished
    round of each arm keeps its checkpoint.
    """
    if select not in SELECTORS:
        raise ValueError(f"select={select!r} is unknown; choose from {SELECTORS}")
    pool_idx = np.asarray(pool_idx, np.int32)
    pool_size = pool_idx.shape[-1]
    if chunk < 1 or chunk > pool_size:
        raise ValueError(f"chunk={chunk} must be in [1, {pool_size}] (the pool size)")
    total = -(-pool_size // chunk)
    num_rounds = total if num_rounds is None else min(num_rounds, total)
    names = ([RANDOM] if include_random else []) + [a.name for a in arms]
    by_name = {a.name: a for a in arms}
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique (and not {RANDOM!r}); got {names}")
    book_path = stages.run.path / "online.json"
    book = _open_book(book_path, names, pool_idx, chunk, select)
    states = {}
    # Each arm's round-0 stage: one per transform, as round 1 in run_two_phase.
    round0, by_transform = {}, {}
    for arm in arms:
        if not shared_round0 and transforms_init(arm):
            round0[arm.name] = by_transform.setdefault(_transform(arm), f"round000_{arm.name}")

    def stage_of(a, r):
        return round0.get(a, "round000") if r == 0 else f"{a}_r{r:03d}"

    def order_of(a):
        return pool_idx if select == "order" else book["order"][a]

    def size(r):
        return min((r + 1) * chunk, pool_size)

    def state_after(a, r):
        """Arm ``a``'s model after round ``r``, trained earlier (restored from disk)."""
        if (a, r) not in states:
            stage = stage_of(a, r)
            idx = np.asarray(order_of(a))[..., : size(r)]
            states[(a, r)] = stages.train(stage, stages.fresh(stage), idx).states
        return states[(a, r)]

    for r in range(num_rounds):
        for a in names:
            if len(book["rounds"][a]) > r:
                continue
            order = order_of(a)
            if select != "order" and np.shape(order)[-1] < size(r):
                # This arm's round r-1 model picks the chunk that arrives now.
                _choose_next(stages, state_after(a, r - 1), order, pool_idx, size(r), select)
            idx = np.asarray(order)[..., : size(r)]
            stage = stage_of(a, r)
            if a == RANDOM or stage == "round000":
                trained = stages.train(stage, stages.fresh(stage), idx)
            elif r == 0:  # round 0's init, then the arm's transform
                trained = _first_round(stages, by_name[a], stage, "round000", idx)
            else:
                trained = warm_round(stages, by_name[a], stage, state_after(a, r - 1), idx)
            states[(a, r)] = trained.states
            rows = trained.result.seeds
            book["rounds"][a].append(to_json(OnlineRound(r, idx.shape[-1], rows)))
            write_json(book_path, book)
            stages.progress.note(f"round {r:3d} n={idx.shape[-1]:6d} {a:>16}: val acc "
                                 f"{np.mean([s.val_acc for s in rows]) * 100:.2f}%  "
                                 f"{np.mean([s.seconds for s in rows]):.1f}s")
        if r >= 1:
            # Resuming needs only the latest round of each arm.
            for stage in dict.fromkeys(stage_of(a, r - 1) for a in names):
                stages.drop(stage)
            for a in names:
                states.pop((a, r - 1), None)
    return {a: from_plain(list[OnlineRound], book["rounds"][a][:num_rounds]) for a in names}
