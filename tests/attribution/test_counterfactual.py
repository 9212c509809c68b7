"""Counterfactual region test: keep only the foreground / only the background (same removal call as CCI) and
classify each decision. Truth is known by construction on a hand-made adapter; then the step inside a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covar_harness.attribution import AttributionStep
from covar_harness.attribution.regions import region_outcome
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.diagnosis.rules import DiagnosisSettings
from covar_harness.diagnosis.summary import diagnose
from covar_harness.pipeline.contract import Batch, PairContext
from helpers import with_masks

# 2x2 patch grid; a "pixel" of each patch IS the vector it adds to the embedding (3 channels = 3 dims).
A, B, C = 0, 1, 2  # classes; text embeddings below
W = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), dim=-1).T  # (D, C)
FG = np.array([1.0, 1.0, 0.0, 0.0])  # patches 0, 1 are the object


def image(fg_vec, bg_vec) -> torch.Tensor:
    """(3, 2, 2): patches 0, 1 carry ``fg_vec``, patches 2, 3 carry ``bg_vec``."""
    vecs = torch.tensor([fg_vec, fg_vec, bg_vec, bg_vec], dtype=torch.float32)  # raster order
    return vecs.T.reshape(3, 2, 2)


# (image, mask grid, outcome the construction dictates, decision)
CASES = {
    "both": (image([1, 0, 0], [1, 0, 0]), FG, "both", A),
    "fg-sufficient": (image([1, 0, 0], [0, 0.3, 0]), FG, "fg-sufficient", A),
    "bg-sufficient": (image([0.3, 0, 0], [0, 1, 0]), FG, "bg-sufficient", B),
    "neither": (image([1, 0, 0], [0, 1, 0]), FG, "neither", C),  # A + B together look like C
}


class VectorSum:
    """Embedding = sum of the kept patches' pixel vectors (+ ``prefix`` when the tower keeps a CLS token)."""

    name, patch_grid = "toy:vector-sum", (2, 2)
    supports_pattern_batches = True

    def __init__(self, prefix: torch.Tensor | None = None):
        self.prefix = prefix
        self.can_remove_all_patches = prefix is not None
        self.calls: list[tuple[int, ...]] = []

    def patch_tokens(self, pixels, layer=-1):
        return pixels.flatten(2).transpose(1, 2)  # (B, 4, 3)

    def encode_images(self, pixels):
        return self.encode_images_without(pixels, torch.zeros(pixels.shape[0], 4, dtype=torch.bool), record=False)

    def encode_images_without(self, pixels, drop, allow_empty: bool = False, record: bool = True):
        if record:
            self.calls.append(tuple(drop.shape))
        if drop.all(dim=-1).any() and not allow_empty:
            raise ValueError("a drop pattern removes every patch")
        squeeze = drop.dim() == 2
        d = drop[:, None] if squeeze else drop
        out = (~d).float() @ self.patch_tokens(pixels)  # (B, K, 3)
        if self.prefix is not None:
            out = out + self.prefix
        return out[:, 0] if squeeze else out


def process(adapter, pixels, fg, **step_settings) -> tuple[list[dict], AttributionStep]:
    samples = SampleSet([Sample(f"{i}.png", 0) for i in range(len(pixels))], ["A", "B", "C"], None)
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    logits = emb @ W
    step = AttributionStep("cci", k=2, **step_settings)
    step.start(PairContext(adapter, None, samples))
    idx = list(range(len(pixels)))
    batch = Batch(idx, pixels, emb, W, logits, logits.argmax(-1), samples)
    return step.process(batch if fg is None else with_masks(batch, fg)), step


def test_each_outcome_where_the_truth_is_known_by_construction():
    adapter = VectorSum()
    pixels = torch.stack([c[0] for c in CASES.values()])
    records, step = process(adapter, pixels, [c[1] for c in CASES.values()])
    assert adapter.calls == [(4, 2 + 2, 4)], "one removal call: K cluster patterns + 2 region patterns"
    for rec, (name, (px, _, outcome, decision)) in zip(records, CASES.items()):
        cf = rec.to_json()["counterfactual"]
        assert rec.to_json()["cci"]["target"] == decision, name
        assert cf["outcome"] == outcome, name
        vecs = px.flatten(1).T  # (4, 3)
        fg_only, bg_only = vecs[:2].sum(0), vecs[2:].sum(0)
        text = W[:, decision]
        assert cf["s_fg_only"] == pytest.approx(float(F.normalize(fg_only, dim=0) @ text), abs=1e-6), name
        assert cf["s_bg_only"] == pytest.approx(float(F.normalize(bg_only, dim=0) @ text), abs=1e-6), name
        assert cf["pred_fg_only"] == int((fg_only @ W).argmax()) and cf["pred_bg_only"] == int((bg_only @ W).argmax())
    summary = step.finish(records).to_json()["config"]["summary"]["counterfactual"]
    assert summary == {"n_tested": 4, "bg-sufficient": 1, "fg-sufficient": 1, "both": 1, "neither": 1, "undefined": 0}


