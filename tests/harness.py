"""What tests share besides fixtures: where the checkout and the offline data are, and running
code in a fresh interpreter (with fake CPU devices). A module of its own, not conftest.py:
colab/ has a conftest.py too, and ``from conftest import ...`` could find either."""

import os
import subprocess
import sys
from pathlib import Path

from wsjax.hosts import cpu_env

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSJAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_python(code: str, *, devices: int = 1, timeout: int = 600, cwd=REPO, env=None):
    """Runs ``code`` in a fresh interpreter with ``devices`` fake CPU devices; returns stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=cpu_env(devices, env))
    if out.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    return out.stdout
