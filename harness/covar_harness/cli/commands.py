"""Handlers of the CLI commands: glue between parsed arguments and the pipeline modules."""

from __future__ import annotations

import difflib
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

from covar_harness.attribution.rise import RISESettings
from covar_harness.attribution.settings import AttributionSettings, CCISettings
from covar_harness.catalog.plugin_manager import call_with_accepted, keywords_of, load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import console as _console
from covar_harness.common.console import markup, print_rows
from covar_harness.common.flags import from_args
from covar_harness.concepts.banks import resolve_bank
from covar_harness.concepts.naming import ConceptStep
from covar_harness.concepts.settings import ConceptSettings
from covar_harness.diagnosis.distractors import DistractorSettings
from covar_harness.diagnosis.rules import RULES, DiagnosisSettings
from covar_harness.masks.segmenter import check_segmenter_settings, parse_segmenter_opts
from covar_harness.models.args import parse as parse_model_args
from covar_harness.models.specs import resolve_models
from covar_harness.pipeline.contract import Step
from covar_harness.run.evaluator import run
from covar_harness.run.options import RunOptions
from covar_harness.run.plan import check_writable, parse_shard, plan_run
from covar_harness.run.progress import progress_reporter
from covar_harness.run.text_cache import default_text_cache


@dataclass
class PreparedRun:
    """Everything ``run`` decided before any weights load (the CLI and the Python API share it)."""

    models: list
    tasks: list
    catalog: Any
    options: Any
    plan: list


def prepare_run(args: Namespace) -> PreparedRun:
    """Parse and check ``run``'s settings and make the plan: every mistake here is a UsageError (exit 2)."""

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")  # --batch-size is checked by its argparse type
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be >= 0")
    if getattr(args, "checkpoint_every", 0) < 0:
        raise UsageError("--checkpoint-every must be >= 0")
    shard = parse_shard(getattr(args, "shard", None))
    catalog = load_catalog(args.include_path)
    models = resolve_models(args.models, catalog)
    tasks = catalog.tasks.resolve(args.tasks)
    for cfg in tasks:
        if cfg.dataset["format"] not in catalog.formats:
            catalog.formats.entry(cfg.dataset["format"])  # raises with close matches
    options = RunOptions(
        output_dir=args.output_dir,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        limit=args.limit,
        seed=args.seed,
        log_samples=args.log_samples,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        steps=_analysis_steps(args, catalog),
        diagnosis=diagnosis_from_args(args),
        distractors=_distractor_settings(args),
        segmenter=args.segmenter,
        segmenter_settings=_segmenter_settings(args, catalog),
        shard=shard,
        text_cache=default_text_cache(getattr(args, "text_cache", None)),
        checkpoint_every=getattr(args, "checkpoint_every", 0),
        dist_timeout=getattr(args, "dist_timeout", 3600.0),
        model_args=parse_model_args(getattr(args, "model_args", None)),
        concepts=_concept_step(args, catalog),
    )
    plan = plan_run(models, tasks, catalog, options, check_only_plan=args.dry_run)
    if getattr(args, "save_maps", None) and not args.dry_run:
        check_writable(args.save_maps, "--save-maps")
    return PreparedRun(models, tasks, catalog, options, plan)


def cmd_run(args: Namespace) -> int:
    run = prepare_run(args)
    out = _console()
    if args.dry_run:
        return _print_plan(out, run.plan, run.models, run.tasks)
    outcomes = _run_with_progress(run.models, run.tasks, run.catalog, run.options, run.plan)
    _print_summary(out, outcomes)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _analysis_steps(args: Namespace, catalog) -> list:
    """Attribution steps chosen on the command line (registered by plugins); diagnosis follows them by itself.

    ``--attribution auto`` (the default) builds the ``cci`` step in a mode that switches itself off, per
    task, when the task has no foreground masks (docs/design.md: attribution is default-on for tasks with masks).
    """

    name = getattr(args, "attribution", None) or "none"
    if name == "none":
        if getattr(args, "save_maps", None):
            raise UsageError("--save-maps needs attribution (--attribution cci, random or auto)")
        return []
    auto = name == "auto"
    entry = catalog.attributors.entry("cci" if auto else name)
    settings = AttributionSettings(entry.name, CCISettings.from_args(args), getattr(args, "save_maps", None), auto)

    offered = settings.flat()
    rise = RISESettings.from_args(args)  # --rise-*: checked whatever the method, offered to a factory naming it
    if "rise" in keywords_of(entry.item).names:
        offered["rise"] = rise
    step = call_with_accepted(entry.item, **offered)  # third-party factories take what they accept
    if not isinstance(step, Step):
        raise UsageError(
            f"attributor {entry.name!r} gave {type(step).__name__}, not a covar_harness.pipeline.contract.Step "
            "(docs/design.md section 7: subclass Step)"
        )
    return [step]


def _segmenter_settings(args: Namespace, catalog) -> dict:
    """``--segmenter-opt key=value`` (repeatable) as the segmenter's settings, checked against its factory
    before any model loads: an unknown key is a usage error naming close matches."""

    settings = parse_segmenter_opts(getattr(args, "segmenter_opt", None))
    check_segmenter_settings(getattr(args, "segmenter", "auto"), catalog, settings)
    return settings


