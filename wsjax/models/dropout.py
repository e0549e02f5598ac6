"""Dropout for conv nets: DropBlock (Ghiasi, Lin & Le, 2018) and drop-path (stochastic depth,
Huang et al., 2016), as batched jit-able functions and Flax modules.

Plain dropout barely regularizes a conv net: a dropped activation's neighbours carry the same
information. DropBlock drops contiguous ``block_size`` x ``block_size`` squares instead. Block
centres are drawn where a whole block fits, each with probability
``gamma = rate / block_size**2 * (H * W) / ((H - block_size + 1) * (W - block_size + 1))`` so
that about ``rate`` of the units are dropped; each channel of each example draws its own
blocks (the paper's per-feature-map mask); the kept units are scaled by (all units / kept
units) so the layer's expected output is unchanged, as with dropout.

Like ``nn.Dropout``, the modules here drop only in training and only when the ``'dropout'``
random stream is given: the training step passes one, so passes that run the model in train
mode for other reasons (BatchNorm statistics, gradient norms) see every unit.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_block(key, x, rate: float, block_size: int = 3):
    """``x`` (N, H, W, C) with DropBlock at ``rate`` (see the module docstring)."""
    if rate <= 0.0:
        return x
    if not rate < 1.0:
        raise ValueError(f"DropBlock rate={rate!r} must be in [0, 1)")
    n, h, w, c = x.shape
    size = min(block_size, h, w)
    gamma = rate / size ** 2 * (h * w) / ((h - size + 1) * (w - size + 1))
    # Centres where the whole block lies inside the map.
    lo, hi = size // 2, size - 1 - size // 2
    rows = (jnp.arange(h) >= lo) & (jnp.arange(h) < h - hi)
    cols = (jnp.arange(w) >= lo) & (jnp.arange(w) < w - hi)
    valid = (rows[:, None] & cols[None, :])[None, :, :, None]
    seeds = jax.random.bernoulli(key, gamma, x.shape) & valid
    dropped = jax.lax.reduce_window(seeds.astype(x.dtype), jnp.array(0, x.dtype), jax.lax.max,
                                    (1, size, size, 1), (1, 1, 1, 1), "SAME")
    keep = 1.0 - dropped
    scale = keep.size / jnp.maximum(jnp.sum(keep), 1.0)
    return x * keep * scale


class DropBlock(nn.Module):
    """DropBlock as a layer: ``DropBlock(rate, block_size)(x, train)``."""

    rate: float
    block_size: int = 3

    @nn.compact
    def __call__(self, x, train: bool):
        if not train or self.rate == 0.0 or not self.has_rng("dropout"):
            return x
        return drop_block(self.make_rng("dropout"), x, self.rate, self.block_size)


class Dropout(nn.Module):
    """``nn.Dropout`` that drops only in training with a ``'dropout'`` stream given."""

    rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        if not train or self.rate == 0.0 or not self.has_rng("dropout"):
            return x
        return nn.Dropout(self.rate, deterministic=False)(x)


def drop_path(key, x, rate: float):
    """Stochastic depth on a residual branch ``x`` (N, ...): each example's branch is zeroed
    with probability ``rate`` and the kept ones scaled by 1 / (1 - rate)."""
    if rate <= 0.0:
        return x
    if not rate < 1.0:
        raise ValueError(f"drop-path rate={rate!r} must be in [0, 1)")
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class DropPath(nn.Module):
    """Stochastic depth as a layer: ``DropPath(rate)(branch, train)``; drops only in training
    with a ``'dropout'`` stream given, like ``Dropout``."""

    rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        if not train or self.rate == 0.0 or not self.has_rng("dropout"):
            return x
        return drop_path(self.make_rng("dropout"), x, self.rate)
