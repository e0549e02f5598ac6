"""Training objectives: cross-entropy and the regularized variants of the study's table.

The study asks whether regularization closes the warm-start gap: L2 (coupled weight decay,
``wsjax.optim``), adversarial training and a confidence penalty, each at strengths 1e-1..1e-4.
An ``Objective`` is a static description; ``Objective.loss`` is the per-batch loss used by
``wsjax.train.make_train_step``.

- ``'ce'``: mean cross-entropy.
- ``'confidence'``: cross-entropy minus ``strength`` times the mean predictive entropy
  (Pereyra et al., 2017): confident (low-entropy) predictions are penalized.
- ``'adversarial'``: the mean of the cross-entropy on the batch and on its FGSM perturbation
  ``x + strength * sign(grad_x CE)`` (Goodfellow et al., 2015), ``strength`` measured in the
  normalized input scale. BatchNorm statistics are updated by the clean pass only.

Any kind also takes the lessons' regularizers as terms of the loss: ``label_smoothing``
(cross-entropy against ``(1 - e) * one_hot + e / C``), ``l1`` (``l1 * sum |w|``) and ``l2``
(``l2 / 2 * sum w^2``, whose gradient ``l2 * w`` is exactly coupled weight decay ``l2``),
on the leaves ``penalize`` names: ``'kernels'`` (weight matrices and conv filters; biases
and normalization scales and offsets are spared) or ``'all'``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

KINDS = ("ce", "confidence", "adversarial")
PENALIZE = ("kernels", "all")


def masked_mean(values, mask):
    """Mean of ``values`` over the rows where ``mask`` is true (0 when none is)."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def entropy(logits):
    """Predictive entropy (nats) of the softmax of each row of ``logits``."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training loss: ``kind`` in ``KINDS`` with a non-negative ``strength``."""

    kind: str = "ce"
    strength: float = 0.0
    label_smoothing: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    penalize: str = "kernels"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"objective kind={self.kind!r} is unknown; choose from {KINDS} "
                             f"(L2 as weight decay is the optimizer's weight_decay)")
        for name in ("strength", "l1", "l2"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"objective {name}={getattr(self, name)!r} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        if self.penalize not in PENALIZE:
            raise ValueError(f"penalize={self.penalize!r}: choose from {PENALIZE}")

    def penalty(self, params):
        """The L1 and L2 terms on ``params`` (0 when both strengths are 0)."""
        if not (self.l1 or self.l2):
            return 0.0
        leaves = [x for x in jax.tree.leaves(params)
                  if self.penalize == "all" or x.ndim > 1]
        l1 = sum(jnp.sum(jnp.abs(x)) for x in leaves)
        l2 = sum(jnp.sum(jnp.square(x)) for x in leaves)
        return self.l1 * l1 + 0.5 * self.l2 * l2

    def cross_entropy(self, logits, labels):
        """Per-example cross-entropy, against smoothed labels when ``label_smoothing`` > 0."""
        if not self.label_smoothing:
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                      self.label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)

    def loss(self, apply, images, labels, mask):
        """Returns ``(loss, (logits, aux))`` for one batch.

        ``apply(images) -> (logits, aux)`` runs the model in train mode (``aux`` is its new
        BatchNorm state); ``logits`` and ``aux`` are those of the clean batch.
        """
        def ce_of(imgs):
            logits, aux = apply(imgs)
            return masked_mean(self.cross_entropy(logits, labels), mask), (logits, aux)

        loss, (logits, aux) = ce_of(images)
        if self.kind == "confidence":
            loss = loss - self.strength * masked_mean(entropy(logits), mask)
        elif self.kind == "adversarial":
            # The attack direction is a constant of the update (no gradient through it).
            direction = jnp.sign(jax.grad(lambda im: ce_of(im)[0])(images))
            adv = jax.lax.stop_gradient(images + self.strength * direction)
            loss = 0.5 * (loss + ce_of(adv)[0])
        return loss, (logits, aux)
