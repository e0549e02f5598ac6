"""The pure pieces of training: the state, one train step, and when training stops.

- ``TrainState``: what changes during training (step, params, batch_stats, opt_state).
- ``make_train_step(model, tx, preprocess)`` -> ``step(state, batch, key) -> (state, metrics)``:
  pure, one replica, one batch of uint8 images with a validity mask (the last batch of an epoch
  is partial, as in PyTorch with ``drop_last=False``); metrics are sums, so epochs add up.
- ``StopRule`` (the study's 99% running-accuracy rule and epoch cap, an opt-in plateau
  fallback),
  ``DivergenceGuard`` (when a replica's training has blown up) and ``FitProgress`` (where a
  run of epochs stands: everything needed to resume it).
- ``replica_keys``, ``pad_indices`` and the loop choice (``default_loop``) for many seeds at
  once.

``wsjax.engine.Engine`` puts these together: the epoch as one compiled call, ``fit``, and every
pass over data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax.augment import make_preprocess
from wsjax.distill import Distillation, sown_maps
from wsjax.freeze import keep_frozen
from wsjax.hosts import host_value
from wsjax.models import init_variables, sown_activations
from wsjax.objectives import Objective


@flax.struct.dataclass
class TrainState:
    """What changes during training. The model and optimizer are static and live in closures."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # A ``StepHook``'s own state (e.g. continual backprop's unit ages); None without one.
    extra: Any = None

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
        """A state at step 0 with a fresh optimizer state for ``variables['params']``."""
        params = variables["params"]
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class StepHook:
    """Runs after every optimizer step, with the activations the model sowed in that step's
    forward pass (``{'layer/path': (batch, ..., units)}``, see
    ``wsjax.models.sown_activations``), and keeps its own state in ``TrainState.extra``.

    ``init(params) -> extra`` gives one replica's starting state; ``update(state, acts, mask,
    key) -> state`` returns the replica's ``TrainState`` after the hook (``mask``: which rows of
    the batch are real). Continual backprop is one (``wsjax.interventions.cbp.cbp_hook``)."""

    init: Callable
    update: Callable


def metric_sums(logits, labels, mask):
    """Summed cross-entropy and correct count over the valid examples, plus their count."""
    mask = mask.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}


