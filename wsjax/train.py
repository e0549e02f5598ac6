"""The training engine: a pure train step, a whole epoch as one compiled call, many seeds at once.

Layers, from the inside out:

- ``make_train_step(model, tx, preprocess)`` -> ``step(state, batch, key) -> (state, metrics)``:
  pure, one replica, one batch of uint8 images with a validity mask (the last batch of an epoch
  is partial, as in PyTorch with ``drop_last=False``).
- ``make_epoch_fn`` -> one jitted call that trains R replicas for an epoch: ``jax.vmap`` over
  replicas (each has its own parameters, init and data order), a ``lax.fori_loop`` over
  batches gathered on the device from the uint8 dataset, no host round trip per step. A
  replica whose ``active`` flag is off comes out unchanged. (Conv nets on a CPU use a host
  loop over the compiled step instead: XLA:CPU is 30-40x slower at convolutions inside loops.)
- ``fit`` runs epochs until every replica meets its ``StopRule``; it reads the metrics once per
  epoch (the stop rule needs them) and hands each epoch to an ``on_epoch`` callback, which is
  where callers log and checkpoint. ``FitProgress`` is everything needed to resume.

Sharding is applied at the boundary through an optional ``wsjax.parallel.DataParallel``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax.augment import NORMALIZATIONS, make_preprocess, normalize
from wsjax.models import init_variables
from wsjax.objectives import Objective
from wsjax.parallel import DataParallel


@flax.struct.dataclass
class TrainState:
    """What changes during training. The model and optimizer are static and live in closures."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
        """A state at step 0 with a fresh optimizer state for ``variables['params']``."""
        params = variables["params"]
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def _metric_sums(logits, labels, mask):
    """Summed cross-entropy and correct count over the valid examples, plus their count."""
    mask = mask.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    preprocess: Callable | None = None, *, objective: Objective | None = None,
                    after_update: Callable | None = None):
    """Returns the pure ``step(state, batch, key) -> (state, metrics)`` for one replica.

    ``batch`` has ``image`` (uint8 NHWC), ``label`` (int) and ``mask`` (bool: which rows are
    real). The loss is ``objective`` (default: mean cross-entropy) over real rows; BatchNorm
    statistics use only them. ``preprocess(key, images)`` augments and normalizes (default:
    the study's [-1, 1]). ``after_update(params, key) -> params``, when given, transforms the
    parameters after every optimizer step (e.g. shrink-perturb at every step).
    ``metrics`` holds sums (``loss_sum`` of the cross-entropy, ``correct``, ``count``) so
    epochs add up exactly.
    """
    preprocess = preprocess or make_preprocess()
    objective = objective or Objective()

    def step(state: TrainState, batch: dict, key):
        aug_key, after_key = jax.random.split(key)
        images = preprocess(aug_key, batch["image"])
        mask = batch["mask"]
        has_bn = bool(jax.tree.leaves(state.batch_stats))

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}

            def apply(x):
                if has_bn:
                    logits, updates = model.apply(variables, x, train=True, mask=mask,
                                                  mutable=["batch_stats"])
                    return logits, updates["batch_stats"]
                return model.apply(variables, x, train=True), state.batch_stats

            return objective.loss(apply, images, batch["label"], mask)

        grads, (logits, new_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if after_update is not None:
            params = after_update(params, after_key)
        return state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                             opt_state=opt_state), _metric_sums(logits, batch["label"], mask)

    return step


