"""The ``covar-harness`` command line (DESIGN section 9).

Parsing is cheap and imports nothing heavy: each command's handler imports what it needs, so ``--help``,
``ls`` and ``plugins`` never load torch. Exit codes: 0 ok, 1 a model x task pair failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from covar_harness.registry import UsageError

EXAMPLES = """examples:
  covar-harness run --models demo --tasks 'covar-shapes/*'
  covar-harness run --models openclip:ViT-B-32-quickgelu/openai --tasks 'covar/*' --log-samples
  covar-harness leaderboard results --reference paper
  covar-harness ls models
"""


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="evaluate models on tasks and write one result file per pair",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sel = p.add_argument_group("selection")
    sel.add_argument("--models", required=True, help="comma-separated specs, names, globs or groups (all, paper, demo)")
    sel.add_argument("--tasks", required=True, help="comma-separated task names, globs, tags or YAML paths")
    sel.add_argument("--include-path", action="append", default=[], metavar="DIR",
                     help="extra folder (or file) of task YAML; repeatable")
    io_ = p.add_argument_group("input / output")
    io_.add_argument("--output-dir", default="results", type=Path, help="where result files go (default: results)")
    io_.add_argument("--data-dir", default=None, type=Path,
                     help="dataset root (default: $COVAR_HARNESS_DATA or ~/.cache/covar-harness/data)")
    io_.add_argument("--cache-dir", default=None, help="model weight cache (default: HF_HOME / library default)")
    io_.add_argument("--log-samples", action="store_true", help="also write <task>.samples.jsonl, one line per image")
    io_.add_argument("--overwrite", action="store_true", help="redo pairs whose result file exists")
    io_.add_argument("--dry-run", action="store_true", help="print the models x tasks plan; load nothing")
    ex = p.add_argument_group("execution")
    ex.add_argument("--batch-size", type=int, default=64)
    ex.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(4, CPUs))")
    ex.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ex.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ex.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images per task")
    ex.add_argument("--seed", type=int, default=0)
    at = p.add_argument_group("attribution")
    at.add_argument("--attribution", default="none", help="attributor name (cci, ...) or none")
    p.set_defaults(handler="covar_harness.commands:cmd_run")


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list registered models, tasks, attributors, segmenters, formats or schemes")
    p.add_argument("what", choices=["models", "tasks", "attributors", "segmenters", "formats", "schemes"])
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.set_defaults(handler="covar_harness.commands:cmd_ls")


def _add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list loaded plugins, their distributions and hooks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="covar_harness.commands:cmd_plugins")


def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="paper-style tables from a folder of result files")
    p.add_argument("results_dir", type=Path)
    p.add_argument("--format", default="table", choices=["table", "markdown", "csv", "json"])
    p.add_argument("--reference", default=None, choices=["paper"], help="add published rows, marked as such")
    p.set_defaults(handler="covar_harness.commands:cmd_leaderboard")


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check result files against the schema (for leaderboard CI)")
    p.add_argument("files", nargs="+", type=Path)
    p.set_defaults(handler="covar_harness.commands:cmd_validate")


# Each entry adds one subcommand; handlers are "module:function" strings imported only when used.
COMMANDS: list[Callable] = [_add_run, _add_ls, _add_plugins, _add_leaderboard, _add_validate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covar-harness",
        description="Evaluate CLIP-style models: zero-shot accuracy, CCI attribution, BG-Er / Fine-Er diagnosis.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from covar_harness import __version__

    parser.add_argument("--version", action="version", version=f"covar-harness {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import importlib
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    module, _, func = args.handler.partition(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    except UsageError as exc:
        print(f"covar-harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covar-harness: interrupted; finished pairs are saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
