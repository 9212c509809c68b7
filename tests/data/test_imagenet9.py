"""The Backgrounds Challenge (ImageNet-9) tasks on tiny copies laid out and named exactly as the test release
unpacks (``bg_challenge/<variation>/val/<NN_class>/``, originals ``<wnid>_<5 digits>.JPEG``, mixed files
``fg_<stem>_bg_<stem>.JPEG``, masks ``fg_mask/val/<NN_class>/<stem>.npy``): the reference 1000-way protocol checked
by hand, the 9-way variant, the masks of the mixed variations, and the leaderboard's BG-Gap (issues 18, 24)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from covar_harness.data.imagenet import curated_names
from covar_harness.data.resources import named
from covar_harness.leaderboard.peer_tables import IMAGENET9_VARIANTS
from covar_harness.leaderboard.tables import build_tables
from covar_harness.results import validation
from helpers import make_image
from helpers import run_cli_inprocess as cli

FOLDERS = [
    "00_dog",
    "01_bird",
    "02_wheeled vehicle",
    "03_reptile",
    "04_carnivore",
    "05_insect",
    "06_musical instrument",
    "07_primate",
    "08_fish",
]
IN_TO_IN9 = named("reference", "in_to_in9")["in_to_in9"]
WNIDS = named("reference", "imagenet1k_wnids")
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def stem(c: int, j: int) -> str:
    """An original image's stem as the release names it: the wnid of an ImageNet class of IN-9 class c, _, 5 digits."""
    return f"{WNIDS[IN_TO_IN9.index(c)]}_{j:05d}"


def make_variation(root: Path, variation: str, colours: dict[int, list]) -> Path:
    """``bg_challenge/<variation>/val/<NN_class>/``: image j of class c in colour ``colours[c][j]`` (a class not in
    ``colours``: one green image); ``mixed_*`` files named ``fg_<stem>_bg_<stem>.JPEG`` like the release's."""
    for c, folder in enumerate(FOLDERS):
        where = root / "bg_challenge" / variation / "val" / folder
        where.mkdir(parents=True)
        for j, colour in enumerate(colours.get(c, [GREEN])):
            name = stem(c, j)
            if variation.startswith("mixed"):
                name = f"fg_{name}_bg_{stem((c + 1) % 9, 50 + j)}"
            make_image(colour, seed=100 * c + j).save(where / f"{name}.JPEG")
    return root


def make_fg_masks(root: Path, per_class: int = 1) -> Path:
    """``bg_challenge/fg_mask/val/<NN_class>/<stem>.npy`` as the release ships them: a 2-D 0/1 array per original
    image, here a square of (10 + c)^2 object pixels in class c."""
    for c, folder in enumerate(FOLDERS):
        (root / "bg_challenge" / "fg_mask" / "val" / folder).mkdir(parents=True)
        for j in range(per_class):
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[5 : 15 + c, 5 : 15 + c] = 1
            np.save(root / "bg_challenge" / "fg_mask" / "val" / folder / f"{stem(c, j)}.npy", mask)
    return root


# An image is its mean colour; a prompt naming one of three ImageNet classes points at that colour, every other
# prompt at a fourth direction. So the 1000-way top-1 is known by hand: red -> Chihuahua (IN-9 dog), blue ->
# rooster (IN-9 bird), green -> axolotl (an ImageNet class in_to_in9 maps to -1: always wrong).
COLOUR_ADAPTER = """
    import torch
    import torchvision.transforms.functional as TF

    KEYS = {KEYS!r}
    LOG = {LOG!r}

    class ThreeClasses:
        name = "three-classes"
        family = "toy"

        def preprocess(self, image):
            return TF.to_tensor(image.convert("RGB").resize((8, 8)))

        def encode_images(self, pixels):
            rgb = pixels.mean(dim=(2, 3))
            return torch.cat([torch.full_like(rgb[:, :1], 0.05), rgb], dim=1)

        def encode_texts(self, texts):
            with open(LOG, "a") as fh:
                print(len(texts), file=fh)
            rows = [[0.0, 0.0, 0.0, 0.0] for _ in texts]
            for row, text in zip(rows, texts):
                hit = [i for i, key in enumerate(KEYS) if key in text]
                row[1 + hit[0] if hit else 0] = 1.0
            return torch.tensor(rows)

    def build(device="cpu", precision="fp32"):
        return ThreeClasses()
"""
KEYS = ["Chihuahua", "axolotl", "rooster"]  # red, green, blue: channels 1, 2, 3