def all_finite(tree) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (a scalar bool)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@dataclasses.dataclass(frozen=True)
class DivergenceGuard:
    """When one training step counts as diverged.

    A step diverges when its cross-entropy or the parameters it produced are not finite, or
    when its mean cross-entropy exceeds ``loss_factor * ln(C)`` for C classes (``ln C`` is the
    loss of a uniform guess, 2.30 for 10 classes; the default factor 100 puts the limit at 230,
    above any loss of a network that is still training and below the 1e13 of Adam at lr 1e3).
    ``loss_factor=None`` checks finiteness only. The engine does not apply a diverged step:
    the replica keeps its last finite state and stops with stop reason ``'diverged'``.
    """

    loss_factor: float | None = 100.0

    def __post_init__(self):
        f = self.loss_factor
        if f is not None and not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise ValueError(f"DivergenceGuard(loss_factor={f!r}): must be a positive finite "
                             f"number, or None to check finiteness only")

    def diverged(self, loss_sum, count, num_classes: int, params) -> jax.Array:
        """Whether a step with summed cross-entropy ``loss_sum`` over ``count`` examples and
        updated ``params`` diverged (a scalar bool, jit-able)."""
        bad = ~jnp.isfinite(loss_sum) | ~all_finite(params)
        if self.loss_factor is not None:
            limit = self.loss_factor * math.log(max(num_classes, 2))
            bad = bad | (loss_sum > limit * jnp.maximum(count, 1.0))
        return bad


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    preprocess: Callable | None = None, *, objective: Objective | None = None,
                    after_update: Callable | None = None, step_hook: StepHook | None = None,
                    guard: DivergenceGuard | None = DivergenceGuard(), frozen=(),
                    distill: Distillation | None = None):
    """Returns the pure ``step(state, batch, key) -> (state, metrics)`` for one replica.

    ``batch`` has ``image`` (uint8 NHWC), ``label`` (int) and ``mask`` (bool: which rows are
    real). The loss is ``objective`` (default: mean cross-entropy) over real rows; BatchNorm
    statistics use only them. ``preprocess(key, images)`` augments and normalizes (default:
    the study's [-1, 1]). ``after_update(params, key) -> params``, when given, transforms the
    parameters after every optimizer step (e.g. shrink-perturb at every step); ``step_hook``
    (a ``StepHook``) then sees the whole state and the step's activations.
    ``metrics`` holds sums (``loss_sum`` of the cross-entropy, ``correct``, ``count``) so
    epochs add up exactly, and ``diverged`` (1 when ``guard`` finds the step diverged, else 0;
    always 0 without a guard). The step itself is returned either way: the caller decides
    whether to keep it (``make_epoch_fn`` does not). ``distill`` (a
    ``wsjax.distill.Distillation``) adds the teacher's terms to the loss; the teacher's
    variables are ``state.extra`` (so no step hook then).
    """
    preprocess = preprocess or make_preprocess()
    objective = objective or Objective()
    if distill is not None and step_hook is not None:
        raise ValueError("a distilled step keeps the teacher in TrainState.extra, where a step "
                         "hook keeps its state: use one or the other")

    def step(state: TrainState, batch: dict, key):
        aug_key, after_key, hook_key = jax.random.split(key, 3)
        images = preprocess(aug_key, batch["image"])
        mask = batch["mask"]
        has_bn = bool(jax.tree.leaves(state.batch_stats))
        # The hook's activations come from the clean forward pass, as part of the loss's aux.
        collections = (["batch_stats"] if has_bn else []) + (
            ["intermediates"] if step_hook is not None else []) + (
            distill.collections if distill is not None else [])

        # Folded in, not split off: the other keys stay what they were before dropout existed.
        rngs = {"dropout": jax.random.fold_in(key, 3)}

        # The teacher does not depend on the student's parameters: run outside the gradient.
        teacher_out = distill.teacher(state.extra, images) if distill is not None else None

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}

            def apply(x):
                if not collections:
                    return (model.apply(variables, x, train=True, rngs=rngs),
                            (state.batch_stats, None, None))
                logits, updates = model.apply(variables, x, train=True, mask=mask,
                                              mutable=collections, rngs=rngs)
                return logits, (updates.get("batch_stats", state.batch_stats),
                                updates.get("intermediates"), updates.get("attention"))

            loss, (logits, aux) = objective.loss(apply, images, batch["label"], mask)
            if distill is not None:
                loss = distill.loss(loss, logits, sown_maps(aux[2]), *teacher_out, mask)
            return loss + objective.penalty(params), (logits, aux)

        grads, (logits, (new_stats, sown, _)) = jax.grad(loss_fn, has_aux=True)(state.params)
        if frozen:  # frozen layers' running averages stay as loaded (wsjax.freeze)
            new_stats = keep_frozen(state.batch_stats, new_stats, frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if after_update is not None:
            params = after_update(params, after_key)
        sums = metric_sums(logits, batch["label"], mask)
        bad = (guard.diverged(sums["loss_sum"], sums["count"], logits.shape[-1], params)
               if guard is not None else jnp.bool_(False))
        new = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                            opt_state=opt_state)
        if step_hook is not None:
            new = step_hook.update(new, sown_activations(sown), mask, hook_key)
        return new, {**sums, "diverged": bad.astype(jnp.int32)}

    return step


