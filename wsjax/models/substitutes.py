"""Cheap substitutes for a k x k convolution, as drop-in Flax modules chosen by a ``ConvSpec``.

A model that builds its convolutions with ``make_conv(spec, ...)`` takes every substitute
through one argument (``WideResNet(conv=...)``, ``ResNet18(conv=...)``). Each substitute maps
``cin`` to ``cout`` channels with the same kernel size, stride and padding as the convolution it
replaces, has no bias (as the convolutions of the host nets), and keeps no nonlinearity or
normalization inside (the host block's BN-ReLU surround it):

================  ===================================================  ========================
kind              what it computes                                     parameters
================  ===================================================  ========================
``full``          the k x k convolution itself                         k^2 cin cout
``separable``     grouped k x k (``channels_per_group`` inputs each;   k^2 cin cpg + cin cout
                  1 = depthwise), then a 1 x 1 pointwise
``bottleneck``    1 x 1 cin -> m, grouped k x k m -> m (``groups``),   cin m + k^2 m^2 / g
                  1 x 1 m -> cout; m = ``fraction`` x cout rounded to  + m cout
                  a multiple of g
``hashed``        HashedNet: the full kernel's entries drawn from a    round(fraction k^2 cin
                  shared vector by a fixed hash, with a hashed sign    cout), at least 1
``hashed_sep``    depthwise k x k, then a hashed 1 x 1 pointwise       k^2 cin + round(fraction
                                                                       cin cout)
``acdc``          depthwise k x k, then ``factors`` ACDC factors        k^2 cin + 2 n factors,
                  (x -> idct(d * dct(a * x)), DCT-II orthonormal)       n = max(cin, cout)
                  with a riffle shuffle (or a fixed random permutation)
                  between them
================  ===================================================  ========================

``substitute_params`` is that last column, as a function; the tests check it against the
modules. **Init.** Each substitute draws its factors so that, for an input of independent
zero-mean unit-variance entries, its output has the variance the replaced convolution has
under the host's init scheme (``wsjax.models.init``): ``k^2 cin Var(w)``. Every factor but
the last has unit gain (variance 1 / its fan-in), the last carries the target gain; HashedNet
draws its shared vector with the replaced kernel's variance (hash collisions do not change the
expected output variance: the sign hash makes colliding products uncorrelated); ACDC's
diagonals are ``c (1 + 0.1 z)``, z standard normal (near the identity, as ACDC stacks need to
train), with c chosen so the stack's gain is the target. Normal draws throughout.

**Mult-adds** (``mult_adds`` of a module, which ``wsjax.summary`` reads): a HashedNet layer does
the full convolution's work (it saves memory, not arithmetic). ACDC counts its diagonals (2n
per factor) and each DCT as a fast transform (n log2 n), the cost of ACDC's arithmetic; this
implementation applies the DCT as a dense n x n matrix (fast on accelerators at these sizes),
which XLA's flop count in the summary shows.

ACDC pads a channel count up by repeating the input channels (cout > cin) and truncates the
output to cout (cout < cin), so every factor is square.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsjax.models.init import kernel_variance, torch_conv

KINDS = ("full", "separable", "bottleneck", "hashed", "hashed_sep", "acdc")
# Each kind's size knob: the one hyperparameter a parameter budget is solved for.
KNOBS = {"full": None, "separable": "channels_per_group", "bottleneck": "fraction",
         "hashed": "fraction", "hashed_sep": "fraction", "acdc": "factors"}
ACDC_SPREAD = 0.1  # relative std of ACDC's diagonal entries around their mean


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Which convolution a model builds (see the module docstring for each ``kind``).

    ``fraction`` sizes ``bottleneck`` (m / cout), ``hashed`` and ``hashed_sep`` (shared weights
    / virtual weights); ``channels_per_group`` sizes ``separable``; ``factors`` and
    ``permutation`` (``'riffle'`` or ``'random'``) size ``acdc``; ``groups`` is the bottleneck's
    grouping. ``ConvSpec.parse('hashed:0.1')`` reads a flag's ``kind[:knob]``."""

    kind: str = "full"
    fraction: float = 0.25
    channels_per_group: int = 1
    groups: int = 1
    factors: int = 2
    permutation: str = "riffle"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown conv kind {self.kind!r}; choose one of {list(KINDS)}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"ConvSpec fraction={self.fraction!r} must be in (0, 1]")
        for name in ("channels_per_group", "groups", "factors"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"ConvSpec {name}={value!r} must be a positive integer")
        if self.permutation not in ("riffle", "random"):
            raise ValueError(f"ConvSpec permutation={self.permutation!r}: 'riffle' or 'random'")

    @property
    def knob(self) -> str | None:
        """The name of the field a parameter budget sets (None for ``full``)."""
        return KNOBS[self.kind]

    def with_knob(self, value) -> ConvSpec:
        """This spec with its size knob set to ``value``."""
        if self.knob is None:
            raise ValueError("a full convolution has no size knob")
        if self.knob in ("channels_per_group", "factors"):
            value = int(value)
        return dataclasses.replace(self, **{self.knob: value})

    @classmethod
    def parse(cls, text: str) -> ConvSpec:
        """``'full'``, ``'acdc'``, ``'hashed:0.1'``, ``'separable:2'``, ... (kind, then the
        kind's knob)."""
        kind, _, value = text.partition(":")
        spec = cls(kind)
        if not value:
            return spec
        if spec.knob is None:
            raise ValueError(f"--conv {text!r}: a full convolution takes no size")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--conv {text!r}: the size after ':' must be a number") from None
        return spec.with_knob(number)

    def __str__(self) -> str:
        return self.kind if self.knob is None else f"{self.kind}:{getattr(self, self.knob):g}"


