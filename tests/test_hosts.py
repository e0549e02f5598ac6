"""Runs over several processes (JAX's multi-controller runtime), tested as processes on this
machine: 2 processes x 2 fake CPU devices against 1 process x 4, over 127.0.0.1 only, every
process bounded in time (``TIMEOUT``)."""

import contextlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from harness import REPO, run_python
from wsjax import hosts
from wsjax.data import synthetic_dataset

TIMEOUT = 240  # seconds any launched process may run
HEARTBEAT = 5  # --heartbeat-timeout of the launched runs

# The main job's quick mode, smaller: 4 seeds (so the replica layout splits them over the 4
# devices), 598 training images of 8x8 (a dataset split over 4 devices is padded to 600), and
# every stage a fixed 3 epochs (no threshold stop), so a run lasts long enough to be killed
# in the middle.
EPOCHS = 3
QUICK = ["warm_start", "--quick", "--dataset", "synthetic:10:8", "--train-subset", "598",
         "--seeds", "4", "--max-epochs", str(EPOCHS), "--threshold", "2",
         "--heartbeat-timeout", str(HEARTBEAT)]


def launch(args, *, processes: int, devices: int, logs) -> list[subprocess.Popen]:
    """``hosts.launch_local`` from the checkout."""
    return hosts.launch_local(args, processes=processes, devices=devices, logs=logs,
                              env={"PYTHONPATH": str(REPO)})


@contextlib.contextmanager
def reaped(procs):
    """``procs``, each killed on the way out if it still runs (a failed test leaves none)."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def wait_all(procs, logs) -> None:
    """Waits for every process (``TIMEOUT`` each; killed past it) and fails with their
    output unless all ended well."""
    codes = hosts.wait_local(procs, TIMEOUT)
    if any(codes):
        text = "\n".join(open(f"{logs}.{k}.txt").read()[-3000:] for k in range(len(procs)))
        raise AssertionError(f"exit codes {codes}:\n{text}")


# The dataset's layout over several processes in each: sharded (the default there), and
# replicated on every device.
DATA_LAYOUT = {"batch": "auto", "replica": "replicated"}


def run_main(folder, *, processes: int, devices: int, layout: str):
    """The quick main job in ``folder`` on ``processes`` x ``devices``; its results. A
    checkpoint at each stage's end only (how often changes no number), for time."""
    logs = f"{folder}_out"
    wait_all(launch([*QUICK, "--out", str(folder), "--parallel", layout,
                     "--data-layout", DATA_LAYOUT[layout], "--checkpoint-every", str(EPOCHS)],
                    processes=processes, devices=devices, logs=logs), logs)
    return json.loads((folder / "results.json").read_text())


def seeds_of(results) -> dict:
    """``{(arm, seed): row}`` of a results.json."""
    return {(arm, row["seed"]): row for arm, r in results["results"].items()
            for row in r["seeds"]}


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """The quick main job on 2 processes x 2 devices, in each layout (run once)."""
    root = tmp_path_factory.mktemp("hosts")
    return {layout: (root / f"two_{layout}", run_main(root / f"two_{layout}", processes=2,
                                                       devices=2, layout=layout))
            for layout in ("replica", "batch")}


@pytest.mark.parametrize("layout", ["replica", "batch"])
def test_two_processes_give_the_results_of_one(tmp_path, two_process_runs, layout):
    folder, two = two_process_runs[layout]
    one = run_main(tmp_path / "one", processes=1, devices=4, layout=layout)
    a, b = seeds_of(one), seeds_of(two)
    assert a.keys() == b.keys() and len(a) == 16  # 4 arms x 4 seeds
    for key in a:
        for field in ("epochs", "stop_reason", "train_acc", "val_acc", "test_acc"):
            assert a[key][field] == b[key][field], (key, field)
        for field in ("val_loss", "test_loss"):
            # Equal up to float32 rounding, grown over the epochs: in the batch layout the
            # gradient and BatchNorm sums cross devices, and between processes Gloo adds the
            # partial sums in another order than one process does; in both layouts the two
            # programs differ (a sharded dataset, another CPU thread pool per process), so XLA
            # may round a matrix product or a sum differently. Seen: up to 1.2e-5 relative
            # (jax 0.7, replica layout), 2.5e-7 (jax 0.10).
            assert a[key][field] == pytest.approx(b[key][field], rel=1e-4), (key, field)
    # Process 0 alone wrote the shared files; each process logged its own progress.
    logs = sorted(p.name for p in (folder / "logs").iterdir())
    assert logs == ["process_0.log", "process_1.log"]
    for log in logs:
        text = (folder / "logs" / log).read_text()
        assert f"[round2_sp_0.3] epoch   {EPOCHS}" in text and f"process {log[8]} of 2" in text
        assert ("data sharded" in text) == (DATA_LAYOUT[layout] == "auto")
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 7 * EPOCHS  # 7 stages


