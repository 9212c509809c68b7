"""The paper's 18 models: stable names from the packaged table, valid open_clip specs, groups and globs, and a
dry run that lists them all without fetching anything."""

from __future__ import annotations

import pytest

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UnknownNameError
from covar_harness.models.specs import resolve_models
from covar_harness_plugins import paper
from helpers import cli


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(allow="")


def test_eighteen_named_models_from_the_packaged_table(catalog):
    rows = paper.paper_rows()
    names = catalog.models.tagged("paper")
    assert len(rows) == 18 and len(names) == 18 == len(set(names))
    assert names == [paper.model_name(r) for r in rows]  # table order, names derived from the rows
    assert "paper/vit-b-32-256-datacomp" in names and "paper/vit-l-14-336-openai" in names
    for row in rows:
        entry = catalog.models.entry(paper.model_name(row))
        assert entry.item == f"openclip:{row['openclip_model']}/{row['openclip_pretrained']}"
        assert {"paper", paper.family(row)} == set(entry.tags) and entry.description


def test_specs_are_open_clip_pretrained_pairs_with_quickgelu_for_openai_and_dfn(catalog):
    import open_clip

    known = set(open_clip.list_pretrained())
    for name in catalog.models.tagged("paper"):
        arch, tag = catalog.models.get(name).removeprefix("openclip:").split("/")
        assert (arch, tag) in known, name
        if tag.startswith(("openai", "dfn")):
            assert arch.endswith("-quickgelu"), name


def test_groups_globs_and_names_resolve(catalog):
    paper_refs = resolve_models("paper", catalog)
    assert len(paper_refs) == 18 and all(r.family == "openclip" for r in paper_refs)
    everything = {r.spec for r in resolve_models("all", catalog)}
    assert {r.spec for r in paper_refs} <= everything
    assert not any("demo" in catalog.models.entry(s).tags for s in everything)
    siglips = [r.spec for r in resolve_models("paper/*siglip*", catalog)]
    assert len(siglips) == 5 and all("siglip" in s for s in siglips)
    assert len(resolve_models("siglip2", catalog)) == 4  # the family tag is a group too
    one = resolve_models("paper/vit-b-32-224-openai,paper/*openai", catalog)
    assert [r.spec for r in one][0] == "paper/vit-b-32-224-openai" and len(one) == 4  # de-duplicated
    assert one[0].target == "openclip:ViT-B-32-quickgelu/openai"
    with pytest.raises(UnknownNameError, match="did you mean 'paper/vit-b-32-224-openai'"):
        resolve_models("paper/vit-b-32-224-opena", catalog)


@pytest.mark.slow  # a real process: HF_HOME / XDG_CACHE_HOME are read once, when the libraries are imported
def test_ls_and_dry_run_list_all_eighteen_without_downloading(tmp_path, task_yaml):
    hf_home = tmp_path / "hf_home"
    env = {"COLUMNS": "400", "HF_HOME": str(hf_home), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    listing = cli("ls", "models", env=env)
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if "paper/vit-b-16-224-openai " in ln)
    assert "openclip" in line and "openclip:ViT-B-16-quickgelu/openai" in line and "paper,clip" in line
    plan = cli(
        "run",
        "--dry-run",
        "--models",
        "paper",
        "--tasks",
        "toy/shapes",
        "--include-path",
        str(task_yaml),
        "--output-dir",
        str(tmp_path / "out"),
        env=env,
    )
    assert plan.returncode == 0, plan.stderr
    for name in paper.paper_rows():
        assert paper.model_name(name) in plan.stdout
    assert "18 model(s) x 1 task(s)" in plan.stdout
    assert not hf_home.exists() and not (tmp_path / "xdg").exists() and not (tmp_path / "out").exists()
