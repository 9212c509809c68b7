"""The commands that analyse finished results without a model: ``rescore`` (metrics, intervals and diagnosis
recomputed from the sample logs under other settings) and ``compare`` (paired tests of two models on the same
samples). Parsers here are argparse only; each handler imports what it needs when it runs.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from covar_harness.catalog.registry import UsageError


def add_rescore(sub) -> None:
    from covar_harness.diagnosis.rules import RULES

    p = sub.add_parser(
        "rescore",
        help="recompute metrics, intervals and diagnosis from sample logs under other settings (no model)",
        description="Recompute every metric, interval and diagnosis of each result from its sample log "
        "(--log-samples) under other settings, with no model loaded; write new result files (and logs) under --out. "
        "Exit 0: all rescored; 1: some could not be (each named, with why); 2: bad input.",
    )
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="result files, or folders of them")
    p.add_argument(
        "--out", type=Path, default=Path("rescored"), help="where the rescored results go (default: rescored)"
    )
    p.add_argument("--driver-rule", default=None, help=f"comma-separated, the first heads: {', '.join(RULES)}")
    p.add_argument("--cci-target", default=None, choices=["pred", "label"], help="the class the diagnosis explains")
    p.add_argument("--fine-rule", default=None, help="a fine rule the run logged (fine_rules.SENSITIVITY or its own)")
    p.add_argument("--null-draws", type=int, default=None, help="permutation draws of the null per sample (0: none)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples of every interval (run: 1000)")
    p.set_defaults(handler="covar_harness.cli.analysis:cmd_rescore")


def cmd_rescore(args: Namespace) -> int:
    from covar_harness.common.console import console, markup, one_line
    from covar_harness.results import files
    from covar_harness.results.rescore import NotClassification, RescoreSettings, rescore_file

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
