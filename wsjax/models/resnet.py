"""CIFAR ResNet-18 as in the official warm-starting code (JordanAsh/warm_start, resnet.py).

3x3 stem (no max-pool), four stages of two BasicBlocks with strides 1/2/2/2, global average pool
and a linear head. ``widths=(16, 32, 64, 128)`` is the official narrow net (701,466 parameters
for 10 classes); ``(64, 128, 256, 512)`` the standard ResNet-18 (11,173,962).

BatchNorm follows PyTorch: eps 1e-5 and momentum 0.1 in PyTorch's convention, which is
``bn_momentum=0.9`` in Flax's (the weight of the old running average). One difference remains:
PyTorch updates the running variance with the unbiased batch variance (n / (n - 1)); Flax uses
the biased one. With n >= 2,048 values per channel at batch 128 this is under 0.05%.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wsjax.models.batchnorm import example_mask, norm_layer
from wsjax.models.dropout import DropBlock, Dropout
from wsjax.models.init import torch_conv, torch_dense
from wsjax.models.substitutes import ConvSpec, make_conv


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), ReLU."""

    features: int
    stride: int = 1
    bn_momentum: float = 0.9
    dtype: Any = None
    init_scheme: str = "torch"
    conv: ConvSpec | str = "full"

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        norm = partial(norm_layer, train, self.bn_momentum, self.dtype)
        m = example_mask(mask, x)
        y = make_conv(self.conv, self.features, 3, self.stride, fan_in=x.shape[-1],
                      dtype=self.dtype, name="conv1", init=self.init_scheme)(x)
        y = nn.relu(norm(name="bn1")(y, mask=m))
        # Post-ReLU units, named for the conv that feeds them (see ResNet18's docstring).
        self.sow("intermediates", "conv1_act", y)
        y = make_conv(self.conv, self.features, 3, 1, fan_in=self.features,
                      dtype=self.dtype, name="conv2", init=self.init_scheme)(y)
        y = norm(name="bn2")(y, mask=m)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = torch_conv(self.features, 1, self.stride, padding=0, dtype=self.dtype,
                           name="shortcut_conv", init=self.init_scheme)(x)
            x = norm(name="shortcut_bn")(x, mask=m)
        out = nn.relu(y + x)
        self.sow("intermediates", "conv2_act", out)
        return out


class ResNet18(nn.Module):
    """The study's CIFAR ResNet-18; see the module docstring. Layers: ``stem_conv``,
    ``stem_bn``, ``stage{1..4}_block{0,1}``, ``head``.

    ``__call__(x, train=False, mask=None, return_features=False)``: in train mode BatchNorm uses
    batch statistics over the examples where ``mask`` (B,) is true (a padded last batch) and
    updates its running averages; ``return_features`` also returns the pooled features.

    ``init_scheme`` names the scheme of every conv and the head (``wsjax.models.init``;
    default PyTorch's); ``dropblock`` > 0 applies DropBlock (``wsjax.models.dropout``, blocks
    of ``dropblock_size``) to the output of the last two stages in training, ``dropout`` > 0
    plain (unit-wise) dropout at the same places, for comparison. ``conv`` replaces the
    blocks' 3x3 convolutions by a cheap substitute (``wsjax.models.substitutes``; the stem and
    the 1x1 shortcuts stay full).

    Post-ReLU activations are sown into ``'intermediates'`` (a no-op unless mutable), each as
    ``<conv>_act`` for the conv whose output channels they are: ``stem_conv_act``,
    ``stage1_block0/conv1_act``, ``stage1_block0/conv2_act`` (the block's output, after the
    residual sum), ...
    """

    num_classes: int
    widths: Sequence[int] = (16, 32, 64, 128)
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
    bn_momentum: float = 0.9
    dtype: Any = None
    init_scheme: str = "torch"
    dropblock: float = 0.0
    dropblock_size: int = 3
    dropout: float = 0.0
    conv: ConvSpec | str = "full"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, return_features: bool = False):
        x = x.astype(self.dtype) if self.dtype is not None else x
        m = example_mask(mask, x)
        x = torch_conv(self.widths[0], 3, 1, dtype=self.dtype, name="stem_conv",
                       init=self.init_scheme)(x)
        x = norm_layer(train, self.bn_momentum, self.dtype, name="stem_bn")(x, mask=m)
        x = nn.relu(x)
        self.sow("intermediates", "stem_conv_act", x)
        for stage, (width, blocks) in enumerate(zip(self.widths, self.blocks_per_stage)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, stride, self.bn_momentum, self.dtype, self.init_scheme,
                               self.conv, name=f"stage{stage + 1}_block{block}")(x, train, mask)
            # The last two stages, as the DropBlock paper; no layer at all at rate 0.
            if stage >= len(self.widths) - 2 and self.dropblock:
                x = DropBlock(self.dropblock, self.dropblock_size,
                              name=f"stage{stage + 1}_dropblock")(x, train)
            if stage >= len(self.widths) - 2 and self.dropout:
                x = Dropout(self.dropout, name=f"stage{stage + 1}_dropout")(x, train)
        features = jnp.mean(x, axis=(1, 2))
        logits = torch_dense(self.num_classes, features.shape[-1], name="head",
                             dtype=self.dtype, init=self.init_scheme)(features)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
