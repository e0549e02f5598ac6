"""Plasticity diagnostics: pure functions of parameters, activations and features.

Computed on fixed probe sets with BatchNorm in evaluation mode (``batch_stats`` never moves):

- ``dormant_fraction`` (ReDo): share of hidden units whose normalized mean |activation| is at
  most ``tau``;
- ``dead_fraction`` (loss of plasticity): share of units non-zero on under 1% of (example,
  position) pairs;
- ``weight_magnitude``: mean |theta|; ``layer_norms``: each leaf's L2 norm;
- ``distance_from_init``: ||theta - theta0||_2, and the mean per-layer relative distance;
- ``stable_rank`` (srank_delta, Kumar et al. 2020), ``effective_rank`` (exp of the entropy of
  the normalized singular values), ``feature_rank`` (Lyle et al. 2022, singular values of
  Phi / sqrt(n) above eps) of penultimate features Phi (n, d);
- ``gradient_norm_ratio``: ||g_new|| / ||g_old|| over conv and dense kernels, gradients of the
  *mean* loss (a sum over batches would grow with the number of batches).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from wsjax.interventions.redo import dormant_scores
from wsjax.interventions.roles import role_mask
from wsjax.trees import check_same_structure, leaf_paths


def dormant_fraction(acts: dict, tau: float = 0.0):
    """Share of all units in ``acts`` (``{layer: (batch, ..., units)}``) whose ReDo score is at
    most ``tau``, pooled over layers."""
    scores = [dormant_scores(a) for a in acts.values()]
    return jnp.mean(jnp.concatenate([s <= tau for s in scores]).astype(jnp.float32))


def dead_fraction(acts: dict, threshold: float = 0.01):
    """Share of all units in ``acts`` that are non-zero on fewer than ``threshold`` of their
    (example, position) pairs, pooled over layers (the loss-of-plasticity analysis)."""
    dead = [jnp.mean(a.reshape(-1, a.shape[-1]) != 0, axis=0) < threshold
            for a in acts.values()]
    return jnp.mean(jnp.concatenate(dead).astype(jnp.float32))


def weight_magnitude(params):
    """Mean |theta| over every parameter scalar."""
    leaves = jax.tree.leaves(params)
    total = sum(jnp.sum(jnp.abs(x)) for x in leaves)
    return total / sum(x.size for x in leaves)


def layer_norms(params) -> dict:
    """``{'a/b/kernel': ||leaf||_2}`` for every leaf."""
    return {p: jnp.linalg.norm(x.ravel()) for p, x in zip(leaf_paths(params),
                                                          jax.tree.leaves(params))}


def distance_from_init(params, theta0):
    """``(||theta - theta0||_2, mean over leaves of ||W - W0|| / ||W||)``."""
    check_same_structure("params", params, "theta0", theta0)
    diffs = jax.tree.leaves(jax.tree.map(jnp.subtract, params, theta0))
    total = jnp.sqrt(sum(jnp.sum(jnp.square(d)) for d in diffs))
    rel = [jnp.linalg.norm(d.ravel()) / jnp.maximum(jnp.linalg.norm(w.ravel()), 1e-12)
           for d, w in zip(diffs, jax.tree.leaves(params))]
    return total, jnp.mean(jnp.stack(rel))


def _singular_values(features):
    if features.ndim != 2:
        raise ValueError(f"features must be (examples, dims); got shape {features.shape}")
    return jnp.linalg.svd(features.astype(jnp.float32), compute_uv=False)


def stable_rank(features, delta: float = 0.01):
    """srank_delta: the least k whose top-k singular values of (uncentred) ``features`` hold at
    least ``1 - delta`` of their sum."""
    s = _singular_values(features)
    cum = jnp.cumsum(s) / jnp.maximum(jnp.sum(s), 1e-12)
    return jnp.sum(cum < 1 - delta) + 1


def effective_rank(features):
    """``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum s`` over the singular values."""
    s = _singular_values(features)
    p = s / jnp.maximum(jnp.sum(s), 1e-12)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def feature_rank(features, eps: float = 0.01):
    """Number of singular values of ``features / sqrt(n)`` above ``eps`` (Lyle et al. 2022;
    the threshold is that paper's, unverified against its code)."""
    s = _singular_values(features) / jnp.sqrt(features.shape[0])
    return jnp.sum(s > eps)


def gradient_norm_ratio(grad_new, grad_old, *, label_fn: Callable | None = None):
    """``||g_new|| / ||g_old||`` over conv and dense kernels (head included), each a gradient of
    a *mean* loss over its data."""
    mask = role_mask(grad_new, ("conv_kernel", "dense_kernel", "head_kernel"), label_fn)

    def norm(g):
        kept = [x for x, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask)) if m]
        return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in kept))

    return norm(grad_new) / jnp.maximum(norm(grad_old), 1e-12)
