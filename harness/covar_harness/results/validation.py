"""The result schema and :func:`validate`: what a result file must hold before it is tabulated (leaderboard CI).

``validate`` here is the documented leaderboard-CI entry point.
"""

from __future__ import annotations

from typing import Any

from covar_harness.catalog.taskconfig import RETRIEVAL_METRICS, TASK_KIND
from covar_harness.results import faithfulness
from covar_harness.results.faithfulness import SCHEMA as FAITHFULNESS
from covar_harness.results.files import SCHEMA_VERSION, is_number, short_value, text_problem

FRACTION_METRICS = (
    "acc1",
    "acc5",
    "mean_per_class_recall",
    "fg_driven_rate",
    "bg_er",
    "fine_er",
    "bg_er_null_p",  # p-values and the counterfactual truth's shares lie in [0, 1] too (issue 23)
    "fine_er_null_p",
    "bg_sufficient_rate",
    "fg_sufficient_rate",
    *RETRIEVAL_METRICS,
)

_SPEC: dict[str, dict[str, type | tuple]] = {
    "model": {"spec": str, "name": str, "family": str},
    "task": {
        "name": str,
        "version": (int, str),
        "n_samples": int,
        "n_failed": int,
        "n_classes": int,
        "data_fingerprint": str,
    },
    "metrics": {"acc1": (float, int), "acc5": (float, int, type(None)), "mean_per_class_recall": (float, int)},
    "config": {"batch_size": int, "precision": str, "seed": int, "templates": list},
    "provenance": {
        "harness_version": str,
        "python": str,
        "torch": (str, type(None)),
        "device": str,
        "started_at": str,
        "finished_at": str,
    },
}
# Printed by the leaderboard or used as names: one line, no control characters (see console.unsafe_name).
_NAMES = (
    ("model", "spec"),
    ("model", "name"),
    ("model", "family"),
    ("model", "target"),
    ("task", "name"),
    ("task", "version"),
    ("task", "headline"),
    ("task", "kind"),
)
# A retrieval task (``task.kind``) reports recalls in place of the accuracies (covar_harness.run.retrieval).
_RETRIEVAL_METRICS_SPEC: dict[str, type | tuple] = {name: (float, int) for name in RETRIEVAL_METRICS}

# Differences of two fractions lie in [-1, 1] (results made before issue 23 carried BG-Er minus its null);
# every other interval is a fraction's.
SIGNED_SUFFIXES = ("_minus_null",)


def _tname(t) -> str:
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,))).replace("NoneType", "null")


def validate(obj: Any) -> list[str]:
    """Every problem with a result object, each as ``key.path: message``; empty when valid.

    A file this accepts is safe to tabulate: the leaderboard relies on every check here.
    """
    if not isinstance(obj, dict):
        return ["top level: must be a JSON object"]
    if obj.get("schema") == FAITHFULNESS:  # valid or not, never a classification record (validate_any checks it)
        return [f"schema: {FAITHFULNESS} is a faithfulness result, not a classification result"]
    errors: list[str] = []
    version = obj.get("schema_version")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        errors.append(f"schema_version: expected {SCHEMA_VERSION}, got {short_value(version)}")
    _check_sections(obj, errors)
    _check_names(obj, errors)
    _check_metrics(obj, errors)
    _check_intervals(obj.get("intervals"), errors)
    _check_lists(obj, errors)
    return errors


def validate_any(obj: Any) -> list[str]:
    """:func:`validate` for classification results, the faithfulness schema's own check for ``faithfulness``
    results (``covar-harness validate`` and the leaderboard take both; readers of classification records call
    :func:`validate`, which refuses a faithfulness file in one line)."""
    return faithfulness.validate(obj) if faithfulness.is_faithfulness(obj) else validate(obj)


def _section(obj: dict, name: str) -> dict:
    return obj[name] if isinstance(obj.get(name), dict) else {}


