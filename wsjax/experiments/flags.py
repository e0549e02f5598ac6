"""Typed configs as command-line flags.

A config is a frozen dataclass whose fields are declared with ``option(default, help)``;
fields whose type is another config nest it. ``parser_for(cls)`` makes one flag per field
(``batch_size`` -> ``--batch-size``; names are unique across the nesting), with its help text
and default shown; ``parse(cls, argv)`` returns the typed config. ``flatten`` gives the
``{field: value}`` mapping that a run's ``config.json`` holds, ``unflatten`` the config back.
A config that derives from ``Checked`` checks its values when it is made (from flags or in
code) against the ``check`` rule of each option, and a bad one raises a one-line
``ValueError`` that names the flag and what it must be.

>>> @dataclasses.dataclass(frozen=True)
... class Train:
...     lr: float = option(1e-3, "learning rate")
>>> parse(Train, ["--lr", "0.1"])
Train(lr=0.1)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a value must be: ``test(value) -> bool`` and the words for it (``text``)."""

    test: Callable
    text: str


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _number(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(v))


POSITIVE = Rule(lambda v: _number(v) and v > 0, "a positive finite number")
NON_NEGATIVE = Rule(lambda v: _number(v) and v >= 0, "a finite number >= 0")
FRACTION = Rule(lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
SHARE = Rule(lambda v: _number(v) and 0 < v <= 1, "a fraction in (0, 1]")
PROPER_SHARE = Rule(lambda v: _number(v) and 0 < v < 1, "a fraction strictly between 0 and 1")
RATE = Rule(lambda v: _number(v) and 0 <= v < 1, "a rate in [0, 1)")
COUNT = Rule(lambda v: _integer(v) and v >= 1, "an integer >= 1")
INDEX = Rule(lambda v: _integer(v) and v >= 0, "an integer >= 0")


def option(default, help: str, *, flag: str | None = None, choices: Sequence | None = None,
           nargs: str | int | None = None, metavar=None, parse: Callable | None = None,
           check: Rule | None = None):
    """A config field that is also a flag: ``help`` is its help text; ``flag`` its name when
    not ``--<field-name>`` (e.g. ``--no-warm-start`` for a bool that defaults to True);
    ``nargs`` for tuple fields (``'*'``, ``'+'`` or a count); ``parse(text) -> value`` for a
    value written as one word (e.g. comma-separated widths); ``check`` the ``Rule`` its value
    (each element of a tuple; None always passes) must follow in a ``Checked`` config."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": tuple(choices) if choices else None,
        "nargs": nargs, "metavar": metavar, "parse": parse, "check": check})


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return " ".join(map(_shown, value)) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)


class Checked:
    """Base of a config that checks its own fields when it is made: each option's ``check``
    rule and ``choices``. A bad value raises ``ValueError('--flag value: must be ...')``."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or dataclasses.is_dataclass(value) or "help" not in meta:
                continue
            items = value if isinstance(value, tuple) else (value,)
            rule, choices = meta.get("check"), meta.get("choices")
            for item in items:
                if rule is not None and not rule.test(item):
                    raise ValueError(f"{flag_of(f)} {_shown(value)}: "
                                     f"{'each value ' if len(items) > 1 else ''}must be "
                                     f"{rule.text}")
                if choices is not None and item not in choices:
                    raise ValueError(f"{flag_of(f)} {_shown(value)}: must be one of "
                                     f"{', '.join(map(str, choices))}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every flag's default."""


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _leaf_fields(cls) -> list[tuple[dataclasses.Field, type]]:
    """The option fields of ``cls`` and of the configs nested in it, with their types."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            out += _leaf_fields(hints[f.name])
        else:
            out.append((f, hints[f.name]))
    return out


def _scalar_type(tp):
    """The element type of ``X``, ``X | None`` or ``tuple[X, ...]``."""
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(tp) is tuple or args:
        return _scalar_type(args[0]) if args else str
    return tp


def _add(parser: argparse.ArgumentParser, f: dataclasses.Field, tp) -> None:
    meta = f.metadata
    if "help" not in meta:
        raise TypeError(f"config field {f.name!r} has no help text: declare it with option()")
    flag = flag_of(f)
    kw = {"dest": f.name, "help": meta["help"], "default": f.default}
    scalar = _scalar_type(tp)
    if scalar is bool and not meta["nargs"]:
        kw["action"] = "store_false" if f.default else "store_true"
    else:
        kw["type"] = meta["parse"] or scalar
        for key in ("choices", "nargs", "metavar"):
            if meta[key] is not None:
                kw[key] = meta[key]
    parser.add_argument(flag, **kw)


def parser_for(cls, description: str = "", defaults: Mapping | None = None
               ) -> argparse.ArgumentParser:
    """A parser with one flag per field of the config ``cls``; ``defaults`` override the
    fields' defaults (a script's own, e.g. a different model)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    names = set()
    for f, tp in _leaf_fields(cls):
        if f.name in names:
            raise TypeError(f"two config fields are named {f.name!r}: flags must be unique")
        names.add(f.name)
        _add(parser, f, tp)
    if defaults:
        unknown = set(defaults) - names
        if unknown:
            raise TypeError(f"defaults for unknown fields {sorted(unknown)}")
        parser.set_defaults(**defaults)
    return parser


def unflatten(cls, values: Mapping):
    """The config ``cls`` from a ``{field: value}`` mapping (missing fields keep defaults;
    lists become tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            kwargs[f.name] = unflatten(hints[f.name], values)
        elif f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def flatten(config) -> dict:
    """``{field: value}`` over a config and the configs nested in it."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out.update(flatten(v) if dataclasses.is_dataclass(v) else {f.name: v})
    return out


def parse(cls, argv=None, *, description: str = "", defaults: Mapping | None = None,
          quick: Mapping | None = None):
    """Parses ``argv`` into the config ``cls``. When a ``quick`` field is set, the values of
    ``quick`` replace those of the flags left at their defaults (a CPU-minutes run)."""
    parser = parser_for(cls, description, defaults)
    for action in parser._actions:
        if action.dest == "quick" and quick:
            action.help = f"{action.help}: {dict(quick)} unless set explicitly"
    parser.add_argument("--dry-run", action="store_true",
                        help="print the settings the command would run with (every flag, "
                             "resolved and checked) as JSON, and exit without running")
    values = vars(parser.parse_args(argv))
    dry_run = values.pop("dry_run")
    if values.get("quick") and quick:
        # Parsed again with every default unset, to tell the flags given from the defaults
        # (``--seeds 4`` with --quick means 4 seeds, though 4 is the default).
        unset = object()
        parser.set_defaults(**{a.dest: unset for a in parser._actions if a.dest != "help"})
        given = {k for k, v in vars(parser.parse_args(argv)).items() if v is not unset}
        for name, value in quick.items():
            if name not in given:
                values[name] = value
    config = unflatten(cls, values)
    if dry_run:
        print(json.dumps(flatten(config), indent=1, default=str))
        raise SystemExit(0)
    return config
