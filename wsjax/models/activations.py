"""Activation functions by name: the one table every wsjax model looks names up in.

Each name means one function, as PyTorch's layer of that name computes it:

- ``relu``, ``tanh``, ``sigmoid``, ``identity``;
- ``gelu``: the exact (erf) GELU, PyTorch's ``nn.GELU()`` default (``jax.nn.gelu`` defaults
  to the tanh approximation, which is ``gelu_tanh`` here);
- ``celu``: CELU with alpha 0.075, the activation of David Page's fast ResNet-9.
"""

from __future__ import annotations

import jax

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jax.numpy.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "celu": lambda x: jax.nn.celu(x, alpha=0.075),
    "identity": lambda x: x,
}


def activation(name: str):
    """The activation function called ``name`` (see ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
