"""Settings every test shares, tests/ and the notebooks in colab/ alike, and how CI shares the
slow tests out over its two environments.

The settings go into the environment before JAX starts, so the subprocesses the tests launch
(command lines, several processes, notebook kernels) inherit them:

- One persistent compilation cache per test session. Many tests compile the same programs (same
  model and shapes, new closures, other processes), and the cache turns the repeats into
  lookups; a fresh folder per session keeps runs independent.
- XLA's backend optimization level 1 instead of the default 3. The tests spend most of their
  time compiling, much of it LLVM optimizing the random number generator of every layer's
  initializer: a narrow ResNet-18's initialization compiled in 7.9 s at level 3 and 3.6 s at
  level 1 (jax 0.10.2, this 2-core machine), a VGG-19's forward test took 15 s and 7 s, and
  five slow tests (conv training included) took 145 s instead of 172 s in all. Level 0 goes too
  far: the tests that train conv nets ran 3-8x slower, and CI took longer in all. Runs outside
  the tests keep XLA's default.

``once``: a test marked ``@pytest.mark.once`` (and every notebook) checks logic that does not
depend on the versions of jax, flax, optax or orbax (the study scripts, the notebooks, the
budget solver...), or one whose library calls other tests also make. CI runs each of them in
one of its two environments: ``WSJAX_ONCE_HERE`` names the ones to run, ``WSJAX_ONCE_ELSEWHERE``
those the other environment runs (by module, ``experiments`` for ``tests/test_experiments.py``,
or by notebook, ``study``). Unset, every test runs. A ``once`` test neither list names is an
error, so a new one cannot silently run nowhere.
"""

import os
import tempfile

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="wsjax-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1"]).strip()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "once: CI runs it in one of its two environments (see conftest.py)")


def _once_name(item) -> str | None:
    """The name CI shares a ``once`` test out by: its notebook's or its module's, or None when
    the test runs in every environment."""
    if item.path.suffix == ".ipynb":
        return item.path.stem
    if item.get_closest_marker("once"):
        return item.path.stem.removeprefix("test_")
    return None


def _listed(variable: str) -> set[str]:
    """The names an environment variable lists, separated by spaces or commas."""
    return set(os.environ.get(variable, "").replace(",", " ").split())


def pytest_collection_modifyitems(config, items):
    if "WSJAX_ONCE_HERE" not in os.environ:
        return
    here, elsewhere = _listed("WSJAX_ONCE_HERE"), _listed("WSJAX_ONCE_ELSEWHERE")
    keep, dropped, unlisted = [], [], set()
    for item in items:
        name = _once_name(item)
        if name is None or name in here:
            keep.append(item)
        else:
            dropped.append(item)
            if name not in elsewhere:
                unlisted.add(name)
    if unlisted:
        raise pytest.UsageError(
            f"once tests of {sorted(unlisted)} run in neither CI environment: add each name "
            f"to WSJAX_ONCE_HERE or WSJAX_ONCE_ELSEWHERE (.ci/run)")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
