"""The staged protocol of the plasticity literature, with every intervention as an arm.

DASH's stationary protocol (the plasticity spec's section 2.1): the pool is cut into equal chunks;
stage t trains on chunks 0..t (cumulative, old data kept) until the running training accuracy
reaches the stop rule's threshold (0.999 there); the test accuracy after each stage, its mean
over stages, and the steps per stage are the outcome. Ash & Adams' online protocol is the same
with a fresh optimizer every round and 0.99.

A ``Method`` is one arm: what happens to the previous stage's trained state before the next
stage (``METHODS``), and whether the optimizer state carries over (``opt``; defaults are the DASH
repository's: momentum kept, except ``warm_rm`` and ``cold``; ``sp_aa`` resets it as Ash & Adams
do). Two arms change training itself, so each has its own stage 0 (the others share one):
``l2_init`` (the penalty toward the initial weights is in its optimizer,
``wsjax.interventions.l2_init.anchored_l2_init``) and ``cbp`` (continual backprop after every
step, a ``wsjax.train.StepHook`` whose unit ages carry across stages).

At the start of each stage (after the intervention) and at its end, ``Interventions.diagnostics``
measures the plasticity diagnostics of ``wsjax.diagnostics`` on fixed probe examples, with
BatchNorm in evaluation mode.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax import diagnostics
from wsjax.interventions import (CBPConfig, cbp_hook, dash,
                                 dash_gradient_average, head_reset, redo,
                                 shrink_perturb_linear)
from wsjax.interventions.l2_init import anchored_l2_init
from wsjax.models import sown_activations
from wsjax.replicas import replica_map
from wsjax.study.records import StagedRound, from_plain, to_json
from wsjax.study.runlog import write_json
from wsjax.study.stages import KeyUse, Stages
from wsjax.train import has_conv
from wsjax.warmstart import reset_batch_stats, shrink_perturb

METHODS = ("cold", "warm", "warm_rm", "reset", "sp", "sp_aa", "l2_init", "dash", "redo",
           "cbp")
# The DASH repository's optimizer policy per method; sp_aa is Ash & Adams' (a fresh optimizer).
KEEPS_OPTIMIZER = {"cold": False, "warm": True, "warm_rm": False, "reset": True, "sp": True,
                   "sp_aa": False, "l2_init": True, "dash": True, "redo": True, "cbp": True}
# Methods that change training itself (an optimizer term, a step hook): their own stage 0.
OWN_TRAINING = ("l2_init", "cbp")


@dataclasses.dataclass(frozen=True)
class Method:
    """An arm of the staged protocol: ``kind`` in ``METHODS`` and its hyperparameters (the
    sources' defaults): ``shrink``/``noise`` for ``sp`` (0.3, 0.01, Gaussian on conv and dense
    leaves) and ``sp_aa`` (set 0.6, 0.01 here, as the study's main job: fresh-init noise on every
    leaf, BatchNorm statistics reset); ``lam``/``alpha`` for ``dash`` (0.3, 0.3); ``l2`` for
    ``l2_init`` (1e-2); ``tau`` for ``redo`` (0: silent units only; recycled at each stage's
    start, on ``probe`` examples of the stage's data); ``rate``/``maturity`` for ``cbp``
    (continual backprop after every step, its unit ages carried across stages; None: the
    source's defaults for the model, the ResNet form's 1e-5 and 1000 for conv nets, the MLP
    form's 1e-4 and 100 otherwise). ``opt``: ``'keep'`` or ``'reset'`` the optimizer state
    (None: ``KEEPS_OPTIMIZER``)."""

    name: str
    kind: str
    shrink: float = 0.3
    noise: float = 0.01
    lam: float = 0.3
    alpha: float = 0.3
    l2: float = 1e-2
    tau: float = 0.0
    rate: float | None = None
    maturity: int | None = None
    opt: str | None = None

    def __post_init__(self):
        if self.kind not in METHODS:
            raise ValueError(f"Method {self.name}: kind={self.kind!r} must be one of {METHODS}")
        if self.opt not in (None, "keep", "reset"):
            raise ValueError(f"Method {self.name}: opt={self.opt!r} must be 'keep' or 'reset'")

    @property
    def keeps_optimizer(self) -> bool:
        """Whether the optimizer state carries over into the next stage."""
        return KEEPS_OPTIMIZER[self.kind] if self.opt is None else self.opt == "keep"


def default_methods() -> list[Method]:
    """The DASH repository's seven arms plus Ash & Adams' shrink-perturb, ReDo and continual
    backprop."""
    return [Method("cold", "cold"), Method("warm", "warm"), Method("warm_rm", "warm_rm"),
            Method("reset", "reset"), Method("l2_init", "l2_init"), Method("sp", "sp"),
            Method("sp_aa", "sp_aa", shrink=0.6), Method("dash", "dash"),
            Method("redo", "redo"), Method("cbp", "cbp")]


class Interventions:
    """Applies ``Method``s to stacked replica states for a ``Stages`` (its engine, data and
    keys), and measures the diagnostics. ``probe`` examples (the first of the validation split)
    are the fixed probe set; ``chunk`` the protocol's chunk size (DASH's gradient batches)."""

    def __init__(self, stages: Stages, *, chunk: int, probe: int = 500):
        self.stages, self.chunk = stages, chunk
        self.engine, self.data = stages.engine, stages.data
        val = np.asarray(self.data.val_idx)
        self.probe_idx = val[..., :probe]
        model, engine = self.engine.model, self.engine
        self._map = lambda f, axes: jax.jit(replica_map(f, axes, engine.replicas))

        def loss(params, batch_stats, ids, x, y):
            logits = model.apply({"params": params, "batch_stats": batch_stats},
                                 engine._images(x, ids), train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[ids]).mean()

        self._grad = {}
        self._grad_fn = jax.grad(loss)

        def acts_and_features(variables, ids, x):
            # One evaluation-mode pass gives both; batch_stats is not mutable, so it stays.
            (_, feats), sown = model.apply(variables, engine._images(x, ids), train=False,
                                           return_features=True, mutable=["intermediates"])
            return sown_activations(sown["intermediates"]), feats

        self._acts_fn = acts_and_features
        self._acts = {}

    def _ids_axis(self, ids):
        return 0 if np.ndim(ids) == 2 else None

    def gradients(self, states, ids):
        """Per-replica gradients of the mean cross-entropy on ``x[ids]`` (BatchNorm in
        evaluation mode)."""
        axis = self._ids_axis(ids)
        if axis not in self._grad:
            self._grad[axis] = self._map(self._grad_fn, (0, 0, axis, None, None))
        return self._grad[axis](states.params, states.batch_stats, jnp.asarray(ids),
                                self.data.x, self.data.y)

    def chunk_gradients(self, states, idx) -> list:
        """Gradients of each chunk of ``idx`` in order (the last may be partial)."""
        n = np.shape(idx)[-1]
        return [self.gradients(states, np.asarray(idx)[..., s:s + self.chunk])
                for s in range(0, n, self.chunk)]

    def activations(self, states, ids):
        """Per-replica ``(activations, penultimate features)`` on ``x[ids]``."""
        axis = self._ids_axis(ids)
        if axis not in self._acts:
            self._acts[axis] = self._map(self._acts_fn, (0, axis, None))
        return self._acts[axis](states.variables, jnp.asarray(ids), self.data.x)

    def start(self, method: Method, source, stage: str, idx):
        """The variables, optimizer state and step-hook state (None: fresh ones) that
        ``method`` starts ``stage`` (training set ``idx``) with, from the previous stage's
        ``source`` states."""
        kind, params, stats = method.kind, source.params, source.batch_stats
        fresh = lambda: self.stages.fresh(stage, KeyUse.PERTURB)  # noqa: E731
        opt_state = source.opt_state if method.keeps_optimizer else None
        if kind == "cold":
            return self.stages.fresh(stage), None, None
        if kind == "reset":
            params = jax.vmap(head_reset)(params, fresh()["params"])
        elif kind == "sp":
            keys = self.stages.stage_keys(stage, KeyUse.PERTURB)
            params = shrink_perturb_linear(keys, params, method.shrink, method.noise)
        elif kind == "sp_aa":
            params = shrink_perturb(params, fresh()["params"], method.shrink, method.noise)
            stats = reset_batch_stats(stats)
        elif kind == "dash":
            avg = dash_gradient_average(self.chunk_gradients(source, idx), method.alpha)
            params = jax.vmap(lambda p, g: dash(p, g, method.lam))(params, avg)
        elif kind == "redo":
            acts, _ = self.activations(source, np.asarray(idx)[..., :256])
            tx = self.engine.tx
            one = lambda p, f, a, b, o: redo(p, f, a, method.tau, batch_stats=b, tx=tx,  # noqa
                                             opt_state=o)[:3]
            params, stats, opt_state = jax.vmap(one)(params, fresh()["params"], acts, stats,
                                                     source.opt_state)
            opt_state = opt_state if method.keeps_optimizer else None
        return {"params": params, "batch_stats": stats}, opt_state, source.extra

    def diagnostics(self, states, theta0, idx, prev_idx) -> dict:
        """Per-seed plasticity diagnostics of ``states`` (see ``wsjax.diagnostics``): on the
        probe set (dormant and dead fractions, feature ranks), of the weights (magnitude,
        distance from ``theta0``), and, when there is previous data ``prev_idx``, the gradient
        ratio of the newest chunk of ``idx`` to the previous data and the accuracy on it."""
        acts, feats = self.activations(states, self.probe_idx)
        per = lambda f, *trees: np.asarray(jax.vmap(f)(*trees)).tolist()  # noqa: E731
        out = {"dormant": per(diagnostics.dormant_fraction, acts),
               "dead": per(diagnostics.dead_fraction, acts),
               "srank": per(diagnostics.stable_rank, feats),
               "effective_rank": per(diagnostics.effective_rank, feats),
               "weight_magnitude": per(diagnostics.weight_magnitude, states.params),
               "distance_from_init": per(lambda p, q: diagnostics.distance_from_init(p, q)[0],
                                         states.params, theta0)}
        if prev_idx is not None:
            n_prev = np.shape(prev_idx)[-1]
            new = self.gradients(states, np.asarray(idx)[..., n_prev:])
            olds = self.chunk_gradients(states, prev_idx)
            old = jax.tree.map(lambda *g: sum(g) / len(g), *olds)
            out["grad_ratio_new_old"] = per(diagnostics.gradient_norm_ratio, new, old)
            out["prev_acc"] = self.engine.evaluate(states, self.data.x, self.data.y,
                                                   prev_idx)["acc"].tolist()
        return out


def _engine_for(method: Method, engine):
    """The engine of an arm that trains differently: L2 Init's penalty in its optimizer,
    continual backprop's step hook."""
    if method.kind == "l2_init":
        return engine.replace(tx=optax.chain(anchored_l2_init(method.l2), engine.tx))
    conv = has_conv(engine.model, engine.input_shape)
    form = "resnet" if conv else "mlp"
    rate = method.rate if method.rate is not None else (1e-5 if conv else 1e-4)
    maturity = method.maturity if method.maturity is not None else (1000 if conv else 100)
    config = CBPConfig(form=form, rate=rate, maturity=maturity)
    return engine.replace(step_hook=cbp_hook(config, tx=engine.tx))


def _stage_name(method: Method, t: int, shared_first: bool) -> str:
    return "s000" if t == 0 and shared_first else f"{method.name}_s{t:03d}"


def run_staged(stages: Stages, *, pool_idx, chunk: int, methods: Sequence[Method],
               num_stages: int | None = None, probe: int = 500) -> dict[str, list[StagedRound]]:
    """Runs every ``method`` through the staged protocol on ``pool_idx`` (``(n,)`` or a row per
    seed) in chunks of ``chunk``; returns ``{method name: [StagedRound per stage]}``.

    Resumable like the online protocol: ``staged.json`` in the run directory records every
    finished stage, and only each arm's latest finished stage keeps its checkpoint. Arms may
    be added to (or left out of) a run: each has its own record.
    """
    pool_idx = np.asarray(pool_idx, np.int32)
    total = pool_idx.shape[-1] // chunk
    if total < 1:
        raise ValueError(f"chunk={chunk} is larger than the pool ({pool_idx.shape[-1]})")
    num_stages = total if num_stages is None else min(num_stages, total)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique; got {names}")
    own = {m.name: stages.with_engine(_engine_for(m, stages.engine)) for m in methods
           if m.kind in OWN_TRAINING}
    runner = {m.name: own.get(m.name, stages) for m in methods}
    helpers = {name: Interventions(s, chunk=chunk, probe=probe) for name, s in runner.items()}
    book_path = stages.run.path / "staged.json"
    book = json.loads(book_path.read_text()) if book_path.exists() else {"rounds": {}}
    for n in names:  # an arm added to a run starts from stage 0 beside the finished ones
        book["rounds"].setdefault(n, [])
    states, theta0 = {}, stages.fresh("s000")["params"]
    first = {}  # the shared stage 0's record, measured once for every arm that shares it

    def trained_at(m: Method, t: int):
        """Arm ``m``'s states after stage ``t`` (restored from disk when not in memory)."""
        stage = _stage_name(m, t, m.name not in own)
        if stage not in states:
            idx = pool_idx[..., : (t + 1) * chunk]
            states[stage] = runner[m.name].train(stage, stages.fresh("s000"), idx).states
        return states[stage]

    for t in range(num_stages):
        idx = pool_idx[..., : (t + 1) * chunk]
        prev = pool_idx[..., : t * chunk] if t else None
        for m in methods:
            if len(book["rounds"][m.name]) > t:
                continue
            s, h = runner[m.name], helpers[m.name]
            stage = _stage_name(m, t, m.name not in own)
            if stage in first:
                record = first[stage]
            else:
                if t == 0:
                    variables, opt_state, extra = stages.fresh("s000"), None, None
                else:
                    variables, opt_state, extra = h.start(m, trained_at(m, t - 1), stage, idx)
                    # Training donates its inputs; the previous stage's states may start other
                    # arms too, so each arm trains on its own copy.
                    variables, opt_state, extra = jax.tree.map(jnp.copy,
                                                               (variables, opt_state, extra))
                start = h.diagnostics(s.engine.new_state(variables, opt_state, extra), theta0,
                                      idx, prev)
                trained = s.train(stage, variables, idx, opt_state=opt_state, extra=extra)
                states[stage] = trained.states
                end = h.diagnostics(trained.states, theta0, idx, prev)
                record = to_json(StagedRound(t, idx.shape[-1], trained.result.seeds, start, end))
                if t == 0:
                    first[stage] = record
            book["rounds"][m.name].append(record)
            write_json(book_path, book)
            rows = record["seeds"]
            stages.progress.note(
                f"stage {t:3d} n={idx.shape[-1]:6d} {m.name:>8}: test acc "
                f"{np.mean([r['test_acc'] or 0 for r in rows]) * 100:.2f}%  epochs "
                f"{np.mean([r['epochs'] for r in rows]):.1f}  dormant "
                f"{np.mean(record['end']['dormant']) * 100:.1f}%")
        if t >= 1:
            # Resuming needs only each arm's latest stage.
            for m in methods:
                old = _stage_name(m, t - 1, m.name not in own)
                if states.pop(old, None) is not None or t == 1:
                    runner[m.name].drop(old)
    return {n: from_plain(list[StagedRound], book["rounds"][n][:num_stages]) for n in names}
