"""Invariants of the plasticity interventions, each against a small NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax import diagnostics
from wsjax.interventions import (CBPConfig, UnitLayer, activations, add_l2_init, cbp_init,
                                 continual_backprop, dash, dash_gradient_average,
                                 default_roles, head_reset, l2_init_penalty,
                                 l2_init_penalty_dash, redo, role_mask, shrink_perturb_linear,
                                 unit_layers)
from wsjax.interventions.roles import outgoing_rows
from wsjax.models import create_model, init_variables
from wsjax.warmstart import shrink_perturb

SMALL_RESNET = dict(widths=(4, 4, 8, 8))


def _tree(seed=0):
    """A conv, a BatchNorm, a dense layer and a head, in Flax layout."""
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return {"conv": {"kernel": f(3, 3, 2, 4)}, "bn": {"scale": f(4), "bias": f(4)},
            "dense": {"kernel": f(4, 5), "bias": f(5)}, "head": {"kernel": f(5, 3), "bias": f(3)}}


def _cos(a, b):
    return float(np.sum(a * b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8))


def _dash_reference(p, g, lam, granularity="kernel_slice", bias_mode="vector"):
    p = jax.tree.map(np.asarray, p)
    g = jax.tree.map(np.asarray, g)
    out = jax.tree.map(np.copy, p)
    k, gk = p["conv"]["kernel"], g["conv"]["kernel"]
    for o in range(k.shape[3]):
        if granularity == "filter":
            out["conv"]["kernel"][..., o] *= np.clip(_cos(k[..., o], gk[..., o]), lam, 1)
            continue
        for i in range(k.shape[2]):
            out["conv"]["kernel"][:, :, i, o] *= np.clip(_cos(k[:, :, i, o], gk[:, :, i, o]),
                                                         lam, 1)
    for layer in ("dense", "head"):
        w, gw = p[layer]["kernel"], g[layer]["kernel"]
        for o in range(w.shape[1]):
            out[layer]["kernel"][:, o] *= np.clip(_cos(w[:, o], gw[:, o]), lam, 1)
        b, gb = p[layer]["bias"], g[layer]["bias"]
        if bias_mode == "vector":
            out[layer]["bias"] *= np.clip(_cos(b, gb), lam, 1)
        else:
            out[layer]["bias"] *= np.clip(np.sign(b * gb), lam, 1)
    return out


def test_roles_of_wsjax_models():
    v = init_variables(create_model("resnet18_narrow", 10, **SMALL_RESNET), jax.random.PRNGKey(0))
    roles = default_roles(v["params"])
    assert roles["head"] == {"kernel": "head_kernel", "bias": "head_bias"}
    assert roles["stem_conv"]["kernel"] == "conv_kernel"
    assert roles["stem_bn"] == {"scale": "norm_scale", "bias": "norm_bias"}
    mlp = init_variables(create_model("mlp", 10), jax.random.PRNGKey(0))["params"]
    assert default_roles(mlp)["hidden_0"] == {"kernel": "dense_kernel", "bias": "bias"}
    with pytest.raises(ValueError, match="unknown roles"):
        role_mask(mlp, ["kernels"])


@pytest.mark.parametrize("granularity,bias_mode", [("kernel_slice", "vector"),
                                                   ("filter", "elementwise")])
def test_dash_matches_reference(granularity, bias_mode):
    p, g = _tree(0), _tree(1)
    got = dash(p, g, 0.3, granularity=granularity, bias_mode=bias_mode)
    want = _dash_reference(p, g, 0.3, granularity, bias_mode)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["bn"]["scale"], p["bn"]["scale"])  # BatchNorm untouched


def test_dash_identity_at_lambda_one_and_lambda_at_zero_gradient():
    p = _tree(0)
    for a, b in zip(jax.tree.leaves(dash(p, _tree(1), 1.0)), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    zero = jax.tree.map(jnp.zeros_like, p)
    shrunk = dash(p, zero, 0.3)
    mask = role_mask(p, ["conv_kernel", "dense_kernel", "bias", "head_kernel", "head_bias"])
    for m, a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(shrunk), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, 0.3 * b if m else b, rtol=1e-6)


def test_dash_vmaps_over_replicas():
    ps = jax.tree.map(lambda a, b: jnp.stack([a, b]), _tree(0), _tree(2))
    gs = jax.tree.map(lambda a, b: jnp.stack([a, b]), _tree(1), _tree(3))
    got = jax.jit(jax.vmap(lambda p, g: dash(p, g, 0.3)))(ps, gs)
    one = dash(_tree(2), _tree(3), 0.3)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(one)):
        np.testing.assert_allclose(a[1], b, rtol=1e-5)


def test_dash_gradient_average_weights():
    gs = [{"w": jnp.full((2,), float(j + 1))} for j in range(3)]
    a = 0.3
    want = -sum(a * (1 - a) ** (2 - j) * (j + 1) for j in range(3))
    np.testing.assert_allclose(dash_gradient_average(gs, a)["w"], want, rtol=1e-6)
    first = -1 * (1 - a) ** 2 - a * (1 - a) * 2 - a * 3
    np.testing.assert_allclose(dash_gradient_average(gs, a, init="first")["w"], first,
                               rtol=1e-6)


def test_shrink_perturb_extremes_and_linear_variant():
    p, fresh = _tree(0), _tree(5)
    for a, b in zip(jax.tree.leaves(shrink_perturb(p, fresh, 0.0, 1.0)), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)  # cold
    for a, b in zip(jax.tree.leaves(shrink_perturb(p, fresh, 1.0, 0.0)), jax.tree.leaves(p)):
        np.testing.assert_array_equal(a, b)  # warm
    sp = shrink_perturb_linear(jax.random.PRNGKey(0), p, 0.3, 0.0)
    np.testing.assert_allclose(sp["dense"]["kernel"], 0.3 * p["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(sp["bn"]["scale"], p["bn"]["scale"])


def test_l2_init_forms():
    p, p0 = _tree(0), _tree(1)
    lam = 0.01
    ref = lam * sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p0)))
    np.testing.assert_allclose(l2_init_penalty(p, p0, lam), ref, rtol=1e-5)
    grad = jax.grad(l2_init_penalty)(p, p0, lam)
    tx = add_l2_init(p0, lam)
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(upd)):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    # The DASH form: the square of a sum of per-weight norms, biases and BN offsets skipped.
    weights = [("conv", "kernel"), ("bn", "scale"), ("dense", "kernel"), ("head", "kernel")]
    norms = sum(np.linalg.norm(np.asarray(p[a][b]) - np.asarray(p0[a][b])) for a, b in weights)
    np.testing.assert_allclose(l2_init_penalty_dash(p, p0, lam), lam * norms ** 2, rtol=1e-5)
    at_init = jax.grad(l2_init_penalty_dash)(p, p, lam)
    assert all(np.all(np.isfinite(g)) and not np.any(g) for g in jax.tree.leaves(at_init))
    at_init = jax.grad(l2_init_penalty)(p, p, lam)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(at_init))


def test_head_reset_touches_only_the_head():
    p, fresh = _tree(0), _tree(5)
    out = head_reset(p, fresh)
    np.testing.assert_array_equal(out["head"]["kernel"], fresh["head"]["kernel"])
    for name in ("conv", "bn", "dense"):
        for a, b in zip(jax.tree.leaves(out[name]), jax.tree.leaves(p[name])):
            np.testing.assert_array_equal(a, b)


def _mlp_with_dead_unit(unit=3):
    model = create_model("mlp", 10, widths=(8, 6))
    v = init_variables(model, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x, v["params"])
    h = params["hidden_0"]
    params["hidden_0"] = {"kernel": h["kernel"].at[:, unit].set(0.0),
                          "bias": h["bias"].at[unit].set(-1.0)}
    return model, {"params": params, "batch_stats": {}}


def test_redo_recycles_only_the_dormant_unit_and_its_moments():
    model, v = _mlp_with_dead_unit(3)
    params = v["params"]
    fresh = init_variables(model, jax.random.PRNGKey(9))["params"]
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 32, 32, 3))
    acts = activations(model, v, x)
    tx = optax.adam(1e-3)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)  # non-zero moments everywhere
    new, _, new_state, masks = redo(params, fresh, acts, 0.0, tx=tx, opt_state=state)
    np.testing.assert_array_equal(np.flatnonzero(masks["hidden_0"]), [3])
    assert not np.any(masks["hidden_1"])
    k, k_fresh, k_old = (np.asarray(t["hidden_0"]["kernel"]) for t in (new, fresh, params))
    np.testing.assert_array_equal(k[:, 3], k_fresh[:, 3])
    np.testing.assert_array_equal(np.delete(k, 3, 1), np.delete(k_old, 3, 1))
    assert new["hidden_0"]["bias"][3] == 0
    out = np.asarray(new["hidden_1"]["kernel"])
    assert not np.any(out[3]) and np.array_equal(np.delete(out, 3, 0),
                                                 np.delete(params["hidden_1"]["kernel"], 3, 0))
    mu = new_state[0].mu
    assert not np.any(mu["hidden_0"]["kernel"][:, 3]) and np.all(
        np.delete(np.asarray(mu["hidden_0"]["kernel"]), 3, 1) != 0)
    assert not np.any(mu["hidden_1"]["kernel"][3])
    assert np.all(mu["hidden_0"]["bias"] != 0)  # bias moments are kept, as in the source
    assert int(new_state[0].count) == 1


def test_outgoing_rows_follow_nhwc_flattening():
    h, w, c = 2, 3, 4
    fmap = np.broadcast_to(np.arange(c), (1, h, w, c)).reshape(1, -1)[0]
    for unit in range(c):
        mask = np.zeros(c, bool)
        mask[unit] = True
        np.testing.assert_array_equal(outgoing_rows(jnp.asarray(mask), h * w * c),
                                      fmap == unit)


def test_redo_on_resnet_resets_the_unit_batchnorm_and_keeps_batch_stats_in_activations():
    model = create_model("resnet18_narrow", 10, **SMALL_RESNET)
    v = init_variables(model, jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    acts = activations(model, v, x)
    layer = UnitLayer("stage1_block0/conv1", "stage1_block0/conv2/kernel", "stage1_block0/bn1")
    params = v["params"]
    bn = params["stage1_block0"]["bn1"]
    params["stage1_block0"]["bn1"] = {"scale": bn["scale"] * 3, "bias": bn["bias"] + 2}
    acts = {layer.name: acts[layer.name].at[..., 1].set(0.0)}
    fresh = init_variables(model, jax.random.PRNGKey(5))["params"]
    new, stats, _, masks = redo(params, fresh, acts, 0.0, layers=[layer],
                                batch_stats=v["batch_stats"])
    np.testing.assert_array_equal(np.flatnonzero(masks[layer.name]), [1])
    bn1 = new["stage1_block0"]["bn1"]
    assert bn1["scale"][1] == 1 and bn1["bias"][1] == 0 and bn1["scale"][0] == 3
    assert not np.any(new["stage1_block0"]["conv2"]["kernel"][:, :, 1, :])
    assert stats["stage1_block0"]["bn1"]["var"][1] == 1


def test_continual_backprop_resnet_form_replaces_the_expected_count():
    model = create_model("mlp", 10, widths=(20, 10))
    v = init_variables(model, jax.random.PRNGKey(0))
    layers = unit_layers(v["params"])
    cfg = CBPConfig(form="resnet", rate=0.1, maturity=3, decay=0.9)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
    params, state = v["params"], cbp_init(v["params"])
    step = jax.jit(lambda p, s, k: continual_backprop(p, {}, s, activations(
        model, {"params": p, "batch_stats": {}}, x), k, cfg))
    total = {layer.name: 0 for layer in layers}
    for t in range(10):
        params, _, state, _, replaced = step(params, state, jax.random.PRNGKey(t))
        for name, m in replaced.items():
            total[name] += int(np.sum(m))
    # The budget grows by rate * units from the first step with a unit older than maturity
    # (step 4), so 7 steps of 2.0 and 1.0 units.
    assert total == {"hidden_0": 14, "hidden_1": 7}


def test_continual_backprop_picks_lowest_utility_and_touches_only_their_slices():
    model = create_model("mlp", 10, widths=(8,))
    v = init_variables(model, jax.random.PRNGKey(0))
    params = v["params"]
    cfg = CBPConfig(form="mlp", rate=0.25, maturity=0, decay=0.5)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
    acts = activations(model, v, x)
    h = np.asarray(acts["hidden_0"])
    out_mag = np.mean(np.abs(np.asarray(params["head"]["kernel"])), axis=1)
    util = (1 - 0.5) * out_mag * np.mean(np.abs(h), axis=0) / (1 - 0.5)
    want = np.sort(np.argsort(util)[:2])  # 0.25 * 8 eligible units
    tx = optax.adam(1e-3)
    state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[1]
    new, _, _, new_opt, replaced = continual_backprop(
        params, {}, cbp_init(params), acts, jax.random.PRNGKey(3), cfg, tx=tx,
        opt_state=state)
    got = np.flatnonzero(replaced["hidden_0"])
    np.testing.assert_array_equal(got, want)
    head_old, head_new = np.asarray(params["head"]["kernel"]), np.asarray(new["head"]["kernel"])
    assert not np.any(head_new[got])
    np.testing.assert_array_equal(np.delete(head_new, got, 0), np.delete(head_old, got, 0))
    mean_act = np.mean(h, axis=0)  # bias-corrected average after one step = this batch's mean
    np.testing.assert_allclose(new["head"]["bias"], params["head"]["bias"] + (
        head_old[got] * mean_act[got, None]).sum(0), rtol=1e-5, atol=1e-6)
    assert not np.any(new_opt[0].mu["hidden_0"]["bias"][got])
    assert not np.any(new_opt[0].nu["head"]["kernel"][got])


def test_diagnostics_against_numpy():
    acts = {"a": jnp.asarray([[0.0, 1.0, 2.0], [0.0, 3.0, 0.0]]),
            "b": jnp.asarray([[[1.0, 0.0]], [[1.0, 0.0]]])}
    assert float(diagnostics.dormant_fraction(acts, 0.0)) == pytest.approx(2 / 5)
    assert float(diagnostics.dead_fraction(acts)) == pytest.approx(2 / 5)
    u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(50, 4)))
    s = np.array([10.0, 5.0, 1e-3, 0.0])
    phi = u * s
    assert int(diagnostics.stable_rank(phi, 0.01)) == 2
    p = s / s.sum()
    want = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
    assert float(diagnostics.effective_rank(phi)) == pytest.approx(want, rel=1e-4)
    assert int(diagnostics.feature_rank(phi * np.sqrt(50), 0.01)) == 2
    p0, p1 = _tree(0), _tree(1)
    total, _ = diagnostics.distance_from_init(p1, p0)
    ref = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                      for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0))))
    assert float(total) == pytest.approx(ref, rel=1e-5)
    ratio = diagnostics.gradient_norm_ratio(jax.tree.map(lambda x: 2 * x, p0), p0)
    assert float(ratio) == pytest.approx(2.0, rel=1e-5)
