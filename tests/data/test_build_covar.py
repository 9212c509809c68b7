"""build-covar: determinism, parallel == serial, masks that follow the images, recorded parameters, inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covar_harness_tasks import build_covar as bc
from covar_harness_tasks import image_ops
from helpers import run_cli_inprocess


def _cutout(path: Path, colour, shape: str, size: int = 40) -> None:
    """An asymmetric RGBA cut-out (an L or a bar) so flips and rotations are visible in the mask."""
    rgba = np.zeros((size, size, 4), np.uint8)
    if shape == "L":
        rgba[5:35, 5:14] = (*colour, 255)
        rgba[26:35, 5:30] = (*colour, 255)
    else:
        rgba[8:16, 4:36] = (*colour, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)


def _background(path: Path, seed: int, size=(50, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    objects, backgrounds = tmp_path / "objects", tmp_path / "backgrounds"
    for i in range(3):
        _cutout(objects / "ell" / f"e{i}.png", (200, 30 + 40 * i, 30), "L")
        _cutout(objects / "bar" / f"b{i}.png", (30, 30, 200 - 40 * i), "bar")
    for i in range(2):
        _background(backgrounds / "ell" / f"grass{i}.png", i)
        _background(backgrounds / "bar" / f"water{i}.png", 10 + i)
    _background(backgrounds / "generic.png", 99)
    return objects, backgrounds


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _build(inputs, out: Path, **kw) -> bc.BuildReport:
    opts = bc.BuildOptions(**{"seed": 3, "size": 48, "workers": 1, **kw})
    return bc.build_from_folders(inputs[0], inputs[1], out, opts)


def _load(out: Path, subset: str) -> dict[str, dict]:
    return {r["source_id"] + r["file_name"][-12:]: r for r in bc.iter_records(out, subset)}


def _arrays(out: Path, rec: dict) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(out / rec["file_name"]).convert("RGB"))
    mask = np.asarray(Image.open(out / rec["mask"]).convert("L"))
    return img, mask


def test_same_seed_same_bytes_and_parallel_equals_serial(tmp_path, inputs):
    _build(inputs, tmp_path / "a", workers=1)
    _build(inputs, tmp_path / "b", workers=2)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    _build(inputs, tmp_path / "c", seed=4)
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_layout_subsets_and_recorded_parameters(tmp_path, inputs):
    report = _build(inputs, tmp_path / "out", per_object=2)
    out = tmp_path / "out"
    assert json.loads((out / "classes.json").read_text()) == ["bar", "ell"]
    assert set(report.counts) == {"original", "bg_varied", "hflip", "vflip", "rotation", "translate", "crop", "scale"}
    assert report.counts["original"] == 12 and report.counts["scale"] == 24
    assert not (out / "viewpoint").exists()  # no views -> no viewpoint subset
    assert bc.is_complete(out)
    for subset in report.counts:
        for rec in bc.iter_records(out, subset):
            img, mask = _arrays(out, rec)
            assert img.shape == (48, 48, 3) and mask.shape == (48, 48)
            assert set(np.unique(mask)) <= {0, 255} and mask.any()  # binary, object present
            assert rec["variation"]["transform"] == subset and "background" in rec["variation"]
    originals = {r["source_id"]: r for r in bc.iter_records(out, "original")}
    for rec in bc.iter_records(out, "original"):
        label = ["bar", "ell"][rec["label"]]
        assert rec["variation"]["background"].startswith(label)  # the class's typical background
    for rec in bc.iter_records(out, "bg_varied"):
        assert rec["variation"]["background"] != originals[rec["source_id"]]["variation"]["background"]
        assert not rec["variation"]["background"].startswith(["bar", "ell"][rec["label"]])
    assert {r["variation"]["angle"] for r in bc.iter_records(out, "rotation")} <= {90, 180, 270}
    assert sorted({r["variation"]["scale"] for r in bc.iter_records(out, "scale")}) == [0.5, 1.5]


def test_masks_follow_images_exactly(tmp_path, inputs):
    out = tmp_path / "out"
    _build(inputs, out)
    orig = {r["source_id"]: _arrays(out, r) for r in bc.iter_records(out, "original")}
    for rec in bc.iter_records(out, "hflip"):
        img, mask = _arrays(out, rec)
        o_img, o_mask = orig[rec["source_id"]]
        assert np.array_equal(mask, o_mask[:, ::-1]) and np.array_equal(img, o_img[:, ::-1])
    for rec in bc.iter_records(out, "vflip"):
        img, mask = _arrays(out, rec)
        o_img, o_mask = orig[rec["source_id"]]
        assert np.array_equal(mask, o_mask[::-1]) and np.array_equal(img, o_img[::-1])
    for rec in bc.iter_records(out, "rotation"):
        img, mask = _arrays(out, rec)
        o_img, o_mask = orig[rec["source_id"]]
        k = rec["variation"]["angle"] // 90
        assert np.array_equal(mask, np.rot90(o_mask, k)) and np.array_equal(img, np.rot90(o_img, k))
    for rec in bc.iter_records(out, "translate"):
        img, mask = _arrays(out, rec)
        o_img, o_mask = orig[rec["source_id"]]
        dx, dy = (round(v) for v in rec["variation"]["shift"])
        assert (dx, dy) != (0, 0)
        ys, xs = np.nonzero(o_mask)
        assert np.array_equal(mask[ys + dy, xs + dx], o_mask[ys, xs])  # the whole object moved by the shift
        assert np.array_equal(img[ys + dy, xs + dx], o_img[ys, xs])  # ... and so did its pixels
        assert mask.sum() == o_mask.sum()
        assert np.array_equal(img[(mask == 0) & (o_mask == 0)], o_img[(mask == 0) & (o_mask == 0)])  # same background


def test_crop_is_tight_and_mask_binary():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:20] = True
    img, msk, params = image_ops.crop_tight(image, mask)
    x0, y0, x1, y1 = params["box"]
    assert x0 <= 10 and y0 <= 20 and x1 >= 20 and y1 >= 30 and (x1 - x0) <= 14
    assert msk.mean() > 0.4  # the object now fills much of the frame
    assert msk.dtype == bool


def test_composite_clips_at_borders():
    bg = np.zeros((10, 10, 3), np.uint8)
    obj = np.full((4, 4, 3), 200, np.uint8)
    img, mask = image_ops.composite(bg, obj, np.ones((4, 4), bool), (0.0, 0.0))
    assert mask.sum() == 4 and mask[:2, :2].all() and img[0, 0, 0] == 200


def test_viewpoint_only_with_views(tmp_path):
    objects, backgrounds = tmp_path / "objects", tmp_path / "bgs"
    _cutout(objects / "a0.png", (200, 0, 0), "L")
    _cutout(objects / "a1.png", (200, 0, 0), "bar")
    _cutout(objects / "b0.png", (0, 0, 200), "bar")
    (objects / "manifest.json").write_text(
        json.dumps(
            {"thing-a": {"label": "a", "views": ["a0.png", "a1.png"]}, "thing-b": {"label": "b", "views": ["b0.png"]}}
        )
    )
    _background(backgrounds / "x.png", 1)
    _background(backgrounds / "y.png", 2)
    out = tmp_path / "out"
    report = bc.build_from_folders(objects, backgrounds, out, bc.BuildOptions(size=32, workers=1))
    assert report.counts["viewpoint"] == 1
    (rec,) = bc.iter_records(out, "viewpoint")
    assert rec["source_id"] == "thing-a/0" and rec["variation"]["view"] == 1
    view_mask = np.asarray(Image.open(out / rec["mask"]))
    orig = next(r for r in bc.iter_records(out, "original") if r["source_id"] == "thing-a/0")
    assert not np.array_equal(view_mask, np.asarray(Image.open(out / orig["mask"])))  # a different view


def test_interrupted_build_is_not_complete(tmp_path, inputs):
    out = tmp_path / "out"
    _build(inputs, out)
    (out / "build.json").unlink()
    assert not bc.is_complete(out)
    with pytest.raises(bc.BuildError, match="not empty"):
        _build(inputs, out)


@pytest.mark.parametrize(
    "setup, message",
    [
        ("no_alpha", "no alpha channel and no mask file"),
        ("bad_bg_folder", "matches no object class"),
        ("empty", "no objects in"),
        ("bad_manifest", "needs a 'label' string"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, setup, message):
    objects, backgrounds = tmp_path / "objects", tmp_path / "bgs"
    objects.mkdir()
    _background(backgrounds / "x.png", 1)
    _background(backgrounds / "y.png", 2)
    if setup == "no_alpha":
        _background(objects / "cat" / "c.png", 3)
    elif setup == "bad_bg_folder":
        _cutout(objects / "cat" / "c.png", (1, 2, 3), "L")
        _background(backgrounds / "dgo" / "z.png", 4)
    elif setup == "bad_manifest":
        (objects / "manifest.json").write_text(json.dumps({"x": {"views": ["a.png"]}}))
    r = run_cli_inprocess(
        "build-covar",
        "--objects",
        str(objects),
        "--backgrounds",
        str(backgrounds),
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "1",
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_cli_builds_with_image_mask_pairs(tmp_path):
    objects, backgrounds = tmp_path / "objects", tmp_path / "bgs"
    for i in range(2):
        _background(objects / "dog" / f"d{i}.jpg", 20 + i, (30, 30))
        m = np.zeros((30, 30), np.uint8)
        m[5:25, 8 + i : 20] = 255
        Image.fromarray(m).save(objects / "dog" / f"d{i}.mask.png")
        _background(backgrounds / f"bg{i}.png", i)
    out = tmp_path / "out"
    r = run_cli_inprocess(
        "build-covar",
        "--objects",
        str(objects),
        "--backgrounds",
        str(backgrounds),
        "--out",
        str(out),
        "--size",
        "32",
        "--workers",
        "2",
        "--seed",
        "5",
    )
    assert r.returncode == 0, r.stderr
    assert "original 2" in r.stdout
    recs = list(bc.iter_records(out, "original"))
    assert [r["label"] for r in recs] == [0, 0]
    assert json.loads((out / "build.json").read_text())["seed"] == 5
