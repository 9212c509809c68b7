"""The rows of the leaderboard's "what drives background errors" table (docs/design.md sections 10 and 11): per
model x task run with ``--concepts``, the concepts that most often name the driving background cluster of its
background-driven errors, each with its share and the cluster-permutation null, and whether the named concept
follows the predicted class.

Result files are read defensively: anything ``validate`` accepts may be here, so every field is type-checked and a
malformed ``config.concepts`` leaves the row out rather than breaking the table.
"""

from __future__ import annotations

from typing import Any

from covar_harness.results.files import is_number

TITLE = "what drives background errors (concepts naming the driving background cluster)"
COLUMNS = [
    "model",
    "task",
    "bank",
    "named bg errors",
    "1st concept",
    "1st share %",
    "1st null %",
    "2nd concept",
    "2nd share %",
    "3rd concept",
    "3rd share %",
    "follows pred. class %",
    "null %",
]
CAPTION = (
    "share: of the background-driven errors whose driving background cluster was named; null: the same errors with "
    "the concept labels permuted across each error's clusters (what any region of these images is named); follows "
    "pred. class: share of errors whose concept is the most frequent of their predicted class, null with the "
    "concepts permuted across errors (docs/design.md section 11)."
)


def _pct(value: Any) -> float | None:
    return round(100.0 * float(value), 1) if is_number(value) else None


def concepts_of(rec: dict) -> dict | None:
    """``config.concepts`` of a result when the naming ran and its table is well-formed, else None."""
    config = rec.get("config")
    concepts = config.get("concepts") if isinstance(config, dict) else None
    if not isinstance(concepts, dict) or concepts.get("status") != "ran":
        return None
    rows = concepts.get("background_errors")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("concept"), str) for r in rows):
        return None
    return concepts


def _row(rec: dict, concepts: dict) -> list[Any]:
    top = concepts["background_errors"][:3] + [{}] * (3 - min(3, len(concepts["background_errors"])))
    bank = concepts.get("bank")
    name = bank.get("name") if isinstance(bank, dict) else None
    n_named, n_bg = concepts.get("n_bg_errors_named"), concepts.get("n_bg_errors")
    counts = f"{n_named} of {n_bg}" if is_number(n_named) and is_number(n_bg) else None
    assoc = concepts.get("class_association")
    assoc = assoc if isinstance(assoc, dict) else {}
    return [
        rec["model"]["spec"],
        rec["task"]["name"],
        name if isinstance(name, str) else None,
        counts,
        top[0].get("concept"),
        _pct(top[0].get("share")),
        _pct(top[0].get("null_share")),
        top[1].get("concept"),
        _pct(top[1].get("share")),
        top[2].get("concept"),
        _pct(top[2].get("share")),
        _pct(assoc.get("agreement")),
        _pct(assoc.get("null_mean")),
    ]


def concept_rows(records: list[dict]) -> list[list[Any]]:
    """The table's rows (``tables.build_tables`` makes the table): one per result that named its regions."""
    return [_row(rec, c) for rec in records if (c := concepts_of(rec)) is not None]