def as_spec(conv) -> ConvSpec:
    """A ``ConvSpec`` from a spec or its string form (``'hashed:0.1'``)."""
    return conv if isinstance(conv, ConvSpec) else ConvSpec.parse(conv)


def bottleneck_width(fraction: float, cout: int, groups: int) -> int:
    """The bottleneck's middle width: ``fraction * cout`` rounded to a multiple of ``groups``
    (at least ``groups``)."""
    return max(groups, int(round(fraction * cout / groups)) * groups)


def hashed_size(fraction: float, virtual: int) -> int:
    """How many shared weights a hashed layer of ``virtual`` entries keeps."""
    return max(1, int(round(fraction * virtual)))


def substitute_params(spec, cin: int, cout: int, kernel: int = 3) -> int:
    """The parameter count of one substitute for a ``kernel`` x ``kernel`` conv from ``cin``
    to ``cout`` channels (the module docstring's table)."""
    spec = as_spec(spec)
    k2 = kernel * kernel
    if spec.kind == "full":
        return k2 * cin * cout
    if spec.kind == "separable":
        return k2 * cin * spec.channels_per_group + cin * cout
    if spec.kind == "bottleneck":
        m = bottleneck_width(spec.fraction, cout, spec.groups)
        return cin * m + k2 * m * m // spec.groups + m * cout
    if spec.kind == "hashed":
        return hashed_size(spec.fraction, k2 * cin * cout)
    if spec.kind == "hashed_sep":
        return k2 * cin + hashed_size(spec.fraction, cin * cout)
    return k2 * cin + 2 * max(cin, cout) * spec.factors


def _normal(variance: float):
    std = math.sqrt(max(variance, 0.0))

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def _padding(kernel: int):
    pad = kernel // 2
    return ((pad, pad), (pad, pad))


def block_diagonal(kernel, groups: int):
    """A grouped kernel (k, k, C / groups, out) as the full kernel (k, k, C, out) it stands
    for: zero outside the groups' blocks."""
    k, _, per_in, out = kernel.shape
    per_out = out // groups
    full = jnp.zeros((k, k, groups, per_in, groups, per_out), kernel.dtype)
    g = jnp.arange(groups)
    blocks = kernel.reshape(k, k, per_in, groups, per_out).transpose(3, 0, 1, 2, 4)
    full = full.at[:, :, g, :, g, :].set(blocks)
    return full.reshape(k, k, groups * per_in, out)


