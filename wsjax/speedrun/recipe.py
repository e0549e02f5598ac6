"""A fast run's recipe: every setting of the trainer as one frozen dataclass, the presets
(airbench94, airbench94 with Muon, David Page's ResNet-9), each trick and the change that
switches it off, and what the recipe builds: the net, the optimizer groups, the schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from wsjax.speedrun.muon import muon
from wsjax.speedrun.nets import AirbenchNet, ResNet9
from wsjax.trees import path_str

FLIPS = ("alternating", "random", "none")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every setting of a fast run. Defaults are airbench94's (batch 1024, 9.9 epochs)."""

    epochs: float = 9.9
    batch_size: int = 1024
    # Learning rate and decay in airbench's units: divided by 1024 * (1 + 1 / (1 - momentum)),
    # for a loss summed (not averaged) over the batch.
    lr: float = 11.5
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0  # BatchNorm biases: lr x 64 (same absolute decay)
    label_smoothing: float = 0.2
    # Learning-rate factor: linear from start_lr to 1 over the first `warmup` of the steps,
    # then linear to end_lr.
    warmup: float = 0.23
    start_lr: float = 0.2
    end_lr: float = 0.07
    whiten: bool = True  # frozen patch-whitening first layer
    whiten_bias_epochs: float = 3.0
    whiten_images: int = 5000
    identity_init: bool = True  # first C_in filters of every 3x3 conv start as the identity
    frozen_bn_scale: bool = True  # BatchNorm scales fixed at 1 (no parameter)
    flip: str = "alternating"  # 'alternating', 'random' or 'none'
    translate: int = 2  # pixels of reflect-padded random translation (0: none)
    cutout: int = 0  # side of Page's cutout square, kept inside the image (0: none)
    lookahead: bool = True
    lookahead_every: int = 5
    lookahead_start_epoch: int = 3
    tta_level: int = 2  # 0: none, 1: mirror, 2: mirror + two 1-pixel translations
    bf16: bool = True  # bfloat16 activations and convolutions; float32 BN statistics
    optimizer: str = "nesterov"  # or 'muon' (Muon for the 3x3 filters, SGD for the rest)
    # Absolute learning rates of the head and of the BN / whitening biases (0: the airbench94
    # rule above), a head rescaled to this weight std at init (0: PyTorch's init), and a
    # whitening bias lr that falls linearly to 0 over its epochs instead of stopping.
    head_lr: float = 0.0
    bias_lr: float = 0.0
    head_init_std: float = 0.0
    whiten_bias_linear: bool = False
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    muon_ns_steps: int = 3
    widths: tuple = (64, 256, 256)
    logit_scale: float = 1.0 / 9.0
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12
    net: str = "airbench"  # or 'resnet9' (Page's)
    whiten_size: int = 2  # patch side of the whitening filters
    activation: str = "gelu"  # 'gelu' (exact), 'celu' (Page's CELU(0.075)) or 'relu'
    ghost_bn: int = 0  # Page's ghost BatchNorm: examples per statistics group (0: off)

    def __post_init__(self):
        if self.flip not in FLIPS:
            raise ValueError(f"flip={self.flip!r}: choose from {FLIPS}")
        if self.net not in ("airbench", "resnet9"):
            raise ValueError(f"net={self.net!r}: choose 'airbench' or 'resnet9'")
        if self.optimizer not in ("nesterov", "muon"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'nesterov' or 'muon'")
        if self.tta_level not in (0, 1, 2):
            raise ValueError(f"tta_level={self.tta_level} must be 0, 1 or 2")
        if not (self.epochs > 0 and self.batch_size > 0):
            raise ValueError(f"epochs={self.epochs} and batch_size={self.batch_size} must be > 0")

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes`` (field names checked)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


AIRBENCH94 = Recipe()
# airbench94_muon: Muon for the conv filters, batch 2000, 8 epochs, no warm-up or lookahead,
# lr falling linearly to 0, head output divided by its width, head at std 1 with lr 0.67, BN
# and whitening biases at lr 0.053 (the whitening bias decaying to 0 over 3 epochs). Weight
# decay: airbench94's rule (the same absolute decay per step for every SGD group).
AIRBENCH94_MUON = Recipe(optimizer="muon", batch_size=2000, epochs=8.0, warmup=0.0,
                         start_lr=1.0, end_lr=0.0, lookahead=False, logit_scale=1.0 / 256,
                         head_lr=0.67, bias_lr=0.053, head_init_std=1.0,
                         whiten_bias_linear=True)

# David Page's final ResNet-9 recipe (V100, 26 s), in this trainer's units: batch 512, 10
# epochs, Nesterov 0.9, triangular lr, pad-4 crop + flip + 8x8 cutout, label smoothing 0.2,
# CELU(0.075), ghost BN (32), frozen BN scales, 3x3 whitening, weight averaging, flip TTA.
PAGE_RESNET9 = Recipe(net="resnet9", widths=(64, 128, 256, 512), logit_scale=0.125,
                      batch_size=512, epochs=10.0, momentum=0.9, lr=8.8, weight_decay=0.0044,
                      start_lr=0.0, warmup=0.2, end_lr=0.0, flip="random", translate=4,
                      cutout=8, activation="celu", ghost_bn=32, bn_momentum=0.9, bn_eps=1e-5,
                      whiten_size=3, identity_init=False, tta_level=1, bias_scaler=16.0)

# Each trick and the change that switches it off (for ablations).
TRICKS = {
    "whitening": {"whiten": False},
    "identity_init": {"identity_init": False},
    "alternating_flip": {"flip": "random"},
    "translate": {"translate": 0},
    "label_smoothing": {"label_smoothing": 0.0},
    "frozen_bn_scale": {"frozen_bn_scale": False},
    "bias_lr": {"bias_scaler": 1.0},
    "lookahead": {"lookahead": False},
    "tta": {"tta_level": 0},
    "bf16": {"bf16": False},
    "cutout": {"cutout": 0},
    "celu": {"activation": "relu"},
    "ghost_bn": {"ghost_bn": 0},
}


def build_model(recipe: Recipe, num_classes: int = 10):
    """The recipe's net (airbench's or Page's ResNet-9) with its switches."""
    common = dict(num_classes=num_classes, widths=tuple(recipe.widths),
                  identity=recipe.identity_init, bn_momentum=recipe.bn_momentum,
                  bn_eps=recipe.bn_eps, bn_scale=not recipe.frozen_bn_scale,
                  ghost_size=recipe.ghost_bn or None, act=recipe.activation,
                  scale=recipe.logit_scale, dtype=jnp.bfloat16 if recipe.bf16 else None)
    if recipe.net == "resnet9":
        return ResNet9(whiten_size=recipe.whiten_size if recipe.whiten else 0, **common)
    return AirbenchNet(whiten_size=recipe.whiten_size, **common)


def param_labels(params, recipe: Recipe):
    """Optimizer group of every parameter: 'frozen' (the whitening filters), 'whiten_bias',
    'bn_bias', 'filters' (conv filters, under Muon), 'head' (when it has its own lr) or
    'default'."""

    def label(path, leaf):
        parts = path_str(path).split("/")
        if parts[0] == "whiten":
            if parts[-1] == "kernel":
                return "frozen" if recipe.whiten else "default"
            return "whiten_bias"
        if any("norm" in part for part in parts[:-1]):
            return "bn_bias"
        if recipe.optimizer == "muon" and leaf.ndim == 4:
            return "filters"
        if parts[0] == "head" and recipe.head_lr:
            return "head"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def lr_factor(recipe: Recipe, total_steps: int):
    """The schedule's multiplier at a step: warm-up then linear decay (see ``Recipe``)."""
    warm = int(recipe.warmup * total_steps)

    def factor(step):
        step = jnp.asarray(step, jnp.float32)
        up = recipe.start_lr + (1.0 - recipe.start_lr) * step / max(warm, 1e-9)
        down = 1.0 + (recipe.end_lr - 1.0) * (step - warm) / max(total_steps - warm, 1e-9)
        return jnp.where(step < warm, up, down)

    return factor


def recipe_optimizer(recipe: Recipe, params, total_steps: int,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    """airbench's optimizer: Nesterov SGD with coupled decay (PyTorch's ``SGD``), per group
    ``lr`` and ``decay / lr`` so every group decays by the same amount per step; BatchNorm
    biases at ``bias_scaler`` x lr; the whitening bias (at the base lr) stops after
    ``whiten_bias_epochs``; Muon for the filters when asked."""
    kilo = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr, wd = recipe.lr / kilo, recipe.weight_decay * recipe.batch_size / kilo
    factor = lr_factor(recipe, total_steps)

    def sgd(base_lr, schedule=factor):
        return optax.chain(optax.add_decayed_weights(wd / base_lr),
                           optax.trace(recipe.momentum, nesterov=True),
                           optax.scale_by_schedule(lambda s: -base_lr * schedule(s)))

    bias_lr = recipe.bias_lr or lr * recipe.bias_scaler
    whiten_steps = recipe.whiten_bias_epochs * steps_per_epoch
    if recipe.whiten_bias_linear:  # falls to 0 over its epochs
        whiten = sgd(recipe.bias_lr or lr,
                     lambda s: jnp.maximum(0.0, 1.0 - s / max(whiten_steps, 1)))
    else:  # trained for its epochs, then frozen (airbench94)
        whiten = optax.chain(sgd(lr), optax.scale_by_schedule(
            lambda s: (s < whiten_steps).astype(jnp.float32)))
    groups = {
        "default": sgd(lr),
        "head": sgd(recipe.head_lr or lr),
        "bn_bias": sgd(bias_lr),
        "whiten_bias": whiten,
        "frozen": optax.set_to_zero(),
        "filters": muon(lambda s: recipe.muon_lr * factor(s), recipe.muon_momentum,
                        ns_steps=recipe.muon_ns_steps),
    }
    labels = param_labels(params, recipe)
    used = set(jax.tree.leaves(labels))
    return optax.multi_transform({k: v for k, v in groups.items() if k in used}, labels)


def run_length(recipe: Recipe, num_train: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``: whole batches only (the partial one is dropped, as
    airbench's loader does), ``ceil(epochs * steps_per_epoch)`` steps."""
    steps_per_epoch = num_train // recipe.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{num_train} training images do not fill one batch of "
                         f"{recipe.batch_size}: lower the batch size")
    return steps_per_epoch, math.ceil(recipe.epochs * steps_per_epoch)


def frozen_mask(params, recipe: Recipe) -> Any:
    """True for the parameters training may change (all but frozen whitening filters): the
    mask a warm-start transform such as shrink-perturb should use on this net."""
    labels = param_labels(params, recipe)
    return jax.tree.map(lambda label: label != "frozen", labels)
