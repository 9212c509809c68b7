"""Localisation reads the masks as a run does: through the run's mask step (``masks.step.MaskStep`` with the task's
own masks), so a mask stored at another resolution than its image is brought to the image's size before the
model's crop. The same masks stored at twice the images' size give the same pointing energy and rank accuracy,
image by image, as at the images' size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, ToTensor

from covar_harness import hookimpl
from covar_harness.attribution.settings import CCISettings
from covar_harness.catalog import plugin_manager
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.taskconfig import TaskConfig
from covar_harness.faithfulness.evaluate import PairData, run_pair
from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.run.options import RunOptions
from helpers import patch_everywhere, run_cli_inprocess
from toy_vit import LAYOUTS, SIDE, TopLeftReader, layout, load_masked


class CroppingReader(TopLeftReader):
    """The top-left reader behind a centre crop to its input size, as open_clip's preprocessing ends: a mask at
    twice the image's size must be resized to the image first, or the crop cuts another region out of it."""

    name = "toy:cropping"
    preprocess = Compose([CenterCrop(SIDE), ToTensor()])


class CroppingPlugin:
    @hookimpl
    def register_models(self, register):
        register("toy-cropping", CroppingReader)


@pytest.fixture
def cropping_catalog(monkeypatch, toy_catalog):
    """The toy catalogue (models, the ``toy-masked`` format) plus ``toy-cropping``."""
    toy_load = plugin_manager.load_catalog

    def load(include_paths=(), allow=None, extra_plugins=()):
        return toy_load(include_paths, allow, [*extra_plugins, CroppingPlugin()])

    patch_everywhere(monkeypatch, plugin_manager, "load_catalog", load)


def masked_data(root: Path, scale: int) -> Path:
    """The four toy layouts (``toy-masked`` format), each with a mask of one 2 x 2-patch block of the top-left
    quarter (a different block per image), stored at ``scale`` times the image's size (nearest: still binary)."""
    for sub in ("images", "masks"):
        (root / sub / "object").mkdir(parents=True)
    (root / "images" / "background").mkdir()
    for j, tl in enumerate(LAYOUTS):
        layout(tl, seed=j).save(root / "images" / "object" / f"{j:02d}.png")
        mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
        r, c = 16 * (j // 2), 16 * (j % 2)
        mask[r : r + 16, c : c + 16] = 255
        big = Image.fromarray(mask).resize((SIDE * scale, SIDE * scale), Image.Resampling.NEAREST)
        big.save(root / "masks" / "object" / f"{j:02d}.png")
    return root


def task_file(path: Path, name: str, data: Path) -> Path:
    body = {"task": name, "dataset": {"format": "toy-masked", "path": str(data)}, "templates": ["a {}."]}
    path.write_text(yaml.safe_dump(body))
    return path


def test_masks_at_another_resolution_are_resized_as_in_a_run(tmp_path, cropping_catalog):
    same = task_file(tmp_path / "same.yaml", "toy/same-size", masked_data(tmp_path / "same", 1))
    double = task_file(tmp_path / "double.yaml", "toy/double-size", masked_data(tmp_path / "double", 2))
    out = tmp_path / "faith"
    proc = run_cli_inprocess(
        "faithfulness", "--models", "toy-cropping", "--tasks", f"{same},{double}", "--output-dir", str(out),
        "--attributors", "occlusion", "--steps", "2", "--no-token-removal", "--bootstrap", "10", "--device", "cpu",
        "--target", "label", "--log-samples",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout

    def rows(task: str) -> list[dict]:
        path = out / "toy-cropping" / task / "occlusion.samples.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    at_size, stored_double = rows("toy__same-size"), rows("toy__double-size")
    assert len(at_size) == 4 == len(stored_double)
    for a, b in zip(at_size, stored_double):
        # occlusion credits each of the 16 top-left patches; the mask holds 4 of them
        assert 0.1 < a["pointing_energy"] < 0.5
        assert a["relevance_rank_accuracy"] is not None
        assert b["pointing_energy"] == a["pointing_energy"]
        assert b["relevance_rank_accuracy"] == a["relevance_rank_accuracy"]


def test_an_unreadable_mask_is_noted_not_fatal(tmp_path):
    """One mask file that cannot be read: that image has no localisation, the others keep theirs, a note says so."""
    root = masked_data(tmp_path / "data", 1)
    (root / "masks" / "object" / "01.png").write_bytes(b"not a png")
    samples = load_masked({"path": str(root)}, tmp_path)
    W = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # class columns: "background" = [0, 1], "object" = [1, 0]
    data = PairData(TaskConfig("toy/masked", {"format": "toy-masked"}), samples, samples.classnames, W, load_catalog())
    settings = FaithfulnessSettings(steps=2, replacement="black", bootstrap=0, target="label")
    runs = run_pair(
        TopLeftReader(), data, ["occlusion"], settings, CCISettings(k=4), RunOptions(batch_size=2, workers=0)
    )
    rows = runs["occlusion"].rows
    assert not runs["occlusion"].error and [r["id"] for r in rows] == [s.id for s in samples.samples]
    assert [r["pointing_energy"] is None for r in rows] == [False, True, False, False]
    assert any("1 mask(s) could not be read" in note and "01.png" in note for note in data.notes)
