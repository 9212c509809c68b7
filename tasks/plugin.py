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
