"""Parsers of the results commands: leaderboard, validate, init-leaderboard, report, export, rescore, compare.

Argparse only, no torch at import; ``cli.COMMANDS`` adds them. Handlers are "module:function" strings.
"""

from __future__ import annotations

from pathlib import Path

from covar_harness.diagnosis.rules import RULES


def add_leaderboard(sub) -> None:
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
    p.add_argument(
        "--compare",
        default=None,
        metavar="A,B",
        help="add the paired comparison of two models (as covar-harness compare; table and markdown formats)",
    )
    p.set_defaults(
        handler="covar_harness.cli.commands_results:cmd_leaderboard"
    )  # html there, every other format in commands_results


def add_init_leaderboard(sub) -> None:
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
        help="what the workflow pip-installs (default: the git URL and commit this harness was installed from, "
        "else covar-harness==<this version>)",
    )
    p.set_defaults(handler="covar_harness.cli.commands_results:cmd_init_leaderboard")


def add_validate(sub) -> None:
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
        help="also check what a leaderboard submission must satisfy: provenance, no --limit, a known data "
        "version whose sample count and (file, label) list samples.jsonl matches, a well-formed log adding up to "
        "acc1, acc5, mean per-class recall, fg-driven rate and BG-Er, the registry's model.target, no duplicate "
        "or look-alike (model, task)",
    )
    p.add_argument(
        "--fingerprints",
        type=Path,
        default=None,
        metavar="JSON",
        help="with --strict: extra known data versions, {task: [fingerprint, ...]} (e.g. your COVAR copy)",
    )
    p.set_defaults(handler="covar_harness.cli.commands_results:cmd_validate")


def add_report(sub) -> None:
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
    p.set_defaults(handler="covar_harness.cli.commands_results:cmd_report")


def add_export(sub) -> None:
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
    p.set_defaults(handler="covar_harness.leaderboard.exports:cmd_export")


def add_rescore(sub) -> None:

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


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="paired tests of two models on the same samples, or of one model on two subsets (--between)",
        description="Compare two models task by task on the samples both evaluated (sample logs joined on the "
        "sample id): accuracy by the exact McNemar test and a paired bootstrap interval; raw BG-Er under every "
        "driver rule both logged and the counterfactual bg_sufficient_rate by a paired bootstrap (each replicate "
        "resamples the samples once, whole source objects where known, and recomputes each model's share over its "
        "own errors). With --between TASK_A,TASK_B and one model: the same for subset A minus subset B, paired by "
        "source object (COVAR Scale vs Crop). Needs --log-samples results.",
    )
    p.add_argument("results", type=Path, metavar="RESULTS", help="a folder of result files and their sample logs")
    p.add_argument("--models", required=True, help="two model specs as in the results: A,B (one with --between)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: every task both have)")
    p.add_argument(
        "--between",
        default=None,
        metavar="TASK_A,TASK_B",
        help="one model on two subsets sharing source objects: A minus B, bootstrap by source_id",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="table", choices=["table", "markdown", "json"])
    p.set_defaults(handler="covar_harness.cli.analysis:cmd_compare")
