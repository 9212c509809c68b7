"""Model specs (DESIGN section 4): resolving ``--models`` and loading a ModelAdapter.

A spec is either ``scheme:rest`` (a scheme registered by a plugin: ``openclip``, ``hf``, ``custom``) or a
registered model name/alias. Tags act as groups; ``all`` means every registered model not tagged ``demo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from covar_harness.adapter import missing_members
from covar_harness.registry import UnknownNameError, UsageError, is_glob

if TYPE_CHECKING:
    from covar_harness.adapter import ModelAdapter
    from covar_harness.plugin_manager import Catalog

ALL_GROUP = "all"
EXCLUDED_FROM_ALL = "demo"
PRECISIONS = ("fp32", "bf16", "fp16")


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights fetched; the message says which and how to work offline."""


def torch_dtype(precision: str):
    """The torch dtype of a ``--precision`` value (adapters cast weights and pixels to it)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model selection: what was asked (``spec``) and what it stands for."""

    spec: str
    target: str  # the scheme spec the name resolves to, or the spec itself
    family: str  # the scheme (openclip, hf, custom) or "plugin"


def scheme_of(spec: str, catalog: "Catalog") -> tuple[str | None, str]:
    head, sep, rest = spec.partition(":")
    if sep and head in catalog.schemes:
        return head, rest
    return None, spec


def _target(spec: str, catalog: "Catalog", depth: int = 0) -> tuple[str, str]:
    """Follow aliases (names whose factory is a spec string) to a scheme spec without loading anything."""
    scheme, _ = scheme_of(spec, catalog)
    if scheme:
        return spec, scheme
    entry = catalog.models.entry(spec)
    if isinstance(entry.item, str) and depth < 8:
        return _target(entry.item, catalog, depth + 1)
    return spec, "plugin"


def resolve_models(specs: str | Iterable[str], catalog: "Catalog") -> list[ModelRef]:
    """Expand ``--models``: comma-separated specs, names, globs over names, groups (tags, ``all``)."""
    tokens = [t.strip() for t in (specs.split(",") if isinstance(specs, str) else specs) if t.strip()]
    if not tokens:
        raise UsageError("no models given")
    names: list[str] = []
    for token in tokens:
        scheme, _ = scheme_of(token, catalog)
        if scheme:
            names.append(token)
        elif token == ALL_GROUP:
            names += [e.name for e in catalog.models if EXCLUDED_FROM_ALL not in e.tags]
        elif token in catalog.models:
            names.append(catalog.models.entry(token).name)
        elif token in catalog.models.tags():
            names += catalog.models.tagged(token)
        elif is_glob(token):
            hits = catalog.models.match(token)
            if not hits:
                raise UnknownNameError("model pattern", token, catalog.models.names())
            names += hits
        else:
            if ":" in token:
                raise UsageError(
                    f"unknown model scheme {token.partition(':')[0]!r} in {token!r}; known schemes: "
                    + ", ".join(sorted(catalog.schemes.names()))
                )
            raise UnknownNameError("model", token, [*catalog.models.names(), *catalog.models.tags(), ALL_GROUP])
    seen: dict[str, ModelRef] = {}
    for name in names:
        if name not in seen:
            target, family = _target(name, catalog)
            seen[name] = ModelRef(name, target, family)
    return list(seen.values())


def load_model(
    spec: str,
    device: str = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    catalog: "Catalog | None" = None,
) -> "ModelAdapter":
    """Return the ModelAdapter for any model spec (DESIGN 4). The public entry point for notebooks and tests."""
    from covar_harness.plugin_manager import call_with_accepted, default_catalog

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    catalog = catalog or default_catalog()
    device = resolve_device(device)
    for _ in range(8):  # alias chains are short; the bound stops cycles
        scheme, rest = scheme_of(spec, catalog)
        if scheme:
            loader = catalog.schemes.get(scheme)
            adapter = loader(rest, device=device, precision=precision, cache_dir=cache_dir)
            break
        item = catalog.models.get(spec)
        produced = item if isinstance(item, str) else call_with_accepted(item, device=device, precision=precision)
        if isinstance(produced, str):
            spec = produced
            continue
        adapter = produced
        break
    else:
        raise UsageError(f"model alias chain for {spec!r} is too long (a cycle?)")
    missing = missing_members(adapter)
    if missing:
        raise UsageError(f"model {spec!r} did not return a ModelAdapter: missing {'; '.join(missing)}")
    return adapter


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
