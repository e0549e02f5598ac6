"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016): WRN-d-k, pre-activation blocks.

A 3x3 stem to 16 channels, three groups of n = (d - 4) / 6 blocks of widths 16k, 32k, 64k
(strides 1, 2, 2), then BN-ReLU, global average pooling and a linear head. A block is
BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, added to the input, or to a 1x1 conv of the
activated input when the shape changes. As the reference code: no conv biases, BN with eps 1e-5
and PyTorch's momentum 0.1, He-normal (fan-in) init of convs and head, zero head bias.
WRN-28-10 has 36,479,194 parameters for 10 classes (``tests/test_budget.py``).

Options: ``dropout`` between a block's convs (the WRN paper's 0.3); ``drop_path`` > 0 drops
each block's residual branch per example (stochastic depth), at a rate rising linearly to
``drop_path`` at the last block; ``conv`` replaces every block's 3x3 convolutions by a
substitute (``wsjax.models.substitutes``; the stem and 1x1 shortcuts stay full, as in
Moonshine). Each group's output (before the final BN-ReLU) is sown into the ``'attention'``
collection as ``group{1,2,3}``: what attention transfer (``wsjax.distill``) compares.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wsjax.models.batchnorm import example_mask, norm_layer
from wsjax.models.dropout import DropPath, Dropout
from wsjax.models.init import torch_conv, torch_dense
from wsjax.models.substitutes import ConvSpec, make_conv


def wrn_blocks(depth: int) -> int:
    """Blocks per group of WRN-``depth``: (depth - 4) / 6, which must be a whole number."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth={depth} must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40)")
    return (depth - 4) // 6


class WideBlock(nn.Module):
    """One pre-activation block of a Wide ResNet (see the module docstring)."""

    features: int
    stride: int = 1
    dropout: float = 0.0
    drop_path: float = 0.0
    conv: ConvSpec | str = "full"
    init_scheme: str = "he_normal"
    bn_momentum: float = 0.9
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        norm = partial(norm_layer, train, self.bn_momentum, self.dtype)
        m = example_mask(mask, x)
        cin = x.shape[-1]
        o = nn.relu(norm(name="bn1")(x, mask=m))
        y = make_conv(self.conv, self.features, 3, self.stride, fan_in=cin, name="conv1",
                      init=self.init_scheme, dtype=self.dtype)(o)
        y = nn.relu(norm(name="bn2")(y, mask=m))
        if self.dropout:
            y = Dropout(self.dropout, name="dropout")(y, train)
        y = make_conv(self.conv, self.features, 3, 1, fan_in=self.features, name="conv2",
                      init=self.init_scheme, dtype=self.dtype)(y)
        if self.drop_path:
            y = DropPath(self.drop_path, name="drop_path")(y, train)
        if cin != self.features or self.stride != 1:
            x = torch_conv(self.features, 1, self.stride, padding=0, name="shortcut_conv",
                           init=self.init_scheme, dtype=self.dtype)(o)
        return x + y


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` (see the module docstring). Layers: ``stem_conv``,
    ``group{1,2,3}_block{i}``, ``final_bn``, ``head``; called like every wsjax model."""

    num_classes: int
    depth: int = 28
    widen: int = 10
    dropout: float = 0.0
    drop_path: float = 0.0
    conv: ConvSpec | str = "full"
    init_scheme: str = "he_normal"
    bn_momentum: float = 0.9
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, return_features: bool = False):
        n = wrn_blocks(self.depth)
        x = x.astype(self.dtype) if self.dtype is not None else x
        x = torch_conv(16, 3, 1, name="stem_conv", init=self.init_scheme, dtype=self.dtype)(x)
        total, index = 3 * n, 0
        for group, width in enumerate((16 * self.widen, 32 * self.widen, 64 * self.widen)):
            for block in range(n):
                index += 1
                x = WideBlock(width, 2 if group and not block else 1, self.dropout,
                              self.drop_path * index / total, self.conv, self.init_scheme,
                              self.bn_momentum, self.dtype,
                              name=f"group{group + 1}_block{block}")(x, train, mask)
            self.sow("attention", f"group{group + 1}", x)
        x = norm_layer(train, self.bn_momentum, self.dtype, "final_bn")(
            x, mask=example_mask(mask, x))
        features = jnp.mean(nn.relu(x), axis=(1, 2))
        logits = torch_dense(self.num_classes, features.shape[-1], name="head",
                             dtype=self.dtype, init=self.init_scheme)(features)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
