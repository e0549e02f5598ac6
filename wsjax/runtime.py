"""What the code is running on: the accelerator the machine has and the one JAX uses.

On Colab, upgrading jax without its CUDA or TPU plugin leaves JAX silently on the CPU, where a
run that takes minutes takes hours. ``check_backend`` turns that into an error naming the fix;
``describe`` is the runtime report the notebooks print first.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex")


def expected_accelerator(dev: str | os.PathLike = "/dev", environ=None) -> str | None:
    """``'gpu'`` or ``'tpu'`` when the machine has one (by its device files and the variables
    Colab and Cloud TPU VMs set), else ``None``. Independent of what JAX picked."""
    environ = os.environ if environ is None else environ
    dev = Path(dev)
    if any(dev.glob("nvidia[0-9]*")) or environ.get("COLAB_GPU") == "1":
        return "gpu"
    if (any(dev.glob("accel[0-9]*")) or environ.get("TPU_ACCELERATOR_TYPE")
            or environ.get("COLAB_TPU_ADDR")):
        return "tpu"
    # TPU v5e/v6e VMs expose the chips as VFIO groups, which other hosts can have too: only
    # trusted on Colab.
    if environ.get("COLAB_RELEASE_TAG") and any(p.name.isdigit() for p in dev.glob("vfio/*")):
        return "tpu"
    return None


def check_backend(expected: str | None = None) -> str:
    """Returns JAX's backend (``'cpu'``, ``'gpu'``, ``'tpu'``); raises ``RuntimeError`` when
    the machine has an accelerator (``expected``, default ``expected_accelerator()``) but JAX
    fell back to the CPU."""
    expected = expected_accelerator() if expected is None else expected
    backend = jax.default_backend()
    if expected and backend == "cpu":
        plugin = "jax[cuda12]" if expected == "gpu" else "jax[tpu]"
        raise RuntimeError(
            f"this machine has a {expected.upper()} but JAX {jax.__version__} runs on the CPU: "
            f"its {expected.upper()} plugin is missing or does not match jax (an install "
            f"upgraded jax?). Fix: on Colab, Runtime > Disconnect and delete runtime, then run "
            f"again without upgrading jax (wsjax installs on the preinstalled one); elsewhere "
            f"`pip install -U '{plugin}'` so jax and its plugin match.")
    return backend


def versions() -> dict[str, str]:
    """Installed versions of Python and the JAX stack (``'-'`` for a missing package)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def describe() -> dict:
    """The runtime: backend, devices (count and kind), hosts, and package versions."""
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_count": len(devices),
            "device_kind": devices[0].device_kind, "process_count": jax.process_count(),
            "expected_accelerator": expected_accelerator(), "colab": "google.colab" in sys.modules
            or bool(os.environ.get("COLAB_RELEASE_TAG")), **versions()}


def report() -> str:
    """``describe()`` as two lines for a notebook or a log."""
    d = describe()
    head = (f"{d['device_count']} x {d['device_kind']} ({d['backend']}), "
            f"{d['process_count']} process{'es' if d['process_count'] > 1 else ''}"
            + (", Colab" if d["colab"] else ""))
    stack = ", ".join(f"{k} {d[k]}" for k in ("python", *PACKAGES))
    return f"{head}\n{stack}"