def _distractor_settings(args: Namespace):
    """``--distractors`` / ``--distractor-share`` (flags and defaults from ``DistractorSettings``), checked."""

    return DistractorSettings(**from_args(DistractorSettings, args, "distractors_"))


def _concept_step(args: Namespace, catalog):
    """``--concepts BANK`` / ``--concepts-top``: the naming step with its bank resolved (cheap: names and folders
    only), so an unknown bank or an unreadable bank file exits 2 before any model loads; None when off."""

    settings = ConceptSettings(**from_args(ConceptSettings, args, "concepts_"))
    if not settings.enabled:
        return None
    if getattr(args, "attribution", "auto") == "none":
        raise UsageError(
            "--concepts names the regions attribution finds; it needs --attribution cci, cci-shapley or auto"
        )
    return ConceptStep(settings, resolve_bank(str(settings.bank), catalog, args.data_dir))


def diagnosis_from_args(args: Namespace):
    """``--driver-rule`` / ``--fg-threshold`` (flags and defaults from ``DiagnosisSettings``), checked."""

    defaults = DiagnosisSettings()
    rule_text = getattr(args, "diagnosis_rules", None)
    rule_text = ",".join(defaults.rules) if rule_text is None else rule_text
    threshold = getattr(args, "diagnosis_threshold", None)
    threshold = defaults.threshold if threshold is None else threshold
    rules = tuple(r.strip() for r in rule_text.split(",") if r.strip())
    unknown = [r for r in rules if r not in RULES]
    if not rules or unknown:
        close = difflib.get_close_matches(unknown[0], list(RULES), n=1, cutoff=0.5) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown driver rule {', '.join(unknown) or '(none)'}{hint}; choose from {', '.join(RULES)}")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError("--fg-threshold must be in [0, 1]")
    draws = getattr(args, "diagnosis_null_draws", None)
    draws = defaults.null_draws if draws is None else draws
    if not 0 <= draws <= 10_000:
        raise UsageError("--null-draws must be in [0, 10000]")
    fine_rule = getattr(args, "diagnosis_fine_rule", None) or defaults.fine_rule  # checked by DiagnosisSettings
    return DiagnosisSettings(rules=rules, threshold=threshold, seed=args.seed, null_draws=draws, fine_rule=fine_rule)


def _run_with_progress(models, tasks, catalog, options, plan):
    """Progress on stderr (``run.progress.progress_reporter``): bars with "pair k of N" and the run's ETA in a
    terminal; plain lines (each phase, one per 30 s, one per pair with the ETA) when stderr is a file."""

    with progress_reporter(len(plan)) as reporter:
        return run(models, tasks, catalog, options, reporter, plan)


def _print_plan(out, plan, models, tasks) -> int:
    status = {"run": "to run", "skipped": "exists: skip", "noted": "skip"}
    rows = [
        [
            p.ref.spec,
            p.ref.target if p.ref.target != p.ref.spec else "",
            p.cfg.task,
            str(p.path),
            status[p.status] + (f" ({p.reason})" if p.status != "skipped" and p.reason else ""),
        ]
        for p in plan
    ]
    print_rows(
        out,
        f"plan: {len(models)} model(s) x {len(tasks)} task(s)",
        ["model", "resolves to", "task", "result file", "status"],
        rows,
    )
    return 0


SUMMARY_ERROR_WIDTH = 60


def _print_summary(out, outcomes) -> None:
    """One row per pair (errors cut short), then each distinct error once, in full, with the pairs it hit."""
    rows = []
    for o in outcomes:
        acc = o.metrics.get(o.headline)
        detail = str(o.path) if o.status == "done" else o.error or str(o.path)
        rows.append(
            [
                o.model,
                o.task,
                o.status,
                "-" if acc is None else f"{100 * acc:.1f} {o.headline}" if o.headline != "acc1" else f"{100 * acc:.1f}",
                str(o.n_failed) if o.status == "done" else "",
                detail,
            ]
        )
    print_rows(
        out,
        "run summary",
        ["model", "task", "status", "headline (acc1 unless named)", "n_failed", "result / reason"],
        rows,
        right=(3, 4),
        truncate={"result / reason": SUMMARY_ERROR_WIDTH},
    )
    by_error: dict[str, list] = {}
    for o in outcomes:
        if o.status == "failed":
            by_error.setdefault(o.error, []).append(o)
    if not by_error:
        return
    err = _console(stderr=True)
    err.print(f"[red]{sum(map(len, by_error.values()))} pair(s) failed[/red]")
    for message, pairs in by_error.items():
        hit = ", ".join(f"{o.model} x {o.task}" for o in pairs[:3])
        hit += f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
        err.print(f"  {markup(message)}  [dim]({len(pairs)} pair(s): {markup(hit)})[/dim]", soft_wrap=True)
    for advice in dict.fromkeys(o.advice for o in outcomes if o.status == "failed" and o.advice):
        err.print(f"[yellow]{markup(advice)}[/yellow]", soft_wrap=True)  # once per run, however many pairs
