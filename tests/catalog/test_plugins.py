"""Plugin discovery through real entry points, the allowlist variable, and torch-free listing."""

import json
import textwrap
from pathlib import Path

import pytest

from helpers import run_cli_inprocess

PLUGIN_SRC = '''
from covar_harness import hookimpl


class TinyAdapter:
    """A model that needs no weights: colour channel means as the embedding."""

    name = "thirdparty/colour-means"
    family = "thirdparty"

    def preprocess(self, image):
        import torch
        import numpy as np
        arr = np.asarray(image.resize((8, 8)), dtype="float32") / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    def encode_images(self, pixels):
        return pixels.mean(dim=(2, 3))

    def encode_texts(self, texts):
        import torch
        table = {"cat": [1.0, 0, 0], "dog": [0, 1.0, 0], "fish": [0, 0, 1.0]}
        return torch.tensor([next(v for k, v in table.items() if k in t) for t in texts])


@hookimpl
def register_models(register):
    register("thirdparty/colour-means", TinyAdapter, tags=("thirdparty",), description="channel means")


@hookimpl
def register_tasks(register):
    register({"task": "thirdparty/colours", "dataset": {"format": "imagefolder", "path": DATA},
              "templates": ["a photo of a {}."]})
'''


def make_distribution(root: Path, data_dir: Path) -> Path:
    """A throwaway installed distribution: a module plus a .dist-info with an entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "colourplug.py").write_text(PLUGIN_SRC.replace("DATA", repr(str(data_dir))))
    info = root / "colourplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: colourplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[covar_harness]\ncolour = colourplug\n")
    return root


@pytest.fixture
def plugin_env(tmp_path, image_folder):
    site = make_distribution(tmp_path / "site", image_folder)
    return {"PYTHONPATH": str(site), "COVAR_HARNESS_PLUGINS": "colourplug"}


def test_third_party_plugin_is_discovered_listed_and_runs(plugin_env, tmp_path):
    ls = run_cli_inprocess("ls", "models", env=plugin_env)
    assert ls.returncode == 0 and "thirdparty/colour-means" in ls.stdout
    tasks = run_cli_inprocess("ls", "tasks", env=plugin_env)
    assert "thirdparty/colours" in tasks.stdout
    plugins = json.loads(run_cli_inprocess("plugins", "--json", env=plugin_env).stdout)
    mine = [p for p in plugins if p["distribution"] == "colourplug"]
    assert mine and mine[0]["hooks"] == ["register_models", "register_tasks"] and not mine[0]["builtin"]
    out = tmp_path / "results"
    run = run_cli_inprocess(
        "run",
        "--models",
        "thirdparty",
        "--tasks",
        "thirdparty/*",
        "--output-dir",
        str(out),
        "--workers",
        "0",
        env=plugin_env,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(next(out.rglob("*.json")).read_text())
    assert result["metrics"]["acc1"] == 1.0  # colour means separate the colour classes perfectly
    assert result["model"]["family"] == "thirdparty"


def test_allowlist_variable_filters_third_party_but_keeps_builtins(plugin_env):
    env = {**plugin_env, "COVAR_HARNESS_PLUGINS": ""}
    names = [p["name"] for p in json.loads(run_cli_inprocess("plugins", "--json", env=env).stdout)]
    assert "colour" not in names and "openclip" in names
    env = {**plugin_env, "COVAR_HARNESS_PLUGINS": "someone-else"}
    assert "thirdparty/colour-means" not in run_cli_inprocess("ls", "models", env=env).stdout
    unknown = run_cli_inprocess("run", "--models", "thirdparty/colour-means", "--tasks", "x", "--dry-run", env=env)
    assert unknown.returncode == 2


def test_help_run_help_ls_and_plugins_do_not_import_torch(plugin_env):
    import subprocess
    import sys

    code = textwrap.dedent("""
        import sys
        from covar_harness.cli.main import main
        for argv in (["ls", "models"], ["ls", "tasks"], ["plugins"], ["ls", "attributors"]):
            assert main(argv) == 0, argv
        for argv in (["--help"], ["run", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        from covar_harness.models.specs import resolve_device
        assert resolve_device("cpu") == "cpu"  # --device cpu: torch is not even imported to resolve it
        heavy = sorted(m for m in ("torch", "open_clip", "transformers", "datasets") if m in sys.modules)
        print("HEAVY:" + ",".join(heavy))
    """)
    import os

    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **plugin_env}, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY:\n" in proc.stdout or proc.stdout.strip().endswith("HEAVY:"), proc.stdout


def test_in_process_plugins_register_without_touching_globals(image_folder):
    from covar_harness import hookimpl
    from covar_harness.catalog.plugin_manager import load_catalog

    class Plug:
        @hookimpl
        def register_models(self, register):
            register("inproc/model", lambda: "openclip:ViT-B-32", tags=("inproc",))

    cat = load_catalog(extra_plugins=[Plug()])
    assert "inproc/model" in cat.models
    assert "inproc/model" not in load_catalog().models  # nothing leaked into the next catalog


def test_a_name_registered_as_a_spec_string_loads_that_spec(openclip_dir):
    from covar_harness import hookimpl
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.models.specs import load_model, resolve_models

    class Plug:
        @hookimpl
        def register_models(self, register):
            register("alias/tiny", f"openclip:local-dir:{openclip_dir}", tags=("aliases",))
            register("alias/of-alias", "alias/tiny")

    cat = load_catalog(extra_plugins=[Plug()])
    (ref,) = resolve_models("aliases", cat)
    assert (ref.target, ref.family) == (f"openclip:local-dir:{openclip_dir}", "openclip")
    adapter = load_model("alias/of-alias", catalog=cat)
    assert adapter.family == "openclip" and adapter.name == f"openclip:local-dir:{openclip_dir}"
