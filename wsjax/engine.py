"""The engine: one object that owns every batch decision of training and evaluation.

An ``Engine`` is a model and an optimizer plus the decisions that shape every pass over data:
batch size (training and evaluation), normalization and augmentation, input shape, loss,
loop kind and parallel layout. Everything it offers works on R replicas (seeds) stacked on a
leading axis:

- ``init`` / ``new_state``: fresh variables per replica key; a ``TrainState`` placed on the
  devices;
- ``epoch`` (one compiled call: mapped over replicas, a ``lax.fori_loop`` over batches
  gathered on the device from the uint8 dataset) and ``fit`` (epochs until each replica's
  ``StopRule``);
- ``evaluate``, ``predict``, ``grad_norms``, ``recompute_batch_stats``: passes over
  ``x[idx]`` in the padded batches of ``wsjax.data.padded_batches`` (every example once).

Loop kind: ``'device'`` compiles a whole pass into one call; ``'host'`` calls one compiled
batch at a time from Python (still no host sync per batch). ``'auto'`` picks ``'host'`` only
for conv nets on a CPU, where XLA runs convolutions inside compiled loops 30-40x slower
(``wsjax.train.default_loop``). Replicas are vmapped, or unrolled (one copy of the step per
replica) for conv nets on a CPU, where a vmapped convolution is a slow grouped one
(``wsjax.replicas``). Either choice gives the same numbers. Sharding is applied at the
boundary through an optional ``wsjax.parallel.DataParallel``.

>>> engine = Engine(create_model("mlp", 10), make_optimizer("adam", 1e-3), batch_size=128)
>>> keys = replica_keys(range(4))                    # 4 seeds, trained at once
>>> states = engine.init_states(keys)
>>> states, progress = engine.fit(states, keys, x, y, train_idx, StopRule())
>>> engine.evaluate(states, x, y, val_idx)["acc"]     # one accuracy per seed
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax.augment import NORMALIZATIONS, make_preprocess, normalize
from wsjax.data import padded_batches
from wsjax.distill import Distillation
from wsjax.freeze import freeze
from wsjax.models import init_variables
from wsjax.objectives import Objective
from wsjax.parallel import DataParallel
from wsjax.replicas import check_replicas, replica_map, resolve_replicas
from wsjax.train import (DivergenceGuard, FitProgress, StepHook, StopRule, TrainState,
                         fold_in_replicas, make_train_step, metric_sums, pad_indices,
                         resolve_loop, summarize)
from wsjax.warmstart import batch_statistics


class Engine:
    """Trains and evaluates R replicas of ``model`` with ``tx``; see the module docstring.

    ``batch_size`` is training's (the study's 128, last batch partial); ``eval_batch_size``
    that of evaluation and prediction. ``normalization`` and ``augmentations`` name the
    entries of ``wsjax.augment`` applied inside the compiled step (evaluation normalizes only).
    ``input_shape`` is one example's (H, W, C). ``objective`` is the training loss (default
    mean cross-entropy) and ``after_update(params, key) -> params`` runs after every optimizer
    step (e.g. shrink-perturb at every step); ``step_hook`` (a ``wsjax.train.StepHook``, e.g.
    continual backprop) after that, with the step's activations and its own state. ``guard``
    (a ``wsjax.train.DivergenceGuard``; None turns it off) decides when a step has diverged:
    the step is not applied, and ``fit`` stops that replica with stop reason ``'diverged'``
    while the others go on. ``frozen`` names layers (path prefixes, ``wsjax.freeze``) that
    training leaves alone: no optimizer step, BatchNorm running averages kept. ``loop`` and
    ``replicas`` (``'auto'``, or as in the module docstring) decide how the compiled program
    is laid out, never what it computes.
    ``distill`` (a ``wsjax.distill.Distillation``) trains against a teacher whose variables
    each replica's state carries (``new_state(variables, extra=teacher_variables)``).
    ``replace(**changes)`` gives an engine with other decisions (another batch size for a
    sweep cell).
    """

    def __init__(self, model: nn.Module, tx: optax.GradientTransformation, *,
                 batch_size: int = 128, eval_batch_size: int = 1000,
                 normalization: str = "study", augmentations=(), input_shape=(32, 32, 3),
                 loop: str = "auto", replicas: str = "auto",
                 parallel: DataParallel | None = None, objective: Objective | None = None,
                 after_update: Callable | None = None, step_hook: StepHook | None = None,
                 guard: DivergenceGuard | None = DivergenceGuard(), frozen: Sequence[str] = (),
                 distill: Distillation | None = None):
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"Engine({name}={value!r}): must be a positive integer")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose from "
                             f"{sorted(NORMALIZATIONS)}")
        self._options = dict(batch_size=batch_size, eval_batch_size=eval_batch_size,
                             normalization=normalization, augmentations=tuple(augmentations),
                             input_shape=tuple(input_shape), loop=loop, replicas=replicas,
                             parallel=parallel, objective=objective, after_update=after_update,
                             step_hook=step_hook, guard=guard, frozen=tuple(frozen),
                             distill=distill)
        self.model, self.tx = model, tx
        # Frozen layers (wsjax.freeze): no optimizer step, running averages kept.
        train_tx = freeze(tx, frozen) if frozen else tx
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.normalization, self.input_shape = normalization, tuple(input_shape)
        self.parallel = parallel
        self.loop = resolve_loop(loop, model, self.input_shape)
        self.replicas = resolve_replicas(replicas, model, self.input_shape, parallel)
        self._spmd = parallel.spmd_axis_name if parallel is not None else None
        self.epoch = make_epoch_fn(
            model, train_tx, batch_size=batch_size, loop=self.loop, replicas=self.replicas,
            parallel=parallel,
            preprocess=make_preprocess(augmentations, normalization), objective=objective,
            after_update=after_update, step_hook=step_hook, guard=guard, frozen=tuple(frozen),
            distill=distill)
        self.step_hook, self.distill = step_hook, distill
        # Built once: new_state runs at every stage, and a fresh jit would recompile each time.
        # Made where the layout wants them: on a mesh over several processes an array left on
        # one process's device could not join the others.
        placed = {} if parallel is None else {"out_shardings": parallel.state_sharding}
        self._hook_init = (jax.jit(jax.vmap(step_hook.init), **placed)
                           if step_hook is not None else None)
        self._init = jax.jit(jax.vmap(lambda k: init_variables(model, k, self.input_shape)),
                             **placed)
        self._create = jax.jit(jax.vmap(lambda v: TrainState.create(v, train_tx)), **placed)
        self._passes: dict[str, Callable] = {}  # compiled on first use

    def replace(self, **changes) -> Engine:
        """An engine with some decisions changed (keyword arguments of ``Engine``)."""
        unknown = set(changes) - set(self._options) - {"model", "tx"}
        if unknown:
            raise ValueError(f"Engine has no option {sorted(unknown)}")
        model, tx = changes.pop("model", self.model), changes.pop("tx", self.tx)
        return Engine(model, tx, **{**self._options, **changes})

    # --- replicas --------------------------------------------------------------------------

    def init(self, keys) -> dict:
        """Fresh ``{'params', 'batch_stats'}`` for each key (leading replica axis)."""
        return self._init(keys)

    def new_state(self, variables: dict, opt_state=None, extra=None) -> TrainState:
        """A ``TrainState`` at step 0 from stacked ``variables``, with a fresh optimizer state
        (the study starts every round with one) unless ``opt_state`` is given, and the step
        hook's fresh state unless ``extra`` is given (with ``distill``, ``extra`` is the
        teacher's stacked variables, and required); placed on the devices."""
        state = self._create(variables)
        if opt_state is not None:
            state = state.replace(opt_state=opt_state)
        if self.step_hook is not None and extra is None:
            extra = self._hook_init(state.params)
        if self.distill is not None and extra is None:
            raise ValueError("a distilling engine trains against a teacher: pass the teacher's "
                             "stacked variables as new_state(..., extra=teacher_variables)")
        if extra is not None:
            # A copy: the epoch donates the state, which would delete the caller's arrays.
            state = state.replace(extra=jax.tree.map(jnp.array, extra))
        return self.place(state)

    def init_states(self, keys) -> TrainState:
        """``new_state(init(keys))``: one freshly initialized state per key."""
        return self.new_state(self.init(keys))

    def place(self, tree):
        """Puts a tree with a leading replica axis where the layout wants it."""
        return self.parallel.place_state(tree) if self.parallel is not None else tree

    def put(self, tree):
        """Puts dataset arrays on the devices (each device holds all of them, or its share
        when the mesh spans processes: ``wsjax.parallel.DataParallel.place_data``)."""
        return self.parallel.place_data(tree) if self.parallel is not None else \
            jax.device_put(tree)

    # --- training --------------------------------------------------------------------------

    def fit(self, states: TrainState, keys, x, y, idx, stop: StopRule, *,
            capacity: int | None = None, progress: FitProgress | None = None,
            on_epoch: Callable[[TrainState, FitProgress], None] | None = None):
        """Trains every replica until its ``stop`` rule fires; returns ``(states, progress)``.

        ``keys`` are per-replica keys for this run; epoch e of replica r uses
        ``fold_in(keys[r], e)``, so a run resumed from ``progress`` (and the states saved with
        it) continues exactly as an uninterrupted one. ``idx`` (numpy) selects the training
        examples of ``x``/``y`` (device arrays); ``capacity`` pads it (``pad_indices``) so
        training sets of other sizes reuse the compiled epoch. ``on_epoch(states, progress)``
        runs after every epoch. ``idx`` of shape ``(R, n)`` gives each replica its own
        examples (see ``make_epoch_fn``). Per-replica ``seconds`` count the wall time of the
        epochs a replica was active in (replicas share the program, so they share the time);
        compiling the epoch comes first, timed apart in ``progress.compile_seconds``. A replica
        whose step diverges (the engine's ``guard``) keeps its last finite state and stops with
        stop reason ``'diverged'`` (``progress.diverged_at`` says when); the others go on.
        """
        num_replicas = len(jax.tree.leaves(states)[0])
        progress = progress or FitProgress.start(num_replicas)
        padded, n = pad_indices(idx, capacity)
        idx_dev = self._put_idx(padded)
        states = self.place(states)  # states made on one device (e.g. restored) join the mesh
        if not progress.finished:  # compiled before the first epoch's timer starts
            progress.compile_seconds += self.epoch.compile(
                states, self.place(fold_in_replicas(keys, progress.epoch)),
                self.place(jnp.asarray(progress.active)), x, y, idx_dev, n)
        while not progress.finished:
            epoch_keys = self.place(fold_in_replicas(keys, progress.epoch))
            active = self.place(jnp.asarray(progress.active))
            start = time.perf_counter()
            states, sums = self.epoch(states, epoch_keys, active, x, y, idx_dev, n)
            summary = summarize(sums)  # the one host sync of the epoch
            seconds = time.perf_counter() - start
            last = progress.history[-1] if progress.history else None
            record = {"train_acc": [], "train_loss": [], "seconds": seconds}
            for r in range(num_replicas):
                was_active = progress.active[r]
                for key, name in (("acc", "train_acc"), ("loss", "train_loss")):
                    value = float(summary[key][r]) if was_active else None
                    # A stopped replica, or one that diverged at its epoch's first step,
                    # repeats its last value (None before it has one): never NaN.
                    if value is None or not np.isfinite(value):
                        value = last[name][r] if last is not None else None
                    record[name].append(value)
                if was_active:
                    progress.epochs[r] += 1
                    progress.seconds[r] += seconds
            progress.history.append(record)
            for r in range(num_replicas):
                if not progress.active[r]:
                    continue
                step = int(summary["diverged"][r])
                reason = "diverged" if step else stop.reason(progress.train_acc(r))
                if reason:
                    progress.active[r], progress.stop_reason[r] = False, reason
                if step:
                    progress.diverged_at[r] = [progress.epoch, step]
            if on_epoch is not None:
                on_epoch(states, progress)
        return states, progress

    # --- passes over data ------------------------------------------------------------------

    def _normalize(self, images):
        mean, std = NORMALIZATIONS[self.normalization]
        return normalize(images, mean, std)

    def _images(self, x, ids):
        return self._normalize(x[ids])

    def _constrain(self, tree):
        return self.parallel.constrain_batch(tree) if self.parallel is not None else tree

    def _put_idx(self, idx, per_replica: bool | None = None):
        """Index arrays on the devices: shared ones replicated, per-replica ones (a leading
        replica axis: ``per_replica``, by default when 2-d) placed like the replicas."""
        idx = jnp.asarray(idx)
        per_replica = idx.ndim == 2 if per_replica is None else per_replica
        if per_replica:
            return self.place(idx)
        return self.parallel.place_replicated(idx) if self.parallel is not None else idx

    def _pass(self, name: str, fn: Callable, reduce: str, per_replica_ids: bool = False
              ) -> Callable:
        """Compiles (once per ``name`` and index layout) ``run(states, ids, mask, x,
        y=None)``: ``fn(replica, ids, mask, x, y)`` of one replica for one batch, applied to
        every replica (``wsjax.replicas.replica_map``) and every batch of the
        ``(num_batches, batch)`` arrays ``ids`` and ``mask`` (``(R, num_batches, batch)``
        with ``per_replica_ids``: each replica its own examples); its outputs are summed over
        batches (``reduce='sum'``) or concatenated along the example axis (``'concat'``)."""
        key = (name, per_replica_ids)
        if key in self._passes:
            return self._passes[key]
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        axis = 0 if per_replica_ids else None
        vmapped = lambda f: replica_map(f, (0, axis, axis, None, None), self.replicas,
                                        self._spmd)

        if self.loop == "host":
            one = jax.jit(vmapped(fn))

            def run(states, ids, mask, x, y=None):
                batch = (lambda a, i: a[:, i]) if per_replica_ids else (lambda a, i: a[i])
                outs = [one(states, batch(ids, i), batch(mask, i), x, y)
                        for i in range(ids.shape[-2])]
                if reduce == "concat":
                    return jnp.concatenate(outs, axis=1)
                total = outs[0]
                for out in outs[1:]:
                    total = add(total, out)
                return total
        else:
            def per_replica(replica, ids, mask, x, y):
                if reduce == "concat":
                    out = jax.lax.map(lambda b: fn(replica, b[0], b[1], x, y), (ids, mask))
                    return out.reshape(-1, *out.shape[2:])
                first = jax.eval_shape(fn, replica, ids[0], mask[0], x, y)
                zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
                body = lambda total, b: (add(total, fn(replica, b[0], b[1], x, y)), None)
                return jax.lax.scan(body, zeros, (ids, mask))[0]

            compiled = jax.jit(vmapped(per_replica))
            run = lambda states, ids, mask, x, y=None: compiled(states, ids, mask, x, y)

        self._passes[key] = run
        return run

    def _batches(self, idx, batch_size: int):
        """``padded_batches`` of ``idx`` (each row of a per-replica ``(R, n)`` array)."""
        idx = np.asarray(idx)
        if idx.ndim == 2:
            ids, mask = zip(*(padded_batches(row, batch_size) for row in idx))
            return (self._put_idx(np.stack(ids), True), self._put_idx(np.stack(mask), True))
        ids, mask = padded_batches(idx, batch_size)
        return jnp.asarray(ids), jnp.asarray(mask)

    def _run_pass(self, name, fn, reduce, replicas, idx, batch_size, x, y=None):
        """``fn`` over ``x[idx]`` in batches for every replica (see ``_pass``)."""
        per_replica = np.ndim(idx) == 2
        run = self._pass(name, fn, reduce, per_replica)
        return run(replicas, *self._batches(idx, batch_size), x, y)

    def evaluate(self, states: TrainState, x, y, idx) -> dict[str, np.ndarray]:
        """Exact evaluation of every replica on ``x[idx]`` (every example counts once; the
        model in inference mode): per-replica ``{'acc', 'loss'}`` numpy arrays."""
        def batch_sums(state, ids, mask, x, y):
            batch = self._constrain({"image": x[ids], "label": y[ids], "mask": mask})
            logits = self.model.apply(state.variables, self._normalize(batch["image"]),
                                      train=False)
            return metric_sums(logits, batch["label"], batch["mask"])

        return summarize(self._run_pass("evaluate", batch_sums, "sum", states, idx,
                                        self.eval_batch_size, x, y))

    def predict(self, states: TrainState, x, idx) -> jax.Array:
        """``(R, n, C)``: each replica's softmax on ``x[idx]`` (``idx`` of ``n`` examples, or a
        row of ``n`` per replica) in inference mode."""
        def probs(state, ids, mask, x, _):
            return jax.nn.softmax(self.model.apply(state.variables, self._images(x, ids),
                                                   train=False))

        out = self._run_pass("predict", probs, "concat", states, idx, self.eval_batch_size, x)
        return out[:, : np.shape(idx)[-1]]

    def grad_norms(self, states: TrainState, x, y, idx, batch_size: int | None = None):
        """``(R,)``: for each replica, the mean over the whole batches of ``x[idx]`` (in
        order, ``batch_size`` default the engine's) of the L2 norm of the gradient of the
        batch's mean cross-entropy. BatchNorm uses batch statistics, as in training; the
        running averages are left alone."""
        batch_size = batch_size or self.batch_size
        whole = np.shape(idx)[-1] // batch_size
        if whole == 0:
            raise ValueError(f"need at least batch_size={batch_size} examples, got "
                             f"{np.shape(idx)[-1]}")

        def grad_norm(state, ids, mask, x, y):
            images, labels = self._images(x, ids), y[ids]

            def loss(params):
                variables = {"params": params, "batch_stats": state.batch_stats}
                if jax.tree.leaves(state.batch_stats):
                    logits, _ = self.model.apply(variables, images, train=True,
                                                 mutable=["batch_stats"])
                else:
                    logits = self.model.apply(variables, images, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            # Written out: optax renamed its tree norm in 0.2.5 (tree_l2_norm -> tree_norm) and
            # we support 0.2.4, so neither name works warning-free on every supported version.
            grads = jax.tree.leaves(jax.grad(loss)(state.params))
            return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads))

        idx = np.asarray(idx)[..., : whole * batch_size]
        total = self._run_pass("grad_norms", grad_norm, "sum", states, idx, batch_size, x, y)
        return total / whole

    def recompute_batch_stats(self, params, batch_stats, x, idx, key, num_batches: int = 20):
        """Every replica's BatchNorm running statistics recomputed, with its weights held
        fixed, as the mean of the batch statistics of up to ``num_batches`` training-size
        batches drawn from ``x[idx]`` without replacement by ``key`` (the same images for
        every replica; the same positions of each replica's row for a per-replica ``idx``);
        see ``wsjax.warmstart.batch_statistics``. Models without BatchNorm return
        ``batch_stats`` unchanged."""
        if not jax.tree.leaves(batch_stats):
            return batch_stats
        idx = np.asarray(idx)
        available = idx.shape[-1]
        num_batches = max(1, min(num_batches, available // self.batch_size))
        size = min(available, num_batches * self.batch_size)
        pick = np.asarray(jax.random.choice(key, available, (size,), replace=False))
        batch = min(self.batch_size, size)
        ids = idx[..., pick[: (size // batch) * batch]]

        def stats_of(replica, ids, mask, x, _):
            return batch_statistics(self.model, *replica, self._images(x, ids))

        total = self._run_pass("recompute_batch_stats", stats_of, "sum",
                               (params, batch_stats), ids, batch, x)
        return jax.tree.map(lambda s: s / (ids.shape[-1] // batch), total)


def make_epoch_fn(model: nn.Module, tx: optax.GradientTransformation, *, batch_size: int,
                  loop: str = "device", replicas: str = "vmap",
                  preprocess: Callable | None = None, parallel: DataParallel | None = None,
                  jit: bool = True,
                  objective: Objective | None = None, after_update: Callable | None = None,
                  step_hook: StepHook | None = None,
                  guard: DivergenceGuard | None = DivergenceGuard(), frozen=(),
                  distill: Distillation | None = None):
    """Returns ``epoch(states, keys, active, x, y, idx, n) -> (states, metrics)``; an
    ``Engine`` builds it once (``Engine.epoch``).

    Trains every replica (leading axis of ``states``, ``keys``, ``active``) for one epoch over
    ``x[idx[:n]]`` in a fresh random order per replica, in ``ceil(n / batch_size)`` steps (the
    last partial). ``x``/``y`` are the whole uint8 training set and labels on the device;
    ``idx`` is padded to a fixed capacity (``pad_indices``) so a new ``n`` does not recompile.
    ``idx`` of shape ``(capacity,)`` is every replica's; ``(R, capacity)`` gives each replica
    its own examples (per-seed splits), ``n`` of them each.
    A replica whose ``active`` flag is off comes out unchanged. ``metrics`` are per-replica
    sums over the epoch's applied steps, and ``diverged``: the 1-based step at which ``guard``
    found a replica's step diverged (0: none); that step and every later one of the epoch are
    not applied, so the replica keeps its last finite state. ``states`` is donated when
    jitted.

    ``loop='device'`` compiles the whole epoch into one call (a ``lax.fori_loop`` over steps,
    no host round trip); ``'host'`` dispatches one compiled step per batch from Python (still
    no host sync: batches are gathered on the device); both give the same result.
    ``replicas`` maps the step over the replica axis (``wsjax.replicas.replica_map``:
    ``'vmap'``, or ``'unroll'`` for conv nets on a CPU); the same result either way.
    ``jit=False`` returns the un-jitted device-loop function (for tracing tests).
    ``preprocess``, ``objective``, ``after_update``, ``step_hook``, ``guard``, ``frozen`` and
    ``distill`` go to ``make_train_step``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if loop not in ("device", "host"):
        raise ValueError(f"loop={loop!r} must be 'device' or 'host' (an Engine resolves 'auto')")
    check_replicas(replicas, parallel, "'vmap' or 'unroll' (an Engine resolves 'auto')")
    if not jit and loop == "host":
        raise ValueError("jit=False gives the device loop as one traceable function; the host "
                         "loop is a Python loop over a compiled step: use loop='device'")
    step = make_train_step(model, tx, preprocess, objective=objective,
                           after_update=after_update, step_hook=step_hook, guard=guard,
                           frozen=frozen, distill=distill)
    constrain = parallel.constrain_batch if parallel is not None else (lambda t: t)
    spmd = parallel.spmd_axis_name if parallel else None

    def prepare(key, idx, n):
        perm_key, step_key = jax.random.split(key)
        capacity = idx.shape[0]
        # Valid positions get uniform sort keys and padding sorts last, so the first n
        # entries are a uniform random permutation of the training set, for any n.
        sort_keys = jnp.where(jnp.arange(capacity) < n, jax.random.uniform(perm_key, (capacity,)),
                              2.0)
        order = jnp.concatenate([jnp.argsort(sort_keys), jnp.zeros(batch_size, jnp.int32)])
        zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
        return order, step_key, {**zeros, "diverged": jnp.zeros((), jnp.int32)}

    def train_batch(i, state, totals, order, step_key, active, x, y, idx, n):
        pos = jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,))
        ids = idx[pos]
        batch = constrain({"image": x[ids], "label": y[ids],
                           "mask": i * batch_size + jnp.arange(batch_size) < n})
        new, sums = step(state, batch, jax.random.fold_in(step_key, i))
        running = active & (totals["diverged"] == 0)
        diverged = sums.pop("diverged") > 0
        keep = running & ~diverged
        new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
        totals = {**{k: totals[k] + jnp.where(keep, v, 0.0) for k, v in sums.items()},
                  "diverged": jnp.where(running & diverged, i + 1, totals["diverged"])}
        return new, totals

    def one_replica(state, key, active, x, y, idx, n):
        order, step_key, zeros = prepare(key, idx, n)
        body = lambda i, c: train_batch(i, *c, order, step_key, active, x, y, idx, n)
        return jax.lax.fori_loop(0, (n + batch_size - 1) // batch_size, body, (state, zeros))

    def idx_axis(idx):
        """The vmapped axis of ``idx``: none when every replica shares it."""
        return 0 if idx.ndim == 2 else None

    if loop == "device":
        def epoch(states, keys, active, x, y, idx, n):
            return replica_map(one_replica, (0, 0, 0, None, None, idx_axis(idx), None),
                               replicas, spmd)(states, keys, active, x, y, idx, n)
        if not jit:
            return epoch
        shard = {} if parallel is None else {"out_shardings": (parallel.state_sharding,) * 2}
        jitted = jax.jit(epoch, donate_argnums=0, **shard)
        return EpochFn(jitted, lambda *args: jitted.lower(*args).compile())

    shard = {} if parallel is None else {"out_shardings": (parallel.state_sharding,) * 2}

    def prepare_all(keys, idx, n):
        return jax.vmap(prepare, in_axes=(0, idx_axis(idx), None), spmd_axis_name=spmd)(
            keys, idx, n)

    def step_all(i, states, totals, order, step_keys, active, x, y, idx, n):
        return replica_map(train_batch, (None, 0, 0, 0, 0, 0, None, None, idx_axis(idx), None),
                           replicas, spmd)(i, states, totals, order, step_keys, active, x, y,
                                           idx, n)

    # Sharded like the replicas, so the step compiled ahead (``compile_host``, from these very
    # outputs) is the one the epoch calls.
    prepare_all = jax.jit(prepare_all, **({} if parallel is None else
                                          {"out_shardings": parallel.state_sharding}))
    step_all = jax.jit(step_all, donate_argnums=(1, 2), **shard)

    def host_epoch(states, keys, active, x, y, idx, n):
        n = int(n)
        order, step_keys, totals = prepare_all(keys, idx, n)
        for i in range((n + batch_size - 1) // batch_size):
            states, totals = step_all(i, states, totals, order, step_keys, active, x, y, idx, n)
        return states, totals

    def compile_host(states, keys, active, x, y, idx, n):
        n = int(n)
        # Run for real (cheap): its outputs carry the shardings the step will be called with.
        order, step_keys, totals = prepare_all(keys, idx, n)
        step_all.lower(0, states, totals, order, step_keys, active, x, y, idx, n).compile()

    return EpochFn(host_epoch, compile_host)


class EpochFn:
    """The epoch function of ``make_epoch_fn``: call it as ``epoch(states, keys, active, x, y,
    idx, n)``; ``compile`` with the same arguments compiles it ahead of the first call."""

    def __init__(self, fn: Callable, compile_for: Callable):
        self._fn, self._compile_for, self._compiled = fn, compile_for, set()

    def __call__(self, *args):
        return self._fn(*args)

    def compile(self, *args) -> float:
        """Compiles the epoch for the shapes of ``args`` (the call's arguments) unless it was
        compiled for them before; returns the seconds it took (0.0 when it had been). Timers
        that start after this leave compiling out."""
        signature = str(jax.tree.map(lambda a: (np.shape(a), str(getattr(a, "dtype", type(a)))),
                                     args))
        if signature in self._compiled:
            return 0.0
        start = time.perf_counter()
        self._compile_for(*args)
        self._compiled.add(signature)
        return time.perf_counter() - start
