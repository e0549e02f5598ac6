"""ReDo, recycling dormant units (Sokar et al. 2023; ``google/dopamine``, ``labs/redo``).

A unit's score is its mean absolute activation over a batch (and positions), divided by the
mean of that over its layer's units (+1e-9); it is *dormant* when the score is at most ``tau``.
Dormant units get fresh incoming weights (the network's own initializer, drawn anew), bias 0,
and zero outgoing weights; the optimizer's slots of those incoming and outgoing weights are
zeroed, step counts and bias slots kept (as the source does: its masks skip 1-D leaves).

The source's default ``tau`` is 0 (only fully silent units); its networks have no BatchNorm.
Here a unit followed by BatchNorm also gets that BatchNorm's entries reset, as continual
backprop's ResNet form does (``wsjax.interventions.units``). Scores come from activations in
evaluation mode (``wsjax.interventions.roles.activations``), which leave ``batch_stats`` alone.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from wsjax.interventions.resets import zero_opt_entries
from wsjax.interventions.roles import get_path, unit_layers
from wsjax.interventions.units import replace_units, unit_entries
from wsjax.warmstart import check_range


def dormant_scores(activation):
    """Per-unit scores of one layer's activation (batch, ..., units): mean |a| over every axis
    but the last, normalized by its mean over the units."""
    m = jnp.mean(jnp.abs(activation), axis=tuple(range(activation.ndim - 1)))
    return m / (jnp.mean(m) + 1e-9)


def dormant_masks(acts: dict, layers, tau: float = 0.0) -> dict:
    """``{layer name: (units,) bool}``, true for units whose ``dormant_scores`` are <= ``tau``."""
    check_range("tau", tau, 0.0, None)
    missing = [layer.name for layer in layers if layer.name not in acts]
    if missing:
        raise ValueError(f"no activations for layers {missing}; the model sows "
                         f"{sorted(acts)} (see wsjax.interventions.roles.activations)")
    return {layer.name: dormant_scores(acts[layer.name]) <= tau for layer in layers}


def redo(params, fresh, acts: dict, tau: float = 0.0, *, layers=None, batch_stats=None,
         tx: optax.GradientTransformation | None = None, opt_state=None):
    """Recycles the dormant units of ``layers`` (default ``unit_layers(params)``, every hidden
    layer; the output layer never). ``fresh`` is a new initialization's params (the incoming
    weights are taken from it), ``acts`` the activations the units' scores come from.

    Returns ``(params, batch_stats, opt_state, masks)``: ``opt_state`` has the recycled
    weights' slots zeroed when ``tx`` and ``opt_state`` are given (else it is ``opt_state``),
    and ``masks`` maps each layer to the units recycled. For one replica; vmap over replicas.
    """
    layers = unit_layers(params) if layers is None else tuple(layers)
    masks = dormant_masks(acts, layers, tau)
    for layer in layers:
        params, batch_stats = replace_units(params, batch_stats, layer, masks[layer.name],
                                            get_path(fresh, f"{layer.name}/kernel"))
    if tx is not None and opt_state is not None:
        opt_state = zero_opt_entries(tx, opt_state, params, unit_entries(params, layers, masks))
    return params, batch_stats, opt_state, masks
