"""The airbench94 network (Keller Jordan's CIFAR-10 speedrun net), NHWC, in Flax.

    whiten: conv 2x2 valid, 3 -> 24, weights frozen to patch-whitening filters, bias
    3 groups (widths 64/256/256): conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
    global max-pool -> Dense(10, no bias) -> logits * scale (1/9)

BatchNorm: scale frozen at 1 (no ``scale`` parameter), epsilon 1e-12, running-average momentum
0.6 (Flax convention: weight of the old average), statistics in float32 whatever ``dtype``.
GELU is the exact (erf) form, as PyTorch's. Every option the recipe turns on is a field, so each
trick can be switched off for an ablation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax.models.batchnorm import BatchNorm
from wsjax.models.init import torch_kernel_init


def identity_init(base=torch_kernel_init):
    """``base`` init, then the first ``C_in`` output filters set to the identity (PyTorch's
    ``dirac_`` on ``w[:C_in]``): the conv starts by passing its input through."""

    def init(key, shape, dtype=jnp.float32):
        w = base(key, shape, dtype)
        kh, kw, c_in, c_out = shape
        n = min(c_in, c_out)
        eye = jnp.zeros((kh, kw, c_in, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(c_in, n, dtype=dtype))
        return w.at[..., :n].set(eye)

    return init


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> act -> conv3x3 -> BN -> act."""

    width: int
    identity: bool = True
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12
    bn_scale: bool = False
    act: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        init = identity_init() if self.identity else torch_kernel_init
        bn = lambda name: BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                    epsilon=self.bn_eps, use_scale=self.bn_scale,
                                    dtype=self.dtype, name=name)
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, kernel_init=init,
                    dtype=self.dtype, name="conv1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = self.act(bn("norm1")(x, mask))
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, kernel_init=init,
                    dtype=self.dtype, name="conv2")(x)
        return self.act(bn("norm2")(x, mask))


def exact_gelu(x):
    """GELU with the erf (PyTorch's default), not jax.nn.gelu's tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


class AirbenchNet(nn.Module):
    """See the module docstring. ``whiten_width`` is the number of whitening filters (24 for
    2x2x3 patches and their negatives); the kernel is set from data with
    ``wsjax.models.whitening.whitening_filters`` after init."""

    num_classes: int = 10
    widths: tuple = (64, 256, 256)
    whiten_size: int = 2
    identity: bool = True
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12
    bn_scale: bool = False
    scale: float = 1.0 / 9.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None, return_features: bool = False):
        c = x.shape[-1]
        x = nn.Conv(2 * self.whiten_size ** 2 * c, (self.whiten_size,) * 2, padding="VALID",
                    use_bias=True, kernel_init=torch_kernel_init, dtype=self.dtype,
                    name="whiten")(x.astype(self.dtype or x.dtype))
        x = exact_gelu(x)
        bn_mask = None if mask is None else mask[:, None, None, None]
        for i, w in enumerate(self.widths):
            x = ConvGroup(w, self.identity, self.bn_momentum, self.bn_eps, self.bn_scale,
                          exact_gelu, self.dtype, name=f"group{i + 1}")(x, train=train,
                                                                       mask=bn_mask)
        features = jnp.max(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, use_bias=False, kernel_init=torch_kernel_init,
                          dtype=self.dtype, name="head")(features) * self.scale
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
