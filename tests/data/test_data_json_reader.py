"""Issue 25 item 5: one bounded, typed reader for every data JSON. A data file nested 100,000 deep or with a
field of the wrong type is a one-line error naming the file (and line), never "internal error", and a run's
data check says so with exit 2 instead of ending every other task with a traceback."""

from __future__ import annotations

import json

import pytest

from covar_harness.common.safe_files import JsonFormatError, field, parse_json, read_json
from covar_harness_tasks.covar import CovarFormatError, load_covar, read_classes
from covar_harness_tasks.retrieval import RetrievalFormatError, read_captions, read_karpathy
from helpers import make_covar, run_cli_inprocess

DEEP = "[" * 100_000 + "]" * 100_000


def deep_line(key: str = "variation") -> str:
    return f'{{"file_name": "img/cat0.png", "label": 0, "{key}": {DEEP}}}'


@pytest.mark.parametrize("text", [DEEP, '{"a": ' * 5000 + "1" + "}" * 5000, "[" * 65 + "]" * 65])
def test_the_reader_bounds_nesting_in_one_line(text):
    with pytest.raises(JsonFormatError) as err:
        parse_json(text, "f.json:3")
    assert str(err.value) == "f.json:3: JSON nested deeper than 64 levels"


def test_the_reader_types_fields_and_names_where():
    rec = parse_json('{"filepath": ["x"], "n": true, "s": "ok"}', "w")
    with pytest.raises(JsonFormatError, match=r"^w: 'filepath' must be str, got list$"):
        field(rec, "filepath", str, "w")
    with pytest.raises(JsonFormatError, match="'n' must be int, got bool"):
        field(rec, "n", int, "w")
    assert field(rec, "s", str, "w") == "ok" and field(rec, "absent", str, "w", required=False) is None
    with pytest.raises(JsonFormatError, match="not valid JSON"):
        parse_json(b"\xff\xfe", "w")


def test_a_deep_metadata_line_is_a_file_line_error(tmp_path):
    """Audit G1 (and its sibling: the same depth under another key, and in classes.json)."""
    root = make_covar(tmp_path / "covar", subsets=("hflip",))
    meta = root / "hflip" / "metadata.jsonl"
    for key in ("variation", "extra"):
        meta.write_text(json.dumps({"file_name": "img/cat0.png", "label": 0}) + "\n" + deep_line(key) + "\n")
        with pytest.raises(CovarFormatError, match=f"{meta}:2: JSON nested deeper than 64 levels"):
            load_covar({"format": "covar", "path": str(root), "subset": "hflip"}, tmp_path)
    (root / "classes.json").write_text(DEEP)
    with pytest.raises(CovarFormatError, match="nested deeper"):
        read_classes(root / "classes.json")


def test_deep_captions_and_karpathy_files_and_a_mistyped_filepath(tmp_path):
    """Audit F4, F6, F7; siblings: a mistyped 'filename' and a 'filepath' object."""
    captions = tmp_path / "captions.jsonl"
    good = '{"file_name": "a.png", "captions": ["x"]}\n'
    captions.write_text(good + '{"file_name": "b.png", "captions": ' + DEEP + "}\n")
    with pytest.raises(RetrievalFormatError, match=f"{captions}:2: JSON nested deeper"):
        read_captions(captions)
    karpathy = tmp_path / "k.json"
    karpathy.write_text('{"images": ' + DEEP + "}")
    with pytest.raises(RetrievalFormatError, match="nested deeper"):
        read_karpathy(karpathy, "test", "")
    for bad, message in (
        ({"filepath": ["x"]}, "'filepath' must be str, got list"),
        ({"filepath": {"a": 1}}, "'filepath' must be str, got dict"),
        ({"filename": ["x"]}, "'filename' must be a non-empty string"),
    ):
        item = {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a dog"}], **bad}
        karpathy.write_text(json.dumps({"images": [item]}))
        with pytest.raises(RetrievalFormatError) as err:
            read_karpathy(karpathy, "test", "")
        assert f"{karpathy}: images[0]: {message}" in str(err.value)


def test_read_json_refuses_non_regular_and_oversized_files(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(OSError, match="not a regular file"):
        read_json(tmp_path / "fifo.json")
    (tmp_path / "big.json").write_text("[" + "1," * 100 + "1]")
    with pytest.raises(OSError, match="over the 64-byte limit"):
        read_json(tmp_path / "big.json", 64)


def test_a_run_with_a_deep_metadata_line_exits_2_naming_the_file_and_line(tmp_path):
    """The audit's end-to-end case: before, `internal error: RecursionError` and exit 1 for the whole run."""
    root = make_covar(tmp_path / "data" / "covar", subsets=("hflip",))
    meta = root / "hflip" / "metadata.jsonl"
    with meta.open("a") as fh:
        fh.write(deep_line() + "\n")
    n = len(meta.read_text().splitlines())
    yaml_path = tmp_path / "cv.yaml"
    yaml_path.write_text(f"task: fx/cv\ndataset: {{format: covar, path: {json.dumps(str(root))}, subset: hflip}}\n")
    r = run_cli_inprocess(
        "run", "--models", "demo/shapes-clean", "--tasks", str(yaml_path), "--dry-run", "--workers", "0"
    )
    assert r.returncode == 2 and "internal error" not in r.stderr, r.stderr
    assert (
        f"metadata.jsonl:{n}: JSON nested deeper than 64 levels" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )
