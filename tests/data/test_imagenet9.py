"""The Backgrounds Challenge (ImageNet-9) tasks on a tiny copy laid out exactly as the release unpacks
(``bg_challenge/<variation>/val/<NN_class>/``), and the leaderboard's BG-Gap (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covar_harness.leaderboard.peer_tables import IMAGENET9_VARIANTS
from covar_harness.leaderboard.tables import build_tables
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


def make_fg_masks(root: Path, per_class: int = 2) -> Path:
    """``bg_challenge/fg_mask/val/<NN_class>/<name>.npy`` as the release ships them: a 2-D 0/1 array per original
    image, here a square of (10 + c)^2 object pixels in class c."""
    for c, folder in enumerate(FOLDERS):
        (root / "bg_challenge" / "fg_mask" / "val" / folder).mkdir(parents=True)
        for j in range(per_class):
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[5 : 15 + c, 5 : 15 + c] = 1
            np.save(root / "bg_challenge" / "fg_mask" / "val" / folder / f"n{j}.npy", mask)
    return root


def make_bg_challenge(root: Path, variations=("mixed_same", "mixed_rand")) -> Path:
    for v, variation in enumerate(variations):
        for c, folder in enumerate(FOLDERS):
            (root / "bg_challenge" / variation / "val" / folder).mkdir(parents=True)
            for j in range(2):
                colour = (20 * c, 255 - 20 * c, 60 * v)
                make_image(colour, seed=100 * c + j).save(
                    root / "bg_challenge" / variation / "val" / folder / f"n{j}.JPEG"
                )
    return root


def test_tasks_cover_every_variation_and_name_their_protocol():
    from covar_harness.catalog.plugin_manager import load_catalog

    tasks = {c.task: c for c in load_catalog().tasks if c.task.startswith("imagenet9/")}
    assert set(tasks) == {f"imagenet9/{v}" for v in IMAGENET9_VARIANTS}
    cfg = tasks["imagenet9/mixed_rand"]
    assert cfg.dataset == {"format": "imagenet9", "path": "bg_challenge/mixed_rand", "split": "val", "fg_mask": True}
    assert "fg_mask" not in tasks["imagenet9/no_fg"].dataset  # no object left: no masks
    assert len(cfg.classnames) == 9 and "backgrounds_challenge" in cfg.metadata["protocol"]


def test_run_on_the_release_layout_and_the_bg_gap(openclip_dir, tmp_path):
    data = make_bg_challenge(tmp_path / "data")
    out = tmp_path / "out"
    r = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "imagenet9/mixed_same,imagenet9/mixed_rand",
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--attribution",
        "none",
    )
    assert r.returncode == 0, r.stderr
    records = {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text()) for p in out.rglob("*.json")}
    same, rand = records["imagenet9/mixed_same"], records["imagenet9/mixed_rand"]
    assert same["task"]["n_samples"] == 18 and same["task"]["n_classes"] == 9
    assert same["task"]["label_mapping"] == "positional"  # NN_name folders, names in label order
    (table,) = [t for t in build_tables(list(records.values())) if t.title.startswith("imagenet9")]
    assert table.columns == ["Model", "mixed_same", "mixed_rand", "BG-Gap"]
    gap = round(100 * (same["metrics"]["acc1"] - rand["metrics"]["acc1"]), 1)
    assert table.rows[0][-1] == gap and "BG-Gap = mixed_same - mixed_rand" in table.caption
    md = cli("leaderboard", str(out), "--format", "markdown")
    assert "BG-Gap" in md.stdout
    where = cli("data", "where", "imagenet9/original", "--data-dir", str(data))
    assert "imagenet9/original: missing" in where.stdout  # only two variations in this copy


def test_release_masks_feed_the_diagnosis(openclip_dir, tmp_path):
    from covar_harness_tasks.imagenet9 import load_imagenet9

    data = make_fg_masks(make_bg_challenge(tmp_path / "data", ("original", "no_fg")), per_class=1)
    ds = {"path": str(data / "bg_challenge" / "original"), "split": "val", "fg_mask": True}
    found = load_imagenet9(ds, data)
    with_mask = [i for i, s in enumerate(found.samples) if s.meta.get("mask")]
    assert len(with_mask) == 9 and all(found.samples[i].id.endswith("n0.JPEG") for i in with_mask)
    assert found.samples[0].meta["mask"] == "../../fg_mask/val/00_dog/n0.npy"
    for i in with_mask:  # white pixels = the array's ones, (10 + class)^2
        mask = np.asarray(found.open_mask(i))
        assert mask.shape == (40, 40) and int((mask == 255).sum()) == (10 + found.samples[i].label) ** 2
    assert found.open_mask(1) is None  # n1.JPEG has no mask file
    assert not load_imagenet9({**ds, "fg_mask": False}, data).has_masks
    with pytest.raises(Exception, match="fg_mask"):
        load_imagenet9({**ds, "fg_mask": "yes"}, data)
    out = tmp_path / "out"
    args = ["--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--null-draws", "2"]
    r = cli(
        "run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", "imagenet9/original,imagenet9/no_fg", *args
    )
    assert r.returncode == 0, r.stderr
    records = {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text()) for p in out.rglob("*.json")}
    rec = records["imagenet9/original"]
    assert rec["config"]["attribution"]["status"] == "ran"
    assert rec["config"]["diagnosis"]["segmenter"]["name"] == "dataset"
    assert "bg_er" in rec["metrics"] and "fg_driven_rate" in rec["metrics"]
    assert records["imagenet9/no_fg"]["config"]["attribution"]["status"] != "ran"  # no masks, no diagnosis under auto


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
