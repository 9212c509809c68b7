"""Shared fixtures: everything offline, CPU-only, built in the test (tiny models, generated images)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models gain nothing from threads, and busy CI cores make torch threads spin-wait on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_image_folder, make_openclip_dir, write_task_yaml  # noqa: E402


@pytest.fixture(autouse=True)
def _no_external_plugins(monkeypatch):
    """Installed third-party plugins stay out of tests unless a test opts in."""
    monkeypatch.setenv("COVAR_HARNESS_PLUGINS", "")


@pytest.fixture(scope="session")
def openclip_dir(tmp_path_factory) -> Path:
    """A tiny random open_clip ViT saved as a local-dir model (config + safetensors)."""
    return make_openclip_dir(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", classes=("cat", "dog", "fish"), per_class=4)


@pytest.fixture
def task_yaml(tmp_path, image_folder) -> Path:
    return write_task_yaml(tmp_path / "tasks" / "toy.yaml", "toy/shapes", image_folder)
