"""``covar-harness faithfulness``: deletion / insertion AUC (pixel replacement and token removal) and localisation
of each attributor's importance maps, per model x task; one JSON per model x task x attributor (with
``--log-samples``, each sample's curves as JSON lines beside it), two PNGs of the mean curves per model x task,
the table of methods x models x tasks and the table of each method's paired per-image differences from the
random baselines (``random`` and ``random-patch``, always run). RISE runs with the ``--rise-*``
settings (``attribution.rise.RISESettings``), recorded in its result.

The run plan's cheap checks come first (device, output folder, every task's data), before any weights load. A pair
opens as a run's does (by task kind) and its finished batches go to ``<model>/<task>/curves.part`` every
``--checkpoint-every`` batches: an interrupted command resumes each pair after its last finished batch."""

from __future__ import annotations

from argparse import Namespace
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from covar_harness.attribution.base import find_attributor
from covar_harness.attribution.rise import RISE, RISE_DEFAULTS, RISESettings
from covar_harness.attribution.settings import DEFAULTS
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import console, print_rows
from covar_harness.common.safe_files import slug
from covar_harness.faithfulness.evaluate import open_pair_data, pair_part, run_pair, softmax_temperature
from covar_harness.faithfulness.plots import plot_curves, plot_methods
from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.faithfulness.summary import (
    PAIRED_COLUMNS,
    TABLE_COLUMNS,
    paired_differences,
    paired_table_rows,
    result_file,
    result_object,
    table_rows,
)
from covar_harness.models.specs import load_model, resolve_models
from covar_harness.results.faithfulness import BASELINES, PAIRED_CAPTION
from covar_harness.results.files import samples_path, write_json, write_jsonl
from covar_harness.run.options import RunOptions
from covar_harness.run.partfiles import pair_lock
from covar_harness.run.partfiles import remove as remove_part
from covar_harness.run.plan import check_data, check_device, check_writable
from covar_harness.run.progress import Reporter, progress_reporter
from covar_harness.run.text_cache import ClassifierCache

DEFAULT_ATTRIBUTORS = "cci,random,occlusion"


def settings_from_args(args: Namespace) -> tuple[Any, Any, Any]:
    """(FaithfulnessSettings, CCISettings, RISESettings) from the flags; every bad value is a UsageError (exit 2)."""

    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1")
    if args.checkpoint_every < 0:
        raise UsageError("--checkpoint-every must be >= 0")
    settings = FaithfulnessSettings.for_protocol(
        args.protocol,
        steps=args.steps,
        replacement=args.replacement,
        score=args.score,
        target=args.target,
        token_removal=False if args.no_token_removal else None,
        seed=args.seed,
        bootstrap=args.bootstrap,
        ties=args.ties,
        temperature=args.temperature,
    )
    cci = replace(DEFAULTS, k=args.k, seed=args.seed, target=settings.target, counterfactual=False)
    return settings, cci, RISESettings.from_args(args)


def methods_from_args(text: str, catalog: Any, rise: Any = None) -> list[Any]:
    """The Attributor classes of the registered names (unknown ones refused with close matches), RISE with the
    ``--rise-*`` settings; the random baselines (``BASELINES``) are added when missing, since every method is
    compared with them image by image."""

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("--attributors: no attributor given")
    methods = []
    for name in names:
        entry = catalog.attributors.entry(name)
        if entry.name not in methods:
            methods.append(entry.name)
    methods += [b for b in BASELINES if b not in methods]
    classes = [find_attributor(m, catalog) for m in methods]  # a custom step (no Attributor) has no maps: refused
    return [c.with_settings(rise or RISE_DEFAULTS) if issubclass(c, RISE) else c for c in classes]


def cmd_faithfulness(args: Namespace) -> int:
    settings, cci, rise = settings_from_args(args)
    catalog = load_catalog(args.include_path)
    models = resolve_models(args.models, catalog)
    tasks = catalog.tasks.resolve(args.tasks)
    methods = methods_from_args(args.attributors, catalog, rise)
    check_device(args.device)
    check_writable(args.output_dir, "--output-dir")
    notes = check_data(tasks, catalog, args.data_dir)
    err = console(stderr=True)
    results: list[dict[str, Any]] = []
    todo = [t for t in tasks if t.task not in notes]
    with progress_reporter(len(models) * len(todo)) as reporter:  # bars in a terminal, lines in a log
        for ref in models:
            results += _run_model(ref, todo, catalog, methods, settings, cci, args, reporter)
    for task, note in notes.items():
        err.print(f"skipped {task}: {note}", markup=False)
    _print_table(console(), results, settings)
    return 1 if any(r.get("error") for r in results) else 0


