"""Diagnosis (DESIGN 7.5 and 8): was a decision driven by the object or by its background, and what kind of
error is each misclassification?

Pure functions over per-sample records: they read what attribution wrote (cluster assignments and
importances, Shapley values, counterfactual region tests) plus the foreground fraction of each patch, and
write ``fg_fraction``, ``driver`` and ``error_type``. Several driver rules can be reported at once; the first
one is the headline (``--driver-rule``, default ``paper``).

Rules
- ``paper``: fg_fraction = positive importance mass inside the mask / total positive mass (each patch carries
  its cluster's importance I_k, weighted by the patch's foreground fraction); driver = fg if >= threshold.
- ``area``: the same masses divided by the foreground / background areas (importance density), so a small
  object is not called background-driven merely for being small; driver = fg if density_fg >= density_bg.
- ``shapley``: the ``paper`` rule with cluster Shapley values in place of leave-one-out importances.
- ``counterfactual``: the region that alone keeps the decision better: score = 0.5 + (s(foreground only) -
  s(background only)) / 4, a continuous score in [0, 1] (cosines lie in [-1, 1]) that is >= 0.5 exactly when the
  foreground alone is at least as close to the target text; fg if >= 0.5, else bg (``counterfactual`` records
  from the region test). Continuous so that rankings (AUROC in ``covar-harness sanity``) are meaningful.

With several rules, each sample also gets ``scores`` {rule: score} next to ``drivers`` {rule: driver}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from covar_harness.metrics import bootstrap_interval
from covar_harness.tasks.class_groups import share_group

RULES = ("paper", "area", "shapley", "counterfactual")
ERROR_TYPES = ("bg", "fine", "other")


@dataclass
class DiagnosisSettings:
    rules: tuple[str, ...] = ("paper",)
    threshold: float = 0.5  # fg_fraction >= threshold -> fg (paper rule)
    fine_rule: str = "shared class group"  # recorded in the result
    bootstrap: int = 1000
    seed: int = 0

    def as_config(self) -> dict[str, Any]:
        return {"rules": list(self.rules), "threshold": self.threshold, "fine_rule": self.fine_rule}


def _patch_values(record: dict, values: Sequence[float]) -> np.ndarray:
    """Per-patch values from per-cluster values (a cluster id with no value counts 0)."""
    vals = np.asarray(values, dtype=np.float64)
    assign = np.asarray(record["assignments"], dtype=np.int64)
    return np.where(assign < len(vals), vals[np.minimum(assign, len(vals) - 1)], 0.0)


def fg_fraction(patch_importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Positive importance mass inside the foreground / total positive mass; None when nothing is positive."""
    pos = np.clip(patch_importance, 0.0, None)
    total = pos.sum()
    return None if total <= 0 else float((pos * fg).sum() / total)