def grouped_conv(x, kernel, stride: int, groups: int):
    """A grouped convolution of ``x`` (N, H, W, C) with ``kernel`` (k, k, C / groups, out) and
    PyTorch's symmetric padding: the numbers of ``nn.Conv(feature_group_count=groups)``.

    XLA's CPU backend runs grouped convolutions 5-40x slower than full ones, so there a
    depthwise one (one channel per group) is a sum of k^2 shifted products, and any other a
    full convolution with the block-diagonal kernel (``block_diagonal``: more arithmetic, less
    time). Other backends run the grouped convolution itself."""
    k, _, per_in, out = kernel.shape
    pad = k // 2
    if jax.default_backend() == "cpu" and per_in == 1 and out == x.shape[-1]:
        n, h_in, w_in, _ = x.shape
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h = (h_in + 2 * pad - k) // stride + 1
        w = (w_in + 2 * pad - k) // stride + 1
        y = 0.0
        for i in range(k):
            for j in range(k):
                y = y + xp[:, i:i + stride * (h - 1) + 1:stride,
                           j:j + stride * (w - 1) + 1:stride] * kernel[i, j, 0]
        return y
    if jax.default_backend() == "cpu":
        kernel, groups = block_diagonal(kernel, groups), 1
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


class GroupedConv(nn.Module):
    """``nn.Conv(features, (k, k), feature_group_count=groups, use_bias=False)`` with the same
    parameter (``kernel``, (k, k, C / groups, features)), computed by ``grouped_conv``."""

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    variance: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", _normal(self.variance),
                            (self.kernel_size, self.kernel_size, c // self.groups,
                             self.features))
        dtype = self.dtype or x.dtype
        return grouped_conv(x.astype(dtype), kernel.astype(dtype), self.stride, self.groups)

    def mult_adds(self, inputs, output) -> int:
        """k^2 (C / groups) multiply-adds per output value."""
        per_in = int(inputs.shape[-1]) // self.groups
        return math.prod(output.shape[1:]) * self.kernel_size ** 2 * per_in


def _conv(features, kernel, stride, variance, name, groups=1, dtype=None):
    if groups > 1:
        return GroupedConv(features, kernel, stride, groups, variance, dtype, name=name)
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=_padding(kernel), feature_group_count=groups, use_bias=False,
                   kernel_init=_normal(variance), dtype=dtype, name=name)


def _path_seed(module: nn.Module, salt: str) -> int:
    # crc32 of the layer's path: stable across processes and distinct per layer.
    return zlib.crc32(("/".join(module.path) + salt).encode())


def fmix32(x, xp=np):
    """MurmurHash3's 32-bit finalizer on unsigned 32-bit integers, in NumPy (``xp=np``) or
    JAX (``xp=jnp``): both give the same bits, so a layer's hash has a NumPy reference."""
    x = xp.asarray(x, dtype=xp.uint32)
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * xp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hash_buckets(size: int, buckets: int, seed: int, xp=np):
    """HashedNet's fixed maps for ``size`` virtual weights: the bucket of each (in
    ``[0, buckets)``) and its sign (+-1)."""
    i = xp.arange(size, dtype=xp.uint32)
    seed = np.uint32(seed)
    bucket = fmix32(i ^ seed, xp) % xp.uint32(buckets)
    sign = 1 - 2 * (fmix32(i ^ (seed ^ np.uint32(0x9E3779B9)), xp) & xp.uint32(1)).astype(
        xp.int32)
    return bucket.astype(xp.int32), sign


def hashed_kernel(weights, shape, seed: int, xp=jnp):
    """The virtual kernel of ``shape`` a HashedNet layer uses: entry i is
    ``sign(i) * weights[bucket(i)]``."""
    size = math.prod(shape)
    bucket, sign = hash_buckets(size, weights.shape[0], seed, xp)
    return (sign.astype(weights.dtype) * weights[bucket]).reshape(shape)


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``dct(x) = M @ x``, ``idct(y) = M.T @ y``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


