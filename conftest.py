"""Settings every test shares, tests/ and the notebooks in colab/ alike. They go into the
environment before JAX starts, so the subprocesses the tests launch (command lines, several
processes, notebook kernels) inherit them.

- XLA compiles for the CPU without LLVM's optimizations (``--xla_backend_optimization_level=0``):
  the tests' programs are small and run briefly, so compiling is most of their time; measured
  here, it made a VGG's random initialization compile in 3 s instead of 14. The programs'
  results are the same computations (no fast-math either way); speed is measured in
  benchmarks, never in tests. ``WSJAX_TEST_XLA_OPT=1`` keeps XLA's default.
- One persistent compilation cache per test session: many tests compile the same programs
  (same model and shapes, new closures, other processes), and the cache turns the repeats
  into lookups. A fresh folder per session keeps runs independent.
"""

import os
import tempfile

if os.environ.get("WSJAX_TEST_XLA_OPT") != "1":
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="wsjax-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