def colour_adapter(tmp_path: Path) -> tuple[str, Path]:
    names = curated_names()
    for key, in9 in zip(KEYS, (0, -1, 1)):  # each key names exactly one ImageNet class, of the IN-9 class said
        (index,) = [i for i, n in enumerate(names) if key in n]
        assert IN_TO_IN9[index] == in9
    log = tmp_path / "texts.log"
    source = textwrap.dedent(COLOUR_ADAPTER).format(KEYS=KEYS, LOG=str(log))
    (tmp_path / "three_classes.py").write_text(source)
    return f"custom:{tmp_path / 'three_classes.py'}:build", log


def run(model: str, tasks: str, data: Path, out: Path, *extra: str) -> dict[str, dict]:
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--text-cache", "none"]
    r = cli("run", "--models", model, "--tasks", tasks, *args, *extra)
    assert r.returncode == 0, r.stderr
    return {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text()) for p in out.rglob("*.json")}


def test_tasks_cover_every_variation_and_name_their_protocol():
    from covar_harness.catalog.plugin_manager import load_catalog

    tasks = {c.task: c for c in load_catalog().tasks if c.task.startswith("imagenet9")}
    ref = {v: tasks[f"imagenet9/{v}"] for v in IMAGENET9_VARIANTS}
    nine = {v: tasks[f"imagenet9-9way/{v}"] for v in IMAGENET9_VARIANTS}
    assert len(tasks) == 2 * len(IMAGENET9_VARIANTS)
    assert ref["mixed_rand"].dataset == {
        "format": "imagenet9",
        "path": "bg_challenge/mixed_rand",
        "split": "val",
        "classifier": "imagenet1k",
        "fg_mask": True,
    }
    assert nine["mixed_rand"].dataset["classifier"] == "superclasses" and ref["mixed_rand"].version == 2
    assert "fg_mask" not in ref["no_fg"].dataset  # no object left: no masks
    assert (
        "in_to_in9.json" in ref["original"].metadata["protocol"]
        and "[open]" not in ref["original"].metadata["protocol"]
    )
    assert "[open] Not the published protocol" in nine["original"].metadata["protocol"]
    assert ref["original"].templates == "openai_imagenet"  # the classifier of imagenet-1k/val


def test_the_shipped_mapping_is_the_release_s():
    """in_to_in9.json: 1000 entries, 630 unmapped (-1), and the class sizes of the reference file."""
    mapping = named("reference", "in_to_in9")
    assert len(IN_TO_IN9) == 1000 and IN_TO_IN9.count(-1) == 630
    assert [IN_TO_IN9.count(c) for c in range(9)] == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    assert (IN_TO_IN9[0], IN_TO_IN9[151], IN_TO_IN9[25]) == (8, 0, -1)  # tench: fish; Chihuahua: dog; axolotl: none
    assert mapping["counts"]["-1"] == 630 and "MadryLab/backgrounds_challenge" in mapping["source"]


def test_reference_protocol_by_hand_and_the_bg_gap(tmp_path):
    """1000-way top-1 mapped through in_to_in9: a green image's top-1 (axolotl) maps to -1 and is wrong, a red
    bird (Chihuahua) is a dog. mixed_same 4 of 11 right, mixed_rand 2 of 11: BG-Gap 18.2 points, by hand."""
    model, log = colour_adapter(tmp_path)
    data = tmp_path / "data"
    make_variation(data, "mixed_same", {0: [RED, RED], 1: [BLUE, BLUE]})
    make_variation(data, "mixed_rand", {0: [RED, GREEN], 1: [BLUE, RED]})
    records = run(model, "imagenet9/mixed_same,imagenet9/mixed_rand", data, tmp_path / "out", "--log-samples")
    same, rand = records["imagenet9/mixed_same"], records["imagenet9/mixed_rand"]
    assert same["metrics"]["acc1"] == pytest.approx(4 / 11) and rand["metrics"]["acc1"] == pytest.approx(2 / 11)
    assert same["task"]["n_classes"] == 9 and same["task"]["class_map"]["unmapped_classes"] == 630
    assert same["task"]["class_map"]["other_index"] == 9 and validation.validate(same) == []
    assert sum(int(n) for n in log.read_text().split()) == 80 * 1000  # one 1000-way classifier for both tasks
    (table,) = [t for t in build_tables(list(records.values())) if t.title.startswith("imagenet9:")]
    assert table.columns == ["Model", "mixed_same", "mixed_rand", "BG-Gap"]
    assert table.rows[0][-1] == pytest.approx(18.2) and "in_to_in9.json" in table.caption
    rand_log = [
        json.loads(line)
        for p in (tmp_path / "out").rglob("*.jsonl")
        if "mixed_rand" in p.name
        for line in p.read_text().splitlines()
    ]
    assert len(rand_log) == 11
    (green_dog,) = [row for row in rand_log if row["label"] == 0 and not row["correct"]]
    assert green_dog["pred"] == 9  # the bucket of the 630 unmapped ImageNet classes
    where = cli("data", "where", "imagenet9/original", "--data-dir", str(data))
    assert "imagenet9/original: missing" in where.stdout  # only two variations in this copy


