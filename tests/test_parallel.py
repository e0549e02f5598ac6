"""Data parallelism over 4 fake CPU devices, each check in its own process (XLA_FLAGS must be set
before jax starts)."""

import pytest

from harness import run_python

CHECK = r'''
import jax, jax.numpy as jnp, numpy as np
from wsjax.data import synthetic_dataset
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.engine import Engine
from wsjax.parallel import DataParallel, make_mesh
from wsjax.train import StopRule, replica_keys
assert jax.device_count() == 4, jax.devices()
ds = synthetic_dataset(160, 64, 4, (8, 8, 3))
model = create_model({model!r}, 4, **{overrides!r})
tx = make_optimizer("momentum", 0.02)
keys = replica_keys({seeds!r})
stop = StopRule(threshold=1.01, max_epochs=2)

def run(parallel):
    engine = Engine(model, tx, batch_size=64, eval_batch_size=32, input_shape=(8, 8, 3),
                    parallel=parallel)
    x, y = engine.put(ds.x_train), engine.put(ds.y_train)
    states = engine.replace(parallel=None).init_states(keys)
    # Committed to one device, as restored weights are: fit puts them on the mesh.
    states = jax.device_put(states, jax.devices()[0]) if parallel else states
    states, prog = engine.fit(states, keys, x, y, np.arange(150), stop)
    ev = engine.evaluate(states, x, y, np.arange(100, 160))
    return states, prog, ev

ref, prog, ev = run(None)
par, prog4, ev4 = run(DataParallel(make_mesh(), {mode!r}, shard_data={shard}))
leaf = jax.tree.leaves(par.params)[0]
assert len(leaf.sharding.device_set) == 4, leaf.sharding
diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(par)))
print("max diff", diff)
assert diff < 1e-3, diff  # reduction order differs across devices
np.testing.assert_allclose(prog.history[-1]["train_acc"], prog4.history[-1]["train_acc"], atol=1e-6)
np.testing.assert_allclose(ev["acc"], ev4["acc"], atol=1e-6)
print("OK")
'''


def _check(model, overrides, mode, shard=False, seeds=(0, 1, 2, 3)):
    out = run_python(CHECK.format(model=model, overrides=overrides, mode=mode, shard=shard,
                                  seeds=list(seeds)), devices=4)
    assert "OK" in out


# The slowest check here (2 minutes on a loaded CI machine); the mesh calls it makes, the
# others make too: CI runs it in one environment (`once`, conftest.py).
@pytest.mark.once
def test_batch_split_over_4_devices_equals_1_device_with_batchnorm():
    # The dataset split over the devices too (as over several processes): each device holds
    # a quarter and the step gathers batches across them.
    # Two seeds: each is a copy of the unrolled ResNet step to compile (wsjax.replicas); one
    # block per stage (a ResNet-10) halves that, and the layouts compared do not depend on it.
    _check("resnet18_narrow", {"widths": (4, 4, 4, 4), "blocks_per_stage": (1, 1, 1, 1)},
           "batch", shard=True, seeds=(0, 1))


def test_replicas_split_over_4_devices_equals_1_device():
    _check("mlp", {"widths": (32,)}, "replica")


def test_replica_mode_rejects_uneven_seeds():
    out = run_python(r'''
import jax, numpy as np
from wsjax.parallel import DataParallel, make_mesh
p = DataParallel(make_mesh(), "replica")
try:
    p.place_state({"w": np.zeros((3, 2))})
except ValueError as e:
    print("ERR", e)
''', devices=4)
    assert "ERR" in out and "multiple of 4" in out
