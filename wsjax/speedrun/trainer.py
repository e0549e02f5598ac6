"""The fast CIFAR-10 trainer: airbench94's recipe in JAX, every trick a switch.

One ``Recipe`` (``wsjax.speedrun.recipe``; ``AIRBENCH94`` and ``AIRBENCH94_MUON`` are presets)
describes a run. ``Speedrun(recipe, ...)`` builds three pure functions and compiles them once:

- ``init(key, x_train) -> variables``: the network's init, with the first layer's filters set
  to the patch-whitening of the first ``whiten_images`` training images;
- ``train(key, variables, x_train, y_train) -> variables``: the whole run as one ``lax.scan``
  over steps (shuffling, alternating flip, translation and the optimizer all inside), so a run
  has no host sync;
- ``evaluate(variables, x, y) -> (accuracy, logits)`` with test-time augmentation;

and ``run(key, x_train, y_train, x_test, y_test) -> (accuracy, variables)``, the three in one
compiled call: this is what ``wsjax.experiments.fast_trainer`` times, like airbench's timer (whitening,
training and TTA evaluation; not the transfer of the data to the device or compilation).
Images stay uint8 on the device and are normalized inside the compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from wsjax.augment import (NORMALIZATIONS, alternating_flip_mask, cutout, flip_where, normalize,
                           random_crop, random_flip)
from wsjax.data import padded_batches
from wsjax.speedrun.lookahead import lookahead_decay, lookahead_sync
from wsjax.speedrun.recipe import Recipe, build_model, recipe_optimizer, run_length
from wsjax.speedrun.tta import tta_logits
from wsjax.speedrun.whitening import whitening_filters


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
        return recipe_optimizer(self.recipe, params, self.total_steps, self.steps_per_epoch)

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
        ids, _ = padded_batches(range(x.shape[0]), min(self.eval_batch_size, x.shape[0]))
        logits = jax.lax.map(lambda b: tta_logits(apply, self._normalize(x[b]),
                                                  self.recipe.tta_level), jnp.asarray(ids))
        logits = logits.reshape(-1, logits.shape[-1])[: x.shape[0]]
        return jnp.mean(jnp.argmax(logits, -1) == y), logits

    def _run(self, key, x_train, y_train, x_test, y_test):
        k_init, k_train = jax.random.split(key)
        variables = self._train(k_train, self._init(k_init, x_train), x_train, y_train)
        return self._evaluate(variables, x_test, y_test)[0], variables
