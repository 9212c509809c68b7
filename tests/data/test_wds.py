"""The ``wds`` format on tiny tar shards built as CLIP_benchmark's webdataset layout (``classnames.txt``,
``zeroshot_classification_templates.txt``, ``<split>/nshards.txt``, ``<split>/<i>.tar`` with ``<key>.cls`` and
``<key>.webp|png|jpg``): labels from ``.cls``, templates from the root with ``templates: dataset``, and broken
members skipped and counted like corrupt images, with a hand-computed accuracy (issue 18 item 1)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from test_imagenet_val import colour_adapter

from covar_harness.catalog.registry import UsageError
from covar_harness.data.samples import DatasetNotFound
from helpers import make_image
from helpers import run_cli_inprocess as cli

CLASSES = ["cat", "dog", "fish"]
COLOURS = {"cat": (230, 30, 30), "dog": (30, 230, 30), "fish": (30, 30, 230)}
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]


def _image_bytes(colour, fmt: str, seed: int) -> bytes:
    buf = io.BytesIO()
    make_image(colour, size=16, seed=seed).save(buf, format=fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, members: list[tuple[str, bytes | None]]) -> None:
    """Members in order; ``None`` data makes a symlink member (not a regular file)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            if data is None:
                link = tarfile.TarInfo(name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
            else:
                _add(tar, name, data)


def make_wds(root: Path) -> Path:
    """Two shards. Right by colour: s0, s1, s2; wrong: s4 (labelled cat, blue); failing: s3 (corrupt jpg),
    s5 (no .cls), s6 (label 7 of 3 classes), s7 (image is a symlink)."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (root / "dataset_type.txt").write_text("classification\n")
    (root / "test" / "nshards.txt").write_text("2\n")
    write_shard(
        root / "test" / "0.tar",
        [
            ("s0000000.cls", b"0"),
            ("s0000000.webp", _image_bytes(COLOURS["cat"], "WEBP", 0)),
            ("s0000001.cls", b"1"),
            ("s0000001.png", _image_bytes(COLOURS["dog"], "PNG", 1)),
            ("s0000002.cls", b"2"),
            ("s0000002.jpg", _image_bytes(COLOURS["fish"], "JPEG", 2)),
            ("s0000003.cls", b"0"),
            ("s0000003.jpg", b"not a jpeg at all"),
        ],
    )
    write_shard(
        root / "test" / "1.tar",
        [
            ("s0000004.cls", b"0"),
            ("s0000004.jpg", _image_bytes(COLOURS["fish"], "JPEG", 4)),
            ("s0000005.png", _image_bytes(COLOURS["cat"], "PNG", 5)),
            ("s0000006.cls", b"7"),
            ("s0000006.png", _image_bytes(COLOURS["cat"], "PNG", 6)),
            ("s0000007.cls", b"0"),
            ("s0000007.jpg", None),
        ],
    )
    return root


def load(root: Path, **extra):
    from covar_harness_tasks.wds import load_wds

    return load_wds({"path": str(root), **extra}, root.parent)


def test_shards_read_by_offset_with_failures_kept_for_counting(tmp_path):
    found = load(make_wds(tmp_path / "wds"))
    assert found.classnames == CLASSES and found.templates == TEMPLATES
    assert [s.id for s in found.samples] == [f"test/{i // 4}.tar/s000000{i}" for i in range(8)]
    assert [s.label for s in found.samples[:5]] == [0, 1, 2, 0, 0]
    image = found.open_image(2)
    assert image.size == (16, 16) and image.getpixel((8, 8))[2] > 150  # the blue fish, read from its offset
    failing = {}
    for i in (3, 5, 6, 7):
        with pytest.raises(Exception) as err:
            found.open_image(i)
        failing[i] = str(err.value)
    assert "no .cls label" in failing[5] and "outside the class names" in failing[6] and "regular file" in failing[7]
    sub = found.subset([2, 0])
    assert sub.open_image(0).tobytes() == image.tobytes() and sub.fingerprint() != found.fingerprint()
    with pytest.raises(DatasetNotFound, match="clip-benchmark"):
        load(tmp_path / "wds", split="train")
    (tmp_path / "wds" / "dataset_type.txt").write_text("retrieval\n")
    with pytest.raises(UsageError, match="retrieval"):
        load(tmp_path / "wds")


def test_nshards_and_a_corrupt_shard(tmp_path):
    root = make_wds(tmp_path / "wds")
    (root / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(DatasetNotFound, match="2.tar"):
        load(root)
    (root / "test" / "2.tar").write_bytes(b"\x00garbage" * 100)
    found = load(root)
    assert found.samples[-1].id.startswith("test/2.tar/") and "not a readable tar" in found.members[-1].error


def test_run_with_dataset_templates_and_a_hand_computed_accuracy(tmp_path):
    root = make_wds(tmp_path / "wds")
    task = tmp_path / "tasks" / "toy.yaml"
    task.parent.mkdir()
    task.write_text(
        yaml.safe_dump(
            {"task": "wds-toy/test", "dataset": {"format": "wds", "path": str(root)}, "templates": "dataset"}
        )
    )
    spec, env = colour_adapter(tmp_path, COLOURS)
    out = tmp_path / "out"
    args = ["--include-path", str(task.parent), "--output-dir", str(out), "--workers", "0", "--text-cache", "none"]
    r = cli("run", "--models", spec, "--tasks", "wds-toy/test", *args, "--attribution", "none", env=env)
    assert r.returncode == 0, r.stderr
    (path,) = out.rglob("*.json")
    rec = json.loads(path.read_text())
    assert rec["config"]["templates"] == TEMPLATES
    assert rec["task"]["n_samples"] == 4 and rec["task"]["n_failed"] == 4
    assert sorted(rec["failed_files"]) == ["test/0.tar/s0000003", *(f"test/1.tar/s000000{i}" for i in (5, 6, 7))]
    assert rec["metrics"]["acc1"] == pytest.approx(3 / 4)


def _run_toy(tmp_path: Path, root: Path, **task_keys) -> dict:
    task = tmp_path / "tasks" / "toy.yaml"
    task.parent.mkdir(exist_ok=True)
    body = {"task": "wds-toy/test", "dataset": {"format": "wds", "path": str(root)}, **task_keys}
    task.write_text(yaml.safe_dump(body))
    spec, env = colour_adapter(tmp_path, COLOURS)
    out = tmp_path / "out"
    args = ["--include-path", str(task.parent), "--output-dir", str(out), "--workers", "0", "--text-cache", "none"]
    r = cli("run", "--models", spec, "--tasks", "wds-toy/test", *args, "--attribution", "none", "--overwrite", env=env)
    assert r.returncode == 0, r.stderr
    (path,) = out.rglob("*.json")
    return json.loads(path.read_text())


def test_a_task_without_templates_uses_the_root_s_as_clip_benchmark_does(tmp_path):
    """CLIP_benchmark (builder.py) always evaluates a webdataset with its zeroshot_classification_templates.txt; so
    does a wds task that names no templates. Without the file: 'simple', and the result says so."""
    root = make_wds(tmp_path / "wds")
    assert _run_toy(tmp_path, root)["config"]["templates"] == TEMPLATES
    assert _run_toy(tmp_path, root, templates="simple")["config"]["templates"] == ["a photo of a {}."]
    (root / "zeroshot_classification_templates.txt").unlink()
    rec = _run_toy(tmp_path, root)
    assert rec["config"]["templates"] == ["a photo of a {}."]
    assert any("no zeroshot_classification_templates.txt" in n for n in rec["notes"])


def test_blank_class_lines_are_kept_as_clip_benchmark_keeps_them(tmp_path):
    """classnames.txt 'cat, <blank>, dog, fish': CLIP_benchmark's classes are the 4 stripped lines, so label 2 is
    dog and label 3 fish; dropping the blank line would shift them (label 2 would name fish)."""
    root = make_wds(tmp_path / "wds")
    (root / "classnames.txt").write_text("cat\n\n  dog \nfish\n")
    found = load(root)
    assert found.classnames == ["cat", "", "dog", "fish"]
    assert any("1 blank line(s) kept as empty class names" in n for n in found.notes)
    (root / "classnames.txt").write_text("cat\ndog\nfish\n")
    assert load(root).classnames == CLASSES and load(root).notes == []


# ---- issue 25 item 4: a hostile shard is bounded before anything is read, and never ends the run ------------------
def _forged_header(name: str, kind: bytes, size: int) -> bytes:
    """A 512-byte ustar header block with a base-256 size field (what a 5 KB shard can claim: 2^62 bytes)."""
    block = bytearray(512)
    block[0 : len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@pytest.mark.parametrize("kind", [b"x", b"L"])  # the audit's pax header (E7) and a GNU long name (E8)
def test_an_extended_header_claiming_2_to_the_62_bytes_is_a_broken_shard(tmp_path, kind):
    root = make_wds(tmp_path / "wds")
    shard = root / "test" / "1.tar"
    body = shard.read_bytes().rstrip(b"\0")
    body += b"\0" * (-len(body) % 512)
    shard.write_bytes(body + _forged_header("././@PaxHeader", kind, 2**62) + b"\0" * 1024)
    found = load(root)  # before: MemoryError, the whole run ended with "internal error"
    assert "not a readable tar" in found.members[-1].error
    assert [s.id for s in found.samples[:4]] == [f"test/0.tar/s000000{i}" for i in range(4)]


@pytest.mark.parametrize(
    "count, message",
    [
        ("9999999999", "must hold one number"),  # audit E9: 10 digits, over the 9-digit bound
        ("999999999", "names 999999999 shards, 2 .tar file(s) are there"),  # sibling: in bounds, far too many
        ("²", "must hold one number (ASCII digits)"),  # audit E10: isdigit() but not int()
        ("٣", "must hold one number (ASCII digits)"),  # sibling: an Arabic-Indic digit, which int() would take
    ],
)
def test_nshards_is_an_ascii_count_no_larger_than_the_shards_present(tmp_path, count, message):
    import time

    root = make_wds(tmp_path / "wds")
    (root / "test" / "nshards.txt").write_text(count + "\n")
    started = time.monotonic()
    with pytest.raises((UsageError, DatasetNotFound)) as err:
        load(root)
    assert message in str(err.value) and time.monotonic() - started < 5


def test_shard_names_with_non_ascii_digits_sort_without_crashing(tmp_path):
    root = make_wds(tmp_path / "wds")
    (root / "test" / "nshards.txt").unlink()
    (root / "test" / "1.tar").rename(root / "test" / "².tar")
    assert [s.id for s in load(root).samples][-1].startswith("test/².tar/")


def test_a_dry_run_with_a_hostile_shard_and_another_task_does_not_die(tmp_path, task_yaml):
    root = make_wds(tmp_path / "wds")
    shard = root / "test" / "0.tar"
    shard.write_bytes(_forged_header("././@PaxHeader", b"x", 2**62) + b"\0" * 1024)
    wds_yaml = tmp_path / "wds.yaml"
    wds_yaml.write_text(yaml.safe_dump({"task": "fx/wds", "dataset": {"format": "wds", "path": str(root)}}))
    r = cli("run", "--models", "demo/shapes-clean", "--tasks", f"{wds_yaml},{task_yaml}", "--dry-run")
    assert r.returncode == 0 and "internal error" not in r.stderr, r.stderr
