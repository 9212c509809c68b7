"""Shared fixtures: everything offline, CPU-only, built in the test (tiny models, generated images).

Speed (issue 13): the CLI runs in-process (``helpers.run_cli_inprocess``) except where the process itself is under
test; expensive shared data (COVAR-Shapes, the tiny open_clip model) is built once per session. Tests that still
take more than about 5 s are marked ``slow``. CI runs everything; for quick local iteration:

    python -m pytest -q -m "not slow"
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models gain nothing from threads, and busy CI cores make torch threads spin-wait on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Caches the CLI keeps in the user's home (text embeddings, the part-file key) go to a folder of this session.
import tempfile  # noqa: E402

_SESSION_CACHE = tempfile.mkdtemp(prefix="covar-harness-tests-")
os.environ["COVAR_HARNESS_TEXT_CACHE"] = os.path.join(_SESSION_CACHE, "text-embeddings")
os.environ["COVAR_HARNESS_PART_KEY"] = os.path.join(_SESSION_CACHE, "part-file.key")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import make_image_folder, make_openclip_dir, patch_everywhere, write_task_yaml  # noqa: E402
from toy_vit import LAYOUTS, SIDE, ToyPlugin, layout  # noqa: E402


def pytest_collection_modifyitems(items):
    """A test that needs the full COVAR-Shapes is ``slow``: run alone, it first waits for the generation."""
    for item in items:
        if "covar_shapes_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_external_plugins(monkeypatch):
    """Installed third-party plugins stay out of tests unless a test opts in."""
    monkeypatch.setenv("COVAR_HARNESS_PLUGINS", "")


@pytest.fixture(scope="session")
def openclip_dir(tmp_path_factory) -> Path:
    """A tiny random open_clip ViT saved as a local-dir model (config + safetensors)."""
    return make_openclip_dir(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def covar_shapes_data(tmp_path_factory) -> Path:
    """A data dir (``--data-dir``) holding the full COVAR-Shapes, generated once per session (seconds) and shared:
    use it read-only. Tests of the generation itself build their own copies. Tests using it are marked ``slow``."""
    from covar_harness_tasks import covar_shapes as cs

    data = tmp_path_factory.mktemp("shared-data")
    cs.ensure_covar_shapes(data / "covar-shapes", quiet=True)
    return data


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", classes=("cat", "dog", "fish"), per_class=4)


@pytest.fixture
def task_yaml(tmp_path, image_folder) -> Path:
    return write_task_yaml(tmp_path / "tasks" / "toy.yaml", "toy/shapes", image_folder)


# ---- the toy ViT with a planted truth (toy_vit.py) -------------------------------------------------------
@pytest.fixture
def toy_catalog(monkeypatch):
    """The CLI (in-process) sees the toy models and the masked format next to the built-ins."""
    from covar_harness.catalog import plugin_manager

    original = plugin_manager.load_catalog

    def load(include_paths=(), allow=None, extra_plugins=()):
        return original(include_paths, allow, [*extra_plugins, ToyPlugin()])

    patch_everywhere(monkeypatch, plugin_manager, "load_catalog", load)


@pytest.fixture
def toy_data(tmp_path) -> Path:
    """Four images of class 'object' (one per layout) with top-left masks, plus an empty 'background' class."""
    root = tmp_path / "toy"
    for sub in ("images", "masks"):
        (root / sub / "background").mkdir(parents=True)
        (root / sub / "object").mkdir(parents=True)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[:32, :32] = 255
    for j, tl in enumerate(LAYOUTS):
        layout(tl, seed=j).save(root / "images" / "object" / f"{j:02d}.png")
        Image.fromarray(mask).save(root / "masks" / "object" / f"{j:02d}.png")
    return root


@pytest.fixture
def masked_task(tmp_path, toy_data) -> Path:
    body = {
        "task": "toy/masked",
        "dataset": {"format": "toy-masked", "path": str(toy_data)},
        "templates": ["a photo of a {}."],
        "version": 1,
    }
    path = tmp_path / "tasks" / "masked.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture
def plain_task(tmp_path, toy_data) -> Path:
    return write_task_yaml(tmp_path / "tasks" / "plain.yaml", "toy/plain", toy_data / "images")
