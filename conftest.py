"""Settings every test shares, tests/ and the notebooks in colab/ alike. They go into the
environment before JAX starts, so the subprocesses the tests launch (command lines, several
processes, notebook kernels) inherit them: one persistent compilation cache per test session.
Many tests compile the same programs (same model and shapes, new closures, other processes),
and the cache turns the repeats into lookups; a fresh folder per session keeps runs
independent.

XLA's optimizations stay on: without them (``--xla_backend_optimization_level=0``) a VGG's
initialization compiled 4x faster, but the tests that train conv nets ran 3-8x slower, and CI
took longer in all.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="wsjax-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
