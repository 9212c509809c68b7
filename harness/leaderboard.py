"""Leaderboard (DESIGN section 10): result files -> paper-style tables -> table | markdown | csv | json.

Tables are plain data (title, columns, rows) built here and rendered by small functions, so every output
format shows the same numbers. Percentages are shown with one decimal, as in the paper.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from covar_harness import results

COVAR_SUBSETS = ("bg_varied", "hflip", "translate", "crop", "vflip", "rotation", "viewpoint", "scale")
SUBSET_TITLES = {"bg_varied": "Bg-varied", "hflip": "H-flip", "translate": "Translate", "crop": "Crop",
                 "vflip": "V-flip", "rotation": "Rotation", "viewpoint": "Viewpoint", "scale": "Scale",
                 "original": "Original"}
REFERENCES = ("paper",)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    published: set[int] = field(default_factory=set)  # row indices that are published figures, not ours


@dataclass
class Loaded:
    records: list[dict]
    invalid: list[tuple[Path, str]]


def collect(directory: Path) -> Loaded:
    """Every valid result file under ``directory``; invalid ones are listed, never silently used."""
    records, invalid = [], []
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            obj = results.load(path)
        except (OSError, ValueError) as exc:
            invalid.append((path, f"not readable JSON ({exc})"))
            continue
        errors = results.validate(obj)
        if errors:
            invalid.append((path, errors[0]))
        else:
            records.append(obj)
    return Loaded(records, invalid)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 1)


def _headline(rec: dict) -> float | None:
    return rec["metrics"].get(rec["task"].get("headline", "acc1"))


def _families(records: Iterable[dict]) -> list[str]:
    out: list[str] = []
    for r in records:
        fam = r["task"]["name"].split("/", 1)[0]
        if fam not in out:
            out.append(fam)
    return out


def _subset(task_name: str) -> str:
    return task_name.split("/", 1)[1] if "/" in task_name else task_name


def _is_covar_like(records: list[dict], family: str) -> bool:
    subsets = {_subset(r["task"]["name"]) for r in records if r["task"]["name"].startswith(family + "/")}
    return bool(subsets & set(COVAR_SUBSETS)) and subsets <= set(COVAR_SUBSETS) | {"original"}


def _by_model(records: list[dict], family: str) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["task"]["name"].split("/", 1)[0] == family:
            out.setdefault(r["model"]["spec"], {})[_subset(r["task"]["name"])] = r
    return out


def covar_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    """The paper's accuracy table (8 subsets + average) and, when diagnosis ran, its BG-Er / Fine-Er table."""
    models = _by_model(records, family)
    present = [s for s in ("original", *COVAR_SUBSETS) if any(s in m for m in models.values())]
    acc = Table(f"{family}: zero-shot accuracy (%)", ["Model", *[SUBSET_TITLES[s] for s in present], "Avg"])
    for spec, runs in models.items():
        values = [_pct(_headline(runs[s])) if s in runs else None for s in present]
        eight = [_headline(runs[s]) for s in COVAR_SUBSETS if s in runs and _headline(runs[s]) is not None]
        avg = _pct(sum(eight) / len(eight)) if eight else None
        partial = len(eight) < len(COVAR_SUBSETS)
        acc.rows.append([spec, *values, f"{avg}*" if partial and avg is not None else avg])
    tables = [acc]
    diag = [s for s in COVAR_SUBSETS if any("bg_er" in m.get(s, {}).get("metrics", {}) for m in models.values())]
    if diag:
        cols = ["Model"] + [f"{SUBSET_TITLES[s]} {k}" for s in diag for k in ("BG-Er", "Fine-Er")]
        dt = Table(f"{family}: error diagnosis (% of misclassified)", cols)
        for spec, runs in models.items():
            row = [spec]
            for s in diag:
                m = runs.get(s, {}).get("metrics", {})
                row += [_pct(m.get("bg_er")), _pct(m.get("fine_er"))]
            dt.rows.append(row)
        tables.append(dt)
    if reference == "paper" and family == "covar":
        _add_paper_rows(acc, tables[1] if diag else None, present, diag)
    if acc.rows and any("*" in str(r[-1]) for r in acc.rows):
        acc.title += "  (* average over the subsets present)"
    return tables


