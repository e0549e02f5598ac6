"""BatchNorm with a validity mask and a two-pass variance, as PyTorch computes it.

Same variables as ``flax.linen.BatchNorm`` (params ``scale``/``bias``, batch_stats
``mean``/``var``) and the same momentum convention (weight of the old running average). Two
things are why it exists:

- The variance is ``mean((x - mean)^2)``: the one-pass ``E[x^2] - E[x]^2`` cancels
  catastrophically when a few examples reach a 1x1 feature map (a padded last batch), and then
  two compilations of the same step disagree by 1e-2.
- Statistics are explicit masked sums. ``flax.linen.BatchNorm(use_fast_variance=False)``
  computes the same thing with ``mean(where=mask)``, but jax 0.7's SPMD partitioner gets that
  wrong when a batch is split over devices and some shards hold no valid example (errors of
  order 1 in a 4-device test).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """``__call__(x, mask=None)``: normalizes over every axis but the last. In training
    (``use_running_average=False``) the statistics are those of the rows where ``mask``
    (broadcastable to ``x``) is true, and the running averages are updated. ``use_scale=False``
    fixes the scale at 1 (no parameter), as the fast CIFAR-10 nets do. ``ghost_size`` (Page's
    ghost BatchNorm) normalizes each group of that many examples with its own statistics in
    training; the running averages take the mean of the groups' statistics."""

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    use_scale: bool = True
    ghost_size: int | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
        scale = (self.param("scale", nn.initializers.ones, (features,), jnp.float32)
                 if self.use_scale else jnp.ones((features,), jnp.float32))
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            if self.ghost_size and x.shape[0] > self.ghost_size:
                xf, mean, var = self._ghost_stats(xf, mask)
            else:
                mean, var = self._masked_stats(xf, mask)
            if not self.is_initializing():
                # Ghost statistics are per group: the running averages take their mean.
                flat = lambda v: jnp.mean(v.reshape(-1, features), axis=0)
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * flat(mean)
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * flat(var)
        y = (xf - mean) * (scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))) + bias
        return y.reshape(x.shape).astype(self.dtype or x.dtype)

    @staticmethod
    def _masked_stats(xf, mask):
        """Mean and two-pass variance over the rows where ``mask`` is true, shape (C,)."""
        axes = tuple(range(xf.ndim - 1))
        m = jnp.ones(xf.shape[:-1] + (1,), jnp.float32) if mask is None else \
            jnp.broadcast_to(mask, xf.shape[:-1] + (1,)).astype(jnp.float32)
        count = jnp.maximum(jnp.sum(m), 1.0)
        mean = jnp.sum(xf * m, axes) / count
        return mean, jnp.sum(jnp.square((xf - mean) * m), axes) / count

    def _ghost_stats(self, xf, mask):
        """``xf`` split into groups of ``ghost_size`` examples and each group's statistics
        (broadcastable to the grouped ``xf``)."""
        n, g = xf.shape[0], self.ghost_size
        if mask is not None or n % g:
            raise ValueError(f"ghost BatchNorm needs whole groups: batch {n} is not a multiple "
                             f"of ghost_size={g} (or a mask was given); use whole batches")
        xf = xf.reshape(n // g, g, *xf.shape[1:])
        axes = tuple(range(1, xf.ndim - 1))
        mean = jnp.mean(xf, axes, keepdims=True)
        return xf, mean, jnp.mean(jnp.square(xf - mean), axes, keepdims=True)


def norm_layer(train: bool, momentum: float, dtype, name: str) -> BatchNorm:
    """The conv nets' BatchNorm as PyTorch's defaults (eps 1e-5; ``momentum`` in Flax's
    convention), using batch statistics in training."""
    return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5,
                     dtype=dtype, name=name)


def example_mask(mask, x):
    """Broadcasts a per-example mask (B,) over an activation (B, ...); None stays None."""
    if mask is None:
        return None
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1)).astype(bool)
