"""Warm-start transforms: pure functions from pytrees to pytrees, usable in any training loop.

All are jit-able and take an optional boolean ``mask`` (see ``wsjax.trees``) to touch only some
layers; masked-out leaves come back unchanged.

- ``shrink_perturb``: ``shrink * old + perturb * fresh`` with ``fresh`` a newly initialized
  network of the same architecture (the official semantics of Ash & Adams).
- ``shrink_perturb_gaussian``: ``shrink * old + N(0, sigma^2)`` (the paper's equation).
- ``reset_batch_stats``: running mean 0 and variance 1, as at initialization.
- ``batch_statistics`` / ``recompute_batch_stats``: running statistics recomputed from data.
- ``reset_opt_state``: a fresh optimizer state, whole or for selected parameters.

An ``Arm`` names one way to start a new round from trained weights (shrink, noise scale and
kind, BatchNorm mode, optimizer state); ``apply_arm`` applies it. The study's protocols and
the fast trainer's warm-start experiment both start their rounds through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax.models import init_variables
from wsjax.trees import check_mask, check_same_structure, path_str


def check_range(name: str, value, lo: float, hi: float | None) -> None:
    """Validates a hyperparameter when it is a concrete number (traced values pass through)."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        if isinstance(value, (str, bytes, bool)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r} must be a number, not {type(value).__name__}"
                        ) from None
    if not (math.isfinite(v) and v >= lo and (hi is None or v <= hi)):
        bound = f"in [{lo}, {hi}]" if hi is not None else f"finite and >= {lo}"
        raise ValueError(f"{name}={value!r} is out of range: it must be {bound}")


def _masked(fn, tree, mask, *rest):
    if mask is None:
        return jax.tree.map(fn, tree, *rest)
    check_mask(mask, tree)
    return jax.tree.map(lambda m, x, *r: fn(x, *r) if m is True else
                        (x if m is False else jnp.where(m, fn(x, *r), x)), mask, tree, *rest)


def shrink_perturb(params, fresh, shrink: float, perturb: float, *, mask=None):
    """Returns ``shrink * params + perturb * fresh`` leaf by leaf.

    ``fresh`` must be a newly initialized parameter tree of the same architecture, so the noise
    follows each layer's own initializer (the official code's semantics). ``shrink=1,
    perturb=0`` is a plain warm start; ``shrink=0, perturb=1`` is ``fresh`` itself. BatchNorm
    scale and bias are blended like any weight; running statistics are not parameters (see
    ``reset_batch_stats``).

    >>> import jax.numpy as jnp
    >>> shrink_perturb({'w': jnp.ones(2)}, {'w': jnp.full(2, 10.)}, 0.5, 0.1)['w']
    Array([1.5, 1.5], dtype=float32)

    Raises ``ValueError`` for ``shrink`` outside [0, 1], negative ``perturb``, or trees whose
    structure or shapes differ (naming the first differing path).
    """
    check_range("shrink", shrink, 0.0, 1.0)
    check_range("perturb", perturb, 0.0, None)
    check_same_structure("params", params, "fresh", fresh)
    return _masked(lambda x, f: (shrink * x + perturb * f).astype(x.dtype), params, mask, fresh)


def transplant(source, target):
    """``target`` with every leaf that ``source`` has at the same path and shape replaced by
    ``source``'s; returns ``(tree, mask)``, ``mask`` True where the leaf came from ``source``.
    Warm-starts a model whose layers differ in part from the trained one's (a student whose
    convolutions are cheap substitutes of its teacher's): ``shrink_perturb(tree, fresh, s, p,
    mask=mask)`` then blends only what was carried over."""
    flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(source)[0]}

    def pick(path, x):
        y = flat.get(path_str(path))
        return y if y is not None and np.shape(y) == np.shape(x) else None

    picked = jax.tree_util.tree_map_with_path(pick, target)
    tree = jax.tree.map(lambda p, x: x if p is None else p, picked, target,
                        is_leaf=lambda v: v is None)
    mask = jax.tree.map(lambda p: p is not None, picked, is_leaf=lambda v: v is None)
    return tree, mask