CHECKPOINT = r'''
import sys
from wsjax import hosts
mode, port, processes, index, *folders = sys.argv[1:]
if int(processes) > 1:
    hosts.initialize(f"127.0.0.1:{port}", int(processes), int(index))
import jax
from wsjax.checkpoint import Checkpointer, checksum
from wsjax.engine import Engine
from wsjax.models import create_model
from wsjax.optim import make_optimizer
from wsjax.parallel import DataParallel, make_mesh
from wsjax.train import replica_keys

parallel = DataParallel(make_mesh(), "replica") if jax.device_count() > 1 else None
engine = Engine(create_model("mlp", 10, widths=(16,)), make_optimizer("adam", 1e-3),
                input_shape=(4, 4, 3), parallel=parallel)


def where(states):
    leaf = jax.tree.leaves(states.params)[0]
    return f"{len(leaf.sharding.device_set)} devices, addressable here {leaf.is_fully_addressable}"


if mode == "restore":  # into a template of other seeds: only a real read gives the checksum
    template = engine.init_states(replica_keys([7, 8, 9, 10]))
    with Checkpointer(folders.pop(0), create=False) as ckpt:
        states, meta = ckpt.restore(template)
    print("restored", checksum(states), where(states), "saved on", meta["saved_on"])
if folders:  # save seeds 0-3, a step on
    states = engine.init_states(replica_keys([0, 1, 2, 3]))
    states = states.replace(step=states.step + 5)
    with Checkpointer(folders[0]) as ckpt:
        ckpt.save(3, states, {"saved_on": hosts.layout().describe()})
    print("saved", checksum(states), where(states))
'''


def _checkpoint(mode, processes, devices, logs, *folders) -> list[str]:
    port = str(hosts.free_port())
    procs = [subprocess.Popen([sys.executable, "-c", CHECKPOINT, mode, port, str(processes),
                               str(k), *map(str, folders)], cwd=REPO,
                              env=hosts.cpu_env(devices),
                              stdout=open(f"{logs}.{k}.txt", "w"), stderr=subprocess.STDOUT)
             for k in range(processes)]
    wait_all(procs, logs)
    return [open(f"{logs}.{k}.txt").read() for k in range(processes)]


def _line(texts, start):
    return [next(line for line in text.splitlines() if line.startswith(start))
            for text in texts]


