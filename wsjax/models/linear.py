"""Fully connected models of the study: logistic regression and the official MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wsjax.models.activations import activation
from wsjax.models.dropout import Dropout
from wsjax.models.init import torch_dense


class MLP(nn.Module):
    """Flatten -> [Dense -> activation] per hidden width -> Dense head.

    The official MLP is ``MLP(num_classes, widths=(100, 100))``: 3072-100-100-C with ReLU and
    biases, 318,410 parameters for 10 classes. ``widths=()`` is logistic regression;
    ``activation`` is a name from ``wsjax.models.activations``, ``init_scheme`` one of
    ``wsjax.models.init.INIT_SCHEMES`` (default: PyTorch's); ``dropout`` drops that share of
    each hidden layer's units in training (``wsjax.models.dropout``). Layers are named ``hidden_0``,
    ``hidden_1``, ... and ``head``; no layer has batch statistics.

    Each hidden layer's post-activation output is sown into the ``'intermediates'`` collection
    as ``hidden_<i>_act`` (a no-op unless that collection is mutable).

    ``__call__(x, train=False, mask=None, return_features=False)``: ``train`` and ``mask`` exist
    so every model shares one call signature; ``return_features`` also returns the input of the
    head (the penultimate representation) for analyses that need no second forward pass.
    """

    num_classes: int
    widths: Sequence[int] = (100, 100)
    activation: str = "relu"
    use_bias: bool = True
    init_scheme: str = "torch"
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, return_features: bool = False):
        del mask  # no batch statistics in these models
        act = activation(self.activation)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.widths):
            x = torch_dense(width, x.shape[-1], use_bias=self.use_bias, name=f"hidden_{i}",
                            dtype=self.dtype, init=self.init_scheme)(x)
            x = act(x)
            # Post-activation units, recorded only when 'intermediates' is mutable (ReDo,
            # continual backprop and the plasticity diagnostics read them).
            self.sow("intermediates", f"hidden_{i}_act", x)
            if self.dropout:  # no layer at all without it: summaries stay as they were
                x = Dropout(self.dropout, name=f"dropout_{i}")(x, train)
        features = x
        logits = torch_dense(self.num_classes, x.shape[-1], use_bias=self.use_bias, name="head",
                             dtype=self.dtype, init=self.init_scheme)(x)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits


def logistic_regression(num_classes: int, **kwargs) -> MLP:
    """Logistic regression: one ``Linear(3072, num_classes)`` on the flattened image."""
    return MLP(num_classes=num_classes, widths=(), **kwargs)
