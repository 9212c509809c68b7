"""The ``covar`` dataset format and the covar/* tasks: layout, metadata errors, masks, end-to-end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covar_harness.data.samples import DatasetNotFound
from covar_harness.results import files as results
from covar_harness_tasks.covar import CovarFormatError, load_covar
from helpers import COVAR_CLASSES as CLASSES
from helpers import COVAR_SUBSETS as SUBSETS
from helpers import make_covar, run_cli_inprocess


def _write_meta(root: Path, subset: str, lines: list[str]) -> Path:
    path = root / subset / "metadata.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def covar_root(tmp_path) -> Path:
    return make_covar(tmp_path / "data" / "covar", subsets=("original", "hflip"))


def test_loader_reads_labels_meta_and_masks(covar_root):
    s = load_covar({"format": "covar", "path": str(covar_root), "subset": "original"}, covar_root.parent)
    assert s.classnames == CLASSES
    assert [x.label for x in s.samples] == [0, 0, 1, 1, 2, 2]
    assert [x.id for x in s.samples[:2]] == ["original/img/cat0.png", "original/img/cat1.png"]
    first = s.samples[0]
    assert first.meta == {
        "mask": "original/img/cat0.mask.png",
        "source_id": "cat-0",
        "variation": {"transform": "original", "k": 0},
    }
    assert s.has_masks and s.open_mask(0).mode == "L" and s.open_mask(0).getpixel((20, 20)) == 255
    assert s.open_image(5).size == (40, 40)
    no_masks = load_covar({"format": "covar", "path": str(covar_root), "subset": "hflip"}, covar_root.parent)
    assert not no_masks.has_masks and no_masks.open_mask(0) is None


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"file_name": "img/x.png", "label": "cat"', "not valid JSON"),
        ('["img/x.png", 0]', "must be a JSON object"),
        ('{"label": 0}', "missing required key 'file_name'"),
        ('{"file_name": "img/x.png", "label": "cow"}', "label 'cow' is not a class"),
        ('{"file_name": "img/x.png", "label": 3}', "label 3 is outside classes.json"),
        ('{"file_name": "img/x.png", "label": true}', "'label' must be an int or a class name"),
        ('{"file_name": "/etc/passwd", "label": 0}', "must be a relative path"),
        ('{"file_name": "../../x.png", "label": 0}', "must be a relative path"),
        ('{"file_name": "img/x.png", "label": 0, "variation": [1, 2]}', "'variation' must be a JSON object"),
    ],
)
def test_bad_metadata_line_names_file_and_line(covar_root, bad_line, message):
    good = json.dumps({"file_name": "img/cat0.png", "label": 0})
    path = _write_meta(covar_root, "hflip", [good, "", bad_line])
    with pytest.raises(CovarFormatError) as err:
        load_covar({"format": "covar", "path": str(covar_root), "subset": "hflip"}, covar_root.parent)
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_missing_mask_file_is_an_error(covar_root):
    _write_meta(covar_root, "hflip", [json.dumps({"file_name": "img/cat0.png", "label": 0, "mask": "img/nope.png"})])
    with pytest.raises(CovarFormatError, match="nope.png"):
        load_covar({"format": "covar", "path": str(covar_root), "subset": "hflip"}, covar_root.parent)


def test_bad_classes_json(covar_root):
    (covar_root / "classes.json").write_text(json.dumps(["cat", "cat"]))
    with pytest.raises(CovarFormatError, match="duplicate class names: cat"):
        load_covar({"format": "covar", "path": str(covar_root), "subset": "hflip"}, covar_root.parent)


def test_missing_dataset_and_subset_say_where_and_how(tmp_path, covar_root):
    with pytest.raises(DatasetNotFound) as err:
        load_covar({"format": "covar", "path": str(tmp_path / "nowhere"), "subset": "crop"}, tmp_path)
    assert str(tmp_path / "nowhere" / "classes.json") in str(err.value) and "build-covar" in str(err.value)
    with pytest.raises(DatasetNotFound) as err:
        load_covar({"format": "covar", "path": str(covar_root), "subset": "crop"}, tmp_path)
    assert "crop" in str(err.value) and "subsets present: hflip, original" in str(err.value)


def test_cli_runs_all_covar_tasks_and_leaderboard_averages_eight(tmp_path, openclip_dir):
    data = tmp_path / "data"
    make_covar(data / "covar")
    out = tmp_path / "results"
    r = run_cli_inprocess(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "covar/*",
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--log-samples",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--attribution",
        "none",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(p for p in out.rglob("*.json"))
    assert len(files) == 9
    records = {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text()) for p in files}
    paths = {json.loads(p.read_text())["task"]["name"]: p for p in files}
    assert set(records) == {f"covar/{s}" for s in SUBSETS}
    rec = records["covar/original"]
    assert rec["task"]["n_samples"] == 6 and rec["task"]["n_classes"] == 3
    assert len(rec["config"]["templates"]) == 80  # openai_imagenet
    log = [json.loads(x) for x in results.samples_path(paths["covar/original"]).read_text().splitlines()]
    assert log[0]["mask"] == "original/img/cat0.mask.png" and log[0]["source_id"] == "cat-0"
    assert log[0]["variation"] == {"transform": "original", "k": 0} and log[0]["label"] == 0

    lb = run_cli_inprocess("leaderboard", str(out), "--format", "json")
    assert lb.returncode == 0, lb.stderr
    table = next(t for t in json.loads(lb.stdout)["tables"] if t["title"].startswith("covar: zero-shot accuracy"))
    assert table["columns"] == [
        "Model",
        "Original",
        "Bg-varied",
        "H-flip",
        "Translate",
        "Crop",
        "V-flip",
        "Rotation",
        "Viewpoint",
        "Scale",
        "Avg",
    ]
    row = table["rows"][0]
    eight = [records[f"covar/{s}"]["metrics"]["acc1"] for s in SUBSETS[1:]]
    assert row[-1] == round(100 * sum(eight) / 8, 1)  # the average excludes 'original'
    assert row[1] == round(100 * records["covar/original"]["metrics"]["acc1"], 1)
