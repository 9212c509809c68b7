"""The ``counteranimals`` format and tasks (release layout, 1000-way index mapping, 45-way variant, HF copy),
plus the class data they rely on (WordNet names, CounterAnimals classes, class groups)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from covar_harness.catalog.taskconfig import parse_task
from covar_harness.data.class_groups import class_groups, class_groups_rule, share_group
from covar_harness.data.imagenet import imagenet_index
from covar_harness.data.resources import named
from covar_harness.data.samples import DatasetNotFound
from covar_harness.results import files as results
from covar_harness_tasks.counteranimals import load_counteranimals
from helpers import make_image, run_cli_inprocess

# ImageNet index -> (release folder name, common folder, counter folder, photos per group)
RELEASE = {
    9: ("9 ostrich, Struthio camelus", "common-ground", "counter-water", (3, 2)),
    290: ("290 jaguar, panther, Panthera onca, Felis onca", "Common-water", "COUNTER-tree", (2, 2)),
    296: ("296 ice bear, polar bear, Ursus Maritimus, Thalarctos maritimus", "common-snow", "counter-grass", (2, 1)),
}
POSITION_45 = {9: 0, 290: 35, 296: 38}  # positions among the 45 CounterAnimals classes (ImageNet order)


def make_release(parent: Path, names_file: bool = False) -> Path:
    """``parent/LAION-final/<idx> <names>/{common-*,counter-*}`` with loose files that must be skipped."""
    root = parent / "LAION-final"
    for idx, (folder, common, counter, (n_common, n_counter)) in RELEASE.items():
        for sub, n in ((common, n_common), (counter, n_counter)):
            (root / folder / sub).mkdir(parents=True)
            for j in range(n):
                make_image((30 + idx % 200, 90, 160), seed=idx + j).save(root / folder / sub / f"p{j}.jpg")
        (root / folder / "notes.txt").write_text("not a photo")
    (root / "readme.txt").write_text("loose file")
    (root / "extract.py").write_text("print('never run')")
    (root / "misc").mkdir()
    if names_file:
        wn = named("classnames", "imagenet1k_wordnet")
        (root / "imagenet_names.txt").write_text("".join(f"{i}\t{n.upper()}\n" for i, n in enumerate(wn)))
    return root


def _load(path: Path, **ds) -> object:
    return load_counteranimals({"format": "counteranimals", "path": str(path), **ds}, path)


def test_release_layout_labels_are_imagenet_indices(tmp_path):
    root = make_release(tmp_path / "ca")
    common = _load(tmp_path / "ca", group="common")
    assert len(common.classnames) == 1000 and common.classnames[290] == "jaguar, panther, Panthera onca, Felis onca"
    assert sorted({s.label for s in common.samples}) == [9, 290, 296]
    assert [s.label for s in common.samples].count(9) == 3
    jag = next(s for s in common.samples if s.label == 290)
    assert jag.meta == {"group": "common", "background": "water", "class_folder": RELEASE[290][0]}
    assert jag.id.startswith(RELEASE[290][0] + "/Common-water/")
    assert "bundled imagenet1k_wordnet" in common.description and "1000-way" in common.description
    counter = _load(tmp_path / "ca", group="counter")
    assert len(counter) == 5 and {s.meta["background"] for s in counter.samples} == {"water", "tree", "grass"}
    # the same samples whichever root is given: LAION-final, its parent, or a folder one level above that
    assert [s.id for s in _load(root, group="common").samples] == [s.id for s in common.samples]
    assert len(_load(tmp_path, group="common")) == 7


def test_release_names_file_is_used_and_recorded(tmp_path):
    make_release(tmp_path / "ca", names_file=True)
    s = _load(tmp_path / "ca", group="common")
    assert s.classnames[9] == "OSTRICH, STRUTHIO CAMELUS"
    assert "imagenet_names.txt" in s.description


def test_broken_names_file_falls_back_with_warning(tmp_path, caplog):
    root = make_release(tmp_path / "ca")
    (root / "imagenet_names.txt").write_text("0\ttench\n1\tgoldfish\n")
    with caplog.at_level(logging.WARNING):
        s = _load(tmp_path / "ca", group="common")
    assert s.classnames[0] == "tench, Tinca tinca" and "not a 1000-class list" in caplog.text


def test_totals_differing_from_paper_warn_not_fail(tmp_path, caplog):
    make_release(tmp_path / "ca")
    with caplog.at_level(logging.INFO, logger="covar_harness_tasks.counteranimals"):
        s = _load(tmp_path / "ca", group="counter")
    assert len(s) == 5
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "5 images, the paper states 5926" in warning.getMessage() and "296: 1 vs 110" in warning.getMessage()
    assert any("9:2, 290:2, 296:1" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_missing_release_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        _load(tmp_path / "nowhere", group="common")
    assert str(tmp_path / "nowhere") in str(err.value) and "drive.google.com" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound, match="LAION-final"):
        _load(tmp_path / "empty", group="common")


def test_45way_restriction_relabels(tmp_path):
    make_release(tmp_path / "ca")
    s = _load(tmp_path / "ca", group="common", label_space="counteranimals45")
    assert len(s.classnames) == 45 and "UNOFFICIAL" in s.description
    assert {s2.meta["imagenet_index"]: s2.label for s2 in s.samples} == POSITION_45
    assert s.classnames[POSITION_45[290]].startswith("jaguar")


def test_cli_end_to_end_and_leaderboard(tmp_path, openclip_dir):
    make_release(tmp_path / "data" / "counteranimals")
    out = tmp_path / "results"
    r = run_cli_inprocess(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "counteranimals/common,counteranimals/counter,counteranimals/common-45way",
        "--data-dir",
        str(tmp_path / "data"),
        "--output-dir",
        str(out),
        "--log-samples",
        "--workers",
        "0",
        "--attribution",
        "none",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    recs = {}
    for p in out.rglob("*.json"):
        rec = json.loads(p.read_text())
        recs[rec["task"]["name"]] = (rec, p)
    common, path = recs["counteranimals/common"]
    assert common["task"]["n_classes"] == 1000 and common["task"]["n_samples"] == 7
    assert common["task"]["headline"] == "mean_per_class_recall"
    assert not {"worst_group_acc", "group_acc_gap"} & set(common["metrics"])  # one group: no worst group
    assert "groups" not in common["config"]
    assert common["config"]["templates"] == ["A photo of {}."]
    assert "bundled imagenet1k_wordnet" in common["task"]["dataset"]
    log = [json.loads(x) for x in results.samples_path(path).read_text().splitlines()]
    assert sorted({row["label"] for row in log}) == [9, 290, 296]
    assert all(0 <= row["pred"] < 1000 and row["group"] == "common" for row in log)
    per_class = {c: [row["correct"] for row in log if row["label"] == c] for c in (9, 290, 296)}
    balanced = sum(sum(v) / len(v) for v in per_class.values()) / 3
    assert common["metrics"]["mean_per_class_recall"] == pytest.approx(balanced)
    narrow = recs["counteranimals/common-45way"][0]
    assert narrow["task"]["n_classes"] == 45 and "unofficial" in narrow["task"]["tags"]

    lb = run_cli_inprocess("leaderboard", str(out), "--format", "json", "--reference", "paper")
    assert lb.returncode == 0, lb.stderr
    tables = json.loads(lb.stdout)["tables"]
    official = next(t for t in tables if "official protocol" in t["title"])
    assert official["columns"] == ["Model", "Common", "Counter", "Drop", "Common acc1", "Counter acc1"]
    ours = official["rows"][0]
    c, k = (
        common["metrics"]["mean_per_class_recall"],
        recs["counteranimals/counter"][0]["metrics"]["mean_per_class_recall"],
    )
    assert ours[1:4] == [round(100 * c, 1), round(100 * k, 1), round(100 * (c - k), 1)]
    assert ours[4] == round(100 * common["metrics"]["acc1"], 1)
    published = [official["rows"][i] for i in official["published_rows"]]
    vitb32 = next(row for row in published if row[0].startswith("ViT-B/32 OpenAI"))
    assert vitb32[1:4] == [69.13, 45.62, 23.51] and 0 not in official["published_rows"]
    assert any("45-way" in t["title"] and "UNOFFICIAL" in t["title"] for t in tables)


def test_hf_copy_is_mapped_to_imagenet_indices(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [make_image((100, 100, 100), seed=i) for i in range(5)]
    labels = ["9 ostrich, Struthio camelus", "jaguar", "Vulture", "jaguar", "ice bear"]
    groups = ["common", "common", "counter", "counter", "common"]
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": labels, "group": groups},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("string"), "group": datasets.Value("string")}
        ),
    )
    ds.save_to_disk(str(tmp_path / "hfcopy"))
    s = load_counteranimals(
        {"format": "counteranimals", "hf_id": str(tmp_path / "hfcopy"), "group": "common"}, tmp_path
    )
    assert [x.label for x in s.samples] == [9, 290, 296] and len(s.classnames) == 1000
    assert s.open_image(1).size == (40, 40) and "hf " in s.description
    counter = load_counteranimals(
        {
            "format": "counteranimals",
            "hf_id": str(tmp_path / "hfcopy"),
            "group": "counter",
            "label_space": "counteranimals45",
        },
        tmp_path,
    )
    assert [x.meta["imagenet_index"] for x in counter.samples] == [23, 290]


# ---- class data ------------------------------------------------------------------------------------------
def test_shipped_class_data_is_consistent():
    wn, curated = named("classnames", "imagenet1k_wordnet"), named("classnames", "imagenet1k")
    assert len(wn) == len(curated) == 1000 and wn[0] == "tench, Tinca tinca"
    ca = named("reference", "counteranimals_classes")
    assert len(ca["classes"]) == 45
    assert sum(c["paper_common_count"] for c in ca["classes"]) == 7174
    assert sum(c["paper_counter_count"] for c in ca["classes"]) == 5926
    for c in ca["classes"]:  # folder names agree with WordNet up to case and trailing synonyms
        assert imagenet_index(c["folder"].split(" ", 1)[1]) == c["imagenet_index"]
    groups = named("class_groups", "imagenet1k")
    assert len(groups["groups"]) == 1000 and "WordNet" in groups["rule"]


def _cfg(groups, classnames=None):
    return parse_task({"task": "t/x", "dataset": {"format": "imagefolder"}, "class_groups": groups})


def test_class_groups_wordnet_rule():
    g = class_groups(_cfg("imagenet1k"), named("classnames", "imagenet1k_wordnet"))
    jaguar = g[290]
    assert {i for i, v in g.items() if v == jaguar} == {281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293}
    assert g[296] != jaguar and g[296] == g[294]  # ice bear with brown bear, not with the cats
    assert share_group(g, 290, 291) and not share_group(g, 290, 290) and not share_group(g, 290, 296)


def test_class_groups_by_name_for_small_tasks():
    names = ["jaguar", "lion", "ice bear", "crane", "space alien"]
    g = class_groups(_cfg("imagenet1k"), names)
    assert g[0] == g[1] and g[2] != g[0]
    assert g[3].startswith("unmatched:") and g[4].startswith("unmatched:")  # 'crane' is ambiguous in ImageNet
    assert "2 of 5 classes matched no group" in class_groups_rule(_cfg("imagenet1k"), names)
    inline = class_groups(_cfg({"cat": "pets", "1": "pets", "fish": "water"}), ["cat", "dog", "fish", "cow"])
    assert inline[0] == inline[1] == "pets" and inline[2] == "water" and inline[3] == "unmatched:cow"
    assert class_groups(_cfg(None), names) is None
