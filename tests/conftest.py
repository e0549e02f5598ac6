import os
import subprocess
import sys
from pathlib import Path

import tempfile

import jax
import pytest

from wsjax.data import synthetic_dataset

# Many tests compile the same programs (same model and shapes, new closures); XLA's persistent
# cache turns the repeats into lookups. A fresh folder per session keeps runs independent.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="wsjax-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSJAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny():
    """A small learnable dataset of 8x8 images."""
    return synthetic_dataset(num_train=300, num_test=100, num_classes=4, image_shape=(8, 8, 3),
                             noise=40.0)


@pytest.fixture(scope="session")
def shared_cifar():
    path = SHARED_DATA / "cifar10.npz"
    if not path.exists():
        pytest.skip(f"no offline CIFAR-10 at {path}")
    return SHARED_DATA


def run_python(code: str, *, devices: int = 1, timeout: int = 600, cwd=REPO, env=None):
    """Runs ``code`` in a fresh interpreter with ``devices`` fake CPU devices; returns stdout."""
    full_env = {**os.environ, **(env or {}),
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=full_env)
    if out.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    return out.stdout
