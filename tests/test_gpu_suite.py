"""The GPU suite in its --tiny mode (every step on a CPU, synthetic data), so it cannot rot
between the rare GPU draws; and the PyTorch baseline where torch is installed."""

import json
import tarfile

import numpy as np
import pytest

from wsjax.experiments import gpu_suite

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once


def test_tiny_suite_runs_every_step_and_records_it(tmp_path):
    cfg = gpu_suite.SuiteConfig(out=str(tmp_path / "suite"), tiny=True,
                                table1_out=str(tmp_path / "table1"),
                                study_out=str(tmp_path / "study"))
    results = gpu_suite.run(cfg)
    steps = results["steps"]
    assert list(steps) == list(gpu_suite.STEPS)
    assert all(s["status"] == "ok" for s in steps.values()), steps
    # What the file holds is what the call returned (written after every step).
    saved = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert list(saved["steps"]) == list(gpu_suite.STEPS)
    assert "== summary" in (tmp_path / "suite" / "suite.log").read_text()

    rows = steps["engine"]["value"]["rows"]
    seen = {(r["model"], r["seeds"], r["layout"]) for r in rows}
    assert {("mlp", 1, "vmap"), ("mlp", 2, "vmap"), ("mlp", 1, "batch-parallel")} <= seen
    for r in rows:
        assert r["timed"] >= 1 and r["epoch_s"] > 0 and r["compile_s"] >= 0
        assert r["seed_epoch_s"] == pytest.approx(r["epoch_s"] / r["seeds"])

    assert steps["fast_trainer"]["value"]["wsjax"]["runs"] >= 1
    table1 = steps["table1"]["value"]
    # Finished (0), or interrupted at the budget: by main_guard (130) or, when the signal
    # came as the run was exiting, by the signal itself (-2).
    assert table1["returncode"] in (0, 130, -2)
    assert table1["stages"] and all(s["epoch"] >= 1 for s in table1["stages"].values())
    # The study's runs finish on tiny data, and their result files (no checkpoints) come back
    # in one archive (a GPU machine returns at most a few files).
    with tarfile.open(tmp_path / "suite" / "study.tar.gz") as tar:
        members = tar.getnames()
    study = dict(steps["study"]["value"])
    ran = list(gpu_suite.STUDY)[:gpu_suite.TINY_STUDY_RUNS]
    for name in gpu_suite.STUDY:  # the others' flags were parsed and checked, resolved
        if name not in ran:
            assert study[name]["checked"]["seeds"] == gpu_suite.TINY["study_seeds"]
            study.pop(name)
    for name, run in study.items():
        assert run["returncode"] == 0, run["output_tail"]
        assert "results.json" in run["copied"] or any(
            c.endswith("/results.json") for c in run["copied"])
        assert {f"{name}/{c}" for c in run["copied"]} <= set(members)
        # A sweep's or a table's config.json is in each cell's folder.
        assert any(m.startswith(f"{name}/") and m.endswith("config.json") for m in members)
    assert not any("checkpoints" in m for m in members)
    assert set(study) == set(ran) and set(steps["study"]["value"]) == set(gpu_suite.STUDY)
    if "skipped" not in steps["torch"]["value"]:
        assert steps["torch"]["value"]["speedup"]


def test_a_failing_step_is_recorded_and_the_suite_goes_on(tmp_path):
    # No data where --data points: the data step fails with a message naming the fix.
    cfg = gpu_suite.SuiteConfig(out=str(tmp_path / "suite"), data=str(tmp_path / "none"),
                                steps=("runtime", "data"), budget=30)
    steps = gpu_suite.run(cfg)["steps"]
    assert steps["runtime"]["status"] == "ok"
    assert steps["data"]["status"] == "failed"
    assert "../shared/GPU.md" in steps["data"]["error"]


def test_official_torch_resnet_matches_the_study_model():
    torch = pytest.importorskip("torch")
    from wsjax.baselines import official_torch
    from wsjax.models import count_params, create_model, init_variables

    net = official_torch.ResNet18()
    jax_params = init_variables(create_model("resnet18_narrow", 10), __import__("jax").random
                                .key(0))["params"]
    assert official_torch.count_params(net) == count_params(jax_params) == 701_466
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    torch.manual_seed(0)
    loader = official_torch.make_loader(images, labels, np.arange(40), batch_size=16)
    out = official_torch.train_epoch(net, official_torch.make_optimizer(net), loader, "cpu")
    assert out["steps"] == 3 and out["examples"] == 40  # last partial batch kept
