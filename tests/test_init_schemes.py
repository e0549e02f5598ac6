"""Initialization schemes by name: each draws the variance its table promises, biases follow
the scheme, and every model takes one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax.experiments.common import ModelConfig, build_model
from wsjax.models import create_model, init_variables
from wsjax.models.init import INIT_SCHEMES, bias_init, kernel_init, kernel_variance


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
@pytest.mark.parametrize("shape", [(512, 384), (3, 3, 96, 128)])
def test_each_scheme_draws_its_variance(scheme, shape):
    w = np.asarray(kernel_init(scheme)(jax.random.PRNGKey(0), shape, jnp.float32))
    assert w.shape == shape
    expected = kernel_variance(scheme, shape)
    if scheme == "zeros":
        assert not w.any()
        return
    # About 110k-200k entries: the sample variance is within 2% of the true one.
    assert abs(w.mean()) < 0.02 * np.sqrt(expected)
    assert w.var() == pytest.approx(expected, rel=0.02)


def test_uniform_schemes_respect_their_bound_and_normal_ones_are_not_truncated():
    shape = (1024, 512)
    for scheme in ("torch", "glorot_uniform", "he_uniform", "lecun_uniform"):
        w = np.asarray(kernel_init(scheme)(jax.random.PRNGKey(1), shape))
        bound = np.sqrt(3 * kernel_variance(scheme, shape))
        assert np.abs(w).max() <= bound * (1 + 1e-6)
    # PyTorch's kaiming_normal_ is a plain normal: about 0.27% of draws lie beyond 3 sigma.
    w = np.asarray(kernel_init("he_normal")(jax.random.PRNGKey(1), shape))
    beyond = np.mean(np.abs(w) > 3 * np.sqrt(kernel_variance("he_normal", shape)))
    assert 0.001 < beyond < 0.005


def test_orthogonal_kernels_have_orthonormal_columns():
    w = np.asarray(kernel_init("orthogonal")(jax.random.PRNGKey(2), (3, 3, 32, 64)))
    flat = w.reshape(-1, 64)  # fan_in 288 rows, 64 orthonormal columns
    np.testing.assert_allclose(flat.T @ flat, np.eye(64), atol=1e-5)


def test_biases_follow_the_scheme():
    b = np.asarray(bias_init("torch", 100)(jax.random.PRNGKey(0), (1000,)))
    assert np.abs(b).max() <= 0.1 and b.std() > 0.05
    for scheme in INIT_SCHEMES[1:]:
        assert not np.asarray(bias_init(scheme, 100)(jax.random.PRNGKey(0), (1000,))).any()


@pytest.mark.parametrize("name", ["mlp", "logreg", "resnet18_narrow"])
def test_every_model_takes_a_scheme(name):
    shape = (8, 8, 3)
    he = init_variables(create_model(name, 10, init_scheme="he_normal"), jax.random.PRNGKey(0),
                        shape)["params"]
    torch = init_variables(create_model(name, 10), jax.random.PRNGKey(0), shape)["params"]
    head_he, head_torch = he["head"]["kernel"], torch["head"]["kernel"]
    # He's variance is 6x PyTorch's default for the same fan-in.
    assert float(head_he.var()) / float(head_torch.var()) == pytest.approx(6.0, rel=0.35)
    zeros = init_variables(create_model(name, 10, init_scheme="zeros"), jax.random.PRNGKey(0),
                           shape)["params"]
    assert not np.asarray(zeros["head"]["kernel"]).any()


def test_bad_scheme_or_option_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown init scheme 'kaiming'.*he_normal"):
        create_model("mlp", 10, init_scheme="kaiming")
    with pytest.raises(ValueError, match="has no option \\['activation'\\]"):
        create_model("resnet18_narrow", 10, activation="tanh")
    with pytest.raises(ValueError, match="unknown activation"):
        create_model("mlp", 10, activation="swishy")


def test_flags_build_the_model():
    model = build_model(ModelConfig(model="mlp", widths=(32, 32, 32), init="glorot_uniform",
                                    activation="tanh"), 10)
    assert model.widths == (32, 32, 32) and model.init_scheme == "glorot_uniform"
    assert model.activation == "tanh"
    assert build_model(ModelConfig(), 10).init_scheme == "torch"
