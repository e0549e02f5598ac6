"""The main job end to end on tiny synthetic data, including a kill -9 and resume. It runs as
an installed command would, outside the checkout (``python -m wsjax warm_start``)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

COMMAND = [sys.executable, "-m", "wsjax", "warm_start"]
ARGS = ["--dataset", "synthetic", "--train-subset", "600", "--seeds", "2", "--max-epochs", "6",
        "--shrink", "0.5", "--model", "mlp", "--batch-size", "64", "--threshold", "0.999"]


def _run(out, extra=(), **kw):
    return subprocess.run([*COMMAND, *ARGS, *extra, "--out", str(out)], cwd=out.parent,
                          capture_output=True, text=True, timeout=600, **kw)


def _strip_times(results):
    """Accuracies, epochs and stop reasons: what must not change when a run is resumed."""
    keep = ("seed", "epochs", "stop_reason", "train_acc", "val_acc", "test_acc", "val_loss")
    return {arm: [{k: row[k] for k in keep} for row in r["seeds"]]
            for arm, r in results["results"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_main_job_outputs(uninterrupted):
    out, stdout = uninterrupted
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"random_init", "warm_start", "sp_0.5"}
    for arm in results["results"].values():
        assert len(arm["seeds"]) == 2
        for row in arm["seeds"]:
            assert {"val_acc", "test_acc", "train_acc", "epochs", "seconds"} <= set(row)
            assert 0.0 <= row["val_acc"] <= 1.0 and 1 <= row["epochs"] <= 6
    assert results["results"]["sp_0.5"]["arm"]["shrink"] == 0.5
    assert "val acc %" in stdout and "±" in stdout and "warm_start" in stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # The shrink-perturb arm trains its own round 1 from its transformed init (official).
    assert {json.loads(l)["stage"] for l in lines} == {"random_init", "round1", "round1_sp_0.5",
                                                       "round2_warm_start", "round2_sp_0.5"}
    assert results["results"]["sp_0.5"]["own_round1"] is True
    assert results["results"]["warm_start"]["own_round1"] is False
    assert (out / "two_phase.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["seeds"] == 2
    # Provenance: how the run was made (synthetic data has no data directory).
    prov = results["provenance"]
    assert prov["versions"]["jax"] and prov["date"] and prov["device"]
    assert prov["command"][:2] == ["wsjax warm_start", "--dataset"] and prov["data_dir"] is None
    assert results["schema_version"] == 2 and results["kind"] == "two_phase"


def test_killed_run_resumes_to_the_same_result(uninterrupted, tmp_path):
    full, _ = uninterrupted
    out = tmp_path / "killed"
    proc = subprocess.Popen([*COMMAND, *ARGS, "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill it while a later stage is training, after some checkpoints exist.
    while not (out / "checkpoints" / "round1").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    resumed = _run(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stdout
    expect = _strip_times(json.loads((full / "results.json").read_text()))
    got = _strip_times(json.loads((out / "results.json").read_text()))
    assert got == expect
    # The epochs retrained after the resume are logged once, as in the uninterrupted run.
    logged = lambda folder: sorted((r["stage"], r["epoch"]) for r in map(
        json.loads, (folder / "metrics.jsonl").read_text().splitlines()))
    assert logged(out) == logged(full)


def test_changed_flags_refuse_to_resume(uninterrupted):
    out, _ = uninterrupted
    proc = _run(out, ["--lr", "0.5"])
    assert proc.returncode != 0 and "different config" in proc.stderr


def test_missing_data_error_says_how_to_fix(tmp_path):
    proc = subprocess.run([*COMMAND, "--quick", "--data-dir", str(tmp_path), "--out",
                           str(tmp_path / "o")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "cifar10.npz" in proc.stderr and "WSJAX_DATA_DIR" in proc.stderr
