"""Handlers of the CLI commands: glue between parsed arguments and the pipeline modules."""

from __future__ import annotations

import json
import sys
from argparse import Namespace

from covar_harness.registry import UsageError


from covar_harness.console import console as _console
from covar_harness.console import print_rows


def cmd_run(args: Namespace) -> int:
    from covar_harness import results
    from covar_harness.evaluator import RunOptions
    from covar_harness.models import resolve_models
    from covar_harness.plugin_manager import load_catalog

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    catalog = load_catalog(args.include_path)
    models = resolve_models(args.models, catalog)
    tasks = catalog.tasks.resolve(args.tasks)
    for cfg in tasks:
        if cfg.dataset["format"] not in catalog.formats:
            catalog.formats.entry(cfg.dataset["format"])  # raises with close matches
    steps = _analysis_steps(args, catalog)
    diagnosis = _diagnosis_settings(args)
    out = _console()
    if args.dry_run:
        return _print_plan(out, models, tasks, args)
    options = RunOptions(
        output_dir=args.output_dir, data_dir=args.data_dir, batch_size=args.batch_size, workers=args.workers,
        device=args.device, precision=args.precision, limit=args.limit, seed=args.seed,
        log_samples=args.log_samples, overwrite=args.overwrite, cache_dir=args.cache_dir, steps=steps,
        diagnosis=diagnosis, segmenter=args.segmenter,
    )
    outcomes = _run_with_progress(models, tasks, catalog, options)
    _print_summary(out, outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        err = _console(stderr=True)
        err.print(f"[red]{len(failed)} pair(s) failed:[/red]")
        for o in failed:
            err.print(f"  {o.model} x {o.task}: {o.error}", markup=False)
        return 1
    del results
    return 0


def _analysis_steps(args: Namespace, catalog) -> list:
    """Attribution and diagnosis steps chosen on the command line (registered by plugins).

    ``--attribution auto`` (the default) builds the ``cci`` step in a mode that switches itself off, per
    task, when the task has no foreground masks (DESIGN: attribution is default-on for tasks with masks).
    """
    name = getattr(args, "attribution", None) or "none"
    if name == "none":
        if getattr(args, "save_maps", None):
            raise UsageError("--save-maps needs attribution (--attribution cci, random or auto)")
        return []
    auto = name == "auto"
    entry = catalog.attributors.entry("cci" if auto else name)
    seed = args.cci_seed if getattr(args, "cci_seed", None) is not None else getattr(args, "seed", 0)
    settings = {"k": getattr(args, "cci_k", 7), "layer": getattr(args, "cci_layer", -1),
                "target": getattr(args, "cci_target", "pred"), "seed": seed,
                "attribute_on": getattr(args, "attribute_on", "all"), "kmeans_n_init": getattr(args, "cci_n_init", 3),
                "kmeans_iters": getattr(args, "cci_iters", 100), "save_maps": getattr(args, "save_maps", None),
                "only_with_masks": auto, "counterfactual": args.counterfactual, "cf_threshold": args.cf_threshold}
    from covar_harness.plugin_manager import call_with_accepted

    return [call_with_accepted(entry.item, **settings)]


def _diagnosis_settings(args: Namespace):
    from covar_harness.diagnosis import RULES, DiagnosisSettings

    rules = tuple(r.strip() for r in args.driver_rule.split(",") if r.strip())
    unknown = [r for r in rules if r not in RULES]
    if not rules or unknown:
        raise UsageError(f"unknown driver rule {', '.join(unknown) or '(none)'}; choose from {', '.join(RULES)}")
    if not 0.0 <= args.fg_threshold <= 1.0:
        raise UsageError("--fg-threshold must be in [0, 1]")
    return DiagnosisSettings(rules=rules, threshold=args.fg_threshold, seed=args.seed)


def _run_with_progress(models, tasks, catalog, options):
    from covar_harness.console import progress_reporter
    from covar_harness.evaluator import run

    with progress_reporter() as reporter:
        return run(models, tasks, catalog, options, reporter)


def _print_plan(out, models, tasks, args) -> int:
    from covar_harness import results

    rows = []
    for ref in models:
        for cfg in tasks:
            path = results.result_path(args.output_dir, ref.spec, cfg.task)
            status = "exists: skip" if path.exists() and not args.overwrite else "to run"
            rows.append([ref.spec, ref.target if ref.target != ref.spec else "", cfg.task, str(path), status])
    print_rows(out, f"plan: {len(models)} model(s) x {len(tasks)} task(s)",
               ["model", "resolves to", "task", "result file", "status"], rows)
    return 0


def _print_summary(out, outcomes) -> None:
    rows = []
    for o in outcomes:
        acc = o.metrics.get("acc1")
        rows.append([o.model, o.task, o.status, "-" if acc is None else f"{100 * acc:.1f}",
                     str(o.n_failed) if o.status == "done" else "", str(o.path) if o.status != "failed" else o.error])
    print_rows(out, "run summary", ["model", "task", "status", "acc1", "n_failed", "result"], rows, right=(3, 4))


def cmd_ls(args: Namespace) -> int:
    from covar_harness.plugin_manager import load_catalog

    catalog = load_catalog(args.include_path)
    if args.what == "models":
        from covar_harness.models import resolve_models

        columns = ["name", "family", "source", "tags", "description"]
        rows = []
        for entry in catalog.models:
            ref = resolve_models([entry.name], catalog)[0]
            rows.append([entry.name, ref.family, ref.target if ref.target != entry.name else entry.plugin,
                         ",".join(entry.tags), entry.description])
    elif args.what == "tasks":
        columns = ["task", "format", "version", "tags", "description"]
        rows = [[c.task, c.dataset["format"], c.version, ",".join(c.tags), c.description] for c in catalog.tasks]
    else:
        columns = ["name", "plugin", "description"]
        rows = [[e.name, e.plugin, e.description] for e in getattr(catalog, args.what)]
    print_rows(_console(), args.what, columns, rows, wrap=("description",))
    return 0


def cmd_plugins(args: Namespace) -> int:
    from covar_harness.plugin_manager import load_catalog

    catalog = load_catalog()
    rows = [{"name": p.name, "module": p.module, "distribution": p.distribution, "version": p.version,
             "builtin": p.builtin, "hooks": p.hooks} for p in catalog.plugins]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_rows(_console(), "plugins", ["name", "distribution", "version", "module", "hooks"],
               [[r["name"] + (" (built-in)" if r["builtin"] else ""), r["distribution"], r["version"], r["module"],
                 ", ".join(r["hooks"])] for r in rows])
    return 0


def cmd_leaderboard(args: Namespace) -> int:
    from covar_harness import leaderboard as lb

    if not args.results_dir.is_dir():
        raise UsageError(f"results folder {str(args.results_dir)!r} does not exist")
    loaded = lb.collect(args.results_dir)
    err = _console(stderr=True)
    for path, why in loaded.invalid:
        err.print(f"[yellow]skipped invalid result {path}: {why}[/yellow]")
    if not loaded.records:
        raise UsageError(f"no valid result files under {args.results_dir}")
    tables = lb.build_tables(loaded.records, args.reference)
    if args.format == "table":
        lb.render_rich(tables, _console())
    elif args.format == "markdown":
        sys.stdout.write(lb.render_markdown(tables))
    elif args.format == "csv":
        sys.stdout.write(lb.render_csv(loaded.records))
    else:
        sys.stdout.write(lb.render_json(loaded.records, tables) + "\n")
    return 0


def cmd_validate(args: Namespace) -> int:
    from covar_harness import results

    bad = 0
    for path in args.files:
        try:
            errors = results.validate(results.load(path))
        except (OSError, ValueError) as exc:
            errors = [f"cannot read: {exc}"]
        if errors:
            bad += 1
            for e in errors:
                print(f"{path}: {e}")
        else:
            print(f"{path}: ok")
    return 1 if bad else 0
