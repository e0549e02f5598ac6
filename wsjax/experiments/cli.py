"""The ``wsjax`` command: ``wsjax <command> [flags]`` runs one experiment (``wsjax <command>
--help`` lists its flags); ``wsjax`` alone lists the commands."""

from __future__ import annotations

import importlib
import sys

from wsjax.experiments import COMMANDS


def usage() -> str:
    """The list of commands."""
    width = max(map(len, COMMANDS))
    lines = ["usage: wsjax <command> [flags]   (wsjax <command> --help: its flags)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    """Dispatches ``argv`` (default ``sys.argv[1:]``) to a command's ``main`` under
    ``wsjax.experiments.common.main_guard`` (bad input ends with a one-line error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        sys.exit(f"error: unknown command {argv[0]!r}\n\n{usage()}")
    module = importlib.import_module(f"wsjax.experiments.{name}")
    from wsjax.experiments.common import main_guard  # imports jax: not for the listing
    # As typed: the program name in --help and the command a run's provenance records.
    sys.argv = [f"wsjax {name}", *argv[1:]]
    main_guard(module.main, argv[1:])


if __name__ == "__main__":
    main()
