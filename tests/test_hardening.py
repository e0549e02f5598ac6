"""Bad input, damaged files and runs that go wrong: each gets a one-line error that names the
flag or file and the fix, nothing on disk is lost, and a diverged seed is reported as such."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax.checkpoint import CheckpointError, Checkpointer, load_warm_start
from wsjax.data import Dataset, load_dataset, synthetic_dataset
from wsjax.engine import Engine
from wsjax.experiments import cli, claims, redraw
from wsjax.models import create_model, init_variables
from wsjax.optim import make_optimizer
from wsjax.study.runlog import RunDir, RunDirError, jsonable
from wsjax.study.stages import Stages
from wsjax.train import DivergenceGuard, StopRule, replica_keys
from wsjax.warmstart import shrink_perturb

TINY = ["--dataset", "synthetic:4:8", "--train-subset", "240", "--seeds", "2", "--max-epochs",
        "2", "--batch-size", "32", "--model", "mlp", "--widths", "16", "--progress", "off"]


def run_cli(argv):
    """``wsjax <argv>`` in this process: ``(exit code, message)``."""
    try:
        cli.main(argv)
    except SystemExit as e:
        code = e.code
        return (1, code) if isinstance(code, str) else (code, "")
    return 0, ""


def strict_json(path):
    """Parses ``path`` as standard JSON (NaN and Infinity are errors)."""
    def refuse(name):
        raise ValueError(f"{name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


# --- bad flags: one line, naming the flag, nothing written ---------------------------------

BAD_FLAGS = [
    (["--lr", "nan"], "--lr nan: must be a positive finite number"),
    (["--lr", "inf"], "--lr inf: must be a positive finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan: must be a finite number >= 0"),
    (["--train-subset", "0"], "--train-subset 0: must be an integer >= 1"),
    (["--train-subset", "-5"], "--train-subset -5: must be an integer >= 1"),
    (["--first-fraction", "0"], "--first-fraction 0.0: must be a fraction strictly between"),
    (["--first-fraction", "1.5"], "--first-fraction 1.5: must be a fraction strictly between"),
    (["--threshold", "nan"], "--threshold nan: must be a positive finite number"),
    (["--seed-offset", "-1"], "--seed-offset -1: must be an integer >= 0"),
    (["--split-seed", "-1"], "--split-seed -1: must be an integer >= 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0: must be an integer >= 1"),
    (["--widths", "0"], "--widths 0: must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
    (["--batch-size", "100000"], "--batch-size 100000 is larger than the 160 fitted images"),
    (["--shrink", "inf"], "--shrink inf: must be a number in [0, 1]"),
    (["--noise", "nan"], "--noise nan: must be a finite number >= 0"),
    (["--plateau-window", "1"], "--plateau-window 1: must be 0 (off) or an integer >= 2"),
    (["--dataset", "synthetic:10:0"], "write synthetic[:classes[:size]]"),
    (["--train-subset", "1"], "use at least 3"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_a_bad_flag_is_one_line_naming_it_and_writes_nothing(tmp_path, flags, message):
    out = tmp_path / "run"
    code, text = run_cli(["warm_start", *TINY, "--out", str(out), *flags])
    assert code == 1 and message in text and "\n" not in text, text
    assert text.startswith("error: ")
    assert not out.exists()


def test_online_needs_at_least_one_round(tmp_path):
    code, text = run_cli(["online", *TINY, "--rounds", "0", "--out", str(tmp_path / "o")])
    assert code == 1 and "--rounds 0: must be an integer >= 1" in text


@pytest.mark.parametrize("where", ["file", "below_file", "read_only"])
def test_an_unusable_out_is_named(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = {"file": blocker, "below_file": blocker / "run", "read_only": tmp_path / "ro" / "run"}
    if where == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root may write to read-only folders")
        (tmp_path / "ro").mkdir(mode=0o500)
    code, text = run_cli(["warm_start", *TINY, "--out", str(out[where])])
    assert code == 1 and "choose" in text and "\n" not in text, text
    assert blocker.read_text() == "not a folder"


# --- library constructors --------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: make_optimizer("adam", math.inf), "learning_rate=inf"),
    (lambda: make_optimizer("sgd", 0.1, weight_decay=math.nan), "weight_decay=nan"),
    (lambda: StopRule(threshold=math.nan), "threshold=nan"),
    (lambda: StopRule(max_epochs=0), "max_epochs=0"),
    (lambda: replica_keys([-1]), "seeds=[-1]"),
    (lambda: DivergenceGuard(loss_factor=-1.0), "loss_factor=-1.0"),
    (lambda: Engine(create_model("mlp", 4), optax.sgd(0.1), batch_size=0), "batch_size=0"),
    (lambda: shrink_perturb({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, 0.5, math.inf),
     "perturb=inf"),
])
def test_constructors_refuse_nonsense(make, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_a_shrink_given_as_text_is_refused():
    with pytest.raises(TypeError, match="shrink='0.5' must be a number, not str"):
        shrink_perturb({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, "0.5", 0.1)


# --- data files --------------------------------------------------------------------------------

def _write(folder, **arrays):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "cifar10.npz", **arrays)
    return folder


def _arrays(n=30, size=8):
    ds = synthetic_dataset(n, 10, image_shape=(size, size, 3))
    return dict(x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)


def test_a_mistyped_data_dir_is_named_and_not_created(tmp_path, monkeypatch):
    from wsjax import data

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # no TFDS, and no network:
    monkeypatch.setitem(data.ARCHIVES, "cifar10", ((tmp_path / "none.tar.gz").as_uri(),
                                                  *data.ARCHIVES["cifar10"][1:]))
    missing = tmp_path / "dataa"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        load_dataset("cifar10", missing)
    assert not missing.exists()


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "pickled"])
def test_a_damaged_npz_names_the_file(tmp_path, damage):
    folder = _write(tmp_path / "d", **_arrays())
    path = folder / "cifar10.npz"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        with open(path, "wb") as f:  # a pickled object array where arrays belong
            np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=f"{path} is not a readable .npz archive"):
        load_dataset("cifar10", folder)


def test_labels_as_a_column_are_accepted_and_other_shapes_refused(tmp_path):
    arrays = _arrays()
    ds = load_dataset("cifar10", _write(tmp_path / "col", **{
        **arrays, "y_train": arrays["y_train"][:, None], "y_test": arrays["y_test"][:, None]}))
    assert ds.y_train.shape == (30,)
    with pytest.raises(ValueError, match=r"one label per image, shape \(N,\)"):
        Dataset("x", arrays["x_train"], np.zeros((30, 2), np.int32), arrays["x_test"],
                arrays["y_test"], 10)


def test_test_images_of_another_size_are_refused_before_training(tmp_path):
    arrays = {**_arrays(), "x_test": _arrays(size=16)["x_test"]}
    with pytest.raises(ValueError, match="test images are .16, 16, 3. but training images "
                                         ".8, 8, 3."):
        load_dataset("cifar10", _write(tmp_path / "d", **arrays))


# --- divergence --------------------------------------------------------------------------------

def _lr_states(engine, keys, lrs):
    """Fresh states whose optimizer (``inject_hyperparams``) holds one lr per replica."""
    states = engine.init_states(keys)
    hyper = {"learning_rate": jnp.asarray(lrs, jnp.float32)}
    return states.replace(opt_state=states.opt_state._replace(hyperparams=hyper))


def test_one_diverging_replica_stops_and_the_others_finish_unchanged(tiny):
    model = create_model("mlp", tiny.num_classes, widths=(16,))
    engine = Engine(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.01),
                    batch_size=32, input_shape=tiny.image_shape)
    keys = replica_keys([0, 1, 2])
    x, y, idx = jnp.asarray(tiny.x_train), jnp.asarray(tiny.y_train), np.arange(300)
    stop = StopRule(threshold=1.01, max_epochs=3)
    calm, calm_progress = engine.fit(_lr_states(engine, keys, [0.05] * 3), keys, x, y, idx, stop)
    wild, progress = engine.fit(_lr_states(engine, keys, [0.05, 1e6, 0.05]), keys, x, y, idx,
                                stop)
    assert progress.stop_reason == ["max_epochs", "diverged", "max_epochs"]
    assert progress.epochs == [3, 1, 3] and progress.diverged_at[1][0] == 1
    assert progress.diverged_at[0] is None and progress.diverged_at[2] is None
    # The diverged replica keeps its last finite state; the others are bit for bit the same.
    for calm_leaf, wild_leaf in zip(jax.tree.leaves(calm.params), jax.tree.leaves(wild.params)):
        assert np.isfinite(np.asarray(wild_leaf[1])).all()
        for r in (0, 2):
            np.testing.assert_array_equal(calm_leaf[r], wild_leaf[r])
    for calm_h, wild_h in zip(calm_progress.history, progress.history):
        assert [calm_h["train_acc"][r] for r in (0, 2)] == [wild_h["train_acc"][r] for r in (0, 2)]
        assert all(v is None or math.isfinite(v) for v in wild_h["train_loss"])


def test_a_non_finite_lr_stops_at_the_first_step_without_nan(tiny):
    model = create_model("mlp", tiny.num_classes, widths=(16,))
    engine = Engine(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.01),
                    batch_size=32, input_shape=tiny.image_shape)
    keys = replica_keys([0])
    start = _lr_states(engine, keys, [math.inf])
    first = jax.tree.map(np.array, start.params)
    x, y = jnp.asarray(tiny.x_train), jnp.asarray(tiny.y_train)
    states, progress = engine.fit(start, keys, x, y, np.arange(300), StopRule())
    assert progress.stop_reason == ["diverged"] and progress.diverged_at == [[1, 1]]
    assert progress.history[0]["train_acc"] == [None]  # no finite step: no value, not NaN
    chex_equal = jax.tree.map(np.array_equal, first, jax.tree.map(np.asarray, states.params))
    assert all(jax.tree.leaves(chex_equal))  # the first step was never applied


def test_a_diverged_run_exits_3_naming_the_seeds_with_valid_json(tmp_path, capsys):
    out = tmp_path / "run"
    code, _ = run_cli(["warm_start", *TINY, "--optimizer", "sgd", "--lr", "1e3", "--out",
                       str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "diverged" in err and "random_init: seed 0 diverged at epoch 1" in err
    assert "lower --lr" in err
    for name in ("results.json", "metrics.jsonl"):
        text = (out / name).read_text()
        assert "NaN" not in text and "Infinity" not in text
    data = strict_json(out / "results.json")
    rows = data["results"]["random_init"]["seeds"]
    assert {r["stop_reason"] for r in rows} == {"diverged"} and rows[0]["diverged_at"][0] == 1


def test_json_never_holds_nan():
    assert jsonable({"a": [math.nan, math.inf, 1.5], "b": np.float32("nan")}) == {
        "a": [None, None, 1.5], "b": None}


# --- the run directory -------------------------------------------------------------------------

def test_a_changed_data_source_is_refused(tmp_path):
    first = _write(tmp_path / "a", **_arrays(60))
    changed = _arrays(60)
    changed["x_train"][0, 0, 0, 0] ^= 1  # one bit of one pixel
    second = _write(tmp_path / "b", **changed)
    out = tmp_path / "run"
    argv = ["warm_start", "--dataset", "cifar10", "--seeds", "1", "--max-epochs", "1",
            "--batch-size", "8", "--widths", "8", "--progress", "off", "--shrink",
            "--out", str(out)]
    assert run_cli([*argv, "--data-dir", str(first)]) == (0, "")
    before = (out / "results.json").read_text()
    code, text = run_cli([*argv, "--data-dir", str(second)])
    assert code == 1 and "was run on other data" in text and "WSJAX_DATA_DIR" in text, text
    assert (out / "results.json").read_text() == before
    assert json.loads((out / "config.json").read_text())["data"]["sha256"]
    assert run_cli([*argv, "--data-dir", str(first)]) == (0, "")  # the same data resumes


def test_a_run_that_never_started_takes_a_corrected_config(tmp_path):
    RunDir(tmp_path).write_config({"lr": 0.1})
    RunDir(tmp_path).write_config({"lr": 0.2})  # nothing trained yet: accepted
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        RunDir(tmp_path).write_config({"lr": 0.3})
    # A run whose training went to a sub-run's folder (shrink_only's models) has started too.
    RunDir(tmp_path / "b").write_config({"lr": 0.1})
    (tmp_path / "b" / "mlp" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        RunDir(tmp_path / "b").write_config({"lr": 0.3})


def test_wall_time_adds_up_over_the_processes_of_a_run(tmp_path):
    (tmp_path / "wall.json").write_text('{"seconds": 100.0}')  # an earlier process's time
    run = RunDir(tmp_path)
    assert run.earlier_seconds == 100.0 and run.wall_seconds >= 100.0
    run.close()  # a clean stop hands the total on
    left = json.loads((tmp_path / "wall.json").read_text())["seconds"]
    assert left >= 100.0 and RunDir(tmp_path).earlier_seconds == left
    # The count alone does not make a run started: a corrected config is still accepted.
    RunDir(tmp_path).write_config({"lr": 0.1})
    RunDir(tmp_path).write_config({"lr": 0.2})
    # A run from before the count (no file) or with a damaged one starts from zero.
    assert RunDir(tmp_path / "new").earlier_seconds == 0.0
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "wall.json").write_text("{")
    assert RunDir(tmp_path / "damaged").earlier_seconds == 0.0


def test_diverged_seeds_are_left_out_of_the_means():
    from wsjax.study.records import SeedRow
    from wsjax.study.stats import column, mean_se, paired_mean_se

    def row(seed, acc, reason="threshold"):
        return SeedRow(seed=seed, epochs=3, seconds=1.0, stop_reason=reason, train_acc=None,
                       val_acc=acc)
    a = [row(0, 0.5), row(1, 0.1, "diverged"), row(2, 0.7)]
    b = [row(0, 0.4), row(1, 0.6), row(2, 0.6, "diverged")]
    assert column(a, "val_acc") == [0.5, 0.7] and column(a, "train_acc") == []
    assert paired_mean_se(a, b) == pytest.approx((10.0, 0.0))  # seed 0 only
    assert all(math.isnan(v) for v in mean_se([]))


def test_a_second_process_is_refused_and_a_dead_ones_lock_is_not(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from wsjax.study.runlog import RunDir; "
         f"RunDir({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"is in use by pid {holder.pid}"):
            RunDir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    RunDir(tmp_path).close()  # the killed holder's lock went with it
    RunDir(tmp_path)
    RunDir(tmp_path)  # this process again (a notebook re-running a cell) takes it over


def test_metrics_rewind_drops_the_epochs_a_resume_repeats(tmp_path):
    run = RunDir(tmp_path)
    for stage in ("a", "b"):
        for epoch in range(1, 6):
            run.metrics.write(stage=stage, epoch=epoch, train_acc=[0.5])
    with open(run.metrics.path, "a") as f:
        f.write('{"stage": "a", "epo')  # a line cut short by a crash
    assert run.metrics.rewind("a", 3) == 3
    rows = [json.loads(line) for line in run.metrics.path.read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3), ("b", 4), ("b", 5)]


def test_redraw_and_claims_skip_a_damaged_results_file(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"script": "warm_st')
    assert redraw.main([str(tmp_path)]) == []
    assert claims._records(tmp_path) == []
    err = capsys.readouterr().err
    assert err.count(f"skipping {tmp_path / 'broken' / 'results.json'}") == 2
    code, text = run_cli(["redraw", str(tmp_path / "nope")])
    assert code == 1 and "no folder" in text


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_states():
    model = create_model("mlp", 4, widths=(8,))
    engine = Engine(model, make_optimizer("adam", 1e-3), input_shape=(8, 8, 3))
    return model, engine, engine.init_states(replica_keys([0, 1]))


def _data_file(step_dir, item):
    files = [p for p in (step_dir / item).rglob("*") if p.is_file() and p.stat().st_size > 16
             and "metadata" not in p.name and not p.name.startswith("_")]
    return max(files, key=lambda p: p.stat().st_size)


def _damage(step_dir, how):
    if how == "overwrite 8 bytes":
        path = _data_file(step_dir, "params")
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path = _data_file(step_dir, "params")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif how == "no params":
        import shutil
        shutil.rmtree(step_dir / "params")
    elif how == "no meta":
        import shutil
        shutil.rmtree(step_dir / "meta")


@pytest.mark.parametrize("how", ["overwrite 8 bytes", "truncate", "no params", "no meta"])
def test_a_damaged_latest_step_falls_back_to_the_previous(tmp_path, mlp_states, how):
    _, _, states = mlp_states
    later = states.replace(step=states.step + 7)
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        ck.save(1, states, {"epoch": 1})
        ck.save(2, later, {"epoch": 2})
    _damage(tmp_path / "2", how)
    with Checkpointer(tmp_path) as ck, pytest.warns(UserWarning, match="step 2"):
        back, meta = ck.restore(states)
    assert meta == {"epoch": 1}
    chex_equal = jax.tree.map(np.array_equal, jax.tree.map(np.asarray, back.params),
                              jax.tree.map(np.asarray, states.params))
    assert all(jax.tree.leaves(chex_equal))
    _damage(tmp_path / "1", how)
    with Checkpointer(tmp_path) as ck, pytest.warns(UserWarning), \
            pytest.raises(CheckpointError, match="no intact checkpoint .* delete that folder to"):
        ck.restore(states)


def test_a_stage_resumes_past_a_damaged_step_to_the_same_result(tmp_path, tiny, mlp_states):
    from wsjax.study.stages import StudyData

    model, _, _ = mlp_states
    engine = Engine(model, make_optimizer("adam", 1e-3), batch_size=32,
                    input_shape=tiny.image_shape)
    x, y = jnp.asarray(tiny.x_train), jnp.asarray(tiny.y_train)
    data = StudyData("tiny", x, y, np.arange(200), np.arange(200, 300),
                     {"val": (x, y, np.arange(200, 300))}, 4)

    def stages(folder):
        return Stages(engine, RunDir(folder), data, seeds=[0, 1],
                      stop=StopRule(threshold=1.01, max_epochs=4))

    whole = stages(tmp_path / "whole")
    expect = whole.train("s", whole.fresh("s"), data.fit_idx)

    class Crash(Exception):
        pass

    def crash_at_3(states, progress):
        if progress.epoch == 3:
            raise Crash
    crashed = stages(tmp_path / "crashed")
    with pytest.raises(Crash):
        crashed.train("s", crashed.fresh("s"), data.fit_idx, on_epoch=crash_at_3)
    _damage(tmp_path / "crashed" / "checkpoints" / "s" / "3", "overwrite 8 bytes")
    resumed = stages(tmp_path / "crashed")
    with pytest.warns(UserWarning, match="step 3"):
        got = resumed.train("s", resumed.fresh("s"), data.fit_idx)
    assert [r.val_acc for r in got.result.seeds] == [r.val_acc for r in expect.result.seeds]
    assert got.progress.history == [
        {**h, "seconds": g["seconds"]} for h, g in zip(expect.progress.history,
                                                      got.progress.history)]
    lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]  # none repeated
    assert sorted(p.name for p in (tmp_path / "crashed" / "checkpoints" / "s").iterdir()
                  if p.name.isdigit()) == ["4"]  # a finished stage keeps its last step


def test_load_warm_start_reads_only_and_explains_stacked_seeds(tmp_path, mlp_states):
    model, _, states = mlp_states
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_warm_start(tmp_path / "missing", {})
    assert not (tmp_path / "missing").exists()
    with Checkpointer(tmp_path / "study") as ck:
        ck.save(1, states)
    target = init_variables(model, jax.random.key(9), (8, 8, 3))
    with pytest.raises(ValueError, match="holds 2 replicas .* pass replica=r"):
        load_warm_start(tmp_path / "study", target)
    one = load_warm_start(tmp_path / "study", target, replica=1)
    np.testing.assert_array_equal(one["params"]["head"]["kernel"],
                                  states.params["head"]["kernel"][1])
    # A damaged newest step: the warm start comes from the step before, with a warning.
    with Checkpointer(tmp_path / "study") as ck:
        ck.save(2, states.replace(params=jax.tree.map(lambda a: a + 1, states.params)))
    _damage(tmp_path / "study" / "2", "truncate")
    with pytest.warns(UserWarning, match="step 2"):
        again = load_warm_start(tmp_path / "study", target, replica=1)
    np.testing.assert_array_equal(again["params"]["head"]["kernel"],
                                  states.params["head"]["kernel"][1])


# --- Ctrl-C ------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_is_one_line(tmp_path, signum):
    """Ctrl-C, and SIGTERM (how a background run, which ignores Ctrl-C, is stopped), end a run
    the same clean way: one line, exit 130, checkpoints finished, resumable."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "wsjax", "warm_start", *TINY[:-6], "--max-epochs", "300",
            "--threshold", "2", "--model", "mlp", "--widths", "16", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted; resume with the same command"
