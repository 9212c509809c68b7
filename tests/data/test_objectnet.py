"""ObjectNet (``objectnet/test``) on a tiny copy laid out as ``objectnet-1.0.zip`` unzips: only the classes that
``objectnet_to_imagenet_1k.json`` maps take part, named by their lower-cased ObjectNet labels, labels in sorted
folder order (CLIP_benchmark's protocol), accuracy checked by hand with a toy adapter (issue 18 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_imagenet_val import colour_adapter

from covar_harness.catalog.registry import UsageError
from covar_harness.data.samples import DatasetNotFound
from helpers import make_image
from helpers import run_cli_inprocess as cli

# folder -> ObjectNet label, as folder_to_objectnet_label.json; "sponge" has no ImageNet class (left out)
FOLDERS = {"alarm_clock": "Alarm clock", "banana": "Banana", "sponge": "Sponge", "backpack": "Backpack"}
TO_IMAGENET = {"Alarm clock": "analog clock; digital clock", "Backpack": "backpack", "Banana": "banana"}
COLOURS = {"alarm clock": (230, 30, 30), "backpack": (30, 230, 30), "banana": (30, 30, 230)}


def make_objectnet(root: Path) -> Path:
    release = root / "objectnet-1.0"
    (release / "mappings").mkdir(parents=True)
    (release / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(FOLDERS, indent=2))
    (release / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(TO_IMAGENET, indent=2))
    (release / "mappings" / "imagenet_to_label_2012_v2").write_text("analog clock\ndigital clock\nbackpack\nbanana\n")
    (release / "mappings" / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({"0": 0, "1": 1}))
    for c, (folder, label) in enumerate(FOLDERS.items()):
        (release / "images" / folder).mkdir(parents=True)
        colour = COLOURS.get(label.lower(), (128, 128, 128))
        for j in range(2):
            make_image(colour, size=20, seed=10 * c + j).save(release / "images" / folder / f"{c:02x}{j}f3a9.png")
    return root


def load(path: Path, **extra):
    from covar_harness_tasks.objectnet import load_objectnet

    return load_objectnet({"path": str(path), **extra}, path.parent)


def test_overlap_classes_in_folder_order(tmp_path):
    root = make_objectnet(tmp_path)
    found = load(root / "objectnet-1.0")
    assert found.classnames == ["alarm clock", "backpack", "banana"]  # sorted folders; sponge left out
    assert [(s.id.split("/")[1], s.label) for s in found.samples] == [
        ("alarm_clock", 0),
        ("alarm_clock", 0),
        ("backpack", 1),
        ("backpack", 1),
        ("banana", 2),
        ("banana", 2),
    ]
    assert load(root).classnames == found.classnames  # CLIP_benchmark's root, the folder above objectnet-1.0
    cropped = load(root, crop_border=2)
    assert cropped.open_image(0).size == (16, 16) and found.open_image(0).size == (20, 20)
    with pytest.raises(UsageError, match="crop_border"):
        load(root, crop_border="2")
    mapping = root / "objectnet-1.0" / "mappings" / "objectnet_to_imagenet_1k.json"
    mapping.write_text(json.dumps({**TO_IMAGENET, "Tennis racket": "racket"}))
    with pytest.raises(UsageError, match="Tennis racket"):
        load(root)
    with pytest.raises(DatasetNotFound, match="objectnet.dev"):
        load(tmp_path / "nowhere")


def test_run_with_a_hand_computed_accuracy(tmp_path):
    """One backpack image coloured as a banana: 5 of the 6 overlap images are right."""
    data = make_objectnet(tmp_path / "data")
    wrong = data / "objectnet-1.0" / "images" / "backpack" / "031f3a9.png"
    make_image(COLOURS["banana"], size=20, seed=5).save(wrong)
    spec, env = colour_adapter(tmp_path, COLOURS)
    out = tmp_path / "out"
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--text-cache", "none"]
    r = cli("run", "--models", spec, "--tasks", "objectnet/test", *args, "--attribution", "none", env=env)
    assert r.returncode == 0, r.stderr
    (path,) = out.rglob("*.json")
    rec = json.loads(path.read_text())
    assert rec["task"]["n_classes"] == 3 and rec["task"]["n_samples"] == 6
    assert rec["metrics"]["acc1"] == pytest.approx(5 / 6)
    assert rec["metrics"]["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
