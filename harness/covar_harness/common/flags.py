"""Command-line flags read from settings dataclasses, so each default and its help text is stated once.

A field that has a flag carries ``metadata=flag(...)``; :func:`cli_flags` turns the fields of a settings class
into ``add_argument`` calls and :func:`from_args` reads the parsed values back into keyword arguments. Used for
``CCISettings`` (``run`` and ``explain``) and ``DiagnosisSettings`` (``run`` and ``explain``). Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from typing import Any


def flag(
    name: str, help: str, shown: str | None = "{}", *, to_cli: Callable[[Any], Any] | None = None, **argparse: Any
) -> dict[str, Any]:
    """Field metadata: the flag ``name``, its ``help`` text, how the default is shown in it (``shown`` with ``{}``
    for the value; None: not shown), ``to_cli`` turning the field's default into the flag's (e.g. a tuple into a
    comma-separated string), and further ``add_argument`` keywords (``type``, ``choices``, ``action``, ...)."""
    return {"flag": name, "help": help, "shown": shown, "to_cli": to_cli, "argparse": argparse}


def cli_flags(cls: type, prefix: str = "", names: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(flag, ``add_argument`` keywords) for every field of ``cls`` that has a flag, defaults and help text read
    from the class. The parsed value lands under ``prefix + field name``. ``names`` (field -> flag) picks some
    fields under other flags instead (``explain`` has ``--k`` for ``--cci-k``, and only that and ``--layer``)."""
    for f in fields(cls):
        meta = f.metadata
        if "flag" not in meta or (names is not None and f.name not in names):
            continue
        name = meta["flag"] if names is None else names[f.name]
        default: Any = f.default
        if default is MISSING:
            default = f.default_factory()  # type: ignore[operator]  # MISSING ruled out above
        if meta["to_cli"] is not None:
            default = meta["to_cli"](default)
        options = {"dest": prefix + f.name, "default": default, **meta["argparse"]}
        if not {"choices", "action"} & set(options):
            options["metavar"] = name.lstrip("-").replace("-", "_").upper()
        shown = meta["shown"]
        text = meta["help"] if shown is None else f"{meta['help']} (default: {shown.format(options['default'])})"
        yield name, {**options, "help": text}


def from_args(cls: type, args: Any, prefix: str = "") -> dict[str, Any]:
    """The flagged fields of ``cls`` present in parsed ``args`` (under ``prefix + name``) and not None."""
    values = {f.name: getattr(args, prefix + f.name, None) for f in fields(cls) if "flag" in f.metadata}
    return {k: v for k, v in values.items() if v is not None}


def parse_value(text: str) -> Any:
    """A ``key=value`` setting's value (``--segmenter-opt``, ``--model-args``): int, float, bool (true/false,
    yes/no, on/off), else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    return text
