"""Warm-start transforms: pure functions from pytrees to pytrees, usable in any training loop.

All are jit-able and take an optional boolean ``mask`` (see ``wsjax.trees``) to touch only some
layers; masked-out leaves come back unchanged.

- ``shrink_perturb``: ``shrink * old + perturb * fresh`` with ``fresh`` a newly initialized
  network of the same architecture (the official semantics of Ash & Adams).
- ``shrink_perturb_gaussian``: ``shrink * old + N(0, sigma^2)`` (the paper's equation).
- ``reset_batch_stats``: running mean 0 and variance 1, as at initialization.
- ``recompute_batch_stats``: running statistics recomputed from a pass over data.
- ``reset_opt_state``: a fresh optimizer state, whole or for selected parameters.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import optax

from wsjax.trees import check_mask, check_same_structure


def check_range(name: str, value, lo: float, hi: float | None) -> None:
    """Validates a hyperparameter when it is a concrete number (traced values pass through)."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r} must be a number") from None
    if not (v >= lo and (hi is None or v <= hi)):  # also rejects NaN
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
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


def shrink_perturb_gaussian(key, params, shrink: float, sigma: float, *, mask=None):
    """Returns ``shrink * params + N(0, sigma^2)`` leaf by leaf, each leaf with its own noise.

    The variant the paper's equation writes; the noise scale is the same for every layer,
    unlike ``shrink_perturb``. Raises ``ValueError`` for ``shrink`` outside [0, 1] or negative
    ``sigma``.
    """
    check_range("shrink", shrink, 0.0, 1.0)
    check_range("sigma", sigma, 0.0, None)
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


def make_recompute_batch_stats(model, *, loop: str = "device"):
    """Returns ``recompute(params, batch_stats, images) -> batch_stats`` (see
    ``recompute_batch_stats``), built once so repeated calls reuse its compilation.

    ``loop='device'`` maps over the batches with ``lax.map``; ``'host'`` calls one compiled
    batch at a time from Python (XLA:CPU runs convolutions inside compiled loops 30-40x
    slower; under an outer ``jit`` the host loop is unrolled).
    """
    if loop not in ("device", "host"):
        raise ValueError(f"loop={loop!r} must be 'device' or 'host'")
    if not hasattr(model, "bn_momentum"):
        raise ValueError(
            f"recompute_batch_stats needs a model with a 'bn_momentum' field; "
            f"{type(model).__name__} has none"
        )
    probe = model.clone(bn_momentum=0.0)

    def batch_stats_of(p, s, x):
        _, updates = probe.apply({"params": p, "batch_stats": s}, x, train=True,
                                 mutable=["batch_stats"])
        return updates["batch_stats"]

    one = jax.jit(batch_stats_of)

    def recompute(params, batch_stats, images):
        if not jax.tree.leaves(batch_stats):
            return batch_stats
        if images.ndim < 2:
            raise ValueError(f"images must be (num_batches, batch, ...); got shape {images.shape}")
        if loop == "device":
            per_batch = jax.lax.map(lambda x: batch_stats_of(params, batch_stats, x), images)
            return jax.tree.map(lambda s: jnp.mean(s, axis=0), per_batch)
        total = None
        for i in range(images.shape[0]):
            stats = one(params, batch_stats, images[i])
            total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        return jax.tree.map(lambda s: s / images.shape[0], total)

    return recompute


def recompute_batch_stats(model, params, batch_stats, images, *, loop: str = "device"):
    """Recomputes BatchNorm running statistics from data with the weights held fixed.

    ``images`` is a float array of shape (num_batches, batch, H, W, C), already normalized as
    in training. Each layer's running mean and variance become the average over batches of its
    batch mean and batch variance (what PyTorch does with ``momentum=None``). ``model`` must have
    a ``bn_momentum`` field (every wsjax model with BatchNorm does): it is set to 0 so one
    train-mode pass returns exactly the batch statistics. Models without BatchNorm return
    ``batch_stats`` unchanged. ``loop``: see ``make_recompute_batch_stats`` (use that to call
    this repeatedly without recompiling).
    """
    if not jax.tree.leaves(batch_stats):
        return batch_stats
    return make_recompute_batch_stats(model, loop=loop)(params, batch_stats, images)


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
