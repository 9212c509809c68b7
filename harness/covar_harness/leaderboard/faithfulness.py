"""The leaderboard's faithfulness tables per task, from faithfulness result files (schema:
``results.faithfulness``): the values table (methods x models, each metric with its bootstrap interval) and the
paired differences table (each method minus each random baseline, per image, with a bootstrap interval: ``paired``
of the result files), and their long-format rows for csv / json. Like ``cost_table`` and ``ranks``, it returns
rows; ``tables.build_tables`` makes them tables. No numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covar_harness.results.faithfulness import BASELINES, COLUMNS, METRICS, PAIRED_CAPTION, PAIRED_TITLES, paired_rows

TITLE = "faithfulness: "
PAIRED_TITLE = "faithfulness, paired differences: "


# ---- table -------------------------------------------------------------------------------------------------
def protocol_of(r: dict[str, Any]) -> str:
    """The record's curve protocol (``settings.protocol``; files before protocols existed: ``patches``)."""
    value = r["settings"].get("protocol")
    return value if isinstance(value, str) and value else "patches"


def latest(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """(model, task, method, protocol) -> record; the last file of each wins, as in the leaderboard."""
    return {(r["model"], r["task"], r["attributor"], protocol_of(r)): r for r in records}


def _value_cell(rec: dict[str, Any], metric: str) -> str | None:
    """``0.412 [0.381, 0.440]``: three decimals (AUCs are small fractions; the leaderboard's percentages do not
    fit them), the interval when there is one."""
    entry = rec["metrics"].get(metric, {})
    mean, interval = entry.get("mean"), entry.get("interval")
    if mean is None:
        return None
    return f"{mean:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def faithfulness_tables(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[str], list[list[Any]], str]]:
    """Per task: the values table (rows method x model, per model the random baselines last; each metric that
    some row has, with its interval) and, when the files carry them, the paired differences table."""
    by_key = latest(records)
    tables: list[tuple[str, list[str], list[list[Any]], str]] = []
    for task, protocol in dict.fromkeys((k[1], k[3]) for k in by_key):
        rows = sorted((r for k, r in by_key.items() if (k[1], k[3]) == (task, protocol)), key=_row_order)
        shown = [c for c in COLUMNS if any(r["metrics"].get(c[0], {}).get("mean") is not None for r in rows)]
        where = task if protocol == "patches" else f"{task} (protocol {protocol})"
        cells = [
            [r["attributor"] + (" (failed)" if r.get("error") else ""), r["model"], r["n_samples"]]
            + [_value_cell(r, m) for m, _ in shown]
            for r in rows
        ]
        tables.append((TITLE + where, ["Method", "Model", "n", *(t for _, t in shown)], cells, _caption(rows)))
        paired = paired_rows(rows, [m for m, _ in shown])
        if paired:
            titles = dict(zip((m for m, _ in COLUMNS), PAIRED_TITLES))
            columns = ["Method", "Model", "vs", "n", *(titles[m] for m, _ in shown)]
            tables.append((PAIRED_TITLE + where, columns, paired, PAIRED_CAPTION))
    return tables


def _row_order(r: dict[str, Any]) -> tuple[str, int, str]:
    base = BASELINES.index(r["attributor"]) if r["attributor"] in BASELINES else -1
    return (r["model"], base, r["attributor"])


def _caption(rows: list[dict[str, Any]]) -> str:
    """What the numbers are, the protocol when every row shares it, and what failed."""
    text = (
        "Mean over samples [95% bootstrap interval]; tokens: patches removed from attention instead of pixels "
        "replaced. Deletion: lower is better; insertion, pointing energy and rank accuracy: higher. Compare "
        "methods through the paired differences table (per image, against random and random-patch), not by "
        "these means' overlap."
    )
    keys = ("protocol", "score", "target", "steps", "replacement")
    protocols = {tuple(r["settings"].get(k) for k in keys) for r in rows}
    if len(protocols) == 1:
        protocol, score, target, steps, replacement = next(iter(protocols))
        text += (
            f" Protocol {protocol or 'patches'}: {score} score of the {target} class, {steps} steps, deleted "
            f"{'patches' if protocol in (None, 'patches') else 'pixels'} become {replacement}."
        )
    failed = [f"{r['attributor']} on {r['model']}: {r['error']}" for r in rows if r.get("error")]
    if failed:
        text += " Failed: " + "; ".join(failed) + "."
    return text


# ---- long format -------------------------------------------------------------------------------------------
def long_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """csv / json rows in the leaderboard's long format: metric ``faithfulness/<method>/<metric>`` (a published
    protocol's: ``faithfulness-<protocol>/...``) with its mean
    and ``..._ci_low`` / ``..._ci_high``, and ``..._minus_<baseline>`` (the paired difference) with its own
    ``_ci_low`` / ``_ci_high``; ``n_samples`` is the samples (or pairs) the number covers."""
    out = []
    for (model, task, method, protocol), r in latest(records).items():
        row = {"model": model, "family": "", "task": task, "task_version": None}
        prefix = "faithfulness" if protocol == "patches" else f"faithfulness-{protocol}"
        for metric in METRICS:
            name = f"{prefix}/{method}/{metric}"
            out += _long(row, name, r["metrics"].get(metric, {}))
            for base, entries in (r.get("paired") or {}).items():
                out += _long(row, f"{name}_minus_{base}", entries.get(metric) or {})
    return out


def _long(row: dict[str, Any], name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    if entry.get("mean") is None:
        return []
    interval = entry.get("interval") or [None, None]
    row = {**row, "n_samples": entry.get("n")}
    values = (("", entry["mean"]), ("_ci_low", interval[0]), ("_ci_high", interval[1]))
    return [
        {**row, "metric": name + suffix, "value": value, "headline": False, "rule": None}
        for suffix, value in values
        if value is not None
    ]
