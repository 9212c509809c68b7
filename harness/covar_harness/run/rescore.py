"""Rescore (docs/design.md section 6, issue 26): a result's metrics, intervals and diagnosis recomputed from its
sample log (``--log-samples``) under other settings, with no model loaded and no image read.

The diagnosis has several defensible settings (driver rules, the explained class, null draws, the fine rule,
bootstrap resamples); trying another one should be arithmetic on the logged samples, not a rerun of the models.
Everything is recomputed by the functions the run uses (``run.pair.zero_shot_summary``,
``diagnosis.summary.row_records`` and ``summarise_pair``), so a rescore from settings A into settings B equals a
fresh run with B, provenance aside (``tests/results/test_rescore.py`` checks it for every rule and both targets).

What a log must hold (sample log version 2 or 3, ``config.sample_log_version``): per sample the label, the
top-5, ``source_id`` and ``group`` where the data has them, the attribution records with the other target's
values (``importance_label`` / ``importance_pred``, ``shapley.values_<target>``, ``counterfactual.*_<target>``)
and the patch-grid mask ``fg``; the fine rules' pairs: version 3 in the result (``config.diagnosis.fine_rules[rule]
.fine_pairs``), version 2 as each error's ``fine_by_rule``. A rescore writes version 3. Version 1 logs rescore the
zero-shot metrics and say that the diagnosis could not be redone. What no log holds (the distractor check's
predicted-class masks, a plugin step's summary) is left out of the rescored result and named in
``config.rescored.not_rescored``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from covar_harness.attribution.records import ALT_REGION_FIELDS
from covar_harness.catalog.registry import UsageError
from covar_harness.common.metrics import BOOTSTRAP_VERSION
from covar_harness.common.safe_files import parse_json_record
from covar_harness.diagnosis.fine_rules import (
    LEGACY_DEFAULT_SETTING,
    SENSITIVITY,
    FineRelation,
    parse_fine_rule,
    read_pairs,
)
from covar_harness.diagnosis.rules import RULES, DiagnosisSettings, read_grid
from covar_harness.diagnosis.summary import row_records, summarise_pair
from covar_harness.results import files
from covar_harness.results.validation import validate
from covar_harness.run.pair import zero_shot_summary

TARGETS = ("pred", "label")
# the diagnosis fields of a sample's log line (DiagnosisRecord.log_fields) and the distractor check's
DIAGNOSIS_FIELDS = ("fg_fraction", "driver", "null_fg", "error_type", "fine_by_rule", "drivers", "scores", "nulls")
DISTRACTOR_FIELDS = ("distractor_share", "distractor")
FIRST_RESCORABLE = 2  # the first sample log version whose diagnosis can be redone (it logs the patch grids)
MAX_LOG_BYTES = 4 * 2**30  # a 50,000-sample log with 196-patch grids is about 0.2 GiB


@dataclass(frozen=True)
class RescoreSettings:
    """What to change; None keeps the result's own setting."""

    rules: tuple[str, ...] | None = None
    target: str | None = None
    fine_rule: str | None = None
    null_draws: int | None = None
    bootstrap: int | None = None

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules or () if r not in RULES]
        if self.rules is not None and (not self.rules or unknown):
            raise UsageError(f"unknown driver rule {', '.join(unknown) or '(none)'}; choose from {', '.join(RULES)}")
        if self.target is not None and self.target not in TARGETS:
            raise UsageError(f"--cci-target must be one of {', '.join(TARGETS)}")
        if self.fine_rule is not None:
            object.__setattr__(self, "fine_rule", parse_fine_rule(self.fine_rule).spec)
        if self.null_draws is not None and not 0 <= self.null_draws <= 10_000:
            raise UsageError("--null-draws must be in [0, 10000]")
        if self.bootstrap is not None and not 1 <= self.bootstrap <= 1_000_000:
            raise UsageError("--bootstrap must be in [1, 1000000]")

    def asked(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items() if v is not None}


class NotClassification(ValueError):
    """A result file of another kind (faithfulness): not rescored, and not an error in a folder of results."""


@dataclass
class Rescored:
    result: dict[str, Any]
    samples: list[dict[str, Any]]
    not_rescored: list[str]


