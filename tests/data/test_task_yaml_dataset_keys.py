"""Issue 25 (new-user friction): a typo inside a task YAML's ``dataset:`` mapping passed silently (``pth:`` left
the path unset, ``subsset:`` evaluated the default subset). It is refused with the close match; a key that is no
typo of a known one stays a plugin format's own option."""

from __future__ import annotations

import pytest

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.taskconfig import TaskConfigError, parse_task
from helpers import run_cli_inprocess, write_task_yaml


@pytest.mark.parametrize(
    "typo, meant",
    [("pth", "path"), ("subsset", "subset"), ("splt", "split"), ("revison", "revision"), ("image_keys", "image_key")],
)
def test_a_dataset_key_typo_is_refused_with_the_close_match(typo, meant):
    raw = {"task": "t/x", "dataset": {"format": "covar", typo: "x"}}
    with pytest.raises(TaskConfigError) as err:
        parse_task(raw)
    assert f"key 'dataset.{typo}': unknown key (did you mean {meant!r}?)" in str(err.value)


def test_a_plugin_formats_own_key_passes():
    cfg = parse_task({"task": "t/x", "dataset": {"format": "myformat", "mask_dir": "m", "bucket": "b"}})
    assert cfg.dataset["mask_dir"] == "m"


def test_every_shipped_task_still_loads():
    assert len(load_catalog().tasks.resolve("*")) > 20


def test_run_refuses_the_typo_in_one_line(tmp_path, image_folder):
    path = write_task_yaml(tmp_path / "t.yaml", "toy/shapes", image_folder)
    path.write_text(path.read_text().replace("  path:", "  pth:"))
    r = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", str(path), "--dry-run")
    assert r.returncode == 2 and "did you mean 'path'?" in r.stderr and len(r.stderr.strip().splitlines()) == 1
