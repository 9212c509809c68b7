"""covar-harness: evaluate CLIP-style models on controlled variations, explain them with CCI, diagnose errors.

Public API: ``hookimpl`` for plugins, ``load_model(spec)`` for notebooks and tests, ``BaseAdapter`` (the base
class of model adapters) and the ``ModelAdapter`` protocol. Importing this package does not import torch.
"""

from covar_harness.adapter import AttributionCapable, BaseAdapter, ModelAdapter
from covar_harness.hookspecs import hookimpl

# The one version source: pyproject.toml reads it (``dynamic = ["version"]``), and so do ``covar-harness
# --version`` and the results' ``provenance.harness_version``. Change it here only.
__version__ = "0.1.0"
__all__ = ["hookimpl", "load_model", "BaseAdapter", "ModelAdapter", "AttributionCapable", "__version__"]


def load_model(spec: str, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    """The ModelAdapter for any model spec: ``openclip:...``, ``hf:...``, ``custom:...`` or a registered name."""
    from covar_harness.models import load_model as _load

    return _load(spec, device=device, precision=precision, cache_dir=cache_dir)