# ---- reading ------------------------------------------------------------------------------------------------------
@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the block. A sample log read into memory is millions of containers
    that live until the rescore ends, and every full collection would walk them all again (a third of the time
    of a 50,000-sample rescore); reference counting still frees what is dropped, and the collector runs after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_samples(path: Path) -> list[dict[str, Any]]:
    """A sample log's rows (one JSON object a line); a one-line ValueError naming ``file:line`` otherwise."""
    return read_log(path)[0]


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """A sample log's rows and the lines they were read from (:func:`read_samples`; the lines let a rescore
    write an unchanged row as it was logged)."""
    text = files.read_regular(path, MAX_LOG_BYTES).decode("utf-8")
    rows, lines = [], []
    with paused_gc():
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            row = parse_json_record(line, f"{path.name}:{n}")  # one-line ValueError, nesting bounded
            if not isinstance(row, dict) or not all(k in row for k in ("index", "label", "pred", "top5")):
                raise ValueError(f"{path.name}:{n}: not a sample record (index, label, pred, top5)")
            rows.append(row)
            lines.append(line)
    return rows, lines


def load_result(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A classification result and its sample log, checked; ValueError (one line) for anything unusable."""
    obj, rows, _ = load_result_log(path)
    return obj, rows


def load_result_log(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """:func:`load_result` and the log's lines (:func:`read_log`)."""
    obj = files.load(path)
    if isinstance(obj, dict) and str(obj.get("schema", "")).startswith("covar-harness/faithfulness"):
        raise NotClassification("a faithfulness result")
    errors = validate(obj)
    if errors:
        raise ValueError(f"not a valid result file: {errors[0]}")
    if obj["task"].get("kind") == "retrieval":
        raise ValueError("retrieval results are not rescored (no classifier, no diagnosis)")
    log = files.samples_path(path)
    if not log.is_file():
        raise ValueError(f"no sample log {log.name} beside it: rerun with --log-samples")
    rows, lines = read_log(log)
    if len(rows) != obj["task"]["n_samples"]:
        raise ValueError(f"{log.name} holds {len(rows)} samples, the result {obj['task']['n_samples']}")
    return obj, rows, lines


# ---- the explained class ----------------------------------------------------------------------------------------
def retarget(row: dict[str, Any], target: str, logged: str) -> dict[str, Any]:
    """The row as if ``target`` had been explained: the run scores both targets from the same removal call and logs
    the other one's importances, Shapley values and region similarities beside (``*_label`` / ``*_pred``); they
    take the logged target's place. Values that explain only the logged class (``s``, ``drop``, ``v_all``,
    ``v_empty``) are removed. KeyError when the log does not hold the other target."""
    if target == logged or "cci" not in row:
        return row
    row = dict(row)
    cci = dict(row["cci"])
    cci["importance"], cci[f"importance_{logged}"] = cci.pop(f"importance_{target}"), cci["importance"]
    cci["target"] = row["label"] if target == "label" else row["pred"]
    for key in ("s", "drop"):
        cci.pop(key, None)
    row["cci"] = cci
    if isinstance(row.get("shapley"), dict):
        sh = {k: v for k, v in row["shapley"].items() if k not in ("v_all", "v_empty")}
        sh["values"], sh[f"values_{logged}"] = sh.pop(f"values_{target}"), sh["values"]
        row["shapley"] = sh
    if isinstance(row.get("counterfactual"), dict):
        cf = dict(row["counterfactual"])
        for key in ALT_REGION_FIELDS:
            if key == "additive_share":  # logged only where defined, and not before issue 23
                mine, other = cf.pop(key, None), cf.pop(f"{key}_{target}", None)
                cf.update({k: v for k, v in ((key, other), (f"{key}_{logged}", mine)) if v is not None})
                continue
            cf[key], cf[f"{key}_{logged}"] = cf.pop(f"{key}_{target}"), cf[key]
        row["counterfactual"] = cf
    return row


# ---- settings -----------------------------------------------------------------------------------------------------
def diagnosis_settings(obj: dict[str, Any], asked: RescoreSettings) -> DiagnosisSettings:
    """The result's own diagnosis settings (``config.run_settings.diagnosis``: every ``DiagnosisSettings`` field it
    records) with the asked ones in place; the seed is the run's."""
    base = obj["config"].get("run_settings", {}).get("diagnosis") or {}
    known = {f.name for f in fields(DiagnosisSettings)} - {"bootstrap", "seed"}
    given: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in base.items() if k in known}
    if given.get("fine_rule") == LEGACY_DEFAULT_SETTING:
        given["fine_rule"] = "groups"
    asked_now = {"rules": asked.rules, "fine_rule": asked.fine_rule, "null_draws": asked.null_draws}
    given.update({k: v for k, v in asked_now.items() if v is not None})
    seed = int(obj["config"].get("seed", 0))
    return DiagnosisSettings(**given, bootstrap=asked.bootstrap or DiagnosisSettings().bootstrap, seed=seed)


