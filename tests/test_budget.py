"""Wide ResNets, cheap substitute convolutions and parameter budgets: exact counts, the
variance-preserving inits, HashedNet and ACDC against NumPy references, budget solving."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax.budget import parameter_count, resolve_budget, solve_budget
from wsjax.models import count_params, create_model, init_variables
from wsjax.models.init import kernel_variance
from wsjax.models.substitutes import (ConvSpec, acdc_gain_scale, dct_matrix, grouped_conv,
                                      hash_buckets, make_conv, riffle, substitute_params)
from wsjax.summary import summarize_model

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once

SPECS = ["full", "separable:1", "separable:2", "bottleneck:0.5", "hashed:0.1",
         "hashed_sep:0.3", "acdc:3"]


class Host(nn.Module):
    """One substitute conv as a model, for counting and measuring it alone."""

    conv: str
    features: int
    stride: int = 1
    scheme: str = "he_normal"

    @nn.compact
    def __call__(self, x):
        return make_conv(self.conv, self.features, 3, self.stride, fan_in=x.shape[-1],
                         name="conv", init=self.scheme)(x)


def _init(module, x, key=0):
    return module.init(jax.random.PRNGKey(key), x)


def test_wrn_28_10_counts_match_the_log():
    summary = summarize_model(create_model("wrn28_10", 10), xla=False)
    assert summary.total_params == 36_479_194  # the log's 3.64792e7
    # Convolutions and the head; with BatchNorm's one per element, the log's 5.24564e9.
    assert summary.mult_adds == 5_243_328_768
    assert summary.mult_adds + summary.norm_mult_adds == 5_245_638_912


@pytest.mark.parametrize("conv", SPECS)
@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 16, 2), (16, 8, 1)])
def test_substitute_count_is_the_formula(conv, cin, cout, stride):
    x = jnp.zeros((1, 8, 8, cin))
    variables = jax.eval_shape(lambda: _init(Host(conv, cout, stride), x))
    assert count_params(variables["params"]) == substitute_params(conv, cin, cout, 3)
    y = jax.eval_shape(lambda: Host(conv, cout, stride).apply(_init(Host(conv, cout, stride),
                                                                    x), x))
    assert y.shape == (1, 8 // stride, 8 // stride, cout)


@pytest.mark.parametrize("conv", SPECS[1:])
@pytest.mark.parametrize("scheme,cin,cout", [("he_normal", 32, 32), ("torch", 16, 48)])
def test_init_keeps_the_replaced_convs_output_variance(conv, scheme, cin, cout):
    x = jax.random.normal(jax.random.PRNGKey(99), (16, 12, 12, cin))
    host = Host(conv, cout, scheme=scheme)
    # Interior pixels only: zero padding lowers the border's variance for every conv alike.
    var = np.mean([float(jnp.var(host.apply(_init(host, x, k), x)[:, 1:-1, 1:-1]))
                   for k in range(6)])
    target = 9 * cin * kernel_variance(scheme, (3, 3, cin, cout))
    assert var == pytest.approx(target, rel=0.12)


def test_hash_is_the_same_in_numpy_and_jax():
    b_np, s_np = hash_buckets(1000, 37, 12345, np)
    b_jx, s_jx = hash_buckets(1000, 37, 12345, jnp)
    np.testing.assert_array_equal(b_np, np.asarray(b_jx))
    np.testing.assert_array_equal(s_np, np.asarray(s_jx))
    assert set(np.unique(s_np)) == {-1, 1} and b_np.min() >= 0 and b_np.max() < 37
    assert len(np.unique(b_np)) == 37  # every shared weight is used


def _np_conv(x, w, stride=1):
    """Reference NHWC x HWIO convolution, padding k // 2 on each side."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    h = (x.shape[1] + 2 * (k // 2) - k) // stride + 1
    out = np.zeros((x.shape[0], h, h, w.shape[-1]))
    for i in range(h):
        for j in range(h):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


def test_hashed_layer_against_numpy():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype(np.float32)
    host = Host("hashed:0.2", 5)
    variables = _init(host, x)
    weights = np.asarray(variables["params"]["conv"]["weights"])
    seed = __import__("zlib").crc32(b"conv" + b"weights")
    bucket, sign = hash_buckets(3 * 3 * 4 * 5, len(weights), seed, np)
    kernel = (sign * weights[bucket]).reshape(3, 3, 4, 5)
    np.testing.assert_allclose(np.asarray(host.apply(variables, x)), _np_conv(x, kernel),
                               rtol=1e-4, atol=1e-4)


