"""The leaderboard's "faithfulness" table per task (methods x models, each metric with its bootstrap interval and
the ratio to the random baseline of the same model and task) and its long-format rows for csv / json, from
faithfulness result files (schema: ``results.faithfulness``). Like ``cost_table`` and ``ranks``, it returns
rows; ``tables.build_tables`` makes them tables. No numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covar_harness.results.faithfulness import BASELINE, METRICS
from covar_harness.results.files import is_number

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


def faithfulness_tables(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[str], list[list[Any]], str]]:
    """One table per task as (title, columns, rows, caption): rows method x model (per model, the random
    baseline last), for each metric that some row has its value with interval and the ratio to the random row of
    the same model and task."""
    by_key = latest(records)
    tables: list[tuple[str, list[str], list[list[Any]], str]] = []
    for task in dict.fromkeys(k[1] for k in by_key):
        rows = sorted((r for k, r in by_key.items() if k[1] == task), key=_row_order)
        shown = [c for c in COLUMNS if any(r["metrics"].get(c[0], {}).get("mean") is not None for r in rows)]
        columns = ["Method", "Model", "n", *(title for _, value, ratio in shown for title in (value, ratio))]
        cells_of_rows = []
        for r in rows:
            base = baseline_of(r, by_key)
            cells: list[Any] = [r["attributor"] + (" (failed)" if r.get("error") else ""), r["model"], r["n_samples"]]
            for metric, _, _ in shown:
                value = ratio(r, base, metric)
                cells += [_value_cell(r, metric), None if value is None else f"{value:.2f}x"]
            cells_of_rows.append(cells)
        tables.append((TITLE + task, columns, cells_of_rows, _caption(rows, by_key)))
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