def _check_sections(obj: dict, errors: list[str]) -> None:
    for section, fields in _SPEC.items():
        if section == "metrics" and _section(obj, "task").get("kind") == TASK_KIND:
            fields = _RETRIEVAL_METRICS_SPEC
        block = obj.get(section)
        if not isinstance(block, dict):
            errors.append(f"{section}: missing or not an object")
            continue
        for key, typ in fields.items():
            if key not in block:
                errors.append(f"{section}.{key}: missing")
            elif isinstance(block[key], bool) or not isinstance(block[key], typ):
                errors.append(f"{section}.{key}: expected {_tname(typ)}, got {type(block[key]).__name__}")
    task = _section(obj, "task")
    for key in ("n_samples", "n_failed", "n_classes"):
        if isinstance(task.get(key), int) and not isinstance(task[key], bool) and task[key] < 0:
            errors.append(f"task.{key}: must be >= 0")
    if (
        isinstance(task.get("n_samples"), int)
        and task.get("n_samples") == 0
        and _section(obj, "metrics").get("acc1") is not None
    ):
        errors.append("task.n_samples: 0 samples cannot have an accuracy")


def _check_names(obj: dict, errors: list[str]) -> None:
    for section, key in _NAMES:
        block = _section(obj, section)
        value = block.get(key)
        if isinstance(value, str):
            problem = text_problem(value, name=True) if value or key != "family" else None
            if problem:
                errors.append(f"{section}.{key}: {problem}")
        elif key in ("target", "headline", "kind") and key in block and not (key == "target" and value is None):
            errors.append(f"{section}.{key}: expected str, got {type(value).__name__}")
    headline = _section(obj, "task").get("headline")
    metrics = _section(obj, "metrics")
    if isinstance(headline, str) and headline not in metrics:
        errors.append(f"task.headline: names no metric ({short_value(headline)})")
    elif isinstance(headline, str) and metrics[headline] is not None and not is_number(metrics[headline]):
        errors.append(f"task.headline: metric {short_value(headline)} is not a number")


def _check_metrics(obj: dict, errors: list[str]) -> None:
    """Every metric a finite number or null; fractions in [0, 1]; metric names are names."""
    for key, value in _section(obj, "metrics").items():
        problem = text_problem(key, name=True) if isinstance(key, str) else "must be a string"
        if problem:
            errors.append(f"metrics: name {short_value(key)} {problem}")
        elif value is not None and not is_number(value):
            errors.append(f"metrics.{key}: must be a finite number or null, got {short_value(value)}")
        elif key in FRACTION_METRICS and value is not None and not 0.0 <= value <= 1.0:
            errors.append(f"metrics.{key}: must be a fraction in [0, 1], got {short_value(value)}")


def _check_intervals(intervals: Any, errors: list[str]) -> None:
    if intervals is None:
        return
    if not isinstance(intervals, dict):
        errors.append(f"intervals: must be an object of [low, high] pairs, got {type(intervals).__name__}")
        return
    for key, interval in intervals.items():
        problem = text_problem(key, name=True) if isinstance(key, str) else "must be a string"
        if problem:
            errors.append(f"intervals: name {short_value(key)} {problem}")
        elif not (isinstance(interval, list) and len(interval) == 2 and all(is_number(v) for v in interval)):
            errors.append(f"intervals.{key}: must be [low, high] (finite numbers)")
        elif not (-1 if key.endswith(SIGNED_SUFFIXES) else 0) <= interval[0] <= interval[1] <= 1:
            low = "-1" if key.endswith(SIGNED_SUFFIXES) else "0"
            errors.append(
                f"intervals.{key}: must satisfy {low} <= low <= high <= 1, "
                f"got [{short_value(interval[0])}, {short_value(interval[1])}]"
            )


def _check_lists(obj: dict, errors: list[str]) -> None:
    """Optional lists: tags are names, notes are text lines, templates and failed files are strings."""
    task = _section(obj, "task")
    for where, value, kind in (
        ("task.tags", task.get("tags"), "name"),
        ("notes", obj.get("notes"), "text"),
        ("failed_files", obj.get("failed_files"), None),
    ):
        if value is not None:
            _check_strings(where, value, kind, errors)
    templates = _section(obj, "config").get("templates")
    if isinstance(templates, list):  # missing or not a list: said by _check_sections
        _check_strings("config.templates", templates, None, errors)
    if task.get("dataset") is not None and not isinstance(task["dataset"], str):
        errors.append(f"task.dataset: expected str or null, got {type(task['dataset']).__name__}")


def _check_strings(where: str, value: Any, kind: str | None, errors: list[str]) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{where}: must be a list of strings")
        return
    for item in value if kind else ():
        problem = text_problem(item, name=kind == "name")
        if problem:
            errors.append(f"{where}: {short_value(item)} {problem}")
            return