def replica_keys(seeds) -> jax.Array:
    """One typed PRNG key per replica seed; replica r's randomness depends on seeds[r] only.
    Seeds are integers in [0, 2**32): a negative one would wrap around silently."""
    values = np.asarray(seeds)
    if values.dtype.kind not in "iu" or values.ndim != 1 or len(values) == 0 or (
            values.min() < 0 or values.max() >= 2 ** 32):
        raise ValueError(f"seeds={seeds!r} must be a non-empty list of integers in [0, 2**32)")
    return jax.vmap(jax.random.key)(jnp.asarray(values, dtype=jnp.uint32))


def fold_in_replicas(keys, data: int) -> jax.Array:
    """``jax.random.fold_in(key, data)`` for each replica's key."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def pad_indices(idx, capacity: int | None = None) -> tuple[np.ndarray, int]:
    """Pads an index array (each row of a per-replica ``(R, n)`` one) to ``capacity`` (so
    training sets of different sizes share one compiled epoch) and returns ``(padded,
    n_valid)``."""
    idx = np.asarray(idx, dtype=np.int32)
    if idx.ndim not in (1, 2):
        raise ValueError(f"indices of shape {idx.shape}: give (n,) for every replica or "
                         "(replicas, n) for one row each")
    n = idx.shape[-1]
    capacity = n if capacity is None else capacity
    if n > capacity:
        raise ValueError(f"{n} indices exceed capacity {capacity}")
    if n == 0:
        raise ValueError("an empty training set cannot be trained on")
    return np.pad(idx, [(0, 0)] * (idx.ndim - 1) + [(0, capacity - n)]), n


def has_conv(model: nn.Module, input_shape) -> bool:
    """Whether ``model`` has convolution kernels (4-d parameters) for inputs of
    ``input_shape`` (one example, e.g. ``(32, 32, 3)``); checked on shapes only."""
    shapes = jax.eval_shape(lambda k: init_variables(model, k, input_shape), jax.random.key(0))
    return any(leaf.ndim == 4 for leaf in jax.tree.leaves(shapes["params"]))


def default_loop(model: nn.Module, input_shape) -> str:
    """``'device'`` (the epoch as one compiled loop) except for conv nets on a CPU.

    XLA:CPU runs convolutions inside a compiled loop (``while``/``scan``) 30-40x slower than
    the same step compiled alone (measured: narrow ResNet-18, 4 steps of batch 128, 93 s in a
    ``scan`` vs 2.5 s unrolled), so there the epoch is a host loop over a compiled step.
    """
    cpu = jax.default_backend() == "cpu"
    return "host" if cpu and has_conv(model, input_shape) else "device"


def resolve_loop(loop: str, model: nn.Module, input_shape) -> str:
    """``'device'`` or ``'host'`` for ``loop`` (``'auto'`` picks with ``default_loop``)."""
    if loop == "auto":
        return default_loop(model, input_shape)
    if loop not in ("device", "host"):
        raise ValueError(f"loop={loop!r} must be 'device', 'host' or 'auto'")
    return loop


def summarize(sums) -> dict[str, np.ndarray]:
    """Per-replica sums -> per-replica ``{'acc', 'loss'}`` numpy arrays (one host transfer);
    NaN for a replica that counted no example. An epoch's sums also give ``diverged``: the
    1-based step of the epoch at which a replica diverged, 0 when it did not."""
    sums = host_value(sums)  # per-replica sums may lie on other processes' devices
    count = np.asarray(sums["count"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"acc": np.where(count > 0, np.asarray(sums["correct"]) / count, np.nan),
               "loss": np.where(count > 0, np.asarray(sums["loss_sum"]) / count, np.nan)}
    if "diverged" in sums:
        out["diverged"] = np.asarray(sums["diverged"])
    return out


def _is_number(x) -> bool:
    """A finite real number (bools and strings are not)."""
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
            and math.isfinite(x))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class StopRule:
    """When a replica stops training (the official rule by default).

    Stops at the first epoch whose *running* train accuracy (accumulated over the epoch's
    batches as they were trained) reaches ``threshold`` (0.99; above 1 never), or at
    ``max_epochs``: the official code's rule. A fallback for models that cannot reach 99%
    within the cap, off unless ``plateau_window`` is set: stop when the standard deviation of
    the last ``plateau_window`` epochs' train accuracy is below ``plateau_std``, but never
    before ``plateau_min_epochs`` epochs of the round, so it cannot fire while a warm start's
    first epochs are still flat or climbing slowly.
    """

    threshold: float = 0.99
    max_epochs: int = 350
    plateau_window: int | None = None
    plateau_std: float = 0.002
    plateau_min_epochs: int = 0

    def __post_init__(self):
        if not (_is_number(self.threshold) and self.threshold > 0.0):
            raise ValueError(f"StopRule(threshold={self.threshold!r}): must be a positive "
                             f"accuracy, e.g. 0.99 (above 1: never)")
        if not (_is_int(self.max_epochs) and self.max_epochs >= 1):
            raise ValueError(f"StopRule(max_epochs={self.max_epochs!r}): must be an integer >= 1")
        if self.plateau_window is not None and not (_is_int(self.plateau_window)
                                                    and self.plateau_window >= 2):
            raise ValueError(f"StopRule(plateau_window={self.plateau_window!r}): must be an "
                             f"integer >= 2, or None for no plateau rule")
        if not (_is_number(self.plateau_std) and self.plateau_std > 0):
            raise ValueError(f"StopRule(plateau_std={self.plateau_std!r}): must be a positive "
                             f"number")
        if not (_is_int(self.plateau_min_epochs) and self.plateau_min_epochs >= 0):
            raise ValueError(f"StopRule(plateau_min_epochs={self.plateau_min_epochs!r}): must "
                             f"be an integer >= 0")

    def reason(self, train_acc_history) -> str | None:
        """Why a replica with this history of train accuracies (one per epoch of the round)
        stops now, or None."""
        h = list(train_acc_history)
        if h and h[-1] >= self.threshold:
            return "threshold"
        w = self.plateau_window
        if (w is not None and len(h) >= max(w, self.plateau_min_epochs)
                and float(np.std(h[-w:])) < self.plateau_std):
            return "plateau"
        if len(h) >= self.max_epochs:
            return "max_epochs"
        return None


@dataclasses.dataclass
class FitProgress:
    """Where a ``fit`` stands; plain JSON-able data, saved with checkpoints to resume.

    ``history[e]`` has the per-replica ``train_acc`` and ``train_loss`` of program epoch ``e``
    (values of stopped replicas are repeated from their last epoch; None where a replica that
    diverged had no finite value yet) and its ``seconds``. ``diverged_at[r]`` is
    ``[epoch, step]`` (both 1-based) of the step at which replica r diverged, else None.
    ``compile_seconds``: time spent compiling the epoch (by every process that trained this
    fit), not counted in ``seconds``.
    """

    active: list[bool]
    epochs: list[int]
    seconds: list[float]
    stop_reason: list[str | None]
    history: list[dict] = dataclasses.field(default_factory=list)
    diverged_at: list = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0

    def __post_init__(self):
        # Progress saved before the divergence guard existed has no diverged_at.
        self.diverged_at = list(self.diverged_at) or [None] * len(self.active)

    @classmethod
    def start(cls, num_replicas: int) -> "FitProgress":
        """Progress of ``num_replicas`` replicas that have not trained yet."""
        return cls([True] * num_replicas, [0] * num_replicas, [0.0] * num_replicas,
                   [None] * num_replicas)

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def finished(self) -> bool:
        return not any(self.active)

    def train_acc(self, replica: int) -> list[float]:
        """The running train accuracy of each epoch ``replica`` trained in."""
        return [h["train_acc"][replica] for h in self.history[: self.epochs[replica]]]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitProgress":
        return cls(**d)
