"""The fast trainer's parts on tiny shapes, and one quick run of its experiment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax.augment import alternating_flip_mask, cutout
from wsjax.experiments import fast_trainer
from wsjax.models.batchnorm import BatchNorm
from wsjax.speedrun.lookahead import lookahead_decay, lookahead_sync
from wsjax.speedrun.muon import muon, orthogonalize
from wsjax.speedrun.nets import AirbenchNet, identity_init
from wsjax.speedrun.recipe import (AIRBENCH94, AIRBENCH94_MUON, PAGE_RESNET9, TRICKS, Recipe,
                                   build_model, lr_factor, param_labels, recipe_optimizer,
                                   run_length)
from wsjax.speedrun.tta import translate_views, tta_logits
from wsjax.speedrun.whitening import image_patches, whitening_filters

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once


def test_whitening_filters_match_a_numpy_eigendecomposition():
    rng = np.random.default_rng(0)
    # Correlated channels, so the covariance is far from the identity.
    images = rng.normal(size=(6, 8, 8, 3)) @ np.array([[1, .5, 0], [0, 1, .3], [0, 0, .2]])
    kernel = np.asarray(whitening_filters(jnp.asarray(images, jnp.float32), 2, eps=5e-4))
    assert kernel.shape == (2, 2, 3, 24)
    # NumPy reference in float64: patches in the same (row, column, channel) order.
    patches = np.stack([images[:, i:i + 7, j:j + 7] for i in range(2) for j in range(2)], 3)
    patches = patches.reshape(-1, 12)
    values, vectors = np.linalg.eigh(patches.T @ patches / len(patches))
    expect = (vectors / np.sqrt(values + 5e-4))[:, ::-1]
    got = kernel[..., :12].reshape(12, 12)
    # Eigenvectors are defined up to sign.
    signs = np.sign(np.sum(got * expect, axis=0))
    np.testing.assert_allclose(got, expect * signs, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    # The filters whiten: their responses are decorrelated with variance lambda/(lambda+eps).
    np.testing.assert_allclose(np.asarray(image_patches(jnp.asarray(images), 2)),
                               patches, rtol=1e-5, atol=1e-5)
    out = patches @ got
    np.testing.assert_allclose(out.T @ out / len(out), np.diag(values[::-1] / (values[::-1] + 5e-4)),
                               atol=2e-3)


def test_translate_views_and_six_view_tta():
    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    up_left, down_right = translate_views(x)
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(up_left, padded[:, :4, :4])
    np.testing.assert_array_equal(down_right, padded[:, 2:, 2:])
    w = jax.random.normal(jax.random.key(0), (16, 3))
    apply = lambda v: v.reshape(len(v), -1) @ w
    mirror = lambda v: (apply(v) + apply(v[:, :, ::-1])) / 2
    np.testing.assert_allclose(tta_logits(apply, x, 0), apply(x))
    np.testing.assert_allclose(tta_logits(apply, x, 1), mirror(x))
    expect = mirror(x) / 2 + mirror(up_left) / 4 + mirror(down_right) / 4
    np.testing.assert_allclose(tta_logits(apply, x, 2), expect, rtol=1e-6)
    with pytest.raises(ValueError, match="TTA level"):
        tta_logits(apply, x, 3)


def test_cutout_within_keeps_the_whole_square_inside():
    images = jnp.ones((64, 10, 10, 3))
    out = cutout(jax.random.key(0), images, 4, within=True)
    np.testing.assert_array_equal((out[..., 0] == 0).sum((1, 2)), 16)


def test_alternating_flip_alternates_each_image():
    key = jax.random.key(3)
    masks = np.stack([np.asarray(alternating_flip_mask(key, 1000, e)) for e in range(4)])
    assert 400 < masks[0].sum() < 600  # a random half in epoch 0
    np.testing.assert_array_equal(masks[1], ~masks[0])  # every image the other way next epoch
    np.testing.assert_array_equal(masks[2], masks[0])
    np.testing.assert_array_equal(masks[3], masks[1])
    # Traced epochs give the same masks (it runs inside the compiled run).
    np.testing.assert_array_equal(jax.jit(alternating_flip_mask, static_argnums=1)(key, 1000, 3),
                                  masks[3])


def test_lookahead_schedule_and_sync():
    assert float(lookahead_decay(0, 100)) == 0.0
    np.testing.assert_allclose(float(lookahead_decay(100, 100)), 0.95 ** 5, rtol=1e-6)
    np.testing.assert_allclose(float(lookahead_decay(50, 100)), 0.95 ** 5 / 8, rtol=1e-6)
    ema, net = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    new_ema, new_net = lookahead_sync(ema, net, 0.25)
    np.testing.assert_allclose(new_ema["w"], 0.75)
    np.testing.assert_allclose(new_net["w"], 0.75)  # the network is pulled back to the average
    np.testing.assert_allclose(lookahead_sync(ema, net, 0.0)[0]["w"], 1.0)  # decay 0: copy


def test_muon_orthogonalization():
    g = jax.random.normal(jax.random.key(0), (8, 36))
    o = np.asarray(orthogonalize(g), np.float64)  # 3 bf16 steps, airbench's setting
    u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    # Same singular vectors as g; singular values pushed into a band around 1.
    core = u.T @ o @ vt.T
    np.testing.assert_allclose(core - np.diag(np.diag(core)), 0, atol=0.05)
    assert np.all((np.diag(core) > 0.5) & (np.diag(core) < 1.3))
    # Tall matrices are handled by transposing.
    np.testing.assert_allclose(orthogonalize(g.T), orthogonalize(g).T, atol=1e-2)
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(jnp.ones((2, 2, 2)))


def test_muon_step_renormalizes_and_steps_along_the_orthogonalized_gradient():
    w = {"kernel": 3.0 * jax.random.normal(jax.random.key(1), (3, 3, 4, 8))}
    g = {"kernel": jax.random.normal(jax.random.key(2), (3, 3, 4, 8))}
    tx = muon(0.0, momentum=0.6)
    new = optax.apply_updates(w, jax.jit(tx.update)(g, tx.init(w), w)[0])
    np.testing.assert_allclose(jnp.linalg.norm(new["kernel"]), np.sqrt(8), rtol=1e-4)
    tx = muon(0.1, momentum=0.0, renormalize=False)
    step = jax.jit(tx.update)(g, tx.init(w), w)[0]["kernel"]
    expect = -0.1 * jax.jit(orthogonalize)(g["kernel"].reshape(-1, 8).T).T.reshape(3, 3, 4, 8)
    np.testing.assert_allclose(step, expect, atol=1e-6)
    with pytest.raises(ValueError, match="needs params"):
        muon(0.1).update(g, muon(0.1).init(w))


def test_airbench_net_layout_and_identity_init():
    model = AirbenchNet(widths=(8, 16, 16))
    # Shapes only (no compilation: the full run is covered by the quick run below).
    v = jax.eval_shape(lambda k: model.init(k, jnp.zeros((2, 16, 16, 3)), train=False),
                       jax.random.key(0))
    assert v["params"]["whiten"]["kernel"].shape == (2, 2, 3, 24)
    assert "scale" not in v["params"]["group1"]["norm1"]  # BN scales frozen at 1
    assert jax.eval_shape(model.apply, v, jnp.zeros((2, 16, 16, 3))).shape == (2, 10)
    k = identity_init()(jax.random.key(1), (3, 3, 4, 6))
    np.testing.assert_array_equal(k[1, 1, :, :4], np.eye(4))
    np.testing.assert_array_equal(k[0, 0, :, :4], 0)


def test_ghost_batchnorm_normalizes_each_group():
    x = jax.random.normal(jax.random.key(0), (8, 2, 2, 3)) * jnp.arange(1, 9)[:, None, None, None]
    bn = BatchNorm(ghost_size=4, momentum=0.0)
    v = bn.init(jax.random.key(1), x)
    y, upd = bn.apply(v, x, mutable=["batch_stats"])
    for group in (y[:4], y[4:]):  # each group of 4 has its own zero mean, unit variance
        np.testing.assert_allclose(group.mean((0, 1, 2)), 0, atol=1e-5)
        np.testing.assert_allclose(group.var((0, 1, 2)), 1, atol=1e-3)
    expect = (x[:4].mean((0, 1, 2)) + x[4:].mean((0, 1, 2))) / 2
    np.testing.assert_allclose(upd["batch_stats"]["mean"], expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ghost_size"):
        bn.apply(v, x[:6], mutable=["batch_stats"])


def test_page_resnet9_recipe_builds():
    model = build_model(PAGE_RESNET9.replace(widths=(8, 8, 8, 8), ghost_bn=2), 10)
    v = jax.eval_shape(lambda k: model.init(k, jnp.zeros((4, 16, 16, 3)), train=False),
                       jax.random.key(0))
    labels = param_labels(v["params"], PAGE_RESNET9)
    assert labels["whiten"]["kernel"] == "frozen" and v["params"]["whiten"]["kernel"].shape[-1] == 54
    assert labels["group1"]["res_norm1"]["bias"] == "bn_bias"
    out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
                            v, jnp.ones((4, 16, 16, 3)))
    assert out.shape == (4, 10)


def test_optimizer_groups_schedule_and_recipe_errors():
    r = AIRBENCH94.replace(widths=(8, 8, 8))
    v = jax.eval_shape(lambda k: AirbenchNet(widths=(8, 8, 8)).init(k, jnp.zeros((1, 16, 16, 3))),
                       jax.random.key(0))
    v = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v)
    labels = param_labels(v["params"], r)
    assert labels["whiten"] == {"kernel": "frozen", "bias": "whiten_bias"}
    assert labels["group2"]["norm1"]["bias"] == "bn_bias"
    assert labels["group2"]["conv1"]["kernel"] == "default"
    muon_labels = param_labels(v["params"], AIRBENCH94_MUON)
    assert muon_labels["group2"]["conv1"]["kernel"] == "filters"
    assert muon_labels["head"]["kernel"] == "head"  # its own lr in the Muon recipe
    # The Muon recipe's whitening bias lr falls linearly to 0 over its epochs.
    recipe = AIRBENCH94_MUON.replace(whiten_bias_epochs=1, momentum=0.0)
    tx = recipe_optimizer(recipe, v["params"], total_steps=10, steps_per_epoch=4)
    state, steps = tx.init(v["params"]), []
    for _ in range(5):
        updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, v["params"]), state,
                                            v["params"])
        steps.append(float(jnp.abs(updates["whiten"]["bias"]).max()))
    assert steps[0] > steps[1] > steps[2] > steps[3] > 0 and steps[4] == 0
    # Steps: whole batches only, ceil(epochs * steps per epoch): airbench94's 476.
    assert run_length(AIRBENCH94, 50_000) == (48, 476)
    f = lr_factor(AIRBENCH94, 476)
    np.testing.assert_allclose([f(0), f(109), f(476)], [0.2, 1.0, 0.07], rtol=1e-5)
    # A step leaves the frozen whitening filters alone; the whitening bias stops after its epochs.
    tx = recipe_optimizer(r.replace(whiten_bias_epochs=1), v["params"], total_steps=10,
                        steps_per_epoch=2)
    grads = jax.tree.map(jnp.ones_like, v["params"])
    state = tx.init(v["params"])
    update = jax.jit(tx.update)
    for step in range(3):
        updates, state = update(grads, state, v["params"])
        assert not np.any(updates["whiten"]["kernel"])
        assert np.any(updates["whiten"]["bias"]) == (step < 2)
    with pytest.raises(ValueError, match="flip"):
        Recipe(flip="sometimes")
    with pytest.raises(ValueError, match="unknown recipe fields"):
        AIRBENCH94.replace(lr_scale=2)
    with pytest.raises(ValueError, match="fill one batch"):
        run_length(AIRBENCH94, 100)
    # Every trick is on in one of the recipes, so the ablation switches something off.
    for change in TRICKS.values():
        assert AIRBENCH94.replace(**change) != AIRBENCH94 or \
            PAGE_RESNET9.replace(**change) != PAGE_RESNET9


def test_set_flag_parsing():
    assert fast_trainer.parse_overrides(["epochs=2", "widths=8,8,8", "bf16=false"]) == {
        "epochs": 2.0, "widths": (8, 8, 8), "bf16": False}
    with pytest.raises(ValueError, match="field=value"):
        fast_trainer.parse_overrides(["nonsense=1"])


def test_quick_warm_start_run(tmp_path):
    rec = fast_trainer.main(["--quick", "--mode", "warm-start", "--runs", "1", "--shrink",
                             "0.3", "--compile-cache", "", "--out", str(tmp_path)])
    res = rec.results
    assert set(res) == {"random_init", "warm_start", "sp_0.3"}
    for arm in res.values():
        assert len(arm.rows) == 1
        assert all(0.0 <= r.acc <= 1.0 for r in arm.rows)
    # Four separable synthetic classes (chance 25%): 16 steps of the recipe learn them.
    assert res["random_init"].acc_mean > 35.0
    assert (tmp_path / "results.json").exists()
