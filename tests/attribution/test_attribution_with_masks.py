"""Issue 12 neighbours on the mask and report side: a bad mask or a failing segmenter switches the diagnosis off
with one inert line instead of failing the pair, and ``sanity --json`` is checked before minutes of work and
written as strict JSON. Offline, CPU."""

from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.masks.patch_masks import PatchMasks


def samples_with_masks(tmp_path: Path, broken: bool = True) -> SampleSet:
    (tmp_path / "m").mkdir(exist_ok=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / f"{i}.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:8, :8] = 255
    Image.fromarray(mask).save(tmp_path / "m" / "0.png")
    if broken:
        (tmp_path / "m" / "1.png").write_bytes(b"not a png")
    return SampleSet([Sample(f"{i}.png", 0, {"mask": f"m/{i}.png"}) for i in range(2)], ["thing"], tmp_path)


def to_tensor(image):
    import torchvision.transforms.functional as TF

    return TF.to_tensor(image.convert("RGB").resize((16, 16)))


def test_dataset_segmenter_counts_an_unreadable_mask_instead_of_failing(tmp_path):
    from covar_harness_plugins.segmenters import DatasetSegmenter

    samples = samples_with_masks(tmp_path)
    segmenter = DatasetSegmenter()
    masks = segmenter.masks(samples, [0, 1], ["thing", "thing"])
    assert masks[0] is not None and masks[1] is None
    about = segmenter.describe()
    assert about["n_unreadable_masks"] == 1 and about["first_unreadable"].startswith("1.png: ")
    grids = PatchMasks(segmenter, samples, ["thing"], to_tensor, (2, 2)).for_batch([0, 1])
    assert grids[0].tolist() == [1.0, 0.0, 0.0, 0.0] and grids[1] is None


class Exploding:
    name = "evil\x1b]8;;http://x\x07seg"

    def masks(self, samples, indices, prompts):
        raise RuntimeError("boom \x1b[5mblink\x1b[0m [/x]")


def test_failing_segmenter_is_one_inert_line(tmp_path):
    masks = PatchMasks(Exploding(), samples_with_masks(tmp_path), ["thing"], to_tensor, (2, 2))
    assert masks.for_batch([0, 1]) == [None, None]
    assert "\x1b" not in masks.failed and "\x07" not in masks.failed and "\n" not in masks.failed
    assert "RuntimeError: boom" in masks.failed


def test_masks_that_cannot_be_mapped_switch_the_diagnosis_off(tmp_path):
    from torchvision import transforms

    from covar_harness_plugins.segmenters import DatasetSegmenter

    random_crop = transforms.Compose([transforms.RandomResizedCrop(16), transforms.ToTensor()])
    masks = PatchMasks(DatasetSegmenter(), samples_with_masks(tmp_path, broken=False), ["thing"], random_crop, (2, 2))
    assert masks.for_batch([0, 1]) == [None, None]  # no exception escapes into the pair
    assert "patch grid" in masks.failed and "RandomResizedCrop" in masks.failed


def test_segmenter_returning_the_wrong_number_of_masks(tmp_path):
    class Short:
        name = "short"

        def masks(self, samples, indices, prompts):
            return [None]

    masks = PatchMasks(Short(), samples_with_masks(tmp_path), ["thing"], to_tensor, (2, 2))
    assert masks.for_batch([0, 1]) == [None, None] and "1 masks for 2 images" in masks.failed


def test_overlay_mask_failure_of_any_kind_is_no_outline(tmp_path):
    from covar_harness.attribution import overlays

    class Bomb(SampleSet):
        def open_mask(self, index):
            raise Image.DecompressionBombError("too many pixels")

    samples = Bomb([Sample("0.png", 0, {"mask": "m.png"})], ["thing"], tmp_path)
    assert overlays.mask_in_input_frame(samples, 0, to_tensor) is None


# ---- sanity --json --------------------------------------------------------------------------------------------
def sanity_args(path: Path) -> Namespace:
    return Namespace(limit=2, data_dir=None, seed=0, device="cpu", json=path)


def test_sanity_json_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    from covar_harness.run import sanity

    def no_work(*args, **kwargs):
        raise AssertionError("evaluated although the report could never be written")

    monkeypatch.setattr(sanity, "collect", no_work)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a writable folder"):
        sanity.cmd_sanity(sanity_args(tmp_path / "file" / "report.json"))
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        sanity.cmd_sanity(sanity_args(tmp_path / "dir.json"))


def test_sanity_json_is_strict_json(tmp_path, monkeypatch):
    from covar_harness.run import sanity

    report = {"rules": {"paper": {"auroc": float("nan"), "cost_vs_plain": math.inf, "n": [1, float("-inf")]}}}
    monkeypatch.setattr(sanity, "collect", lambda *a, **k: None)
    monkeypatch.setattr(sanity, "summarise", lambda run: report)
    monkeypatch.setattr(sanity, "render", lambda report, console: None)
    out = tmp_path / "new" / "report.json"
    assert sanity.cmd_sanity(sanity_args(out)) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rules": {"paper": {"auroc": None, "cost_vs_plain": None, "n": [1, None]}}}
