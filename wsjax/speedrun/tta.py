"""Test-time augmentation of the fast trainer (airbench's levels): the logits of a batch
averaged over mirror images and one-pixel translations."""

from __future__ import annotations

import jax.numpy as jnp


def translate_views(images, shift: int = 1):
    """The two TTA translations of airbench: reflect-pad by ``shift`` and take the top-left and
    the bottom-right windows (content moved ``shift`` pixels down-right and up-left)."""
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
    return padded[:, :h, :w], padded[:, 2 * shift:, 2 * shift:]


def tta_logits(apply, images, level: int = 2):
    """Test-time augmentation of ``apply(images) -> logits`` (airbench's levels): 0 the images
    alone; 1 the mean over the images and their mirror images; 2 half of level 1 plus a quarter
    each of level 1 on the two 1-pixel translations (``translate_views``): six views."""
    if level not in (0, 1, 2):
        raise ValueError(f"TTA level={level} must be 0, 1 or 2")
    mirror = lambda x: 0.5 * (apply(x) + apply(x[:, :, ::-1]))
    if level == 0:
        return apply(images)
    if level == 1:
        return mirror(images)
    up_left, down_right = translate_views(images)
    return 0.5 * mirror(images) + 0.25 * mirror(up_left) + 0.25 * mirror(down_right)
