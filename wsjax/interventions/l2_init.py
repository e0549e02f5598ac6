"""L2 Init (Kumar et al. 2023): regularize toward the initial parameters, not toward zero.

Three forms, which differ in more than scale:

- ``l2_init_penalty`` (the paper): ``lam * sum ||theta - theta0||^2`` over all parameters, a
  separable penalty; the paper's best ``lam`` across problems was 1e-2.
- ``l2_init_penalty_dash`` (the DASH repository, ``utils/train_utils.py``):
  ``lam * (sum_l ||W_l - W0_l||_F)^2``, the *square of a sum* of per-layer norms, over every
  leaf PyTorch calls ``.weight`` (kernels and BatchNorm scales, no biases). Its gradient couples
  the layers; the norm is taken safely so the gradient at ``theta = theta0`` is 0, not NaN.
- ``add_l2_init`` (an optax transform): adds the paper form's gradient ``2 lam (theta -
  theta0)`` to the updates, for loops that do not own their loss. ``anchored_l2_init`` is the
  same with ``theta0`` captured by ``tx.init`` and kept in the optimizer state, so it follows
  replicas under ``jax.vmap`` and survives as long as the state does (a reset re-anchors).

``theta0`` is the parameter tree at step 0 and stays fixed for the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wsjax.interventions.roles import WEIGHT_ROLES, role_mask
from wsjax.trees import check_mask, check_same_structure
from wsjax.warmstart import check_range


def _selected(tree, mask):
    if mask is None:
        return jax.tree.leaves(tree)
    check_mask(mask, tree)
    return [x for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask)) if m]


def l2_init_penalty(params, theta0, lam: float = 1e-2, *, mask=None):
    """The paper's L2 Init term, ``lam * sum ||theta - theta0||^2`` over the leaves ``mask``
    selects (all by default). Add it to the loss at every step."""
    check_range("lam", lam, 0.0, None)
    check_same_structure("params", params, "theta0", theta0)
    diffs = _selected(jax.tree.map(jnp.subtract, params, theta0), mask)
    return lam * sum(jnp.sum(jnp.square(d)) for d in diffs)


def _safe_norm(x):
    # sqrt has an infinite derivative at 0; route the gradient away from it there.
    s = jnp.sum(jnp.square(x))
    positive = s > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def l2_init_penalty_dash(params, theta0, lam: float = 1e-2, *, mask=None,
                         label_fn: Callable | None = None,
                         roles: Iterable[str] = WEIGHT_ROLES):
    """The DASH repository's L2 Init term, ``lam * (sum_l ||W_l - W0_l||_F)^2`` over the leaves
    whose role is in ``roles`` (kernels and BatchNorm scales: PyTorch's ``.weight``; biases are
    skipped), or over ``mask`` when given. Its gradient is finite (0) at ``theta = theta0``."""
    check_range("lam", lam, 0.0, None)
    check_same_structure("params", params, "theta0", theta0)
    if mask is None:
        mask = role_mask(params, roles, label_fn)
    diffs = _selected(jax.tree.map(jnp.subtract, params, theta0), mask)
    return lam * jnp.square(sum(_safe_norm(d) for d in diffs))


def add_l2_init(theta0, lam: float = 1e-2, *, mask=None) -> optax.GradientTransformation:
    """An optax transform adding ``2 lam (theta - theta0)`` (the paper form's gradient) to the
    updates of the leaves ``mask`` selects; chain it before the optimizer, like
    ``optax.add_decayed_weights``. ``update`` needs ``params``."""
    check_range("lam", lam, 0.0, None)
    if mask is not None:
        check_mask(mask, theta0, "theta0")

    def init_fn(params):
        check_same_structure("params", params, "theta0", theta0)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_l2_init needs params: call tx.update(grads, state, params)")
        pull = jax.tree.map(lambda g, p, p0: g + 2 * lam * (p - p0), updates, params, theta0)
        if mask is not None:
            pull = jax.tree.map(lambda m, new, old: new if m else old, mask, pull, updates)
        return pull, state

    return optax.GradientTransformation(init_fn, update_fn)


class AnchorState(NamedTuple):
    """``anchored_l2_init``'s state: the parameters it was initialized with."""

    theta0: Any


def anchored_l2_init(lam: float = 1e-2, *, mask=None) -> optax.GradientTransformation:
    """``add_l2_init`` anchored at the parameters ``init`` sees (held in the state)."""
    check_range("lam", lam, 0.0, None)

    def init_fn(params):
        return AnchorState(theta0=jax.tree.map(jnp.asarray, params))

    def update_fn(updates, state, params=None):
        return add_l2_init(state.theta0, lam, mask=mask).update(updates, optax.EmptyState(),
                                                                 params)[0], state

    return optax.GradientTransformation(init_fn, update_fn)
