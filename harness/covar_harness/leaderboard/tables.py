"""Leaderboard (docs/design.md section 10): result files -> paper-style tables -> table | markdown | csv | json.

Tables are plain data (title, columns, rows) built here and rendered by small functions, so every output
format shows the same numbers. Percentages are shown with one decimal, as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covar_harness.common.console import one_line
from covar_harness.common.metrics import average_interval
from covar_harness.data.subsets import ALL_SUBSETS, COVAR_SUBSETS, SUBSET_TITLES
from covar_harness.diagnosis.rules import RULES
from covar_harness.leaderboard import concepts
from covar_harness.leaderboard.cost_table import TITLE as COST_TITLE
from covar_harness.leaderboard.cost_table import cost_columns, cost_rows
from covar_harness.leaderboard.faithfulness import faithfulness_tables
from covar_harness.leaderboard.peer_tables import background_reliance_tables, imagenet9_tables
from covar_harness.leaderboard.published import (
    CA_GROUPS,
    CA_PUBLISHED_CAPTION,
    DIAGNOSIS_PUBLISHED_CAPTION,
    PUBLISHED_CAPTION,
    as_float,
    ca_label,
    ca_paper_rows,
    paper_label,
    paper_rows,
    published_records,
)
from covar_harness.leaderboard.ranks import CAPTION as RANK_CAPTION
from covar_harness.leaderboard.ranks import rank_rows
from covar_harness.leaderboard.readers import (
    Table,
    as_percent,
    diag_titles,
    diagnosis_counts,
    headline_rule,
    headline_value,
    metric_of,
    record_rule,
    records_by_model,
    subset_of,
)
from covar_harness.results import files as results
from covar_harness.results.faithfulness import is_faithfulness
from covar_harness.results.validation import validate_any

REFERENCES = ("paper",)


@dataclass
class Loaded:
    records: list[dict]
    invalid: list[tuple[Path, str]]
    faithfulness: list[dict] = field(default_factory=list)  # `faithfulness` results (their own schema and table)


def collect(directory: Path) -> Loaded:
    """Every valid result file under ``directory``; invalid ones are listed, never silently used.

    Anything wrong with one file (unreadable, not a regular file, too large, too deep, invalid) skips that file
    with a one-line reason; nothing in one file can stop the others from being read. Faithfulness results go to
    ``Loaded.faithfulness``, apart from the classification records every other table reads.
    """

    records: list[dict] = []
    faithfulness: list[dict] = []
    paths, invalid = results.result_files(Path(directory))
    for path in paths:
        try:
            obj = results.load(path)
            errors = validate_any(obj)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is that file's problem
            invalid.append((path, one_line(f"not readable JSON ({str(exc) or type(exc).__name__})")))
            continue
        if errors:
            invalid.append((path, one_line(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))))
        else:
            (faithfulness if is_faithfulness(obj) else records).append(obj)
    return Loaded(records, invalid, faithfulness)


def _families(records: Iterable[dict]) -> list[str]:
    out: list[str] = []
    for r in records:
        fam = r["task"]["name"].split("/", 1)[0]
        if fam not in out:
            out.append(fam)
    return out


def _is_covar_like(records: list[dict], family: str) -> bool:
    subsets = {subset_of(r["task"]["name"]) for r in records if r["task"]["name"].startswith(family + "/")}
    return bool(subsets & set(COVAR_SUBSETS)) and subsets <= set(ALL_SUBSETS)


def covar_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    """The paper's accuracy table (8 subsets + average) and, when diagnosis ran, its BG-Er / Fine-Er table.

    The average of every row (published rows included) is over the same subsets: those every own row has; the
    title says which when that is fewer than the eight. Tasks of the family outside COVAR's subsets get the
    generic table. With ``reference="paper"`` the published rows appear even without own COVAR results.
    """
    known = set(ALL_SUBSETS)
    models = records_by_model([r for r in records if subset_of(r["task"]["name"]) in known], family)
    paper = paper_rows() if reference == "paper" and family == "covar" else []
    present = [s for s in ALL_SUBSETS if any(s in m for m in models.values())] or (list(COVAR_SUBSETS) if paper else [])
    common = [
        s
        for s in COVAR_SUBSETS
        if s in present and all(s in m and headline_value(m[s]) is not None for m in models.values())
    ]
    tables = []
    if models or paper:
        tables.append(_covar_accuracy(family, models, present, common, paper))
        diag = _covar_diagnosis(family, models, paper)
        if diag is not None:
            tables.append(diag)
    others = [
        r for r in records if r["task"]["name"].startswith(family + "/") and subset_of(r["task"]["name"]) not in known
    ]
    if others:
        tables.append(generic_table(others, family))
    if tables and tables[0].columns[-1] == "Avg":
        _caption_average_intervals(tables[0], records, family)
    return tables


AVG_INTERVAL_NOTE = (
    "Avg 95% interval (acc1_avg in csv/json), approximated from the per-subset intervals: se_i = half-width / "
    "1.96, se_avg = sqrt(sum se_i^2) / 8, subsets taken as independent (they share source objects, so it is "
    "likely too narrow)"
)


def average_records(records: list[dict], reference: str | None = None) -> list[dict]:
    """Per own model with all 8 COVAR subsets of a family: ``acc1_avg`` (task = the family) and its interval
    (``interval``; :data:`AVG_INTERVAL_NOTE`), in the long format of :func:`long_records`."""

    out = []
    for family in _families(records):
        for spec, runs in records_by_model(records, family).items():
            parts = [runs.get(s) for s in COVAR_SUBSETS]
            values = [v for v in (None if r is None else headline_value(r) for r in parts) if v is not None]
            if len(values) < len(COVAR_SUBSETS):
                continue
            heads = [(r["task"].get("headline") or "acc1", r.get("intervals") or {}) for r in parts if r]
            ci = average_interval(values, [i.get(h) for h, i in heads])
            row = {
                **dict.fromkeys(LONG_FIELDS),
                **{"model": spec, "family": parts[0]["model"].get("family", "") if parts[0] else ""},
                **{"task": family, "metric": "acc1_avg", "value": sum(values) / len(values), "headline": False},
                **{"n_samples": sum(r["task"]["n_samples"] for r in parts if r), "interval": ci and list(ci)},
            }
            out.append({**row, "published": False} if reference == "paper" else row)
    return out


def _caption_average_intervals(acc: Table, records: list[dict], family: str) -> None:
    rows = [r for r in average_records(records) if r["task"] == family and r["interval"]]
    if rows:
        spans = "; ".join(f"{r['model']} [{100 * r['interval'][0]:.1f}, {100 * r['interval'][1]:.1f}]" for r in rows)
        acc.caption = (acc.caption + " " if acc.caption else "") + f"{AVG_INTERVAL_NOTE}: {spans}."


def _average(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return None if not values or len(numbers) < len(values) else sum(numbers) / len(numbers)


def _covar_accuracy(family: str, models: dict, present: list[str], common: list[str], paper: list[dict]) -> Table:
    acc = Table(f"{family}: zero-shot accuracy (%)", ["Model", *[SUBSET_TITLES[s] for s in present], "Avg"])
    partial = len(common) < len(COVAR_SUBSETS)
    for spec, runs in models.items():
        values = [as_percent(headline_value(runs[s])) if s in runs else None for s in present]
        avg = as_percent(_average([headline_value(runs[s]) for s in common]))
        acc.rows.append([spec, *values, f"{avg}*" if partial and avg is not None else avg])
    for row in paper:
        acc.published.add(len(acc.rows))
        values = [as_float(row.get(f"acc_{s}")) for s in present]
        avg = as_float(row.get("acc_avg")) if not partial else _average([as_float(row.get(f"acc_{s}")) for s in common])
        avg = round(avg, 1) if partial and avg is not None else avg
        acc.rows.append([paper_label(row), *values, f"{avg}*" if partial and avg is not None else avg])
    if partial:
        which = ", ".join(SUBSET_TITLES[s] for s in common) or "none: no subset has a result in every row"
        acc.title += f"  (* average over the subsets present in every row: {which}; the paper averages all 8)"
    if paper:
        acc.caption = PUBLISHED_CAPTION + (
            " Avg: mean over the 8 COVAR subsets, Original excluded."
            if not partial
            else " Avg*: mean over the subsets named in the title only."
        )
    return acc


def _covar_diagnosis(family: str, models: dict, paper: list[dict]) -> Table | None:
    diag = [s for s in COVAR_SUBSETS if any("bg_er" in m.get(s, {}).get("metrics", {}) for m in models.values())]
    if not diag and paper and not models:
        diag = list(COVAR_SUBSETS)  # published figures only: show the paper's second table whole
    if not diag:
        return None
    # per subset: BG-Er named by its rule (the raw share), its one-sided p-value against the permutation null
    # and the counterfactual truth (bg_sufficient_rate) where any result has them, Fine-Er
    keys = {s: _diagnosis_keys(s, models) for s in diag}
    titles = diag_titles(headline_rule(models), own=bool(models))
    cols = ["Model"] + [f"{SUBSET_TITLES[s]} {titles[k]}" for s in diag for k in keys[s]]
    dt = Table(f"{family}: error diagnosis (% of misclassified; p: one-sided, against the rule's null)", cols)
    for spec, runs in models.items():
        row: list[Any] = [spec]
        for s in diag:
            row += [_diag_cell(runs.get(s), k) for k in keys[s]]
        dt.rows.append(row)
    for prow in paper:
        dt.published.add(len(dt.rows))
        values = [as_float(prow.get(f"{k}_{s}")) if k in PUBLISHED_DIAG else None for s in diag for k in keys[s]]
        dt.rows.append([paper_label(prow), *values])
    if paper:
        dt.caption = DIAGNOSIS_PUBLISHED_CAPTION
    redundant = _redundancy_caption(models, diag)
    if redundant:
        dt.caption = f"{dt.caption} {redundant}" if dt.caption else redundant
    return dt


def _section(obj: Any, key: str) -> dict:
    """``obj[key]`` when both are dicts, else {}: result files are read, not trusted."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _redundancy_caption(models: dict, subsets: list[str]) -> str | None:
    """The warning of every pair whose diagnosis found redundant evidence (``config.diagnosis.redundancy``
    carries a ``warning``: most of the target's drop is missing from CCI's single-cluster drops), so a reader of
    the BG-Er column sees which cells rest on little of what the model reads."""
    flagged = []
    for spec, runs in models.items():
        for s in subsets:
            diag = _section(_section(runs.get(s), "config"), "diagnosis")
            red = diag.get("redundancy")
            if isinstance(red, dict) and red.get("warning") and results.is_number(red.get("median")):
                flagged.append(f"{spec} on {SUBSET_TITLES[s]} ({100 * float(red['median']):.0f}%)")
    if not flagged:
        return None
    return (
        "Redundant evidence: CCI's single-cluster drops explain a median of only "
        + "; ".join(flagged)
        + " of the drop of removing the regions whole, so BG-Er there rests on what leave-one-out still sees."
    )


