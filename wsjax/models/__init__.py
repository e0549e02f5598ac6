"""Models of the study, selectable by name.

``MODELS`` maps a name to a constructor ``f(num_classes, **overrides) -> flax.linen.Module``;
``create_model`` looks one up with a clear error. Every model is called as
``model.apply(variables, x, train=..., mask=..., return_features=...)`` and names its
classifier layer ``head``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsjax.models.activations import activation
from wsjax.models.init import INIT_SCHEMES, check_init
from wsjax.models.linear import MLP, logistic_regression
from wsjax.models.resnet import BasicBlock, ResNet18
from wsjax.models.vgg import CONFIGS as VGG_CONFIGS
from wsjax.models.vgg import VGG
from wsjax.models.substitutes import ConvSpec
from wsjax.models.wrn import WideResNet
from wsjax.trees import path_str

MODELS = {
    "logreg": logistic_regression,
    "mlp": partial(MLP, widths=(100, 100)),
    "resnet18_narrow": partial(ResNet18, widths=(16, 32, 64, 128)),
    "resnet18": partial(ResNet18, widths=(64, 128, 256, 512)),
    **{f"vgg{depth}": partial(VGG, features=VGG_CONFIGS[depth]) for depth in (11, 13, 16, 19)},
    # Wide ResNets WRN-d-k: the Moonshine / attention-transfer teachers and students.
    **{f"wrn{d}_{k}": partial(WideResNet, depth=d, widen=k)
       for d, k in ((10, 1), (16, 1), (16, 2), (16, 4), (16, 8), (22, 8), (28, 10), (40, 2), (40, 4))},
}


def create_model(name: str, num_classes: int, **overrides) -> nn.Module:
    """Builds the model registered as ``name`` (see ``MODELS``) for ``num_classes`` classes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be at least 2")
    builder = MODELS[name]
    cls = builder.func if isinstance(builder, partial) else builder
    cls = MLP if cls is logistic_regression else cls
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model {name!r} has no option {unknown}; its options are "
                         f"{sorted(fields)}")
    if "init_scheme" in overrides:
        check_init(overrides["init_scheme"])
    if "activation" in overrides:
        activation(overrides["activation"])
    if isinstance(overrides.get("conv"), str):
        overrides["conv"] = ConvSpec.parse(overrides["conv"])
    return builder(num_classes=num_classes, **overrides)


def init_variables(model: nn.Module, key, input_shape=(32, 32, 3)) -> dict:
    """Initializes ``model`` for images of ``input_shape``; returns ``{'params', 'batch_stats'}``.

    ``batch_stats`` is an empty dict for models without BatchNorm, so every model's variables
    have the same two collections.
    """
    # One compiled program: eager init of a ResNet runs (and compiles) op by op, 10x slower.
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *input_shape), jnp.float32),
                                             train=False))(key)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def sown_activations(intermediates) -> dict:
    """The post-activation outputs a model sowed (each layer's as ``<layer>_act``, see
    ``MLP`` and ``ResNet18``), keyed by the layer's path: ``{'hidden_0': array,
    'stage1_block0/conv1': array, ...}``. ``None`` or an empty collection gives ``{}``."""
    flat = jax.tree_util.tree_flatten_with_path(
        intermediates or {}, is_leaf=lambda x: isinstance(x, tuple))[0]
    # sow stores a tuple per name; the suffix keeps the name from clashing with its layer's.
    return {path_str(p).removesuffix("_act"): v[0] for p, v in flat}


def count_params(params) -> int:
    """Number of scalars in a parameter tree (arrays or shape structs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


__all__ = ["MODELS", "INIT_SCHEMES", "MLP", "ResNet18", "BasicBlock", "VGG", "WideResNet",
           "ConvSpec", "create_model",
           "init_variables", "count_params", "logistic_regression", "sown_activations"]
