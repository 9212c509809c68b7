"""Parsers of the standalone tools: explain, build-covar, sanity, faithfulness; ``cci_flags`` and ``rise_flags``.

Argparse only, no torch at import; ``cli.COMMANDS`` adds them. Handlers are "module:function" strings.
"""

from __future__ import annotations

from pathlib import Path

from covar_harness.attribution.rise import rise_flags
from covar_harness.attribution.settings import DEFAULTS as CCI_DEFAULTS
from covar_harness.attribution.settings import CCISettings
from covar_harness.common.flags import cli_flags
from covar_harness.diagnosis.rules import DiagnosisSettings
from covar_harness.models.args import PRECISIONS
from covar_harness.run.scale_flags import add_checkpoint_flag

EXPLAIN_FLAGS = {"k": "--k", "layer": "--layer"}  # the CCISettings fields explain has flags for; others: defaults


def cci_flags(prefix: str = "", names: dict[str, str] | None = None):
    return cli_flags(CCISettings, prefix, names)


def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="CCI for one image: cluster table and overlay PNG")
    p.add_argument("--model", required=True, help="one model spec or registered name")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--classes", required=True, help="comma-separated class names (zero-shot candidates)")
    p.add_argument("--out", default=None, type=Path, help="overlay PNG (default: <image stem>.cci.png here)")
    p.add_argument(
        "--target", default=None, help="class to explain, as the label (--cci-target label; default: the prediction)"
    )
    p.add_argument(
        "--label",
        default=None,
        help="the image's true class: the diagnosis then says correct or error as a run does (default: --target, "
        "else the prediction)",
    )
    p.add_argument(
        "--mask", default=None, type=Path, help="foreground mask PNG (white = object): the diagnosis and region test"
    )
    p.add_argument(
        "--sample-id",
        default=None,
        help="the id a run logged for this image (`file` in samples.jsonl): seeds k-means and the diagnosis's null "
        "as in that run (default: the image's file name)",
    )
    for flag, options in cci_flags(names=EXPLAIN_FLAGS):  # --k, --layer: defaults from CCISettings
        p.add_argument(flag, **options)
    p.add_argument("--seed", type=int, default=CCI_DEFAULTS.seed)
    for flag, options in cli_flags(DiagnosisSettings, prefix="diagnosis_"):  # with --mask; defaults as in run
        p.add_argument(flag, **options)
    p.add_argument("--templates", default="simple", help="named template set or file (default: simple)")
    p.add_argument(
        "--concepts",
        default=None,
        metavar="BANK",
        help="name each cluster against a concept bank: text:FILE, images:DIR or a registered bank "
        "(covar-harness ls concepts); text banks use --templates",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.set_defaults(handler="covar_harness.cli.explain:cmd_explain")


def add_build_covar(sub) -> None:
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
    p.set_defaults(handler="covar_harness_tasks.build_covar:cmd_build_covar")


def add_sanity(sub) -> None:
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
    p.set_defaults(handler="covar_harness.run.sanity:cmd_sanity")


def add_faithfulness(sub) -> None:
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
    p.add_argument(
        "--protocol",
        default="patches",
        help="curve protocol: patches (default: the harness's own, patches onto a canvas, and token removal), "
        "grad-eclip (Zhao et al.'s pixel deletion / insertion, top-1 accuracy on the label) or rise "
        "(Petsiuk et al.'s causal metric); the published ones set the flags below themselves",
    )
    p.add_argument("--steps", type=int, default=None, help="curve points minus one (patches; default: 16)")
    p.add_argument(
        "--replacement", default=None, choices=["blur", "black", "mean"], help="deleted patches become (default: blur)"
    )
    p.add_argument(
        "--score", default=None, choices=["softmax", "cosine", "top1"], help="score of the explained class (softmax)"
    )
    p.add_argument("--target", default=None, choices=["pred", "label"], help="class explained (default: pred)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="softmax temperature of the score (default: the model's own logit scale, else 100)",
    )
    p.add_argument("--no-token-removal", action="store_true", help="skip the token-removal curves")
    p.add_argument(
        "--ties",
        default="random",
        choices=["random", "raster"],
        help="order of equally important patches: seeded random per image (default) or raster (before issue 23)",
    )
    p.add_argument("--k", type=int, default=CCI_DEFAULTS.k, help="clusters for cluster methods (default: %(default)s)")
    for flag, options in rise_flags():  # --rise-masks, --rise-cell, ...: defaults from RISESettings
        p.add_argument(flag, **options)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--output-dir", default=Path("faithfulness"), type=Path, help="default: %(default)s")
    p.add_argument(
        "--log-samples",
        action="store_true",
        help="also write each sample's deletion / insertion curves to <method>.samples.jsonl beside its JSON",
    )
    p.add_argument("--data-dir", default=None, type=Path, help="dataset root (default: $COVAR_HARNESS_DATA)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR")
    p.add_argument("--cache-dir", default=None, help="model weight cache")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--seed", type=int, default=0)
    add_checkpoint_flag(p)
    p.set_defaults(handler="covar_harness.faithfulness.command:cmd_faithfulness")