PUBLISHED_DIAG = ("bg_er", "fine_er")  # what the paper's second table publishes
DIAG_KEYS = ("bg_er", "bg_er_null_p", "bg_sufficient_rate", "fine_er")
OPTIONAL_DIAG = ("bg_er_null_p", "bg_sufficient_rate")  # shown where some result carries them


def _diag_cell(rec: dict | None, key: str) -> Any:
    """A percentage, except the p-value: a probability, shown as itself with 2 significant digits ("0.00012",
    a string, so no renderer rounds it to a percentage's one decimal)."""
    value = metric_of(rec, key)
    if key != "bg_er_null_p" or value is None:
        return as_percent(value)
    return f"{value:.2g}"


def _diagnosis_keys(subset: str, models: dict) -> list[str]:
    """The diagnosis metrics shown for one subset: the p-value and the counterfactual truth only where some
    result carries them (results made before issue 23 have neither)."""
    return [
        k
        for k in DIAG_KEYS
        if k not in OPTIONAL_DIAG or any(metric_of(m.get(subset), k) is not None for m in models.values())
    ]


def generic_table(records: list[dict], family: str) -> Table:
    models = records_by_model(records, family)
    subsets = list(dict.fromkeys(s for runs in models.values() for s in runs))
    t = Table(f"{family}: headline metric (%)", ["Model", *subsets])
    for spec, runs in models.items():
        t.rows.append([spec, *[as_percent(headline_value(runs[s])) if s in runs else None for s in subsets]])
    return t