def riffle(n: int) -> np.ndarray:
    """A perfect riffle shuffle of ``n`` channels: output j takes input ``riffle(n)[j]``, the
    two halves interleaved (0, h, 1, h + 1, ...)."""
    h = (n + 1) // 2
    first, second = np.arange(h), np.arange(h, n)
    out = np.empty(n, np.int64)
    out[0::2], out[1::2] = first, second
    return out


def acdc_gain_scale(gain: float, factors: int) -> float:
    """The scale c of ACDC's diagonals ``c (1 + ACDC_SPREAD z)`` that gives a stack of
    ``factors`` factors the output variance ``gain`` (per factor E[a^2] E[d^2] = c^4 (1 +
    s^2)^2)."""
    per_factor = gain ** (1.0 / factors)
    return per_factor ** 0.25 / math.sqrt(1.0 + ACDC_SPREAD ** 2)


class _Substitute(nn.Module):
    """Fields every substitute shares: output ``features``, ``kernel``, ``stride``, the output
    variance ``gain`` to match (for unit-variance input), and the spec."""

    features: int
    kernel: int = 3
    stride: int = 1
    gain: float = 1.0
    spec: ConvSpec = ConvSpec()
    dtype: Any = None


class SeparableConv(_Substitute):
    """Grouped (``channels_per_group`` inputs per group; 1 = depthwise) k x k, then 1 x 1."""

    @nn.compact
    def __call__(self, x):
        cin, cpg = x.shape[-1], self.spec.channels_per_group
        if cin % cpg:
            raise ValueError(f"separable conv: channels_per_group={cpg} must divide the "
                             f"{cin} input channels")
        k2 = self.kernel * self.kernel
        y = _conv(cin, self.kernel, self.stride, 1.0 / (k2 * cpg), "depthwise",
                  groups=cin // cpg, dtype=self.dtype)(x)
        return _conv(self.features, 1, 1, self.gain / cin, "pointwise", dtype=self.dtype)(y)


class BottleneckConv(_Substitute):
    """1 x 1 down to m channels, grouped k x k, 1 x 1 up (see ``bottleneck_width``)."""

    @nn.compact
    def __call__(self, x):
        cin, g = x.shape[-1], self.spec.groups
        m = bottleneck_width(self.spec.fraction, self.features, g)
        k2 = self.kernel * self.kernel
        y = _conv(m, 1, 1, 1.0 / cin, "reduce", dtype=self.dtype)(x)
        y = _conv(m, self.kernel, self.stride, g / (k2 * m), "conv", groups=g,
                  dtype=self.dtype)(y)
        return _conv(self.features, 1, 1, self.gain / m, "expand", dtype=self.dtype)(y)


class HashedConv(_Substitute):
    """HashedNet: the full kernel's entries are signed copies of a shared vector ``weights``
    (``hashed_kernel``, hash seeded by the layer's path). ``kind='hashed_sep'`` hashes only
    the 1 x 1 pointwise after a full depthwise k x k."""

    def _hashed(self, x, kernel: int, stride: int, gain_fan: float, name: str):
        cin = x.shape[-1]
        shape = (kernel, kernel, cin, self.features)
        size = hashed_size(self.spec.fraction, math.prod(shape))
        weights = self.param(name, _normal(self.gain / gain_fan), (size,), jnp.float32)
        w = hashed_kernel(weights, shape, _path_seed(self, name))
        dtype = self.dtype or x.dtype
        return jax.lax.conv_general_dilated(
            x.astype(dtype), w.astype(dtype), (stride, stride), _padding(kernel),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        if self.spec.kind == "hashed":
            return self._hashed(x, self.kernel, self.stride, self.kernel ** 2 * cin, "weights")
        y = _conv(cin, self.kernel, self.stride, 1.0 / self.kernel ** 2, "depthwise",
                  groups=cin, dtype=self.dtype)(x)
        return self._hashed(y, 1, 1, cin, "pointwise_weights")

    def mult_adds(self, inputs, output) -> int:
        """The hashed convolution's own multiply-adds per example (the full conv's)."""
        pixels = math.prod(output.shape[1:-1])
        k = self.kernel if self.spec.kind == "hashed" else 1
        return pixels * k * k * int(inputs.shape[-1]) * self.features


def acdc_stack(x, a, d, perms):
    """``factors`` ACDC factors on the last axis of ``x``: factor f is
    ``idct(d[f] * dct(a[f] * x))``, then ``x[..., perms[f]]`` between factors.

    Each permutation is folded into the inverse DCT before it (a permuted orthonormal matrix),
    so a factor is two matrix products and two diagonal scalings, with no gather."""
    n = x.shape[-1]
    m = dct_matrix(n)
    for f in range(a.shape[0]):
        inverse = m if f == a.shape[0] - 1 else m[:, perms[f]]
        x = ((x * a[f]) @ jnp.asarray(m.T, x.dtype) * d[f]) @ jnp.asarray(inverse, x.dtype)
    return x


class ACDCConv(_Substitute):
    """Depthwise k x k, then an ACDC stack of ``factors`` factors on the channels (see
    ``acdc_stack``); permutations between factors are a riffle shuffle or fixed random ones."""

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        n, factors = max(cin, self.features), self.spec.factors
        y = _conv(cin, self.kernel, self.stride, 1.0 / self.kernel ** 2, "depthwise",
                  groups=cin, dtype=self.dtype)(x)
        if n > cin:  # repeat channels so the square stack sees every input
            y = jnp.tile(y, (1,) * (y.ndim - 1) + (-(-n // cin),))[..., :n]
        c = acdc_gain_scale(self.gain, factors)

        def diag(key, shape, dtype=jnp.float32):
            return c * (1.0 + ACDC_SPREAD * jax.random.normal(key, shape, dtype))

        a = self.param("a", diag, (factors, n))
        d = self.param("d", diag, (factors, n))
        if self.spec.permutation == "riffle":
            perms = [riffle(n)] * (factors - 1)
        else:
            rng = np.random.default_rng(_path_seed(self, "perm"))
            perms = [rng.permutation(n) for _ in range(factors - 1)]
        dtype = self.dtype or y.dtype
        y = acdc_stack(y.astype(dtype), a.astype(dtype), d.astype(dtype), perms)
        return y[..., :self.features]

    def mult_adds(self, inputs, output) -> int:
        """The ACDC stack's multiply-adds per example: 2n diagonal products and two fast DCTs
        (n log2 n each) per factor and pixel (the depthwise conv is counted as a Conv)."""
        n = max(int(inputs.shape[-1]), self.features)
        pixels = math.prod(output.shape[1:-1])
        return int(pixels * self.spec.factors * (2 * n + 2 * n * math.log2(max(n, 2))))


_MODULES = {"separable": SeparableConv, "bottleneck": BottleneckConv, "hashed": HashedConv,
            "hashed_sep": HashedConv, "acdc": ACDCConv}


def make_conv(conv, features: int, kernel: int, stride: int = 1, *, fan_in: int,
              name: str, init: str = "torch", dtype=None) -> nn.Module:
    """The convolution ``conv`` (a ``ConvSpec`` or its string) names, for ``fan_in`` input
    channels: ``full`` is the host's own ``torch_conv`` (same parameter names as before, so
    checkpoints of full models load); a substitute matches its output variance to what
    ``init`` gives that convolution."""
    spec = as_spec(conv)
    if spec.kind == "full":
        return torch_conv(features, kernel, stride, name=name, dtype=dtype, init=init)
    gain = kernel * kernel * fan_in * kernel_variance(init, (kernel, kernel, fan_in, features))
    return _MODULES[spec.kind](features, kernel, stride, gain, spec, dtype, name=name)
