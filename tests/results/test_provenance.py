"""Issue 13 item 6: ``provenance.git_commit`` is the harness's own commit or null, never the commit of a repository
the harness happens to be installed in (a virtualenv inside a user's project, a vendored copy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from covar_harness.results import files as results

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

PYPROJECT = '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "{name}"\ndynamic = ["version"]\n'


def _repo(root: Path) -> str:
    """A git repository at ``root`` with one commit of whatever is there; returns its HEAD."""

    def git(*args: str) -> str:
        return subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    root.mkdir(parents=True, exist_ok=True)
    git("init", "-q")
    (root / "README").write_text("x\n")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    return git("rev-parse", "HEAD")


def _checkout(root: Path, name: str = "covar-harness") -> Path:
    package = root / "harness" / "covar_harness"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    return package


def test_the_harness_checkout_records_its_commit(tmp_path):
    package = _checkout(tmp_path / "covar-harness")
    head = _repo(tmp_path / "covar-harness")
    assert results._git_commit(package) == head


def test_an_install_inside_a_users_repository_records_nothing(tmp_path):
    user = tmp_path / "my-project"
    package = user / ".venv" / "lib" / "python3.11" / "site-packages" / "covar_harness"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    _repo(user)
    assert results._git_commit(package) is None


def test_a_copy_vendored_into_a_users_repository_records_nothing(tmp_path):
    user = tmp_path / "my-project"
    package = _checkout(user / "third_party" / "covar-harness")  # a harness tree, but the repository is theirs
    _repo(user)
    assert results._git_commit(package) is None


def test_another_projects_checkout_records_nothing(tmp_path):
    package = _checkout(tmp_path / "other", name="not-the-harness")
    _repo(tmp_path / "other")
    assert results._git_commit(package) is None


def test_no_repository_records_nothing(tmp_path):
    assert results._git_commit(_checkout(tmp_path / "plain")) is None


def test_this_installation_records_its_own_checkout_or_nothing():
    commit = results._git_commit()
    root = results.PACKAGE_DIR.parents[1]
    if commit is not None:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert commit == head.stdout.strip() and results._is_harness_checkout(root)
    assert results.provenance("cpu", results.now())["git_commit"] == commit
