"""ImageNet-R and ImageNet-A on tiny copies laid out as the releases unpack (``imagenet-r/<wnid>/<image>``,
``imagenet-a/<wnid>/<image>`` with the release's README.txt beside): the classifier covers the official 200 classes
of each (= the other ImageNet logits masked) in the protocol's order, named with the curated ImageNet names; with
``label_space: folders`` it covers the wnid folders present (issue 18 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_imagenet_val import colour_adapter

from covar_harness.catalog.registry import UsageError
from covar_harness.data.imagenet import curated_names
from covar_harness.data.resources import named
from covar_harness.data.samples import DatasetNotFound
from helpers import make_image
from helpers import run_cli_inprocess as cli

# goldfish, great white shark, hammerhead (ImageNet-1k wnids); listed out of order on purpose
WNIDS = ["n01494475", "n01443537", "n01484850"]

# Read by hand from the authors' eval.py (hendrycks/imagenet-r imagenet_r_wnids; natural-adv-examples
# thousand_k_to_200): wnid -> (position in the official list, ImageNet-1k index, curated name).
R_KNOWN = {"n01443537": (0, 1, "goldfish"), "n01494475": (2, 4, "hammerhead shark"), "n12267677": (199, 988, "acorn")}
A_KNOWN = {"n01498041": (0, 6, "stingray"), "n01534433": (2, 13, "junco"), "n12267677": (199, 988, "acorn")}
# one colour per class: stingray and junco are ImageNet-R classes too
COLOURS = {"n01443537": (230, 30, 30), "n01494475": (30, 230, 30), "n12267677": (30, 30, 230)}
COLOURS |= {"n01498041": (230, 230, 30), "n01534433": (30, 230, 230)}


# file names as each release names its images: ImageNet-R <rendition>_<n>.jpg, ImageNet-A
# <score>_<name> _ <name>_<score>.jpg, ImageNet-Sketch sketch_<n>.JPEG, ImageNet-V2 <40 hex digits>.jpeg
RELEASE_NAMES = {
    "imagenet-r": lambda c, j: f"art_{j}.jpg",
    "imagenet-a": lambda c, j: f"0.00{c}{j}_goldfish _ goldfish_0.9.jpg",
    "sketch": lambda c, j: f"sketch_{10 * c + j}.JPEG",
}
V2_NAME = "7e5f1c0b2d9a8e4f6c3b1a0d9e8f7c6b5a4d3e2f.jpeg"


def make_shift(root: Path, name: str, wnids=WNIDS) -> Path:
    for c, wnid in enumerate(wnids):
        (root / name / wnid).mkdir(parents=True)
        for j in range(2):
            file = RELEASE_NAMES[name](c, j)
            make_image(COLOURS.get(wnid, (70 * c, 40, 200 - 70 * c)), seed=10 * c + j).save(root / name / wnid / file)
    (root / name / "README.txt").write_text("release notes\n")
    return root


def test_classes_are_the_wnid_folders_in_imagenet_order(tmp_path):
    from covar_harness_tasks.imagenet_shifts import load_imagenet_wnids

    make_shift(tmp_path, "imagenet-a")
    found = load_imagenet_wnids({"path": str(tmp_path / "imagenet-a")}, tmp_path)
    order = sorted(WNIDS)
    index = [named("reference", "imagenet1k_wnids").index(w) for w in order]
    assert index == sorted(index)  # labels follow ImageNet index order
    assert (
        found.classnames == [curated_names()[i] for i in index] == ["goldfish", "great white shark", "hammerhead shark"]
    )
    assert len(found) == 6 and [s.label for s in found.samples] == [0, 0, 1, 1, 2, 2]
    assert all(s.meta["wnid"] == order[s.label] and s.id.startswith(order[s.label]) for s in found.samples)
    (tmp_path / "imagenet-a" / "n99999999").mkdir()
    with pytest.raises(UsageError, match="names no ImageNet-1k class"):
        load_imagenet_wnids({"path": str(tmp_path / "imagenet-a")}, tmp_path)
    with pytest.raises(DatasetNotFound, match="imagenet-r.tar"):
        load_imagenet_wnids({"path": str(tmp_path / "imagenet-r")}, tmp_path)


def test_shipped_lists_are_the_official_200_imagenet_classes():
    wnids = named("reference", "imagenet1k_wnids")
    for name, known in (("imagenet_r_wnids", R_KNOWN), ("imagenet_a_wnids", A_KNOWN)):
        shipped = named("reference", name)
        assert "hendrycks" in shipped["source"] and "commit" in shipped["source"]
        assert "wise-ft" in shipped["cross_check"]
        official = shipped["wnids"]
        assert len(official) == len(set(official)) == 200 and set(official) <= set(wnids)
        index = [wnids.index(w) for w in official]
        assert index == sorted(index)  # the protocol's order: the mask over ImageNet index order
        for wnid, (position, imagenet_index, curated) in known.items():
            assert official.index(wnid) == position and index[position] == imagenet_index
            assert curated_names()[imagenet_index] == curated
    assert "n01443537" not in named("reference", "imagenet_a_wnids")["wnids"]  # goldfish is R's, not A's


def test_official_label_space_is_the_200_classes_in_order(tmp_path):
    from covar_harness_tasks.imagenet_shifts import load_imagenet_wnids, official_wnids

    wnids = named("reference", "imagenet1k_wnids")
    root = make_shift(tmp_path, "imagenet-r", list(R_KNOWN))
    found = load_imagenet_wnids({"path": str(root / "imagenet-r"), "label_space": "imagenet-r"}, tmp_path)
    assert len(found.classnames) == 200
    assert found.classnames == [curated_names()[wnids.index(w)] for w in official_wnids("imagenet-r")]
    assert [(s.meta["wnid"], s.label) for s in found.samples] == [
        (w, R_KNOWN[w][0]) for w in ("n01443537", "n01494475", "n12267677") for _ in range(2)
    ]
    assert "200 classes (imagenet-r), 3 with images" in found.description
    (root / "imagenet-r" / "n01440764").mkdir()  # tench: an ImageNet class, not an ImageNet-R one
    with pytest.raises(UsageError, match="folder n01440764 is not one of the 200 imagenet-r classes") as err:
        load_imagenet_wnids({"path": str(root / "imagenet-r"), "label_space": "imagenet-r"}, tmp_path)
    assert "\n" not in str(err.value)
    folders = load_imagenet_wnids({"path": str(root / "imagenet-r"), "label_space": "folders"}, tmp_path)
    assert len(folders.classnames) == 4 and folders.classnames[0] == "tench"  # folders: any ImageNet folder counts


def test_tasks_name_their_protocol_and_label_space():
    from covar_harness.catalog.plugin_manager import load_catalog

    tasks = {c.task: c for c in load_catalog().tasks}
    for name in ("imagenet-r/test", "imagenet-a/test"):
        cfg, short = tasks[name], name.split("/")[0]
        assert cfg.dataset == {"format": "imagenet_wnids", "path": short, "label_space": short}
        assert cfg.version == 2 and cfg.classnames is None
        assert cfg.metadata["label_space"].startswith(f"{short} (the official 200 wnids")
        assert "hendrycks" in cfg.metadata["protocol"]


def test_run_scores_over_the_200_classes_with_hand_computed_accuracy(tmp_path):
    """Mean-colour adapter: an image is its colour, a class name's prompts are its colour, the other 197 names
    are orthogonal to every image. One goldfish image looks like a hammerhead, one acorn like a goldfish."""
    from covar_harness_tasks.imagenet_shifts import official_wnids

    data = make_shift(tmp_path / "data", "imagenet-r", list(R_KNOWN))
    make_shift(data, "imagenet-a", list(A_KNOWN))
    r_dir = data / "imagenet-r"
    make_image(COLOURS["n01494475"], seed=99).save(r_dir / "n01443537" / "art_1.jpg")
    make_image(COLOURS["n01443537"], seed=98).save(r_dir / "n12267677" / "art_0.jpg")
    names = {curated for _, _, curated in (*R_KNOWN.values(), *A_KNOWN.values())}
    wnids = named("reference", "imagenet1k_wnids")
    listed = {w for short in ("imagenet-r", "imagenet-a") for w in official_wnids(short)}
    every = {curated_names()[wnids.index(w)] for w in listed}  # the classifier's names (acorn squash is not one)
    assert all(other == n or n not in other for n in names for other in every)  # a prompt names one colour only
    colours = {R_KNOWN.get(w, A_KNOWN.get(w, (0, 0, "")))[2]: rgb for w, rgb in COLOURS.items()}
    spec, env = colour_adapter(tmp_path, colours)
    out = tmp_path / "out"
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--text-cache", "none"]
    tasks = "imagenet-r/test,imagenet-a/test"
    r = cli("run", "--models", spec, "--tasks", tasks, *args, "--attribution", "none", "--log-samples", env=env)
    assert r.returncode == 0, r.stderr
    records = {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text()) for p in out.rglob("*.json")}
    # by hand: R = goldfish (ok, looks hammerhead), hammerhead x2, acorn (looks goldfish, ok); A = all 6 right
    expected = {"imagenet-r": ([0, 2, 2, 2, 0, 199], 4 / 6), "imagenet-a": ([0, 0, 2, 2, 199, 199], 1.0)}
    for short, (preds, acc) in expected.items():
        rec = records[f"{short}/test"]
        assert rec["task"]["n_classes"] == 200 and rec["task"]["n_samples"] == 6 and rec["task"]["version"] == 2
        assert "3 with images" in rec["task"]["dataset"]
        rows = [json.loads(x) for x in next(out.rglob(f"*{short}*.samples.jsonl")).read_text().splitlines()]
        assert [row["pred"] for row in rows] == preds
        assert rec["metrics"]["acc1"] == pytest.approx(acc)


def test_v2_index_folders_and_sketch_over_all_1000_classes(tmp_path):
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness_tasks.imagenet_shifts import load_imagenet_wnids

    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    for index in ("0", "1", "10", "2"):  # as strings "10" sorts before "2": labels must come from the integers
        (v2 / index).mkdir(parents=True)
        make_image((10, 20, 30), seed=int(index)).save(v2 / index / V2_NAME)
    make_shift(tmp_path, "sketch")
    tasks = {c.task: c for c in load_catalog().tasks}
    found = load_imagenet_wnids(tasks["imagenet-v2/matched-frequency"].dataset | {"path": str(v2)}, tmp_path)
    assert len(found.classnames) == 1000 and found.classnames[10] == curated_names()[10]
    assert [(s.id, s.label) for s in found.samples] == [(f"{i}/{V2_NAME}", i) for i in (0, 1, 2, 10)]
    assert found.samples[0].meta["wnid"] == "n01440764"
    sketch_cfg = tasks["imagenet-sketch/test"].dataset | {"path": str(tmp_path / "sketch")}
    sketch = load_imagenet_wnids(sketch_cfg, tmp_path)
    wnids = named("reference", "imagenet1k_wnids")
    assert len(sketch.classnames) == 1000 and {s.label for s in sketch.samples} == {wnids.index(w) for w in WNIDS}
    with pytest.raises(UsageError, match="label_space"):
        load_imagenet_wnids({**sketch_cfg, "label_space": "imagenet21k"}, tmp_path)
    where = cli("data", "where", "imagenet-v2/matched-frequency", "--data-dir", str(tmp_path / "elsewhere"))
    assert "missing" in where.stdout and "ImageNetV2" in where.stdout