def _run_model(ref, tasks, catalog, methods, settings, cci, args, reporter: Reporter) -> list[dict[str, Any]]:
    """Load one model, then every task: maps, curves, result files and the curve plots per pair."""

    adapter = load_model(ref.spec, args.device, args.precision, args.cache_dir, catalog=catalog)
    classifiers = ClassifierCache(adapter)
    configs = _method_configs(methods, adapter, cci)
    temperature, source = softmax_temperature(adapter, settings)
    options = pair_options(args)
    out: list[dict[str, Any]] = []
    for cfg in tasks:
        part = pair_part(output_dir(args, settings), ref.spec, cfg.task)
        with pair_lock(part):  # another process on this pair: PairBusy, one line
            data = open_pair_data(adapter, cfg, catalog, classifiers, options, ref.spec, reporter)
            data.settings.update(temperature=temperature, temperature_from=source)
            runs = run_pair(adapter, data, methods, settings, cci, options, part, reporter)
            out += _write_pair(ref.spec, cfg.task, runs, data, settings, configs, args)
            remove_part(part)  # the results are written: the pair is done
    return out


def pair_options(args: Namespace) -> RunOptions:
    """The run options a faithfulness pair opens and passes with: what decides its samples and batches (data,
    ``--limit``, seed, batch size, precision) and ``--checkpoint-every``; images read in the main process."""
    return RunOptions(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        workers=0,
        precision=args.precision,
        limit=args.limit,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )


def _method_configs(methods: list[Any], adapter: Any, cci: Any) -> dict[str, dict[str, Any]]:
    """Per method: the attribution settings its result records (CCISettings plus the method's own entries,
    e.g. RISE's masks), as ``run`` records them in ``config.attribution``."""

    return {m.name: {**asdict(cci), **m().config(adapter, cci)} for m in methods}


def _write_pair(model, task, runs, data, settings, configs, args) -> list[dict[str, Any]]:
    """One JSON per method (and, with ``--log-samples``, its per-sample curves as JSON lines beside it), the
    pair's ``curves.png`` and the all-methods figure ``curves-<model>-<task>.png`` in the output folder."""

    pair = []
    for name, run in runs.items():
        paired = paired_differences(run, runs, settings)
        obj = result_object(model, task, run, settings, configs[name], data.n_failed, data.notes, paired)
        obj["settings"].update(data.settings)  # e.g. a retrieval task's explained text
        path = result_file(output_dir(args, settings), model, task, name)
        if args.log_samples and run.rows:
            write_jsonl(samples_path(path), run.rows)  # the rows with every curve, one sample a line
            obj["samples_file"] = samples_path(path).name
        write_json(path, obj)
        pair.append(obj)
    ok = [p for p in pair if not p["error"]]
    title = f"{model} x {task}"
    plot_curves(ok, result_file(output_dir(args, settings), model, task, "curves").with_suffix(".png"), title)
    plot_methods(ok, output_dir(args, settings) / methods_plot_name(model, task), title)
    return pair


def output_dir(args: Namespace, settings: Any) -> Path:
    """``--output-dir``, and for a published protocol its subfolder (``<out>/grad-eclip``), so one folder can hold
    every protocol's results side by side without one overwriting another."""
    out = Path(args.output_dir)
    return out if settings.protocol == "patches" else out / settings.protocol


def methods_plot_name(model: str, task: str) -> str:
    """``curves-<slug(model)>-<slug(task)>.png``; one slug of both when that would be too long a file name."""

    name = f"curves-{slug(model)}-{slug(task)}.png"
    return name if len(name) <= 200 else f"curves-{slug(f'{model} x {task}')}.png"


def _print_table(out: Any, results: list[dict[str, Any]], settings: Any) -> None:
    record = settings.record()
    caption = (
        f"protocol {settings.protocol}: {settings.score} score of the {settings.target} class; {record['steps']} "
        f"steps; replacement {record['replacement']}. Means over images; deletion lower is better, the others "
        "higher. The paired differences below say which differences are real."
    )
    numeric = list(range(3, len(TABLE_COLUMNS)))
    print_rows(out, "faithfulness", TABLE_COLUMNS, table_rows(results), right=numeric, caption=caption)
    paired = paired_table_rows(results)
    if paired:
        right = list(range(4, len(PAIRED_COLUMNS)))
        print_rows(out, "paired differences", PAIRED_COLUMNS, paired, right=right, caption=PAIRED_CAPTION)
