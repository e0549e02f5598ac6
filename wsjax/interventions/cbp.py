"""Continual backprop (Dohare et al., Nature 2024; ``shibhansh/loss-of-plasticity``): after every
update, replace a small fraction of mature, low-utility hidden units with fresh ones.

Two forms, as in the source (``CBPConfig.form``):

- ``'resnet'`` (``lop/algos/res_gnt.py``, used for incremental CIFAR): per unit, an age and a
  mean-magnitude *running sum* ``m += (1 - decay) * mean|h|`` (never decayed); utility
  ``mean|W_next[i]| * m`` (``'contribution'``) or ``mean|W_next[i]|`` (``'weight'``). Once any
  unit is older than ``maturity``, a budget grows by ``rate * units`` per step and ``floor`` of
  it is spent on the lowest-utility mature units. New incoming weights ~ N(0, 2 / fan_in), bias
  0, outgoing rows 0, age 0, the BatchNorm after the unit reset; optimizer state untouched.
- ``'mlp'`` (``lop/algos/gnt.py``): bias-corrected exponential averages of utility
  ``mean|W_next[i]| * mean|h|`` and of the mean activation; ``rate * #mature`` units per step,
  a fraction below 1 rounded up with that probability. New incoming weights
  ~ U(+-sqrt(2) sqrt(3 / fan_in)), bias 0; the next layer's bias absorbs the removed units'
  average contribution (``fold_bias``), outgoing rows 0; Adam's moments of the new weights are
  zeroed. The source zeroes the mean activation *before* folding it, so its fold adds nothing;
  ``fold_bias=False`` reproduces that. It also zeroes per-entry Adam step counts, which optax's
  shared count cannot hold: here only the moments are zeroed.

Every function is pure and jit-able; the unit counts are data-dependent and handled by masks.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from wsjax.interventions.resets import zero_opt_entries
from wsjax.interventions.roles import get_path, set_path, unit_layers
from wsjax.interventions.units import replace_units, unit_entries
from wsjax.train import StepHook
from wsjax.warmstart import check_range

FORMS = ("resnet", "mlp")
UTILITIES = ("contribution", "weight")


@dataclasses.dataclass(frozen=True)
class CBPConfig:
    """Continual backprop's hyperparameters; defaults are the source's incremental-CIFAR
    ResNet configuration (``rate`` 1e-5, ``maturity`` 1000, ``decay`` 0.99)."""

    form: str = "resnet"
    rate: float = 1e-5
    maturity: int = 1000
    decay: float = 0.99
    utility: str = "contribution"
    fold_bias: bool = True

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"CBPConfig.form={self.form!r} must be one of {FORMS}")
        if self.utility not in UTILITIES:
            raise ValueError(f"CBPConfig.utility={self.utility!r} must be one of {UTILITIES}")
        check_range("rate", self.rate, 0.0, 1.0)
        check_range("decay", self.decay, 0.0, 1.0)
        check_range("maturity", self.maturity, 0.0, None)


def cbp_init(params, layers=None) -> dict:
    """The per-layer state: ``{name: {'age', 'mag', 'util', 'mean_act' (units,), 'budget'}}``."""
    layers = unit_layers(params) if layers is None else tuple(layers)
    state = {}
    for layer in layers:
        units = get_path(params, f"{layer.name}/kernel").shape[-1]
        zeros = jnp.zeros((units,), jnp.float32)
        state[layer.name] = {"age": zeros, "mag": zeros, "util": zeros, "mean_act": zeros,
                             "budget": jnp.zeros((), jnp.float32)}
    return state


def _lowest(util, eligible, n):
    """Mask of the ``n`` lowest-``util`` eligible units (fewer if fewer are eligible)."""
    order = jnp.argsort(jnp.where(eligible, util, jnp.inf))
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    return (rank < n) & eligible


def _outgoing_magnitude(kernel, units):
    """Mean |w| of each unit's outgoing weights (kernel input axis -2)."""
    per_row = jnp.mean(jnp.abs(kernel), axis=tuple(i for i in range(kernel.ndim)
                                                    if i != kernel.ndim - 2))
    return per_row.reshape(-1, units).mean(axis=0)  # flattened NHWC rows interleave channels


def _count(s, cfg: CBPConfig, eligible, key):
    """Units to replace this step, and the layer's updated budget."""
    units = eligible.shape[0]
    n_eligible = jnp.sum(eligible)
    if cfg.form == "resnet":
        budget = s["budget"] + jnp.where(n_eligible > 0, cfg.rate * units, 0.0)
        n = jnp.floor(budget)
        return n, budget - n
    expected = cfg.rate * n_eligible
    n = jnp.where(expected < 1, (jax.random.uniform(key) <= expected) & (n_eligible > 0),
                  jnp.floor(expected))
    return n, s["budget"]


