import pytest

from harness import SHARED_DATA
from wsjax.data import synthetic_dataset


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