def test_the_9way_variant_and_the_classifier_shared_with_imagenet_1k(tmp_path):
    """imagenet9-9way builds its own 9-name classifier and has no class map; imagenet9/original and imagenet-1k/val
    share one 1000-way classifier, built once (80 templates x 1000 names encoded once)."""
    model, log = colour_adapter(tmp_path)
    data = make_variation(tmp_path / "data", "original", {0: [RED, GREEN], 1: [BLUE]})
    (data / "imagenet" / "val" / WNIDS[151]).mkdir(parents=True)  # Chihuahua, class folder layout
    make_image(RED).save(data / "imagenet" / "val" / WNIDS[151] / "ILSVRC2012_val_00000001.JPEG")
    records = run(model, "imagenet9/original,imagenet9-9way/original,imagenet-1k/val", data, tmp_path / "out")
    assert records["imagenet9/original"]["metrics"]["acc1"] == pytest.approx(2 / 10)  # red dog, blue bird
    assert records["imagenet-1k/val"]["metrics"]["acc1"] == 1.0
    nine = records["imagenet9-9way/original"]
    assert "class_map" not in nine["task"] and nine["task"]["n_classes"] == 9 and nine["task"]["n_samples"] == 10
    assert sum(int(n) for n in log.read_text().split()) == 9 * 80 + 1000 * 80


def test_folders_out_of_the_release_order_are_refused_for_the_1000_way_protocol(tmp_path):
    from covar_harness.catalog.registry import UsageError
    from covar_harness_tasks.imagenet9 import load_imagenet9

    data = make_variation(tmp_path / "data", "original", {})
    (data / "bg_challenge" / "original" / "val" / "08_fish").rename(
        data / "bg_challenge" / "original" / "val" / "09_fish"
    )
    ds = {"path": str(data / "bg_challenge" / "original"), "split": "val"}
    with pytest.raises(UsageError, match="09 fish"):
        load_imagenet9(ds, data)
    assert load_imagenet9({**ds, "classifier": "superclasses"}, data).class_map is None
    with pytest.raises(UsageError, match="dataset.classifier"):
        load_imagenet9({**ds, "classifier": "9way"}, data)


def test_mixed_files_get_their_foreground_s_mask_and_bg_er(openclip_dir, tmp_path):
    """A mixed file ``fg_<stem>_bg_<stem>.JPEG`` gets the mask of ``<stem>``; imagenet9/mixed_same (the reference
    protocol, 1000-way) then has BG-Er from the dataset masks; a variation whose names match no mask says so."""
    from covar_harness_tasks.imagenet9 import load_imagenet9

    data = make_fg_masks(make_variation(tmp_path / "data", "mixed_same", {c: [GREEN, RED] for c in range(9)}))
    make_variation(data, "only_fg", {c: [BLUE] for c in range(9)})
    ds = {"path": str(data / "bg_challenge" / "mixed_same"), "split": "val", "fg_mask": True}
    found = load_imagenet9(ds, data)
    with_mask = [s for s in found.samples if s.meta.get("mask")]
    assert len(with_mask) == 9 and all(Path(s.id).name.startswith(f"fg_{stem(s.label, 0)}_bg_") for s in with_mask)
    assert with_mask[0].meta["mask"] == f"../../fg_mask/val/00_dog/{stem(0, 0)}.npy"
    for s in with_mask:  # white pixels = the array's ones, (10 + class)^2
        mask = np.asarray(found.open_mask(found.samples.index(s)))
        assert mask.shape == (40, 40) and int((mask == 255).sum()) == (10 + s.label) ** 2
    assert not load_imagenet9({**ds, "fg_mask": False}, data).has_masks
    with pytest.raises(Exception, match="fg_mask"):
        load_imagenet9({**ds, "fg_mask": "yes"}, data)
    for folder in (data / "bg_challenge" / "fg_mask" / "val").iterdir():  # only_fg: stems _00000; keep masks _00001
        for f in folder.iterdir():
            f.rename(f.with_name(f.name.replace("_00000", "_00001")))
    records = run(
        _fast_text(openclip_dir, tmp_path),
        "imagenet9/mixed_same,imagenet9/only_fg",
        data,
        tmp_path / "out",
        "--null-draws",
        "2",
    )
    rec = records["imagenet9/mixed_same"]
    assert rec["config"]["attribution"]["status"] == "ran"
    assert rec["config"]["diagnosis"]["segmenter"]["name"] == "dataset"
    assert "bg_er" in rec["metrics"] and "fg_driven_rate" in rec["metrics"] and rec["task"]["class_map"]
    assert not any("no foreground masks" in n for n in rec["notes"])
    only_fg = records["imagenet9/only_fg"]
    assert any("no foreground masks: none of the 9 images matched" in n for n in only_fg["notes"])
    assert "bg_er" not in only_fg["metrics"]