# ---- CounterAnimals -------------------------------------------------------------------------------------
CA_VARIANTS = (
    ("", "1 vs 1000, single prompt (official protocol)"),
    ("-ensemble", "1 vs 1000, 80-template ensemble"),
    ("-45way", "45-way restriction (UNOFFICIAL)"),
)
CA_COLUMNS = ["Model", "Common", "Counter", "Drop", "Common acc1", "Counter acc1"]


def _balanced(rec: dict | None) -> float | None:
    """Class-balanced accuracy (mean over the classes present): the paper's CounterAnimals metric."""
    return metric_of(rec, "mean_per_class_recall")


def _acc1(rec: dict | None) -> float | None:
    return metric_of(rec, "acc1")


def _ca_row(spec: str, common: dict | None, counter: dict | None) -> list[Any]:
    c, k = _balanced(common), _balanced(counter)
    drop = as_percent(c - k) if c is not None and k is not None else None
    return [spec, as_percent(c), as_percent(k), drop, as_percent(_acc1(common)), as_percent(_acc1(counter))]


def _add_ca_paper_rows(table: Table) -> None:
    """The CounterAnimals paper's published 1-vs-1000 class-balanced numbers (no per-image figures)."""
    for row in ca_paper_rows():
        common, counter = as_float(row.get("common")), as_float(row.get("counter"))
        drop = round(common - counter, 2) if common is not None and counter is not None else None
        table.published.add(len(table.rows))
        table.rows.append([ca_label(row), common, counter, drop, None, None])
    table.caption = CA_PUBLISHED_CAPTION


