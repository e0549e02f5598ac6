"""The 2-D toy sets of the TensorFlow Playground, drawn on the device: concentric circles,
two spirals, XOR and Gaussian blobs, with noise and a train/test ratio.

Each set is ``(points, labels)``: float32 points in [-6, 6]^2 (the Playground's radius-5
layouts plus noise) and int32 labels. ``points(name, key, n, noise)`` draws them with
``jax.random`` inside one compiled call, so they are device arrays from the start;
``playground(...)`` splits a draw into a ``wsjax.data.Dataset`` whose "images" are the points
as (N, 1, 1, 2) arrays, which every wsjax model and the engine take as they are:

>>> ds = playground("spiral", n=1000, noise=0.1, train_ratio=0.5, seed=0)
>>> engine = Engine(create_model("mlp", 2, widths=(8, 8), activation="tanh"), tx,
...                 normalization="none", input_shape=(1, 1, 2))

``noise`` is the standard deviation of Gaussian jitter added to each coordinate, in units of
the layout's radius (5): 0 gives the clean shapes, 0.1 a visibly noisy set. (The Playground's
own noise slider, 0-50, adds uniform jitter of a per-set scale; a Gaussian in one unit keeps
the four sets comparable.)
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

RADIUS = 5.0
TOY_SETS = ("circles", "spiral", "xor", "blobs")


def _circles(key, n):
    """Class 0 inside radius 0.5 R, class 1 on the ring between 0.7 R and R."""
    k_label, k_radius, k_angle = jax.random.split(key, 3)
    labels = jax.random.bernoulli(k_label, 0.5, (n,)).astype(jnp.int32)
    u = jax.random.uniform(k_radius, (n,))
    radius = jnp.where(labels == 0, u * 0.5, 0.7 + u * 0.3) * RADIUS
    angle = jax.random.uniform(k_angle, (n,), maxval=2 * math.pi)
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], -1), labels


def _spiral(key, n):
    """Two interleaved spirals of 1.75 turns from the centre out to R."""
    k_label, k_t = jax.random.split(key)
    labels = jax.random.bernoulli(k_label, 0.5, (n,)).astype(jnp.int32)
    t = jax.random.uniform(k_t, (n,))
    radius = t * RADIUS
    angle = 1.75 * t * 2 * math.pi + labels * math.pi
    return jnp.stack([radius * jnp.sin(angle), radius * jnp.cos(angle)], -1), labels


def _xor(key, n):
    """Uniform in the square [-R, R]^2 away from the axes; the label is whether x and y have
    the same sign."""
    k_xy, k_sign = jax.random.split(key)
    magnitude = jax.random.uniform(k_xy, (n, 2), minval=0.1, maxval=1.0) * RADIUS
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n, 2)), 1.0, -1.0)
    xy = magnitude * sign
    return xy, (xy[:, 0] * xy[:, 1] > 0).astype(jnp.int32)


def _blobs(key, n):
    """Two Gaussians (standard deviation R/5) centred at (R/2.5, R/2.5) and its opposite."""
    k_label, k_xy = jax.random.split(key)
    labels = jax.random.bernoulli(k_label, 0.5, (n,)).astype(jnp.int32)
    centre = jnp.where(labels[:, None] == 1, 1.0, -1.0) * (RADIUS / 2.5)
    return centre + jax.random.normal(k_xy, (n, 2)) * (RADIUS / 5), labels


_MAKERS = {"circles": _circles, "spiral": _spiral, "xor": _xor, "blobs": _blobs}


@partial(jax.jit, static_argnames=("name", "n"))
def _draw(name, key, n, noise):
    k_shape, k_noise = jax.random.split(key)
    xy, labels = _MAKERS[name](k_shape, n)
    return xy + noise * RADIUS * jax.random.normal(k_noise, xy.shape), labels


def points(name: str, key, n: int, noise: float = 0.0):
    """``n`` points of the toy set ``name`` (``TOY_SETS``) with Gaussian ``noise`` (see the
    module docstring): ``(float32 (n, 2), int32 (n,))`` device arrays."""
    if name not in _MAKERS:
        raise ValueError(f"unknown toy set {name!r}; choose one of {list(TOY_SETS)}")
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n={n!r} must be an integer >= 2")
    if not (isinstance(noise, (int, float)) and 0.0 <= noise <= 1.0):
        raise ValueError(f"noise={noise!r} must be a number in [0, 1] (a fraction of the "
                         f"radius {RADIUS:g})")
    return _draw(name, key, int(n), float(noise))


def playground(name: str, n: int = 500, noise: float = 0.0, train_ratio: float = 0.5,
               seed: int = 0):
    """A toy set as a ``wsjax.data.Dataset`` (points as (N, 1, 1, 2) float32 "images"):
    ``round(train_ratio * n)`` training points, the rest for testing; 2 classes."""
    from wsjax.data import Dataset

    if not (isinstance(train_ratio, (int, float)) and 0.0 < train_ratio < 1.0):
        raise ValueError(f"train_ratio={train_ratio!r} must be in (0, 1), e.g. 0.5")
    xy, labels = points(name, jax.random.PRNGKey(seed), n, noise)
    xy = np.asarray(xy).reshape(-1, 1, 1, 2)
    labels = np.asarray(labels)
    cut = min(max(round(train_ratio * n), 1), n - 1)
    return Dataset(name=f"toy:{name}", x_train=xy[:cut], y_train=labels[:cut],
                   x_test=xy[cut:], y_test=labels[cut:], num_classes=2)