# The tiny open_clip model with a text tower replaced by a hash: the 80,000 prompts of the 1000-way classifier take
# minutes through even a tiny transformer on a shared CPU, and nothing here depends on what the prompts mean.
FAST_TEXT = """
    import zlib

    import torch
    import torch.nn.functional as F

    from covar_harness.models.specs import load_model

    def build(device="cpu", precision="fp32"):
        adapter = load_model({MODEL!r}, device=device, precision=precision)
        dim = adapter.encode_images(torch.zeros(1, 3, 32, 32)).shape[-1]

        def encode_texts(texts):
            rows = [torch.Generator().manual_seed(zlib.crc32(t.encode())) for t in texts]
            return F.normalize(torch.stack([torch.randn(dim, generator=g) for g in rows]), dim=-1)

        adapter.encode_texts = encode_texts
        return adapter
"""


def _fast_text(openclip_dir: Path, tmp_path: Path) -> str:
    source = textwrap.dedent(FAST_TEXT).format(MODEL=f"openclip:local-dir:{openclip_dir}")
    (tmp_path / "fast_text.py").write_text(source)
    return f"custom:{tmp_path / 'fast_text.py'}:build"


def test_background_reliance_cells_carry_intervals_by_hand():
    """BG-Gap 90 - 75 with intervals of half-width 3 and 4 points: the combined half-width is sqrt(3^2 + 4^2) = 5;
    the Waterbirds gap keeps its own interval; a measure without intervals gets no CI column."""
    from covar_harness.leaderboard.peer_tables import background_reliance_tables

    def rec(task: str, n: int, metrics: dict, intervals: dict) -> dict:
        task_rec = {"name": task, "version": 1, "n_samples": n, "headline": "acc1", "tags": []}
        return {"model": {"spec": "m"}, "task": task_rec, "metrics": metrics, "intervals": intervals, "config": {}}

    records = [
        rec("imagenet9/mixed_same", 450, {"acc1": 0.90}, {"acc1": [0.87, 0.93]}),
        rec("imagenet9/mixed_rand", 450, {"acc1": 0.75}, {"acc1": [0.71, 0.79]}),
        rec("waterbirds/test", 5794, {"acc1": 0.85, "group_acc_gap": 0.25}, {"group_acc_gap": [0.2, 0.3]}),
        rec("covar-shapes/original", 40, {"acc1": 0.9}, {}),
        rec("covar-shapes/bg_varied", 40, {"acc1": 0.6}, {"acc1": [0.5, 0.7]}),  # one side only: no interval
    ]
    (table,) = background_reliance_tables(records)
    assert table.columns == [
        "Model",
        *("COVAR-Shapes bg_varied drop", "COVAR-Shapes bg_varied drop n"),
        *("ImageNet-9 BG-Gap", "ImageNet-9 BG-Gap 95% CI", "ImageNet-9 BG-Gap n"),
        *("Waterbirds worst-group gap", "Waterbirds worst-group gap 95% CI", "Waterbirds worst-group gap n"),
    ]
    assert table.rows == [["m", pytest.approx(30.0), 40, 15.0, "[10.0, 20.0]", 450, 25.0, "[20.0, 30.0]", 5794]]
    assert "sqrt(se_a^2 + se_b^2)" in (table.caption or "")
