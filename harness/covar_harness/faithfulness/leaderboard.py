"""Faithfulness result files in the leaderboard: their schema check (``validate`` and the leaderboard's
``collect`` call it), the "faithfulness" table per task (methods x models, each metric with its bootstrap
interval and the ratio to the random baseline of the same model and task) and their long-format rows for csv /
json. Plain data for the leaderboard's own renderers; no numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from covar_harness.common.console import unsafe_name, unsafe_text
from covar_harness.results.files import _short, is_number

if TYPE_CHECKING:
    from covar_harness.leaderboard.tables import Table

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
# (metric, column title, its ratio's title) of the table; short: the terminal table is 13 columns wide
COLUMNS = (
    ("deletion_auc", "Del. AUC", "Del. ratio"),
    ("deletion_tokens_auc", "Del. tokens AUC", "Del. tokens ratio"),
    ("insertion_auc", "Ins. AUC", "Ins. ratio"),
    ("insertion_tokens_auc", "Ins. tokens AUC", "Ins. tokens ratio"),
    ("pointing_energy", "Pointing energy", "Pointing ratio"),
)
TITLE = "faithfulness: "
# settings that change no number of the curves: a random row with other values still is the method's baseline
NEUTRAL_SETTINGS = ("bootstrap",)


def is_faithfulness(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA


# ---- schema ------------------------------------------------------------------------------------------------
def validate(obj: dict[str, Any]) -> list[str]:
    """Every problem with a faithfulness result (``command.py`` writes them), each ``key: message``; empty when
    it is safe to tabulate: names are one-line names, numbers finite, intervals ordered, shares in [0, 1]."""
    from covar_harness.results.validation import _text_problem

    errors: list[str] = []
    for key in ("model", "task", "attributor"):
        value = obj.get(key)
        problem = _text_problem(value, name=True) if isinstance(value, str) else "missing or not a string"
        if problem:
            errors.append(f"{key}: {problem}")
    for key in ("n_samples", "n_failed_images"):
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(f"{key}: must be an integer >= 0, got {_short(value)}")
    error = obj.get("error")
    if error is not None and not (isinstance(error, str) and _text_problem(error, name=False) is None):
        errors.append("error: must be null or one line of text")
    notes = obj.get("notes", [])
    if not isinstance(notes, list) or not all(
        isinstance(n, str) and _text_problem(n, name=False) is None for n in notes
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


# ---- table -------------------------------------------------------------------------------------------------
def latest(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(model, task, method) -> record; the last file of a triple wins, as in the leaderboard."""
    return {(r["model"], r["task"], r["attributor"]): r for r in records}


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same curve settings (steps, replacement, score, ...): otherwise a ratio compares different protocols."""

    def strip(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r["settings"].items() if k not in NEUTRAL_SETTINGS}

    return strip(a) == strip(b)


def baseline_of(rec: dict[str, Any], by_key: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """The random row of the same model and task with the same settings, or None."""
    base = by_key.get((rec["model"], rec["task"], BASELINE))
    return base if base is not None and not base.get("error") and _comparable(rec, base) else None


def ratio(rec: dict[str, Any], base: dict[str, Any] | None, metric: str) -> float | None:
    value: Any = rec.get(metric)
    ref: Any = None if base is None else base.get(metric)
    return value / ref if is_number(value) and is_number(ref) and ref != 0 else None


def _value_cell(rec: dict[str, Any], metric: str) -> str | None:
    """``0.412 [0.381, 0.440]``: three decimals (AUCs are small fractions; the leaderboard's percentages do not
    fit them), the interval when there is one."""
    entry = rec["metrics"].get(metric, {})
    mean, interval = entry.get("mean"), entry.get("interval")
    if mean is None:
        return None
    return f"{mean:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def faithfulness_tables(records: Sequence[dict[str, Any]]) -> list[Table]:
    """One table per task: rows method x model (per model, the random baseline last), for each metric that some
    row has its value with interval and the ratio to the random row of the same model and task."""
    from covar_harness.leaderboard.tables import Table

    by_key = latest(records)
    tables = []
    for task in dict.fromkeys(k[1] for k in by_key):
        rows = sorted((r for k, r in by_key.items() if k[1] == task), key=_row_order)
        shown = [c for c in COLUMNS if any(r["metrics"].get(c[0], {}).get("mean") is not None for r in rows)]
        columns = ["Method", "Model", "n", *(title for _, value, ratio in shown for title in (value, ratio))]
        table = Table(TITLE + task, columns, caption=_caption(rows, by_key))
        for r in rows:
            base = baseline_of(r, by_key)
            cells: list[Any] = [r["attributor"] + (" (failed)" if r.get("error") else ""), r["model"], r["n_samples"]]
            for metric, _, _ in shown:
                value = ratio(r, base, metric)
                cells += [_value_cell(r, metric), None if value is None else f"{value:.2f}x"]
            table.rows.append(cells)
        tables.append(table)
    return tables


def _row_order(r: dict[str, Any]) -> tuple[str, bool, str]:
    return (r["model"], r["attributor"] == BASELINE, r["attributor"])


def _caption(rows: list[dict[str, Any]], by_key: dict) -> str:
    """What the numbers are, the protocol when every row shares it, and what has no ratio and why."""
    text = (
        "Mean over samples [95% bootstrap interval]; tokens: patches removed from attention instead of pixels "
        "replaced. Ratio: method / random on the same model and task, where random is CCI's clusters with "
        "random importances (cluster-constant; `random-patch` is the per-patch uniform order, a row of its own); "
        "deletion lower is better (< 1x), insertion and pointing energy higher (> 1x)."
    )
    protocols = {
        (r["settings"].get("score"), r["settings"].get("steps"), r["settings"].get("replacement")) for r in rows
    }
    if len(protocols) == 1:
        score, steps, replacement = next(iter(protocols))
        text += f" {score} score of the explained class, {steps} steps, deleted patches become {replacement}."
    failed = [f"{r['attributor']} on {r['model']}: {r['error']}" for r in rows if r.get("error")]
    if failed:
        text += " Failed: " + "; ".join(failed) + "."
    unmatched = sorted({r["model"] for r in rows if r["attributor"] != BASELINE and baseline_of(r, by_key) is None})
    if unmatched:
        text += f" No ratio for {', '.join(unmatched)}: no random row with the same settings."
    return text


# ---- long format -------------------------------------------------------------------------------------------
def long_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """csv / json rows in the leaderboard's long format: metric ``faithfulness/<method>/<metric>`` with its mean,
    ``..._ci_low`` / ``..._ci_high`` and ``..._vs_random``; ``n_samples`` is the samples the metric covers."""
    by_key = latest(records)
    out = []
    for (model, task, method), r in by_key.items():
        base = baseline_of(r, by_key)
        for metric in METRICS:
            entry = r["metrics"].get(metric, {})
            if entry.get("mean") is None:
                continue
            interval = entry.get("interval") or [None, None]
            name = f"faithfulness/{method}/{metric}"
            row = {"model": model, "family": "", "task": task, "task_version": None, "n_samples": entry.get("n")}
            for suffix, value in (
                ("", entry["mean"]),
                ("_ci_low", interval[0]),
                ("_ci_high", interval[1]),
                ("_vs_random", ratio(r, base, metric)),
            ):
                if value is not None:
                    out.append({**row, "metric": name + suffix, "value": value, "headline": False, "rule": None})
    return out
