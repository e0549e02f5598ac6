"""Hyperparameter search: Optuna asks, a batch of trials trains as one program, the study is
told; two worker processes share one SQLite study without losing or repeating a trial."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from harness import REPO

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once

optuna = pytest.importorskip("optuna")

from wsjax import data as wdata  # noqa: E402
from wsjax.models import create_model  # noqa: E402
from wsjax.search import batch_trainer, open_study, search  # noqa: E402

# One worker: a tiny logistic-regression search on synthetic data, its trial numbers printed.
WORKER = """
import json, sys
import jax, numpy as np
from wsjax import data as wdata
from wsjax.models import create_model
from wsjax.search import batch_trainer, open_study, search
storage, seed = sys.argv[1], int(sys.argv[2])
ds = wdata.synthetic_dataset(256, 64, 4, image_shape=(4, 4, 3))
x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = open_study("shared", storage)
study.sampler = optuna.samplers.RandomSampler(seed=seed)
train = batch_trainer(create_model("logreg", 4), "sgd", x, y, np.arange(192),
                      np.arange(192, 256), epochs=1, batch_size=64, input_shape=(4, 4, 3))
done = search(study, {"learning_rate": (1e-3, 1.0)}, train, n_trials=6, batch=3, log=None)
print(json.dumps(done))
"""


@pytest.fixture(scope="module")
def synthetic():
    ds = wdata.synthetic_dataset(512, 64, 10, image_shape=(8, 8, 3))
    return jax.device_put(ds.x_train), jax.device_put(ds.y_train)


def test_batches_train_as_one_program_and_divergence_fails_a_trial(synthetic):
    x, y = synthetic
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study("one")
    train = batch_trainer(create_model("mlp", 10, widths=(16,)), "sgd", x, y, np.arange(384),
                          np.arange(384, 512), epochs=2, batch_size=64, input_shape=(8, 8, 3))
    # Enqueued points first: one that blows up, one that learns, one that barely moves.
    for lr in (300.0, 0.5, 1e-4):
        study.enqueue_trial({"learning_rate": lr, "weight_decay": 1e-5})
    sizes = []

    def recording(trials):
        sizes.append(len(trials))
        return train(trials)

    done = search(study, {"learning_rate": (1e-4, 300.0), "weight_decay": (1e-6, 1e-2)},
                  recording, n_trials=5, batch=3, log=None)
    assert done == [0, 1, 2, 3, 4]
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states[1:3] == ["COMPLETE", "COMPLETE"]
    assert trials[1].value > trials[2].value  # lr 0.5 learns more than 1e-4 in 2 epochs
    assert "RUNNING" not in states
    # The last batch (2 trials) was padded to 3: one program shape for the whole search.
    assert sizes == [3, 3]
    assert all(set(t.params) == {"learning_rate", "weight_decay"} for t in trials)


def test_a_failing_batch_leaves_no_trial_running():
    study = open_study("failing")

    def broken(trials):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        search(study, {"learning_rate": (1e-3, 1.0)}, broken, n_trials=4, batch=2, log=None)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL"]
    with pytest.raises(ValueError, match="cannot search 'width'"):
        search(study, {"width": (1, 8)}, broken, n_trials=1, log=None)


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    open_study("shared", storage)  # made once, as a launcher would, before the workers start
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, storage, str(seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=tmp_path) for seed in (0, 1)]
    ran = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
        ran.append(json.loads(out.strip().splitlines()[-1]))
    trials = open_study("shared", storage).get_trials()
    numbers = sorted(t.number for t in trials)
    # Twelve trials, each asked once, run by exactly one worker, and told.
    assert numbers == list(range(12))
    assert sorted(ran[0] + ran[1]) == numbers and not set(ran[0]) & set(ran[1])
    assert all(t.state.name == "COMPLETE" for t in trials)
