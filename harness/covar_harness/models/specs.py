"""Model specs (docs/design.md section 4): resolving ``--models`` and loading a ModelAdapter.

A spec is either ``scheme:rest`` (a scheme registered by a plugin: ``openclip``, ``hf``, ``custom``) or a
registered model name/alias. Tags act as groups; ``all`` means every registered model not tagged ``demo``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from covar_harness.catalog.plugin_manager import call_with_accepted, default_catalog
from covar_harness.catalog.registry import UnknownNameError, UsageError, is_glob
from covar_harness.common.console import one_line, unsafe_name
from covar_harness.models.adapter import missing_members
from covar_harness.models.args import PRECISIONS, split_spec

if TYPE_CHECKING:
    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.models.adapter import ModelAdapter

ALL_GROUP = "all"
EXCLUDED_FROM_ALL = "demo"


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights fetched; the message says which and how to work offline."""


class HubUnreachableError(ModelLoadError):
    """The Hugging Face hub could not be reached while loading a model (after the hub client's retries).

    ``advice`` is the same sentence for every model of a run (print it once); ``headline`` names the model and
    the network error; ``str()`` is both, on one line."""

    def __init__(self, spec: str, cache: str, reason: str = ""):
        self.spec, self.cache, self.reason = spec, cache, reason
        self.advice = (
            f"the Hugging Face hub is unreachable; set HF_HUB_OFFLINE=1 to fail fast and use the local cache ({cache})"
        )
        detail = f" ({reason})" if reason else ""
        self.headline = f"{spec}: the Hugging Face hub is unreachable{detail}"  # the message without the advice
        super().__init__(
            f"{spec}: the Hugging Face hub is unreachable{detail}; set HF_HUB_OFFLINE=1 to fail fast "
            f"and use the local cache ({cache})"
        )

    def __reduce__(self):  # picklable (worker processes, logging handlers) despite the custom signature
        return type(self), (self.spec, self.cache, self.reason)


# class names (anywhere in an exception's MRO) that mean "no network": huggingface_hub, requests, httpx, urllib3,
# and the builtins. An OSError whose message says so counts too (transformers wraps the original in one).
_NETWORK_ERRORS = {
    "LocalEntryNotFoundError",
    "ConnectionError",
    "Timeout",
    "ConnectTimeout",
    "ReadTimeout",
    "ConnectError",
    "TimeoutException",
    "NetworkError",
    "ProxyError",
    "MaxRetryError",
    "NewConnectionError",
    "NameResolutionError",
    "TimeoutError",
    "gaierror",
    "URLError",
}
_NETWORK_WORDS = ("connect", "offline", "name resolution", "network is unreachable", "timed out")
# file-system errors whose message may quote a path such as /data/offline_models: never "the network"
_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is on: then a miss is a cache miss, not an unreachable hub."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants  # lazy: optional dependency, imported where used
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the hub could not be reached. False in offline
    mode, where the same errors only mean that the files are not in the cache."""
    if hub_offline():
        return False
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 32:
        seen.add(id(link))
        if _is_network_error(link):
            return True
        link = link.__cause__ or link.__context__
    return False


def _is_network_error(exc: BaseException) -> bool:
    if type(exc).__module__.startswith("filelock"):  # a cache lock timing out is not the network
        return False
    if any(cls.__name__ in _NETWORK_ERRORS for cls in type(exc).__mro__):
        return True
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, _FILE_ERRORS)
        and any(w in str(exc).lower() for w in _NETWORK_WORDS)
    )


def hub_cache(cache_dir: str | None = None) -> str:
    """Where hub downloads are cached: ``--cache-dir``, else huggingface_hub's cache (HF_HUB_CACHE / HF_HOME)."""
    if cache_dir:
        return str(cache_dir)
    try:
        from huggingface_hub import constants  # lazy: optional dependency, imported where used
    except ImportError:
        return os.path.expanduser("~/.cache/huggingface/hub")
    return str(constants.HF_HUB_CACHE)


def unreachable_error(spec: str, exc: BaseException, cache_dir: str | None = None) -> HubUnreachableError | None:
    """A HubUnreachableError for ``exc`` when it means the hub is unreachable, else None (re-raise as is)."""
    if isinstance(exc, HubUnreachableError) or not hub_unreachable(exc):
        return None
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return HubUnreachableError(spec, hub_cache(cache_dir), f"{type(exc).__name__}: {first}" if first else "")


def torch_dtype(precision: str):
    """The torch dtype of a ``--precision`` value (adapters cast weights and pixels to it)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model selection: what was asked (``spec``) and what it stands for."""

    spec: str
    target: str  # the scheme spec the name resolves to, or the spec itself (without ``@`` model arguments)
    family: str  # the scheme (openclip, hf, custom) or "plugin"
    args: tuple[tuple[str, Any], ...] = ()  # ``SPEC@key=value`` model arguments (model_args.py), in given order

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)