def replica_keys(seeds) -> jax.Array:
    """One typed PRNG key per replica seed; replica r's randomness depends on seeds[r] only."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))


def init_replicas(model: nn.Module, tx: optax.GradientTransformation, keys,
                  input_shape=(32, 32, 3)) -> TrainState:
    """Independent initializations, one per key, stacked on a leading replica axis."""
    return jax.jit(jax.vmap(lambda k: TrainState.create(init_variables(model, k, input_shape),
                                                        tx)))(keys)


def pad_indices(idx, capacity: int | None = None) -> tuple[np.ndarray, int]:
    """Pads an index array to ``capacity`` (so training sets of different sizes share one
    compiled epoch) and returns ``(padded, n_valid)``."""
    idx = np.asarray(idx, dtype=np.int32)
    capacity = len(idx) if capacity is None else capacity
    if len(idx) > capacity:
        raise ValueError(f"{len(idx)} indices exceed capacity {capacity}")
    if len(idx) == 0:
        raise ValueError("an empty training set cannot be trained on")
    return np.pad(idx, (0, capacity - len(idx))), len(idx)


def has_conv(model: nn.Module, input_shape=(32, 32, 3)) -> bool:
    """Whether ``model`` has convolution kernels (4-d parameters); checked on shapes only."""
    shapes = jax.eval_shape(lambda k: init_variables(model, k, input_shape), jax.random.key(0))
    return any(leaf.ndim == 4 for leaf in jax.tree.leaves(shapes["params"]))


def default_loop(model: nn.Module, input_shape=(32, 32, 3)) -> str:
    """``'device'`` (the epoch as one compiled loop) except for conv nets on a CPU.

    XLA:CPU runs convolutions inside a compiled loop (``while``/``scan``) 30-40x slower than
    the same step compiled alone (measured: narrow ResNet-18, 4 steps of batch 128, 93 s in a
    ``scan`` vs 2.5 s unrolled), so there the epoch is a host loop over a compiled step.
    """
    cpu = jax.default_backend() == "cpu"
    return "host" if cpu and has_conv(model, input_shape) else "device"


def _resolve_loop(loop: str, model: nn.Module, input_shape) -> str:
    if loop == "auto":
        return default_loop(model, input_shape)
    if loop not in ("device", "host"):
        raise ValueError(f"loop={loop!r} must be 'device', 'host' or 'auto'")
    return loop


def make_epoch_fn(model: nn.Module, tx: optax.GradientTransformation, *, batch_size: int,
                  preprocess: Callable | None = None, parallel: DataParallel | None = None,
                  jit: bool = True, loop: str = "auto", input_shape=(32, 32, 3),
                  objective: Objective | None = None, after_update: Callable | None = None):
    """Returns ``epoch(states, keys, active, x, y, idx, n) -> (states, metrics)``.

    Trains every replica (leading axis of ``states``, ``keys``, ``active``) for one epoch over
    ``x[idx[:n]]`` in a fresh random order per replica, in ``ceil(n / batch_size)`` steps (the
    last partial). ``x``/``y`` are the whole uint8 training set and labels on the device;
    ``idx`` is padded to a fixed capacity (``pad_indices``) so a new ``n`` does not recompile.
    A replica whose ``active`` flag is off comes out unchanged. ``metrics`` are per-replica
    sums over the epoch. ``states`` is donated when jitted.

    ``loop='device'`` compiles the whole epoch into one call (a ``lax.fori_loop`` over steps,
    no host round trip); ``'host'`` dispatches one compiled step per batch from Python (still no
    host sync: batches are gathered on the device); ``'auto'`` picks with ``default_loop``.
    Both give the same result. ``jit=False`` returns the un-jitted device-loop function.
    ``objective`` and ``after_update`` go to ``make_train_step``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    loop = _resolve_loop(loop, model, input_shape)
    step = make_train_step(model, tx, preprocess, objective=objective,
                           after_update=after_update)
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
        return order, step_key, zeros

    def train_batch(i, state, totals, order, step_key, active, x, y, idx, n):
        pos = jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,))
        ids = idx[pos]
        batch = constrain({"image": x[ids], "label": y[ids],
                           "mask": i * batch_size + jnp.arange(batch_size) < n})
        new, sums = step(state, batch, jax.random.fold_in(step_key, i))
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
        return new, jax.tree.map(jnp.add, totals, sums)

    def one_replica(state, key, active, x, y, idx, n):
        order, step_key, zeros = prepare(key, idx, n)
        body = lambda i, c: train_batch(i, *c, order, step_key, active, x, y, idx, n)
        return jax.lax.fori_loop(0, (n + batch_size - 1) // batch_size, body, (state, zeros))

    if loop == "device":
        epoch = jax.vmap(one_replica, in_axes=(0, 0, 0, None, None, None, None),
                         spmd_axis_name=spmd)
        if not jit:
            return epoch
        if parallel is None:
            return jax.jit(epoch, donate_argnums=0)
        s = parallel.state_sharding
        return jax.jit(epoch, donate_argnums=0, out_shardings=(s, s))

    shard = {} if parallel is None else {"out_shardings": (parallel.state_sharding,) * 2}
    prepare_all = jax.jit(jax.vmap(prepare, in_axes=(0, None, None), spmd_axis_name=spmd))
    step_all = jax.jit(jax.vmap(train_batch, in_axes=(None, 0, 0, 0, 0, 0, None, None, None,
                                                      None), spmd_axis_name=spmd),
                       donate_argnums=(1, 2), **shard)

    def host_epoch(states, keys, active, x, y, idx, n):
        n = int(n)
        order, step_keys, totals = prepare_all(keys, idx, n)
        for i in range((n + batch_size - 1) // batch_size):
            states, totals = step_all(i, states, totals, order, step_keys, active, x, y, idx, n)
        return states, totals

    return host_epoch


def make_eval_fn(model: nn.Module, *, batch_size: int = 1000, normalization: str = "study",
                 parallel: DataParallel | None = None, jit: bool = True, loop: str = "auto",
                 input_shape=(32, 32, 3)):
    """Returns ``evaluate(states, x, y, idx) -> metrics``: exact evaluation of every replica.

    Every example of ``x[idx]`` counts once: the last batch is padded and masked. Models run in
    inference mode (BatchNorm running statistics). ``metrics`` are per-replica sums
    (``loss_sum``, ``correct``, ``count``); see ``summarize``. ``loop`` as in
    ``make_epoch_fn``: ``'device'`` scans the batches in one compiled call, ``'host'`` calls
    a compiled batch from Python (conv nets on a CPU; no host sync until the sums are read).
    ``jit=False`` returns the un-jitted device-loop function.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}")
    loop = _resolve_loop(loop, model, input_shape)
    mean, std = NORMALIZATIONS[normalization]
    constrain = parallel.constrain_batch if parallel is not None else (lambda t: t)
    spmd = parallel.spmd_axis_name if parallel else None

    def batch_sums(state, x, y, ids, mask):
        batch = constrain({"image": x[ids], "label": y[ids], "mask": mask})
        logits = model.apply(state.variables, normalize(batch["image"], mean, std),
                             train=False)
        return _metric_sums(logits, batch["label"], batch["mask"])

    def batches(idx):
        num_batches = max(1, math.ceil(idx.shape[0] / batch_size))
        pad = num_batches * batch_size - idx.shape[0]
        ids = jnp.pad(idx, (0, pad)).reshape(num_batches, batch_size)
        mask = (jnp.arange(num_batches * batch_size) < idx.shape[0]).reshape(ids.shape)
        return ids, mask

    if loop == "host":
        one_batch = jax.jit(jax.vmap(batch_sums, in_axes=(0, None, None, None, None),
                                     spmd_axis_name=spmd))

        def host_evaluate(states, x, y, idx):
            ids, mask = batches(idx)
            totals = None
            for i in range(ids.shape[0]):
                sums = one_batch(states, x, y, ids[i], mask[i])
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            return totals

        return host_evaluate

    def one_replica(state, x, y, idx):
        def body(totals, inputs):
            return jax.tree.map(jnp.add, totals, batch_sums(state, x, y, *inputs)), None

        zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
        return jax.lax.scan(body, zeros, batches(idx))[0]

    evaluate = jax.vmap(one_replica, in_axes=(0, None, None, None), spmd_axis_name=spmd)
    return jax.jit(evaluate) if jit else evaluate


def summarize(sums) -> dict[str, np.ndarray]:
    """Per-replica sums -> per-replica ``{'acc', 'loss'}`` numpy arrays (one host transfer)."""
    sums = jax.device_get(sums)
    count = np.maximum(np.asarray(sums["count"]), 1.0)
    return {"acc": np.asarray(sums["correct"]) / count, "loss": np.asarray(sums["loss_sum"]) / count}


@dataclasses.dataclass(frozen=True)
class StopRule:
    """When a replica stops training (the study's rule).

    Stops at the first epoch whose *running* train accuracy (accumulated over the epoch's
    batches as they were trained) reaches ``threshold`` (0.99); or, with ``plateau_window``
    set, when the standard deviation of the last ``plateau_window`` epochs' train accuracy is
    below ``plateau_std`` (the reproduction's rule for models that cannot reach 99%: 3 epochs,
    0.002); or at ``max_epochs``.
    """

    threshold: float = 0.99
    max_epochs: int = 350
    plateau_window: int | None = None
    plateau_std: float = 0.002

    def __post_init__(self):
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs={self.max_epochs} must be at least 1")
        if self.plateau_window is not None and self.plateau_window < 2:
            raise ValueError(f"plateau_window={self.plateau_window} must be >= 2 or None")

    def reason(self, train_acc_history) -> str | None:
        """Why a replica with this history of train accuracies stops now, or None."""
        h = list(train_acc_history)
        if h and h[-1] >= self.threshold:
            return "threshold"
        w = self.plateau_window
        if w is not None and len(h) >= w and float(np.std(h[-w:])) < self.plateau_std:
            return "plateau"
        if len(h) >= self.max_epochs:
            return "max_epochs"
        return None


@dataclasses.dataclass
class FitProgress:
    """Where a ``fit`` stands; plain JSON-able data, saved with checkpoints to resume.

    ``history[e]`` has the per-replica ``train_acc`` and ``train_loss`` of program epoch ``e``
    (values of stopped replicas are repeated from their last epoch) and its ``seconds``.
    """

    active: list[bool]
    epochs: list[int]
    seconds: list[float]
    stop_reason: list[str | None]
    history: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def start(cls, num_replicas: int) -> "FitProgress":
        return cls([True] * num_replicas, [0] * num_replicas, [0.0] * num_replicas,
                   [None] * num_replicas)

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def finished(self) -> bool:
        return not any(self.active)

    def train_acc(self, replica: int) -> list[float]:
        return [h["train_acc"][replica] for h in self.history[: self.epochs[replica]]]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitProgress":
        return cls(**d)


def fit(epoch_fn, states: TrainState, keys, x, y, idx, stop: StopRule, *,
        capacity: int | None = None, progress: FitProgress | None = None,
        on_epoch: Callable[[TrainState, FitProgress], None] | None = None,
        parallel: DataParallel | None = None):
    """Trains every replica until its ``stop`` rule fires; returns ``(states, progress)``.

    ``keys`` are per-replica keys for this run; epoch e of replica r uses
    ``fold_in(keys[r], e)``, so a run resumed from ``progress`` (and the states saved with it)
    continues exactly as an uninterrupted one. ``idx`` (numpy) selects the training examples of
    ``x``/``y`` (device arrays); ``capacity`` pads it (see ``pad_indices``). ``on_epoch(states,
    progress)`` runs after every epoch. Per-replica ``seconds`` count the wall time of the
    epochs a replica was active in (replicas share the program, so they share the time).
    With ``parallel``, ``states`` are put on its mesh first (a no-op when they are there), so
    states restored or made on one device need no placing.
    """
    num_replicas = len(jax.tree.leaves(states)[0])
    progress = progress or FitProgress.start(num_replicas)
    padded, n = pad_indices(idx, capacity)
    put = parallel.place_data if parallel is not None else jax.device_put
    place = parallel.place_state if parallel is not None else (lambda t: t)
    idx_dev = put(jnp.asarray(padded))
    states = place(states)  # states made on one device (e.g. restored) join the mesh
    while not progress.finished:
        epoch_keys = place(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, progress.epoch))
        active = place(jnp.asarray(progress.active))
        start = time.perf_counter()
        states, sums = epoch_fn(states, epoch_keys, active, x, y, idx_dev, n)
        summary = summarize(sums)  # the one host sync of the epoch
        seconds = time.perf_counter() - start
        last = progress.history[-1] if progress.history else None
        record = {"train_acc": [], "train_loss": [], "seconds": seconds}
        for r in range(num_replicas):
            was_active = progress.active[r]
            record["train_acc"].append(float(summary["acc"][r]) if was_active
                                       else last["train_acc"][r])
            record["train_loss"].append(float(summary["loss"][r]) if was_active
                                        else last["train_loss"][r])
            if was_active:
                progress.epochs[r] += 1
                progress.seconds[r] += seconds
        progress.history.append(record)
        for r in range(num_replicas):
            if progress.active[r]:
                reason = stop.reason(progress.train_acc(r))
                if reason:
                    progress.active[r], progress.stop_reason[r] = False, reason
        if on_epoch is not None:
            on_epoch(states, progress)
    return states, progress
