"""The typed per-sample records of attribution, as written to the sample log (``--log-samples``).

Numbers are stored already cut to seven significant digits (:func:`short`): the record IS the logged value, so
what diagnosis reads from it is exactly what a reader of ``samples.jsonl`` gets. ``to_json`` / ``log_fields`` give
the JSON objects in their documented key order. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from covar_harness.pipeline.contract import JsonRecord, SampleRecord


def short(value: float) -> float:
    """Seven significant digits: enough for analysis, keeps sample logs small."""
    return float(f"{value:.7g}")


@dataclass(frozen=True, eq=False)
class CCIRecord(JsonRecord):
    """The ``cci`` entry of a sample's log line: clusters and their leave-one-out importances."""

    method: str
    target: int  # class index explained
    k: int
    assignments: list[int]  # cluster id per patch, raster order
    importance: list[float]  # I_k = (s - s_k) / |s| per cluster
    s: float  # cos(image, text(target))
    drop: list[float] | None = None  # s - s_k per cluster (None for the random baseline)
    # the other target's importances from the same removal embeddings (no extra model call): for the label when
    # ``target`` explains the prediction (--cci-target pred), for the prediction under --cci-target label
    importance_label: list[float] | None = None
    importance_pred: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "target": self.target,
            "k": self.k,
            "assignments": self.assignments,
            "importance": self.importance,
            "s": self.s,
        }
        if self.drop is not None:
            out["drop"] = self.drop
        if self.importance_label is not None:
            out["importance_label"] = self.importance_label
        if self.importance_pred is not None:
            out["importance_pred"] = self.importance_pred
        return out


@dataclass(frozen=True, eq=False)
class ShapleyRecord(JsonRecord):
    """The ``shapley`` entry: exact cluster Shapley values for s and the two ends of the game."""

    values: list[float]
    v_all: float
    v_empty: float
    alt: str | None = None  # the other target ("label" or "pred") whose values are ``values_alt``
    values_alt: list[float] | None = None  # its Shapley values, from the same coalition embeddings

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"values": self.values, "v_all": self.v_all, "v_empty": self.v_empty}
        if self.alt is not None and self.values_alt is not None:
            out[f"values_{self.alt}"] = self.values_alt
        return out


@dataclass(frozen=True, eq=False)
class RegionRecord(JsonRecord):
    """The ``counterfactual`` entry: the region test (None where a region held no patch and could not run)."""

    s_fg_only: float | None
    s_bg_only: float | None
    pred_fg_only: int | None
    pred_bg_only: int | None
    outcome: str | None  # bg-sufficient | fg-sufficient | both | neither | None (undefined)
    alt: str | None = None  # the other target ("label" or "pred") of ``alt_fields``
    # the other target's s_fg_only, s_bg_only, outcome, additive_share
    alt_fields: tuple[float | None, float | None, str | None, float | None] | None = None
    # the share of the target's drop that the single-cluster drops explain (``regions.additive_share``); logged
    # only where defined (a leave-one-out attributor, and removing the regions moves s)
    additive_share: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "s_fg_only": self.s_fg_only,
            "s_bg_only": self.s_bg_only,
            "pred_fg_only": self.pred_fg_only,
            "pred_bg_only": self.pred_bg_only,
            "outcome": self.outcome,
        }
        if self.additive_share is not None:
            out["additive_share"] = self.additive_share
        if self.alt is not None and self.alt_fields is not None:
            for key, value in zip(ALT_REGION_FIELDS, self.alt_fields):
                if key != "additive_share" or value is not None:
                    out[f"{key}_{self.alt}"] = value
        return out


ALT_REGION_FIELDS = ("s_fg_only", "s_bg_only", "outcome", "additive_share")  # logged per target ("_label"/"_pred")


@dataclass(frozen=True, eq=False)
class AttributionRecord(SampleRecord):
    """One attributed sample: ``cci`` always, ``shapley`` and ``counterfactual`` when computed."""

    index: int
    cci: CCIRecord
    shapley: ShapleyRecord | None = None
    counterfactual: RegionRecord | None = None

    def log_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cci": self.cci.to_json()}
        if self.shapley is not None:
            out["shapley"] = self.shapley.to_json()
        if self.counterfactual is not None:
            out["counterfactual"] = self.counterfactual.to_json()
        return out