def logged_target(obj: dict[str, Any]) -> str | None:
    attribution = obj["config"].get("attribution")
    target = attribution.get("target") if isinstance(attribution, dict) else None
    return target if target in TARGETS else None


def fine_records(config: dict[str, Any], chosen: str) -> dict[str, dict[str, Any]]:
    """{spec: the rule's record} for ``fine_rules.SENSITIVITY`` and ``chosen``, in the run's order, from what the
    run recorded (``config.diagnosis.fine_rules``); a rule it did not log is a UsageError naming those it did."""
    logged = config.get("fine_rules")
    logged = logged if isinstance(logged, dict) else {}
    specs = list(dict.fromkeys([*SENSITIVITY, chosen]))
    if chosen not in logged:
        raise UsageError(
            f"--fine-rule {chosen}: the run did not log it (logged: {', '.join(logged) or 'none'}); "
            f"rerun with --fine-rule {chosen}"
        )
    return {s: logged[s] for s in specs if s in logged}


def logged_relation(spec: str, record: dict[str, Any], rows: list[dict[str, Any]]) -> FineRelation:
    """The fine rule as the run resolved it, read back from the result's ``fine_pairs`` (sample log version 3)
    or from the errors' ``fine_by_rule`` (version 2): a rule relates label and prediction only, so the logged
    pairs are the whole relation on the logged errors."""
    fine = logged_pairs(spec, record, rows)
    return FineRelation(
        spec,
        str(record.get("description", "")),
        bool(record.get("applies")),
        int(record.get("classes", 0)),
        int(record.get("unmatched", 0)),
        lambda a, b: (a, b) in fine,
    )


def logged_pairs(spec: str, record: dict[str, Any], rows: list[dict[str, Any]]) -> frozenset[tuple[int, int]]:
    """The (label, pred) pairs of the logged errors that fine rule ``spec`` calls fine-grained: the record's
    ``fine_pairs`` where the result has them, else those of the rows whose ``fine_by_rule`` says so."""
    if "fine_pairs" in record:
        try:
            return read_pairs(record["fine_pairs"])
        except ValueError as exc:
            raise ValueError(f"config.diagnosis.fine_rules[{spec!r}].{exc}") from None
    return frozenset(
        (int(r["label"]), int(r["pred"]))
        for r in rows
        if isinstance(r.get("fine_by_rule"), dict) and r["fine_by_rule"].get(spec, False)
    )


def fine_by_rule(rows: list[dict[str, Any]], logged: dict[str, Any]) -> list[dict[str, bool] | None] | None:
    """Each row's {fine rule: fine-grained} over the run's fine rules (``config.diagnosis.fine_rules``, in its
    order), from their ``fine_pairs``: what a log of version 2 held as the errors' ``fine_by_rule`` (None for a
    correct row). None where a rule has no ``fine_pairs`` (version 2: the rows hold theirs). Rows with the same
    (label, pred) share one dict."""
    if not logged or not all(isinstance(r, dict) and "fine_pairs" in r for r in logged.values()):
        return None
    pairs = {spec: logged_pairs(spec, r, rows) for spec, r in logged.items()}
    made: dict[tuple[int, int], dict[str, bool]] = {}
    out: list[dict[str, bool] | None] = []
    for row in rows:
        pair = (int(row["label"]), int(row["pred"]))
        if pair[0] == pair[1]:
            out.append(None)
        elif pair in made:
            out.append(made[pair])
        else:
            out.append(made.setdefault(pair, {spec: pair in fine for spec, fine in pairs.items()}))
    return out


