"""Issue 13 item 6: one version source, and upper bounds on the libraries whose private internals the adapters call.

The adapters reach into open_clip (``VisionTransformer._embeds`` / ``_pool``), timm (``VisionTransformer._pos_embed``,
``patch_drop``, ``norm_pre``) and transformers (vision-tower embeddings / encoder / heads, SigLIP2's
``get_image_size_for_max_num_patches``). A new major version may change any of them, so pyproject bounds each to
the range the parity tests (tests/models/test_openclip_token_removal.py, test_hf_token_removal.py, test_hf_adapter.py)
have passed on. To widen a range: run those tests on the new version, then change TESTED_RANGES and pyproject
together.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import covar_harness

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the 3.10 CI leg skips the file checks

ROOT = Path(__file__).resolve().parents[2]
TESTED_RANGES = {
    "open_clip_torch": ">=3.0,<4",  # tested: 3.3.0
    "timm": ">=1.0,<2",  # tested: 1.0.x (open_clip's timm towers: SigLIP, SigLIP2)
    "transformers": ">=4.45,<6",  # tested: 5.x; 4.x return types handled (covar_harness_plugins/transformers.py)
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _dependencies() -> dict[str, Requirement]:
    reqs = [Requirement(text) for text in _pyproject()["project"]["dependencies"]]
    return {r.name.lower().replace("-", "_"): r for r in reqs}


@pytest.mark.parametrize("name", sorted(TESTED_RANGES))
def test_pyproject_bounds_each_internals_library_to_the_tested_range(name):
    requirement = _dependencies()[name]
    assert requirement.specifier == SpecifierSet(TESTED_RANGES[name]), (
        f"pyproject says {name}{requirement.specifier}, the tested range is {TESTED_RANGES[name]}"
    )
    assert any(spec.operator == "<" for spec in requirement.specifier), f"{name} needs an upper bound"


@pytest.mark.parametrize("name", sorted(TESTED_RANGES))
def test_the_installed_version_lies_in_the_tested_range(name):
    installed = Version(metadata.version(name))
    assert installed in SpecifierSet(TESTED_RANGES[name]), f"{name} {installed} is outside {TESTED_RANGES[name]}"


def test_the_version_has_one_source():
    """pyproject reads covar_harness.__version__; the installed metadata, --version and provenance agree."""
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "covar_harness.__version__"}
    assert metadata.version("covar-harness") == covar_harness.__version__


def test_setuptools_resolves_the_same_version():
    config = pytest.importorskip("setuptools.config.pyprojecttoml")
    resolved = config.read_configuration(ROOT / "pyproject.toml", expand=True)["project"]["version"]
    assert resolved == covar_harness.__version__


def test_cli_and_provenance_report_that_version():
    from covar_harness.results import files as results
    from helpers import run_cli_inprocess

    run = run_cli_inprocess("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"covar-harness {covar_harness.__version__}"
    assert results.provenance("cpu", results.now())["harness_version"] == covar_harness.__version__
