"""The results schema: committed results load (migrated from version 1), records round-trip
through JSON, and malformed data is named."""

from pathlib import Path

import pytest

from wsjax.study import records
from wsjax.study.records import Run, SeedRow, StageResult
from wsjax.warmstart import Arm

COMMITTED = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_every_committed_result_loads_and_round_trips():
    paths = sorted(COMMITTED.rglob("results.json"))
    assert len(paths) >= 14
    for path in paths:
        record = records.load(path)
        assert record.schema_version == records.SCHEMA_VERSION
        again = records.from_json(records.to_json(record), str(path))
        assert again == record, path


def _row(seed, **kw):
    return {"seed": seed, "epochs": 3, "seconds": 1.5, "stop_reason": "threshold",
            "train_acc": 0.99, "val_acc": 0.4, **kw}


def test_version_1_two_phase_record_is_migrated():
    v1 = {"script": "experiments.warm_start", "title": "t", "device": "1 x cpu",
          "wall_seconds": 3.0, "config": {"widths": "8,16", "script": "experiments.warm_start"},
          "results": {"random_init": {"seeds": [_row(0)]},
                      "sp_0.6": {"seeds": [_row(0, total_epochs=6)], "round1": [_row(0)],
                                 "arm": {"name": "sp_0.6", "shrink": 0.6, "perturb": 0.01,
                                         "noise": "init", "bn": "reset"}}}}
    run = records.from_json(v1)
    assert isinstance(run, Run) and run.kind == "two_phase" and run.script == "warm_start"
    assert run.config == {"widths": [8, 16], "script": "warm_start"}
    sp = run.results["sp_0.6"]
    assert sp.arm == Arm("sp_0.6", shrink=0.6, noise_scale=0.01)
    assert sp.seeds[0] == SeedRow(0, 3, 1.5, "threshold", 0.99, val_acc=0.4, total_epochs=6)
    assert run.results["random_init"].arm is None


def test_malformed_records_are_named(tmp_path):
    good = Run(script="warm_start", kind="two_phase", config={},
               results={"random_init": StageResult(seeds=[SeedRow(0, 1, 1.0, None, 0.5)])})
    data = records.to_json(good)
    assert "arm" not in data["results"]["random_init"]  # None fields stay out of the file
    data["results"]["random_init"]["seeds"][0]["accuracy"] = 1.0
    with pytest.raises(ValueError, match=r"SeedRow has no field \['accuracy'\]"):
        records.from_json(data)
    with pytest.raises(ValueError, match="kind='table2' is unknown"):
        Run(script="x", kind="table2", config={}, results={})
    with pytest.raises(ValueError, match="schema version 3"):
        records.from_json({**records.to_json(good), "schema_version": 3})
    path = records.save(good, tmp_path)
    assert path == tmp_path / "results.json" and records.load(tmp_path) == good


def test_provenance_names_versions_commit_and_data():
    prov = records.provenance("/data")
    assert prov.versions["jax"] != "-" and prov.data_dir == "/data"
    assert prov.date.endswith("+00:00") and prov.device
    # The checkout's commit when the code lies in one (CI checks out main).
    commit = records.git_commit()
    assert commit is None or len(commit.rstrip("+")) == 40
