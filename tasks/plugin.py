"""Built-in plugin: the task YAML files shipped in this folder and the benchmark-specific dataset formats."""

from pathlib import Path

from covar_harness.hookspecs import hookimpl

TASK_DIR = Path(__file__).parent


@hookimpl
def register_tasks(register):
    for sub in sorted(p for p in TASK_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        register(sub)


def _on_use(module: str, name: str):
    """``covar_harness.tasks.<module>.<name>``, imported when first called: ``ls`` and ``--help`` stay light."""

    def call(ds_cfg, data_dir):
        from importlib import import_module

        return getattr(import_module(f"covar_harness.tasks.{module}"), name)(ds_cfg, data_dir)

    call.__name__ = call.__qualname__ = name
    return call


@hookimpl
def register_dataset_formats(register):
    register(
        "covar",
        _on_use("covar", "load_covar"),
        preflight=_on_use("covar", "preflight_covar"),
        description="COVAR layout: classes.json + <subset>/metadata.jsonl (+ masks, source_id, variation)",
    )
    register(
        "counteranimals",
        _on_use("counteranimals", "load_counteranimals"),
        preflight=_on_use("counteranimals", "preflight_counteranimals"),
        description="CounterAnimal release: LAION-final/<ImageNet idx> <names>/{common-*,counter-*}/ (or hf_id)",
    )
    register(
        "waterbirds",
        _on_use("waterbirds", "load_waterbirds"),
        preflight=_on_use("waterbirds", "preflight_waterbirds"),
        description="Waterbirds release: waterbird_complete95_forest2water2/metadata.csv + images (split 2 = test)",
    )
    register(
        "imagenet_wnids",
        _on_use("imagenet_shifts", "load_imagenet_wnids"),
        preflight=_on_use("imagenet_shifts", "preflight_imagenet_wnids"),
        description="ImageNet subset by wnid: <root>/<wnid>/<images> (ImageNet-R/A); classes = wnid folders present",
    )
