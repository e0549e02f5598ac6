"""Per-seed splits (each replica trains and is evaluated on its own indices) and the official
protocol's shrink-perturb before round 1."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax import data as wdata
from wsjax.engine import Engine
from wsjax.experiments.common import DataConfig, study_data
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.study import protocols
from wsjax.study.records import SeedRow, migrate_config
from wsjax.train import StopRule, pad_indices, replica_keys
from wsjax.warmstart import Arm


def test_each_seed_draws_its_own_split():
    fit, val = wdata.seed_splits(300, [0, 1, 2])
    assert fit.shape == (3, 200) and val.shape == (3, 100)
    for f, v in zip(fit, val):
        assert sorted(np.concatenate([f, v]).tolist()) == list(range(300))
    assert not np.array_equal(np.sort(fit[0]), np.sort(fit[1]))
    # A seed's split depends on that seed (and --split-seed) alone, not on its neighbours.
    alone, _ = wdata.seed_splits(300, [2])
    np.testing.assert_array_equal(alone[0], fit[2])
    other, _ = wdata.seed_splits(300, [2], split_seed=1)
    assert not np.array_equal(other[0], fit[2])
    # Round 1's subset is the first fraction of each seed's own fitted order.
    assert wdata.first_fraction(fit, 0.5).shape == (3, 100)
    assert [c.shape for c in wdata.online_chunks(fit, 80)] == [(3, 80), (3, 160), (3, 200)]


def test_study_data_per_seed_and_fixed(tiny):
    per_seed = study_data(DataConfig("synthetic"), tiny, seeds=[0, 1])
    assert per_seed.fit_idx.shape == (2, 200) and per_seed.val_idx.shape == (2, 100)
    assert per_seed.eval_sets["val"][2].shape == (2, 100)
    fixed = study_data(DataConfig("synthetic", fixed_split=True), tiny, seeds=[0, 1])
    assert fixed.fit_idx.shape == (200,) and fixed.val_idx.shape == (100,)
    # Label noise with a split per seed: a share of all training labels, about that share of
    # each seed's fitted split; clean labels for evaluation.
    noisy = study_data(DataConfig("synthetic", label_noise=0.5), tiny, seeds=[0, 1])
    changed = np.asarray(noisy.y) != tiny.y_train
    assert 0.25 < changed.mean() < 0.5  # relabelled at random: some keep their class
    np.testing.assert_array_equal(np.asarray(noisy.eval_sets["val"][1]), tiny.y_train)


@pytest.mark.parametrize("loop", ["device", "host"])
def test_replicas_train_and_evaluate_on_their_own_indices(tiny, loop):
    engine = Engine(create_model("mlp", 4), make_optimizer("adam", 1e-3), batch_size=32,
                    input_shape=(8, 8, 3), loop=loop)
    x, y = jax.device_put(tiny.x_train), jax.device_put(tiny.y_train)
    keys = replica_keys([0, 1])
    start = engine.init_states(keys)
    rng = np.random.default_rng(0)
    a, b = rng.permutation(300)[:200], rng.permutation(300)[:200]
    copy = lambda: jax.tree.map(jnp.copy, start)
    leaf = lambda states: np.asarray(jax.tree.leaves(states.params)[0])
    rule = StopRule(0.99, 2)
    both, _ = engine.fit(copy(), keys, x, y, np.stack([a, b]), rule)
    only_a, _ = engine.fit(copy(), keys, x, y, a, rule)
    only_b, _ = engine.fit(copy(), keys, x, y, b, rule)
    # Replica 0 trained as if on a alone, replica 1 as if on b alone.
    np.testing.assert_allclose(leaf(both)[0], leaf(only_a)[0], atol=1e-6)
    np.testing.assert_allclose(leaf(both)[1], leaf(only_b)[1], atol=1e-6)
    rows = np.stack([a[:70], b[:70]])
    got = engine.evaluate(both, x, y, rows)
    for r, idx in enumerate((a[:70], b[:70])):
        want = engine.evaluate(both, x, y, idx)
        assert got["acc"][r] == pytest.approx(want["acc"][r])
        assert got["loss"][r] == pytest.approx(want["loss"][r], rel=1e-5)
    probs = engine.predict(both, x, rows)
    np.testing.assert_allclose(probs[1], engine.predict(both, x, b[:70])[1], atol=1e-6)
    norms = engine.grad_norms(both, x, y, np.stack([a[:64], b[:64]]), 32)
    assert float(norms[1]) == pytest.approx(float(engine.grad_norms(both, x, y, b[:64], 32)[1]),
                                            rel=1e-5)


def test_pad_indices_pads_every_row():
    padded, n = pad_indices(np.arange(6).reshape(2, 3), 5)
    assert n == 3 and padded.tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]
    with pytest.raises(ValueError, match="replicas, n"):
        pad_indices(np.zeros((2, 2, 2), int))


class RecordingTrainer:
    """A trainer that records what each stage started from, training nothing."""

    def __init__(self):
        self.starts = collections.OrderedDict()

    def fresh(self, stage):
        return {"params": {"w": jnp.ones(3)}, "batch_stats": {}}

    def arm_inputs(self, arm, stage, idx):
        return {"fresh": {"w": jnp.full(3, 10.0)}}

    def train(self, stage, variables, idx, opt_state=None, **options):
        self.starts[stage] = (np.asarray(variables["params"]["w"]), np.shape(idx))
        state = collections.namedtuple("S", "params batch_stats opt_state")(
            variables["params"], variables["batch_stats"], {"count": 1})
        return collections.namedtuple("T", "states result")(state, stage)


def test_shrink_perturb_arms_transform_their_init_before_round_1():
    arms = [Arm("warm_start"), Arm("sp", 0.5, 0.1)]
    trainer = RecordingTrainer()
    outcome = protocols.run_two_phase(trainer, fit_idx=np.zeros((2, 10), int), arms=arms)
    assert list(trainer.starts) == ["random_init", "round1", "round2_warm_start", "round1_sp",
                                    "round2_sp"]
    # 0.5 * init (1) + 0.1 * fresh (10) = 1.5, on round 1's data (each seed's first half).
    np.testing.assert_allclose(trainer.starts["round1_sp"][0], 1.5)
    assert trainer.starts["round1_sp"][1] == (2, 5)
    # Round 2 of the arm starts from its own round 1, transformed again.
    np.testing.assert_allclose(trainer.starts["round2_sp"][0], 0.5 * 1.5 + 1.0)
    assert outcome.round1_of("sp").result == "round1_sp"
    assert outcome.round1_of("warm_start").result == "round1"

    shared = RecordingTrainer()
    protocols.run_two_phase(shared, fit_idx=np.zeros(10, int), arms=arms, shared_round1=True)
    assert "round1_sp" not in shared.starts
    np.testing.assert_allclose(shared.starts["round2_sp"][0], 0.5 * 1.0 + 1.0)


def test_arms_with_one_transform_share_their_round_1():
    # Same shrink and noise, other BN and optimizer handling at round 2: one round 1 (a
    # fresh optimizer, whatever round 2 keeps), and no plain round 1 when no arm needs it.
    arms = [Arm("sp_keep", 0.5, 0.1, bn="keep", optimizer="keep"), Arm("sp_reset", 0.5, 0.1)]
    trainer = RecordingTrainer()
    outcome = protocols.run_two_phase(trainer, fit_idx=np.zeros(10, int), arms=arms,
                                      include_random=False)
    assert list(trainer.starts) == ["round1_sp_keep", "round2_sp_keep", "round2_sp_reset"]
    assert outcome.round1 is None
    assert outcome.round1_of("sp_reset") is outcome.round1_of("sp_keep")


class OnlineRecorder(RecordingTrainer):
    """``RecordingTrainer`` with what ``run_online`` also needs: a run folder, progress notes,
    ``drop`` and a row per seed."""

    def __init__(self, path):
        super().__init__()
        self.run = types.SimpleNamespace(path=path)
        self.progress = types.SimpleNamespace(note=lambda message: None)
        self.dropped = []

    def drop(self, stage):
        self.dropped.append(stage)

    def train(self, stage, variables, idx, opt_state=None, **options):
        trained = super().train(stage, variables, idx, opt_state, **options)
        rows = [SeedRow(seed=0, epochs=1, seconds=0.0, stop_reason="threshold", train_acc=1.0,
                        val_acc=0.5)]
        return trained._replace(result=types.SimpleNamespace(seeds=rows))


def test_online_shrink_perturb_arms_transform_their_init_before_round_0(tmp_path):
    arms = [Arm("warm_start"), Arm("sp", 0.5, 0.1), Arm("sp_keep", 0.5, 0.1, bn="keep")]
    trainer = OnlineRecorder(tmp_path)
    protocols.run_online(trainer, pool_idx=np.zeros(4, int), chunk=2, arms=arms)
    # Random init and the plain warm start share the plain round 0 (fresh init: 1); the two
    # arms with one transform share theirs: 0.5 * init + 0.1 * fresh (10) = 1.5.
    assert [s for s in trainer.starts if s.startswith("round000")] == ["round000",
                                                                       "round000_sp"]
    np.testing.assert_allclose(trainer.starts["round000"][0], 1.0)
    np.testing.assert_allclose(trainer.starts["round000_sp"][0], 1.5)
    # Round 1 transforms each arm's own round 0: again 0.5 * 1.5 + 1 for the shrink-perturb
    # arms, the plain round 0 unchanged for the warm start, on both chunks.
    np.testing.assert_allclose(trainer.starts["sp_r001"][0], 0.5 * 1.5 + 1.0)
    np.testing.assert_allclose(trainer.starts["sp_keep_r001"][0], 0.5 * 1.5 + 1.0)
    np.testing.assert_allclose(trainer.starts["warm_start_r001"][0], 1.0)
    assert trainer.starts["sp_r001"][1] == (4,)
    # Once round 1 is done, every round-0 stage is dropped (resuming needs the latest only).
    assert {"round000", "round000_sp"} <= set(trainer.dropped)

    shared = OnlineRecorder(tmp_path / "shared")
    shared.run.path.mkdir()
    protocols.run_online(shared, pool_idx=np.zeros(4, int), chunk=2, arms=arms,
                         shared_round0=True)
    assert "round000_sp" not in shared.starts
    np.testing.assert_allclose(shared.starts["sp_r001"][0], 0.5 * 1.0 + 1.0)


def test_runs_saved_before_the_flags_resume_only_as_they_ran():
    old = {"script": "warm_start", "split_seed": 0, "opt_state": "reset", "shrink": [0.6],
           "plateau_window": None, "plateau_min_epochs": 20, "model": "mlp"}
    migrated = migrate_config(old)
    assert migrated["fixed_split"] is True and migrated["shared_round1"] is True
    online = migrate_config({"script": "online", "split_seed": 0, "shrink": [0.6]})
    assert online["fixed_split"] is True and "shared_round1" not in online
    assert online["shared_round0"] is True
