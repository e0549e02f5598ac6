"""Parameter budgets: size a model's cheap convolutions so the whole model meets a budget.

A budget is a parameter count (an integer >= 1) or a fraction of the same model built with full
convolutions (a number in (0, 1)). ``solve_budget`` sets the substitute's one size knob
(``ConvSpec.knob``: a fraction, channels per group, or ACDC factors) to the largest value whose
model does not exceed the budget, counting parameters exactly (the model's variables, traced
with ``jax.eval_shape``: nothing is allocated). A fraction knob is found by bisection, an
integer knob by trying values in order (channels per group: powers of two; ACDC factors:
doubling, then bisection, up to ``MAX_FACTORS``); the count is non-decreasing in every knob.

How close a model can get depends on the knob: HashedNet's is a fraction of each layer's
weights (steps of one parameter per layer), the bottleneck's a width (steps of a few channels'
worth); channels per group and ACDC factors are whole numbers, so their models land on the
nearest attainable count below the budget, which ``BudgetFit.error`` reports.

>>> fit = solve_budget(lambda spec: create_model("wrn16_2", 10, conv=spec),
...                    ConvSpec("hashed"), 0.1)
>>> fit.spec, fit.params, fit.budget
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax.models import count_params
from wsjax.models.substitutes import ConvSpec, as_spec

# Channels per group a separable conv is tried at, in order; ACDC stacks at most MAX_FACTORS.
_GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64)
MAX_FACTORS = 64


def parameter_count(model: nn.Module, input_shape=(32, 32, 3)) -> int:
    """The exact number of trainable parameters of ``model`` for inputs of ``input_shape``."""
    x = jnp.zeros((1, *input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.PRNGKey(0))
    return count_params(shapes.get("params", {}))


def resolve_budget(budget, full_params: int) -> int:
    """The budget as a parameter count: an integer >= 1 as is, a fraction in (0, 1) of
    ``full_params``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"budget={budget!r}: give a parameter count (an integer >= 1) or a "
                         f"fraction of the full model in (0, 1)")
    if isinstance(budget, float) and budget < 1.0:
        return max(1, int(round(budget * full_params)))
    if float(budget) != int(budget):
        raise ValueError(f"budget={budget!r}: a count must be a whole number (or give a "
                         f"fraction in (0, 1))")
    return int(budget)


@dataclasses.dataclass(frozen=True)
class BudgetFit:
    """What ``solve_budget`` found: the ``spec`` with its knob set, the model's ``params``,
    the ``budget`` asked for (a count) and the same model's count with full convolutions."""

    spec: ConvSpec
    params: int
    budget: int
    full_params: int

    @property
    def error(self) -> float:
        """(params - budget) / budget: 0 is an exact hit, -0.01 one percent under."""
        return (self.params - self.budget) / self.budget

    @property
    def compression(self) -> float:
        """How many times fewer parameters than the full model."""
        return self.full_params / self.params

    def __str__(self) -> str:
        return (f"{self.spec}: {self.params:,} parameters for a budget of {self.budget:,} "
                f"({100 * self.error:+.2f}%), {self.compression:.2f}x fewer than the full "
                f"model's {self.full_params:,}")


def solve_budget(build: Callable[[ConvSpec], nn.Module], spec, budget,
                 input_shape=(32, 32, 3), *, tolerance: float = 1e-4) -> BudgetFit:
    """Sets ``spec``'s knob so that ``build(spec)`` (a model using that conv) has as many
    parameters as ``budget`` allows, no more; see the module docstring. ``tolerance`` is the
    bisection's final width on a fraction knob."""
    spec = as_spec(spec)
    full = parameter_count(build(ConvSpec("full")), input_shape)
    target = resolve_budget(budget, full)
    if spec.knob is None:
        raise ValueError(f"conv {spec.kind!r} has nothing to size; choose a substitute "
                         f"(separable, bottleneck, hashed, hashed_sep, acdc)")

    def count(value):
        return parameter_count(build(spec.with_knob(value)), input_shape)

    if spec.knob == "fraction":
        lo, hi = tolerance, 1.0
        if count(lo) > target:
            raise ValueError(f"a budget of {target:,} parameters is below the smallest "
                             f"{spec.kind} model ({count(lo):,}); raise the budget")
        if count(hi) <= target:
            lo = hi
        while hi - lo > tolerance:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
        best = spec.with_knob(lo)
    elif spec.knob == "channels_per_group":
        best = None
        for value in _GROUP_SIZES:
            try:
                n = count(value)
            except ValueError:  # channels per group that do not divide some layer's inputs
                continue
            if n > target:
                break
            best = spec.with_knob(value)
        if best is None:
            raise ValueError(f"no {spec.kind} model fits a budget of {target:,} parameters "
                             f"(depthwise, the smallest, has {count(1):,}); raise the budget")
    else:  # ACDC factors: double until over the budget, then bisect the integers
        if count(1) > target:
            raise ValueError(f"a budget of {target:,} parameters is below the smallest "
                             f"{spec.kind} model ({count(1):,}); raise the budget")
        lo, hi = 1, 2
        while hi <= MAX_FACTORS and count(hi) <= target:
            lo, hi = hi, 2 * hi
        hi = min(hi, MAX_FACTORS + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
        best = spec.with_knob(lo)
    return BudgetFit(best, parameter_count(build(best), input_shape), target, full)
