"""The ``covar-harness`` command line (docs/design.md section 9).

Parsing imports no torch: each command's handler is a "module:function" string that
``main`` imports only when that command runs (the one deliberate lazy import of the CLI), so ``--help``, ``ls``
and ``plugins`` never load torch. Exit codes: 0 ok, 1 a model x task pair failed, 2 usage error.
This module holds ``main``, ``build_parser``, ``COMMANDS`` and the core commands' parsers (run, ls, data,
plugins); ``reporting`` the results commands' (leaderboard, validate, init-leaderboard, report, export,
rescore, compare), ``tools`` the standalone tools' (explain, build-covar, sanity, faithfulness).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from covar_harness import __version__
from covar_harness.attribution.settings import FLAG_PREFIX as CCI_PREFIX
from covar_harness.catalog.registry import UsageError
from covar_harness.cli.reporting import (
    add_compare,
    add_export,
    add_init_leaderboard,
    add_leaderboard,
    add_report,
    add_rescore,
    add_validate,
)
from covar_harness.cli.tools import add_build_covar, add_explain, add_faithfulness, add_sanity, cci_flags, rise_flags
from covar_harness.common.console import one_line, stdout_closed
from covar_harness.common.flags import cli_flags
from covar_harness.common.interrupt import Terminated, terminate_as_interrupt
from covar_harness.concepts.settings import ConceptSettings
from covar_harness.diagnosis.distractors import DistractorSettings
from covar_harness.diagnosis.rules import DiagnosisSettings
from covar_harness.models.args import PRECISIONS
from covar_harness.run.batch_size import batch_size_value
from covar_harness.run.scale_flags import add_scale_flags

EXAMPLES = """examples:
  covar-harness run --models demo --tasks 'covar-shapes/*'
  covar-harness run --models openclip:ViT-B-32-quickgelu/openai --tasks 'covar/*' --log-samples
  covar-harness leaderboard results --reference paper
  covar-harness ls models
