"""Issue 12, files: high-bit-depth images (5), non-regular files (12), YAML alias bombs (15), COVAR paths (20)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.catalog.taskconfig import TaskConfigError, load_task_file, parse_task
from covar_harness.common import safe_files
from covar_harness.data.pixels import as_mask, as_rgb
from covar_harness.data.samples import Sample, SampleSet
from helpers import COVAR_CLASSES, make_covar, make_image_folder, run_cli_inprocess

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def _within(seconds: float, fn, *args):
    """Run fn in a thread; fail (instead of hanging the suite) when it does not return in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ---- 5: 16-bit, 32-bit and float images --------------------------------------------------------------
def _gradient(dtype, top: float) -> np.ndarray:
    return np.tile(np.linspace(0, top, 64), (8, 1)).astype(dtype)


def _is_gradient(rgb: Image.Image) -> bool:
    row = np.asarray(rgb)[0, :, 0].astype(int)
    return rgb.mode == "RGB" and row[0] <= 2 and row[-1] >= 250 and np.all(np.diff(row) >= 0) and len(set(row)) > 30


def test_16_bit_png_reaches_the_model_as_a_gradient(tmp_path):
    (tmp_path / "c").mkdir()
    Image.fromarray(_gradient(np.uint16, 65535)).save(tmp_path / "c" / "g.png")
    assert Image.open(tmp_path / "c" / "g.png").mode.startswith("I")
    samples = SampleSet([Sample("c/g.png", 0, {"mask": "c/g.png"})], ["c"], tmp_path)
    assert _is_gradient(samples.open_image(0))
    mask = samples.open_mask(0)
    assert mask.mode == "L" and np.asarray(mask)[0, 0] == 0 and np.asarray(mask)[0, -1] == 255


@pytest.mark.parametrize(
    "mode, array",
    [
        ("I;16B", _gradient(">u2", 65535)),
        ("I", _gradient(np.int32, 65535 * 8)),
        ("I", _gradient(np.int32, 255)),
        ("F", _gradient(np.float32, 1.0)),
        ("F", _gradient(np.float32, 3000.0) - 1000),
    ],
)
def test_other_high_bit_depth_modes_are_scaled(mode, array):
    im = Image.frombytes(mode, array.shape[::-1], array.tobytes()) if mode == "I;16B" else Image.fromarray(array)
    assert im.mode == mode
    assert _is_gradient(as_rgb(im))


def test_float_nan_and_constant_images_do_not_crash():
    arr = _gradient(np.float32, 5.0)
    arr[1, 3] = np.nan
    arr[1, 4] = np.inf
    out = as_rgb(Image.fromarray(arr))
    assert _is_gradient(out) and np.asarray(out)[1, 4, 0] == 255
    assert np.asarray(as_rgb(Image.fromarray(np.full((4, 4), 7.0, np.float32)))).max() == 7
    assert np.asarray(as_rgb(Image.fromarray(np.full((4, 4), np.nan, np.float32)))).max() == 0


