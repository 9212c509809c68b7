"""The bundled demo models: load through `--models demo`, the clean one has learned shapes, the shortcut one
leans on the background (its accuracy collapses on bg_varied, the clean one's does not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covar_harness.results import files as results
from covar_harness_tasks import covar_shapes as cs
from helpers import run_cli_inprocess

MODELS = ("demo/shapes-clean", "demo/shapes-shortcut")
LIMIT = "150"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, covar_shapes_data) -> Path:
    """One CLI run of both demo models on original and bg_varied (a seeded subset), results in a folder."""
    base = tmp_path_factory.mktemp("demo")
    assert cs.is_current(covar_shapes_data / "covar-shapes")  # the session's generation, not one made by the run
    r = run_cli_inprocess(
        "run",
        "--models",
        "demo",
        "--tasks",
        "covar-shapes/original,covar-shapes/bg_varied",
        "--data-dir",
        str(covar_shapes_data),
        "--output-dir",
        str(base / "results"),
        "--limit",
        LIMIT,
        "--attribution",
        "none",
        "--batch-size",
        "150",
        "--workers",
        "0",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return base / "results"


def _acc(results_dir: Path, model: str, task: str) -> float:
    data = json.loads(results.result_path(results_dir, model, task).read_text())
    assert data["task"]["n_samples"] == int(LIMIT)
    return data["metrics"]["acc1"]


def test_demo_group_resolves_to_bundled_local_dir_models():
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.models.specs import resolve_models

    catalog = load_catalog()
    refs = resolve_models("demo", catalog)
    assert [r.spec for r in refs] == list(MODELS)
    for ref in refs:
        target = ref.target  # the name stands for this spec
        assert target.startswith("openclip:local-dir:") and ref.family == "openclip"
        folder = Path(target.split("local-dir:", 1)[1])
        assert (folder / "open_clip_config.json").is_file()
        weights = folder / "open_clip_model.safetensors"
        assert 1e6 < weights.stat().st_size < 10e6  # "a few MB"
    assert not [r for r in resolve_models("all", catalog) if r.spec in MODELS]  # demo is not in `all`


def test_clean_model_has_learned_shapes(demo_run):
    assert _acc(demo_run, MODELS[0], "covar-shapes/original") >= 0.6  # chance is 0.1
    assert _acc(demo_run, MODELS[0], "covar-shapes/bg_varied") >= 0.5


def test_shortcut_model_relies_on_backgrounds(demo_run):
    clean_orig = _acc(demo_run, MODELS[0], "covar-shapes/original")
    clean_drop = clean_orig - _acc(demo_run, MODELS[0], "covar-shapes/bg_varied")
    short_orig = _acc(demo_run, MODELS[1], "covar-shapes/original")
    short_drop = short_orig - _acc(demo_run, MODELS[1], "covar-shapes/bg_varied")
    assert short_orig >= 0.8  # its own background gives the answer away
    assert short_drop >= clean_drop + 0.4
