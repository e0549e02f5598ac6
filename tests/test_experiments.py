"""Every study script in --quick form on tiny synthetic data (in-process), with checks of what
each one's results must say."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from wsjax.budget import parameter_count
from wsjax.experiments.common import ModelConfig, build_model
from wsjax.experiments import (bn_stats, budget, checkpoint_age, claims, curves, grad_norms, online,
                               perturb_only, redraw, regularization, shrink_only, sp_every_step,
                               sp_grid, sweep, table1, transfer, warm_start)
from wsjax.warmstart import Arm

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once

TINY = ["--dataset", "synthetic:4:8", "--train-subset", "240", "--seeds", "2",
        "--max-epochs", "2", "--batch-size", "32"]
MLP = TINY + ["--model", "mlp", "--widths", "16"]
RESNET = TINY + ["--model", "resnet18_narrow", "--widths", "2,2,2,2"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One folder for the runs of this module, so the last test reads them all as the claims
    table does."""
    return tmp_path_factory.mktemp("results")


def _seeds_ok(rows, n=2):
    assert len(rows) == n
    for r in rows:
        assert 0.0 <= r.val_acc <= 1.0 and 1 <= r.epochs <= 2 and r.seconds > 0


def test_table1_cells_and_paper_numbers(results):
    out = table1.main(["--dataset", "synthetic:4:8", "--models", "logreg", "--optimizers",
                       "sgd", "adam", "--shrink", "0.6", "--out", str(results / "table1")]
                      + TINY[2:])
    assert [(r.model, r.optimizer) for r in out.rows] == [("logreg", "sgd"), ("logreg", "adam")]
    assert "| synthetic:4:8 | logreg | sgd |" in out.table
    assert table1.PAPER[("cifar10", "mlp", "adam")] == (39.4, 36.1)
    assert (results / "table1" / "synthetic:4:8_logreg_adam" / "two_phase.png").exists()


def test_curves_record_every_epoch(results):
    rec = curves.main(MLP + ["--optimizer", "adam", "--out", str(results / "curves")])
    res = rec.results
    # Fixed budget by default: the stop rule's threshold is off, so every stage runs 2 epochs.
    assert [len(res[a].history) for a in ("random_init", "warm_start")] == [2, 2]
    assert len(res["warm_start"].round1_history) == 2
    assert all(len(h["val_acc"]) == 2 for h in res["random_init"].history)
    assert (results / "curves" / "curves.png").exists()


def test_sp_grid_and_perturb_only_arms(results):
    rec = sp_grid.main(MLP + ["--shrink", "0.5", "1", "--noise", "0", "0.1",
                              "--out", str(results / "grid")])
    assert set(rec.results) == {"random_init", "sp_0.5_0", "sp_0.5_0.1", "sp_1_0", "sp_1_0.1"}
    assert (results / "grid" / "sp_grid.png").exists()
    rec = perturb_only.main(MLP + ["--noise", "0.01", "--out", str(results / "po")])
    assert rec.results["sp_1"].arm == Arm("sp_1", shrink=1.0, noise_scale=0.01)


def test_regularization_sweep_and_every_step_cells(results):
    rec = regularization.main(MLP + ["--kinds", "l2", "adversarial", "confidence",
                                     "--strengths", "0.01", "--out", str(results / "reg")])
    assert set(rec.cells) == {"none", "l2_0.01", "adversarial_0.01", "confidence_0.01"}
    assert rec.cells["adversarial_0.01"].config["objective"] == "adversarial"
    assert rec.cells["l2_0.01"].config["weight_decay"] == 0.01
    for cell in rec.cells.values():
        _seeds_ok(cell.results["warm_start"].seeds)
    rec = sweep.main(MLP + ["--lrs", "0.01", "--batch-sizes", "16", "64",
                            "--out", str(results / "sweep")])
    assert rec.cells["lr0.01_b16"].config["batch_size"] == 16
    assert (results / "sweep" / "sweep.png").exists()
    rec = sp_every_step.main(MLP + ["--step-shrink", "0.5", "--out", str(results / "step")])
    assert rec.cells["every_step"].config["sp_every_step"] == [0.5, 1e-4]


