"""Orbax checkpoints: full training state for resuming, weights for warm starts.

A checkpoint step is a folder with up to four Orbax items, so a warm start restores just the
weights it needs:

- ``params`` and ``batch_stats`` (the latter only for models with BatchNorm): the weights;
- ``train``: ``{'step', 'opt_state'}`` (the optimizer state as a Flax state dict);
- ``meta``: JSON, the caller's (round, progress, config...).

Arrays are restored onto the devices the restoring program asks for (``sharding``), not the
ones that saved them, so a checkpoint written on 8 GPUs loads on 1 CPU. Relative directories
are resolved against the working directory (Orbax needs absolute paths).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from wsjax.trees import path_str

_ARRAY_ITEMS = ("params", "batch_stats", "train")


def _handlers():
    handlers = {k: ocp.StandardCheckpointHandler() for k in _ARRAY_ITEMS}
    handlers["meta"] = ocp.JsonCheckpointHandler()
    return handlers


def _abstract(tree, sharding=None):
    """Restore targets: shapes and dtypes of ``tree``, placed on ``sharding`` (default: the
    leaf's own sharding when it is a placed array, else the first local device)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        s = sharding or getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)

    return jax.tree.map(one, tree)


def _tree_of(metadata):
    """Orbax's item metadata is a TreeMetadata in recent versions and a plain tree in older."""
    return getattr(metadata, "tree", metadata)


class Checkpointer:
    """Saves and restores ``wsjax.train.TrainState`` (any pytree with ``params``,
    ``batch_stats``, ``step`` and ``opt_state``) plus JSON metadata in ``directory``.

    ``max_to_keep`` bounds the number of steps kept (None keeps all). Use as a context manager
    or call ``close``.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None):
        self.directory = Path(directory).expanduser().resolve()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_handlers=_handlers(),
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict | None = None) -> None:
        """Writes ``state`` and ``meta`` as ``step`` (replacing an existing one) and waits until
        it is on disk: Orbax commits by renaming, so a crash leaves the previous step intact."""
        if step in self._manager.all_steps():
            self._manager.delete(step)
        items = {"params": ocp.args.StandardSave(state.params),
                 "train": ocp.args.StandardSave(
                     {"step": state.step, "opt_state": serialization.to_state_dict(state.opt_state)}),
                 "meta": ocp.args.JsonSave(meta or {})}
        if jax.tree.leaves(state.batch_stats):
            items["batch_stats"] = ocp.args.StandardSave(state.batch_stats)
        self._manager.save(step, args=ocp.args.Composite(**items))
        self._manager.wait_until_finished()

    def _step(self, step):
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no step {step} in {self.directory}; it has {self.all_steps()}")
        return step

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of ``step`` (default: the latest)."""
        step = self._step(step)
        return self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, template, step: int | None = None, *, sharding=None):
        """Restores ``(state, meta)`` of ``step`` (default: the latest) into the structure of
        ``template`` (a concrete or ``jax.eval_shape`` state), placed on ``sharding`` or on the
        template's own shardings."""
        step = self._step(step)
        train_t = {"step": template.step,
                   "opt_state": serialization.to_state_dict(template.opt_state)}
        items = {"params": ocp.args.StandardRestore(_abstract(template.params, sharding)),
                 "train": ocp.args.StandardRestore(_abstract(train_t, sharding)),
                 "meta": ocp.args.JsonRestore()}
        has_bn = bool(jax.tree.leaves(template.batch_stats))
        if has_bn:
            items["batch_stats"] = ocp.args.StandardRestore(_abstract(template.batch_stats,
                                                                      sharding))
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = template.replace(
            step=out["train"]["step"], params=out["params"],
            batch_stats=out["batch_stats"] if has_bn else template.batch_stats,
            opt_state=serialization.from_state_dict(template.opt_state,
                                                    out["train"]["opt_state"]))
        return state, out["meta"]

    def weights_metadata(self, step: int | None = None) -> dict:
        """``{'params': tree, 'batch_stats': tree}`` of saved shapes (as ShapeDtypeStructs)."""
        step = self._step(step)
        meta = self._manager.item_metadata(step)
        out = {}
        for name in ("params", "batch_stats"):
            try:
                tree = _tree_of(meta[name])
            except KeyError:
                tree = None
            out[name] = {} if tree is None else jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                is_leaf=lambda m: hasattr(m, "shape"))
        return out

    def restore_weights(self, step: int | None = None, *, sharding=None) -> dict:
        """``{'params', 'batch_stats'}`` of ``step`` as saved, without the optimizer state."""
        step = self._step(step)
        saved = self.weights_metadata(step)
        items = {k: ocp.args.StandardRestore(_abstract(v, sharding)) for k, v in saved.items()
                 if jax.tree.leaves(v)}
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return {k: out[k] if k in items else {} for k in ("params", "batch_stats")}


def _flat(tree) -> dict[str, jax.ShapeDtypeStruct]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems[:10])
                         + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
                         + hint)
    return {coll: jax.tree_util.tree_map_with_path(
        lambda path, x: flat[coll][path_str(path)] if keep(path_str(path)) else x,
        target.get(coll, {})) for coll in ("params", "batch_stats")}


def load_warm_start(directory: str | os.PathLike, target: dict, *, step: int | None = None,
                    fresh_layers=(), sharding=None) -> dict:
    """Warm-start weights ``{'params', 'batch_stats'}`` for a model from a checkpoint.

    ``target`` is a fresh ``init_variables`` of the new model (it fixes the structure and
    supplies the ``fresh_layers``); see ``merge_weights`` for the strict check. Checks the
    shapes before reading any array.
    """
    with Checkpointer(directory) as ckpt:
        merge_weights(ckpt.weights_metadata(step), target, fresh_layers=fresh_layers)
        saved = ckpt.restore_weights(step, sharding=sharding)
    return merge_weights(saved, target, fresh_layers=fresh_layers)
