"""The shrink-perturb variants beyond the study's (``wsjax.warmstart.shrink_perturb``).

Three sources mean three different things by shrink-perturb (see the package docstring):

- Ash & Adams: ``shrink * theta + noise * fresh_init`` on every parameter, BatchNorm affine
  included, before every round (``wsjax.warmstart.shrink_perturb``).
- The DASH repository's ``sp`` arm: ``shrink * theta + N(0, sigma^2)`` on conv and linear
  weights and biases only, BatchNorm untouched, momentum kept, after each stage
  (``shrink_perturb_linear``; defaults shrink 0.3, sigma 0.01).
- Loss of plasticity (Dohare et al. 2024): coupled L2 weight decay does the shrinking
  (``optax.add_decayed_weights(5e-4)`` chained before SGD) and ``N(0, sigma^2)`` noise, sigma
  1e-5, is added to every parameter after every step (``perturb_every_step``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from wsjax.interventions.roles import LINEAR_ROLES, role_mask
from wsjax.warmstart import _per_replica_keys, check_range, shrink_perturb_gaussian


def shrink_perturb_linear(key, params, shrink: float = 0.3, sigma: float = 0.01, *,
                          label_fn: Callable | None = None):
    """The DASH repository's shrink-perturb: ``shrink * w + N(0, sigma^2)`` for conv and dense
    kernels and biases (head included); BatchNorm scales and offsets are returned unchanged.
    ``key`` is one PRNG key, or one per replica for stacked params."""
    mask = role_mask(_one_replica(params, key), LINEAR_ROLES, label_fn)
    return shrink_perturb_gaussian(key, params, shrink, sigma, mask=mask)


def perturb_every_step(sigma: float = 1e-5, *, mask=None):
    """An ``after_update(params, key) -> params`` for ``wsjax.engine.Engine`` adding
    ``N(0, sigma^2)`` to every parameter (or the ``mask``ed ones) after each optimizer step:
    the per-step half of the loss-of-plasticity shrink-perturb; its shrink is coupled weight
    decay in the optimizer."""
    check_range("sigma", sigma, 0.0, None)

    def after_update(params, key):
        return shrink_perturb_gaussian(key, params, 1.0, sigma, mask=mask)

    return after_update


def _one_replica(params, key):
    """Roles come from leaf ranks, so a replica-stacked tree is labelled through one replica."""
    if _per_replica_keys(key):
        return jax.tree.map(lambda x: x[0], params)
    return params
