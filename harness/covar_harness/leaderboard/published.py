"""The papers' published figures: the COVAR paper's and the CounterAnimals paper's rows (bundled CSVs), their
labels and captions, and :func:`published_records` (the long format of ``--reference paper``)."""

from __future__ import annotations

from typing import Any

from covar_harness.data.resources import read_csv
from covar_harness.data.subsets import COVAR_SUBSETS
from covar_harness.results import files as results

CA_GROUPS = ("common", "counter")


PUBLISHED_CAPTION = (
    "Rows marked (paper, published) are figures published in the COVAR paper, not results of "
    "this harness: your COVAR copy, label space and prompts may differ from the paper's."
)
DIAGNOSIS_PUBLISHED_CAPTION = PUBLISHED_CAPTION + (
    " Which rule turned the paper's attributions into BG-Er / Fine-Er is unknown: the harness's `paper` rule is"
    " a reconstruction (inferred), and own rows use the headline rule their results name"
    " (config.diagnosis.rules[0]; default `area`)."
)
CA_PUBLISHED_CAPTION = (
    "Rows marked (CounterAnimals paper, published) are figures published in that paper, not "
    "results of this harness: your copy of the data, label space and prompts may differ."
)


def as_float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if results.is_number(value) else None


def paper_label(row: dict[str, str]) -> str:
    return f"{row['name']}/{row['patch']} {row['res']} {row['dataset']} (paper, published)"


def paper_rows() -> list[dict[str, str]]:
    return read_csv("reference", "paper_covar_results.csv")


def ca_paper_rows() -> list[dict[str, str]]:
    return read_csv("reference", "counteranimals_paper.csv")


def ca_label(row: dict[str, str]) -> str:
    return f"{row['model']} (CounterAnimals paper, published)"


def published_records() -> list[dict]:
    """The papers' published figures in the long format (percentages turned into fractions)."""

    def row(model: str, task: str, metric: str, value: Any, headline: bool) -> dict:
        number = as_float(value)
        return {
            "model": model,
            "family": "",
            "task": task,
            "task_version": None,
            "metric": metric,
            "value": None if number is None else round(number / 100.0, 6),
            "n_samples": None,
            "headline": headline,
            "rule": "published rule, unknown" if metric in ("bg_er", "fine_er") else None,
            "published": True,
        }

    out = []
    for prow in paper_rows():
        label = paper_label(prow)
        for s in COVAR_SUBSETS:
            out += [
                row(label, f"covar/{s}", "acc1", prow.get(f"acc_{s}"), True),
                row(label, f"covar/{s}", "bg_er", prow.get(f"bg_er_{s}"), False),
                row(label, f"covar/{s}", "fine_er", prow.get(f"fine_er_{s}"), False),
            ]
        out.append(row(label, "covar", "acc1_avg", prow.get("acc_avg"), False))
    for crow in ca_paper_rows():
        out += [
            row(ca_label(crow), f"counteranimals/{g}", "mean_per_class_recall", crow.get(g), True) for g in CA_GROUPS
        ]
    return out