def test_empty_region_and_missing_mask():
    """No foreground patch: the foreground-only pass would remove every patch. Without a prefix token that side
    is None (outcome None); with one it is the prefix-only forward. A sample without a mask gets no record."""
    px = torch.stack([CASES["bg-sufficient"][0], CASES["bg-sufficient"][0]])
    no_fg = np.zeros(4)
    records, _ = process(VectorSum(), px, [no_fg, None])
    cf = records[0].to_json()["counterfactual"]
    assert cf["s_fg_only"] is None and cf["pred_fg_only"] is None and cf["outcome"] is None
    assert cf["pred_bg_only"] == B and cf["s_bg_only"] is not None
    assert records[1].counterfactual is None and records[1].cci is not None
    prefix = torch.tensor([0.0, 0.0, 0.05])
    records, _ = process(VectorSum(prefix), px, [no_fg, None])
    cf = records[0].to_json()["counterfactual"]
    assert cf["pred_fg_only"] == int((prefix @ W).argmax()) and cf["outcome"] == "bg-sufficient"


def test_mask_threshold_decides_which_patches_are_foreground():
    """Patch fractions 0.4: background at the default 0.5, foreground at 0.3 - and the outcome follows."""
    px = CASES["bg-sufficient"][0][None]
    fg = [np.array([1.0, 1.0, 0.4, 0.4])]
    assert process(VectorSum(), px, fg)[0][0].to_json()["counterfactual"]["outcome"] == "bg-sufficient"
    cf = process(VectorSum(), px, fg, cf_threshold=0.3)[0][0].to_json()["counterfactual"]
    # every patch is now "foreground": the background-only side removes every patch -> undefined
    assert cf["pred_bg_only"] is None and cf["outcome"] is None and cf["pred_fg_only"] == B


def test_setting_off_or_no_masks_means_no_extra_patterns():
    adapter = VectorSum()
    pixels = torch.stack([c[0] for c in CASES.values()])
    records, _ = process(adapter, pixels, [c[1] for c in CASES.values()], counterfactual=False)
    assert adapter.calls == [(4, 2, 4)] and not any("counterfactual" in r.to_json() for r in records)
    adapter = VectorSum()
    records, _ = process(adapter, pixels, None)
    assert adapter.calls == [(4, 2, 4)] and not any("counterfactual" in r.to_json() for r in records)
    adapter = VectorSum()  # random baseline: no cluster passes, but the region test still rides one call
    samples = SampleSet([Sample(f"{i}.png", 0) for i in range(4)], ["A", "B", "C"], None)
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    step = AttributionStep("random", k=2)
    step.start(PairContext(adapter, None, samples))
    batch = Batch([0, 1, 2, 3], pixels, emb, W, emb @ W, torch.zeros(4), samples)
    recs = step.process(with_masks(batch, [c[1] for c in CASES.values()]))
    assert adapter.calls == [(4, 2, 4)] and [r.to_json()["counterfactual"]["outcome"] for r in recs] == list(CASES)


def test_region_outcome_table():
    assert region_outcome(3, 3, 3) == "both" and region_outcome(3, 3, 1) == "fg-sufficient"
    assert region_outcome(3, 1, 3) == "bg-sufficient" and region_outcome(3, 1, 2) == "neither"
    assert region_outcome(3, None, 3) is None


def test_counterfactual_rule_score_is_continuous_and_keeps_the_driver():
    rows = [
        {"index": i, "label": 0, "pred": 0, "correct": True, "counterfactual": {"s_fg_only": fg, "s_bg_only": bg}}
        for i, (fg, bg) in enumerate([(0.8, 0.2), (0.3, 0.35), (0.1, 0.9), (0.5, 0.5)])
    ]
    grids = {i: np.array([1.0, 0.0]) for i in range(4)}
    d = diagnose(rows, grids, None, DiagnosisSettings(rules=("counterfactual", "paper"), bootstrap=10))
    scores = [d.per_sample[i]["scores"]["counterfactual"] for i in range(4)]
    assert scores == pytest.approx([0.65, 0.4875, 0.3, 0.5])
    assert [d.per_sample[i]["driver"] for i in range(4)] == ["fg", "bg", "bg", "fg"]
    assert d.per_sample[0]["scores"]["paper"] is None  # no cci record: the paper rule cannot score


def test_run_logs_counterfactual_by_default_on_masked_tasks(tmp_path, covar_shapes_data):
    """``covar-harness run`` on the shortcut demo model: region tests are on by default with masks, logged per
    sample, and most of its decisions survive on the background alone (its planted shortcut)."""
    from covar_harness.cli.main import main

    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--models",
            "demo/shapes-shortcut",
            "--tasks",
            "covar-shapes/original",
            "--limit",
            "16",
            "--data-dir",
            str(covar_shapes_data),
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--log-samples",
            "--driver-rule",
            "counterfactual,paper",
        ]
    )
    assert code == 0
    path = next(out.rglob("*original.json"))
    rows = [json.loads(x) for x in path.with_name(path.stem + ".samples.jsonl").read_text().splitlines()]
    cfs = [r["counterfactual"] for r in rows]
    own = {"s_fg_only", "s_bg_only", "pred_fg_only", "pred_bg_only", "outcome"}
    other = {"s_fg_only_label", "s_bg_only_label", "outcome_label"}  # the other target, for rescore
    shares = {"additive_share", "additive_share_label"}  # logged where defined (issue 23: redundant evidence)
    assert all(set(cf) - shares == own | other for cf in cfs)
    assert all("additive_share" in cf for cf in cfs)
    assert sum(cf["outcome"] == "bg-sufficient" for cf in cfs) >= len(cfs) / 2
    record = json.loads(path.read_text())
    assert record["config"]["attribution"]["counterfactual"] is True
    assert record["config"]["attribution"]["cf_threshold"] == 0.5
    assert record["config"]["attribution"]["summary"]["counterfactual"]["n_tested"] == 16
