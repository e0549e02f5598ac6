"""The notebooks run under nbmake (``python -m pytest`` collects them) in QUICK mode on the CPU,
with the offline CIFAR-10 beside the checkout when it is there (they fall back to synthetic data
when it is not). Their kernels inherit this environment."""

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("WSJAX_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))

os.environ["WSJAX_QUICK"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if (SHARED_DATA / "cifar10.npz").exists():
    os.environ.setdefault("WSJAX_DATA_DIR", str(SHARED_DATA))
# The compilation cache and XLA flags every kernel shares, and which CI environment runs
# which notebook: ../conftest.py.
