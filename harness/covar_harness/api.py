"""The Python entry point: ``covar_harness.evaluate(models=[...], tasks=[...], **options)``, as ``run`` does it.

The options are exactly ``covar-harness run``'s (``limit=20`` for ``--limit 20``, ``cci_k=3`` for ``--cci-k 3``):
each keyword becomes its flag and goes through ``run``'s own parser (``run_arguments``), so the API gets the
CLI's types, conversions and checks (a bool for an on/off flag, one folder for ``include_path='/dir'``), and
the parsed arguments, one options object for both, go to the same ``prepare_run``. Result files are
written only when ``output_dir`` is given; otherwise the run writes into a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tempfile
from argparse import Namespace
from pathlib import Path
from typing import Any

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.cli.commands import prepare_run
from covar_harness.cli.main import build_parser
from covar_harness.results import files
from covar_harness.results import files as results
from covar_harness.run.evaluator import run
from covar_harness.run.progress import progress_reporter
from covar_harness.run.rescore import NotClassification, RescoreSettings, rescore_file


def run_defaults() -> dict[str, Any]:
    """``run``'s options and their defaults, as the parser gives them (keyword names: ``--cci-k`` -> ``cci_k``)."""

    args = build_parser().parse_args(["run", "--models", "-", "--tasks", "-"])
    return {k: v for k, v in vars(args).items() if k not in ("models", "tasks", "command", "handler", "verbose")}


def evaluate(
    models: list[str] | str, tasks: list[str] | str, *, output_dir: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Evaluate models x tasks; return ``{"results": [result records], "outcomes": [{model, task, status, ...}]}``.

    A pair that fails is in ``outcomes`` with its error (the others still run); bad options raise ``UsageError``
    before anything loads. With ``log_samples=True`` each record also holds ``"samples"`` (the per-image log).
    """
    defaults = run_defaults()
    unknown = sorted(set(options) - set(defaults) - {"dry_run"})
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown option {unknown[0]!r} for evaluate(){hint} (options are run's flags)")
    if options.get("dry_run"):
        raise UsageError("evaluate() runs the pairs; use `covar-harness run --dry-run` to see a plan")
    options.pop("dry_run", None)
    with tempfile.TemporaryDirectory(prefix="covar-harness-") as scratch:
        out = output_dir if output_dir is not None else scratch
        return _run(run_arguments(models, tasks, {**options, "output_dir": out}))


def run_arguments(models: Any, tasks: Any, options: dict[str, Any]) -> Namespace:
    """Keyword options as ``run``'s parsed arguments: each value becomes its flag and goes through the parser,
    so the API gets exactly the CLI's conversions and checks (``limit='5'`` is 5, ``limit=2.5`` and
    ``overwrite='false'`` are UsageErrors); one string for a repeatable flag (``include_path``) is one value."""

    parser = build_parser(raise_errors=True)
    actions = {a.dest: a for a in _subparser(parser, "run")._actions if a.option_strings}
    argv = ["run", "--models", _names("models", models), "--tasks", _names("tasks", tasks)]
    for name, value in options.items():
        argv += _flag_tokens(name, value, actions[name])
    return parser.parse_args(argv)


def _names(what: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise UsageError(f"evaluate(): {what} must be a name or a non-empty list of names, got {_short(value)}")


def _flag_tokens(name: str, value: Any, action: argparse.Action) -> list[str]:
    """The command-line tokens of one keyword option (``[]``: the default)."""
    flag = next(s for s in action.option_strings if s.startswith("--"))
    if action.nargs == 0:  # on/off flags: a real bool, never a truthy string
        if not isinstance(value, bool):
            raise UsageError(f"evaluate(): {name} must be True or False, got {_short(value)}")
        return [flag] if value != action.default else []
    if value is None:
        return []
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, (str, os.PathLike)) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"evaluate(): {name} must be a value or a list of values, got {_short(value)}")
        return [f"{flag}={_token(name, item, action)}" for item in items]
    if isinstance(value, dict) and name == "model_args":
        value = ",".join(f"{k}={v}" for k, v in value.items())
    return [f"{flag}={_token(name, value, action)}"]


def _token(name: str, value: Any, action: argparse.Action) -> str:
    """One value as the parser reads it: numbers for numeric flags, text or paths for the others."""
    numeric = action.type not in (None, str, Path)
    allowed: tuple[type, ...] = (str, int, float) if numeric else (str, os.PathLike)
    if isinstance(value, bool) or not isinstance(value, allowed):
        kind = "a number" if numeric else "a string or path"
        raise UsageError(f"evaluate(): {name} must be {kind}, got {_short(value)}")
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _run(args: Namespace) -> dict[str, Any]:
    prepared = prepare_run(args)
    with progress_reporter(len(prepared.plan)) as reporter:  # lines on stderr when it is not a terminal
        outcomes = run(prepared.models, prepared.tasks, prepared.catalog, prepared.options, reporter, prepared.plan)
    records = []
    for o in outcomes:
        if o.status in ("done", "skipped") and o.path.is_file():
            record = results.load(o.path)
            log = results.samples_path(o.path)
            if args.log_samples and log.is_file():
                record["samples"] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
            records.append(record)
    summary = [
        {"model": o.model, "task": o.task, "status": o.status, "error": o.error, "path": str(o.path)} for o in outcomes
    ]
    return {"results": records, "outcomes": summary}


def load_task(name: str, include_path: list[str] | None = None):
    """A task's configuration (``TaskConfig``) by name, glob match or YAML path, as ``--tasks`` resolves it."""

    found = load_catalog(include_path or []).tasks.resolve(name)
    if len(found) != 1:
        raise UsageError(f"{name!r} names {len(found)} tasks ({', '.join(c.task for c in found[:5])}); name one")
    return found[0]


def rescore(
    results: str | Path | list[str | Path],
    *,
    out: str | Path | None = None,
    driver_rule: str | list[str] | None = None,
    cci_target: str | None = None,
    fine_rule: str | None = None,
    null_draws: int | None = None,
    bootstrap: int | None = None,
) -> list[dict[str, Any]]:
    """``covar-harness rescore`` from Python: each result (files, or folders of them) recomputed from its sample
    log under the given settings, no model loaded; returns the rescored result records (each with ``"samples"``,
    its rescored log). Written under ``out`` when given. A result that cannot be rescored raises ValueError
    naming it; bad settings raise UsageError."""

    rules = driver_rule.split(",") if isinstance(driver_rule, str) else driver_rule
    asked = RescoreSettings(
        None if rules is None else tuple(r.strip() for r in rules if r.strip()),
        cci_target,
        fine_rule,
        null_draws,
        bootstrap,
    )
    given = [results] if isinstance(results, (str, Path)) else results
    paths, problems = files.expand_paths(Path(p) for p in given)
    if problems:
        raise ValueError(f"{problems[0][0]}: {problems[0][1]}")
    records = []
    for path in paths:
        try:
            done = rescore_file(path, asked, None if out is None else Path(out))
        except NotClassification:
            continue
        except ValueError as exc:  # one line naming the file (UsageError, bad settings, passes through)
            raise ValueError(f"{path}: {exc}") from None
        records.append({**done.result, "samples": done.samples})
    return records
