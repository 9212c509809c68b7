"""Built-in plugin: the generic dataset formats ``imagefolder`` and ``hf``."""

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.data.samples import load_hf, load_imagefolder, preflight_hf, preflight_imagefolder


@hookimpl
def register_dataset_formats(register):
    register(
        "imagefolder",
        load_imagefolder,
        preflight=preflight_imagefolder,
        description="<root>/<class>/<image>, classes in sorted order (matched to the task's classnames by name)",
    )
    register(
        "hf",
        load_hf,
        preflight=preflight_hf,
        description="Hugging Face datasets: hub id, save_to_disk folder or local image folder",
    )
