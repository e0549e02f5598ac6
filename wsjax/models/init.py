"""Initialization schemes by name, PyTorch's default first, written for Flax.

The perturbation in shrink-perturb is a fresh initialization, so its scale is whatever the
initializer draws: to reproduce the study these must be PyTorch's, not Flax's defaults.

PyTorch's ``nn.Linear`` and ``nn.Conv2d`` draw weights from kaiming_uniform(a=sqrt(5)), which is
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same bound. BatchNorm starts at scale 1,
bias 0, running mean 0, running variance 1 (Flax's BatchNorm already does that).

``INIT_SCHEMES`` names the others a training lesson compares (every wsjax model takes one as
``init=``), each as PyTorch's ``torch.nn.init`` function of that name draws it, with gain 1
unless the name says otherwise; fan_in = input channels x kernel area, fan_out = output
channels x kernel area:

==================  ==============================  ==========================
name                weights                         variance
==================  ==============================  ==========================
``torch``           U(+-1/sqrt(fan_in))             1 / (3 fan_in)
``glorot_uniform``  xavier_uniform_                 2 / (fan_in + fan_out)
``glorot_normal``   xavier_normal_                  2 / (fan_in + fan_out)
``he_uniform``      kaiming_uniform_ (ReLU gain)    2 / fan_in
``he_normal``       kaiming_normal_ (ReLU gain)     2 / fan_in
``lecun_uniform``   U(+-sqrt(3 / fan_in))           1 / fan_in
``lecun_normal``    N(0, 1 / fan_in)                1 / fan_in
``orthogonal``      orthogonal_ (gain 1)            1 / max(rows, columns)
``zeros``           all zero                        0
==================  ==============================  ==========================

Normal draws are not truncated (as PyTorch; Flax's ``he_normal`` and ``lecun_normal`` are).
The orthogonal matrix is the kernel flattened to (fan_in, output channels). Biases: PyTorch's
U(+-1/sqrt(fan_in)) under ``torch``, zero under every other scheme (what a lesson that calls
``xavier_uniform_`` on the weights does with ``zeros_`` on the biases). ``zeros`` makes every
unit of a layer compute the same function: the symmetry problem a lesson shows with it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

# variance_scaling(1/3, fan_in, uniform) has limit sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in),
# and computes fan_in as in_features * receptive field for Flax's (..., in, out) kernels.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


INIT_SCHEMES = ("torch", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                "lecun_uniform", "lecun_normal", "orthogonal", "zeros")

_KERNEL_INITS = {
    "torch": torch_kernel_init,
    "glorot_uniform": nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": nn.initializers.variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
    "orthogonal": nn.initializers.orthogonal(),
    "zeros": nn.initializers.zeros,
}


def check_init(scheme: str) -> str:
    """``scheme`` if it names an initialization scheme, else a ValueError listing them."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {list(INIT_SCHEMES)}")
    return scheme


def kernel_init(scheme: str = "torch"):
    """The Flax initializer of weight matrices and conv kernels under ``scheme``."""
    return _KERNEL_INITS[check_init(scheme)]


def bias_init(scheme: str, fan_in: int):
    """The Flax initializer of a layer's bias under ``scheme`` (PyTorch's for ``torch``,
    zeros otherwise; see the module docstring)."""
    return torch_bias_init(fan_in) if check_init(scheme) == "torch" else nn.initializers.zeros


def kernel_variance(scheme: str, shape) -> float:
    """The variance ``scheme`` gives each entry of a kernel of ``shape`` ((..., in, out), Flax's
    layout): the table of the module docstring."""
    *receptive, fan_in_ch, out_ch = shape
    area = math.prod(receptive)
    fan_in, fan_out = fan_in_ch * area, out_ch * area
    return {"torch": 1.0 / (3 * fan_in), "glorot_uniform": 2.0 / (fan_in + fan_out),
            "glorot_normal": 2.0 / (fan_in + fan_out), "he_uniform": 2.0 / fan_in,
            "he_normal": 2.0 / fan_in, "lecun_uniform": 1.0 / fan_in,
            "lecun_normal": 1.0 / fan_in, "orthogonal": 1.0 / max(fan_in, out_ch),
            "zeros": 0.0}[check_init(scheme)]


def torch_bias_init(fan_in: int):
    """Returns PyTorch's bias initializer, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Flax bias initializers see only the bias shape, so the fan-in of the layer is bound here.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, *, use_bias: bool = True, name=None, dtype=None,
                init: str = "torch"):
    """An ``nn.Dense`` initialized like PyTorch's ``nn.Linear(fan_in, features)`` (or by
    another scheme of ``INIT_SCHEMES``)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=kernel_init(init),
        bias_init=bias_init(init, fan_in),
        dtype=dtype,
        name=name,
    )


def torch_conv(features: int, kernel: int, stride: int = 1, *, padding: int | None = None,
               name=None, dtype=None, init: str = "torch"):
    """A bias-free ``nn.Conv`` with PyTorch's weight init (or ``init``, a scheme of
    ``INIT_SCHEMES``) and PyTorch's symmetric padding.

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
        kernel_init=kernel_init(init),
        dtype=dtype,
        name=name,
    )
