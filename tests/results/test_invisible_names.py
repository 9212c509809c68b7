"""Issue 25 item 10: names that print like another name are refused where they enter (task YAML, --models) and in
result files (validate), and look-alike duplicates are reported by ``validate --strict``."""

from __future__ import annotations

import json

import pytest

from covar_harness.common.console import unsafe_name
from covar_harness.results import validation
from covar_harness.results.submission import look_alike_key
from helpers import run_cli_inprocess, write_task_yaml
from result_records import valid_record

# the audit's list (table 2L, L1), then siblings it did not try: Mongolian vowel separator, invisible times,
# interlinear annotation, and white space at either end (D14)
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u061c", "\u2060", "\ufeff", "\u00ad", "\U000e0001"]
SIBLINGS = ["\u180e", "\u2062", "\ufff9", " ", "\u3000"]


@pytest.mark.parametrize("char", INVISIBLE + SIBLINGS)
def test_an_invisible_character_makes_a_name_unsafe_and_the_file_invalid(char):
    spec = "demo/shapes-shortcut" + char
    assert unsafe_name(spec)
    errors = validation.validate(valid_record(model=spec))
    assert any(e.startswith("model.spec: must not contain") for e in errors), errors
    assert look_alike_key(spec) == look_alike_key("demo/shapes-shortcut")


def test_ordinary_names_stay_valid():
    for name in ("demo/shapes-clean", "openclip:ViT-B-32/laion2b", "猫/犬", "café/naïve", "a b"):
        assert not unsafe_name(name), name
        assert not validation.validate(valid_record(model=name))


def test_a_task_yaml_or_a_model_spec_with_an_invisible_character_is_refused_up_front(tmp_path, image_folder):
    path = write_task_yaml(tmp_path / "t.yaml", "toy/sha\u200bpes", image_folder)
    r = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", str(path), "--dry-run")
    assert r.returncode == 2 and "invisible" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    good = write_task_yaml(tmp_path / "g.yaml", "toy/shapes", image_folder)
    r = run_cli_inprocess("run", "--models", "demo/shapes-clean\u2060", "--tasks", str(good), "--dry-run")
    assert r.returncode == 2 and "invisible" in r.stderr, r.stderr


def test_validate_refuses_the_audits_look_alike_files(tmp_path):
    """Audit 2D D13 / D14: the genuine spec plus U+200B, or plus a trailing space, beside the genuine file."""
    folder = tmp_path / "r"
    folder.mkdir()
    for i, spec in enumerate(("demo/shapes-shortcut", "demo/shapes-shortcut\u200b", "demo/shapes-shortcut ")):
        (folder / f"{i}.json").write_text(json.dumps(valid_record(model=spec)))
    r = run_cli_inprocess("validate", str(folder))
    assert r.returncode == 1 and r.stdout.count(": ok") == 1 and "2 invalid" in r.stdout, r.stdout
