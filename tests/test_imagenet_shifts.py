"""ImageNet-R and ImageNet-A on tiny copies laid out as the releases unpack (``imagenet-r/<wnid>/<image>``,
``imagenet-a/<wnid>/<image>`` with the release's README.txt beside): the classifier covers the wnid folders
present only (= the other ImageNet logits masked), named with the curated ImageNet names (issue 18 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covar_harness.data import DatasetNotFound
from covar_harness.imagenet import curated_names
from covar_harness.registry import UsageError
from covar_harness.resources import named
from helpers import make_image
from helpers import run_cli_inprocess as cli

# goldfish, great white shark, hammerhead (ImageNet-1k wnids); listed out of order on purpose
WNIDS = ["n01494475", "n01443537", "n01484850"]


def make_shift(root: Path, name: str) -> Path:
    for c, wnid in enumerate(WNIDS):
        (root / name / wnid).mkdir(parents=True)
        for j in range(2):
            file = f"art_{j}.jpg" if name == "imagenet-r" else f"0.00{c}{j}_goldfish _ goldfish_0.9.jpg"
            make_image((70 * c, 40, 200 - 70 * c), seed=10 * c + j).save(root / name / wnid / file)
    (root / name / "README.txt").write_text("release notes\n")
    return root


def test_classes_are_the_wnid_folders_in_imagenet_order(tmp_path):
    from covar_harness.tasks.imagenet_shifts import load_imagenet_wnids

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


def test_tasks_name_their_protocol_and_label_space():
    from covar_harness.plugin_manager import load_catalog

    tasks = {c.task: c for c in load_catalog().tasks}
    for name in ("imagenet-r/test", "imagenet-a/test"):
        cfg = tasks[name]
        assert cfg.dataset == {"format": "imagenet_wnids", "path": name.split("/")[0]}
        assert cfg.classnames is None and cfg.metadata["label_space"] == "dataset folders (200 wnids)"
        assert "hendrycks" in cfg.metadata["protocol"]


def test_run_scores_over_the_subset_only(openclip_dir, tmp_path):
    data, out = make_shift(make_shift(tmp_path / "data", "imagenet-r"), "imagenet-a"), tmp_path / "out"
    r = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "imagenet-r/test,imagenet-a/test",
        *("--data-dir", str(data), "--output-dir", str(out), "--workers", "0", "--attribution", "none"),
        "--log-samples",
    )
    assert r.returncode == 0, r.stderr
    records = {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text()) for p in out.rglob("*.json")}
    for name in ("imagenet-r/test", "imagenet-a/test"):
        rec = records[name]
        assert rec["task"]["n_classes"] == 3 and rec["task"]["n_samples"] == 6  # 3-way, not 1000-way
        rows = [
            json.loads(x) for x in next(out.rglob(f"*{name.split('/')[0]}*.samples.jsonl")).read_text().splitlines()
        ]
        preds = np.array([row["pred"] for row in rows])
        assert set(preds) <= {0, 1, 2}  # every prediction is one of the classes present (masked argmax)
        labels = np.array([row["label"] for row in rows])
        assert rec["metrics"]["acc1"] == pytest.approx(float(np.mean(preds == labels)))


def test_v2_index_folders_and_sketch_over_all_1000_classes(tmp_path):
    from covar_harness.plugin_manager import load_catalog
    from covar_harness.tasks.imagenet_shifts import load_imagenet_wnids

    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    for index in ("0", "1", "10", "2"):  # as strings "10" sorts before "2": labels must come from the integers
        (v2 / index).mkdir(parents=True)
        make_image((10, 20, 30), seed=int(index)).save(v2 / index / "7e5f1c.jpeg")
    make_shift(tmp_path, "sketch")
    tasks = {c.task: c for c in load_catalog().tasks}
    found = load_imagenet_wnids(tasks["imagenet-v2/matched-frequency"].dataset | {"path": str(v2)}, tmp_path)
    assert len(found.classnames) == 1000 and found.classnames[10] == curated_names()[10]
    assert [(s.id, s.label) for s in found.samples] == [(f"{i}/7e5f1c.jpeg", i) for i in (0, 1, 2, 10)]
    assert found.samples[0].meta["wnid"] == "n01440764"
    sketch_cfg = tasks["imagenet-sketch/test"].dataset | {"path": str(tmp_path / "sketch")}
    sketch = load_imagenet_wnids(sketch_cfg, tmp_path)
    wnids = named("reference", "imagenet1k_wnids")
    assert len(sketch.classnames) == 1000 and {s.label for s in sketch.samples} == {wnids.index(w) for w in WNIDS}
    with pytest.raises(UsageError, match="label_space"):
        load_imagenet_wnids({**sketch_cfg, "label_space": "imagenet21k"}, tmp_path)
    where = cli("data", "where", "imagenet-v2/matched-frequency", "--data-dir", str(tmp_path / "elsewhere"))
    assert "missing" in where.stdout and "ImageNetV2" in where.stdout