def _per_replica_keys(key) -> bool:
    """Whether ``key`` holds one PRNG key per replica (typed keys: shape (R,); raw: (R, 2))."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim == (1 if typed else 2)


def shrink_perturb_gaussian(key, params, shrink: float, sigma: float, *, mask=None):
    """Returns ``shrink * params + N(0, sigma^2)`` leaf by leaf, each leaf with its own noise.

    The variant the paper's equation writes; the noise scale is the same for every layer,
    unlike ``shrink_perturb``. ``key`` is one PRNG key, or one per replica when ``params`` has
    a leading replica axis (each replica's noise then depends on its own key only). Raises
    ``ValueError`` for ``shrink`` outside [0, 1] or negative ``sigma``.
    """
    check_range("shrink", shrink, 0.0, 1.0)
    check_range("sigma", sigma, 0.0, None)
    if _per_replica_keys(key):
        return jax.vmap(lambda k, p: shrink_perturb_gaussian(k, p, shrink, sigma, mask=mask))(
            key, params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.tree.unflatten(treedef, list(jax.random.split(key, max(len(leaves), 1))[:len(leaves)]))
    return _masked(
        lambda x, k: (shrink * x + sigma * jax.random.normal(k, x.shape, x.dtype)).astype(x.dtype),
        params, mask, keys)


def reset_batch_stats(batch_stats, *, mask=None):
    """Sets BatchNorm running means to 0 and running variances to 1, as at initialization.

    Leaves are recognized by Flax BatchNorm's variable names ``mean`` and ``var``; any other
    leaf raises ``ValueError`` (it would be ambiguous what its reset value is).
    """
    def reset(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "mean":
            return jnp.zeros_like(x)
        if name == "var":
            return jnp.ones_like(x)
        raise ValueError(
            f"reset_batch_stats: leaf {'/'.join(str(getattr(p, 'key', p)) for p in path)!r} is "
            f"neither a BatchNorm 'mean' nor 'var'; pass the 'batch_stats' collection only"
        )

    fresh = jax.tree_util.tree_map_with_path(reset, batch_stats)
    if mask is None:
        return fresh
    check_mask(mask, batch_stats, "batch_stats")
    return jax.tree.map(lambda m, x, f: jnp.where(m, f, x), mask, batch_stats, fresh)


def shrink_perturb_every_step(model, input_shape, shrink: float, perturb: float):
    """An ``after_update(params, key) -> params`` for ``wsjax.engine.Engine``: shrink-perturb
    after every optimizer step, the noise a fresh initialization of ``model`` (for inputs of
    ``input_shape``) drawn from the step's key (the paper's appendix; the shrink compounds
    over thousands of steps, so it must be close to 1)."""
    check_range("shrink", shrink, 0.0, 1.0)
    check_range("perturb", perturb, 0.0, None)

    def after_update(params, key):
        fresh = init_variables(model, key, input_shape)["params"]
        return shrink_perturb(params, fresh, shrink, perturb)

    return after_update


def batch_statistics(model, params, batch_stats, images):
    """The BatchNorm statistics of one batch: the ``batch_stats`` tree whose running means and
    variances are the batch means and variances of every BatchNorm layer of ``model`` on
    ``images`` (float, normalized as in training), the weights held fixed.

    ``model`` must have a ``bn_momentum`` field (every wsjax model with BatchNorm does): it is
    set to 0 so one train-mode pass returns exactly the batch statistics.
    """
    if not hasattr(model, "bn_momentum"):
        raise ValueError(
            f"recomputing BatchNorm statistics needs a model with a 'bn_momentum' field; "
            f"{type(model).__name__} has none"
        )
    _, updates = model.clone(bn_momentum=0.0).apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True,
        mutable=["batch_stats"])
    return updates["batch_stats"]


def recompute_batch_stats(model, params, batch_stats, images):
    """Recomputes BatchNorm running statistics from data with the weights held fixed.

    ``images`` is a float array of shape (num_batches, batch, H, W, C), already normalized as
    in training. Each layer's running mean and variance become the average over batches of its
    batch mean and batch variance (what PyTorch does with ``momentum=None``); see
    ``batch_statistics``. Models without BatchNorm return ``batch_stats`` unchanged. jit-able;
    ``wsjax.engine.Engine.recompute_batch_stats`` does the same from an index array.
    """
    if not jax.tree.leaves(batch_stats):
        return batch_stats
    if images.ndim < 2:
        raise ValueError(f"images must be (num_batches, batch, ...); got shape {images.shape}")
    per_batch = jax.lax.map(lambda x: batch_statistics(model, params, batch_stats, x), images)
    return jax.tree.map(lambda s: jnp.mean(s, axis=0), per_batch)


def reset_opt_state(tx: optax.GradientTransformation, opt_state, params, *, mask=None,
                    reset_counts: bool | None = None):
    """Returns ``opt_state`` with its per-parameter slots reset to ``tx.init`` values.

    The slots are found by structure (``optax.tree_map_params``), never by position, so this
    works for any chain of transformations. With ``mask=None`` the whole state is fresh,
    step counters included. With a mask, only the slots of masked parameters (e.g. Adam's mu and
    nu for the head) are reset; shared step counters are kept unless ``reset_counts=True``.
    Keeping them means Adam's bias correction treats the reset slots as old, which damps their
    first updates; resetting them restarts the correction for every parameter.
    """
    fresh = tx.init(params)
    check_same_structure("opt_state", opt_state, "tx.init(params)", fresh)
    if mask is None:
        if reset_counts is False:
            raise ValueError("reset_counts=False needs a mask; without one the state is all new")
        return fresh
    check_mask(mask, params)
    counts = bool(reset_counts)
    take_fresh = optax.tree_map_params(tx, lambda _, m: m, opt_state, mask,
                                       transform_non_params=lambda _: counts)
    return jax.tree.map(lambda t, old, new: jnp.where(t, new, old), take_fresh, opt_state,
                        fresh)


NOISE_KINDS = ("init", "gaussian")
BN_MODES = ("reset", "keep", "recompute")
OPTIMIZER_MODES = ("reset", "keep")


@dataclasses.dataclass(frozen=True)
class Arm:
    """How a round starts from the previous round's trained weights.

    - ``shrink`` and ``noise_scale``: ``new = shrink * old + noise_scale * noise``, where the
      noise is a fresh initialization of the same architecture for ``noise_kind='init'`` (the
      official code) or N(0, 1) for ``'gaussian'`` (the paper's equation). ``shrink=1,
      noise_scale=0`` is a plain warm start.
    - ``bn``: the BatchNorm running statistics are ``'reset'`` (mean 0, var 1: the official
      code always does), ``'keep'`` (the reproduction) or ``'recompute'`` (from the new
      training data, with the new weights).
    - ``optimizer``: the optimizer state is ``'reset'`` (new, as in the study) or ``'keep'``
      (carried over from the previous round).
    """

    name: str
    shrink: float = 1.0
    noise_scale: float = 0.0
    noise_kind: str = "init"
    bn: str = "reset"
    optimizer: str = "reset"

    def __post_init__(self):
        for field, value, choices in (("noise_kind", self.noise_kind, NOISE_KINDS),
                                      ("bn", self.bn, BN_MODES),
                                      ("optimizer", self.optimizer, OPTIMIZER_MODES)):
            if value not in choices:
                raise ValueError(f"Arm {self.name}: {field}={value!r} must be one of {choices}")
        check_range("shrink", self.shrink, 0.0, 1.0)
        check_range("noise_scale", self.noise_scale, 0.0, None)


def apply_arm(arm: Arm, params, batch_stats, opt_state=None, *, fresh=None, key=None,
              recompute: Callable | None = None, mask=None):
    """The start of a new round under ``arm``: returns ``(params, batch_stats, opt_state)``.

    Inputs are the previous round's trees, for one replica or stacked on a leading replica
    axis. What an arm needs beside them: ``fresh``, a new initialization's params (noise kind
    ``'init'``); ``key``, one PRNG key or one per replica (``'gaussian'``);
    ``recompute(params, batch_stats) -> batch_stats`` (``bn='recompute'``: statistics of the
    new data with the new weights, e.g. from ``wsjax.engine.Engine.recompute_batch_stats``).
    ``mask`` limits shrink and noise to some parameters (e.g. not a frozen layer). The returned
    ``opt_state`` is ``None`` for ``optimizer='reset'`` (training starts a new one) and the
    given ``opt_state`` for ``'keep'``.

    >>> warm = Arm("sp", shrink=0.6, noise_scale=0.01)
    >>> params, stats, _ = apply_arm(warm, params, stats, fresh=init(key)["params"])
    """
    if arm.noise_kind == "init":
        if fresh is None:
            raise ValueError(f"Arm {arm.name}: noise_kind='init' needs fresh, the params of a "
                             f"new initialization of the same architecture")
        params = shrink_perturb(params, fresh, arm.shrink, arm.noise_scale, mask=mask)
    else:
        if key is None:
            raise ValueError(f"Arm {arm.name}: noise_kind='gaussian' needs a key")
        params = shrink_perturb_gaussian(key, params, arm.shrink, arm.noise_scale, mask=mask)
    if arm.bn == "reset":
        batch_stats = reset_batch_stats(batch_stats)
    elif arm.bn == "recompute" and jax.tree.leaves(batch_stats):
        if recompute is None:
            raise ValueError(f"Arm {arm.name}: bn='recompute' needs recompute(params, "
                             f"batch_stats), a pass over the new training data")
        batch_stats = recompute(params, batch_stats)
    if arm.optimizer == "reset":
        return params, batch_stats, None
    if opt_state is None:
        raise ValueError(f"Arm {arm.name}: optimizer='keep' needs the previous opt_state")
    return params, batch_stats, opt_state
