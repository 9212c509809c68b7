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

# Verbatim entries of the release's mappings/ (as wise-ft and CLIP_benchmark copy them): folder -> ObjectNet label,
# and ObjectNet label -> ImageNet names. "sponge" has no ImageNet class (left out). The folder order differs from
# the label order: beer_bottle < full_sized_towel, but "Bath towel" < "Beer bottle"; the protocol's labels follow
# the sorted folders.
FOLDERS = {
    "alarm_clock": "Alarm clock",
    "banana": "Banana",
    "sponge": "Sponge",
    "full_sized_towel": "Bath towel",
    "backpack": "Backpack",
    "beer_bottle": "Beer bottle",
}
TO_IMAGENET = {
    "Alarm clock": "analog clock; digital clock",
    "Backpack": "backpack, back pack, knapsack, packsack, rucksack, haversack",
    "Banana": "banana",
    "Bath towel": "bath towel",
    "Beer bottle": "beer bottle",
}
# imagenet_to_label_2012_v2 (one ImageNet name per line) and pytorch_to_imagenet_2012_id.json (ImageNet index ->
# line), cut down to these classes and consistent with each other, as CLIP_benchmark's get_metadata reads them
IMAGENET_LINES = [
    "analog clock",
    "digital clock",
    "backpack, back pack, knapsack, packsack, rucksack, haversack",
    "banana",
    "bath towel",
    "beer bottle",
]
PYTORCH_TO_LINE = {"409": 0, "530": 1, "414": 2, "954": 3, "434": 4, "440": 5}
COLOURS = {
    "alarm clock": (230, 30, 30),
    "backpack": (30, 230, 30),
    "banana": (30, 30, 230),
    "beer bottle": (230, 230, 30),
    "bath towel": (30, 230, 230),
}


def image_name(c: int, j: int) -> str:
    """ObjectNet's file names: 32 hexadecimal digits, .png."""
    return f"{c:02x}{j:02x}" + "5e1d0c7a9b3f4e2d8c6b1a0f9e8d7c6b"[4:] + ".png"


def make_objectnet(root: Path) -> Path:
    release = root / "objectnet-1.0"
    (release / "mappings").mkdir(parents=True)
    (release / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(FOLDERS, indent=2))
    (release / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(TO_IMAGENET, indent=2))
    (release / "mappings" / "imagenet_to_label_2012_v2").write_text("\n".join(IMAGENET_LINES) + "\n")
    (release / "mappings" / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(PYTORCH_TO_LINE, indent=2))
    for c, (folder, label) in enumerate(FOLDERS.items()):
        (release / "images" / folder).mkdir(parents=True)
        for j in range(2):
            save_framed(
                make_image(COLOURS.get(label.lower(), (128, 128, 128)), size=20, seed=10 * c + j),
                release / "images" / folder / image_name(c, j),
            )
    return root


def save_framed(image, path: Path) -> None:
    """ObjectNet's images carry a 1-pixel red frame."""
    from PIL import ImageDraw

    ImageDraw.Draw(image).rectangle((0, 0, image.width - 1, image.height - 1), outline=(255, 0, 0))
    image.save(path)


def load(path: Path, **extra):
    from covar_harness_tasks.objectnet import load_objectnet

    return load_objectnet({"path": str(path), **extra}, path.parent)


def test_overlap_classes_in_folder_order(tmp_path):
    root = make_objectnet(tmp_path)
    found = load(root / "objectnet-1.0")
    # sorted folders (beer_bottle before full_sized_towel), not sorted labels ("Bath towel" before "Beer bottle")
    assert found.classnames == ["alarm clock", "backpack", "banana", "beer bottle", "bath towel"]
    assert sorted(TO_IMAGENET) != [FOLDERS[f] for f in sorted(FOLDERS) if f != "sponge"]  # the two orders differ
    assert [(s.id.split("/")[1], s.label) for s in found.samples][::2] == [
        ("alarm_clock", 0),
        ("backpack", 1),
        ("banana", 2),
        ("beer_bottle", 3),
        ("full_sized_towel", 4),
    ]
    assert len(found) == 10  # sponge's images left out
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
    """One backpack image coloured as a banana: 9 of the 10 overlap images are right (red frames kept: no crop)."""
    data = make_objectnet(tmp_path / "data")
    wrong = data / "objectnet-1.0" / "images" / "backpack" / image_name(list(FOLDERS).index("backpack"), 1)
    assert wrong.is_file()
    save_framed(make_image(COLOURS["banana"], size=20, seed=5), wrong)
    spec, env = colour_adapter(tmp_path, COLOURS)
    out = tmp_path / "out"
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--text-cache", "none"]
    r = cli("run", "--models", spec, "--tasks", "objectnet/test", *args, "--attribution", "none", env=env)
    assert r.returncode == 0, r.stderr
    (path,) = out.rglob("*.json")
    rec = json.loads(path.read_text())
    assert rec["task"]["n_classes"] == 5 and rec["task"]["n_samples"] == 10
    assert rec["metrics"]["acc1"] == pytest.approx(9 / 10)
    assert rec["metrics"]["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1 + 1 + 1) / 5)
