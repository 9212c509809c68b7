"""covar-harness: evaluate CLIP-style models on controlled variations, explain them with CCI, diagnose errors.

Public API: ``evaluate(models, tasks, **run_options)`` and ``load_task(name)`` (the ``run`` command from Python),
``rescore(results, **settings)`` (metrics and diagnosis recomputed from sample logs under other settings),
``hookimpl`` for plugins, ``load_model(spec)`` for notebooks and tests, ``BaseAdapter`` (the base
class of model adapters) and the ``ModelAdapter`` protocol. Importing this package does not import torch.
"""

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.models.adapter import AttributionCapable, BaseAdapter, ModelAdapter

# The one version source: pyproject.toml reads it (``dynamic = ["version"]``), and so do ``covar-harness
# --version`` and the results' ``provenance.harness_version``. Change it here only.
__version__ = "0.1.0"
__all__ = [
    "hookimpl",
    "evaluate",
    "rescore",
    "load_task",
    "load_model",
    "BaseAdapter",
    "ModelAdapter",
    "AttributionCapable",
    "__version__",
]


def load_model(spec: str, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    """The ModelAdapter for any model spec: ``openclip:...``, ``hf:...``, ``custom:...`` or a registered name."""

    from covar_harness.models.specs import load_model as _load  # lazy: `import covar_harness` stays light

    return _load(spec, device=device, precision=precision, cache_dir=cache_dir)


def evaluate(models, tasks, *, output_dir=None, **options):
    """``covar-harness run`` from Python; see :func:`covar_harness.api.evaluate`."""
    from covar_harness.api import evaluate as _evaluate  # lazy: `import covar_harness` stays torch-free

    return _evaluate(models, tasks, output_dir=output_dir, **options)


def rescore(results, *, out=None, **settings):
    """``covar-harness rescore`` from Python (no model loaded); see :func:`covar_harness.api.rescore`."""
    from covar_harness.api import rescore as _rescore  # lazy: `import covar_harness` stays torch-free

    return _rescore(results, out=out, **settings)


def load_task(name: str, include_path: list[str] | None = None):
    """A task's configuration by name; see :func:`covar_harness.api.load_task`."""
    from covar_harness.api import load_task as _load_task  # lazy: `import covar_harness` stays torch-free

    return _load_task(name, include_path)
