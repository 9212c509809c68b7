"""The commands that analyse finished results without a model: ``rescore`` (metrics, intervals and diagnosis
recomputed from the sample logs under other settings) and ``compare`` (paired tests of two models on the same
samples). Parsers here are argparse only; each handler imports what it needs when it runs.
"""

from __future__ import annotations

import json
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import console, markup, one_line, write_stdout
from covar_harness.leaderboard.compare import compare, compare_subsets
from covar_harness.leaderboard.readers import Table
from covar_harness.leaderboard.render import render_markdown, render_rich
from covar_harness.results import files
from covar_harness.run.rescore import NotClassification, RescoreSettings, rescore_file


def cmd_rescore(args: Namespace) -> int:
    rules = None if args.driver_rule is None else tuple(r.strip() for r in args.driver_rule.split(",") if r.strip())
    asked = RescoreSettings(rules, args.cci_target, args.fine_rule, args.null_draws, args.bootstrap)
    paths, problems = files.expand_paths(args.results)
    err, bad, done = console(stderr=True), len(problems), 0
    for path, why in problems:
        err.print(f"[yellow]{markup(path)}: {markup(why)}[/yellow]")
    for path in paths:
        try:
            rescored = rescore_file(path, asked, args.out)
        except NotClassification:
            continue  # a faithfulness result in the folder: nothing to rescore
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line per result that cannot be rescored
            bad += 1
            err.print(
                f"[yellow]not rescored {markup(path)}: {markup(one_line(str(exc) or type(exc).__name__))}[/yellow]"
            )
            continue
        done += 1
        for item in rescored.not_rescored:
            err.print(f"[yellow]{markup(path)}: not rescored: {markup(item)}[/yellow]")
    console().print(f"rescored {done} result(s) into {markup(args.out)}" + (f"; {bad} could not be" if bad else ""))
    return 1 if bad else 0


def cmd_compare(args: Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.results.is_dir():
        raise UsageError(f"results folder {args.results} does not exist")
    if not 1 <= args.bootstrap <= 100_000:
        raise UsageError("--bootstrap must be in [1, 100000]")
    if args.between is not None:
        pair = [t.strip() for t in args.between.split(",") if t.strip()]
        if len(models) != 1 or len(pair) != 2 or args.tasks is not None:
            raise UsageError("--between TASK_A,TASK_B takes exactly two tasks and one model (--models M), no --tasks")
        rows, notes = compare_subsets(args.results, models[0], pair[0], pair[1], args.bootstrap, args.seed)
        a, b, title = pair[0], pair[1], f"{models[0]}: {pair[0]} (A) vs {pair[1]} (B), paired by source object"
    else:
        if len(models) != 2:
            raise UsageError("--models takes exactly two model specs: A,B")
        tasks = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
        rows, notes = compare(args.results, models[0], models[1], tasks, args.bootstrap, args.seed)
        a, b, title = models[0], models[1], None
    err = console(stderr=True)
    for note in notes:
        err.print(f"[yellow]{markup(note)}[/yellow]")
    if args.format == "json":
        write_stdout(json.dumps({"a": a, "b": b, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
        return 0

    table = compare_table(a, b, rows, title)
    if args.format == "markdown":
        write_stdout(render_markdown([table]))
    else:
        render_rich([table], console())
    return 0


def compare_table(a: str, b: str, rows: list, title: str | None = None) -> Any:
    """The comparison as a leaderboard table (``compare`` and ``leaderboard --compare A,B``)."""

    caption = (
        "Differences in points; 95% paired bootstrap interval; p: McNemar (acc1) or bootstrap; * p < 0.05. "
        "bg_er: raw share of errors under the named rule; bg_sufficient_rate: the counterfactual truth."
    )
    title = title or f"{a} (A) vs {b} (B), paired"
    return Table(title, COMPARE_COLUMNS, [_cells(r) for r in rows], caption=caption)


def leaderboard_comparison(folder: Path, spec: str) -> Any:
    """``leaderboard --compare A,B``: the paired comparison table of the two models in ``folder``."""

    models = [m.strip() for m in spec.split(",") if m.strip()]
    if len(models) != 2:
        raise UsageError("--compare takes exactly two model specs: A,B")
    rows, notes = compare(folder, models[0], models[1])
    for note in notes:
        console(stderr=True).print(f"[yellow]{markup(note)}[/yellow]")
    return compare_table(models[0], models[1], rows)


COMPARE_COLUMNS = ["task", "metric", "A", "B", "A - B", "95% CI", "p", "test", "n", "unit"]


def _cells(r) -> list:
    pct = lambda v: None if v is None else round(100 * v, 1)  # noqa: E731
    ci = "-" if r.interval is None else f"[{100 * r.interval[0]:.1f}, {100 * r.interval[1]:.1f}]"
    p = "-" if r.p is None else f"{r.p:.3g}" + (" *" if r.significant() else "")
    return [r.task, r.title, pct(r.a), pct(r.b), pct(r.difference), ci, p, r.test, r.n, r.unit]
