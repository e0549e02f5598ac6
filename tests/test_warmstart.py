import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax import warmstart
from wsjax.models import create_model, init_variables
from wsjax.trees import module_mask, path_mask


@pytest.fixture(scope="module")
def mlp_pair():
    model = create_model("mlp", 10, widths=(16,))
    old = init_variables(model, jax.random.key(0))["params"]
    fresh = init_variables(model, jax.random.key(1))["params"]
    return model, old, fresh


class TestVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_shrink_perturb_variants(self):
        model = create_model("mlp", 10, widths=(16,))
        old = init_variables(model, jax.random.key(0))["params"]
        fresh = init_variables(model, jax.random.key(1))["params"]
        f = self.variant(warmstart.shrink_perturb)
        chex.assert_trees_all_close(f(old, fresh, 1.0, 0.0), old)
        chex.assert_trees_all_close(f(old, fresh, 0.0, 1.0), fresh)
        chex.assert_trees_all_close(f(old, fresh, 0.6, 0.01),
                                    jax.tree.map(lambda a, b: 0.6 * a + 0.01 * b, old, fresh),
                                    rtol=1e-5, atol=1e-7)


def test_mask_leaves_untouched(mlp_pair):
    _, old, fresh = mlp_pair
    mask = module_mask(old, ["head"])
    out = warmstart.shrink_perturb(old, fresh, 0.0, 1.0, mask=mask)
    chex.assert_trees_all_close(out["hidden_0"], old["hidden_0"])
    chex.assert_trees_all_close(out["head"], fresh["head"])
    # Array-valued masks work under jit too.
    amask = jax.tree.map(jnp.asarray, mask)
    out2 = jax.jit(lambda a, b, m: warmstart.shrink_perturb(a, b, 0.0, 1.0, mask=m))(old, fresh,
                                                                                      amask)
    chex.assert_trees_all_close(out2, out)


def test_gaussian_variant_statistics(mlp_pair):
    _, old, _ = mlp_pair
    out = warmstart.shrink_perturb_gaussian(jax.random.key(3), old, 0.5, 0.1)
    noise = out["hidden_0"]["kernel"] - 0.5 * old["hidden_0"]["kernel"]
    np.testing.assert_allclose(float(noise.std()), 0.1, rtol=0.05)
    assert abs(float(noise.mean())) < 0.01
    same = warmstart.shrink_perturb_gaussian(jax.random.key(3), old, 1.0, 0.0)
    chex.assert_trees_all_close(same, old)
    masked = warmstart.shrink_perturb_gaussian(jax.random.key(3), old, 0.5, 0.1,
                                               mask=path_mask(old, lambda p: p.endswith("bias")))
    chex.assert_trees_all_close(masked["head"]["kernel"], old["head"]["kernel"])


def test_bad_arguments_name_the_problem(mlp_pair):
    _, old, fresh = mlp_pair
    with pytest.raises(ValueError, match=r"shrink=1.5 is out of range"):
        warmstart.shrink_perturb(old, fresh, 1.5, 0.0)
    with pytest.raises(ValueError, match=r"perturb=-0.1 is out of range"):
        warmstart.shrink_perturb(old, fresh, 0.5, -0.1)
    with pytest.raises(ValueError, match=r"sigma=-1"):
        warmstart.shrink_perturb_gaussian(jax.random.key(0), old, 0.5, -1)
    with pytest.raises(ValueError, match=r"shrink=nan"):
        warmstart.shrink_perturb(old, fresh, float("nan"), 0.0)
    with pytest.raises(TypeError, match="must be a number"):
        warmstart.shrink_perturb(old, fresh, "big", 0.0)
    other = init_variables(create_model("mlp", 10, widths=(8,)), jax.random.key(0))["params"]
    with pytest.raises(ValueError, match=r"differ in shape at 'head/kernel'"):
        warmstart.shrink_perturb(old, other, 0.5, 0.1)
    with pytest.raises(ValueError, match="different structures"):
        warmstart.shrink_perturb(old, {"head": fresh["head"]}, 0.5, 0.1)
    with pytest.raises(ValueError, match="mask"):
        warmstart.shrink_perturb(old, fresh, 0.5, 0.1, mask={"head": True})
    with pytest.raises(ValueError, match="no top-level layer named"):
        module_mask(old, ["classifier"])


def test_reset_batch_stats_equals_init():
    model = create_model("resnet18_narrow", 10, widths=(4, 4, 4, 4))
    v = init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) * 3 + 1
    _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    trained = upd["batch_stats"]
    assert not np.allclose(trained["stem_bn"]["mean"], 0)
    chex.assert_trees_all_close(warmstart.reset_batch_stats(trained), v["batch_stats"])
    mask = module_mask(trained, ["stem_bn"])
    part = warmstart.reset_batch_stats(trained, mask=mask)
    chex.assert_trees_all_close(part["stem_bn"], v["batch_stats"]["stem_bn"])
    chex.assert_trees_all_close(part["stage1_block0"], trained["stage1_block0"])
    with pytest.raises(ValueError, match="neither a BatchNorm"):
        warmstart.reset_batch_stats(v["params"])


