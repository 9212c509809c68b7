"""Registry lookups, task YAML validation and --tasks resolution."""

from pathlib import Path

import pytest
import yaml

from covar_harness.catalog.registry import Entry, Registry, UnknownNameError, UsageError
from covar_harness.catalog.taskconfig import TaskConfigError, TaskIndex, load_task_file, parse_task


def test_registry_suggests_close_names_and_rejects_duplicates():
    reg = Registry("model")
    reg.add(Entry("paper/vit-b-32", object(), aliases=("b32",), tags=("paper",)))
    reg.add(Entry("demo/shapes-clean", object(), tags=("demo",)))
    with pytest.raises(UnknownNameError) as err:
        reg.get("paper/vit-b-23")
    assert "did you mean 'paper/vit-b-32'" in str(err.value)
    assert reg.entry("b32").name == "paper/vit-b-32"
    assert reg.match("*/vit-*") == ["paper/vit-b-32"]
    assert reg.tagged("demo") == ["demo/shapes-clean"]
    with pytest.raises(UsageError, match="registered twice"):
        reg.add(Entry("b32", object()))


def _write(path: Path, body) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body) if not isinstance(body, str) else body)
    return path


def test_task_yaml_errors_name_file_and_key(tmp_path):
    bad_key = _write(tmp_path / "a.yaml", {"task": "x/a", "dataset": {"format": "imagefolder"}, "templtes": ["{}"]})
    with pytest.raises(TaskConfigError) as err:
        load_task_file(bad_key)
    assert (
        str(bad_key) in str(err.value)
        and "'templtes'" in str(err.value)
        and "did you mean 'templates'" in str(err.value)
    )
    missing = _write(tmp_path / "b.yaml", {"task": "x/b"})
    with pytest.raises(TaskConfigError, match=r"b\.yaml: key 'dataset': missing"):
        load_task_file(missing)
    no_placeholder = {"task": "x/c", "dataset": {"format": "hf"}, "templates": ["a photo"]}
    with pytest.raises(TaskConfigError, match="placeholder"):
        parse_task(no_placeholder)
    with pytest.raises(TaskConfigError, match="cannot read task YAML"):
        load_task_file(_write(tmp_path / "c.yaml", "task: [unclosed"))


def test_yaml_is_data_not_code(tmp_path):
    evil = _write(
        tmp_path / "evil.yaml", "task: !!python/object/apply:os.system ['echo pwned']\ndataset: {format: hf}\n"
    )
    with pytest.raises(TaskConfigError, match="cannot read task YAML"):
        load_task_file(evil)


def test_resolve_names_globs_tags_and_paths(tmp_path):
    index = TaskIndex()
    for name in ("covar/hflip", "covar/vflip", "other/x"):
        index.add(parse_task({"task": name, "dataset": {"format": "hf"}, "tags": [name.split("/")[0]]}))
    assert [t.task for t in index.resolve("covar/*")] == ["covar/hflip", "covar/vflip"]
    assert [t.task for t in index.resolve("other, covar/vflip")] == ["other/x", "covar/vflip"]
    f = _write(tmp_path / "mine.yaml", {"task": "mine/one", "dataset": {"format": "hf"}})
    assert [t.task for t in index.resolve(str(f))] == ["mine/one"]
    with pytest.raises(UnknownNameError, match="did you mean 'covar/hflip'"):
        index.resolve("covar/hflp")
    with pytest.raises(UnknownNameError, match="unknown task pattern"):
        index.resolve("nothing/*")
    with pytest.raises(UsageError, match="does not exist"):
        index.resolve(str(tmp_path / "missing.yaml"))


def test_include_path_adds_tasks_and_duplicates_are_reported(tmp_path):
    from covar_harness.catalog.plugin_manager import load_catalog

    d = tmp_path / "extra"
    _write(d / "one.yaml", {"task": "extra/one", "dataset": {"format": "imagefolder", "path": "."}})
    cat = load_catalog(include_paths=[d])
    assert "extra/one" in cat.tasks
    _write(tmp_path / "dup" / "again.yaml", {"task": "extra/one", "dataset": {"format": "hf"}})
    with pytest.raises(TaskConfigError, match="defined twice"):
        load_catalog(include_paths=[d, tmp_path / "dup"])
