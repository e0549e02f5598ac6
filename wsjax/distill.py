"""Distillation: a student trained against a teacher's outputs and attention maps.

The loss of a distilled step is, with the training objective's own loss L (cross-entropy, or
any ``wsjax.objectives.Objective``):

    (1 - alpha) L + alpha T^2 KL(softmax(t / T) || softmax(s / T)) + beta / 2 sum_g AT_g

where s and t are the student's and teacher's logits (Hinton et al.'s knowledge distillation;
KL averaged over the batch) and AT_g the attention-transfer term of Zagoruyko & Komodakis
(2017) at the end of group g: the mean, over the batch and the map's positions, of the squared
difference of the two normalized attention maps ``attention_map`` (mean over channels of the
squared activations, flattened, divided by its L2 norm). The defaults are those of the
attention-transfer and Moonshine papers: beta = 1000, alpha = 0 (attention transfer alone),
T = 4 when alpha > 0.

Models expose the activations to compare by sowing them into the ``'attention'`` collection
(``WideResNet`` sows its three groups' outputs); student and teacher must sow the same names,
with maps of the same spatial size (their channel counts may differ).

The teacher runs inside the student's compiled step, in evaluation mode (BatchNorm's running
averages), on the same augmented batch, under ``stop_gradient``. Its variables travel in the
training state (``TrainState.extra``, one teacher per replica: ``Engine.new_state(variables,
extra=teacher_variables)``), so they are checkpointed with the student and a resumed run needs
nothing else.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax.objectives import masked_mean


def attention_map(x):
    """The normalized spatial attention map of activations ``x`` (N, H, W, C): the mean over
    channels of ``x ** 2``, flattened to (N, H * W), divided by its L2 norm."""
    a = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1).reshape(x.shape[0], -1)
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def attention_loss(student, teacher):
    """Per-example attention-transfer term: the mean over positions of the squared difference
    of the two maps (N,)."""
    return jnp.mean(jnp.square(attention_map(student) - attention_map(teacher)), axis=-1)


def kd_loss(student_logits, teacher_logits, temperature: float):
    """Per-example ``T^2 KL(softmax(t / T) || softmax(s / T))`` (N,)."""
    t = jax.nn.log_softmax(teacher_logits / temperature)
    s = jax.nn.log_softmax(student_logits / temperature)
    return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def sown_maps(collection) -> dict:
    """``{'group1': array, ...}`` from a model's sown ``'attention'`` collection (each name
    holds a tuple of the values sown; the last is kept)."""
    return {name: value[-1] for name, value in (collection or {}).items()}


@dataclasses.dataclass(frozen=True)
class Distillation:
    """A teacher ``model`` and the weights of the distillation terms (module docstring)."""

    model: nn.Module
    temperature: float = 4.0
    alpha: float = 0.0
    beta: float = 1e3

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature={self.temperature!r} must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha={self.alpha!r} must be in [0, 1]")
        if not self.beta >= 0.0:
            raise ValueError(f"distillation beta={self.beta!r} must be >= 0")

    @property
    def collections(self) -> list[str]:
        """The student's mutable collections the loss needs (the sown maps when beta > 0)."""
        return ["attention"] if self.beta else []

    def teacher(self, variables, images):
        """The teacher's logits and sown maps on ``images`` (no gradient)."""
        variables = jax.lax.stop_gradient(variables)
        logits, sown = self.model.apply(variables, images, train=False, mutable=["attention"])
        return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(sown_maps(
            sown.get("attention")))

    def loss(self, base, student_logits, student_maps: dict, teacher_logits,
             teacher_maps: dict, mask):
        """The distilled loss from the objective's ``base`` loss (module docstring); rows where
        ``mask`` is false do not count."""
        total = (1.0 - self.alpha) * base if self.alpha else base
        if self.alpha:
            total = total + self.alpha * masked_mean(
                kd_loss(student_logits, teacher_logits, self.temperature), mask)
        if self.beta:
            if set(student_maps) != set(teacher_maps) or not student_maps:
                raise ValueError(f"attention transfer needs the same sown maps in student "
                                 f"and teacher; the student sows {sorted(student_maps)}, the "
                                 f"teacher {sorted(teacher_maps)} (set beta=0 to distil "
                                 f"logits only)")
            at = 0.0
            for name, s in student_maps.items():
                t = teacher_maps[name]
                if s.shape[1:-1] != t.shape[1:-1]:
                    raise ValueError(f"attention map {name!r}: student {s.shape[1:-1]} and "
                                     f"teacher {t.shape[1:-1]} differ in spatial size")
                at = at + masked_mean(attention_loss(s, t), mask)
            total = total + 0.5 * self.beta * at
        return total
