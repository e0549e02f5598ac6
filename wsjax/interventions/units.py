"""Replacing hidden units in place: the mechanics ReDo and continual backprop share.

A unit ``i`` of a ``UnitLayer`` is replaced by giving its incoming kernel slice ``[..., i]`` new
values, zeroing its bias, resetting the normalization after it to its initial state (scale 1,
offset 0, running mean 0, variance 1), and zeroing its rows in the next layer's kernel, so a new
unit starts with no effect on the output. Residual connections also carry a ResNet block's
output channels; those paths are not cut (nor are they in continual backprop's ResNet form).
"""

from __future__ import annotations

import jax.numpy as jnp

from wsjax.interventions.roles import UnitLayer, get_path, outgoing_rows, set_path


def _where_units(mask, new, old):
    """``new`` where the unit (last axis) is masked, else ``old``; ``new`` may be a scalar."""
    return jnp.where(mask, new, old).astype(old.dtype)


def replace_units(params, batch_stats, layer: UnitLayer, mask, new_kernel):
    """Replaces the units ``mask`` (shape (units,)) selects in ``layer``: incoming kernel slices
    from ``new_kernel`` (the kernel's shape), bias 0, normalization reset, outgoing rows 0.
    Returns ``(params, batch_stats)``; unselected entries are unchanged."""
    kernel_path = f"{layer.name}/kernel"
    kernel = get_path(params, kernel_path)
    if mask.shape != kernel.shape[-1:]:
        raise ValueError(f"{layer.name}: unit mask of shape {mask.shape} for a kernel of "
                         f"{kernel.shape[-1]} units")
    params = set_path(params, kernel_path, _where_units(mask, new_kernel, kernel))
    if "bias" in get_path(params, layer.name):
        bias_path = f"{layer.name}/bias"
        params = set_path(params, bias_path, _where_units(mask, 0.0, get_path(params, bias_path)))
    if layer.norm is not None:
        for leaf, value in (("scale", 1.0), ("bias", 0.0)):
            path = f"{layer.norm}/{leaf}"
            params = set_path(params, path, _where_units(mask, value, get_path(params, path)))
        if batch_stats:
            for leaf, value in (("mean", 0.0), ("var", 1.0)):
                path = f"{layer.norm}/{leaf}"
                batch_stats = set_path(batch_stats, path,
                                       _where_units(mask, value, get_path(batch_stats, path)))
    out = get_path(params, layer.outgoing)
    rows = outgoing_rows(mask, out.shape[-2])[:, None]
    params = set_path(params, layer.outgoing, _where_units(rows, 0.0, out))
    return params, batch_stats


def unit_entries(params, layers, masks, *, bias: bool = False):
    """A tree of boolean arrays with ``params``' structure, true at the incoming kernel slices
    and outgoing rows of the masked units (and their biases with ``bias``): the optimizer
    entries a replacement resets (``wsjax.interventions.resets.zero_opt_entries``)."""
    entries = _falses(params)
    for layer in layers:
        mask = masks[layer.name]
        kernel_path = f"{layer.name}/kernel"
        shape = get_path(params, kernel_path).shape
        entries = _or_at(entries, kernel_path, jnp.broadcast_to(mask, shape))
        if bias and "bias" in get_path(params, layer.name):
            entries = _or_at(entries, f"{layer.name}/bias", mask)
        out_shape = get_path(params, layer.outgoing).shape
        rows = outgoing_rows(mask, out_shape[-2])[:, None]
        entries = _or_at(entries, layer.outgoing, jnp.broadcast_to(rows, out_shape))
    return entries


def _falses(tree):
    if isinstance(tree, dict):
        return {k: _falses(v) for k, v in tree.items()}
    return jnp.zeros(jnp.shape(tree), bool)


def _or_at(entries, path, value):
    return set_path(entries, path, get_path(entries, path) | value)
