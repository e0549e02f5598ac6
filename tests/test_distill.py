"""Distillation (attention transfer and knowledge distillation, the teacher inside the step),
the recipe's schedules and drop-path, and warm-starting a student from its teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax.distill import Distillation, attention_loss, attention_map, kd_loss
from wsjax.engine import Engine
from wsjax.models import create_model, init_variables
from wsjax.models.dropout import drop_path
from wsjax.optim import lr_schedule, make_optimizer
from wsjax.train import StopRule, replica_keys
from wsjax.warmstart import shrink_perturb, transplant

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once


def test_attention_map_against_a_reference():
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    ref = (x ** 2).mean(axis=-1).reshape(3, -1)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(attention_map(jnp.asarray(x)), ref, rtol=1e-5)
    # Student and teacher may differ in width: the map averages the channels away.
    y = np.random.default_rng(1).normal(size=(3, 4, 5, 2)).astype(np.float32)
    ref_y = (y ** 2).mean(axis=-1).reshape(3, -1)
    ref_y = ref_y / np.linalg.norm(ref_y, axis=1, keepdims=True)
    np.testing.assert_allclose(attention_loss(jnp.asarray(x), jnp.asarray(y)),
                               ((ref - ref_y) ** 2).mean(axis=1), rtol=1e-5)


def test_distillation_terms_vanish_when_student_is_teacher():
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    logits = jax.random.normal(key1, (4, 10))
    maps = {"group1": jax.random.normal(key2, (4, 8, 8, 3))}
    mask = jnp.ones(4, bool)
    d = Distillation(None, alpha=0.7, beta=1e3)  # the loss alone needs no teacher model
    assert float(d.loss(2.0, logits, maps, logits, maps, mask)) == pytest.approx(0.3 * 2.0)
    assert float(jnp.max(jnp.abs(kd_loss(logits, logits, 4.0)))) < 1e-6
    other = jax.random.normal(key2, (4, 10))
    assert float(jnp.min(kd_loss(logits, other, 4.0))) > 0


def _tiny_data(n=64, size=8):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 10, n)), np.arange(n)


def test_a_student_trains_against_its_teacher_in_the_step():
    x, y, idx = _tiny_data()
    teacher = create_model("wrn10_1", 10)
    engine = Engine(teacher, make_optimizer("nesterov", 0.05), batch_size=32,
                    input_shape=(8, 8, 3))
    keys = replica_keys([0, 1])
    teacher_vars = engine.init(keys)
    student = engine.replace(model=create_model("wrn10_1", 10, conv="hashed:0.3"),
                             distill=Distillation(teacher, alpha=0.5))
    with pytest.raises(ValueError, match="teacher"):
        student.new_state(student.init(keys))
    states = student.new_state(student.init(keys), extra=teacher_vars)
    states, progress = student.fit(states, keys, x, y, idx, StopRule(2.0, 1))
    assert np.all(np.isfinite(progress.history[-1]["train_loss"]))
    # The teacher rides along, untouched; each replica keeps its own.
    jax.tree.map(np.testing.assert_array_equal, states.extra, teacher_vars)


def test_schedules():
    cos = lr_schedule("cosine", 0.1, epochs=10, steps_per_epoch=5)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(50)) == pytest.approx(0.0)
    step = lr_schedule("step", 0.1, epochs=10, steps_per_epoch=5)
    assert [round(float(step(t)), 6) for t in (14, 15, 30, 40)] == [0.1, 0.02, 0.004, 0.0008]
    with pytest.raises(ValueError, match="schedule"):
        lr_schedule("linear", 0.1, epochs=1, steps_per_epoch=1)
    assert isinstance(make_optimizer("nesterov", cos), optax.GradientTransformation)


def test_drop_path_keeps_the_mean_and_drops_whole_examples():
    x = jnp.ones((4000, 2, 2, 3))
    out = drop_path(jax.random.PRNGKey(0), x, 0.25)
    per_example = np.asarray(out).reshape(4000, -1)
    assert np.all(np.isclose(per_example, 0.0) | np.isclose(per_example, 1 / 0.75))
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
    assert float(out.mean()) == pytest.approx(1.0, abs=0.03)


def test_warm_start_from_a_teacher_where_shapes_allow():
    teacher = create_model("wrn10_1", 10)
    student = create_model("wrn10_1", 10, conv="separable:1")
    tp = init_variables(teacher, jax.random.PRNGKey(0), (8, 8, 3))["params"]
    sp = init_variables(student, jax.random.PRNGKey(1), (8, 8, 3))["params"]
    tree, mask = transplant(tp, sp)
    assert mask["head"]["kernel"] and mask["stem_conv"]["kernel"]
    assert not mask["group1_block0"]["conv1"]["depthwise"]["kernel"]
    blended = shrink_perturb(tree, sp, 0.5, 0.1, mask=mask)
    np.testing.assert_allclose(blended["head"]["kernel"],
                               0.5 * tp["head"]["kernel"] + 0.1 * sp["head"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_array_equal(blended["group1_block0"]["conv1"]["depthwise"]["kernel"],
                                  sp["group1_block0"]["conv1"]["depthwise"]["kernel"])
