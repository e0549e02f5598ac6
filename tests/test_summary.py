"""The model summary: per-layer parameters and multiply-adds that add up to known totals."""

import pytest

from wsjax.experiments import summary as summary_cmd
from wsjax.models import count_params, create_model, init_variables
from wsjax.summary import summarize_model


def test_mlp_rows_add_up():
    s = summarize_model(create_model("mlp", 10))
    assert [r.path for r in s.rows] == ["hidden_0", "hidden_1", "head"]
    assert [r.params for r in s.rows] == [307_300, 10_100, 1_010]
    assert s.total_params == 318_410 and s.mult_adds == 3072 * 100 + 100 * 100 + 100 * 10
    assert s.rows[0].param_shapes == {"bias": (100,), "kernel": (3072, 100)}
    if s.xla_flops is not None:  # a multiply-add is 2 flops, plus the elementwise work
        assert s.xla_flops >= 2 * s.mult_adds


def test_resnet18_matches_its_published_size():
    s = summarize_model(create_model("resnet18", 10), xla=False)
    # The CIFAR ResNet-18: 11,173,962 parameters and 0.56 G multiply-adds per image.
    assert s.total_params == 11_173_962 == s.trainable_params
    assert s.mult_adds == 555_422_720
    # Running mean and variance per channel: as many values as the scales and offsets.
    assert s.state_size == sum(r.params for r in s.rows if r.kind == "BatchNorm")
    paths = [r.path for r in s.rows]
    # Call order, each block before its layers; a block's own row has no parameters.
    assert paths.index("stage1_block0") < paths.index("stage1_block0/conv1")
    block = s.rows[paths.index("stage2_block0")]
    assert block.params == 0 and block.output == (1, 16, 16, 128)
    assert s.rows[paths.index("stage2_block0/shortcut_conv")].mult_adds == 16 * 16 * 64 * 128
    assert "Total params: 11,173,962" in str(s)


def test_every_parameter_is_in_one_row():
    model = create_model("resnet18_narrow", 10)
    s = summarize_model(model, (16, 16, 3), xla=False)
    params = init_variables(model, __import__("jax").random.PRNGKey(0), (16, 16, 3))["params"]
    assert sum(r.params for r in s.rows) == count_params(params) == s.total_params


def test_command_prints_and_checks_its_input(capsys):
    s = summary_cmd.main(["--model", "mlp", "--widths", "8", "--classes", "2",
                          "--input-shape", "1,1,2", "--no-xla"])
    assert s.total_params == 2 * 8 + 8 + 8 * 2 + 2
    assert "hidden_0 (Dense)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="three numbers H,W,C"):
        summary_cmd.main(["--input-shape", "3,3"])