def test_8_bit_modes_are_unchanged():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8))
    for im in (rgb, rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA"), rgb.convert("CMYK"), rgb.convert("LA")):
        assert as_rgb(im).tobytes() == im.convert("RGB").tobytes()
        assert as_mask(im).tobytes() == im.convert("L").tobytes()


def test_build_covar_reads_16_bit_objects(tmp_path):
    from covar_harness_tasks.covar_sources import View, load_view

    arr = np.full((20, 20), 30000, np.uint16)
    Image.fromarray(arr).save(tmp_path / "o.png")
    mask = np.zeros((20, 20), np.uint16)
    mask[5:15, 5:15] = 65535
    Image.fromarray(mask).save(tmp_path / "o.mask.png")
    rgb, m = load_view(View(tmp_path / "o.png", tmp_path / "o.mask.png"))
    assert rgb.max() == round(30000 / 257) and m.sum() == 100


# ---- 12: FIFOs and other non-regular files ----------------------------------------------------------------
@needs_fifo
def test_fifo_named_in_metadata_fails_that_image_instead_of_hanging(tmp_path):
    from covar_harness_tasks.covar import load_covar

    root = make_covar(tmp_path / "covar", subsets=("original",), per_class=1)
    (root / "original" / "img" / "cat0.png").unlink()
    os.mkfifo(root / "original" / "img" / "cat0.png")
    samples = load_covar({"path": str(root), "subset": "original"}, tmp_path)
    with pytest.raises(OSError, match="FIFO"):
        _within(10, samples.open_image, 0)
    assert samples.open_image(1).mode == "RGB"  # the others still open
    assert samples.fingerprint().startswith("sha256:")


@needs_fifo
@pytest.mark.parametrize("name", ["original/metadata.jsonl", "classes.json", "build.json"])
def test_fifo_in_place_of_a_covar_file_is_an_error_not_a_hang(tmp_path, name):
    from covar_harness_tasks.covar import load_covar

    root = make_covar(tmp_path / "covar", subsets=("original",), per_class=1)
    if (root / name).exists():
        (root / name).unlink()
    os.mkfifo(root / name)
    if name == "build.json":  # read to learn the path convention: a FIFO there is ignored
        assert len(_within(10, load_covar, {"path": str(root), "subset": "original"}, tmp_path)) == 3
        return
    with pytest.raises(UsageError, match="regular file"):
        _within(10, load_covar, {"path": str(root), "subset": "original"}, tmp_path)


def test_oversized_metadata_is_refused(tmp_path, monkeypatch):
    from covar_harness_tasks import covar as covar_mod

    root = make_covar(tmp_path / "covar", subsets=("original",), per_class=1)
    monkeypatch.setattr(covar_mod, "METADATA_MAX_BYTES", 100)
    with pytest.raises(UsageError, match="limit"):
        covar_mod.load_covar({"path": str(root), "subset": "original"}, tmp_path)


@needs_fifo
def test_folder_walks_skip_fifos_and_devices(tmp_path):
    from covar_harness.data.samples import load_imagefolder

    root = make_image_folder(tmp_path / "img", classes=("cat",), per_class=2)
    os.mkfifo(root / "cat" / "pipe.png")
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", root / "cat" / "zero.png")
    samples = _within(10, load_imagefolder, {"path": str(root)}, tmp_path)
    assert sorted(s.id for s in samples.samples) == ["cat/000.png", "cat/001.png"]


@needs_fifo
def test_fifo_task_yaml_is_a_one_line_error(tmp_path):
    os.mkfifo(tmp_path / "t.yaml")
    with pytest.raises(TaskConfigError, match="FIFO"):
        _within(10, load_task_file, tmp_path / "t.yaml")


def test_open_regular_refuses_folders_and_large_files(tmp_path):
    with pytest.raises(safe_files.NotRegularFile):
        safe_files.open_regular(tmp_path)
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(safe_files.FileTooLarge):
        safe_files.read_text_capped(tmp_path / "big", 10)


# ---- 15: YAML alias bombs and shapes -------------------------------------------------------------------
def _laughs(levels: int = 9) -> str:
    lines = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


@pytest.mark.parametrize("where", ["class_groups", "metadata", "dataset"])
def test_billion_laughs_is_refused_fast(tmp_path, where):
    body = {"class_groups": f"class_groups:\n{_laughs()}\n", "metadata": f"metadata:\n{_laughs()}\n", "dataset": ""}[
        where
    ]
    dataset = (
        "dataset: {format: imagefolder, path: x}\n"
        if where != "dataset"
        else f"dataset:\n  format: imagefolder\n  path: x\n  junk:\n{_laughs().replace('  a', '    a')}\n"
    )
    path = tmp_path / "bomb.yaml"
    path.write_text(f"task: x/bomb\n{dataset}{body}")
    assert len(path.read_bytes()) < 1200
    start = time.perf_counter()
    with pytest.raises(TaskConfigError) as err:
        load_task_file(path)
    assert time.perf_counter() - start < 2 and "\n" not in str(err.value)


def test_alias_bomb_as_a_group_value_names_the_key(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "task: x/bomb\ndataset: {format: imagefolder, path: x}\n"
        "metadata:\n  l: &l [lol, lol]\nclass_groups:\n  cat: *l\n"
    )
    with pytest.raises(TaskConfigError, match="class_groups.*must be a string"):
        load_task_file(path)


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("task: x/loop\ndataset: {format: imagefolder, path: x}\nmetadata:\n  a: &r [*r]\n")
    with pytest.raises(TaskConfigError):
        load_task_file(path)


def test_benign_anchors_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "task: x/ok\ndataset: {format: imagefolder, path: x}\ntemplates: &t ['a {}.']\n"
        "metadata: {same: *t}\nclass_groups: {cat: pets, dog: pets, '2': fish}\n"
    )
    cfg = load_task_file(path)
    assert cfg.metadata == {"same": ["a {}."]} and cfg.class_groups["cat"] == "pets"


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"cat": ["pets"]}, "must be a string"),
        ({"cat": {"x": 1}}, "must be a string"),
        ({"cat": 3}, "must be a string"),
        ({True: "pets"}, "keys are class names"),
        ({"groups": {"0": "a"}, "rule": "r", "junk": 1}, "unknown key 'junk'"),
        ({"groups": {"0": ["a"]}}, "must be a string"),
        (["cat", "dog"], "must be a mapping"),
    ],
)
def test_class_groups_shape_is_checked(groups, message):
    with pytest.raises(TaskConfigError, match=message):
        parse_task({"task": "x/y", "dataset": {"format": "imagefolder", "path": "x"}, "class_groups": groups})