def test_checkpoint_age_and_grad_norms(results):
    rec = checkpoint_age.main(MLP + ["--every", "1", "--threshold", "1.01",
                                     "--out", str(results / "age")])
    assert sorted(r.round1_epoch for r in rec.results.values()
                  if r.round1_epoch is not None) == [1, 2]
    rec = grad_norms.main(MLP + ["--shrink", "0.5", "--out", str(results / "grad")])
    res = rec.results
    assert set(res) == {"warm_start", "sp_0.5"}
    for r in res.values():
        assert all(np.all(np.asarray(h["grad_old"]) > 0) for h in r.history)
        assert len(r.start["grad_new"]) == 2


def test_shrink_only_bias_free_relu_mlp_keeps_its_accuracy(results):
    rec = shrink_only.main(MLP + ["--shrinks", "0", "0.1", "0.5", "1",
                                  "--out", str(results / "shrink")])
    acc = np.asarray(rec.results["mlp_nobias"].val_acc)
    # Positively homogeneous: any shrink > 0 keeps every argmax (shrink 0 gives all-zero
    # logits, i.e. class 0 everywhere).
    np.testing.assert_array_equal(acc[1], acc[3])
    np.testing.assert_array_equal(acc[2], acc[3])
    assert len(rec.results["mlp"].val_acc) == 4


