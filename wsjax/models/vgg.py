"""VGG for CIFAR: VGG-11, 13, 16 and 19 with BatchNorm, beside the ResNets for transfer and
fine-tuning lessons.

The CIFAR variant most PyTorch code uses: each ``features`` entry of ``CONFIGS`` is a 3x3
convolution (with bias, padding 1) -> BatchNorm -> ReLU, ``'M'`` a 2x2 max-pool; after five
pools a 32x32 image is 1x1x512, flattened into one linear ``head``. Parameters for 10 classes:
VGG-11 9,231,114; VGG-13 9,416,010; VGG-16 14,728,266; VGG-19 20,040,522. Layers are named
``conv{i}``/``bn{i}`` (i counts convolutions from 0) and ``head``; each ReLU's output is sown
as ``conv{i}_act``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wsjax.models.batchnorm import BatchNorm
from wsjax.models.init import bias_init, kernel_init, torch_dense

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
         "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
         512, 512, "M"),
}


class VGG(nn.Module):
    """A CIFAR VGG (see the module docstring); ``features`` is one of ``CONFIGS`` or any
    sequence of widths and ``'M'``; ``widths_scale`` divides every width (a narrow VGG for a
    CPU). ``__call__(x, train=False, mask=None, return_features=False)`` as every wsjax model:
    in train mode BatchNorm uses the statistics of the examples where ``mask`` is true."""

    num_classes: int
    features: Sequence[Any] = CONFIGS[11]
    widths_scale: int = 1
    bn_momentum: float = 0.9
    init_scheme: str = "torch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, return_features: bool = False):
        pools = sum(1 for entry in self.features if entry == "M")
        if min(x.shape[1:3]) < 2 ** pools:
            raise ValueError(f"this VGG pools {pools} times: its inputs must be at least "
                             f"{2 ** pools}x{2 ** pools}, not {x.shape[1]}x{x.shape[2]}")
        m = None if mask is None else mask.reshape(mask.shape + (1, 1, 1)).astype(bool)
        conv = 0
        for entry in self.features:
            if entry == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            width = max(int(entry) // self.widths_scale, 1)
            fan_in = x.shape[-1] * 9
            x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)),
                        kernel_init=kernel_init(self.init_scheme),
                        bias_init=bias_init(self.init_scheme, fan_in), dtype=self.dtype,
                        name=f"conv{conv}")(x)
            x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=1e-5, dtype=self.dtype, name=f"bn{conv}")(x, mask=m)
            x = nn.relu(x)
            self.sow("intermediates", f"conv{conv}_act", x)
            conv += 1
        features = x.reshape((x.shape[0], -1))
        logits = torch_dense(self.num_classes, features.shape[-1], name="head",
                             dtype=self.dtype, init=self.init_scheme)(features)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
