"""``run --shard i/n``: n independent jobs cover the models x tasks grid once (issue 16 item 2)."""

import itertools
import json
from types import SimpleNamespace

import pytest

from covar_harness.catalog.registry import UsageError
from covar_harness.run.plan import parse_shard, shard_pairs
from helpers import make_image_folder, patch_everywhere, write_task_yaml
from helpers import run_cli_inprocess as cli


def _grid(n_models: int, n_tasks: int):
    models = [SimpleNamespace(spec=f"model-{m}") for m in range(n_models)]
    tasks = [SimpleNamespace(task=f"task/{t}") for t in range(n_tasks)]
    return models, tasks


@pytest.mark.parametrize("n_models,n_tasks", [(1, 1), (3, 4), (18, 10), (2, 7)])
def test_shards_partition_the_grid(n_models, n_tasks):
    models, tasks = _grid(n_models, n_tasks)
    grid = {(m.spec, t.task) for m in models for t in tasks}
    for n in (1, 2, 3, 5, 8, 40):
        shards = [[(m.spec, t.task) for m, t in shard_pairs(models, tasks, (i, n))] for i in range(n)]
        union = [pair for shard in shards for pair in shard]
        assert len(union) == len(set(union)) == len(grid)  # no pair twice
        assert set(union) == grid  # none left out
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1  # balanced


def test_the_split_does_not_depend_on_the_order_of_models_and_tasks():
    models, tasks = _grid(3, 4)
    for i in range(3):
        a = {(m.spec, t.task) for m, t in shard_pairs(models, tasks, (i, 3))}
        b = {(m.spec, t.task) for m, t in shard_pairs(models[::-1], tasks[::-1], (i, 3))}
        assert a == b


def test_a_shard_keeps_run_order_model_by_model():
    models, tasks = _grid(3, 4)
    pairs = shard_pairs(models, tasks, (1, 2))
    order = [m.spec for m, _ in pairs]
    assert order == sorted(order)  # each model's pairs together: it loads once
    assert shard_pairs(models, tasks, None) == list(itertools.product(models, tasks))


@pytest.mark.parametrize("text", ["0/1", "3/4", " 1 / 2 "])
def test_valid_shards_parse(text):
    i, n = parse_shard(text)
    assert 0 <= i < n


@pytest.mark.parametrize("text", ["4/4", "1/0", "0/0", "-1/2", "a/b", "1", "1/2/3", "", "1.0/2"])
def test_invalid_shards_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


@pytest.fixture
def two_tasks(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=1)
    return [write_task_yaml(tmp_path / f"t{i}.yaml", f"toy/t{i}", folder) for i in range(2)]


def _run(openclip_dir, tasks, out, *extra):
    return cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        ",".join(map(str, tasks)),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--attribution",
        "none",
        "--text-cache",
        "none",
        *extra,
    )


def test_an_invalid_shard_exits_2_before_anything_loads(openclip_dir, two_tasks, tmp_path, monkeypatch):
    from covar_harness.models import specs as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    patch_everywhere(monkeypatch, models, "load_model", no_load)
    r = _run(openclip_dir, two_tasks, tmp_path / "out", "--shard", "2/2")
    assert r.returncode == 2 and "--shard" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_the_dry_run_shows_only_the_shards_pairs(openclip_dir, two_tasks, tmp_path):
    seen = []
    for i in range(2):
        r = _run(openclip_dir, two_tasks, tmp_path / "out", "--shard", f"{i}/2", "--dry-run")
        assert r.returncode == 0, r.stderr
        seen.append([name for name in ("toy/t0", "toy/t1") if name in r.stdout])
    assert seen == [["toy/t0"], ["toy/t1"]]


def test_shard_jobs_write_the_grid_once(openclip_dir, two_tasks, tmp_path):
    out = tmp_path / "out"
    for i in range(2):
        assert _run(openclip_dir, two_tasks, out, "--shard", f"{i}/2").returncode == 0
        assert len(list(out.rglob("*.json"))) == i + 1
    tasks = sorted(json.loads(p.read_text())["task"]["name"] for p in out.rglob("*.json"))
    assert tasks == ["toy/t0", "toy/t1"]
