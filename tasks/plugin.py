"""Built-in plugin: the task YAML files shipped in this folder and the benchmark-specific dataset formats."""

from pathlib import Path

from covar_harness.hookspecs import hookimpl

TASK_DIR = Path(__file__).parent


@hookimpl
def register_tasks(register):
    for sub in sorted(p for p in TASK_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        register(sub)


def _load_covar(ds_cfg, data_dir):
    from covar_harness.tasks.covar import load_covar  # imported on use: `ls` and `--help` stay light

    return load_covar(ds_cfg, data_dir)


def _load_counteranimals(ds_cfg, data_dir):
    from covar_harness.tasks.counteranimals import load_counteranimals

    return load_counteranimals(ds_cfg, data_dir)


def _preflight_covar(ds_cfg, data_dir):
    from covar_harness.tasks.covar import preflight_covar

    return preflight_covar(ds_cfg, data_dir)


def _preflight_counteranimals(ds_cfg, data_dir):
    from covar_harness.tasks.counteranimals import preflight_counteranimals

    return preflight_counteranimals(ds_cfg, data_dir)


def _load_waterbirds(ds_cfg, data_dir):
    from covar_harness.tasks.waterbirds import load_waterbirds

    return load_waterbirds(ds_cfg, data_dir)


def _preflight_waterbirds(ds_cfg, data_dir):
    from covar_harness.tasks.waterbirds import preflight_waterbirds

    return preflight_waterbirds(ds_cfg, data_dir)


def _load_imagenet_wnids(ds_cfg, data_dir):
    from covar_harness.tasks.imagenet_shifts import load_imagenet_wnids

    return load_imagenet_wnids(ds_cfg, data_dir)


def _preflight_imagenet_wnids(ds_cfg, data_dir):
    from covar_harness.tasks.imagenet_shifts import preflight_imagenet_wnids

    return preflight_imagenet_wnids(ds_cfg, data_dir)


@hookimpl
def register_dataset_formats(register):
    register(
        "covar",
        _load_covar,
        preflight=_preflight_covar,
        description="COVAR layout: classes.json + <subset>/metadata.jsonl (+ masks, source_id, variation)",
    )
    register(
        "counteranimals",
        _load_counteranimals,
        preflight=_preflight_counteranimals,
        description="CounterAnimal release: LAION-final/<ImageNet idx> <names>/{common-*,counter-*}/ (or hf_id)",
    )
    register(
        "waterbirds",
        _load_waterbirds,
        preflight=_preflight_waterbirds,
        description="Waterbirds release: waterbird_complete95_forest2water2/metadata.csv + images (split 2 = test)",
    )
    register(
        "imagenet_wnids",
        _load_imagenet_wnids,
        preflight=_preflight_imagenet_wnids,
        description="ImageNet subset by wnid: <root>/<wnid>/<images> (ImageNet-R/A); classes = wnid folders present",
    )
