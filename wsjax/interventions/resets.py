"""Resets of parts of a network or of its optimizer state, as pure functions.

- ``reinit``: chosen leaves take a fresh initialization's values (``head_reset``: the
  classifier, the DASH repository's ``reset`` arm);
- ``zero_opt_entries``: zero an optimizer's per-parameter slots (momentum, Adam's moments) at
  chosen *entries* of chosen leaves, keeping step counts (what ReDo does to the moments of the
  weights it recycles). ``wsjax.warmstart.reset_opt_state`` resets whole slots to ``tx.init``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from wsjax.trees import check_mask, check_same_structure, module_mask


def reinit(params, fresh, mask):
    """``params`` with the leaves ``mask`` selects replaced by ``fresh``'s (a new
    initialization of the same architecture); the rest unchanged."""
    check_same_structure("params", params, "fresh", fresh)
    check_mask(mask, params)
    return jax.tree.map(lambda m, x, f: jnp.where(m, f, x), mask, params, fresh)


def head_reset(params, fresh, head: str = "head"):
    """Re-initializes the classifier layer ``head`` from ``fresh``; every other leaf is kept.

    wsjax heads use PyTorch's ``nn.Linear`` init, as the DASH repository's ResNet does. The
    optimizer state is the caller's: that repository keeps the head's momentum (the reset is in
    place); ``wsjax.warmstart.reset_opt_state`` with ``module_mask(params, [head])`` resets it.
    """
    return reinit(params, fresh, module_mask(params, [head]))


def zero_opt_entries(tx: optax.GradientTransformation, opt_state, params, entries):
    """``opt_state`` with every per-parameter slot set to 0 where ``entries`` is true.

    ``entries`` has ``params``' structure with boolean arrays broadcastable to each leaf (or
    Python booleans). Slots are found by structure (``optax.tree_map_params``); step counts
    and other non-parameter state are kept.
    """
    check_mask(entries, params, "params")
    return optax.tree_map_params(
        tx, lambda slot, e: jnp.where(e, jnp.zeros_like(slot), slot), opt_state, entries,
        transform_non_params=lambda x: x)