def test_acdc_layer_against_numpy():
    from scipy.fft import dct, idct

    x = np.random.default_rng(1).normal(size=(2, 5, 5, 6)).astype(np.float32)
    host = Host("acdc:3", 6)
    p = jax.device_get(_init(host, x)["params"]["conv"])
    depth = np.zeros((3, 3, 6, 6))
    for c in range(6):
        depth[:, :, c, c] = p["depthwise"]["kernel"][:, :, 0, c]
    y = _np_conv(x, depth)
    for f in range(3):
        if f:
            y = y[..., riffle(6)]
        y = idct(p["d"][f] * dct(p["a"][f] * y, type=2, norm="ortho", axis=-1), type=2,
                 norm="ortho", axis=-1)
    np.testing.assert_allclose(np.asarray(host.apply({"params": {"conv": p}}, x)), y,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dct_matrix(6) @ dct_matrix(6).T, np.eye(6), atol=1e-12)
    assert acdc_gain_scale(1.0, 1) == pytest.approx(1 / np.sqrt(1.01))


@pytest.mark.parametrize("groups,out", [(6, 6), (3, 6), (2, 4), (6, 12)])
def test_grouped_conv_matches_flax(groups, out):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 6))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6 // groups, out))
    for stride in (1, 2):
        conv = nn.Conv(out, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                       feature_group_count=groups, use_bias=False)
        np.testing.assert_allclose(grouped_conv(x, k, stride, groups),
                                   conv.apply({"params": {"kernel": k}}, x), atol=1e-5)


@pytest.mark.parametrize("model,kind,budget", [
    ("wrn16_1", "hashed", 0.2), ("wrn16_1", "hashed_sep", 0.12), ("wrn16_1", "hashed", 40_000),
    # A bottleneck's width moves in whole channels: fine enough on the big net only.
    ("wrn28_10", "bottleneck", 0.1)])
def test_budget_lands_within_one_percent(model, kind, budget):
    build = lambda spec: create_model(model, 10, conv=spec)
    fit = solve_budget(build, ConvSpec(kind), budget)
    full = parameter_count(build(ConvSpec()))
    assert fit.full_params == full
    assert fit.budget == (budget if budget > 1 else round(budget * full))
    assert fit.params == parameter_count(build(fit.spec)) <= fit.budget
    assert -0.01 < fit.error <= 0


def test_integer_knobs_take_the_largest_that_fits():
    build = lambda spec: create_model("wrn16_1", 10, conv=spec)
    fit = solve_budget(build, ConvSpec("acdc"), 30_000)
    assert fit.params <= 30_000 < parameter_count(build(fit.spec.with_knob(
        fit.spec.factors + 1)))
    with pytest.raises(ValueError, match="depthwise, the smallest"):
        solve_budget(build, ConvSpec("separable"), 0.05)
    with pytest.raises(ValueError, match="fraction"):
        resolve_budget(-3, 100)


def test_models_take_a_conv_and_name_bad_ones():
    cheap = parameter_count(create_model("resnet18_narrow", 10, conv="hashed:0.5"))
    full = parameter_count(create_model("resnet18_narrow", 10))
    assert full == 701_466 and full - cheap == 686_592 // 2  # half its blocks' 3x3 weights
    with pytest.raises(ValueError, match="unknown conv kind"):
        create_model("wrn16_1", 10, conv="fancy")
    with pytest.raises(ValueError, match="depth"):
        init_variables(create_model("wrn16_1", 10, depth=12), jax.random.PRNGKey(0))


def test_summary_command_solves_and_prints_the_budget(capsys):
    from wsjax.experiments import summary

    out = summary.main(["--model", "wrn16_1", "--conv", "hashed", "--budget", "0.2", "--no-xla"])
    assert out.total_params == 35_012  # within one parameter of 20% of 175,066
    printed = capsys.readouterr().out
    assert "Budget: hashed:" in printed and "35,012 parameters for a budget of 35,013" in printed
