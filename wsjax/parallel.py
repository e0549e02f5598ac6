"""Data parallelism with ``jax.jit`` and ``NamedSharding`` over a one-axis device mesh.

The training code is written for one device and made parallel at its boundary: the state and
the dataset are placed with ``place_state`` / ``place_data`` and the compiled epoch constrains
each gathered batch with ``constrain_batch``; XLA inserts the cross-device reductions
(gradients, BatchNorm statistics). Two layouts:

- ``'batch'``: every device holds all replicas' parameters; each batch is split over devices.
  What a large model on several GPUs or a TPU slice wants.
- ``'replica'``: the vmapped replica (seed) axis is split over devices; each device trains its
  own seeds on whole batches. Best for many small models (MLPs); needs replicas % devices == 0.

The mesh may span several processes (``wsjax.hosts``): every array is then a global array
built from host values that every process holds alike (the same seeds give the same index
arrays and keys everywhere), each process filling only its own devices. The dataset itself is
split over the devices along its example axis when the mesh spans processes (``shard_data``):
each device holds its share, and the batch gathered from it inside the step crosses devices
(XLA gathers each device's hits and adds them up, which is exact for uint8 images).
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
    shard_data: bool | None = None  # None: when the mesh spans several processes

    def __post_init__(self):
        if self.mode not in ("batch", "replica"):
            raise ValueError(f"mode={self.mode!r} must be 'batch' or 'replica'")
        if self.shard_data is None:
            processes = {d.process_index for d in self.mesh.devices.flat}
            object.__setattr__(self, "shard_data", len(processes) > 1)

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
        return place(tree, self.state_sharding)

    def place_replicated(self, tree):
        """Puts host values (the same on every process) on every device."""
        return place(tree, self.replicated)

    def place_data(self, tree):
        """Puts dataset arrays (examples first) on the mesh, for the step to gather batches
        from: on every device, or with ``shard_data`` split over the devices, each process
        filling only its own from its host copy (the example axis zero-padded to a multiple
        of the device count; indices never reach the padding)."""
        if not self.shard_data:
            return self.place_replicated(tree)

        def padded(a):
            a = np.asarray(a)
            pad = -len(a) % self.num_devices
            return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a

        return place(jax.tree.map(padded, tree), NamedSharding(self.mesh, P(AXIS)))


def place(tree, sharding: NamedSharding):
    """``jax.device_put(tree, sharding)``, also where ``sharding`` spans several processes:
    there each leaf that is not yet a global array (numpy, or an array on this process's
    devices, the same on every process) becomes one, each process filling its own devices
    from its copy; global arrays are resharded."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == sharding else jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def choose_parallel(mode: str, num_replicas: int, *, conv: bool,
                    shard_data: bool | None = None) -> DataParallel | None:
    """The layout over all devices for ``mode``: ``'none'`` (or one device with ``'auto'``)
    gives None; ``'auto'`` splits batches for conv nets (``conv``) and replicas for small
    models when they divide evenly over the devices, else batches; ``'batch'`` and
    ``'replica'`` as named. ``shard_data`` as in ``DataParallel``."""
    if mode not in ("auto", "none", "batch", "replica"):
        raise ValueError(f"parallel={mode!r} must be 'auto', 'none', 'batch' or 'replica'")
    n = jax.device_count()
    if mode == "none" and jax.process_count() > 1:
        raise ValueError(f"parallel 'none' trains on one device, but this run spans "
                         f"{jax.process_count()} processes: use 'auto', 'batch' or 'replica'")
    if mode == "none" or (mode == "auto" and n == 1):
        return None
    if mode == "auto":
        mode = "replica" if not conv and num_replicas % n == 0 else "batch"
    return DataParallel(make_mesh(), mode, shard_data)
