"""Optimizers as the study uses them: PyTorch's SGD and Adam with *coupled* L2 weight decay;
and hyperparameters held in the optimizer state, one value per replica (``injected``,
``with_hyperparams``: a learning-rate range test or a search trains many settings at once).

PyTorch's ``weight_decay`` adds ``wd * param`` to the gradient before momentum or Adam's moments
see it; ``optax.chain(add_decayed_weights(wd), sgd/adam)`` is exactly that (``optax.adamw`` is the
decoupled variant, which the study does not use).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def _finite_at_least(value, low: float, *, strict: bool = False) -> bool:
    """Whether ``value`` is a real finite number >= ``low`` (> with ``strict``)."""
    if isinstance(value, (bool, str)):
        return False
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and (v > low if strict else v >= low)


def kernels_only(params):
    """A weight-decay mask that decays weight matrices and conv filters (ndim > 1) and spares
    biases and BatchNorm scales and offsets."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                   decay_mask=None, decoupled_weight_decay: float = 0.0
                   ) -> optax.GradientTransformation:
    """Builds ``'sgd'`` (plain), ``'momentum'``, ``'nesterov'`` or ``'adam'`` like PyTorch.

    ``learning_rate`` may be a number, an optax schedule or an array (as
    ``optax.inject_hyperparams`` passes it). ``weight_decay`` is coupled L2;
    ``decay_mask`` (a mask tree or a function of params such as ``kernels_only``) limits it to
    some parameters. ``decoupled_weight_decay`` is Loshchilov & Hutter's: ``lr * wd * param``
    subtracted beside the step, outside momentum and Adam's moments (AdamW, SGDW), under the
    same ``decay_mask``. The state is created anew by ``tx.init`` at every round of the study.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    # An array (a traced one too) is a value ``optax.inject_hyperparams`` fills in: not checked.
    if not callable(learning_rate) and not isinstance(learning_rate, jax.Array) and \
            not _finite_at_least(learning_rate, 0.0, strict=True):
        raise ValueError(f"learning_rate={learning_rate!r} must be a positive finite number "
                         f"(or an optax schedule)")
    for label, wd in (("weight_decay", weight_decay),
                      ("decoupled_weight_decay", decoupled_weight_decay)):
        if not isinstance(wd, jax.Array) and not _finite_at_least(wd, 0.0):
            raise ValueError(f"{label}={wd!r} must be a finite number >= 0")
    # An array (injected per replica) may be zero for some replicas: always applied.
    weight_decay = weight_decay if isinstance(weight_decay, jax.Array) else float(weight_decay)
    if isinstance(decoupled_weight_decay, jax.Array):
        raise ValueError("decoupled_weight_decay cannot be injected per replica; inject "
                         "weight_decay (coupled) instead")
    if decoupled_weight_decay:
        if name == "adam":
            direction = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
        elif name == "sgd":
            direction = optax.identity()
        else:
            if not 0.0 <= momentum < 1.0:
                raise ValueError(f"momentum={momentum} must be in [0, 1)")
            direction = optax.trace(decay=momentum, nesterov=name == "nesterov")
        decoupled = optax.chain(
            direction, optax.add_decayed_weights(decoupled_weight_decay, decay_mask),
            optax.scale_by_learning_rate(learning_rate))
        if not isinstance(weight_decay, jax.Array) and weight_decay == 0.0:
            return decoupled
        return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), decoupled)
    if name == "adam":
        base = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    elif name == "sgd":
        base = optax.sgd(learning_rate)
    else:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1)")
        base = optax.sgd(learning_rate, momentum=momentum, nesterov=name == "nesterov")
    if not isinstance(weight_decay, jax.Array) and weight_decay == 0.0:
        return base
    return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), base)


def injected(optimizer: str, learning_rate: float, weight_decay: float | None = None,
             **options) -> optax.GradientTransformation:
    """``wsjax.optim.make_optimizer(optimizer, ...)`` with its learning rate (and, when given,
    its coupled ``weight_decay``) held in the optimizer state (``optax.inject_hyperparams``),
    so replicas can each have their own (``with_hyperparams``)."""
    if weight_decay is None:
        return optax.inject_hyperparams(
            lambda learning_rate: make_optimizer(optimizer, learning_rate, **options))(
                learning_rate=learning_rate)
    return optax.inject_hyperparams(
        lambda learning_rate, weight_decay: make_optimizer(
            optimizer, learning_rate, weight_decay=weight_decay, **options))(
                learning_rate=learning_rate, weight_decay=weight_decay)


def with_hyperparams(opt_state, **values):
    """An injected optimizer state (stacked over R replicas) whose hyperparameters named in
    ``values`` take one value per replica (each a length-R sequence)."""
    hyper = dict(opt_state.hyperparams)
    for name, per_replica in values.items():
        if name not in hyper:
            raise ValueError(f"the optimizer has no hyperparameter {name!r}; it has "
                             f"{sorted(hyper)}")
        old = hyper[name]
        new = jnp.asarray(per_replica, dtype=old.dtype)
        if new.shape != old.shape:
            raise ValueError(f"{name}: {new.shape[0] if new.ndim else 1} values for "
                             f"{old.shape[0] if old.ndim else 1} replicas")
        hyper[name] = new
    return opt_state._replace(hyperparams=hyper)


SCHEDULES = ("constant", "cosine", "step")


def lr_schedule(kind: str, learning_rate: float, *, epochs: int, steps_per_epoch: int,
                milestones=(0.3, 0.6, 0.8), gamma: float = 0.2):
    """A learning-rate schedule over ``epochs`` of ``steps_per_epoch`` steps: ``'constant'``;
    ``'cosine'`` annealing to 0 at the last step (Loshchilov & Hutter, without restarts);
    ``'step'``: multiplied by ``gamma`` at each of the ``milestones`` (fractions of the run;
    the WRN recipe's 60/120/160 of 200 epochs, x0.2, is the default)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs={epochs} and steps_per_epoch={steps_per_epoch} must be >= 1")
    total = epochs * steps_per_epoch
    if kind == "constant":
        return optax.constant_schedule(learning_rate)
    if kind == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total)
    if not all(0.0 < m < 1.0 for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(f"milestones={milestones!r} must be increasing fractions in (0, 1)")
    # An epoch boundary, as PyTorch's MultiStepLR steps once per epoch.
    bounds = {round(m * epochs) * steps_per_epoch: gamma for m in milestones}
    return optax.piecewise_constant_schedule(learning_rate, bounds)
