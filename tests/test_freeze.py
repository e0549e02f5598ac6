"""Fine-tuning with frozen layers (bit-identical parameters and BatchNorm statistics), a new
head from a checkpoint, and the VGG family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax import data as wdata
from wsjax.checkpoint import merge_weights
from wsjax.engine import Engine
from wsjax.models import create_model, init_variables
from wsjax.optim import make_optimizer
from wsjax.summary import summarize_model
from wsjax.train import StopRule, replica_keys
from wsjax.trees import leaf_paths

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once

BODY = ["stem_conv", "stem_bn", "stage1_block0", "stage2_block0/conv1"]


def test_frozen_layers_and_their_statistics_are_bit_identical():
    ds = wdata.synthetic_dataset(64, 32, 5, image_shape=(8, 8, 3))
    x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
    model = create_model("resnet18", 5, widths=(4, 8, 8, 8), blocks_per_stage=(1, 1, 1, 1))
    # A "pretrained" body: another seed's weights, loaded with a fresh head.
    pretrained = jax.vmap(lambda k: init_variables(model, k, (8, 8, 3)))(
        replica_keys([7]))
    engine = Engine(model, make_optimizer("momentum", 0.1, weight_decay=5e-4),
                    batch_size=32, input_shape=(8, 8, 3), frozen=BODY)
    fresh = engine.init(replica_keys([0]))
    start = jax.vmap(lambda s, t: merge_weights(s, t, fresh_layers=("head",)))(pretrained,
                                                                              fresh)
    states = engine.new_state(start)
    before = jax.tree.map(np.asarray, start)
    keys = replica_keys([0])
    after, _ = engine.fit(states, keys, x, y, np.arange(64), StopRule(threshold=2.0,
                                                                     max_epochs=1))
    changed = []
    for coll in ("params", "batch_stats"):
        old, new = before[coll], jax.tree.map(np.asarray, getattr(after, coll))
        for path, a, b in zip(leaf_paths(old), jax.tree.leaves(old), jax.tree.leaves(new)):
            frozen = any(path == f or path.startswith(f + "/") for f in BODY)
            if frozen:
                np.testing.assert_array_equal(a, b, err_msg=f"{coll}/{path} moved")
            elif not np.array_equal(a, b):
                changed.append(path)
    # Everything else trained: the head, later blocks, their statistics.
    assert "head/kernel" in changed and "stage2_block0/conv2/kernel" in changed
    assert "stage4_block0/bn2/mean" in changed


def test_a_misspelt_layer_is_an_error():
    engine = Engine(create_model("mlp", 10), make_optimizer("adam", 1e-3),
                    input_shape=(8, 8, 3), frozen=["hiden_0"])
    with pytest.raises(ValueError, match="frozen layers \\['hiden_0'\\] match no parameter.*"
                                         "hidden_0"):
        engine.init_states(replica_keys([0]))


@pytest.mark.parametrize("depth, params", [(11, 9_231_114), (13, 9_416_010), (16, 14_728_266),
                                           (19, 20_040_522)])
def test_vgg_sizes(depth, params):
    assert summarize_model(create_model(f"vgg{depth}", 10), xla=False).total_params == params


def test_vgg_says_what_input_it_needs():
    with pytest.raises(ValueError, match="at least 32x32, not 8x8"):
        init_variables(create_model("vgg11", 10, widths_scale=16), jax.random.PRNGKey(0),
                       (8, 8, 3))


def test_narrow_vgg_runs_and_returns_features():
    model = create_model("vgg11", 10, widths_scale=16)
    variables = init_variables(model, jax.random.PRNGKey(0))
    logits, features = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(
        variables, jnp.ones((2, 32, 32, 3)))
    assert logits.shape == (2, 10) and features.shape == (2, 32)