def density_ratio(patch_importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Share of positive importance *density* that is foreground: d_fg / (d_fg + d_bg), in [0, 1]."""
    pos = np.clip(patch_importance, 0.0, None)
    area_fg, area_bg = fg.sum(), (1 - fg).sum()
    if pos.sum() <= 0 or area_fg <= 0 or area_bg <= 0:
        return None
    d_fg, d_bg = (pos * fg).sum() / area_fg, (pos * (1 - fg)).sum() / area_bg
    return float(d_fg / (d_fg + d_bg))


def _score_paper(row: dict, fg: np.ndarray) -> float | None:
    cci = row.get("cci")
    return None if not cci else fg_fraction(_patch_values(cci, cci["importance"]), fg)


def _score_area(row: dict, fg: np.ndarray) -> float | None:
    cci = row.get("cci")
    return None if not cci else density_ratio(_patch_values(cci, cci["importance"]), fg)


def _score_shapley(row: dict, fg: np.ndarray) -> float | None:
    sh, cci = row.get("shapley"), row.get("cci")
    return None if not (sh and cci) else fg_fraction(_patch_values(cci, sh["values"]), fg)


def _score_counterfactual(row: dict, fg: np.ndarray) -> float | None:
    cf = row.get("counterfactual")
    if not cf or cf.get("s_fg_only") is None or cf.get("s_bg_only") is None:
        return None
    return 0.5 + (cf["s_fg_only"] - cf["s_bg_only"]) / 4.0


# rule -> (score function, threshold used to call fg). area and counterfactual are symmetric at 0.5.
SCORERS: dict[str, Callable[[dict, np.ndarray], float | None]] = {
    "paper": _score_paper, "area": _score_area, "shapley": _score_shapley, "counterfactual": _score_counterfactual,
}


def error_type(correct: bool, driver: str | None, fine: bool) -> str | None:
    if correct:
        return None
    if driver == "bg":
        return "bg"
    if driver == "fg" and fine:
        return "fine"
    return "other"


@dataclass
class Diagnosis:
    per_sample: dict[int, dict] = field(default_factory=dict)  # index -> fields to merge into the sample log
    metrics: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    by_rule: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def diagnose(
    rows: list[dict], fg_grids: dict[int, np.ndarray], groups: dict[int, Any] | None, settings: DiagnosisSettings
) -> Diagnosis:
    """Driver and error type per sample under each rule; BG-Er / Fine-Er as shares of misclassified samples.

    ``rows``: per-sample log rows (index, label, pred, correct, and attribution records). ``fg_grids``: index ->
    (rows*cols,) foreground fraction per patch, raster order. Samples without a mask or without the records a
    rule needs are left out of that rule's rates (counted as ``n_undetermined``).
    """
    out = Diagnosis(config={**settings.as_config(), "fine_grained_groups": groups is not None})
    for r_i, rule in enumerate(settings.rules):
        scorer = SCORERS[rule]
        threshold = settings.threshold if rule in ("paper", "shapley") else 0.5
        drivers, errors = [], []
        for row in rows:
            fg = fg_grids.get(row["index"])
            score = None if fg is None else scorer(row, fg)
            driver = None if score is None else ("fg" if score >= threshold else "bg")
            fine = share_group(groups, row["label"], row["pred"])
            etype = error_type(row["correct"], driver, fine) if fg is not None else None
            fields = {"fg_fraction": score, "driver": driver}
            if not row["correct"]:
                fields["error_type"] = etype
            if r_i == 0:
                out.per_sample.setdefault(row["index"], {}).update(fields)
            if len(settings.rules) > 1:
                fields_all = out.per_sample.setdefault(row["index"], {})
                fields_all.setdefault("drivers", {})[rule] = driver
                fields_all.setdefault("scores", {})[rule] = score
            if driver is not None:
                drivers.append(driver == "fg")
            if not row["correct"] and fg is not None:
                errors.append(etype)
        summary = _summarise(drivers, errors, settings)
        summary["n_undetermined"] = len(rows) - len(drivers)
        out.by_rule[rule] = summary
        if r_i == 0:
            out.metrics = {k: summary[k] for k in ("fg_driven_rate", "bg_er", "fine_er")}
            out.intervals = summary.pop("intervals")
        else:
            summary.pop("intervals")
    return out


def _summarise(drivers: list[bool], errors: list[str | None], settings: DiagnosisSettings) -> dict[str, Any]:
    fg = np.asarray(drivers, dtype=float)
    bg_err = np.asarray([e == "bg" for e in errors], dtype=float)
    fine_err = np.asarray([e == "fine" for e in errors], dtype=float)
    out: dict[str, Any] = {
        "fg_driven_rate": float(fg.mean()) if len(fg) else None,
        "bg_er": float(bg_err.mean()) if len(bg_err) else None,
        "fine_er": float(fine_err.mean()) if len(fine_err) else None,
        "n_attributed": len(drivers), "n_errors": len(errors), "intervals": {},
    }
    for key, values in (("fg_driven_rate", fg), ("bg_er", bg_err), ("fine_er", fine_err)):
        if len(values):
            out["intervals"][key] = list(bootstrap_interval(values, n_boot=settings.bootstrap, seed=settings.seed))
    return out
