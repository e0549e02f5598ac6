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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

KINDS = ("ce", "confidence", "adversarial")


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

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"objective kind={self.kind!r} is unknown; choose from {KINDS} "
                             f"(L2 is the optimizer's weight_decay)")
        if not self.strength >= 0.0:
            raise ValueError(f"objective strength={self.strength!r} must be >= 0")

    def loss(self, apply, images, labels, mask):
        """Returns ``(loss, (logits, aux))`` for one batch.

        ``apply(images) -> (logits, aux)`` runs the model in train mode (``aux`` is its new
        BatchNorm state); ``logits`` and ``aux`` are those of the clean batch.
        """
        def ce_of(imgs):
            logits, aux = apply(imgs)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return masked_mean(ce, mask), (logits, aux)

        loss, (logits, aux) = ce_of(images)
        if self.kind == "confidence":
            loss = loss - self.strength * masked_mean(entropy(logits), mask)
        elif self.kind == "adversarial":
            # The attack direction is a constant of the update (no gradient through it).
            direction = jnp.sign(jax.grad(lambda im: ce_of(im)[0])(images))
            adv = jax.lax.stop_gradient(images + self.strength * direction)
            loss = 0.5 * (loss + ce_of(adv)[0])
        return loss, (logits, aux)
