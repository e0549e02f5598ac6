"""Frozen layers for fine-tuning: the optimizer leaves their parameters alone and training
leaves their BatchNorm statistics alone.

Layers are named by path prefixes of the variables (``'stem_conv'``, ``'stage1_block0'``,
``'stage2_block1/bn1'``, ``'hidden_0'``): a leaf is frozen when its path is a named layer or
lies under one. ``Engine(..., frozen=layers)`` does both halves; the pieces are here for any
Flax/Optax loop:

- ``freeze(tx, layers)``: ``optax.multi_transform`` that sends the frozen leaves' updates
  through ``optax.set_to_zero`` (no step, no weight decay, no optimizer moments for them);
- ``keep_frozen(old, new, layers)``: the frozen leaves of ``old`` with the rest of ``new``
  (BatchNorm running averages after a training step).

Frozen BatchNorm layers still normalize each training batch by its own statistics (train mode,
as a PyTorch layer with ``requires_grad=False`` does); only their running averages, which
evaluation uses, stay as loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import optax

from wsjax.trees import leaf_paths, path_mask


def is_frozen(path: str, layers: Sequence[str]) -> bool:
    """Whether the leaf at ``path`` ('a/b/c') is a named layer or lies under one."""
    return any(path == layer or path.startswith(layer.rstrip("/") + "/") for layer in layers)


def check_layers(params, layers: Sequence[str]) -> None:
    """Raises ``ValueError`` for a layer name that matches no parameter (a typo would
    silently freeze nothing)."""
    paths = leaf_paths(params)
    unknown = [layer for layer in layers if not any(is_frozen(p, [layer]) for p in paths)]
    if unknown:
        tops = sorted({p.split("/")[0] for p in paths})
        raise ValueError(f"frozen layers {unknown} match no parameter; the model's layers are "
                         f"{tops} (name nested ones by path, e.g. 'stage1_block0/conv1')")


def freeze(tx: optax.GradientTransformation, layers: Sequence[str]
           ) -> optax.GradientTransformation:
    """``tx`` for every parameter but those under ``layers``, which get no update at all."""
    layers = tuple(layers)

    def labels(params):
        check_layers(params, layers)
        return jax.tree.map(lambda frozen: "frozen" if frozen else "train",
                            path_mask(params, lambda p: is_frozen(p, layers)))

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def keep_frozen(old, new, layers: Sequence[str]):
    """``new`` with the leaves under ``layers`` taken from ``old`` (same structure)."""
    mask = path_mask(new, lambda p: is_frozen(p, layers))
    return jax.tree.map(lambda m, o, n: o if m else n, mask, old, new)
