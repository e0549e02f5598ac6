import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax.models import MODELS, count_params, create_model, init_variables


@pytest.mark.parametrize("name,expected", [("logreg", 30_730), ("mlp", 318_410),
                                           ("resnet18_narrow", 701_466),
                                           ("resnet18", 11_173_962)])
def test_parameter_counts(name, expected):
    model = create_model(name, 10)
    shapes = jax.eval_shape(lambda k: init_variables(model, k), jax.random.key(0))
    assert count_params(shapes["params"]) == expected


def test_unknown_model_and_bad_classes():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        create_model("vgg", 10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("mlp", 1)


def test_pytorch_default_init_distributions():
    v = init_variables(create_model("resnet18_narrow", 10), jax.random.key(0))
    p, s = v["params"], v["batch_stats"]
    # U(-b, b) with b = 1/sqrt(fan_in): max near b, std b/sqrt(3).
    for w, fan_in in [(p["stage4_block0"]["conv1"]["kernel"], 3 * 3 * 64),
                      (p["head"]["kernel"], 128), (p["head"]["bias"], 128)]:
        b = 1 / np.sqrt(fan_in)
        assert float(jnp.abs(w).max()) <= b
        if w.size > 1000:
            assert float(jnp.abs(w).max()) > 0.95 * b
            np.testing.assert_allclose(float(w.std()), b / np.sqrt(3), rtol=0.05)
    assert float(jnp.abs(p["head"]["bias"]).max()) > 0  # biases are not zero as in Flax
    bn = p["stage1_block0"]["bn1"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)
    np.testing.assert_array_equal(s["stage1_block0"]["bn1"]["mean"], 0.0)
    np.testing.assert_array_equal(s["stage1_block0"]["bn1"]["var"], 1.0)


def test_mlp_bias_init_and_options():
    v = init_variables(create_model("mlp", 10), jax.random.key(1))
    b = v["params"]["hidden_0"]["bias"]
    assert float(jnp.abs(b).max()) <= 1 / np.sqrt(3072)
    assert v["batch_stats"] == {}
    nobias = create_model("mlp", 10, use_bias=False, widths=(7,))
    pv = init_variables(nobias, jax.random.key(0))["params"]
    assert set(pv) == {"hidden_0", "head"} and "bias" not in pv["head"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes_and_features(name):
    overrides = {"widths": (4, 4, 4, 4)} if name.startswith("resnet") else {}
    size = 8
    if name.startswith("vgg"):  # five 2x2 pools: 32x32 inputs; 1/32 of the widths
        overrides, size = {"widths_scale": 32}, 32
    if name.startswith("wrn"):  # their sizes are tested in test_budget; the smallest here
        overrides = {"depth": 10, "widen": 1}
    model = create_model(name, 5, **overrides)
    x = jnp.ones((2, size, size, 3))
    if name in ("vgg13", "vgg16"):
        # Shapes only, traced without compiling: random init of a VGG takes 15 s to compile
        # on a CPU, and vgg11 and vgg19 run the same code with numbers.
        v = jax.eval_shape(lambda k: init_variables(model, k, (size, size, 3)),
                           jax.random.key(0))
        logits, feats = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), v)
        chex.assert_shape(logits, (2, 5))
        assert feats.shape[0] == 2
        return
    v = init_variables(model, jax.random.key(0), (size, size, 3))
    logits, feats = model.apply(v, x, return_features=True)
    chex.assert_shape(logits, (2, 5))
    assert feats.shape[0] == 2
    np.testing.assert_allclose(model.apply(v, x), logits, rtol=1e-6)


def test_resnet_masked_batch_norm_ignores_padding():
    model = create_model("resnet18_narrow", 3, widths=(4, 4, 4, 4))
    v = init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    garbage = x.at[2:].set(100.0)
    mask = jnp.array([True, True, False, False])
    _, a = model.apply(v, x[:2], train=True, mutable=["batch_stats"])
    _, b = model.apply(v, garbage, train=True, mask=mask, mutable=["batch_stats"])
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-5)
