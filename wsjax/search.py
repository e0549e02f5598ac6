"""Hyperparameter search with Optuna, a batch of trials trained as one program.

Optuna decides what to try (its default TPE sampler, or any other) and keeps the study; wsjax
trains. Each round a worker asks the study for ``batch`` trials, trains them as the replicas of
one compiled program (each replica its trial's learning rate and weight decay, injected into
the optimizer state: ``wsjax.optim.with_hyperparams``), and tells the study every trial's
result: a diverged trial is told as failed, and a round that raises tells its trials failed
before the error goes on, so no trial is left running. The study lives in a database:

- one machine: a SQLite file (``storage='sqlite:///search.db'``); several worker processes can
  share it (SQLite's lock serializes their writes; each ``ask`` gets its own trial number;
  workers started at the same moment retry while another one creates the tables);
- several machines: the same study served from a database server they all reach
  (``storage='postgresql://user@host/db'``: any SQLAlchemy URL Optuna takes), one or more
  worker processes per machine, each running ``search`` with the same ``study_name``.

>>> study = open_study("mlp-lr", "sqlite:///search.db")
>>> train = batch_trainer(create_model("mlp", 10), "adam", x, y, train_idx, val_idx, epochs=5)
>>> search(study, {"learning_rate": (1e-4, 1e-1), "weight_decay": (1e-6, 1e-2)}, train,
...        n_trials=32, batch=8)
>>> study.best_params

Only optimizer hyperparameters vary within a batch (they are values in the state); a width or
a depth changes the program, so such a search asks one value per batch, or runs one study per
architecture. Optuna is imported only here (``pip install optuna``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from wsjax.engine import Engine
from wsjax.optim import injected, with_hyperparams
from wsjax.train import StopRule, replica_keys

# Searchable per replica: what ``injected`` puts in the optimizer state.
HYPERPARAMS = ("learning_rate", "weight_decay")


def open_study(name: str, storage: str | None = None, direction: str = "maximize"):
    """The Optuna study ``name`` in ``storage`` (a database URL; None keeps it in memory),
    created when it does not exist yet. SQLite waits up to a minute for another worker's
    write lock instead of failing at once."""
    import optuna

    for attempt in range(5):
        try:
            db = storage
            if storage is not None and storage.startswith("sqlite"):
                db = optuna.storages.RDBStorage(
                    storage, engine_kwargs={"connect_args": {"timeout": 60}})
            return optuna.create_study(study_name=name, storage=db, direction=direction,
                                       load_if_exists=True)
        except Exception as e:
            # Workers started together race to create the database's tables (or the study):
            # the loser finds them made, and the next attempt opens them.
            if attempt == 4 or "already exists" not in str(e):
                raise
            time.sleep(0.5 + attempt)


def suggest(trial, space: Mapping[str, tuple]) -> dict[str, float]:
    """One trial's hyperparameters: each ``name: (low, high)`` of ``space`` drawn on a log
    scale (``(low, high, 'linear')`` for a uniform one); names from ``HYPERPARAMS``."""
    params = {}
    for name, bounds in space.items():
        if name not in HYPERPARAMS:
            raise ValueError(f"cannot search {name!r} within a batch; searchable: {HYPERPARAMS}")
        low, high, *scale = bounds
        params[name] = trial.suggest_float(name, low, high, log=scale != ["linear"])
    return params


def batch_trainer(model, optimizer: str, x, y, train_idx, val_idx, *, epochs: int,
                  metric: str = "acc", seed: int = 0, **engine_options
                  ) -> Callable[[Sequence[dict]], list[float]]:
    """``train(trials) -> values``: trains one replica per trial (a dict of ``HYPERPARAMS``;
    the ones it omits keep their defaults: weight decay 0) for ``epochs`` epochs from the same
    initialization (``seed``), in one program compiled once for the batch size, and returns
    each one's validation ``metric`` (``'acc'`` or ``'loss'``), NaN where it diverged."""
    engines: dict[int, Engine] = {}
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)

    def train(trials: Sequence[dict]) -> list[float]:
        size = len(trials)
        if size not in engines:
            engines[size] = Engine(model, injected(optimizer, 1e-3, weight_decay=0.0),
                                   **engine_options)
        engine = engines[size]
        states = engine.new_state(engine.init(replica_keys([seed] * size)))
        values = {name: [float(t.get(name, 0.0)) for t in trials] for name in HYPERPARAMS}
        states = states.replace(opt_state=with_hyperparams(states.opt_state, **values))
        keys = replica_keys([seed + 1] * size)
        states, progress = engine.fit(states, keys, x, y, train_idx,
                                      StopRule(threshold=2.0, max_epochs=epochs))
        result = engine.evaluate(states, x, y, val_idx)[metric]
        return [float("nan") if progress.diverged_at[r] is not None else float(result[r])
                for r in range(size)]

    return train


def search(study, space: Mapping[str, tuple], train: Callable[[Sequence[dict]], list[float]],
           *, n_trials: int, batch: int = 8, log: Callable[[str], None] | None = print
           ) -> list[int]:
    """Runs ``n_trials`` trials of ``study`` in batches of ``batch`` (the last one padded with
    repeats of its last trial so the program is not compiled again; the repeats are not
    told): asks, trains (``train``, e.g. ``batch_trainer``), tells. Returns the numbers of
    the trials this worker ran."""
    import optuna

    if not (isinstance(n_trials, int) and n_trials >= 1 and isinstance(batch, int)
            and batch >= 1):
        raise ValueError(f"n_trials={n_trials!r} and batch={batch!r} must be integers >= 1")
    done: list[int] = []
    while len(done) < n_trials:
        trials = [study.ask() for _ in range(min(batch, n_trials - len(done)))]
        try:
            params = [suggest(t, space) for t in trials]
            values = train(params + [params[-1]] * (batch - len(params)))[:len(params)]
        except BaseException:
            for t in trials:  # none is left running in the study
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            raise
        for t, value in zip(trials, values):
            if math.isfinite(value):
                study.tell(t, value)
            else:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
        done += [t.number for t in trials]
        if log is not None:
            best = ", ".join(f"#{t.number} {v:.4g}" for t, v in zip(trials, values))
            log(f"trials {best}")
    return done
