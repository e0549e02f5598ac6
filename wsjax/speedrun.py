"""The fast CIFAR-10 trainer: airbench94's recipe in JAX, every trick a switch.

One ``Recipe`` (a frozen dataclass; ``AIRBENCH94`` and ``AIRBENCH94_MUON`` are the presets)
describes a run. ``Speedrun(recipe, ...)`` builds three pure functions and compiles them once:

- ``init(key, x_train) -> variables``: the network's init, with the first layer's filters set
  to the patch-whitening of the first ``whiten_images`` training images;
- ``train(key, variables, x_train, y_train) -> variables``: the whole run as one ``lax.scan``
  over steps (shuffling, alternating flip, translation and the optimizer all inside), so a run
  has no host sync;
- ``evaluate(variables, x, y) -> (accuracy, logits)`` with test-time augmentation;

and ``run(key, x_train, y_train, x_test, y_test) -> (accuracy, variables)``, the three in one
compiled call: this is what ``experiments.speedrun`` times, like airbench's timer (whitening,
training and TTA evaluation; not the transfer of the data to the device or compilation).
Images stay uint8 on the device and are normalized inside the compiled code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from wsjax.augment import (NORMALIZATIONS, alternating_flip_mask, cutout, flip_where, normalize,
                           random_crop, random_flip, tta_logits)
from wsjax.lookahead import lookahead_decay, lookahead_sync
from wsjax.models.airbench import AirbenchNet, ResNet9
from wsjax.models.whitening import whitening_filters
from wsjax.muon import muon
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


def make_optimizer(recipe: Recipe, params, total_steps: int,
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


def _where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


class Speedrun:
    """The compiled functions of one recipe (see the module docstring).

    >>> sr = Speedrun(AIRBENCH94.replace(epochs=1, widths=(8, 8, 8), batch_size=64),
    ...               num_train=256)
    >>> acc, variables = sr.run(jax.random.key(0), x_train, y_train, x_test, y_test)
    """

    def __init__(self, recipe: Recipe, *, num_train: int, num_classes: int = 10,
                 eval_batch_size: int = 2000):
        self.recipe = recipe
        self.num_classes = num_classes
        self.model = build_model(recipe, num_classes)
        self.steps_per_epoch, self.total_steps = run_length(recipe, num_train)
        self.num_train, self.eval_batch_size = num_train, eval_batch_size
        self.dtype = jnp.bfloat16 if recipe.bf16 else jnp.float32
        self.mean, self.std = NORMALIZATIONS["cifar10"]
        self.init = jax.jit(self._init)
        # No donation: a timed run is one compiled call (its state never leaves the device
        # program), and callers reuse the variables they pass in (warm starts share leaves).
        self.train = jax.jit(self._train)
        self.evaluate = jax.jit(self._evaluate)
        self.run = jax.jit(self._run)

    def _normalize(self, images):
        return normalize(images, self.mean, self.std, self.dtype)

    def _init(self, key, x_train) -> dict:
        sample = jnp.zeros((1, *x_train.shape[1:]), self.dtype)
        variables = self.model.init(key, sample, train=False)
        variables = {"params": variables["params"],
                     "batch_stats": variables.get("batch_stats", {})}
        if self.recipe.head_init_std:
            params = variables["params"]
            head = params["head"]["kernel"]
            head = head * (self.recipe.head_init_std / jnp.std(head))
            variables = {**variables, "params": {**params, "head": {**params["head"],
                                                                    "kernel": head}}}
        if self.recipe.whiten:
            # float32: bf16-rounded pixels would blur the patch covariance.
            images = normalize(x_train[: self.recipe.whiten_images], self.mean, self.std)
            params = variables["params"]
            kernel = whitening_filters(images, params["whiten"]["kernel"].shape[0])
            params = {**params, "whiten": {**params["whiten"], "kernel": kernel}}
            variables = {**variables, "params": params}
        return variables

    def tx(self, params) -> optax.GradientTransformation:
        """The recipe's optimizer for ``params``."""
        return make_optimizer(self.recipe, params, self.total_steps, self.steps_per_epoch)

    def _loss(self, params, batch_stats, images, labels):
        logits, updates = self.model.apply({"params": params, "batch_stats": batch_stats},
                                           images, train=True, mutable=["batch_stats"])
        targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes),
                                      self.recipe.label_smoothing)
        # Summed over the batch, as airbench's loss (its lr is per example).
        loss = optax.softmax_cross_entropy(logits, targets).sum()
        return loss, updates["batch_stats"]

    def _train(self, key, variables, x_train, y_train) -> dict:
        r, n = self.recipe, x_train.shape[0]
        spe, total = self.steps_per_epoch, self.total_steps
        if n != self.num_train:
            raise ValueError(f"Speedrun was built for {self.num_train} training images, got {n}")
        k_perm, k_flip, k_aug = jax.random.split(key, 3)
        epochs = -(-total // spe)
        perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(k_perm, e), n))(
            jnp.arange(epochs))
        flip_base = alternating_flip_mask(k_flip, n, 0)  # epoch 0's flips, drawn once
        tx = self.tx(variables["params"])
        grad_fn = jax.grad(self._loss, has_aux=True)

        def step(carry, s):
            params, stats, opt_state, ema = carry
            epoch, i = s // spe, s % spe
            idx = jax.lax.dynamic_slice(perms[epoch], (i * r.batch_size,), (r.batch_size,))
            images = x_train[idx]
            k = jax.random.fold_in(k_aug, s)
            if r.flip == "alternating":
                images = flip_where(images, jnp.logical_xor(flip_base[idx], epoch % 2 == 1))
            elif r.flip == "random":
                images = random_flip(jax.random.fold_in(k, 0), images)
            if r.translate:
                images = random_crop(jax.random.fold_in(k, 1), images, r.translate, "reflect")
            images = self._normalize(images)
            if r.cutout:  # on normalized images: the square takes the mean colour, as Page's
                images = cutout(jax.random.fold_in(k, 2), images, r.cutout, within=True)
            grads, stats = grad_fn(params, stats, images, y_train[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if r.lookahead:
                (params, stats), ema = lookahead_step(s, epoch, i, (params, stats), ema)
            return (params, stats, opt_state, ema), None

        def lookahead_step(s, epoch, i, net, ema):
            # As airbench: from epoch `lookahead_start_epoch` on, every `every` steps; the first
            # sync starts the average at the network, and every epoch ends on the average.
            ema_net, started = ema
            sync = (epoch >= r.lookahead_start_epoch) & ((s + 1) % r.lookahead_every == 0)
            decay = jnp.where(started, lookahead_decay(s + 1, total), 0.0)
            synced, _ = lookahead_sync(ema_net, net, decay)
            ema_net = _where(sync, synced, ema_net)
            started = started | sync
            end = started & ((i == spe - 1) | (s == total - 1))
            net = _where(sync | end, ema_net, net)
            return net, (ema_net, started)

        params, stats = variables["params"], variables["batch_stats"]
        ema = ((params, stats), jnp.zeros((), bool)) if r.lookahead else None
        carry = (params, stats, tx.init(params), ema)
        (params, stats, _, _), _ = jax.lax.scan(step, carry, jnp.arange(total))
        return {"params": params, "batch_stats": stats}

    def _evaluate(self, variables, x, y):
        apply = lambda images: self.model.apply(variables, images, train=False)
        b = min(self.eval_batch_size, x.shape[0])
        pad = -x.shape[0] % b
        xs = jnp.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(-1, b, *x.shape[1:])
        logits = jax.lax.map(lambda xb: tta_logits(apply, self._normalize(xb),
                                                   self.recipe.tta_level), xs)
        logits = logits.reshape(-1, logits.shape[-1])[: x.shape[0]]
        return jnp.mean(jnp.argmax(logits, -1) == y), logits

    def _run(self, key, x_train, y_train, x_test, y_test):
        k_init, k_train = jax.random.split(key)
        variables = self._train(k_train, self._init(k_init, x_train), x_train, y_train)
        return self._evaluate(variables, x_test, y_test)[0], variables


def frozen_mask(params, recipe: Recipe) -> Any:
    """True for the parameters training may change (all but frozen whitening filters): the
    mask a warm-start transform such as shrink-perturb should use on this net."""
    labels = param_labels(params, recipe)
    return jax.tree.map(lambda label: label != "frozen", labels)

