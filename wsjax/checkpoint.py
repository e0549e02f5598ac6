"""Orbax checkpoints: full training state for resuming, weights for warm starts.

A checkpoint step is a folder with up to four Orbax items, so a warm start restores just the
weights it needs:

- ``params`` and ``batch_stats`` (the latter only for models with BatchNorm): the weights;
- ``train``: ``{'step', 'opt_state'}`` (the optimizer state as a Flax state dict);
- ``meta``: JSON, the caller's (round, progress, config...), plus a CRC-32 of every array
  item (``checksums``).

Saves are asynchronous: ``save`` copies the state to host memory and returns while Orbax
writes it in the background (the next save, ``wait`` and ``close`` wait for it); Orbax commits
a step by renaming it into place, so a crash leaves the previous steps intact. Restores are
verified: a step whose arrays do not match their checksums, or that cannot be read at all
(a truncated or missing file), is skipped with a warning for the newest intact one, and
``CheckpointError`` says what to do when none is intact.

Arrays are restored onto the devices the restoring program asks for (``sharding``), not the
ones that saved them, so a checkpoint written on 8 GPUs loads on 1 CPU. Relative directories
are resolved against the working directory (Orbax needs absolute paths).

Several processes (``wsjax.hosts``) share one checkpoint folder (a shared file system on
several hosts): every process calls ``save`` and ``restore`` alike, each writes and reads only
the shards on its own devices, and process 0 commits the step once all have written, so a
step saved by 2 processes restores in 1 and the reverse. The checksums are of whole arrays
(gathered to every process), so they match on any layout.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import warnings
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from wsjax.hosts import host_value
from wsjax.trees import path_str

_ARRAY_ITEMS = ("params", "batch_stats", "train", "extra")


def _handlers():
    handlers = {k: ocp.StandardCheckpointHandler() for k in _ARRAY_ITEMS}
    handlers["meta"] = ocp.JsonCheckpointHandler()
    return handlers


def _abstract(tree, sharding=None):
    """Restore targets: shapes and dtypes of ``tree``, placed on ``sharding`` (default: the
    leaf's own sharding when it is a placed array, else the first local device)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        # Host values are read whole by every process, onto its own first device.
        s = sharding or getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)

    return jax.tree.map(one, tree)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete, or of another model."""


def checksum(tree) -> str:
    """CRC-32 (hex) of every leaf of ``tree``: its path, dtype, shape and bytes, in tree order.
    Equal for a tree and its restored copy, on any device layout (arrays split over several
    processes are gathered: every process calls this alike)."""
    crc = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(host_value(tree))[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        crc = zlib.crc32(f"{path_str(path)}:{a.dtype}:{a.shape};".encode(), crc)
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


def _own_copy(tree):
    """A copy of ``tree`` that nothing else owns, so training may donate (reuse) the device
    buffers while Orbax writes the copy in the background: on the host (Orbax writes those
    from process 0), except arrays split over several processes' devices, copied on those
    devices (each process writes its own shards)."""
    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return x.copy()
        return np.array(x, copy=True)

    return jax.tree.map(one, tree)


@contextlib.contextmanager
def _uninterrupted():
    """Defers Ctrl-C (and SIGTERM) until the block ends, so that a save, or the wait for one,
    finishes rather than being torn (Orbax logs a traceback from the interrupted wait). In the
    main thread only: Python delivers signals there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.signal(signum, lambda *args: received.append(args))
        # A handler installed outside Python: Python's own stands in.
        previous[signum] = handler if handler is not None else (
            signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signum = received[0][0]
            handler = previous[signum]
            if callable(handler):
                handler(*received[0])  # e.g. Python's default SIGINT handler raises here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


_ECHOES_SILENCED = False


def _silence_read_echoes() -> None:
    """When a damaged file fails one of Orbax's parallel reads, the reads of the other chunks
    are abandoned: the garbage collector prints each one's TensorStore traceback ("Exception
    ignored in: <coroutine ...>") whenever it gets to them, and TensorStore's threads print
    "Event loop is closed" when those reads finish after Orbax closed its event loop. The
    failure itself is reported (a ``CheckpointError``, or a warning and a fallback); from the
    first one on, these echoes of it are dropped. Other unraisable exceptions are shown."""
    global _ECHOES_SILENCED
    if not _ECHOES_SILENCED:
        previous = sys.unraisablehook

        def hook(unraisable):
            code = getattr(getattr(unraisable, "object", None), "cr_code", None)
            echo = code is not None and "orbax" in code.co_filename
            late = (isinstance(unraisable.exc_value, RuntimeError)
                    and str(unraisable.exc_value) == "Event loop is closed")
            if not (echo or late):
                previous(unraisable)

        sys.unraisablehook = hook
        _ECHOES_SILENCED = True
    gc.collect()


def _callers(meta: dict) -> dict:
    """A step's metadata as its caller saved it (without the checksums ``save`` adds)."""
    return {k: v for k, v in (meta or {}).items() if k != "checksums"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().split(" See full TensorStore details")[0].splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _tree_of(metadata):
    """Orbax's item metadata is a TreeMetadata in recent versions and a plain tree in older."""
    return getattr(metadata, "tree", metadata)


class Checkpointer:
    """Saves and restores ``wsjax.train.TrainState`` (any pytree with ``params``,
    ``batch_stats``, ``step`` and ``opt_state``) plus JSON metadata in ``directory``.

    ``max_to_keep`` bounds the number of steps kept (None keeps all). ``create=False`` reads
    an existing folder only (``FileNotFoundError`` when it does not exist). Use as a context
    manager or call ``close``.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None,
                 create: bool = True):
        self.directory = Path(directory).expanduser().resolve()
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoint folder {self.directory}")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
            item_handlers=_handlers(),
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait(self) -> None:
        """Waits until every save has been written and committed (Ctrl-C waits too)."""
        with _uninterrupted():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        with _uninterrupted():
            self._manager.wait_until_finished()
            self._manager.close()

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict | None = None) -> None:
        """Starts writing ``state`` and ``meta`` as ``step`` (replacing an existing one) and
        returns once the state is copied to host memory; see the module docstring."""
        with _uninterrupted():
            self._save(step, state, meta)

    def _save(self, step: int, state, meta: dict | None) -> None:
        if step in self._manager.all_steps():
            self._manager.wait_until_finished()
            self._manager.delete(step)
        arrays = {"params": state.params,
                  "train": {"step": state.step,
                            "opt_state": serialization.to_state_dict(state.opt_state)}}
        if jax.tree.leaves(state.batch_stats):
            arrays["batch_stats"] = state.batch_stats
        if jax.tree.leaves(getattr(state, "extra", None)):  # a step hook's state
            arrays["extra"] = state.extra
        arrays = _own_copy(arrays)
        meta = {**(meta or {}), "checksums": {k: checksum(v) for k, v in arrays.items()}}
        items = {k: ocp.args.StandardSave(v) for k, v in arrays.items()}
        self._manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items))

    def keep_only(self, step: int) -> None:
        """Deletes every step but ``step`` (a finished stage needs only its last)."""
        with _uninterrupted():
            self._manager.wait_until_finished()
            for other in self.all_steps():
                if other != step:
                    self._manager.delete(other)

    def _step(self, step):
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no step {step} in {self.directory}; it has {self.all_steps()}")
        return step

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of ``step`` (default: the latest), as given to ``save``."""
        step = self._step(step)
        try:
            return _callers(self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"])
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for a damaged step
            raise CheckpointError(f"step {step} of {self.directory} has no readable metadata "
                                  f"({_first_line(e)}); it is damaged or incomplete") from None

    def _restore_verified(self, step: int, items: dict) -> dict:
        """Restores ``items`` (Orbax restore args) of ``step`` and checks each array item
        against the checksum saved with it; raises ``CheckpointError`` saying what is wrong."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(), **items))
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for a damaged step
            _silence_read_echoes()
            raise CheckpointError(f"step {step} cannot be read ({_first_line(e)})") from None
        saved = (out["meta"] or {}).get("checksums")
        for name in items:
            # Steps written before checksums existed are trusted as they are.
            if saved is not None and saved.get(name) != checksum(out[name]):
                raise CheckpointError(f"step {step}: {name} does not match its checksum "
                                      f"(the files were changed or damaged)")
        return out

    def _first_intact(self, step, restore_step):
        """``restore_step(step)`` of ``step``, or (when ``step`` is None) of the newest step
        that restores intact, warning about each damaged one skipped."""
        if step is not None:
            return restore_step(self._step(step))
        problems = []
        for candidate in reversed(self.all_steps()):
            try:
                out = restore_step(candidate)
            except CheckpointError as e:
                problems.append(str(e))
                warnings.warn(f"{self.directory}: {e}; trying an older step", stacklevel=3)
                continue
            return out
        if not problems:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        raise CheckpointError(f"no intact checkpoint in {self.directory} ({'; '.join(problems)})"
                              f": put back a good copy, or delete that folder to train it again")

    def restore(self, template, step: int | None = None, *, sharding=None):
        """Restores ``(state, meta)`` of ``step`` (default: the newest intact step) into the
        structure of ``template`` (a concrete or ``jax.eval_shape`` state), placed on
        ``sharding`` or on the template's own shardings."""
        train_t = {"step": template.step,
                   "opt_state": serialization.to_state_dict(template.opt_state)}
        items = {"params": ocp.args.StandardRestore(_abstract(template.params, sharding)),
                 "train": ocp.args.StandardRestore(_abstract(train_t, sharding))}
        has_bn = bool(jax.tree.leaves(template.batch_stats))
        if has_bn:
            items["batch_stats"] = ocp.args.StandardRestore(_abstract(template.batch_stats,
                                                                      sharding))
        has_extra = bool(jax.tree.leaves(getattr(template, "extra", None)))
        if has_extra:
            items["extra"] = ocp.args.StandardRestore(_abstract(template.extra, sharding))
        out = self._first_intact(step, lambda s: self._restore_verified(s, items))
        state = template.replace(
            step=out["train"]["step"], params=out["params"],
            batch_stats=out["batch_stats"] if has_bn else template.batch_stats,
            opt_state=serialization.from_state_dict(template.opt_state,
                                                    out["train"]["opt_state"]))
        if has_extra:
            state = state.replace(extra=out["extra"])
        return state, _callers(out["meta"])

    def weights_metadata(self, step: int | None = None) -> dict:
        """``{'params': tree, 'batch_stats': tree}`` of saved shapes (as ShapeDtypeStructs)."""
        step = self._step(step)
        try:
            meta = self._manager.item_metadata(step)
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for a damaged step
            _silence_read_echoes()
            raise CheckpointError(f"step {step} of {self.directory} cannot be read "
                                  f"({_first_line(e)}); it is damaged or incomplete") from None
        out = {}
        for name in ("params", "batch_stats"):
            try:
                tree = _tree_of(meta[name])
            except KeyError:
                tree = None
            out[name] = {} if tree is None else jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                is_leaf=lambda m: hasattr(m, "shape"))
        if not jax.tree.leaves(out["params"]):
            raise CheckpointError(f"step {step} of {self.directory} has no readable params "
                                  f"(missing or damaged params/ folder)")
        return out

    def restore_weights(self, step: int | None = None, *, sharding=None, check=None) -> dict:
        """``{'params', 'batch_stats'}`` of ``step`` (default: the newest intact step) as
        saved, without the optimizer state. ``check(shapes)`` runs on a step's saved shapes
        (``weights_metadata``) before any of its arrays is read; what it raises propagates."""
        def restore_step(s):
            saved = self.weights_metadata(s)
            if check is not None:
                check(saved)
            items = {k: ocp.args.StandardRestore(_abstract(v, sharding))
                     for k, v in saved.items() if jax.tree.leaves(v)}
            out = self._restore_verified(s, items)
            return {k: out[k] if k in items else {} for k in ("params", "batch_stats")}

        return self._first_intact(step, restore_step)


def _flat(tree) -> dict[str, jax.ShapeDtypeStruct]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stacked_replicas(saved: dict, target: dict) -> int | None:
    """R when every saved leaf that the target has is shaped ``(R, *target shape)`` (the
    checkpoint of R stacked seeds), else None."""
    common = set(saved) & set(target)
    counts = {np.shape(saved[p])[0] if np.shape(saved[p])[1:] == np.shape(target[p]) else None
              for p in common}
    return counts.pop() if len(counts) == 1 and None not in counts else None


def merge_weights(saved: dict, target: dict, *, fresh_layers=()) -> dict:
    """Takes ``target``'s structure and fills it with ``saved`` weights, strictly.

    ``saved`` and ``target`` are ``{'params', 'batch_stats'}`` trees; ``target`` is typically a
    fresh ``init_variables`` of the new model. Top-level layers named in ``fresh_layers`` (e.g.
    ``('head',)`` for a new classifier when the class count changes) keep ``target``'s fresh
    values. Any other missing, extra or reshaped leaf raises ``ValueError`` naming it.
    """
    fresh_layers = set(fresh_layers)
    unknown = fresh_layers - set(target["params"])
    if unknown:
        raise ValueError(f"fresh_layers {sorted(unknown)} are not layers of the target model; "
                         f"its layers are {sorted(target['params'])}")
    problems = []
    flat = {}
    keep = lambda p: p.split("/")[0] not in fresh_layers
    for coll in ("params", "batch_stats"):
        s, t = _flat(saved.get(coll, {})), _flat(target.get(coll, {}))
        flat[coll] = s
        for p in sorted(set(t) - set(s)):
            if keep(p):
                problems.append(f"{coll}/{p} is missing from the checkpoint")
        for p in sorted(set(s) - set(t)):
            if keep(p):
                problems.append(f"{coll}/{p} is in the checkpoint but not in the model")
        for p in sorted(set(s) & set(t)):
            if keep(p) and tuple(np.shape(s[p])) != tuple(np.shape(t[p])):
                problems.append(f"{coll}/{p} has shape {tuple(np.shape(s[p]))} in the "
                                f"checkpoint but {tuple(np.shape(t[p]))} in the model")
    if problems:
        hint = ("; if the classifier changed (another class count), pass fresh_layers=('head',)"
                if any(p.startswith("params/head/") for p in problems) else "")
        replicas = _stacked_replicas(flat["params"], _flat(target["params"]))
        if replicas is not None:
            hint += (f"; the checkpoint holds {replicas} replicas (seeds) stacked on a leading "
                     f"axis, as a study's checkpoints do: pass replica=r to load one")
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems[:10])
                         + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
                         + hint)
    return {coll: jax.tree_util.tree_map_with_path(
        lambda path, x: flat[coll][path_str(path)] if keep(path_str(path)) else x,
        target.get(coll, {})) for coll in ("params", "batch_stats")}


