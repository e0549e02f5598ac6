"""Batched, jit-able image preprocessing: pure functions of ``(key, images)``.

Images arrive as uint8 NHWC batches gathered on the device; each function transforms the whole
batch with a handful of array ops (no per-example Python). ``make_preprocess`` composes
augmentation and normalization into the ``preprocess(key, images) -> float32`` that
``wsjax.train`` calls inside the compiled step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# (mean, std) per channel in [0, 1] units.
NORMALIZATIONS = {
    # The study's: pixels to [-1, 1].
    "study": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # Inputs that are already features (``wsjax.toy_data``'s points): used as they are.
    "none": (None, None),
}


def normalize(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), dtype=jnp.float32):
    """uint8 images -> ``(images / 255 - mean) / std`` in ``dtype`` (``mean`` None: the
    inputs are features already, only cast)."""
    if mean is None:
        return images.astype(dtype)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def random_crop(key, images, padding: int = 4, mode: str = "constant"):
    """Pads each image by ``padding`` pixels (zeros or ``'reflect'``) and crops a random window
    of the original size, one offset per image."""
    if padding == 0:
        return images
    n, h, w = images.shape[:3]
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key, images):
    """Flips a random half (in expectation) of the images left-right."""
    return flip_where(images, jax.random.bernoulli(key, 0.5, (images.shape[0],)))


def cutout(key, images, size: int = 8, *, within: bool = False):
    """Zeros a ``size`` x ``size`` square per image. By default its centre is a random pixel
    and the square is clipped at the borders (DeVries & Taylor's cutout); ``within=True`` keeps
    it whole inside the image (Page's and airbench's form). Applied to normalized images, zero
    is the mean colour."""
    n, h, w = images.shape[:3]
    ky, kx = jax.random.split(key)
    if within:
        top = jax.random.randint(ky, (n, 1, 1), 0, h - size + 1)
        left = jax.random.randint(kx, (n, 1, 1), 0, w - size + 1)
    else:
        top = jax.random.randint(ky, (n, 1, 1), 0, h) - size // 2
        left = jax.random.randint(kx, (n, 1, 1), 0, w) - size // 2
    ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def flip_where(images, flip):
    """Flips left-right the images where the boolean vector ``flip`` is true."""
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def alternating_flip_mask(key, num_images: int, epoch):
    """Which of ``num_images`` stored images to flip in ``epoch`` (airbench's alternating flip):
    epoch 0 flips a random half (drawn from ``key``, the same every epoch), and every later
    epoch flips each image the other way from the epoch before, so each image is seen in both
    orientations in any two consecutive epochs. ``epoch`` may be traced."""
    base = jax.random.bernoulli(key, 0.5, (num_images,))
    return jnp.logical_xor(base, jnp.asarray(epoch) % 2 == 1)


AUGMENTATIONS = {"crop": random_crop, "flip": random_flip, "cutout": cutout}


def make_preprocess(augmentations: Sequence[str] = (), normalization: str = "study",
                    dtype=jnp.float32):
    """Returns ``preprocess(key, uint8 images) -> normalized images`` applying the named
    augmentations (in order) then the named normalization. The study uses none and ``'study'``.
    """
    unknown = [a for a in augmentations if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {sorted(AUGMENTATIONS)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose from "
                         f"{sorted(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[normalization]
    augmentations = tuple(augmentations)

    def preprocess(key, images):
        if augmentations:
            for k, name in zip(jax.random.split(key, len(augmentations)), augmentations):
                images = AUGMENTATIONS[name](k, images)
        return normalize(images, mean, std, dtype)

    return preprocess
