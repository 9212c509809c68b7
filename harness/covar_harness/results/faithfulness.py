"""The faithfulness result schema (``covar-harness faithfulness`` writes these files): its name, metrics, the random
baselines every method is paired with, the column titles the terminal and the leaderboard share, and
:func:`validate`, which ``validate`` and the leaderboard's ``collect`` call (through
``validation.validate_any``). Plain data checks; no numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covar_harness.common.console import unsafe_name, unsafe_text
from covar_harness.results.files import is_number, short_value, text_problem

SCHEMA = "covar-harness/faithfulness/1"
# the random baselines every method is compared with, per image: CCI's clusters with random importances, and the
# standard per-patch uniform order (the issue 23 audit: the choice moves every comparison)
BASELINES = ("random", "random-patch")
METRICS = (
    "deletion_auc",
    "insertion_auc",
    "deletion_tokens_auc",
    "insertion_tokens_auc",
    "pointing_energy",
    "relevance_rank_accuracy",
)
FRACTIONS = ("pointing_energy", "relevance_rank_accuracy")  # shares; the AUCs of a cosine score may be negative
# (metric, column title) of the tables; short: the terminal tables are up to 10 columns wide
COLUMNS = (
    ("deletion_auc", "Del. AUC"),
    ("deletion_tokens_auc", "Del. tokens AUC"),
    ("insertion_auc", "Ins. AUC"),
    ("insertion_tokens_auc", "Ins. tokens AUC"),
    ("pointing_energy", "Pointing energy"),
    ("relevance_rank_accuracy", "Rank accuracy"),
)
PAIRED_TITLES = ("Δ del", "Δ del tok", "Δ ins", "Δ ins tok", "Δ energy", "Δ rank")  # per COLUMNS entry
PAIRED_CAPTION = (
    "Method minus baseline, per image on the same images, averaged [95% bootstrap interval over images, whole "
    "source objects resampled where every image has a source_id]. Deletion: below 0 is better; insertion, "
    "pointing energy and rank accuracy: above 0. An interval that excludes 0 is a win (or a loss). random: CCI's "
    "clusters with random importances (cluster-constant); random-patch: the per-patch uniform order."
)


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
            errors.append(f"{key}: must be an integer >= 0, got {short_value(value)}")
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
    errors += _paired_problems(obj.get("paired", {}))
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
            return [f"settings: name {short_value(key)} must be a one-line name"]
        if isinstance(value, str) and unsafe_text(value):
            return [f"settings.{key}: must be one line of text"]
        if not (value is None or isinstance(value, (str, bool)) or is_number(value)):
            return [f"settings.{key}: must be text, a finite number, true/false or null, got {short_value(value)}"]
    return []


def _paired_problems(paired: Any) -> list[str]:
    """``paired`` (optional: files written before it lack it) is {baseline: {metric: {mean, interval, p, n}}}:
    one-line baseline names, known metrics, finite numbers, an ordered interval, p in [0, 1]."""
    if not isinstance(paired, dict):
        return ["paired: must be an object"]
    out = []
    for base, entries in paired.items():
        if not isinstance(base, str) or unsafe_name(base) or not isinstance(entries, dict):
            return [f"paired: {short_value(base)} must be a one-line name mapped to an object"]
        for metric, entry in entries.items():
            where = f"paired.{base}.{metric}"
            if metric not in METRICS or not isinstance(entry, dict):
                out.append(f"{where}: not a metric, or not an object")
                continue
            out += [f"{where}.{e}" for e in _entry_problems(entry)]
    return out


def _entry_problems(entry: dict[str, Any]) -> list[str]:
    mean, interval, p, n = entry.get("mean"), entry.get("interval"), entry.get("p"), entry.get("n")
    out = []
    if not is_number(mean):
        out.append(f"mean: must be a finite number, got {short_value(mean)}")
    if interval is not None and not (
        isinstance(interval, list) and len(interval) == 2 and all(is_number(v) for v in interval)
    ):
        out.append("interval: must be [low, high] (finite numbers) or null")
    elif interval is not None and not interval[0] <= interval[1]:
        out.append("interval: low must be <= high")
    if p is not None and not (is_number(p) and 0.0 <= p <= 1.0):
        out.append(f"p: must be null or in [0, 1], got {short_value(p)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        out.append(f"n: must be an integer >= 1, got {short_value(n)}")
    return out


def paired_cell(entry: dict[str, Any] | None) -> str | None:
    """``-0.133 [-0.255, -0.014]``: a paired difference with its interval, signed (0 is the baseline)."""
    if not entry or entry.get("mean") is None:
        return None
    interval = entry.get("interval")
    return f"{entry['mean']:+.3f}" + (f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "")


def _metric_problems(name: str, entry: Any, headline: Any) -> list[str]:
    """``metrics.<name>`` is {mean, interval, n} and the top-level ``<name>`` repeats its mean."""
    if not isinstance(entry, dict):
        return [f"metrics.{name}: missing or not an object"]
    mean, interval, n = entry.get("mean"), entry.get("interval"), entry.get("n")
    out = []
    if mean is not None and not is_number(mean):
        out.append(f"metrics.{name}.mean: must be a finite number or null, got {short_value(mean)}")
    elif name in FRACTIONS and mean is not None and not 0.0 <= mean <= 1.0:
        out.append(f"metrics.{name}.mean: must be a fraction in [0, 1], got {short_value(mean)}")
    if interval is not None and not (
        isinstance(interval, list) and len(interval) == 2 and all(is_number(v) for v in interval)
    ):
        out.append(f"metrics.{name}.interval: must be [low, high] (finite numbers) or null")
    elif interval is not None and not interval[0] <= interval[1]:
        out.append(f"metrics.{name}.interval: low must be <= high")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        out.append(f"metrics.{name}.n: must be an integer >= 0, got {short_value(n)}")
    if headline != mean:
        out.append(f"{name}: must equal metrics.{name}.mean")
    return out


def paired_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[list[Any]]:
    """One row per record x baseline it was paired with (``paired`` of the file): method, model, baseline, the
    images paired (the most any metric had), then each metric's difference cell."""
    out: list[list[Any]] = []
    for r in rows:
        for base, entries in (r.get("paired") or {}).items():
            n = max((e.get("n", 0) for e in entries.values()), default=0)
            out.append([r["attributor"], r["model"], base, n, *(paired_cell(entries.get(m)) for m in metrics)])
    return out
