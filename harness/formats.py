"""Built-in plugin: the generic dataset formats ``imagefolder`` and ``hf``."""

from covar_harness.data import load_hf, load_imagefolder
from covar_harness.hookspecs import hookimpl


@hookimpl
def register_dataset_formats(register):
    register("imagefolder", load_imagefolder, description="<root>/<class>/<image>, classes in sorted order")
    register("hf", load_hf, description="Hugging Face datasets: hub id, save_to_disk folder or local image folder")