def _replica(tree, replica: int):
    """Replica ``replica`` of a tree whose leaves (arrays or shapes) stack replicas first."""
    def one(x):
        if not 0 <= replica < x.shape[0]:
            raise ValueError(f"replica={replica} is not in the checkpoint's {x.shape[0]} replicas")
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        return x[replica]
    return jax.tree.map(one, tree)


def load_warm_start(directory: str | os.PathLike, target: dict, *, step: int | None = None,
                    fresh_layers=(), sharding=None, replica: int | None = None) -> dict:
    """Warm-start weights ``{'params', 'batch_stats'}`` for a model from a checkpoint.

    ``target`` is a fresh ``init_variables`` of the new model (it fixes the structure and
    supplies the ``fresh_layers``); see ``merge_weights`` for the strict check. Checks the
    shapes before reading any array. ``replica`` picks one seed of a checkpoint whose arrays
    stack several on a leading axis (a study stage's). Reads only: a folder that does not
    exist raises ``FileNotFoundError`` and is not created.
    """
    pick = (lambda tree: tree) if replica is None else (lambda tree: _replica(tree, replica))
    check = lambda shapes: merge_weights(pick(shapes), target, fresh_layers=fresh_layers)
    with Checkpointer(directory, create=False) as ckpt:
        saved = pick(ckpt.restore_weights(step, sharding=sharding, check=check))
    return merge_weights(saved, target, fresh_layers=fresh_layers)
