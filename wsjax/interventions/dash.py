"""DASH, direction-aware shrinking (Shin et al., NeurIPS 2024), as pure functions.

Before a new stage, each weight group is multiplied by ``clip(cos(w, G), lam, 1)``, where ``G``
is an average of the *negative* loss gradient over the stage's data: groups the new data still
pulls along (learned features) stay nearly whole; groups it does not (memorized noise, dead
units, zero gradient) shrink toward ``lam``.

Two sources differ, and both are here:

- The official code (``baekrok/DASH-Direction-Aware-SHrinking``, ``utils/train_utils.py``):
  ``G`` is an exponential average over the stage's chunks with weight ``alpha`` on the newest
  (``dash_gradient_average``, ``init='zeros'``, no bias correction); one factor per *kernel
  slice* ``K[:, :, i, o]`` of a conv (cosine over the taps), per output column of a dense kernel
  (the head included), and one scalar per bias vector; BatchNorm untouched. Defaults lam = alpha
  = 0.3.
- ``lucidrains/DASH`` (``DASH-pytorch``): one factor per *filter* (cosine over every axis but the
  output one), biases per element (a sign test, factor 1 or lam); its average starts at the
  first gradient (``init='first'``). Select with ``granularity='filter'``,
  ``bias_mode='elementwise'``.

Cosines use PyTorch's ``max(|a||b|, 1e-8)`` denominator, so a zero gradient gives factor lam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from wsjax.interventions.roles import LINEAR_ROLES, label_tree
from wsjax.warmstart import check_range

GRANULARITIES = ("kernel_slice", "filter")
BIAS_MODES = ("vector", "elementwise")


def _cos(a, b, axes):
    dot = jnp.sum(a * b, axis=axes)
    norms = jnp.sqrt(jnp.sum(a * a, axis=axes)) * jnp.sqrt(jnp.sum(b * b, axis=axes))
    return dot / jnp.maximum(norms, 1e-8)


def _factor(role: str, w, g, lam, granularity: str, bias_mode: str):
    """The shrink factor of one leaf, broadcastable against it."""
    if role == "conv_kernel":
        axes = (0, 1) if granularity == "kernel_slice" else (0, 1, 2)
        s = _cos(w, g, axes)
        s = s[None, None] if granularity == "kernel_slice" else s[None, None, None]
    elif role in ("dense_kernel", "head_kernel"):
        s = _cos(w, g, 0)[None]
    elif bias_mode == "vector":
        s = _cos(w, g, tuple(range(w.ndim)))
    else:
        s = _cos(w[..., None], g[..., None], -1)
    return jnp.clip(s, lam, 1.0)


def dash(params, gradient, lam: float = 0.3, *, granularity: str = "kernel_slice",
         bias_mode: str = "vector", roles: Iterable[str] = LINEAR_ROLES,
         label_fn: Callable | None = None):
    """Shrinks ``params`` by direction: each group times ``clip(cos(group, G), lam, 1)``.

    ``gradient`` is ``G``, the averaged *negative* gradient (``dash_gradient_average``), with
    ``params``' structure. Only leaves whose role (``wsjax.interventions.roles``) is in
    ``roles`` change; by default the conv and dense kernels and biases, not BatchNorm (the
    official code). ``lam = 1`` is the identity; ``G = 0`` scales every covered leaf by ``lam``.
    For one replica; ``jax.vmap`` it over a replica axis. The optimizer state is the caller's:
    the official protocol keeps SGD momentum.
    """
    check_range("lam", lam, 0.0, 1.0)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} must be one of {GRANULARITIES}")
    if bias_mode not in BIAS_MODES:
        raise ValueError(f"bias_mode={bias_mode!r} must be one of {BIAS_MODES}")
    roles = tuple(roles)
    labels = label_tree(params, label_fn)

    def shrink(role, w, g):
        if role not in roles:
            return w
        return (w * _factor(role, w, g, lam, granularity, bias_mode)).astype(w.dtype)

    return jax.tree.map(shrink, labels, params, gradient)


def dash_gradient_average(gradients, alpha: float = 0.3, *, init: str = "zeros"):
    """``G``: the exponential average of *negative* gradients, oldest chunk first.

    ``gradients`` is a sequence of gradient trees, one per chunk of the stage's data (the
    official code: batch = chunk, in order, no augmentation, BatchNorm in evaluation mode).
    ``init='zeros'`` (official): ``G = sum_j alpha (1 - alpha)^(t - j) (-g_j)``, no bias
    correction, so the newest chunk weighs ``alpha``. ``init='first'`` (lucidrains): ``G``
    starts at ``-g_0``.
    """
    check_range("alpha", alpha, 0.0, 1.0)
    if init not in ("zeros", "first"):
        raise ValueError(f"init={init!r} must be 'zeros' or 'first'")
    gradients = list(gradients)
    if not gradients:
        raise ValueError("dash_gradient_average needs at least one gradient tree")
    if init == "first":
        avg, rest = jax.tree.map(jnp.negative, gradients[0]), gradients[1:]
    else:
        avg, rest = jax.tree.map(jnp.zeros_like, gradients[0]), gradients
    for g in rest:
        avg = jax.tree.map(lambda a, x: (1 - alpha) * a - alpha * x, avg, g)
    return avg


def dash_from_data(grad_fn: Callable, params, chunks: Iterable, lam: float = 0.3,
                   alpha: float = 0.3, **dash_kwargs):
    """DASH as the official code runs it before a stage: ``grad_fn(params, chunk)`` (the plain
    cross-entropy gradient, BatchNorm in evaluation mode) for each chunk of the stage's data in
    order, averaged by ``dash_gradient_average``, then ``dash``. Returns the shrunk params."""
    grads = [grad_fn(params, chunk) for chunk in chunks]
    return dash(params, dash_gradient_average(grads, alpha), lam, **dash_kwargs)
