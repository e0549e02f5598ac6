"""``python -m wsjax <command> [flags]``: the ``wsjax`` command."""

from wsjax.experiments.cli import main

main()
