"""covar-harness: evaluate CLIP-style models on controlled variations, explain them with CCI, diagnose errors.

Public API: ``hookimpl`` for plugins, ``load_model(spec)`` for notebooks and tests, ``ModelAdapter``.
Importing this package does not import torch.
"""

from covar_harness.adapter import AttributionCapable, ModelAdapter
from covar_harness.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "load_model", "ModelAdapter", "AttributionCapable", "__version__"]


def load_model(spec: str, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    """The ModelAdapter for any model spec: ``openclip:...``, ``hf:...``, ``custom:...`` or a registered name."""
    from covar_harness.models import load_model as _load

    return _load(spec, device=device, precision=precision, cache_dir=cache_dir)
