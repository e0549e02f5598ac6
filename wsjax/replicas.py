"""How the replicas (seeds) of one compiled program share it: vmapped, or unrolled.

``jax.vmap`` is the default: on GPUs and TPUs, and for dense models anywhere, a batched
program is what the hardware wants. A vmapped convolution becomes one grouped convolution,
though, which XLA:CPU runs far off its ungrouped speed (narrow ResNet-18, batch 128, this
project's 2-core CPU, jax 0.10: 1.66 s per seed-step for 4 vmapped seeds against 0.35 s for
one seed alone). Unrolled, the program holds one copy of the step per replica, each an
ordinary convolution, and 4 seeds took 0.30 s per seed-step: full speed, the two cores kept
busier by independent replicas. ``'auto'`` unrolls conv nets on a CPU. Compile time grows with
the replica count (one copy of the step each), which is affordable for the handful of seeds a
CPU can train; pass ``replicas='vmap'`` to an ``Engine`` to compile one batched step instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax.train import has_conv

REPLICA_MODES = ("vmap", "unroll")


def default_replicas(model: nn.Module, input_shape, parallel=None) -> str:
    """``'unroll'`` for conv nets on a CPU (not when replicas are split over devices, which
    needs the vmapped axis), else ``'vmap'``."""
    cpu = jax.default_backend() == "cpu"
    split = parallel is not None and parallel.mode == "replica"
    return "unroll" if cpu and not split and has_conv(model, input_shape) else "vmap"


def resolve_replicas(replicas: str, model: nn.Module, input_shape, parallel=None) -> str:
    """``'vmap'`` or ``'unroll'`` for ``replicas`` (``'auto'``: ``default_replicas``)."""
    if replicas == "auto":
        return default_replicas(model, input_shape, parallel)
    check_replicas(replicas, parallel, "'vmap', 'unroll' or 'auto'")
    return replicas


def check_replicas(replicas: str, parallel=None, choices: str = "'vmap' or 'unroll'") -> None:
    """Raises ``ValueError`` unless ``replicas`` is a layout that works with ``parallel``."""
    if replicas not in REPLICA_MODES:
        raise ValueError(f"replicas={replicas!r} must be {choices}")
    if replicas == "unroll" and parallel is not None and parallel.mode == "replica":
        raise ValueError("replicas='unroll' cannot split replicas over devices "
                         "(parallel mode 'replica'): use replicas='vmap' or parallel 'batch'")


def replica_map(fn: Callable, in_axes: Sequence[int | None], how: str = "vmap",
                spmd_axis_name=None) -> Callable:
    """``fn`` of one replica mapped over the leading replica axis of the arguments whose
    ``in_axes`` entry is 0 (None: shared by every replica); outputs get a leading replica
    axis. ``how='vmap'`` is ``jax.vmap``; ``'unroll'`` traces ``fn`` once per replica and
    stacks the results (the same numbers, as separate ungrouped operations)."""
    if how == "vmap":
        return jax.vmap(fn, in_axes=tuple(in_axes), spmd_axis_name=spmd_axis_name)
    if how != "unroll":
        raise ValueError(f"how={how!r} must be 'vmap' or 'unroll'")
    if spmd_axis_name is not None:
        raise ValueError("unrolled replicas cannot be split over devices (spmd_axis_name="
                         f"{spmd_axis_name!r}): use how='vmap'")
    if any(axis not in (0, None) for axis in in_axes):
        raise ValueError(f"unrolled replicas map axis 0 or None, got in_axes={in_axes}")

    def mapped(*args):
        if len(args) != len(in_axes):
            raise ValueError(f"{len(args)} arguments for {len(in_axes)} in_axes")
        leaves = [leaf for arg, axis in zip(args, in_axes) if axis == 0
                  for leaf in jax.tree.leaves(arg)]
        if any(jnp.ndim(leaf) == 0 for leaf in leaves):
            raise ValueError("a mapped argument has a scalar leaf: mapped leaves need a leading "
                             "replica axis (use in_axes None for shared values)")
        sizes = {jnp.shape(leaf)[0] for leaf in leaves}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"mapped arguments need one replica count >= 1, got "
                             f"{sorted(sizes)}")
        (count,) = sizes
        outs = [fn(*(jax.tree.map(lambda a: a[r], arg) if axis == 0 else arg
                     for arg, axis in zip(args, in_axes)))
                for r in range(count)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return mapped
