import tempfile

import jax
import pytest

from harness import SHARED_DATA
from wsjax.data import synthetic_dataset

# Many tests compile the same programs (same model and shapes, new closures); XLA's persistent
# cache turns the repeats into lookups. A fresh folder per session keeps runs independent.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="wsjax-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
