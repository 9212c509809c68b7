"""COVAR-Shapes: generated on first use into the data dir, rebuilt when the generator changes, tasks resolve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covar_harness_tasks import covar_shapes as cs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One generation shared by the module (it takes seconds); tests that modify it use their own copy."""
    root = tmp_path_factory.mktemp("data") / "covar-shapes"
    cs.ensure_covar_shapes(root, quiet=True, per_class=SMALL)
    return root


SMALL = 3  # objects per class in these tests: the layout is the same as the full benchmark's, just smaller


def test_generated_layout_every_sample_masked(built):
    assert cs.is_current(built, SMALL) and not cs.is_current(built)  # a small build is not the benchmark
    assert json.loads((built / "classes.json").read_text()) == sorted(cs.CLASSES)
    info = json.loads((built / "build.json").read_text())
    assert set(info["subsets"]) == {
        "original",
        "bg_varied",
        "hflip",
        "vflip",
        "rotation",
        "translate",
        "crop",
        "scale",
        "viewpoint",
    }
    assert info["subsets"]["original"] == len(cs.CLASSES) * SMALL
    for subset in info["subsets"]:
        lines = (built / subset / "metadata.jsonl").read_text().splitlines()
        for line in lines[:: max(1, len(lines) // 10)]:
            rec = json.loads(line)
            mask = np.asarray(Image.open(built / subset / rec["mask"]))  # subset-relative
            assert mask.shape == (cs.IMAGE_SIZE, cs.IMAGE_SIZE) and mask.max() == 255
    assert not list(built.parent.glob(".covar-shapes-*"))  # the temporary build folder is gone


def test_original_uses_typical_family_and_bg_varied_another(built):
    classes = json.loads((built / "classes.json").read_text())
    family_of = dict(zip(cs.CLASSES, cs.FAMILIES))
    for line in (built / "original" / "metadata.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert family_of[classes[rec["label"]]] in rec["variation"]["background"]
    for line in (built / "bg_varied" / "metadata.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert family_of[classes[rec["label"]]] not in rec["variation"]["background"]


def test_generation_is_deterministic(built, tmp_path):
    other = cs.ensure_covar_shapes(tmp_path / "covar-shapes", quiet=True, workers=1, per_class=SMALL)
    for subset in ("original", "rotation", "viewpoint"):
        assert (other / subset / "metadata.jsonl").read_bytes() == (built / subset / "metadata.jsonl").read_bytes()
    rec = json.loads((built / "translate" / "metadata.jsonl").read_text().splitlines()[7])
    assert (other / "translate" / rec["file_name"]).read_bytes() == (
        built / "translate" / rec["file_name"]
    ).read_bytes()


def test_rebuilt_when_stamp_changes_or_incomplete(tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "OBJECTS_PER_CLASS", 1)
    root = cs.ensure_covar_shapes(tmp_path / "covar-shapes", quiet=True)
    first = (root / "original" / "metadata.jsonl").stat().st_mtime_ns
    assert cs.ensure_covar_shapes(root, quiet=True) == root
    assert (root / "original" / "metadata.jsonl").stat().st_mtime_ns == first  # current: left alone
    monkeypatch.setattr(cs, "GENERATOR_VERSION", cs.GENERATOR_VERSION + "-changed")
    assert not cs.is_current(root)
    cs.ensure_covar_shapes(root, quiet=True)
    assert cs.is_current(root) and "-changed" in (root / cs.STAMP).read_text()
    (root / "build.json").unlink()  # an interrupted build
    assert not cs.is_current(root)
    cs.ensure_covar_shapes(root, quiet=True)
    assert cs.is_current(root)


def test_tasks_resolve_and_load_through_the_format(tmp_path, monkeypatch):
    from covar_harness.data.samples import open_task_data

    monkeypatch.setattr(cs, "OBJECTS_PER_CLASS", 2)
    from covar_harness.catalog.plugin_manager import load_catalog

    catalog = load_catalog()
    tasks = catalog.tasks.resolve("covar-shapes/*")
    assert {t.task.split("/")[1] for t in tasks} == {
        "original",
        "bg_varied",
        "hflip",
        "vflip",
        "rotation",
        "translate",
        "crop",
        "scale",
        "viewpoint",
    }
    assert all("covar-shapes" in t.tags for t in tasks)
    assert [t.task for t in catalog.tasks.resolve("covar-shapes")] == [t.task for t in tasks]
    cfg = catalog.tasks.get("covar-shapes/bg_varied")
    samples = open_task_data(cfg, catalog, tmp_path)  # generates into the (empty) data dir on first use
    assert (tmp_path / "covar-shapes" / cs.STAMP).is_file()
    assert len(samples) == len(cs.CLASSES) * 2 and samples.classnames == sorted(cs.CLASSES)
    assert all(s.meta.get("mask") for s in samples.samples)
    assert samples.open_mask(0).size == (cs.IMAGE_SIZE, cs.IMAGE_SIZE)