def counteranimals_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    """Common, counter and the drop (class-balanced, as the paper), per-image acc1 beside; one table per variant."""
    models = records_by_model(records, family)
    known = {f"{g}{suffix}" for g in CA_GROUPS for suffix, _ in CA_VARIANTS}
    tables = []
    for suffix, title in CA_VARIANTS:
        names = [f"{g}{suffix}" for g in CA_GROUPS]
        specs = [spec for spec, runs in models.items() if any(n in runs for n in names)]
        official = suffix == ""
        if not specs and not (official and reference == "paper"):
            continue
        table = Table(f"{family}: {title}: class-balanced accuracy (%), per-image acc1 beside", list(CA_COLUMNS))
        for spec in specs:
            table.rows.append(_ca_row(spec, models[spec].get(names[0]), models[spec].get(names[1])))
        if official and reference == "paper":
            _add_ca_paper_rows(table)
        tables.append(table)
    others = [
        r for r in records if r["task"]["name"].startswith(family + "/") and subset_of(r["task"]["name"]) not in known
    ]
    if others:
        tables.append(generic_table(others, family))
    return tables


# Families with a dedicated layout; everything else gets the generic one (COVAR-like families are detected).
def _imagenet9_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    return imagenet9_tables(records, family, reference)


FAMILY_TABLES = {
    "counteranimals": counteranimals_tables,
    "imagenet9": _imagenet9_tables,
    "imagenet9-9way": _imagenet9_tables,
}
# Families whose published rows ``--reference paper`` adds, with or without own results of that family.
REFERENCE_FAMILIES = ("covar", "counteranimals")