def _paper_rows() -> list[dict[str, str]]:
    from covar_harness.resources import resource_path

    text = resource_path("reference", "paper_covar_results.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _add_paper_rows(acc: Table, diag: Table | None, present: list[str], diag_subsets: list[str]) -> None:
    for row in _paper_rows():
        label = f"{row['name']}/{row['patch']} {row['res']} {row['dataset']} (paper)"
        acc.published.add(len(acc.rows))
        acc.rows.append([label, *[float(row[f"acc_{s}"]) if f"acc_{s}" in row else None for s in present],
                         float(row["acc_avg"])])
        if diag is not None:
            diag.published.add(len(diag.rows))
            diag.rows.append([label] + [float(row[f"{k}_{s}"]) for s in diag_subsets for k in ("bg_er", "fine_er")])


def generic_table(records: list[dict], family: str) -> Table:
    models = _by_model(records, family)
    subsets = list(dict.fromkeys(s for runs in models.values() for s in runs))
    t = Table(f"{family}: headline metric (%)", ["Model", *subsets])
    for spec, runs in models.items():
        t.rows.append([spec, *[_pct(_headline(runs[s])) if s in runs else None for s in subsets]])
    return t


# ---- CounterAnimals -------------------------------------------------------------------------------------
CA_GROUPS = ("common", "counter")
CA_VARIANTS = (("", "1 vs 1000, single prompt (official protocol)"),
               ("-ensemble", "1 vs 1000, 80-template ensemble"),
               ("-45way", "45-way restriction (UNOFFICIAL)"))
CA_COLUMNS = ["Model", "Common", "Counter", "Drop", "Common acc1", "Counter acc1"]


def _balanced(rec: dict | None) -> float | None:
    """Class-balanced accuracy (mean over the classes present): the paper's CounterAnimals metric."""
    return None if rec is None else rec["metrics"].get("mean_per_class_recall")


def _acc1(rec: dict | None) -> float | None:
    return None if rec is None else rec["metrics"].get("acc1")


def _ca_row(spec: str, common: dict | None, counter: dict | None) -> list[Any]:
    c, k = _balanced(common), _balanced(counter)
    drop = _pct(c - k) if c is not None and k is not None else None
    return [spec, _pct(c), _pct(k), drop, _pct(_acc1(common)), _pct(_acc1(counter))]


def _ca_paper_rows() -> list[dict[str, str]]:
    from covar_harness.resources import resource_path

    text = resource_path("reference", "counteranimals_paper.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _add_ca_paper_rows(table: Table) -> None:
    """The CounterAnimals paper's published 1-vs-1000 class-balanced numbers (no per-image figures)."""
    for row in _ca_paper_rows():
        common, counter = float(row["common"]), float(row["counter"])
        table.published.add(len(table.rows))
        table.rows.append([f"{row['model']} (CounterAnimals paper, published)", common, counter,
                           round(common - counter, 2), None, None])


def counteranimals_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    """Common, counter and the drop (class-balanced, as the paper), per-image acc1 beside; one table per variant."""
    models = _by_model(records, family)
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
    others = [r for r in records if r["task"]["name"].startswith(family + "/") and _subset(r["task"]["name"]) not in known]
    if others:
        tables.append(generic_table(others, family))
    return tables


# Families with a dedicated layout; everything else gets the generic one (COVAR-like families are detected).
FAMILY_TABLES = {"counteranimals": counteranimals_tables}


def build_tables(records: list[dict], reference: str | None = None) -> list[Table]:
    tables: list[Table] = []
    for family in _families(records):
        if family in FAMILY_TABLES:
            tables += FAMILY_TABLES[family](records, family, reference)
        elif _is_covar_like(records, family):
            tables += covar_tables(records, family, reference)
        else:
            tables.append(generic_table(records, family))
    return tables


def long_records(records: list[dict]) -> list[dict]:
    """One row per model x task x metric: the format for csv/json and for further analysis."""
    rows = []
    for r in records:
        for metric, value in r["metrics"].items():
            rows.append({"model": r["model"]["spec"], "family": r["model"].get("family", ""), "task": r["task"]["name"],
                         "task_version": r["task"]["version"], "metric": metric, "value": value,
                         "n_samples": r["task"]["n_samples"], "headline": metric == r["task"].get("headline", "acc1")})
    return rows


# ---- renderers -----------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def render_markdown(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"### {t.title}\n")
        out.append("| " + " | ".join(t.columns) + " |")
        out.append("|" + "|".join("---" for _ in t.columns) + "|")
        for i, row in enumerate(t.rows):
            cells = [_cell(v) for v in row]
            if i in t.published:
                cells[0] = f"_{cells[0]}_"
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def render_rich(tables: list[Table], console) -> None:
    from covar_harness.console import print_rows

    for t in tables:  # "H-flip BG-Er" -> two header lines: wide tables stay readable
        columns = [c if i == 0 else c.replace(" ", "\n") for i, c in enumerate(t.columns)]
        rows = [[_cell(v) for v in row] for row in t.rows]
        print_rows(console, t.title, columns, rows, right=range(1, len(columns)),
                   row_styles={i: "dim italic" for i in t.published})


def render_csv(records: list[dict]) -> str:
    rows = long_records(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["model", "family", "task", "task_version", "metric", "value",
                                             "n_samples", "headline"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def render_json(records: list[dict], tables: list[Table]) -> str:
    return json.dumps({"results": long_records(records),
                       "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows,
                                   "published_rows": sorted(t.published)} for t in tables]}, indent=2)
