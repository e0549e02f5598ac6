"""The airbench94 network (Keller Jordan's CIFAR-10 speedrun net), NHWC, in Flax.

    whiten: conv 2x2 valid, 3 -> 24, weights frozen to patch-whitening filters, bias
    3 groups (widths 64/256/256): conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
    global max-pool -> Dense(10, no bias) -> logits * scale (1/9)

BatchNorm: scale frozen at 1 (no ``scale`` parameter), epsilon 1e-12, running-average momentum
0.6 (Flax convention: weight of the old average), statistics in float32 whatever ``dtype``.
Activations by name from ``wsjax.models.activations`` (``gelu`` is the exact erf form, as
PyTorch's). Every option the recipe turns on is a field, so each trick can be switched off for
an ablation. ``ResNet9`` is David Page's net with the same options
(CELU and ghost BatchNorm are his tricks).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wsjax.models.activations import activation
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


class _Layers(nn.Module):
    """Shared fields and the conv / BN / activation factories of the fast nets."""

    identity: bool = True
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12
    bn_scale: bool = False
    ghost_size: int | None = None
    act: str = "gelu"
    dtype: Any = None

    def conv(self, width, name):
        init = identity_init() if self.identity else torch_kernel_init
        return nn.Conv(width, (3, 3), padding="SAME", use_bias=False, kernel_init=init,
                       dtype=self.dtype, name=name)

    def bn(self, train, name):
        return BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_eps, use_scale=self.bn_scale,
                         ghost_size=self.ghost_size, dtype=self.dtype, name=name)

    def activation(self, x):
        return activation(self.act)(x)


def _fields(module: _Layers) -> dict:
    return {f: getattr(module, f) for f in
            ("identity", "bn_momentum", "bn_eps", "bn_scale", "ghost_size", "act", "dtype")}


class ConvGroup(_Layers):
    """conv3x3 -> maxpool 2 -> BN -> act -> conv3x3 -> BN -> act (``pool_only``: the first
    three; ``residual``: adds two conv-BN-act blocks around a skip, as Page's ResNet-9)."""

    width: int = 64
    second_conv: bool = True
    residual: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        x = self.conv(self.width, "conv1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = self.activation(self.bn(train, "norm1")(x, mask))
        if self.second_conv:
            x = self.activation(self.bn(train, "norm2")(self.conv(self.width, "conv2")(x), mask))
        if self.residual:
            y = self.activation(self.bn(train, "res_norm1")(self.conv(self.width, "res1")(x), mask))
            y = self.activation(self.bn(train, "res_norm2")(self.conv(self.width, "res2")(y), mask))
            x = x + y
        return x


class AirbenchNet(_Layers):
    """See the module docstring. ``whiten_width`` is the number of whitening filters (24 for
    2x2x3 patches and their negatives); the kernel is set from data with
    ``wsjax.speedrun.whitening.whitening_filters`` after init."""

    num_classes: int = 10
    widths: tuple = (64, 256, 256)
    whiten_size: int = 2
    scale: float = 1.0 / 9.0

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None, return_features: bool = False):
        c = x.shape[-1]
        x = nn.Conv(2 * self.whiten_size ** 2 * c, (self.whiten_size,) * 2, padding="VALID",
                    use_bias=True, kernel_init=torch_kernel_init, dtype=self.dtype,
                    name="whiten")(x.astype(self.dtype or x.dtype))
        x = self.activation(x)
        bn_mask = None if mask is None else mask[:, None, None, None]
        for i, w in enumerate(self.widths):
            x = ConvGroup(**_fields(self), width=w, name=f"group{i + 1}")(
                x, train=train, mask=bn_mask)
        features = jnp.max(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, use_bias=False, kernel_init=torch_kernel_init,
                          dtype=self.dtype, name="head")(features) * self.scale
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits


class ResNet9(_Layers):
    """David Page's ResNet-9 ("How to train your ResNet"), NHWC: prep conv 64 -> BN -> act;
    group 128 (conv, pool, BN, act) + residual; group 256; group 512 + residual; global
    max-pool; Dense(classes, no bias) x ``scale`` (1/8). With ``whiten_size`` the prep layer
    follows a frozen patch-whitening conv (his 3x3 PCA trick; 0: none)."""

    num_classes: int = 10
    widths: tuple = (64, 128, 256, 512)
    whiten_size: int = 0
    scale: float = 0.125

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None, return_features: bool = False):
        c = x.shape[-1]
        x = x.astype(self.dtype or x.dtype)
        if self.whiten_size:
            x = nn.Conv(2 * self.whiten_size ** 2 * c, (self.whiten_size,) * 2, padding="SAME",
                        use_bias=True, kernel_init=torch_kernel_init, dtype=self.dtype,
                        name="whiten")(x)
        bn_mask = None if mask is None else mask[:, None, None, None]
        prep, *groups = self.widths
        x = self.activation(self.bn(train, "prep_norm")(self.conv(prep, "prep")(x), bn_mask))
        for i, w in enumerate(groups):
            x = ConvGroup(**_fields(self), width=w, second_conv=False, residual=i != 1,
                          name=f"group{i + 1}")(x, train=train, mask=bn_mask)
        features = jnp.max(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, use_bias=False, kernel_init=torch_kernel_init,
                          dtype=self.dtype, name="head")(features) * self.scale
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
