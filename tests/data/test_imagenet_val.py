"""ImageNet-1k validation (``imagenet-1k/val``) on tiny copies in the three layouts users have: class folders
(``val/<wnid>/``), the flat ``ILSVRC2012_img_val.tar`` files with the devkit's ground truth and ``meta.mat`` (whose
ILSVRC2012_IDs are NOT the sorted-wnid order), and the Kaggle ``LOC_val_solution.csv`` (issue 18 item 1)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from covar_harness.catalog.registry import UsageError
from covar_harness.data.imagenet import curated_names
from covar_harness.data.resources import named
from covar_harness.data.samples import DatasetNotFound
from helpers import make_image
from helpers import run_cli_inprocess as cli

# The devkit's first three ILSVRC2012_IDs (1 kit fox, 2 English setter, 3 Siberian husky): far from sorted order.
DEVKIT_IDS = {1: "n02119789", 2: "n02100735", 3: "n02110185"}
COLOURS = {"n02119789": (230, 30, 30), "n02100735": (30, 230, 30), "n02110185": (30, 30, 230)}

# An adapter whose predictions are known by hand: an image is its mean colour, a prompt naming a class in
# COLOURS is that colour, any other prompt is orthogonal to every image (a fourth dimension), so it never wins.
ADAPTER = textwrap.dedent("""
    import json, os
    import torch
    import torchvision.transforms.functional as TF

    COLOURS = json.loads(os.environ["TOY_COLOURS"])

    class MeanColour:
        name = "mean-colour"

        def preprocess(self, image):
            return TF.to_tensor(image.convert("RGB").resize((8, 8)))

        def encode_images(self, pixels):
            rgb = pixels.mean(dim=(2, 3))
            return torch.cat([rgb, torch.zeros(len(rgb), 1)], dim=1)

        def encode_texts(self, texts):
            out = [next((v + [0.0] for k, v in COLOURS.items() if k in t), [0.0, 0.0, 0.0, 1.0]) for t in texts]
            return torch.tensor(out)

    def build():
        return MeanColour()
""")


def colour_adapter(tmp_path: Path, colours: dict[str, tuple[int, int, int]]) -> tuple[str, dict[str, str]]:
    """(model spec, env) of the toy adapter, class name -> RGB colour (0-255)."""
    path = tmp_path / "toy_adapter.py"
    path.write_text(ADAPTER)
    scaled = {name: [c / 255 for c in rgb] for name, rgb in colours.items()}
    return f"custom:{path}:build", {"TOY_COLOURS": json.dumps(scaled)}


def index_of(wnid: str) -> int:
    return list(named("reference", "imagenet1k_wnids")).index(wnid)


def save_meta_mat(path: Path, leaves: dict[int, str]) -> None:
    """A devkit-shaped ``meta.mat``: a ``synsets`` struct array with the devkit's fields, plus one inner synset."""
    from scipy.io import savemat

    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    rows = [(i, w, w, "", 0, np.zeros(0), 0, 1300) for i, w in leaves.items()]
    rows.append((1001, "n00001740", "entity", "", 2, [1, 2], 18, 0))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        for f, value in zip(fields, row):
            synsets[r, 0][f] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"synsets": synsets})


def flat_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def make_image_tar(path: Path, truth=(3, 1, 2, 1)) -> Path:
    """``ILSVRC2012_img_val.tar`` as released: the images as flat members, no folder inside."""
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for n, ident in enumerate(truth, start=1):
            buf = io.BytesIO()
            make_image(COLOURS[DEVKIT_IDS[ident]], seed=n).save(buf, format="JPEG")
            info = tarfile.TarInfo(flat_name(n))
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def make_devkit(root: Path, truth=(3, 1, 2, 1), into: str = "val") -> Path:
    """Val images 1-4 unpacked from the released tar as documented (``tar -xf ILSVRC2012_img_val.tar -C val``;
    ``into=""``: straight into the root, as plain ``tar -xf`` puts them), with their devkit ground truth (1-based
    ILSVRC2012_IDs) and meta.mat."""
    import tarfile

    with tarfile.open(make_image_tar(root.parent / "downloads" / "ILSVRC2012_img_val.tar", truth)) as tar:
        tar.extractall(root / into, filter="data")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in truth))
    save_meta_mat(data / "meta.mat", DEVKIT_IDS)
    return root


def make_class_folders(root: Path) -> Path:
    for c, wnid in enumerate(DEVKIT_IDS.values()):
        (root / "val" / wnid).mkdir(parents=True)
        for j in range(2):
            make_image(COLOURS[wnid], seed=10 * c + j).save(root / "val" / wnid / flat_name(10 * c + j + 1))
    return root


def load(root: Path):
    from covar_harness_tasks.imagenet_val import load_imagenet_val

    return load_imagenet_val({"path": str(root)}, root.parent)


