import chex
import jax
import numpy as np
import pytest
from harness import run_python

from wsjax.checkpoint import Checkpointer, load_warm_start, merge_weights
from wsjax.engine import Engine
from wsjax.models import create_model, init_variables
from wsjax.optim import make_optimizer
from wsjax.train import replica_keys


def init_replicas(model, tx, keys, input_shape=(32, 32, 3)):
    return Engine(model, tx, input_shape=input_shape).init_states(keys)


@pytest.fixture(scope="module")
def resnet_state():
    model = create_model("resnet18_narrow", 10, widths=(4, 4, 4, 4))
    tx = make_optimizer("adam", 1e-3)
    return model, tx, init_replicas(model, tx, replica_keys([0, 1]), (8, 8, 3))


def test_round_trip_full_state(tmp_path, resnet_state):
    _, _, state = resnet_state
    with Checkpointer(tmp_path / "ck", max_to_keep=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, state, {"step": step})
        ck.save(3, state, {"step": 33})  # saving a step again replaces it
        assert ck.all_steps() == [2, 3]
        back, meta = ck.restore(jax.eval_shape(lambda: state))
    assert meta == {"step": 33}
    chex.assert_trees_all_equal(back, state)


def test_relative_path(tmp_path, resnet_state, monkeypatch):
    _, _, state = resnet_state
    monkeypatch.chdir(tmp_path)
    with Checkpointer("relative/ck") as ck:
        ck.save(0, state)
    assert (tmp_path / "relative" / "ck" / "0").is_dir()
    with Checkpointer("relative/ck") as ck:
        assert ck.latest_step() == 0


def test_missing_checkpoint_errors(tmp_path, resnet_state):
    _, _, state = resnet_state
    with Checkpointer(tmp_path / "empty") as ck:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ck.restore(state)
        ck.save(1, state)
        with pytest.raises(FileNotFoundError, match="no step 5"):
            ck.restore(state, step=5)


def test_warm_start_strict_and_new_head(tmp_path):
    model = create_model("resnet18_narrow", 10, widths=(4, 4, 4, 4))
    tx = make_optimizer("sgd", 0.1)
    single = jax.tree.map(lambda a: a[0], init_replicas(model, tx, replica_keys([5]), (8, 8, 3)))
    with Checkpointer(tmp_path / "c10") as ck:
        ck.save(7, single)
    target = jax.eval_shape(lambda: init_variables(model, jax.random.key(9), (8, 8, 3)))
    w = load_warm_start(tmp_path / "c10", target)
    chex.assert_trees_all_equal(w["params"], single.params)
    chex.assert_trees_all_equal(w["batch_stats"], single.batch_stats)
    c100 = init_variables(create_model("resnet18_narrow", 100, widths=(4, 4, 4, 4)),
                          jax.random.key(1), (8, 8, 3))
    with pytest.raises(ValueError, match=r"params/head/kernel has shape \(4, 10\).*fresh_layers"):
        load_warm_start(tmp_path / "c10", c100)
    w = load_warm_start(tmp_path / "c10", c100, fresh_layers=["head"])
    chex.assert_trees_all_equal(w["params"]["head"], c100["params"]["head"])
    chex.assert_trees_all_equal(w["params"]["stem_conv"], single.params["stem_conv"])
    wider = jax.eval_shape(lambda: init_variables(create_model("resnet18_narrow", 10),
                                                  jax.random.key(1)))
    with pytest.raises(ValueError, match="stage1_block0/conv1/kernel has shape"):
        load_warm_start(tmp_path / "c10", wider)
    mlp = jax.eval_shape(lambda: init_variables(create_model("mlp", 10), jax.random.key(1)))
    with pytest.raises(ValueError, match="hidden_0/kernel is missing from the checkpoint"):
        load_warm_start(tmp_path / "c10", mlp)
    with pytest.raises(ValueError, match="not layers of the target"):
        merge_weights(w, target, fresh_layers=["classifier"])


def test_saved_on_4_devices_restores_on_1(tmp_path):
    ck = tmp_path / "sharded"
    run_python(rf'''
import jax, numpy as np
from wsjax.checkpoint import Checkpointer
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.engine import Engine
from wsjax.parallel import DataParallel, make_mesh
from wsjax.train import replica_keys
init_replicas = lambda model, tx, keys: Engine(model, tx).init_states(keys)
model = create_model("mlp", 10, widths=(8,))
tx = make_optimizer("adam", 1e-3)
state = DataParallel(make_mesh(), "replica").place_state(init_replicas(model, tx, replica_keys(range(4))))
assert len(state.params["head"]["kernel"].sharding.device_set) == 4
with Checkpointer({str(ck)!r}) as c:
    c.save(1, state, {{"devices": 4}})
np.save({str(tmp_path / "kernel.npy")!r}, np.asarray(state.params["head"]["kernel"]))
''', devices=4)
    model = create_model("mlp", 10, widths=(8,))
    tx = make_optimizer("adam", 1e-3)
    template = jax.eval_shape(lambda: init_replicas(model, tx, replica_keys(range(4))))
    with Checkpointer(ck) as c:
        state, meta = c.restore(template)
    assert meta == {"devices": 4} and jax.device_count() == 1
    np.testing.assert_array_equal(state.params["head"]["kernel"],
                                  np.load(tmp_path / "kernel.npy"))
    assert len(state.params["head"]["kernel"].sharding.device_set) == 1