def build_tables(records: list[dict], reference: str | None = None, faithfulness: Iterable[dict] = ()) -> list[Table]:
    """Every table, own results first; ``reference="paper"`` adds the published COVAR and CounterAnimals rows
    (in a table of their own when there are no own results of that family); ``faithfulness`` results
    (``Loaded.faithfulness``) add one "faithfulness" table per task, last."""
    tables: list[Table] = []
    families = _families(records)
    if reference == "paper":
        families += [f for f in REFERENCE_FAMILIES if f not in families]
    for family in families:
        if family in FAMILY_TABLES:
            tables += FAMILY_TABLES[family](records, family, reference)
        elif family == "covar" or _is_covar_like(records, family):
            tables += covar_tables(records, family, reference)
        else:
            tables.append(generic_table(records, family))
        tables += rank_tables(records, family)

    rest = [*background_reliance_tables(records), *concept_tables(records), *cost_tables(records)]
    faith = [
        Table(title, columns, rows, caption=caption)
        for title, columns, rows, caption in faithfulness_tables(list(faithfulness))
    ]
    return tables + rest + faith


def rank_tables(records: list[dict], family: str) -> list[Table]:
    """The family's rank intervals per task (leaderboard/ranks.py), when two or more models have a task."""
    names = list(dict.fromkeys(r["task"]["name"] for r in records if r["task"]["name"].split("/", 1)[0] == family))
    order = {s: i for i, s in enumerate(ALL_SUBSETS)}
    names.sort(key=lambda n: order.get(subset_of(n), len(order)))
    rows = rank_rows(records, family, names)
    if not rows:
        return []
    columns = ["model", *(SUBSET_TITLES.get(subset_of(n), subset_of(n)) for n in names)]
    return [Table(f"rank intervals: {family}", columns, rows, caption=RANK_CAPTION)]


def concept_tables(records: list[dict]) -> list[Table]:
    """ "What drives background errors" (leaderboard/concepts.py), when some result was made with --concepts."""
    rows = concepts.concept_rows(records)
    return [Table(concepts.TITLE, list(concepts.COLUMNS), rows, caption=concepts.CAPTION)] if rows else []


def cost_tables(records: list[dict]) -> list[Table]:
    """The cost table (leaderboard/cost_table.py), when some result records its cost."""
    rows = cost_rows(records)
    caption = (
        "Wall time per phase, exclusive (time in a nested phase counts there); forward passes count the image "
        "rows sent through the image tower (each removal pattern is one); peak RSS is the process's peak."
    )
    return [Table(COST_TITLE, cost_columns(), rows, caption=caption)] if rows else []


LONG_FIELDS = ["model", "family", "task", "task_version", "metric", "value", "n_samples", "headline", "rule"]
DIAGNOSIS_PREFIXES = ("bg_er", "fine_er", "fg_driven_rate", "diagnosis_", "distractor_rate")


def long_records(records: list[dict], reference: str | None = None) -> list[dict]:
    """One row per model x task x metric: the format for csv/json and for further analysis.

    With ``reference="paper"`` the published figures follow, as fractions like ours, with ``published: true``
    (own rows then carry ``published: false``); the COVAR paper's 8-subset average is metric ``acc1_avg`` of
    task ``covar``.
    """
    rows = []
    for r in records:
        headline = r["task"].get("headline") or "acc1"
        rule = record_rule(r)
        rule_label = RULES[rule].label if rule in RULES else rule  # the diagnosis rows name their rule
        for metric, value in [*r["metrics"].items(), *diagnosis_counts(r).items()]:
            rows.append(
                {
                    "model": r["model"]["spec"],
                    "family": r["model"].get("family", ""),
                    "task": r["task"]["name"],
                    "task_version": r["task"]["version"],
                    "metric": metric,
                    "value": value,
                    "n_samples": r["task"]["n_samples"],
                    "headline": metric == headline,
                    "rule": rule_label if metric.startswith(DIAGNOSIS_PREFIXES) else None,
                }
            )
    if reference == "paper":
        rows = [{**row, "published": False} for row in rows] + published_records()
    return rows