# ---- rescoring ----------------------------------------------------------------------------------------------------
def rescore_result(obj: dict[str, Any], rows: list[dict[str, Any]], asked: RescoreSettings) -> Rescored:
    """The result ``obj`` recomputed from its sample ``rows`` under ``asked`` (module docstring)."""
    config = json.loads(json.dumps(obj["config"]))  # a deep copy, as it reads back from a file
    n_boot = asked.bootstrap or DiagnosisSettings().bootstrap
    zs, _ = zero_shot_summary(
        [int(r["label"]) for r in rows],
        [r["top5"] for r in rows],
        int(obj["task"]["n_classes"]),
        [r.get("source_id") for r in rows],
        [r.get("group") for r in rows],
        int(config.get("seed", 0)),
        n_boot,
        _group_weights(config),
    )
    metrics, intervals = dict(zs["metrics"]), dict(zs["intervals"])
    if isinstance(config.get("run_settings"), dict):  # the intervals are drawn as a run draws them now
        config["run_settings"]["bootstrap"] = BOOTSTRAP_VERSION
    if "groups" in zs["config"]:
        config["groups"] = zs["config"]["groups"]
    rows, why = _rescore_diagnosis(obj, rows, asked, config, metrics, intervals)
    if "distractors" in config:  # needs the predicted class's masks: not in any log
        config.pop("distractors")
        config.get("run_settings", {}).pop("distractors", None)
        rows = [{k: v for k, v in r.items() if k not in DISTRACTOR_FIELDS} for r in rows]
    not_rescored = _lost(obj, metrics, why)
    if "concepts" in config:  # its background errors follow the diagnosis: a stale summary must not stay behind
        config.pop("concepts")
        config.get("run_settings", {}).pop("concepts", None)
        not_rescored.append("concepts: the concept summary (--concepts) is not recomputed from the log; rerun")
    config["rescored"] = {"asked": asked.asked(), "bootstrap": n_boot, "not_rescored": not_rescored}
    notes = [*obj.get("notes", []), f"rescored from the sample log ({json.dumps(asked.asked())})"]
    notes += [f"not rescored: {item}" for item in not_rescored]
    made = files.provenance("none", files.now())  # who rescored, when: the numbers' own provenance is kept
    provenance = {
        **obj["provenance"],
        "rescored": {k: made[k] for k in ("harness_version", "git_commit", "finished_at")},
    }
    result = {**obj, "metrics": metrics, "intervals": intervals, "config": config, "notes": notes}
    return Rescored({**result, "provenance": provenance}, rows, not_rescored)


def _group_weights(config: dict[str, Any]) -> dict[str, float] | None:
    """The task's group weights as the run recorded them (``config.groups[g].weight``; Waterbirds' adj_acc_avg)."""
    groups = config.get("groups")
    if not isinstance(groups, dict) or not groups:
        return None
    weights: dict[str, Any] = {g: e.get("weight") for g, e in groups.items() if isinstance(e, dict)}
    if not all(files.is_number(w) for w in weights.values()):
        return None
    return {g: float(w) for g, w in weights.items()}


def _lost(obj: dict[str, Any], metrics: dict[str, Any], why: str | None) -> list[str]:
    """The result's metrics the rescore could not recompute, each with why. A diagnosis metric that the new
    settings simply do not define (``bg_er_label`` under a rule that reads no importances) is not lost."""
    diag = obj["config"].get("diagnosis")
    rules = diag.get("rules") if isinstance(diag, dict) else None
    by_rule = diag.get("by_rule") if isinstance(diag, dict) else None
    head = by_rule.get(rules[0]) if isinstance(by_rule, dict) and isinstance(rules, list) and rules else None
    diagnosis_keys = set(head) if isinstance(head, dict) else set()
    lost = []
    for key in obj["metrics"]:
        if key in metrics or (key in diagnosis_keys and why is None):
            continue
        if key in diagnosis_keys:
            lost.append(f"{key}: {why}")
        elif isinstance(obj["config"].get("distractors"), dict):
            lost.append(f"{key}: the distractor check needs the predicted class's masks, which no log holds")
        else:
            lost.append(f"{key}: an analysis step's summary, not recomputable from the sample log")
    return lost


