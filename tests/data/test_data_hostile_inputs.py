"""Issue 12, data layer: no user folder deleted (1), labels tied to class names by name (2), preflight (9, 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.catalog.taskconfig import load_task_file, parse_task
from covar_harness.data.samples import DatasetNotFound, open_task_data, preflight
from covar_harness_tasks import covar_shapes as cs
from helpers import make_covar, make_image_folder, run_cli_inprocess, write_task_yaml


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _task(tmp_path: Path, body: dict, name: str = "t.yaml") -> object:
    path = tmp_path / name
    path.write_text(json.dumps({"task": "t/x", "templates": ["{}"], "version": 1, **body}))
    return load_task_file(path)


# ---- 1: covar-shapes and build-covar never delete a user's folder --------------------------------------
def test_covar_shapes_at_dot_refuses_the_users_folder(tmp_path, catalog):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    cfg = _task(folder, {"dataset": {"format": "covar-shapes", "path": ".", "subset": "original"}})
    for call in (preflight, open_task_data):
        with pytest.raises(UsageError) as err:
            call(cfg, catalog, tmp_path / "data")
        assert str(folder) in str(err.value) and "\n" not in str(err.value)
    assert (folder / "thesis.tex").read_text() == "precious" and (folder / "t.yaml").is_file()


def test_covar_shapes_refuses_a_file_and_a_foreign_folder(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        cs.ensure_covar_shapes(tmp_path / "a-file", quiet=True, per_class=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "classes.json").write_text("[]")
    with pytest.raises(UsageError, match="no COVAR-Shapes build"):
        cs.ensure_covar_shapes(tmp_path / "other", quiet=True, per_class=1)
    assert (tmp_path / "a-file").read_text() == "x" and (tmp_path / "other" / "classes.json").read_text() == "[]"


def test_covar_shapes_builds_into_an_empty_folder_and_moves_an_outdated_build_aside(tmp_path, monkeypatch):
    root = tmp_path / "covar-shapes"
    root.mkdir()
    cs.ensure_covar_shapes(root, quiet=True, per_class=1)
    assert cs.is_current(root, 1)
    (root / "note.txt").write_text("mine")  # a file the user left inside the build
    monkeypatch.setattr(cs, "GENERATOR_VERSION", cs.GENERATOR_VERSION + "-next")
    assert cs.target_state(root, 1) == "outdated"
    cs.ensure_covar_shapes(root, quiet=True, per_class=1)
    assert cs.is_current(root, 1)
    aside = tmp_path / "covar-shapes.outdated-1"
    assert (aside / "note.txt").read_text() == "mine" and (aside / cs.STAMP).is_file()  # moved, not deleted


def _objects_and_backgrounds(tmp_path: Path) -> tuple[Path, Path]:
    from helpers import make_image

    objects, backgrounds = tmp_path / "objects", tmp_path / "backgrounds"
    cs.write_sources(tmp_path / "src", 0, 1, 2)
    (objects / "circle").mkdir(parents=True)
    (objects / "circle" / "c.png").write_bytes((tmp_path / "src" / "objects" / "circle-000-v0.png").read_bytes())
    backgrounds.mkdir()
    for i in range(2):
        make_image((i * 100, 50, 50), seed=i).save(backgrounds / f"bg{i}.png")
    return objects, backgrounds


def test_build_covar_overwrite_replaces_only_a_previous_build(tmp_path):
    objects, backgrounds = _objects_and_backgrounds(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("precious")
    args = [
        "build-covar",
        "--objects",
        str(objects),
        "--backgrounds",
        str(backgrounds),
        "--size",
        "32",
        "--workers",
        "1",
    ]
    r = run_cli_inprocess(*args, "--out", str(mine), "--overwrite")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(mine) in lines[0] and "refusing" in lines[0]
    assert sorted(p.name for p in mine.iterdir()) == ["data.csv"]
    out = tmp_path / "out"
    assert run_cli_inprocess(*args, "--out", str(out)).returncode == 0
    (out / "build.json").unlink()  # an interrupted build still carries its start marker
    r = run_cli_inprocess(*args, "--out", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "build.json").is_file()


# ---- 2: explicit classnames in another order --------------------------------------------------------------
def _labels_by_folder(samples) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in samples.samples:
        out.setdefault(s.id.split("/")[0], set()).add(samples.classnames[s.label])
    return out


def test_imagefolder_maps_explicit_classnames_by_name(tmp_path, catalog):
    data = make_image_folder(tmp_path / "img", classes=("blue", "green", "red"), per_class=2)
    cfg = load_task_file(write_task_yaml(tmp_path / "t.yaml", "t/x", data, classnames=["red", "green", "blue"]))
    samples = open_task_data(cfg, catalog)
    assert samples.label_mapping == "by_name"
    assert samples.classnames == ["red", "green", "blue"]
    assert _labels_by_folder(samples) == {"blue": {"blue"}, "green": {"green"}, "red": {"red"}}
    assert preflight(cfg, catalog) is None


def test_by_name_ignores_case_and_underscores(tmp_path, catalog):
    data = make_image_folder(tmp_path / "img", classes=("Sea_Lion", "cat"), per_class=1)
    cfg = load_task_file(write_task_yaml(tmp_path / "t.yaml", "t/x", data, classnames=["CAT", "sea lion"]))
    samples = open_task_data(cfg, catalog)
    assert samples.label_mapping == "by_name"
    assert _labels_by_folder(samples) == {"Sea_Lion": {"sea lion"}, "cat": {"CAT"}}


def test_folders_named_by_id_keep_positional_mapping_and_say_so(tmp_path, catalog):
    data = make_image_folder(tmp_path / "img", classes=("n01", "n02", "n03"), per_class=1)
    cfg = load_task_file(write_task_yaml(tmp_path / "t.yaml", "t/x", data, classnames=["tench", "goldfish", "shark"]))
    samples = open_task_data(cfg, catalog)
    assert samples.label_mapping == "positional"
    assert _labels_by_folder(samples) == {"n01": {"tench"}, "n02": {"goldfish"}, "n03": {"shark"}}
    plain = load_task_file(write_task_yaml(tmp_path / "u.yaml", "t/y", data))
    assert open_task_data(plain, catalog).label_mapping is None


def test_class_count_mismatch_is_a_usage_error_naming_both_lists(tmp_path, catalog):
    data = make_image_folder(tmp_path / "img", classes=("cat", "dog", "fish"), per_class=1)
    cfg = load_task_file(write_task_yaml(tmp_path / "t.yaml", "t/x", data, classnames=["cow", "pig"]))
    for call in (open_task_data, preflight):
        with pytest.raises(UsageError) as err:
            call(cfg, catalog)
        message = str(err.value)
        assert "\n" not in message and "cow" in message and "fish" in message and "2" in message


def test_a_name_at_another_position_is_refused(tmp_path, catalog):
    data = make_image_folder(tmp_path / "img", classes=("cat", "dog", "fish"), per_class=1)
    cfg = load_task_file(write_task_yaml(tmp_path / "t.yaml", "t/x", data, classnames=["dog", "cat", "cow"]))
    with pytest.raises(UsageError, match="another position"):
        open_task_data(cfg, catalog)


def test_imagenet_name_lists_stay_positional_to_each_other():
    from covar_harness.data.resources import named
    from covar_harness.data.samples import label_permutation

    wordnet, curated = named("classnames", "imagenet1k_wordnet"), named("classnames", "imagenet1k")
    assert label_permutation(curated, wordnet, "t") is None and label_permutation(wordnet, curated, "t") is None
    assert label_permutation(wordnet, wordnet, "t") is None  # duplicates ("crane" twice): positional, not refused


def test_long_lists_are_shortened(tmp_path, catalog):
    data = make_image_folder(tmp_path / "img", classes=("cat", "dog"), per_class=1)
    cfg = load_task_file(write_task_yaml(tmp_path / "t.yaml", "t/x", data, classnames=[f"c{i}" for i in range(500)]))
    with pytest.raises(UsageError) as err:
        open_task_data(cfg, catalog)
    assert len(str(err.value)) < 400 and "more" in str(err.value)


def test_hf_classlabel_names_are_mapped_by_name(tmp_path, catalog):
    import datasets
    import numpy as np
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    images = [Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    ds.save_to_disk(str(tmp_path / "hfdata"))
    cfg = _task(tmp_path, {"dataset": {"format": "hf", "path": str(tmp_path / "hfdata")}, "classnames": ["dog", "cat"]})
    samples = open_task_data(cfg, catalog)
    assert samples.label_mapping == "by_name"
    assert [samples.classnames[s.label] for s in samples.samples] == ["cat", "dog", "cat", "dog"]
    assert samples.subset([1, 2]).label_mapping == "by_name"  # --limit keeps it


# ---- 9: preflight --------------------------------------------------------------------------------------
def test_preflight_unknown_format_suggests_close_names(tmp_path, catalog):
    cfg = parse_task({"task": "t/x", "dataset": {"format": "imagefolderr", "path": "x"}})
    with pytest.raises(UsageError, match="imagefolder"):
        preflight(cfg, catalog, tmp_path)


@pytest.mark.parametrize(
    "dataset",
    [
        {"format": "imagefolder", "path": "nowhere"},
        {"format": "covar", "path": "nowhere", "subset": "original"},
        {"format": "counteranimals", "path": "nowhere", "group": "common"},
        {"format": "hf", "path": "./nowhere/at/all"},
    ],
)
def test_preflight_missing_data_gives_the_loaders_message(tmp_path, catalog, dataset):
    cfg = parse_task({"task": "t/x", "dataset": dataset})
    with pytest.raises(DatasetNotFound) as early:
        preflight(cfg, catalog, tmp_path)
    with pytest.raises(DatasetNotFound) as late:
        open_task_data(cfg, catalog, tmp_path)
    assert str(early.value) == str(late.value) and "\n" not in str(early.value)


def test_preflight_passes_ungenerated_covar_shapes_and_hub_ids_without_work(tmp_path, catalog, monkeypatch):
    cfg = parse_task({"task": "t/x", "dataset": {"format": "covar-shapes", "subset": "original"}})
    assert preflight(cfg, catalog, tmp_path / "data") is None
    assert not (tmp_path / "data").exists()  # nothing generated
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("preflight must not contact the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    hub = parse_task({"task": "t/y", "dataset": {"format": "hf", "path": "someorg/somedata"}})
    assert preflight(hub, catalog, tmp_path) is None


def test_preflight_ok_for_present_covar_and_refuses_bad_subset_data(tmp_path, catalog):
    root = make_covar(tmp_path / "covar", subsets=("original",))
    ok = parse_task({"task": "t/x", "dataset": {"format": "covar", "path": str(root), "subset": "original"}})
    assert preflight(ok, catalog, tmp_path) is None
    missing = parse_task({"task": "t/y", "dataset": {"format": "covar", "path": str(root), "subset": "viewpoint"}})
    with pytest.raises(DatasetNotFound):  # a copy that is not a build: missing, not a note
        preflight(missing, catalog, tmp_path)


def test_single_view_build_notes_and_skips_viewpoint(tmp_path, catalog):
    objects, backgrounds = _objects_and_backgrounds(tmp_path)
    out = tmp_path / "covar"
    r = run_cli_inprocess(
        "build-covar",
        "--objects",
        str(objects),
        "--backgrounds",
        str(backgrounds),
        "--out",
        str(out),
        "--size",
        "32",
        "--workers",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "note:" in r.stdout and "single view" in r.stdout
    view = parse_task({"task": "t/v", "dataset": {"format": "covar", "path": str(out), "subset": "viewpoint"}})
    note = preflight(view, catalog, tmp_path)
    assert note and "viewpoint" in note and "single view" in note and "\n" not in note
    orig = parse_task({"task": "t/o", "dataset": {"format": "covar", "path": str(out), "subset": "original"}})
    assert preflight(orig, catalog, tmp_path) is None