def test_a_checkpoint_restores_on_another_process_and_device_count(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    # 2 processes x 2 devices save (each process holds, and writes, 2 of the 4 seeds);
    # 1 process x 1 device restores that and saves again; 2 x 2 restore the latter.
    saved_by_two = _line(_checkpoint("save", 2, 2, tmp_path / "a", two), "saved")
    one_out = _checkpoint("restore", 1, 1, tmp_path / "b", two, one)
    restored_by_one, saved_by_one = _line(one_out, "restored"), _line(one_out, "saved")
    restored_by_two = _line(_checkpoint("restore", 2, 2, tmp_path / "c", one), "restored")
    want = saved_by_two[0].split()[1]
    for line in saved_by_two + restored_by_one + saved_by_one + restored_by_two:
        assert line.split()[1] == want, line  # the same whole arrays, in every process
    for line in saved_by_two + restored_by_two:
        assert "4 devices, addressable here False" in line, line
    assert "1 devices, addressable here True" in restored_by_one[0]
    assert "saved on process 0 of 2: 2 of 4 cpu devices" in restored_by_one[0]
    assert all("saved on process 0 of 1: 1 of 1 cpu devices" in line
               for line in restored_by_two)


def test_a_dead_process_stops_the_other_and_a_restart_resumes(tmp_path, two_process_runs):
    folder, uninterrupted = two_process_runs["batch"]
    out = tmp_path / "run"
    args = [*QUICK, "--out", str(out), "--parallel", "batch", "--checkpoint-every", "2"]
    with reaped(launch(args, processes=2, devices=2, logs=tmp_path / "first")) as procs:
        log = out / "logs" / "process_0.log"
        deadline = time.monotonic() + TIMEOUT
        while "[round1] epoch   2" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no progress"
            time.sleep(0.1)
        procs[1].kill()  # SIGKILL mid-run (round 1 of 7 stages): no chance to say goodbye
        killed = time.monotonic()
        code = procs[0].wait(timeout=TIMEOUT)
        stopped_after = time.monotonic() - killed
    text = (tmp_path / "first.0.txt").read_text()
    # The survivor ends when the coordinator has missed HEARTBEAT seconds of heartbeats
    # (JAX's message), or sooner when a collective finds the connection gone (ours).
    assert code != 0 and stopped_after < HEARTBEAT + 20, (code, stopped_after)
    assert "another task died" in text or "died first" in text, text[-2000:]
    # Both started again with the same command: resumed, and the uninterrupted numbers.
    wait_all(launch(args, processes=2, devices=2, logs=tmp_path / "again"), tmp_path / "again")
    assert "resumed" in (tmp_path / "again.0.txt").read_text()
    resumed = json.loads((out / "results.json").read_text())
    a, b = seeds_of(uninterrupted), seeds_of(resumed)
    for key in a:
        for field in ("epochs", "train_acc", "val_acc", "test_acc", "val_loss", "test_loss"):
            assert a[key][field] == b[key][field], (key, field)


def test_a_process_that_fails_ends_at_once_and_the_other_follows(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    ds = synthetic_dataset(600, 100, 10, (8, 8, 3))
    np.savez(good / "cifar10.npz", x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
             y_test=ds.y_test)
    (bad / "cifar10.npz").write_bytes(b"not an archive")  # only process 1 reads this one
    port = str(hosts.free_port())
    procs = []
    for k, folder in enumerate((good, bad)):
        with open(tmp_path / f"p{k}.txt", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "wsjax", *QUICK, "--dataset", "cifar10", "--out",
                 str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}",
                 "--num-processes", "2", "--process-id", str(k)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env=hosts.cpu_env(2, {"WSJAX_DATA_DIR": str(folder)})))
    with reaped(procs):
        start = time.monotonic()
        failed = procs[1].wait(timeout=TIMEOUT)
        failed_after = time.monotonic() - start
        other = procs[0].wait(timeout=TIMEOUT)
        other_after = time.monotonic() - start
    # The failing process says why and leaves without waiting in the runtime's shutdown for
    # the other (which waits for it): before, both hung until a 30 s Gloo timeout.
    assert failed == 1 and "is not a readable .npz" in (tmp_path / "p1.txt").read_text()
    assert other != 0 and other_after < failed_after + HEARTBEAT + 20, (other, other_after)
    assert "another task died" in (tmp_path / "p0.txt").read_text()


@pytest.mark.parametrize("environ, kind", [
    ({}, None), ({"SLURM_NTASKS": "1"}, None), ({"SLURM_NTASKS": "4"}, "slurm"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None), ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "tpu"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "env")])
def test_the_environment_of_a_launcher_is_recognised(environ, kind):
    assert hosts.detect_cluster(environ) == kind


@pytest.mark.parametrize("kwargs, message", [
    ({"coordinator": "127.0.0.1:1", "num_processes": 2}, "missing --process-id"),
    ({"num_processes": 2, "process_id": 2}, "must be in [0, 2)"),
    ({"num_processes": 0, "process_id": 0}, "at least 1"),
    ({"environ": {"JAX_PROCESS_ID": "one"}}, "must be an integer")])
def test_incomplete_process_flags_are_refused_before_starting(kwargs, message):
    environ = kwargs.pop("environ", {})
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        hosts.initialize(**kwargs, environ=environ)


def test_one_process_starts_nothing_and_writes_as_before():
    out = run_python(r'''
from wsjax import hosts
assert hosts.process_index() == 0 and hosts.is_main()
layout = hosts.initialize(num_processes=1, process_id=0, environ={})
print(layout.describe(), hosts.host_value({"a": __import__("jax").numpy.arange(3)})["a"].sum())
''', devices=2)
    assert "process 0 of 1: 2 of 2 cpu devices 3" in out
