"""The Backgrounds Challenge (ImageNet-9) tasks on a tiny copy laid out exactly as the release unpacks
(``bg_challenge/<variation>/val/<NN_class>/``), and the leaderboard's BG-Gap (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

from covar_harness.leaderboard import build_tables
from covar_harness.peer_tables import IMAGENET9_VARIANTS
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
    from covar_harness.plugin_manager import load_catalog

    tasks = {c.task: c for c in load_catalog().tasks if c.task.startswith("imagenet9/")}
    assert set(tasks) == {f"imagenet9/{v}" for v in IMAGENET9_VARIANTS}
    cfg = tasks["imagenet9/mixed_rand"]
    assert cfg.dataset == {"format": "imagefolder", "path": "bg_challenge/mixed_rand", "split": "val"}
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
