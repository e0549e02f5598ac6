"""``python -m experiments.gpu_suite``: the GPU suite (``wsjax.experiments.gpu_suite``), run
from a source checkout (``PYTHONPATH=.`` where wsjax is not installed)."""

from wsjax.experiments.common import main_guard
from wsjax.experiments.gpu_suite import main

if __name__ == "__main__":
    main_guard(main)