def _rescore_diagnosis(
    obj: dict[str, Any],
    rows: list[dict[str, Any]],
    asked: RescoreSettings,
    config: dict[str, Any],
    metrics: dict[str, Any],
    intervals: dict[str, Any],
) -> tuple[list[dict[str, Any]], str | None]:
    """The diagnosis redone into ``config`` / ``metrics`` / ``intervals``; (the new rows, why not when it cannot)."""
    diag = config.get("diagnosis")
    changes = asked.rules or asked.fine_rule or asked.target or asked.null_draws is not None
    if not isinstance(diag, dict) or not isinstance(diag.get("by_rule"), dict):
        if changes:
            raise UsageError("the run has no diagnosis to rescore (no attribution with masks, or it was skipped)")
        return rows, None
    if int(config.get("sample_log_version", 1)) < FIRST_RESCORABLE:
        why = "the sample log (version 1) lacks the patch-grid masks; rerun with --log-samples to rescore it"
        config["diagnosis"] = {"status": "not rescored", "reason": why}
        return [{k: v for k, v in r.items() if k not in DIAGNOSIS_FIELDS} for r in rows], why
    settings = diagnosis_settings(obj, asked)
    logged = logged_target(obj)
    target = asked.target or logged
    if target != logged and target is not None and logged is not None:
        try:
            rows = [retarget(r, target, logged) for r in rows]
        except KeyError as exc:
            raise UsageError(
                f"--cci-target {target}: the sample log holds no {exc.args[0]} (the other target)"
            ) from None
        config["attribution"]["target"] = target
        config.get("run_settings", {}).get("steps", {}).get("attribution", {})["target"] = target
    fines = fine_records(diag, settings.fine_rule)
    relation = logged_relation(settings.fine_rule, fines[settings.fine_rule], rows)
    grids = [None if r.get("fg") is None else read_grid(r["fg"]) for r in rows]
    records = row_records(rows, grids, relation, settings, fine_by_rule(rows, diag.get("fine_rules") or {}))
    result = summarise_pair(records, settings, fines, diag.get("segmenter") or {}, target)
    metrics.update(result.metrics)
    intervals.update(result.intervals)
    config["diagnosis"] = result.config
    config["sample_log_version"] = files.SAMPLE_LOG_VERSION  # the rows are written as this version writes them
    run_settings = config.get("run_settings")
    if isinstance(run_settings, dict) and isinstance(run_settings.get("diagnosis"), dict):
        old = run_settings["diagnosis"]
        run_settings["diagnosis"] = {
            **settings.as_config(),
            "segmenter": old.get("segmenter"),
            "segmenter_settings": old.get("segmenter_settings"),
        }
    out, redone = [], frozenset((*DIAGNOSIS_FIELDS, "fg"))
    kept_keys: dict[tuple[str, ...], list[str]] = {}
    for row, record in zip(rows, records):
        keys = tuple(row)  # rows of a log share a few key lists: what is kept of each is worked out once
        kept = kept_keys.get(keys) or kept_keys.setdefault(keys, [k for k in keys if k not in redone])
        out.append({**{k: row[k] for k in kept}, **record.log_fields()})
    return out, None


def rescore_file(path: Path, asked: RescoreSettings, out_dir: Path | None = None) -> Rescored:
    """Rescore one result file; with ``out_dir`` write the new result (and its sample log) there, the result
    file last. Refuses to write over the file it reads. A log row the rescore left as it was is written as the
    line it was read from (``files.write_jsonl``'s ``logged``), not serialized again."""
    with paused_gc():
        obj, rows, lines = load_result_log(Path(path))
        done = rescore_result(obj, rows, asked)
        done.result["config"]["rescored"]["from"] = str(path)
        if out_dir is not None:
            target = files.result_path(Path(out_dir), obj["model"]["spec"], obj["task"]["name"])
            if target.resolve() == Path(path).resolve():
                raise UsageError(f"--out {out_dir} would overwrite the result it rescores; choose another folder")
            files.write_jsonl(files.samples_path(target), done.samples, logged=list(zip(rows, lines)))
            files.write_json(target, done.result)
    return done
