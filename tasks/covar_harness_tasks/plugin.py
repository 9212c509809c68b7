"""Built-in plugin: the task YAML files shipped in this folder and the benchmark-specific dataset formats."""

from importlib import import_module
from pathlib import Path

from covar_harness.catalog.hookspecs import hookimpl

TASK_DIR = Path(__file__).parent


@hookimpl
def register_tasks(register):
    for sub in sorted(p for p in TASK_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        register(sub)


def _on_use(module: str, name: str):
    """``covar_harness_tasks.<module>.<name>``, imported when first called: ``ls`` and ``--help`` stay light."""

    def call(ds_cfg, data_dir):
        return getattr(import_module(f"covar_harness_tasks.{module}"), name)(ds_cfg, data_dir)

    call.__name__ = call.__qualname__ = name
    return call


# name -> (module under covar_harness_tasks, loader, preflight, description): each module is imported on first
# use, so `ls` and `--help` stay free of the formats' dependencies
FORMATS = {
    "covar": (
        "covar",
        "load_covar",
        "preflight_covar",
        "COVAR layout: classes.json + <subset>/metadata.jsonl (+ masks, source_id, variation)",
    ),
    "counteranimals": (
        "counteranimals",
        "load_counteranimals",
        "preflight_counteranimals",
        "CounterAnimal release: LAION-final/<ImageNet idx> <names>/{common-*,counter-*}/ (or hf_id)",
    ),
    "retrieval": (
        "retrieval",
        "load_retrieval",
        "preflight_retrieval",
        "images + captions: <root>/captions.jsonl, a Karpathy split json, or an HF dataset (retrieval)",
    ),
    "waterbirds": (
        "waterbirds",
        "load_waterbirds",
        "preflight_waterbirds",
        "Waterbirds release: waterbird_complete95_forest2water2/metadata.csv + images (split 2 = test)",
    ),
    "imagenet_wnids": (
        "imagenet_shifts",
        "load_imagenet_wnids",
        "preflight_imagenet_wnids",
        (
            "ImageNet classes by wnid/index: <root>/<wnid>/<images>; label_space: folders (present), imagenet1k, or"
            " the official imagenet-r / imagenet-a 200"
        ),
    ),
    "imagenet_val": (
        "imagenet_val",
        "load_imagenet_val",
        "preflight_imagenet_val",
        (
            "ILSVRC2012 val: val/<wnid>/ images, or flat val/ + devkit ground truth and meta.mat, or Kaggle "
            "LOC_val_solution.csv + ILSVRC/Data/CLS-LOC/val/"
        ),
    ),
    "objectnet": (
        "objectnet",
        "load_objectnet",
        "preflight_objectnet",
        "ObjectNet release: objectnet-1.0/images/<folder>/ + mappings/*.json; the ImageNet-overlap classes",
    ),
    "wds": (
        "wds",
        "load_wds",
        "preflight_wds",
        (
            "CLIP_benchmark webdataset: classnames.txt (+ zeroshot_classification_templates.txt) + "
            "<split>/nshards.txt, <split>/0.tar ... (<key>.cls + <key>.webp|png|jpg|jpeg); templates: dataset"
        ),
    ),
    "imagenet9": (
        "imagenet9",
        "load_imagenet9",
        "preflight_imagenet9",
        (
            "Backgrounds Challenge: bg_challenge/<variation>/val/<NN_class>/ images (imagefolder), scored 1000-way "
            "through in_to_in9.json (classifier: imagenet1k) or 9-way (superclasses); with fg_mask: true the masks "
            "bg_challenge/fg_mask/val/<NN_class>/<stem>.npy (a mixed file fg_<stem>_bg_<stem> takes its foreground's)"
        ),
    ),
}
TASK_KINDS = {"retrieval": "retrieval"}  # formats whose tasks covar_harness.run.retrieval evaluates (recall@k)


@hookimpl
def register_dataset_formats(register):
    for name, (module, loader, preflight, description) in FORMATS.items():
        extra = {"task_kind": TASK_KINDS[name]} if name in TASK_KINDS else {}
        register(name, _on_use(module, loader), preflight=_on_use(module, preflight), description=description, **extra)


def _covar_shapes_backgrounds(data_dir=None):
    """The ``covar-shapes-backgrounds`` image bank (``covar_shapes_bank``), imported on first use."""
    # lazy: task modules load on first use (see _on_use)
    from covar_harness_tasks.covar_shapes_bank import covar_shapes_backgrounds

    return covar_shapes_backgrounds(data_dir)


@hookimpl
def register_concept_banks(register):
    register(
        "covar-shapes-backgrounds",
        _covar_shapes_backgrounds,
        description="COVAR-Shapes' 10 background families rendered alone (images; generated on first use into "
        "<data-dir>/concept-banks)",
    )
