"""Replica layouts: unrolled replicas compute what vmapped ones do, and 'auto' picks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax.engine import Engine, make_epoch_fn
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.parallel import DataParallel, make_mesh
from wsjax.replicas import replica_map, resolve_replicas
from wsjax.train import replica_keys

# What these tests compare (loops, replica layouts) does not depend on depth: a ResNet with one
# block per stage (a ResNet-10, still with BatchNorm and projection shortcuts) compiles in half
# the time of the ResNet-18.
ONE_BLOCK = {"blocks_per_stage": (1, 1, 1, 1)}


def test_unroll_matches_vmap_with_shared_and_mapped_arguments():
    def fn(w, x, scale):
        return {"out": jnp.tanh(x @ w) * scale, "norm": jnp.sum(w ** 2)}

    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)   # 3 replicas
    x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)      # shared
    scale = jnp.asarray([1.0, 2.0, 3.0])
    want = replica_map(fn, (0, None, 0), "vmap")(w, x, scale)
    got = jax.jit(replica_map(fn, (0, None, 0), "unroll"))(w, x, scale)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    assert got["out"].shape == (3, 5, 2) and got["norm"].shape == (3,)


def test_unroll_refuses_what_it_cannot_map():
    with pytest.raises(ValueError, match="axis 0 or None"):
        replica_map(lambda a: a, (1,), "unroll")
    with pytest.raises(ValueError, match="one replica count"):
        replica_map(lambda a, b: a + b, (0, 0), "unroll")(jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match="'vmap' or 'unroll'"):
        replica_map(lambda a: a, (0,), "loop")
    with pytest.raises(ValueError, match="scalar leaf"):
        replica_map(lambda a: a, (0,), "unroll")(jnp.float32(1.0))
    with pytest.raises(ValueError, match="count >= 1"):
        replica_map(lambda a: a, (0,), "unroll")(jnp.ones((0, 3)))
    with pytest.raises(ValueError, match="split over devices"):
        replica_map(lambda a: a, (0,), "unroll", spmd_axis_name="data")
    with pytest.raises(ValueError, match="replicas='auto' must be 'vmap' or 'unroll'"):
        make_epoch_fn(create_model("mlp", 4), optax.sgd(0.1), batch_size=8, replicas="auto")


def test_unrolled_engine_trains_and_evaluates_each_replica_on_its_own_examples(tiny):
    """Per-replica (2-d) index rows through the unrolled epoch and evaluation, against vmap."""
    model = create_model("resnet18_narrow", 4, widths=(4, 4, 4, 4), **ONE_BLOCK)
    keys = replica_keys([0, 1])
    x, y = jax.device_put(tiny.x_train), jax.device_put(tiny.y_train)
    rows = np.stack([np.arange(0, 40), np.arange(40, 80)])
    out = {}
    for replicas in ("vmap", "unroll"):
        engine = Engine(model, make_optimizer("sgd", 0.05), batch_size=16, replicas=replicas,
                        loop="host", input_shape=(8, 8, 3))
        states, sums = engine.epoch(engine.init_states(keys), keys, jnp.array([True, True]),
                                    x, y, jnp.asarray(rows), 40)
        out[replicas] = (states, sums, engine.evaluate(states, x, y, rows))
    chex.assert_trees_all_close(out["unroll"], out["vmap"], rtol=1e-4, atol=1e-5)


def test_auto_unrolls_conv_nets_on_cpu_only():
    conv = create_model("resnet18_narrow", 4, widths=(4, 4, 4, 4))
    mlp = create_model("mlp", 4)
    cpu = jax.default_backend() == "cpu"
    assert resolve_replicas("auto", conv, (8, 8, 3)) == ("unroll" if cpu else "vmap")
    assert resolve_replicas("auto", mlp, (8, 8, 3)) == "vmap"
    split = DataParallel(make_mesh(), "replica")
    assert resolve_replicas("auto", conv, (8, 8, 3), split) == "vmap"
    with pytest.raises(ValueError, match="cannot split replicas"):
        resolve_replicas("unroll", conv, (8, 8, 3), split)
    with pytest.raises(ValueError, match="replicas='scan'"):
        resolve_replicas("scan", conv, (8, 8, 3))
