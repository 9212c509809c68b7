"""Distractor errors (issue 14 item 5): an error pulled by the predicted class's object, not by the background.

The prompted segmenter here is planted: for the label's prompt it returns the dataset's object mask, for any
other prompt a mask of a known region (the image's right half), so the share of each error's positive
importance on "the predicted object outside the label's" is recomputed by hand from the logged clusters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.diagnosis.distractors import DistractorRecord, DistractorSettings, distractor_share, summarise
from covar_harness.masks.geometry import mask_patch_fractions
from helpers import patch_everywhere, run_cli_inprocess


def test_share_is_positive_importance_on_the_other_object_outside_the_label():
    importance = np.array([0.5, -1.0, 0.25, 0.25])
    label_fg = np.array([1.0, 0.0, 0.0, 0.6])
    pred_fg = np.array([0.0, 1.0, 0.9, 1.0])  # patch 3 is on both objects: the label's, so not counted
    assert distractor_share(importance, label_fg, pred_fg) == pytest.approx(0.25)
    assert distractor_share(-importance.clip(0), label_fg, pred_fg) is None  # no positive importance


def test_summary_counts_and_rates():
    records = [
        DistractorRecord(0, True, 0.8, True),  # background-driven, explained by the other object
        DistractorRecord(1, True, 0.1, False),  # background-driven, not a distractor
        DistractorRecord(2, False, 0.6, True),  # foreground-driven yet mostly on the other object
        DistractorRecord(3, None, None, False),  # undecided: outside every rate
    ]
    out = summarise(records, DistractorSettings(enabled=True))
    assert out.metrics == {"distractor_rate": pytest.approx(2 / 3), "bg_er_without_distractors": pytest.approx(1 / 3)}
    assert out.config["n_errors_decided"] == 3 and out.config["n_distractor"] == 2
    assert out.config["n_without_pred_mask"] == 0
    with pytest.raises(UsageError, match="--distractor-share"):
        DistractorSettings(share=0)


class RightHalf:
    """A prompted segmenter: the dataset's mask for the label's prompt, the right half for any other."""

    name, prompted = "planted", True

    def __init__(self, dataset, classnames):
        self.dataset, self.classnames = dataset, classnames

    def masks(self, samples, indices, prompts):
        out = []
        for i, prompt in zip(indices, prompts):
            if prompt == self.classnames[samples.samples[i].label]:
                out.extend(self.dataset.masks(samples, [i], [prompt]))
            else:
                w, h = samples.open_image(i).size
                arr = np.zeros((h, w), dtype=np.uint8)
                arr[:, w // 2 :] = 255
                out.append(Image.fromarray(arr, "L"))
        return out


def _plant(monkeypatch):
    import covar_harness.masks.segmenter as seg

    real = seg.choose_segmenter

    def choose(name, samples, catalog, settings=None):
        return RightHalf(real("dataset", samples, catalog), samples.classnames)

    patch_everywhere(monkeypatch, seg, "choose_segmenter", choose)


def test_run_with_a_prompted_segmenter(tmp_path, covar_shapes_data, monkeypatch):
    _plant(monkeypatch)
    out = run_cli_inprocess("run", "--models", "demo/shapes-shortcut", "--tasks", "covar-shapes/bg_varied",
                            "--limit", "12", "--distractors", "--log-samples",
                            "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(next(tmp_path.rglob("*bg_varied.json")).read_text())
    rows = [json.loads(line) for line in next(tmp_path.rglob("*.samples.jsonl")).read_text().splitlines()]
    errors = [r for r in rows if not r["correct"] and r.get("driver") is not None]
    assert errors and all("distractor" in r for r in errors)
    from covar_harness.api import load_task
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.data.samples import open_task_data

    catalog = load_catalog()
    samples = open_task_data(load_task("covar-shapes/bg_varied"), catalog, None)
    import covar_harness

    adapter = covar_harness.load_model("demo/shapes-shortcut")
    first = errors[0]
    sample = next(s for s in samples.samples if s.id == first["file"])
    index = samples.samples.index(sample)
    label_fg = mask_patch_fractions(adapter.preprocess, samples.open_mask(index), adapter.patch_grid).reshape(-1)
    w, h = samples.open_image(index).size
    right = np.zeros((h, w), dtype=np.uint8)
    right[:, w // 2 :] = 255
    pred_fg = mask_patch_fractions(adapter.preprocess, Image.fromarray(right, "L"), adapter.patch_grid).reshape(-1)
    importance = np.array(first["cci"]["importance"])[np.array(first["cci"]["assignments"])]
    positive = importance.clip(0)
    want = positive[(pred_fg >= 0.5) & (label_fg < 0.5)].sum() / positive.sum()
    assert first["distractor_share"] == pytest.approx(want, abs=1e-4)

    metrics = result["metrics"]
    bg = np.array([r["driver"] == "bg" for r in errors])
    distractor = np.array([r["distractor"] for r in errors])
    assert metrics["distractor_rate"] == pytest.approx(distractor.mean())
    assert metrics["bg_er_without_distractors"] == pytest.approx((bg & ~distractor).mean())
    assert metrics["bg_er_without_distractors"] <= metrics["bg_er"]
    assert result["config"]["distractors"]["status"] == "ran"
    assert result["config"]["run_settings"]["distractors"] == {"share": 0.5, "patch_fg": 0.5}


def test_dataset_masks_cannot_show_the_predicted_object(tmp_path, covar_shapes_data):
    out = run_cli_inprocess("run", "--models", "demo/shapes-shortcut", "--tasks", "covar-shapes/bg_varied",
                            "--limit", "6", "--distractors", "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(next(tmp_path.rglob("*bg_varied.json")).read_text())
    assert result["config"]["distractors"]["status"] == "off"
    assert "labelled object whatever the prompt" in result["config"]["distractors"]["reason"]
    assert "distractor_rate" not in result["metrics"]
    assert any("--distractors: off" in n for n in result["notes"])


def test_off_by_default_and_not_in_run_settings(tmp_path, covar_shapes_data):
    out = run_cli_inprocess("run", "--models", "demo/shapes-shortcut", "--tasks", "covar-shapes/bg_varied",
                            "--limit", "4", "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(next(tmp_path.rglob("*bg_varied.json")).read_text())
    assert "distractors" not in result["config"] and "distractors" not in result["config"]["run_settings"]
