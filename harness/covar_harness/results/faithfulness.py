"""The faithfulness result schema (``covar-harness faithfulness`` writes these files): its name, metrics and
:func:`validate`, which ``validate`` and the leaderboard's ``collect`` call (through
``validation.validate_any``). Plain data checks; no numpy, no torch.
"""

from __future__ import annotations

from typing import Any

from covar_harness.common.console import unsafe_name, unsafe_text
from covar_harness.results.files import _short, is_number, text_problem

SCHEMA = "covar-harness/faithfulness/1"
BASELINE = "random"
METRICS = (
    "deletion_auc",
    "insertion_auc",
    "deletion_tokens_auc",
    "insertion_tokens_auc",
    "pointing_energy",
    "relevance_rank_accuracy",
)
FRACTIONS = ("pointing_energy", "relevance_rank_accuracy")  # shares; the AUCs of a cosine score may be negative


def is_faithfulness(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA


# ---- schema ------------------------------------------------------------------------------------------------
def validate(obj: dict[str, Any]) -> list[str]:
    """Every problem with a faithfulness result (``command.py`` writes them), each ``key: message``; empty when
    it is safe to tabulate: names are one-line names, numbers finite, intervals ordered, shares in [0, 1]."""
    errors: list[str] = []
    for key in ("model", "task", "attributor"):
        value = obj.get(key)
        problem = text_problem(value, name=True) if isinstance(value, str) else "missing or not a string"
        if problem:
            errors.append(f"{key}: {problem}")
    for key in ("n_samples", "n_failed_images"):
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(f"{key}: must be an integer >= 0, got {_short(value)}")
    error = obj.get("error")
    if error is not None and not (isinstance(error, str) and text_problem(error, name=False) is None):
        errors.append("error: must be null or one line of text")
    notes = obj.get("notes", [])
    if not isinstance(notes, list) or not all(
        isinstance(n, str) and text_problem(n, name=False) is None for n in notes
    ):
        errors.append("notes: must be a list of text lines")
    for key in ("settings", "curves"):
        if not isinstance(obj.get(key), dict):
            errors.append(f"{key}: missing or not an object")
    errors += _settings_problems(obj.get("settings"))
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        return [*errors, "metrics: missing or not an object"]
    for name in METRICS:
        errors += _metric_problems(name, metrics.get(name), obj.get(name))
    return errors


def _settings_problems(settings: Any) -> list[str]:
    """The table compares, hashes and prints settings: each one a name mapped to a scalar (text, a finite number,
    true / false or null), never a list or an object."""
    if not isinstance(settings, dict):
        return []
    for key, value in settings.items():
        if not isinstance(key, str) or not key.strip() or unsafe_name(key):
            return [f"settings: name {_short(key)} must be a one-line name"]
        if isinstance(value, str) and unsafe_text(value):
            return [f"settings.{key}: must be one line of text"]
        if not (value is None or isinstance(value, (str, bool)) or is_number(value)):
            return [f"settings.{key}: must be text, a finite number, true/false or null, got {_short(value)}"]
    return []


def _metric_problems(name: str, entry: Any, headline: Any) -> list[str]:
    """``metrics.<name>`` is {mean, interval, n} and the top-level ``<name>`` repeats its mean."""
    if not isinstance(entry, dict):
        return [f"metrics.{name}: missing or not an object"]
    mean, interval, n = entry.get("mean"), entry.get("interval"), entry.get("n")
    out = []
    if mean is not None and not is_number(mean):
        out.append(f"metrics.{name}.mean: must be a finite number or null, got {_short(mean)}")
    elif name in FRACTIONS and mean is not None and not 0.0 <= mean <= 1.0:
        out.append(f"metrics.{name}.mean: must be a fraction in [0, 1], got {_short(mean)}")
    if interval is not None and not (
        isinstance(interval, list) and len(interval) == 2 and all(is_number(v) for v in interval)
    ):
        out.append(f"metrics.{name}.interval: must be [low, high] (finite numbers) or null")
    elif interval is not None and not interval[0] <= interval[1]:
        out.append(f"metrics.{name}.interval: low must be <= high")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        out.append(f"metrics.{name}.n: must be an integer >= 0, got {_short(n)}")
    if headline != mean:
        out.append(f"{name}: must equal metrics.{name}.mean")
    return out