def scheme_of(spec: str, catalog: Catalog) -> tuple[str | None, str]:
    head, sep, rest = spec.partition(":")
    if sep and head in catalog.schemes:
        return head, rest
    return None, spec


def _target(spec: str, catalog: Catalog, depth: int = 0) -> tuple[str, str]:
    """Follow aliases (names whose factory is a spec string) to a scheme spec without loading anything."""
    scheme, _ = scheme_of(spec, catalog)
    if scheme:
        return spec, scheme
    entry = catalog.models.entry(spec)
    if isinstance(entry.item, str) and depth < 8:
        return _target(entry.item, catalog, depth + 1)
    return spec, "plugin"


def registered_target(spec: str, catalog: Catalog) -> str | None:
    """What a result's ``model.spec`` stands for here (its ``model.target`` as a run would record it), without
    loading anything; None when this catalog does not know the name (a plugin not installed here)."""
    try:
        base, _args = split_spec(spec)
        scheme, _ = scheme_of(base, catalog)
        return base if scheme else (_target(base, catalog)[0] if base in catalog.models else None)
    except UsageError:
        return None


def resolve_models(specs: str | Iterable[str], catalog: Catalog) -> list[ModelRef]:
    """Expand ``--models``: comma-separated specs, names, globs over names, groups (tags, ``all``)."""
    tokens = [t.strip() for t in (specs.split(",") if isinstance(specs, str) else specs) if t.strip()]
    if not tokens:
        raise UsageError("no models given")
    seen: dict[str, ModelRef] = {}
    for token in tokens:
        if unsafe_name(token):  # "demo/shapes-clean\u200b" would be a second model that prints like the first
            raise UsageError(f"model {one_line(token)!r}: control, bidi or invisible characters are not allowed")
        base, args = split_spec(token)
        suffix = "".join(f"@{k}={v}" for k, v in args.items())
        for name in _names(base, catalog):
            if name + suffix not in seen:
                target, family = _target(name, catalog)
                seen[name + suffix] = ModelRef(name + suffix, target, family, tuple(args.items()))
    return list(seen.values())


def _names(token: str, catalog: Catalog) -> list[str]:
    """One ``--models`` item (without model arguments) as the model names or specs it stands for."""
    scheme, _ = scheme_of(token, catalog)
    if scheme:
        return [token]
    if token == ALL_GROUP:
        return [e.name for e in catalog.models if EXCLUDED_FROM_ALL not in e.tags]
    if token in catalog.models:
        return [catalog.models.entry(token).name]
    if token in catalog.models.tags():
        return list(catalog.models.tagged(token))
    if is_glob(token):
        hits = catalog.models.match(token)
        if not hits:
            raise UnknownNameError("model pattern", token, catalog.models.names())
        return list(hits)
    if ":" in token:
        raise UsageError(
            f"unknown model scheme {token.partition(':')[0]!r} in {token!r}; known schemes: "
            + ", ".join(sorted(catalog.schemes.names()))
        )
    raise UnknownNameError("model", token, [*catalog.models.names(), *catalog.models.tags(), ALL_GROUP])


def load_model(
    spec: str,
    device: str = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    catalog: Catalog | None = None,
) -> ModelAdapter:
    """Return the ModelAdapter for any model spec (docs/design.md section 4). The public entry point for notebooks
    and tests."""

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    catalog = catalog or default_catalog()
    device = resolve_device(device)
    asked = spec
    try:
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
    except Exception as exc:  # a hub that cannot be reached gets one line with the way to fail fast
        unreachable = unreachable_error(asked, exc, cache_dir)
        if unreachable is not None:
            raise unreachable from exc
        raise
    missing = missing_members(adapter)
    if missing:
        raise UsageError(f"model {spec!r} did not return a ModelAdapter: missing {'; '.join(missing)}")
    return adapter


def patch_count_hint(spec: str, catalog: Catalog | None = None) -> int | None:
    """The patch count (rows * cols) of a model spec WITHOUT loading weights, when its scheme's loader can tell
    cheaply (``loader.patch_count_hint(rest)``: openclip ARCH/TAG and local folders, hf: local folders); else None.
    Why: ``--cci-k`` above the patch count can then be refused before any download."""

    catalog = catalog or default_catalog()
    try:
        target, _ = _target(spec, catalog)
        scheme, rest = scheme_of(target, catalog)
        hint: Callable[[str], Any] | None = (
            getattr(catalog.schemes.get(scheme), "patch_count_hint", None) if scheme else None
        )
        value = hint(rest) if hint is not None else None
    except Exception:  # noqa: BLE001 - a hint is optional; the real check runs when the model starts
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, mps or cpu; any other value as given (torch is not even imported for ``--device cpu``).
    CUDA is asked through ``torch.cuda.device_count`` first, which counts GPUs through NVML where it can: on a
    machine without a GPU the answer comes without initialising the CUDA runtime (``is_available`` would), and
    ``is_available`` then only confirms a GPU that NVML reported."""
    if device != "auto":
        return device
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    if torch.cuda.device_count() > 0 and torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