def _batch_mean(h, mask):
    """Per-unit mean of ``h`` (batch, ..., units) over the real rows (``mask``) and
    positions."""
    if mask is None:
        return jnp.mean(h, axis=tuple(range(h.ndim - 1)))
    w = mask.astype(h.dtype).reshape(mask.shape + (1,) * (h.ndim - 1))
    count = jnp.maximum(jnp.sum(w), 1.0) * math.prod(h.shape[1:-1])
    return jnp.sum(h * w, axis=tuple(range(h.ndim - 1))) / count


def continual_backprop(params, batch_stats, state: dict, acts: dict, key,
                       config: CBPConfig = CBPConfig(), *, layers=None,
                       tx: optax.GradientTransformation | None = None, opt_state=None,
                       mask=None):
    """One continual-backprop step after an optimizer update (see the module docstring).

    ``acts`` holds this step's activations of each layer (``roles.activations``), ``state``
    comes from ``cbp_init`` or the previous step; ``mask`` (batch,) marks the real rows of a
    padded batch. Returns ``(params, batch_stats, state, opt_state, replaced)`` with
    ``replaced`` a ``{layer: (units,) bool}`` of the units renewed.
    """
    cfg = config
    layers = unit_layers(params) if layers is None else tuple(layers)
    keys = jax.random.split(key, 2 * len(layers))
    new_state, replaced = {}, {}
    for i, layer in enumerate(layers):
        s, h = state[layer.name], acts[layer.name]
        kernel = get_path(params, f"{layer.name}/kernel")
        units = kernel.shape[-1]
        age = s["age"] + 1
        out_mag = _outgoing_magnitude(get_path(params, layer.outgoing), units)
        if cfg.form == "resnet":
            mag = s["mag"] + (1 - cfg.decay) * _batch_mean(jnp.abs(h), mask)
            util = out_mag * mag if cfg.utility == "contribution" else out_mag
            ranking, mean_act = util, s["mean_act"]
        else:
            correction = 1 - cfg.decay ** age
            mean_act = cfg.decay * s["mean_act"] + (1 - cfg.decay) * _batch_mean(h, mask)
            new = out_mag * _batch_mean(jnp.abs(h), mask) if cfg.utility == "contribution" \
                else out_mag
            util = cfg.decay * s["util"] + (1 - cfg.decay) * new
            mag, ranking = s["mag"], util / correction
        eligible = age > cfg.maturity
        n, budget = _count(s, cfg, eligible, keys[2 * i])
        renew = _lowest(ranking, eligible, n)
        fan_in = math.prod(kernel.shape[:-1])
        if cfg.form == "resnet":
            fresh = math.sqrt(2.0 / fan_in) * jax.random.normal(keys[2 * i + 1], kernel.shape,
                                                                kernel.dtype)
        else:
            bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
            fresh = jax.random.uniform(keys[2 * i + 1], kernel.shape, kernel.dtype, -bound,
                                       bound)
            if cfg.fold_bias:
                params = _fold_into_next_bias(params, layer, renew, mean_act / correction)
        params, batch_stats = replace_units(params, batch_stats, layer, renew, fresh)
        new_state[layer.name] = {
            "age": jnp.where(renew, 0.0, age), "mag": mag,
            "util": jnp.where(renew, 0.0, util),
            "mean_act": jnp.where(renew, 0.0, mean_act), "budget": budget}
        replaced[layer.name] = renew
    if cfg.form == "mlp" and tx is not None and opt_state is not None:
        opt_state = zero_opt_entries(tx, opt_state, params,
                                     unit_entries(params, layers, replaced, bias=True))
    return params, batch_stats, new_state, opt_state, replaced


def _fold_into_next_bias(params, layer, mask, mean_act):
    """Adds the removed units' average contribution ``sum_i W_next[i] * mean_act[i]`` to the
    next layer's bias, so zeroing their outgoing rows does not shift the next layer's input."""
    out_path = layer.outgoing
    bias_path = out_path.rsplit("/", 1)[0] + "/bias"
    kernel = get_path(params, out_path)
    if kernel.ndim != 2 or kernel.shape[0] != mask.shape[0]:
        raise ValueError(f"{layer.name}: folding into the next bias needs a dense outgoing "
                         f"kernel with one row per unit; got {kernel.shape}")
    shift = jnp.sum(kernel * jnp.where(mask, mean_act, 0.0)[:, None], axis=0)
    return set_path(params, bias_path, get_path(params, bias_path) + shift)


def cbp_hook(config: CBPConfig = CBPConfig(), *, layers=None,
             tx: optax.GradientTransformation | None = None) -> StepHook:
    """Continual backprop as a ``wsjax.train.StepHook`` (after every optimizer step, with that
    step's activations; its state in ``TrainState.extra``) for ``wsjax.engine.Engine``. ``tx``
    (the engine's optimizer) lets the MLP form zero the moments of the weights it renews."""

    def update(state, acts, mask, key):
        params, stats, extra, opt_state, _ = continual_backprop(
            state.params, state.batch_stats, state.extra, acts, key, config, layers=layers,
            tx=tx, opt_state=state.opt_state, mask=mask)
        return state.replace(params=params, batch_stats=stats, extra=extra,
                             opt_state=opt_state)

    return StepHook(init=lambda params: cbp_init(params, layers), update=update)
