"""Issue 12 hardening of result files: injective slugs (6), non-finite numbers (8), safe reading and strict
validation of tampered files (13, 14)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from covar_harness.common.safe_files import slug
from covar_harness.results import files as results
from covar_harness.results import validation
from result_records import deadline, valid_record


# ---- 6: slugs ---------------------------------------------------------------------------------------------
def test_slugs_of_names_that_used_to_collide_differ():
    names = [
        "col/a b",
        "col/a_b",
        "col/a:b",
        "col/a  b",
        "u/猫",
        "u/狗",
        "u",
        "a_/b",
        "a/_b",
        "a__b",
        "a/b",
        "a b",
        "a_b",
        "A/b",
        "a/b/",
        "/a/b",
        "a.",
        "a",
        ".a",
    ]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names), dict(zip(names, slugs))


def test_slug_is_injective_on_every_short_string_over_a_tricky_alphabet():
    alphabet = ["a", "_", "/", ".", ":", "-", " ", "猫"]
    names = ["".join(t) for n in range(5) for t in itertools.product(alphabet, repeat=n)]
    seen: dict[str, str] = {}
    for name in names:
        s = slug(name)
        assert seen.setdefault(s, name) == name, f"{name!r} and {seen[s]!r} both -> {s!r}"


def test_safe_names_keep_todays_slugs_and_the_demo_paths():
    assert slug("demo/shapes-clean") == "demo__shapes-clean"
    assert slug("toy/good") == "toy__good"
    assert slug("covar/bg_varied") == "covar__bg_varied"
    out = Path("results")
    assert (
        results.result_path(out, "demo/shapes-clean", "covar-shapes/original")
        == out / "demo__shapes-clean" / "covar-shapes__original.json"
    )
    hashed = slug("openclip:ViT-B-32/openai")
    assert re.fullmatch(r"openclip_ViT-B-32__openai-[0-9a-f]{16}", hashed)
    assert slug("openclip:ViT-B-32/openai") == hashed  # stable


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "/",
        "../../etc/passwd",
        ".hidden",
        "..\\..\\x",
        "CON",
        "nul.txt",
        "com1",
        "x" * 300,
        "猫" * 300,
        "a/" * 150,
        "-" * 5 + "\x00\x1b[5m",
        "a-deadbeef",
    ],
)
def test_slugs_are_short_plain_names_inside_the_output_dir(tmp_path, name):
    s = slug(name)
    assert re.fullmatch(r"[A-Za-z0-9._=-]+", s) and len(s.encode()) <= 200
    assert s not in (".", "..") and not s.startswith(".")
    assert not re.fullmatch(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", s)
    path = results.result_path(tmp_path, name, name)
    assert path.resolve().parent.parent == tmp_path.resolve()
    assert len(results.samples_path(path).name) <= 255 - 14  # room for atomic_write's temp-file affixes


def test_a_name_spelling_out_another_names_hashed_slug_gets_its_own():
    hashed = slug("col/a b")
    assert slug(hashed) != hashed
    assert slug(hashed.replace("__", "/")) != hashed


def test_long_names_differing_only_at_the_end_get_different_files():
    a, b = "m/" + "x" * 300 + "a", "m/" + "x" * 300 + "b"
    assert slug(a) != slug(b)


# ---- 8: non-finite numbers --------------------------------------------------------------------------------
def test_write_json_and_jsonl_write_non_finite_numbers_as_null(tmp_path):
    obj = {
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": -math.inf,
        "ok": 0.5,
        "tuple": (1, float("nan")),
        "np32": np.float32("nan"),
        "np64": np.float64(0.25),
        "npint": np.int64(3),
        "npbool": np.bool_(True),
        "arr": np.array([1.0, np.nan, np.inf]),
        "nested": {"deep": [{"x": math.nan}]},
        np.int64(7): "key",
    }
    path = tmp_path / "r.json"
    results.write_json(path, obj)
    back = json.loads(path.read_text())
    assert back == {
        "nan": None,
        "inf": None,
        "ninf": None,
        "ok": 0.5,
        "tuple": [1, None],
        "np32": None,
        "np64": 0.25,
        "npint": 3,
        "npbool": True,
        "arr": [1.0, None, None],
        "nested": {"deep": [{"x": None}]},
        "7": "key",
    }
    rows = ({"i": i, "score": float("nan") if i else np.float32(0.5), "meta": {"w": math.inf}} for i in range(3))
    results.write_jsonl(tmp_path / "s.jsonl", rows)
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert lines == [{"i": 0, "score": 0.5, "meta": {"w": None}}] + [
        {"i": i, "score": None, "meta": {"w": None}} for i in (1, 2)
    ]
    assert not list(tmp_path.glob("*.tmp"))


# ---- 14: reading tampered files ---------------------------------------------------------------------------
def test_load_refuses_fifos_devices_and_folders_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "p.json")
    (tmp_path / "z.json").symlink_to("/dev/zero")
    (tmp_path / "d.json").mkdir()
    with deadline(10):
        for name in ("p.json", "z.json", "d.json"):
            with pytest.raises(ValueError, match="not a regular file"):
                results.load(tmp_path / name)


def test_load_caps_size_and_nesting(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # sparse: instant, and refused from its size alone
        fh.truncate(results.MAX_RESULT_BYTES + 1)
    with pytest.raises(ValueError, match="larger than"):
        results.load(big)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"x": "y" * 500}))
    with pytest.raises(ValueError, match="larger than"):
        results.load(small, max_bytes=100)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested deeper than 64"):
        results.load(deep)
    deep.write_text("[" * 65 + "]" * 65)
    with pytest.raises(ValueError, match="nested deeper"):
        results.load(deep)
    deep.write_text("[" * 64 + "]" * 64)
    assert results.load(deep)
    for literal in ("NaN", "Infinity", "-Infinity"):
        (tmp_path / "n.json").write_text(f'{{"acc1": {literal}}}')
        with pytest.raises(ValueError, match="not valid JSON"):
            results.load(tmp_path / "n.json")


def test_a_real_record_is_valid():
    assert validation.validate(valid_record()) == []
    assert validation.validate(json.loads(json.dumps(valid_record()))) == []
    assert validation.validate(valid_record()) == []  # the documented leaderboard-CI entry point


def _mutated(path: str, value) -> dict:
    rec = valid_record()
    *parents, last = path.split(".")
    node = rec
    for key in parents:
        node = node[key]
    node[last] = value
    return rec


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("intervals", "x", "intervals: must be an object"),
        ("intervals", ["x"], "intervals: must be an object"),
        ("intervals.acc1", "x", "intervals.acc1: must be [low, high]"),
        ("intervals.acc1", [0.1, 1e999], "intervals.acc1: must be [low, high]"),
        ("intervals.acc1", [True, 1], "intervals.acc1: must be [low, high]"),
        ("metrics.custom", "high", "metrics.custom: must be a finite number or null"),
        ("metrics.custom", True, "metrics.custom: must be a finite number or null"),
        ("metrics.custom", {"a": 1}, "metrics.custom: must be a finite number or null"),
        ("metrics.custom", [0.5], "metrics.custom: must be a finite number or null"),
        ("metrics.custom", 1e999, "metrics.custom: must be a finite number or null"),
        ("metrics.custom", 10**400, "metrics.custom: must be a finite number or null"),
        ("task.headline", "custom", "task.headline: names no metric"),
        ("task.headline", 3, "task.headline: expected str"),
        ("model.spec", "evil\x1b]8;;http://x\x1b\\link", "model.spec: must not contain control"),
        ("model.name", "a\x07b", "model.name: must not contain control"),
        ("model.family", "fam\x9b5m", "model.family: must not contain control"),
        ("model.target", "x\ny", "model.target: must not contain control"),
        ("task.name", "covar/\x1b[5mhflip", "task.name: must not contain control"),
        ("task.name", "covar/h\u202eflip", "task.name: must not contain control"),
        ("task.name", "covar/h\ud800", "task.name: must not contain control"),
        ("task.name", "   ", "task.name: must not be empty"),
        ("task.name", "t/" + "x" * 2000, "task.name: must be at most"),
        ("task.version", "1\x1b", "task.version: must not contain control"),
        ("task.tags", "demo", "task.tags: must be a list of strings"),
        ("task.tags", ["ok", 3], "task.tags: must be a list of strings"),
        ("task.tags", ["a\tb"], "task.tags: 'a\\tb' must not contain control"),
        ("notes", ["fine", "bad \x1b[2J"], "notes:"),
        ("notes", "x", "notes: must be a list of strings"),
        ("failed_files", [1], "failed_files: must be a list of strings"),
        ("config.templates", [1], "config.templates: must be a list of strings"),
        ("task.dataset", {"x": 1}, "task.dataset: expected str or null"),
        ("schema_version", True, "schema_version: expected 1"),
        ("task.n_samples", True, "task.n_samples: expected int"),
    ],
)
def test_validate_rejects_tampered_fields(path, value, message):
    errors = validation.validate(_mutated(path, value))
    assert any(e.startswith(message) for e in errors), errors


def test_headline_naming_a_non_numeric_metric_is_invalid():
    rec = valid_record()
    rec["metrics"]["label"] = "cat"
    rec["task"]["headline"] = "label"
    errors = validation.validate(rec)
    assert "task.headline: metric 'label' is not a number" in errors


def test_validate_messages_stay_short_for_huge_values():
    rec = valid_record()
    rec["task"]["headline"] = "h" * 100_000
    rec["schema_version"] = "s" * 100_000
    assert all(len(e) < 300 for e in validation.validate(rec))


def test_metric_names_with_control_characters_are_invalid():
    rec = valid_record()
    rec["metrics"]["acc\x1b[5m"] = 0.5
    rec["intervals"]["x\ny"] = [0.1, 0.2]
    errors = validation.validate(rec)
    assert any(e.startswith("metrics: name") for e in errors) and any(e.startswith("intervals: name") for e in errors)


def test_optional_parts_may_be_absent_or_null():
    rec = copy.deepcopy(valid_record())
    for key in ("intervals", "notes", "failed_files"):
        del rec[key]
    del rec["task"]["tags"], rec["task"]["headline"], rec["model"]["target"]
    assert validation.validate(rec) == []
    rec["intervals"] = None
    rec["task"]["dataset"] = None
    rec["model"]["family"] = ""
    assert validation.validate(rec) == []


def test_result_files_lists_json_recursively_without_following_folder_links(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("x.json", "a/y.json", "a/b/z.json", "a/y.samples.jsonl", "a/notes.txt"):
        (tmp_path / rel).write_text("{}")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)  # a loop: must not be followed
    found, problems = results.result_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/z.json", "a/y.json", "x.json"]
    assert problems == []