def test_recompute_batch_stats_matches_batch_moments():
    model = create_model("resnet18_narrow", 3, widths=(4, 4, 4, 4))
    v = init_variables(model, jax.random.key(0), (8, 8, 3))
    images = jax.random.normal(jax.random.key(2), (3, 5, 8, 8, 3)) * 2 + 0.5
    stats = jax.jit(lambda p, s, x: warmstart.recompute_batch_stats(model, p, s, x))(
        v["params"], v["batch_stats"], images)
    # The stem BN sees the stem conv's output: its stats are that output's moments per batch.
    conv = lambda x: model.apply(v, x, train=False, capture_intermediates=True,
                                 mutable=["intermediates"])[1]["intermediates"]["stem_conv"][
        "__call__"][0]
    feats = [np.asarray(conv(images[i])) for i in range(3)]
    mean = np.mean([f.mean(axis=(0, 1, 2)) for f in feats], axis=0)
    var = np.mean([f.var(axis=(0, 1, 2)) for f in feats], axis=0)
    np.testing.assert_allclose(stats["stem_bn"]["mean"], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["stem_bn"]["var"], var, rtol=1e-4, atol=1e-5)
    mlp = create_model("mlp", 3)
    assert warmstart.recompute_batch_stats(mlp, {}, {}, images) == {}


def test_reset_opt_state_whole_and_partial():
    model = create_model("mlp", 10, widths=(8,))
    params = init_variables(model, jax.random.key(0))["params"]
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(3):
        _, state = tx.update(grads, state, params)
    chex.assert_trees_all_close(warmstart.reset_opt_state(tx, state, params), tx.init(params))
    mask = module_mask(params, ["head"])
    part = warmstart.reset_opt_state(tx, state, params, mask=mask)
    adam = part[1][0]
    np.testing.assert_array_equal(adam.mu["head"]["kernel"], 0.0)
    np.testing.assert_array_equal(adam.nu["head"]["bias"], 0.0)
    chex.assert_trees_all_close(adam.mu["hidden_0"], state[1][0].mu["hidden_0"])
    assert int(adam.count) == 3  # shared counter kept by default
    reset_all_counts = warmstart.reset_opt_state(tx, state, params, mask=mask, reset_counts=True)
    assert int(reset_all_counts[1][0].count) == 0
    chex.assert_trees_all_close(reset_all_counts[1][0].mu["hidden_0"], state[1][0].mu["hidden_0"])
    with pytest.raises(ValueError, match="reset_counts=False needs a mask"):
        warmstart.reset_opt_state(tx, state, params, reset_counts=False)
    with pytest.raises(ValueError, match="different structures"):
        warmstart.reset_opt_state(optax.sgd(0.1, momentum=0.9), state, params)


def test_arm_fields_are_checked():
    with pytest.raises(ValueError, match="noise_kind='uniform'"):
        warmstart.Arm("a", noise_kind="uniform")
    with pytest.raises(ValueError, match="bn='drop'"):
        warmstart.Arm("a", bn="drop")
    with pytest.raises(ValueError, match="optimizer='zero'"):
        warmstart.Arm("a", optimizer="zero")
    with pytest.raises(ValueError, match="shrink=1.5 is out of range"):
        warmstart.Arm("a", shrink=1.5)
    with pytest.raises(ValueError, match="noise_scale=-1 is out of range"):
        warmstart.Arm("a", noise_scale=-1)


def test_apply_arm_on_stacked_replicas():
    model = create_model("resnet18_narrow", 3, widths=(4, 4, 4, 4))
    init = jax.vmap(lambda k: init_variables(model, k, (8, 8, 3)))
    old, fresh = init(jax.random.split(jax.random.key(0), 2)), init(
        jax.random.split(jax.random.key(1), 2))
    stats = jax.tree.map(lambda x: x + 3.0, old["batch_stats"])
    # Shrink-perturb with a fresh init; BatchNorm reset; a new optimizer state.
    arm = warmstart.Arm("sp", shrink=0.6, noise_scale=0.01)
    params, new_stats, opt = warmstart.apply_arm(arm, old["params"], stats, "old-opt",
                                                 fresh=fresh["params"])
    chex.assert_trees_all_close(params, jax.tree.map(lambda a, b: 0.6 * a + 0.01 * b,
                                                     old["params"], fresh["params"]),
                                rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(new_stats, old["batch_stats"])  # mean 0, var 1
    assert opt is None
    # Gaussian noise with one key per replica: each replica's noise is its own key's.
    keys = jax.random.split(jax.random.key(5), 2)
    arm = warmstart.Arm("g", shrink=1.0, noise_scale=0.1, noise_kind="gaussian", bn="keep",
                        optimizer="keep")
    params, kept, opt = warmstart.apply_arm(arm, old["params"], stats, "old-opt", key=keys)
    one = warmstart.shrink_perturb_gaussian(keys[1], jax.tree.map(lambda a: a[1], old["params"]),
                                            1.0, 0.1)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[1], params), one)
    chex.assert_trees_all_close(kept, stats)
    assert opt == "old-opt"
    # Recomputed statistics come from the callable, with the new weights.
    arm = warmstart.Arm("r", bn="recompute")
    seen = {}
    recompute = lambda p, s: seen.setdefault("stats", jax.tree.map(jnp.zeros_like, s))
    _, out, _ = warmstart.apply_arm(arm, old["params"], stats, fresh=fresh["params"],
                                    recompute=recompute)
    chex.assert_trees_all_close(out, seen["stats"])
    with pytest.raises(ValueError, match="needs fresh"):
        warmstart.apply_arm(warmstart.Arm("a"), old["params"], stats)
    with pytest.raises(ValueError, match="needs a key"):
        warmstart.apply_arm(warmstart.Arm("a", noise_kind="gaussian"), old["params"], stats)
    with pytest.raises(ValueError, match="needs recompute"):
        warmstart.apply_arm(warmstart.Arm("a", bn="recompute"), old["params"], stats,
                            fresh=fresh["params"])
    with pytest.raises(ValueError, match="needs the previous opt_state"):
        warmstart.apply_arm(warmstart.Arm("a", optimizer="keep"), old["params"], stats,
                            fresh=fresh["params"])
