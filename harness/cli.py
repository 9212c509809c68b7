"""The ``covar-harness`` command line (docs/design.md section 9).

Parsing is cheap and imports nothing heavy: each command's handler imports what it needs, so ``--help``,
``ls`` and ``plugins`` never load torch. Exit codes: 0 ok, 1 a model x task pair failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from covar_harness.attribution.settings import DEFAULTS as CCI_DEFAULTS
from covar_harness.attribution.settings import FLAG_PREFIX as CCI_PREFIX
from covar_harness.attribution.settings import CCISettings
from covar_harness.diagnosis import DiagnosisSettings
from covar_harness.flags import cli_flags
from covar_harness.models import PRECISIONS
from covar_harness.registry import UsageError

EXPLAIN_FLAGS = {"k": "--k", "layer": "--layer"}  # the CCISettings fields explain has flags for; others: defaults


def cci_flags(prefix: str = "", names: dict[str, str] | None = None):
    return cli_flags(CCISettings, prefix, names)


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
    ex.add_argument("--batch-size", type=int, default=64)
    ex.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(4, CPUs))")
    ex.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ex.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ex.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images per task")
    ex.add_argument("--seed", type=int, default=0)
    from covar_harness.scale_flags import add_scale_flags  # --shard, --text-cache, --checkpoint-every

    add_scale_flags(ex)
    _add_run_analysis(p)
    p.set_defaults(handler="covar_harness.commands:cmd_run")


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


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list registered models, tasks, attributors, segmenters, formats or schemes")
    p.add_argument("what", choices=["models", "tasks", "attributors", "segmenters", "formats", "schemes"])
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.add_argument("--data-dir", default=None, type=Path, help="dataset root for the tasks' data column")
    p.set_defaults(handler="covar_harness.commands:cmd_ls")


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
    p.set_defaults(handler="covar_harness.commands:cmd_data")


def _add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list loaded plugins, their distributions and hooks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="covar_harness.commands:cmd_plugins")


def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="paper-style tables from a folder of result files")
    p.add_argument("results_dir", type=Path)
    p.add_argument(
        "--format",
        default="table",
        choices=["table", "markdown", "csv", "json", "html"],
        help="html: one self-contained sortable page (CSS and JS inline)",
    )
    p.add_argument(
        "--reference",
        default=None,
        choices=["paper"],
        help="add the published COVAR and CounterAnimals rows, marked as published, in every format "
        "(even without own results of that benchmark)",
    )
    p.set_defaults(handler="covar_harness.report:cmd_leaderboard")  # html there, every other format in commands


def _add_init_leaderboard(sub) -> None:
    p = sub.add_parser(
        "init-leaderboard",
        help="set up a leaderboard repository: GitHub workflow, the CI script it runs, results/",
        description="Write .github/workflows/leaderboard.yml, leaderboard-ci.sh and results/ into DIR. Existing "
        "files are never overwritten: the command refuses (exit 2) and names them.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="the leaderboard repository (created if absent)")
    p.add_argument(
        "--harness-spec",
        default=None,
        help="what the workflow pip-installs (default: covar-harness==<this version>; e.g. a git URL)",
    )
    p.set_defaults(handler="covar_harness.commands:cmd_init_leaderboard")


def _add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check result files against the schema (for leaderboard CI)",
        description="Check result files against the schema. Exit 0: all valid; 1: any invalid; "
        "2: a path does not exist or a folder holds no *.json.",
    )
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a result file, or a folder: every *.json under it (recursively)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="also check what a leaderboard submission must satisfy: provenance, a known data fingerprint, "
        "samples.jsonl present and adding up to acc1 and BG-Er, no duplicate (model, task)",
    )
    p.add_argument(
        "--fingerprints",
        type=Path,
        default=None,
        metavar="JSON",
        help="with --strict: extra known data versions, {task: [fingerprint, ...]} (e.g. your COVAR copy)",
    )
    p.set_defaults(handler="covar_harness.commands:cmd_validate")


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="CCI for one image: cluster table and overlay PNG")
    p.add_argument("--model", required=True, help="one model spec or registered name")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--classes", required=True, help="comma-separated class names (zero-shot candidates)")
    p.add_argument("--out", default=None, type=Path, help="overlay PNG (default: <image stem>.cci.png here)")
    p.add_argument("--target", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--mask", default=None, type=Path, help="foreground mask PNG (white = object) to outline")
    for flag, options in cci_flags(names=EXPLAIN_FLAGS):  # --k, --layer: defaults from CCISettings
        p.add_argument(flag, **options)
    p.add_argument("--seed", type=int, default=CCI_DEFAULTS.seed)
    p.add_argument("--templates", default="simple", help="named template set or file (default: simple)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.set_defaults(handler="covar_harness.explain:cmd_explain")


def _add_build_covar(sub) -> None:
    p = sub.add_parser("build-covar", help="build COVAR-style controlled variations from cut-out objects")
    p.add_argument(
        "--objects",
        required=True,
        type=Path,
        help="RGBA cut-outs (or image + x.mask.png) in <class>/ folders, or a manifest.json with views",
    )
    p.add_argument(
        "--backgrounds",
        required=True,
        type=Path,
        help="background images; <class>/ sub-folders hold a class's typical backgrounds",
    )
    p.add_argument("--out", required=True, type=Path, help="output root (COVAR layout, docs/design.md section 5)")
    p.add_argument("--seed", type=int, default=0, help="build seed (default: 0); same seed, same files")
    p.add_argument("--size", type=int, default=224, help="output image side in pixels (default: 224)")
    p.add_argument("--per-object", type=int, default=1, help="instances per object, each with its own background")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    p.set_defaults(handler="covar_harness.tasks.build_covar:cmd_build_covar")


def _add_sanity(sub) -> None:
    p = sub.add_parser(
        "sanity",
        help="which diagnosis to trust: every attributor and driver rule on the clean vs "
        "shortcut demo models (known truth), AUROC with intervals, ranked, cost",
    )
    p.add_argument("--json", default=None, type=Path, metavar="PATH", help="also write the report as JSON")
    p.add_argument(
        "--limit",
        type=int,
        default=240,
        help="images per task, a seeded subset (default: 240, every image of both subsets; ~75 s on 2 CPU cores)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        type=Path,
        help="dataset root for covar-shapes (default: $COVAR_HARNESS_DATA or ~/.cache/covar-harness/data)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    p.set_defaults(handler="covar_harness.sanity:cmd_sanity")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="static HTML site of a results folder: sortable tables, plots, galleries",
        description="Build a static, self-contained site of a folder of result files (no server, "
        "no CDN: open index.html from disk or publish the folder on GitHub Pages): the "
        "leaderboard tables (sortable; interval and n on hover), plots, provenance, CSV "
        "and JSON downloads, and one page per model x task with a gallery of the most "
        "background-driven errors and foreground-driven correct decisions "
        "(from --log-samples; overlays from --save-maps with --maps).",
    )
    p.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="SITE_DIR",
        help="site folder: new, empty, or an earlier report (replaced); anything else is refused",
    )
    p.add_argument(
        "--maps",
        default=None,
        type=Path,
        metavar="DIR",
        help="the run's --save-maps folder: its overlays are copied into the galleries",
    )
    p.add_argument(
        "--reference",
        default=None,
        choices=["paper"],
        help="add the published COVAR and CounterAnimals rows, marked as published",
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=12,
        metavar="N",
        help="samples per gallery section and page (default: 12; 0: no gallery)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        type=Path,
        help="dataset root, for class names in the galleries (default: $COVAR_HARNESS_DATA or "
        "~/.cache/covar-harness/data; without it labels show as ids)",
    )
    p.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder (or file) of task YAML, for class names; repeatable",
    )
    p.add_argument("--title", default="covar-harness report", help="the site's title")
    p.set_defaults(handler="covar_harness.report:cmd_report")


def _add_faithfulness(sub) -> None:
    p = sub.add_parser(
        "faithfulness",
        help="deletion / insertion AUC and localisation of attributors' importance maps, vs the random baseline",
        description="Per model x task x attributor: deletion and insertion curves (most important patches first; "
        "pixels replaced, and patches removed from attention where the model supports removal) with AUC, and "
        "on tasks with masks the energy pointing game and relevance-rank accuracy; one JSON each, a PNG of the "
        "mean curves per model x task, and a table with each method's ratio to the random baseline.",
    )
    p.add_argument("--models", required=True, help="comma-separated specs, names, globs or groups")
    p.add_argument("--tasks", required=True, help="comma-separated task names, globs, tags or YAML paths")
    p.add_argument(
        "--attributors", default="cci,random,occlusion", help="registered attributors (default: %(default)s)"
    )
    p.add_argument("--limit", type=int, default=None, help="a seeded random subset of N images per task")
    p.add_argument("--steps", type=int, default=16, help="curve points minus one (default: %(default)s)")
    p.add_argument("--replacement", default="blur", choices=["blur", "black", "mean"], help="deleted patches become")
    p.add_argument("--score", default="softmax", choices=["softmax", "cosine"], help="score of the explained class")
    p.add_argument("--target", default="pred", choices=["pred", "label"], help="class explained (default: pred)")
    p.add_argument("--no-token-removal", action="store_true", help="skip the token-removal curves")
    p.add_argument("--k", type=int, default=CCI_DEFAULTS.k, help="clusters for cluster methods (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--output-dir", default=Path("faithfulness"), type=Path, help="default: %(default)s")
    p.add_argument("--data-dir", default=None, type=Path, help="dataset root (default: $COVAR_HARNESS_DATA)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.add_argument("--cache-dir", default=None, help="model weight cache")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler="covar_harness.faithfulness.command:cmd_faithfulness")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="results to the Hugging Face Hub's evaluation-results layout (--to hf) or Weights & Biases (--to wandb)",
        description="--to hf --out DIR: one folder per model with README.md (the model-index front matter) and "
        ".eval_results/<task>.yaml; DIR must be new, empty or an earlier export. --push REPO opens pull "
        "requests with one model's files (needs huggingface_hub and the Hub). --to wandb --project P: one run "
        "per model, a table of the long records and the headline metrics as summary (needs wandb; WANDB_MODE "
        "is respected).",
    )
    p.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    p.add_argument("--to", required=True, choices=["hf", "wandb"], help="hf or wandb")
    p.add_argument("--out", default=None, type=Path, metavar="DIR", help="hf: the export folder")
    p.add_argument("--push", default=None, metavar="REPO", help="hf: open pull requests on this model repository")
    p.add_argument(
        "--source-url",
        default=None,
        metavar="URL",
        help="hf: where the results can be seen (the Hub needs a url with a source; default: the --push repository, "
        "else no source)",
    )
    p.add_argument("--model", default=None, metavar="SPEC", help="export only this model spec")
    p.add_argument("--project", default=None, help="wandb: the project")
    p.add_argument("--entity", default=None, help="wandb: the entity (default: yours)")
    p.set_defaults(handler="covar_harness.exports:cmd_export")


# Each entry adds one subcommand; handlers are "module:function" strings imported only when used.
COMMANDS: list[Callable] = [
    _add_run,
    _add_ls,
    _add_data,
    _add_plugins,
    _add_leaderboard,
    _add_validate,
    _add_init_leaderboard,
    _add_explain,
    _add_build_covar,
    _add_sanity,
    _add_report,
    _add_faithfulness,
    _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covar-harness",
        description="Evaluate CLIP-style models: zero-shot accuracy, CCI attribution, BG-Er / Fine-Er diagnosis.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from covar_harness import __version__

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
    import importlib
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    module, _, func = args.handler.partition(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    except UsageError as exc:
        print(f"covar-harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covar-harness: interrupted; finished pairs are saved, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `covar-harness ... | head`: the reader has gone, nothing to report
        from covar_harness.console import stdout_closed

        return stdout_closed()
    except Exception as exc:  # a bug, not bad input: one line by default, the traceback with -v
        if args.verbose:
            raise
        from covar_harness.console import one_line

        print(
            f"covar-harness: internal error: {type(exc).__name__}: {one_line(exc)[:500]} "
            "(rerun with -v for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