def test_devkit_labels_go_through_meta_mat_not_sorted_wnids(tmp_path):
    found = load(make_devkit(tmp_path / "imagenet"))
    assert "devkit layout" in found.description and len(found.classnames) == 1000
    expected = [index_of(DEVKIT_IDS[i]) for i in (3, 1, 2, 1)]  # oracle: the wnid's position in the sorted list
    assert [s.label for s in found.samples] == expected == [250, 278, 212, 278]
    assert [s.id for s in found.samples] == [f"val/{flat_name(n)}" for n in range(1, 5)]
    assert all(s.label != ident - 1 for s, ident in zip(found.samples, (3, 1, 2, 1)))  # not the raw ID order
    (tmp_path / "imagenet" / "val" / flat_name(9)).write_bytes(b"x")  # an image the ground truth does not cover
    with pytest.raises(UsageError, match="no valid ILSVRC2012_ID"):
        load(tmp_path / "imagenet")


def test_class_folders_and_kaggle_layouts(tmp_path):
    folders = load(make_class_folders(tmp_path / "a"))
    assert "class_folders layout" in folders.description
    assert sorted({s.label for s in folders.samples}) == sorted(index_of(w) for w in DEVKIT_IDS.values())
    assert all(
        s.id.startswith(f"val/{s.meta['wnid']}/") and s.label == index_of(s.meta["wnid"]) for s in folders.samples
    )
    kaggle = tmp_path / "k"
    images = kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    images.mkdir(parents=True)
    rows = {1: "n02110185 10 20 30 40 n02110185 1 2 3 4", 2: "n02119789 5 6 7 8"}
    for n in rows:
        make_image((1, 2, 3), seed=n).save(images / flat_name(n))
    (kaggle / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n" + "".join(f"{flat_name(n)[:-5]},{p}\n" for n, p in reversed(rows.items()))
    )
    found = load(kaggle)
    assert "kaggle layout" in found.description
    assert [(s.id, s.label) for s in found.samples] == [
        (f"ILSVRC/Data/CLS-LOC/val/{flat_name(1)}", 250),
        (f"ILSVRC/Data/CLS-LOC/val/{flat_name(2)}", 278),
    ]


def test_the_tar_unpacked_into_the_root_is_refused_with_the_fix(tmp_path):
    """The image tar has no folder: unpacked plainly, its files lie beside the devkit, not in val/."""
    root = make_devkit(tmp_path / "imagenet", into="")
    assert (root / flat_name(1)).is_file() and not (root / "val").exists()
    with pytest.raises(DatasetNotFound, match="lie flat in it") as err:
        load(root)
    assert "tar -xf ILSVRC2012_img_val.tar -C val" in str(err.value) and "\n" not in str(err.value)


def test_missing_data_names_the_layouts_and_where_to_get_them(tmp_path):
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DatasetNotFound, match="image-net.org") as err:
        load(tmp_path / "imagenet")
    assert "LOC_val_solution.csv" in str(err.value) and "meta.mat" in str(err.value)
    assert f"into {tmp_path / 'imagenet'}/val" in str(err.value)  # the image tar has no folder inside
    where = cli("data", "where", "imagenet-1k/val", "--data-dir", str(tmp_path / "elsewhere"))
    assert "imagenet-1k/val: missing" in where.stdout and "image-net.org" in where.stdout


def test_run_1000_way_with_a_hand_computed_accuracy(tmp_path):
    """A flat-layout copy where one image of class ID 1 is coloured as ID 2: acc1 is 3/4 by hand."""
    root = make_devkit(tmp_path / "data" / "imagenet")
    make_image(COLOURS[DEVKIT_IDS[2]], seed=99).save(root / "val" / flat_name(4))  # truth 1 (kit fox), looks 2
    names = curated_names()
    spec, env = colour_adapter(tmp_path, {names[index_of(w)]: COLOURS[w] for w in DEVKIT_IDS.values()})
    out = tmp_path / "out"
    args = ["--data-dir", str(tmp_path / "data"), "--output-dir", str(out), "--workers", "0"]
    r = cli(
        "run",
        "--models",
        spec,
        "--tasks",
        "imagenet-1k/val",
        *args,
        "--attribution",
        "none",
        "--text-cache",
        "none",
        "--log-samples",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    (path,) = out.rglob("*.json")
    rec = json.loads(path.read_text())
    assert rec["task"]["n_classes"] == 1000 and rec["task"]["n_samples"] == 4
    assert len(rec["config"]["templates"]) == 80
    assert rec["metrics"]["acc1"] == pytest.approx(3 / 4)
    rows = [json.loads(line) for line in next(out.rglob("*.samples.jsonl")).read_text().splitlines()]
    assert [row["pred"] for row in rows] == [250, 278, 212, 212]
