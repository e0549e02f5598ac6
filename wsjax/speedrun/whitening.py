"""Patch-whitening filters for a frozen first convolution (Page's and airbench's trick).

The first layer of the fast CIFAR-10 nets is a ``k x k`` convolution with no padding whose
filters are fixed from the data: the eigenvectors of the (uncentered) covariance of all
``k x k x C`` patches of some training images, each scaled by ``1 / sqrt(eigenvalue + eps)``, and
then the same filters negated, so a ReLU-like activation after it keeps both signs. The layer
then outputs decorrelated, unit-variance patch features, which makes the first epochs much
faster.
"""

from __future__ import annotations

import jax.numpy as jnp


def image_patches(images, size: int):
    """All ``size x size`` patches (stride 1, no padding) of NHWC ``images``, flattened in
    (row, column, channel) order: shape ``(N * (H-size+1) * (W-size+1), size * size * C)``.
    jit-able (``images`` may be traced)."""
    n, h, w, c = images.shape
    if size > min(h, w):
        raise ValueError(f"patch size {size} is larger than the images ({h}x{w})")
    rows, cols = h - size + 1, w - size + 1
    parts = [images[:, i:i + rows, j:j + cols, :] for i in range(size) for j in range(size)]
    # (N, rows, cols, size*size, C): flattened as a (size, size, C) HWIO kernel reads it.
    return jnp.stack(parts, axis=3).reshape(n * rows * cols, size * size * c)


def whitening_filters(images, size: int = 2, eps: float = 5e-4) -> jnp.ndarray:
    """Whitening kernel of shape ``(size, size, C, 2 * size * size * C)`` (Flax HWIO) from
    normalized float NHWC ``images`` (airbench uses 5,000 training images). jit-able.

    Output channel ``i < size*size*C`` is eigenvector ``i`` of the uncentered patch covariance
    (largest eigenvalue first) divided by ``sqrt(eigenvalue + eps)``; channel
    ``i + size*size*C`` is its negative.
    """
    c = images.shape[-1]
    patches = image_patches(jnp.asarray(images, jnp.float32), size)
    cov = patches.T @ patches / patches.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # eigh is ascending
    filters = eigenvectors / jnp.sqrt(eigenvalues + eps)  # one filter per column
    kernel = filters.reshape(size, size, c, size * size * c)
    return jnp.concatenate([kernel, -kernel], axis=-1)
