"""Baselines that wsjax is measured against (imported only by the benchmarks that need them:
each pulls in its own framework, e.g. PyTorch)."""