def test_class_groups_file_with_bad_values_is_a_usage_error(tmp_path):
    from covar_harness.data.class_groups import class_groups

    (tmp_path / "g.json").write_text(json.dumps({"cat": [[1, 2]], "dog": "pets"}))
    (tmp_path / "t.yaml").write_text("task: x/y\ndataset: {format: imagefolder, path: x}\nclass_groups: g.json\n")
    cfg = load_task_file(tmp_path / "t.yaml")
    with pytest.raises(UsageError, match="must be a string"):
        class_groups(cfg, ["cat", "dog"])


def test_cli_refuses_a_bomb_task_with_exit_2(tmp_path):
    (tmp_path / "bomb.yaml").write_text(
        f"task: x/bomb\ndataset: {{format: imagefolder, path: x}}\nclass_groups:\n{_laughs()}\n"
    )
    r = run_cli_inprocess("ls", "tasks", "--include-path", str(tmp_path / "bomb.yaml"), timeout=60)
    assert r.returncode == 2, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


# ---- 20: build-covar paths relative to the subset folder ----------------------------------------------
@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    from covar_harness_tasks import covar_shapes as cs

    root = tmp_path_factory.mktemp("cs") / "covar-shapes"
    cs.ensure_covar_shapes(root, quiet=True, per_class=1, workers=1)
    return root


def test_each_subset_folder_loads_as_a_hf_imagefolder(small_build, tmp_path):
    import datasets

    from covar_harness_tasks.covar import load_covar

    for subset in ("original", "viewpoint"):
        rec = json.loads((small_build / subset / "metadata.jsonl").read_text().splitlines()[0])
        assert not rec["file_name"].startswith(subset + "/") and (small_build / subset / rec["file_name"]).is_file()
        hf = datasets.load_dataset(
            "imagefolder", data_dir=str(small_build / subset), split="train", cache_dir=str(tmp_path / "hf-cache")
        )
        ours = load_covar({"path": str(small_build), "subset": subset}, small_build.parent)
        assert len(hf) == len(ours) and list(hf["label"]) == [s.label for s in ours.samples]
        assert hf[0]["image"].size == ours.open_image(0).size


def test_old_builds_with_root_relative_paths_read_identically(small_build, tmp_path):
    import shutil

    from covar_harness_tasks.build_covar import iter_records
    from covar_harness_tasks.covar import load_covar

    old = tmp_path / "old"
    shutil.copytree(small_build, old)
    info = json.loads((old / "build.json").read_text())
    (old / "build.json").write_text(json.dumps({**info, "build_version": 1}))
    (old / ".covar-build").unlink()
    for subset in info["subsets"]:
        recs = [json.loads(line) for line in (old / subset / "metadata.jsonl").read_text().splitlines()]
        lines = [
            json.dumps({**r, "file_name": f"{subset}/{r['file_name']}", "mask": f"{subset}/{r['mask']}"}) for r in recs
        ]
        (old / subset / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        new_set = load_covar({"path": str(small_build), "subset": subset}, tmp_path)
        old_set = load_covar({"path": str(old), "subset": subset}, tmp_path)
        assert [(s.id, s.label, s.meta) for s in old_set.samples] == [(s.id, s.label, s.meta) for s in new_set.samples]
        assert old_set.fingerprint() == new_set.fingerprint()
        assert [r["file_name"] for r in iter_records(old, subset)] == [
            r["file_name"] for r in iter_records(small_build, subset)
        ]


def test_a_class_named_like_its_subset_is_not_misread(tmp_path):
    """With subset-relative paths declared, ``original/x.png`` inside subset ``original`` is not root-relative."""
    from covar_harness_tasks.covar import load_covar

    root = make_covar(tmp_path / "covar", subsets=("original",), per_class=1)
    (root / "original" / "original").mkdir()
    Image.new("RGB", (8, 8)).save(root / "original" / "original" / "x.png")
    (root / "original" / "metadata.jsonl").write_text(json.dumps({"file_name": "original/x.png", "label": 0}) + "\n")
    (root / "build.json").write_text(
        json.dumps({"build_version": 2, "subsets": {"original": 1}, "classes": COVAR_CLASSES})
    )
    samples = load_covar({"path": str(root), "subset": "original"}, tmp_path)
    assert samples.samples[0].id == "original/original/x.png" and samples.open_image(0).size == (8, 8)
