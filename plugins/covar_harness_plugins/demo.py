"""Built-in plugin: the offline demo (docs/design.md section 4, group ``demo``).

Registers the ``covar-shapes`` dataset format (procedural COVAR-Shapes, generated on first use) and the two
bundled tiny open_clip models trained on it: ``demo/shapes-clean`` (backgrounds independent of the class) and
``demo/shapes-shortcut`` (class i shown on background family i 90 % of the time). They are plain
``openclip:local-dir:`` folders shipped as package data, so they load through the normal open_clip path and
need no network. Nothing heavy is imported here: the format's loader imports what it needs when called.
"""

from __future__ import annotations

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.data.resources import resource_path
from covar_harness_tasks.covar_shapes import load_covar_shapes, preflight_covar_shapes

DEMO_MODELS = {
    "demo/shapes-clean": ("shapes-clean", "tiny ViT, COVAR-Shapes, backgrounds independent of the class"),
    "demo/shapes-shortcut": ("shapes-shortcut", "tiny ViT with a planted shortcut: class i on background i (p=0.9)"),
}


def demo_model_dir(folder: str) -> str:
    """Filesystem path of a bundled demo model folder (package data under resources/demo/)."""

    return str(resource_path("demo", folder))


def _load_covar_shapes(ds: dict, data_dir):
    return load_covar_shapes(ds, data_dir)


def _preflight_covar_shapes(ds: dict, data_dir):
    return preflight_covar_shapes(ds, data_dir)


@hookimpl
def register_dataset_formats(register):
    register(
        "covar-shapes",
        _load_covar_shapes,
        preflight=_preflight_covar_shapes,
        description="procedural COVAR-Shapes, generated on first use into <data-dir>/covar-shapes",
    )


def demo_spec(folder: str) -> str:
    """The model spec a demo name stands for: the bundled folder through the normal open_clip path."""
    return f"openclip:local-dir:{demo_model_dir(folder)}"


@hookimpl
def register_models(register):
    for name, (folder, description) in DEMO_MODELS.items():
        register(name, demo_spec(folder), tags=("demo",), description=description)
