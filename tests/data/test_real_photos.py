"""build-covar on real cut-out photos (Debian ``tuxpaint-stamps-default``), then a demo model on the result.

The package (GPL-2) is installed by ``.ci/run`` when apt is available; its images are read in place and only
linked from a temporary folder, never copied into the repository. Labels come from the stamp's folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covar_harness.results import files as results
from helpers import run_cli_inprocess

STAMPS = Path("/usr/share/tuxpaint/stamps")
CLASSES = {
    "cats": "animals/mammals/cats",
    "dogs": "animals/mammals/dogs",
    "birds": "animals/birds",
    "fruit": "food/fruit",
}
PER_CLASS = 3

pytestmark = pytest.mark.skipif(
    not STAMPS.is_dir(),
    reason=f"{STAMPS} not found: install the Debian package tuxpaint-stamps-default (.ci/run does when apt works)",
)


def _is_photo_cutout(path: Path) -> bool:
    """A real photo with an alpha mask: RGBA, a usable foreground, and many distinct colours (cartoons have few)."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGBA":
                return False
            im.thumbnail((96, 96))
            arr = np.asarray(im)
    except OSError:
        return False
    fg = arr[..., 3] > 127
    if fg.mean() < 0.05:
        return False
    colours = np.unique(arr[fg][:, :3] // 8, axis=0)
    return len(colours) > 400


def _link_objects(dest: Path) -> dict[str, list[Path]]:
    chosen = {}
    for label, rel in CLASSES.items():
        photos = [p for p in sorted((STAMPS / rel).glob("*.png")) if _is_photo_cutout(p)][:PER_CLASS]
        for p in photos:
            (dest / label).mkdir(parents=True, exist_ok=True)
            (dest / label / p.name).symlink_to(p)
        if photos:
            chosen[label] = photos
    return chosen


def _backgrounds(dest: Path) -> None:
    from covar_harness_tasks.shape_drawing import FAMILIES, render_background

    dest.mkdir(parents=True)
    for i, family in enumerate(FAMILIES[:4]):
        Image.fromarray(render_background(family, np.random.default_rng(i), 96)).save(dest / f"{family}.png")


def test_build_from_real_photos_and_run_demo_model(tmp_path):
    chosen = _link_objects(tmp_path / "objects")
    if len(chosen) < 2:
        pytest.skip(f"fewer than two classes of photo cut-outs found under {STAMPS}")
    _backgrounds(tmp_path / "backgrounds")
    data = tmp_path / "covar-real"
    r = run_cli_inprocess(
        "build-covar",
        "--objects",
        str(tmp_path / "objects"),
        "--backgrounds",
        str(tmp_path / "backgrounds"),
        "--out",
        str(data),
        "--size",
        "64",
        "--seed",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((data / "classes.json").read_text()) == sorted(chosen)
    n_objects = sum(len(v) for v in chosen.values())
    recs = [json.loads(line) for line in (data / "crop" / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == n_objects
    originals = {
        json.loads(line)["source_id"]: json.loads(line)
        for line in (data / "original" / "metadata.jsonl").read_text().splitlines()
    }
    for rec in recs:  # the crop is tight: the photo's own alpha mask fills more of the frame than in original
        fg = (np.asarray(Image.open(data / "crop" / rec["mask"])) > 127).mean()
        fg_orig = (np.asarray(Image.open(data / "original" / originals[rec["source_id"]]["mask"])) > 127).mean()
        assert fg > 1.5 * fg_orig > 0
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for subset in ("original", "bg_varied"):
        (tasks / f"{subset}.yaml").write_text(
            json.dumps(
                {
                    "task": f"real/{subset}",
                    "dataset": {"format": "covar", "path": str(data), "subset": subset},
                    "templates": ["{}"],
                    "version": 1,
                }
            )
        )
    out = tmp_path / "results"
    r = run_cli_inprocess(
        "run",
        "--models",
        "demo/shapes-clean",
        "--tasks",
        "real/*",
        "--include-path",
        str(tasks),
        "--output-dir",
        str(out),
        "--attribution",
        "none",
        "--workers",
        "0",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for subset in ("original", "bg_varied"):
        res = json.loads(results.result_path(out, "demo/shapes-clean", f"real/{subset}").read_text())
        assert res["task"]["n_samples"] == n_objects and res["task"]["n_failed"] == 0
        assert 0.0 <= res["metrics"]["acc1"] <= 1.0
