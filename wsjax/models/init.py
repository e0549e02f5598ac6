"""PyTorch's default initializers, written for Flax.

The perturbation in shrink-perturb is a fresh initialization, so its scale is whatever the
initializer draws: to reproduce the study these must be PyTorch's, not Flax's defaults.

PyTorch's ``nn.Linear`` and ``nn.Conv2d`` draw weights from kaiming_uniform(a=sqrt(5)), which is
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same bound. BatchNorm starts at scale 1,
bias 0, running mean 0, running variance 1 (Flax's BatchNorm already does that).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

# variance_scaling(1/3, fan_in, uniform) has limit sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in),
# and computes fan_in as in_features * receptive field for Flax's (..., in, out) kernels.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """Returns PyTorch's bias initializer, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Flax bias initializers see only the bias shape, so the fan-in of the layer is bound here.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, *, use_bias: bool = True, name=None, dtype=None):
    """An ``nn.Dense`` initialized like PyTorch's ``nn.Linear(fan_in, features)``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(fan_in),
        dtype=dtype,
        name=name,
    )


def torch_conv(features: int, kernel: int, stride: int = 1, *, padding: int | None = None,
               name=None, dtype=None):
    """A bias-free ``nn.Conv`` with PyTorch's weight init and PyTorch's symmetric padding.

    Flax's ``'SAME'`` pads a stride-2 3x3 convolution asymmetrically (0, 1); PyTorch pads 1 on
    both sides, which picks different pixels, so the padding is explicit.
    """
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=torch_kernel_init,
        dtype=dtype,
        name=name,
    )
