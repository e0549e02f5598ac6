"""The staged protocol with every intervention as an arm, on tiny synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax.experiments import claims, interventions
from wsjax.interventions.l2_init import anchored_l2_init

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once

TINY = ["--dataset", "synthetic:4:8", "--train-subset", "240", "--seeds", "2",
        "--max-epochs", "2", "--batch-size", "32", "--chunk", "50", "--probe", "40"]


def test_every_method_runs_resumes_and_records_diagnostics(tmp_path):
    out = tmp_path / "iv"
    args = TINY + ["--model", "mlp", "--widths", "16", "--out", str(out)]
    first = interventions.main(args + ["--stages", "2"]).results
    rec = interventions.main(args + ["--stages", "3"])  # extends: stages 0-1 restored
    res = rec.results
    assert rec.config["optimizer"] == "momentum" and rec.config["threshold"] == 0.999
    assert set(res) == {"cold", "warm", "warm_rm", "reset", "l2_init", "sp", "sp_aa", "dash",
                        "redo", "cbp"}
    assert {a: rounds[:2] for a, rounds in res.items()} == first
    for arm, rounds in res.items():
        assert [r.n for r in rounds] == [50, 100, 150]
        for r in rounds:
            assert len(r.seeds) == 2 and all(0 <= s.test_acc <= 1 for s in r.seeds)
            assert set(r.end) >= {"dormant", "dead", "srank", "effective_rank",
                                  "weight_magnitude", "distance_from_init"}
        assert "grad_ratio_new_old" in rounds[1].start and "prev_acc" in rounds[1].start
    # Stage 0 is shared, except by L2 Init and continual backprop, which train differently.
    assert res["warm"][0].seeds == res["dash"][0].seeds
    for own in ("l2_init", "cbp"):
        assert res["warm"][0].end["distance_from_init"] != res[own][0].end[
            "distance_from_init"]
    # A warm start's stage begins where the previous one ended; cold begins elsewhere.
    assert res["warm"][1].start["distance_from_init"] == res["warm"][0].end[
        "distance_from_init"]
    assert res["cold"][1].start["distance_from_init"] != res["warm"][1].start[
        "distance_from_init"]
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == sorted(f"{a}_s002" for a in res)
    assert (out / "interventions.png").exists() and (out / "diagnostics.png").exists()
    rows = [r for r in claims.claims(tmp_path, runs=["iv"])]
    assert any(r["claim"].startswith("DASH reaches") for r in rows)
    assert any(r["claim"].startswith("dash trains on less than cold") for r in rows)
    # Synthetic evidence never gets a verdict; every stage's stop is counted.
    assert all(r["verdict"] == "no verdict (synthetic data)" for r in rows)
    assert all(r["n"] == 2 and r["stops"] != "-" for r in rows)


def test_conv_arms_on_a_resnet(tmp_path):
    args = TINY + ["--model", "resnet18_narrow", "--widths", "2,2,2,2", "--stages", "2",
                   "--methods", "warm", "dash", "redo", "sp_aa", "--out", str(tmp_path)]
    res = interventions.main(args).results
    for rounds in res.values():
        assert len(rounds) == 2 and all(np.isfinite(s.test_acc) for s in rounds[1].seeds)


def test_anchored_l2_init_pulls_toward_the_first_params():
    p0 = {"w": jnp.ones(3)}
    tx = optax.chain(anchored_l2_init(0.5), optax.sgd(1.0))
    state = tx.init(p0)
    p = {"w": jnp.full(3, 3.0)}
    upd, state = tx.update({"w": jnp.zeros(3)}, state, p)
    np.testing.assert_allclose(optax.apply_updates(p, upd)["w"], 3.0 - 2 * 0.5 * 2.0)
    stacked = jax.vmap(tx.init)({"w": jnp.stack([jnp.zeros(2), jnp.ones(2)])})
    np.testing.assert_array_equal(stacked[0].theta0["w"], [[0, 0], [1, 1]])


def test_continual_backprop_as_an_engine_step_hook(tmp_path):
    from wsjax.engine import Engine
    from wsjax.interventions import CBPConfig, cbp_hook
    from wsjax.models import create_model
    from wsjax.train import StopRule, replica_keys

    model = create_model("mlp", 4, widths=(12,))
    tx = optax.adam(1e-3)
    cfg = CBPConfig(form="mlp", rate=0.5, maturity=3)
    engine = Engine(model, tx, batch_size=16, input_shape=(8, 8, 3),
                    step_hook=cbp_hook(cfg, tx=tx))
    keys = replica_keys([0, 1])
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3)), jnp.uint8)
    y = jnp.asarray(np.arange(40) % 4)
    states = engine.init_states(keys)
    assert states.extra["hidden_0"]["age"].shape == (2, 12)
    states, progress = engine.fit(states, keys, x, y, np.arange(40), StopRule(2.0, 2))
    age = np.asarray(states.extra["hidden_0"]["age"])
    # 2 epochs of 3 steps: units start maturing after step 3, then half of the mature ones
    # are renewed every step (their age back to 0), so ages differ and none passes 6.
    assert age.max() <= 6 and (age < 6).any() and len(np.unique(age)) > 1
    carried = engine.new_state(states.variables, states.opt_state, states.extra)
    np.testing.assert_array_equal(carried.extra["hidden_0"]["age"], age)
    # The hook's state is checkpointed with the rest, so a resumed stage keeps the ages.
    from wsjax.checkpoint import Checkpointer
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, states)
    ckpt.wait()
    restored, _ = ckpt.restore(engine.init_states(keys))
    ckpt.close()
    np.testing.assert_array_equal(restored.extra["hidden_0"]["age"], age)
