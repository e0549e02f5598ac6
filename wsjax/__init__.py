"""wsjax: warm-starting neural network training in pure JAX."""
__version__ = "0.1.0"
