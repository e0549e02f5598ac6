"""The online protocol: data arrive in chunks; after each chunk every arm retrains.

Round 0 trains a fresh model on the first chunk (shared by all arms). In round r >= 1 the
training set grows by one chunk and each arm starts from its own round r-1 model: the
``random_init`` arm ignores it (a fresh init every round), a warm ``Arm`` transforms it (plain
warm start, shrink-perturb, BatchNorm reset...). Accuracy and train time are recorded per round.

Which examples arrive next is decided by ``select``:
- ``'order'``: the pool's (seeded random) order, the paper's setting;
- ``'margin'`` / ``'entropy'``: active learning; each arm's own previous model scores the
  remaining pool (softmax averaged over the seeds) and the chunk with the smallest top-2
  margin / largest entropy is added. Seeds of an arm share its selected set.

Resumable: ``online.json`` in the run directory records each arm's selected order and finished
rounds; only the latest finished round of each arm keeps its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.augment import NORMALIZATIONS, normalize
from wsjax.objectives import entropy
from wsjax.runlog import write_json
from wsjax.study import Arm, StageRunner, per_seed

SELECTORS = ("order", "margin", "entropy")
RANDOM = "random_init"


def make_predict_fn(model, *, batch_size: int = 1000, normalization: str = "study"):
    """Returns ``probs(states, x, idx) -> (R, len(idx), C)``: eval-mode softmax of every
    replica on ``x[idx]`` (``idx`` of any length; padded internally to whole batches)."""
    mean, std = NORMALIZATIONS[normalization]

    # One compiled batch called from Python (see ``wsjax.probes``: conv nets on a CPU).
    @jax.jit
    def one(states, x, ids):
        return jax.vmap(lambda state: jax.nn.softmax(model.apply(
            state.variables, normalize(x[ids], mean, std), train=False)))(states)

    def probs(states, x, idx):
        idx = np.asarray(idx, np.int32)
        padded = np.pad(idx, (0, -len(idx) % batch_size))
        out = [one(states, x, jnp.asarray(padded[i:i + batch_size]))
               for i in range(0, len(padded), batch_size)]
        return jnp.concatenate(out, axis=1)[:, : len(idx)]

    return probs


def acquisition_scores(probs, select: str) -> np.ndarray:
    """Higher = more wanted. ``probs`` is (R, N, C); the seeds' softmax is averaged."""
    p = np.asarray(probs).mean(axis=0)
    if select == "margin":
        top2 = np.sort(p, axis=-1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])
    if select == "entropy":
        return np.asarray(entropy(jnp.log(jnp.clip(jnp.asarray(p), 1e-12))))
    raise ValueError(f"select={select!r} has no scores; choose from {SELECTORS}")


def _stage(arm: str, r: int) -> str:
    return "round000" if r == 0 else f"{arm}_r{r:03d}"


def run_online(runner: StageRunner, *, pool_idx, chunk: int, arms: Sequence[Arm], seeds,
               eval_sets: dict, select: str = "order", num_rounds: int | None = None,
               include_random: bool = True, score_batch_size: int = 1000) -> dict:
    """Runs the online protocol (see the module docstring) and returns
    ``{arm: [{'round', 'n', 'seeds': [per-seed records]}, ...]}``."""
    if select not in SELECTORS:
        raise ValueError(f"select={select!r} is unknown; choose from {SELECTORS}")
    if chunk < 1 or chunk > len(pool_idx):
        raise ValueError(f"chunk={chunk} must be in [1, {len(pool_idx)}] (the pool size)")
    pool_idx = np.asarray(pool_idx, np.int32)
    total = -(-len(pool_idx) // chunk)
    num_rounds = total if num_rounds is None else min(num_rounds, total)
    names = ([RANDOM] if include_random else []) + [a.name for a in arms]
    by_name = {a.name: a for a in arms}
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique (and not {RANDOM!r}); got {names}")
    predict = make_predict_fn(runner.model, batch_size=score_batch_size,
                              normalization=runner.normalization)
    book_path = runner.run.path / "online.json"
    book = (json.loads(book_path.read_text()) if book_path.exists()
            else {"rounds": {a: [] for a in names}})
    if select == "order":
        book.pop("order", None)  # the pool's own order: nothing to record
    else:
        book.setdefault("order", {a: pool_idx[:chunk].tolist() for a in names})
    states = {}

    def order_of(a):
        return pool_idx if select == "order" else book["order"][a]

    def size(r):
        return min((r + 1) * chunk, len(pool_idx))

    def state_after(a, r):
        """Arm ``a``'s model after round ``r``, trained earlier (restored from disk)."""
        if (a, r) not in states:
            idx = np.asarray(order_of(a)[: size(r)])
            states[(a, r)] = runner.train(_stage(a, r), runner.fresh_variables(_stage(a, r)),
                                          idx)[0]
        return states[(a, r)]

    for r in range(num_rounds):
        for a in names:
            if len(book["rounds"][a]) > r:
                continue
            order = order_of(a)
            if select != "order" and len(order) < size(r):
                # This arm's round r-1 model picks the chunk that arrives now.
                rest = pool_idx[~np.isin(pool_idx, order)]
                scores = acquisition_scores(predict(state_after(a, r - 1), runner.x, rest),
                                            select)
                order.extend(rest[np.argsort(-scores, kind="stable")[: size(r) - len(order)]]
                             .tolist())
            idx = np.asarray(order[: size(r)])
            stage = _stage(a, r)
            if r == 0 or a == RANDOM:
                variables = runner.fresh_variables(stage)
            else:
                variables = runner.warm_variables(by_name[a], stage, state_after(a, r - 1), idx)
            state, progress = runner.train(stage, variables, idx)
            states[(a, r)] = state
            book["rounds"][a].append({"round": r, "n": len(idx), "seeds": per_seed(
                progress, runner.evaluate(state, eval_sets), seeds)})
            write_json(book_path, book)
            row = book["rounds"][a][-1]["seeds"]
            runner.echo(f"round {r:3d} n={len(idx):6d} {a:>16}: val acc "
                        f"{np.mean([s['val_acc'] for s in row]) * 100:.2f}%  "
                        f"{np.mean([s['seconds'] for s in row]):.1f}s")
        if r >= 1:
            # Resuming needs only the latest round of each arm.
            for a in names:
                states.pop((a, r - 1), None)
                if r - 1 > 0:
                    runner.drop(_stage(a, r - 1))
            if r == 1:
                runner.drop(_stage(names[0], 0))
    return {a: book["rounds"][a][:num_rounds] for a in names}
