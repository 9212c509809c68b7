"""Built-in plugin: the task YAML files shipped in this folder."""

from pathlib import Path

from covar_harness.hookspecs import hookimpl

TASK_DIR = Path(__file__).parent


@hookimpl
def register_tasks(register):
    for sub in sorted(p for p in TASK_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        register(sub)