"""


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="evaluate models on tasks and write one result file per pair",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sel = p.add_argument_group("selection")
    sel.add_argument("--models", required=True, help="comma-separated specs, names, globs or groups (all, paper, demo)")
    sel.add_argument("--tasks", required=True, help="comma-separated task names, globs, tags or YAML paths")
    sel.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder (or file) of task YAML; repeatable",
    )
    io_ = p.add_argument_group("input / output")
    io_.add_argument("--output-dir", default="results", type=Path, help="where result files go (default: results)")
    io_.add_argument(
        "--data-dir",
        default=None,
        type=Path,
        help="dataset root (default: $COVAR_HARNESS_DATA or ~/.cache/covar-harness/data)",
    )
    io_.add_argument("--cache-dir", default=None, help="model weight cache (default: HF_HOME / library default)")
    io_.add_argument("--log-samples", action="store_true", help="also write <task>.samples.jsonl, one line per image")
    io_.add_argument("--overwrite", action="store_true", help="redo pairs whose result file exists")
    io_.add_argument("--dry-run", action="store_true", help="print the models x tasks plan; load nothing")
    ex = p.add_argument_group("execution")
    ex.add_argument(
        "--batch-size",
        type=batch_size_value,
        default=64,
        help="images per batch, or auto: the largest that fits, probed once per model on CUDA (default: 64)",
    )
    ex.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(4, CPUs))")
    ex.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ex.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ex.add_argument(
        "--model-args",
        default=None,
        metavar="KEY=VALUE,...",
        help="loading settings for every model: precision, device, cache_dir (one model: SPEC@precision=bf16)",
    )
    ex.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images per task")
    ex.add_argument("--seed", type=int, default=0)

    add_scale_flags(ex)
    _add_run_analysis(p)
    p.set_defaults(handler="covar_harness.cli.commands:cmd_run")


def _add_run_analysis(p) -> None:
    """The attribution and diagnosis flags of ``run`` (defaults and help from their settings dataclasses)."""
    at = p.add_argument_group("attribution (CCI, docs/design.md section 7)")
    at.add_argument(
        "--attribution",
        default="auto",
        help="attributor name (cci, random, ...), none, or auto (default: cci on tasks with masks)",
    )
    for flag, options in cci_flags(prefix=CCI_PREFIX):  # defaults and help text: attribution.CCISettings
        at.add_argument(flag, **options)
    for flag, options in rise_flags():  # --rise-*: attribution.rise.RISESettings (used by --attribution rise)
        at.add_argument(flag, **options)
    at.add_argument(
        "--save-maps",
        default=None,
        type=Path,
        metavar="DIR",
        help="write PNG overlays (image, importance map, mask outline) of attributed samples",
    )
    dg = p.add_argument_group("diagnosis (BG-Er / Fine-Er, docs/design.md section 8; runs whenever attribution does)")
    dg.add_argument(
        "--segmenter",
        default="auto",
        help="foreground masks: auto (dataset masks, else groundedsam), dataset, groundedsam, a plugin, "
        "or none (no diagnosis)",
    )
    dg.add_argument(
        "--segmenter-opt",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a setting of the segmenter (repeatable; under auto: of its groundedsam fallback), e.g. "
        "box_threshold=0.35, text_threshold=0.25, multi_box=false, detector=PATH, sam=PATH, prompts=FILE.json",
    )
    for flag, options in cli_flags(DiagnosisSettings, prefix="diagnosis_"):  # defaults: DiagnosisSettings
        dg.add_argument(flag, **options)
    for flag, options in cli_flags(DistractorSettings, prefix="distractors_"):  # defaults: DistractorSettings
        dg.add_argument(flag, **options)
    cn = p.add_argument_group("concept naming (docs/design.md section 11; after the diagnosis)")
    for flag, options in cli_flags(ConceptSettings, prefix="concepts_"):  # defaults: ConceptSettings
        cn.add_argument(flag, **options)


def _add_ls(sub) -> None:
    p = sub.add_parser(
        "ls", help="list registered models, tasks, attributors, segmenters, formats, schemes or concept banks"
    )
    p.add_argument("what", choices=["models", "tasks", "attributors", "segmenters", "formats", "schemes", "concepts"])
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.add_argument("--data-dir", default=None, type=Path, help="dataset root for the tasks' data column")
    p.set_defaults(handler="covar_harness.cli.listing:cmd_ls")


def _add_data(sub) -> None:
    p = sub.add_parser(
        "data",
        help="where each task's data goes (where), or download it from the Hugging Face Hub (fetch)",
        description="`where` prints each task's data status, path and expected layout; `fetch` downloads tasks "
        "whose data is on the Hugging Face Hub into its cache (an explicit action: run never downloads data "
        "you did not ask for, except hub datasets named by a task).",
    )
    p.add_argument("action", choices=["where", "fetch"])
    p.add_argument("tasks", help="comma-separated task names, globs, tags or YAML paths")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.add_argument("--data-dir", default=None, type=Path, help="dataset root (default: $COVAR_HARNESS_DATA)")
    p.set_defaults(handler="covar_harness.cli.commands_results:cmd_data")


def _add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list loaded plugins, their distributions and hooks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="covar_harness.cli.listing:cmd_plugins")


# Each entry adds one subcommand; handlers are "module:function" strings imported only when used.
COMMANDS: list[Callable] = [
    _add_run,
    _add_ls,
    _add_data,
    _add_plugins,
    add_leaderboard,
    add_validate,
    add_init_leaderboard,
    add_explain,
    add_build_covar,
    add_sanity,
    add_report,
    add_faithfulness,
    add_export,
    add_rescore,
    add_compare,
]


class RaisingParser(argparse.ArgumentParser):
    """A parser whose errors raise :class:`UsageError` instead of printing usage and exiting: what the Python
    API (``covar_harness.evaluate``) parses its keyword options with, so it gets the CLI's checks as exceptions."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser(raise_errors: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``raise_errors``: errors raise UsageError (``RaisingParser``), for the API."""
    parser_class = RaisingParser if raise_errors else argparse.ArgumentParser
    parser = parser_class(
        prog="covar-harness",
        description="Evaluate CLIP-style models: zero-shot accuracy, CCI attribution, BG-Er / Fine-Er diagnosis.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    parser.add_argument("--version", action="version", version=f"covar-harness {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # -v also after the subcommand; SUPPRESS keeps a -v given before it
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show debug logs and tracebacks"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    module, _, func = args.handler.partition(":")
    try:
        with terminate_as_interrupt():
            return int(getattr(importlib.import_module(module), func)(args) or 0)
    except UsageError as exc:
        print(f"covar-harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"covar-harness: {how}; finished pairs are saved, rerun to resume", file=sys.stderr)
        return code
    except BrokenPipeError:  # `covar-harness ... | head`: the reader has gone, nothing to report
        return stdout_closed()
    except Exception as exc:  # a bug, not bad input: one line by default, the traceback with -v
        if args.verbose:
            raise

        print(
            f"covar-harness: internal error: {type(exc).__name__}: {one_line(exc)[:500]} "
            "(rerun with -v for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
