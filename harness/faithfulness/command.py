"""``covar-harness faithfulness``: deletion / insertion AUC (pixel replacement and token removal) and localisation
of each attributor's importance maps, per model x task; one JSON per model x task x attributor, a PNG of the mean
curves per model x task, and the table of methods x models x tasks with the random baseline's ratio.

The run plan's cheap checks come first (device, output folder, every task's data), before any weights load."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from covar_harness.registry import UsageError

DEFAULT_ATTRIBUTORS = "cci,random,occlusion"


def settings_from_args(args: Namespace) -> tuple[Any, Any]:
    """(FaithfulnessSettings, CCISettings) from the flags; every bad value is a UsageError (exit 2)."""
    from dataclasses import replace

    from covar_harness.attribution.settings import DEFAULTS
    from covar_harness.faithfulness.settings import FaithfulnessSettings

    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1")
    settings = FaithfulnessSettings(
        steps=args.steps,
        replacement=args.replacement,
        score=args.score,
        target=args.target,
        token_removal=not args.no_token_removal,
        seed=args.seed,
        bootstrap=args.bootstrap,
    )
    return settings, replace(DEFAULTS, k=args.k, seed=args.seed, target=args.target, counterfactual=False)


def methods_from_args(text: str, catalog: Any) -> list[str]:
    """Registered attributor names (unknown ones refused with close matches); the random baseline is added when
    missing, since the table reports every method's ratio to it."""
    from covar_harness.attribution.base import find_attributor

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("--attributors: no attributor given")
    methods = []
    for name in names:
        entry = catalog.attributors.entry(name)
        find_attributor(entry.name)  # a registered name without an Attributor class is not a map method
        if entry.name not in methods:
            methods.append(entry.name)
    return methods if "random" in methods else [*methods, "random"]


def cmd_faithfulness(args: Namespace) -> int:
    from covar_harness.console import console
    from covar_harness.models import resolve_models
    from covar_harness.plan import check_data, check_device, check_writable
    from covar_harness.plugin_manager import load_catalog

    settings, cci = settings_from_args(args)
    catalog = load_catalog(args.include_path)
    models = resolve_models(args.models, catalog)
    tasks = catalog.tasks.resolve(args.tasks)
    methods = methods_from_args(args.attributors, catalog)
    check_device(args.device)
    check_writable(args.output_dir, "--output-dir")
    notes = check_data(tasks, catalog, args.data_dir)
    err = console(stderr=True)
    results: list[dict[str, Any]] = []
    for ref in models:
        results += _run_model(ref, [t for t in tasks if t.task not in notes], catalog, methods, settings, cci, args)
    for task, note in notes.items():
        err.print(f"skipped {task}: {note}", markup=False)
    _print_table(console(), results, settings)
    return 1 if any(r.get("error") for r in results) else 0


def _run_model(ref, tasks, catalog, methods, settings, cci, args) -> list[dict[str, Any]]:
    """Load one model, then every task: maps, curves, result files and the curve plot per pair."""
    from dataclasses import asdict

    from covar_harness.evaluator import ClassifierCache
    from covar_harness.faithfulness.evaluate import open_pair_data, run_pair
    from covar_harness.faithfulness.plots import plot_curves
    from covar_harness.faithfulness.summary import result_file, result_object
    from covar_harness.models import load_model
    from covar_harness.results import write_json

    adapter = load_model(ref.spec, args.device, args.precision, args.cache_dir, catalog=catalog)
    classifiers = ClassifierCache(adapter)
    out: list[dict[str, Any]] = []
    for cfg in tasks:
        data = open_pair_data(adapter, cfg, catalog, classifiers, args.limit, args.seed, args.data_dir)
        runs = run_pair(adapter, data, methods, settings, cci, args.batch_size)
        pair = [
            result_object(ref.spec, cfg.task, run, settings, asdict(cci), data.n_failed, data.notes)
            for run in runs.values()
        ]
        for obj in pair:
            write_json(result_file(args.output_dir, ref.spec, cfg.task, obj["attributor"]), obj)
        png = result_file(args.output_dir, ref.spec, cfg.task, "curves").with_suffix(".png")
        plot_curves([p for p in pair if not p["error"]], png, f"{ref.spec} x {cfg.task}")
        out += pair
    return out


def _print_table(out: Any, results: list[dict[str, Any]], settings: Any) -> None:
    from covar_harness.console import print_rows
    from covar_harness.faithfulness.summary import TABLE_COLUMNS, table_rows

    caption = (
        f"{settings.score} score of the {settings.target} class; {settings.steps} steps; replacement "
        f"{settings.replacement}. Ratios are method / random on the same model and task: deletion lower is "
        "better (< 1x), insertion higher (> 1x)."
    )
    numeric = list(range(3, len(TABLE_COLUMNS)))
    print_rows(out, "faithfulness", TABLE_COLUMNS, table_rows(results), right=numeric, caption=caption)
