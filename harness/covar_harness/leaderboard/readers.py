"""The leaderboard's :class:`Table` and the readers of result records that every table builder shares (a
metric, the headline, per-model records of a family, the diagnosis rule and its counts): below ``tables`` and
``peer_tables``, so that both import them and neither imports the other's builders back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from covar_harness.common.console import one_line
from covar_harness.diagnosis.rules import RULES
from covar_harness.results import files as results


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    published: set[int] = field(default_factory=set)  # row indices that are published figures, not ours
    caption: str | None = None  # printed under the table: what the published rows and the averages are


def as_percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 1)


def metric_of(rec: dict | None, key: str) -> float | None:
    """A metric's value when it is a finite number, else None (never a string or a dict into arithmetic)."""
    value = None if rec is None else rec.get("metrics", {}).get(key)
    return value if results.is_number(value) else None


def headline_value(rec: dict) -> float | None:
    return metric_of(rec, rec["task"].get("headline") or "acc1")


def subset_of(task_name: str) -> str:
    return task_name.split("/", 1)[1] if "/" in task_name else task_name


def records_by_model(records: list[dict], family: str) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["task"]["name"].split("/", 1)[0] == family:
            out.setdefault(r["model"]["spec"], {})[subset_of(r["task"]["name"])] = r
    return out


def diag_titles(rule: str | None, own: bool = True) -> dict[str, str]:
    """Column titles of the diagnosis metrics, BG-Er and Fine-Er named by the rule behind them ("BG-Er (area,
    harness rule)"): the harness's rules and the paper's unknown one measure different things, so no column
    may read as a bare "BG-Er". Without own rows the column holds the paper's figures only."""
    if rule in RULES:
        label = RULES[rule].label
    else:  # a rule this version does not know (a plugin's), several, or none recorded
        label = "rule not recorded" if rule is None else rule if rule.startswith("mixed") else f"{rule} rule"
    name = label if own else "published rule, unknown"
    return {
        "bg_er": f"BG-Er ({name})",
        "fine_er": f"Fine-Er ({name})",
        "bg_er_null_p": "BG-Er p vs null",
        "bg_sufficient_rate": "bg-sufficient (counterfactual)",
        "bg_er_null": "BG-Er null",
    }


def headline_rule(models: dict) -> str | None:
    """The headline driver rule the own results name (``config.diagnosis.rules[0]``): one rule, or "mixed: a, b"
    when results disagree (each result's rule is in its csv / json rows)."""
    found = []
    for runs in models.values():
        for rec in runs.values():
            rule = record_rule(rec)
            if rule is not None and rule not in found:
                found.append(rule)
    if len(found) > 1:
        return "mixed rules: " + ", ".join(one_line(r) for r in found)
    return found[0] if found else None


def record_rule(rec: dict | None) -> str | None:
    """The headline driver rule a result names, read defensively (any file ``validate`` accepts)."""
    config = rec.get("config") if isinstance(rec, dict) else None
    diag = config.get("diagnosis") if isinstance(config, dict) else None
    rules = diag.get("rules") if isinstance(diag, dict) else None
    return rules[0] if isinstance(rules, list) and rules and isinstance(rules[0], str) else None


DIAG_COUNTS = ("n_errors", "n_errors_undetermined", "n_errors_without_mask", "errors_mean_area")


def diagnosis_counts(rec: dict) -> dict[str, float]:
    """The counts behind the headline rule's shares (errors with a mask, of them undetermined, errors without a
    mask) and the errors' mean object area, as ``diagnosis_*`` rows of csv / json: a share means little without
    its denominator, and a rule that tracks object size shows it in the area. Read defensively (any file
    ``validate`` accepts)."""
    config = rec.get("config")
    diag = config.get("diagnosis") if isinstance(config, dict) else None
    rules = diag.get("rules") if isinstance(diag, dict) else None
    by_rule = diag.get("by_rule") if isinstance(diag, dict) else None
    if not (isinstance(rules, list) and rules and isinstance(rules[0], str) and isinstance(by_rule, dict)):
        return {}
    head = by_rule.get(rules[0])
    if not isinstance(head, dict):
        return {}
    return {f"diagnosis_{k}": head[k] for k in DIAG_COUNTS if results.is_number(head.get(k))}