def test_arms_may_be_added_or_left_out_when_a_run_resumes(tmp_path):
    out = ["--out", str(tmp_path / "run")]
    first = warm_start.main(MLP + ["--shrink", "0.5"] + out)
    more = warm_start.main(MLP + ["--shrink", "0.5", "0.3"] + out)
    assert set(more.results) == {"random_init", "warm_start", "sp_0.5", "sp_0.3"}
    for arm in first.results:  # restored from its stages, not trained again
        assert more.results[arm].seeds == first.results[arm].seeds, arm
    trained = [json.loads(line)["stage"] for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert trained.count("round2_sp_0.5") == trained.count("round2_sp_0.3") >= 1
    fewer = warm_start.main(MLP + ["--shrink", "0.3", "--no-warm-start"] + out)
    assert set(fewer.results) == {"random_init", "sp_0.3"}
    with pytest.raises(ValueError, match="different config"):  # would change what sp_0.3 is
        warm_start.main(MLP + ["--shrink", "0.3", "--noise", "0.1"] + out)


def test_online_rounds_resume_and_active_selection(results):
    args = MLP + ["--chunk", "60", "--out", str(results / "order")]
    first = online.main(args + ["--rounds", "2"]).results
    # More rounds extend the same run: rounds 0-1 are restored, only round 2 trains.
    rec = online.main(args + ["--rounds", "3"])
    res = rec.results
    assert {a: rows[:2] for a, rows in res.items()} == first
    assert set(res) == {"random_init", "warm_start", "sp_0.6"}
    assert [r.n for r in res["warm_start"]] == [60, 120, 160]
    # Round 0 is shared by random init and the warm start; the shrink-perturb arm trains its
    # own from its transformed init, as the official code does.
    assert res["random_init"][0].seeds == res["warm_start"][0].seeds
    assert res["random_init"][0].seeds != res["sp_0.6"][0].seeds
    kept = sorted(p.name for p in (results / "order" / "checkpoints").iterdir())
    assert kept == ["random_init_r002", "sp_0.6_r002", "warm_start_r002"]
    again = online.main(args + ["--rounds", "3"])  # finished: restored, nothing retrains
    assert again.results == res
    rec = online.main(MLP + ["--chunk", "60", "--rounds", "3", "--select", "margin",
                             "--label-noise", "0.25", "--shrink", "--out",
                             str(results / "active")])
    book = json.loads((results / "active" / "online.json").read_text())
    for arm in ("random_init", "warm_start"):
        # A split per seed: each seed's model selects from its own pool.
        orders = book["order"][arm]
        assert len(orders) == 2 and orders[0] != orders[1]
        for order in orders:
            assert len(order) == 160 and len(set(order)) == 160


def test_transfer_with_a_new_head(tmp_path):
    rec = transfer.main(MLP[:1] + ["synthetic:6:8"] + MLP[2:] + [
        "--source", "synthetic:4:8", "--fractions", "0.5", "1", "--out", str(tmp_path)])
    assert rec.results.new_head is True
    assert set(rec.results.fractions) == {"0.5", "1"}
    for arm in ("random_init", "warm_start", "sp_0.3"):
        _seeds_ok(rec.results.fractions["1"].arms[arm])


def test_bn_stats_modes_and_mismatch_probe(results):
    rec = bn_stats.main(RESNET + ["--settings", "0.05:32", "--shrink", "0.6", "--out",
                                  str(results / "bn")])
    res = rec.cells["lr0.05_b32"].results
    assert {"warm_start_bn_keep", "warm_start_bn_reset", "warm_start_bn_recompute",
            "sp_0.6_bn_keep", "sp_0.6_bn_reset", "sp_0.6_bn_recompute"} <= set(res)
    for r in res.values():
        assert all(np.all(np.asarray(h["bn_mean_gap"]) >= 0) for h in r.history)
    # At the start of round 2, recomputed statistics match the data; kept and reset ones do not.
    start = {a: np.asarray(r.start["bn_mean_gap"]) for a, r in res.items()}
    assert np.all(start["warm_start_bn_recompute"] < 0.05)  # batch-partition noise only
    assert np.all(start["warm_start_bn_keep"] > 10 * start["warm_start_bn_recompute"])
    assert np.all(start["warm_start_bn_reset"] > 10 * start["warm_start_bn_recompute"])
    # Redraw from the saved files alone.
    drawn = redraw.main([str(results / "bn")])
    assert any(p.name == "bn_stats.png" for p in drawn)


def test_budget_study_trains_every_arm(tmp_path):
    out = budget.main(["--dataset", "synthetic:4:8", "--train-subset", "240", "--seeds", "1",
                       "--epochs", "1", "--batch-size", "32", "--families", "hashed:0.5",
                       "--model", "wrn10_1",
                       "--out", str(tmp_path / "budget"), "--progress", "off"])
    res = out.results
    student = res.students["hashed:0.5"]
    assert set(student.arms) == {"alone", "distilled", "warm_sp"} and not student.solved
    host = ModelConfig(model="wrn10_1", init="he_normal", conv="hashed:0.5")
    assert res.teacher_params == parameter_count(build_model(
        ModelConfig(model="wrn10_1", init="he_normal"), 4), (8, 8, 3))
    assert student.params == parameter_count(build_model(host, 4), (8, 8, 3))
    for rows in [res.teacher_seeds, *student.arms.values()]:
        assert len(rows) == 1 and all(r.epochs == 1 and 0 <= r.test_acc <= 1 for r in rows)
    assert len(student.curves["warm_sp"]) == 1 and (tmp_path / "budget" / "results.json").exists()


def test_bad_flags_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        warm_start.main(MLP[:-1] + ["16,x", "--out", str(tmp_path)])
    assert "--widths: '16,x' is not comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bn_stats.main(RESNET + ["--settings", "fast", "--out", str(tmp_path / "b")])
    assert "--settings: 'fast' is not lr:batch" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--seeds 0: must be an integer >= 1"):
        warm_start.main(MLP + ["--seeds", "0", "--out", str(tmp_path / "c")])


def test_claims_table_reads_every_run(results):
    """The claims table, made from this module's runs: each script that ran gives verdicts."""
    scripts = {json.loads(p.read_text())["script"] for p in results.glob("*/results.json")}
    if len(scripts) < 8:
        pytest.skip("needs the runs of the tests above (run the whole module)")
    rows = claims.claims(results)
    ran = [r for r in rows if not r["verdict"].startswith("not run")]
    # Synthetic runs show their effects but get no verdict.
    assert {r["verdict"] for r in ran} == {"no verdict (synthetic data)"}
    assert all(r["n"] >= 1 and "±" in r["effect"] for r in ran)
    evidence = " ".join(r["evidence"] for r in ran)
    for name in ("Table 1", "curves", "grid", "po", "reg", "sweep", "step", "age", "grad",
                 "shrink", "order", "active", "bn"):
        assert name in evidence, name
    # Table 1's cells report their shrink-perturb arms.
    assert any(r["evidence"].startswith("Table 1") and "(sp_0.6 - warm start)" in r["claim"]
               for r in ran)
    # The BN cell's shrink-perturb arms, each against the warm arm of its own BN mode.
    assert any("(sp_0.6_bn_reset - warm_start_bn_reset)" in r["claim"] for r in ran)
    # Transfer ran elsewhere: its row says what to run.
    assert [r["verdict"] for r in rows if "transfer" in r["claim"]] == [
        "not run: " + claims.COMMANDS["transfer"]]



def test_verdicts_from_student_t_intervals():
    """Hand-made effects: 95% t intervals (4.30 SE at n = 3, 2.78 at n = 5), each claim tested
    in its own direction."""
    v = claims.verdict
    assert v((1.0, 0.3), 5) == "confirmed"             # 1.0 - 2.78 * 0.3 = 0.17 > 0
    assert v((1.0, 0.3), 3) == "inconclusive"          # 1.0 - 4.30 * 0.3 < 0: 2 SE said yes
    assert v((-1.0, 0.3), 5) == "refuted"
    assert v((-1.0, 0.3), 5, "less") == "confirmed"
    # Closing a gap is one-sided: doing better than random init supports it.
    assert v((-0.57, 0.24), 3, "non_inferior", 0.5) == "confirmed (< 0.5)"
    assert v((-3.0, 0.5), 5, "non_inferior", 0.5) == "confirmed (< 0.5)"
    assert v((2.0, 0.3), 5, "non_inferior", 0.5) == "refuted (> 0.5)"
    assert v((0.4, 0.3), 5, "non_inferior", 0.5) == "inconclusive"
    # No effect: the whole interval within the tolerance, or wholly outside it.
    assert v((0.0, 0.01), 5, "equivalent", 0.1) == "confirmed (within ±0.1)"
    assert v((-3.0, 0.5), 5, "equivalent", 1.0) == "refuted (beyond ±1)"
    assert v((0.5, 0.5), 5, "equivalent", 1.0) == "inconclusive"
    assert v((1.0, 0.0), 1) == "no verdict (1 seed)"
    assert v((5.0, 0.1), 5, scale="quick run") == "no verdict (quick run)"
    lo, hi = claims.interval((0.0, 1.0), 5)
    assert hi == pytest.approx(2.776, abs=1e-3) and lo == -hi


def test_protocol_notes_name_each_deviation():
    """The evidence column says where a run departs from the official protocol: a subset,
    the plateau fallback, one split for all seeds, S&P arms sharing round 1 (per run, so a
    re-run Table 1 cell does not inherit an old cell's notes)."""
    official = SimpleNamespace(script="warm_start", config={
        "split_seed": 0, "fixed_split": False, "shrink": [0.6], "shared_round1": False})
    assert claims.protocol_notes(official) == ""
    old = SimpleNamespace(script="warm_start", config={
        "split_seed": 0, "train_subset": 15000, "plateau_window": 10, "plateau_std": 0.002,
        "plateau_min_epochs": 20, "shrink": [0.6]})
    assert claims.protocol_notes(old) == (
        "15,000-image subset; plateau fallback: 10-epoch train acc std < 0.002, from epoch 20; "
        "one split for all seeds; S&P arms share round 1")
    assert claims.protocol_notes(official, old, old).count("subset") == 1
    # Online: a run saved before shared_round0 existed shared a plain round 0.
    online_old = SimpleNamespace(script="online", config={
        "script": "online", "split_seed": 0, "fixed_split": False, "shrink": [0.6]})
    assert claims.protocol_notes(online_old) == "S&P arms share round 0"
    online_new = SimpleNamespace(script="online", config={
        "script": "online", "split_seed": 0, "fixed_split": False, "shrink": [0.6],
        "shared_round0": False})
    assert claims.protocol_notes(online_new) == ""
    reduced = SimpleNamespace(script="bn_stats", config={
        "split_seed": 0, "fixed_split": False, "widths": [8, 16, 32, 64], "max_epochs": 40})
    assert claims.protocol_notes(reduced) == "widths [8, 16, 32, 64]; 40-epoch cap"
    toolkit = SimpleNamespace(script="warm_start", config={
        "split_seed": 0, "fixed_split": False, "init": "he_normal", "activation": "tanh",
        "dropout": 0.1, "dropblock": 0.0, "augment": ["crop", "flip"], "label_smoothing": 0.1})
    assert claims.protocol_notes(toolkit) == (
        "he_normal init; tanh activation; dropout 0.1; augmented (crop, flip); "
        "label smoothing 0.1")
