"""Data parallelism with ``jax.jit`` and ``NamedSharding`` over a one-axis device mesh.

The training code is written for one device and made parallel at its boundary: the state and
the dataset are placed with ``place_state`` / ``place_data`` and the compiled epoch constrains
each gathered batch with ``constrain_batch``; XLA inserts the cross-device reductions
(gradients, BatchNorm statistics). Two layouts:

- ``'batch'``: every device holds all replicas' parameters; each batch is split over devices.
  What a large model on several GPUs or a TPU slice wants.
- ``'replica'``: the vmapped replica (seed) axis is split over devices; each device trains its
  own seeds on whole batches. Best for many small models (MLPs); needs replicas % devices == 0.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``'data'`` over ``devices`` (default: all).

    The axis type is explicitly ``Auto``: jax >= 0.12 defaults to ``Explicit``, under which
    optax's integer-label cross-entropy fails with a ``ShardingTypeError``.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Where arrays live on a mesh; see the module docstring for ``mode``."""

    mesh: Mesh
    mode: str = "batch"

    def __post_init__(self):
        if self.mode not in ("batch", "replica"):
            raise ValueError(f"mode={self.mode!r} must be 'batch' or 'replica'")

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def state_sharding(self) -> NamedSharding:
        """For arrays with a leading replica axis (states, per-replica metrics and keys)."""
        return NamedSharding(self.mesh, P(AXIS) if self.mode == "replica" else P())

    @property
    def spmd_axis_name(self):
        """Passed to ``jax.vmap`` over replicas, so the replica axis maps to the mesh axis."""
        return AXIS if self.mode == "replica" else None

    def check_replicas(self, num_replicas: int) -> None:
        """Raises ``ValueError`` if ``num_replicas`` cannot be split over the devices."""
        if self.mode == "replica" and num_replicas % self.num_devices:
            raise ValueError(
                f"mode='replica' splits the {num_replicas} replicas over {self.num_devices} "
                f"devices: use a multiple of {self.num_devices} seeds, or mode='batch'"
            )

    def constrain_batch(self, tree):
        """Inside the (vmapped) step: split the batch axis of each array over devices."""
        if self.mode != "batch":
            return tree
        spec = NamedSharding(self.mesh, P(AXIS))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), tree)

    def place_state(self, tree):
        """Puts a tree with a leading replica axis on the mesh."""
        self.check_replicas(len(jax.tree.leaves(tree)[0]))
        return jax.device_put(tree, self.state_sharding)

    def place_data(self, tree):
        """Puts dataset arrays on every device (they are gathered from inside the step)."""
        return jax.device_put(tree, self.replicated)


def choose_parallel(mode: str, num_replicas: int, *, conv: bool) -> DataParallel | None:
    """The layout over all devices for ``mode``: ``'none'`` (or one device with ``'auto'``)
    gives None; ``'auto'`` splits batches for conv nets (``conv``) and replicas for small
    models when they divide evenly over the devices, else batches; ``'batch'`` and
    ``'replica'`` as named."""
    if mode not in ("auto", "none", "batch", "replica"):
        raise ValueError(f"parallel={mode!r} must be 'auto', 'none', 'batch' or 'replica'")
    n = jax.device_count()
    if mode == "none" or (mode == "auto" and n == 1):
        return None
    if mode == "auto":
        mode = "replica" if not conv and num_replicas % n == 0 else "batch"
    return DataParallel(make_mesh(), mode)
