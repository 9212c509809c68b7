"""Built-in plugin: your own model through ``custom:`` specs, no plugin package needed.

``custom:MODULE:CALLABLE`` imports ``MODULE`` (it must be importable: installed or on PYTHONPATH);
``custom:path/to/file.py:CALLABLE`` loads that file with importlib (the user's own code, run by request, as
``python file.py`` would). The callable returns a ModelAdapter (docs/design.md section 3): best a subclass of
``covar_harness.BaseAdapter``, which declares every optional member with a safe default, but any object with the
required members works. It receives ``device`` and ``precision`` when its signature accepts them
(``plugin_manager.call_with_accepted``). A returned object that is not an adapter is rejected with one line
naming every missing member.

The adapter is used as returned. For attribution, its ``encode_images_without`` gets the public (B, N) drop
contract; an adapter that also takes (B, K, N) pattern batches (e.g. one forwarding to a built-in ``openclip:``
or ``hf:`` adapter) says so with ``supports_pattern_batches = True`` (see ``covar_harness.models.adapter``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.catalog.plugin_manager import call_with_accepted
from covar_harness.catalog.registry import UsageError
from covar_harness.models.adapter import missing_members
from covar_harness.models.specs import ModelLoadError

USAGE = "use custom:MODULE:CALLABLE or custom:path/to/file.py:CALLABLE"


def split_spec(rest: str) -> tuple[str, str]:
    """``MODULE:CALLABLE`` or ``PATH.py:CALLABLE`` -> (module or path, callable name). The last colon splits."""
    target, sep, attr = rest.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise UsageError(f"custom:{rest}: cannot tell the module from the callable; {USAGE}")
    return target, attr


def is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def load_file(path: Path) -> ModuleType:
    """Import a Python file by path under a unique, stable module name (classes in it then pickle by name)."""
    if not path.is_file():
        raise UsageError(f"custom: no such file {str(path)!r}; {USAGE}")
    resolved = path.resolve()
    name = f"covar_harness_custom_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"custom:{path}: cannot import it as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_module(target: str) -> ModuleType:
    if is_file_target(target):
        return load_file(Path(target).expanduser())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise UsageError(
                f"custom: cannot import module {target!r} (not installed, not on PYTHONPATH); "
                f"a file works too: custom:path/to/file.py:CALLABLE"
            ) from exc
        raise


def resolve_callable(rest: str) -> Callable[..., Any]:
    target, attr = split_spec(rest)
    module = load_module(target)
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n]))
        raise UsageError(f"custom:{rest}: {target} has no {attr!r}; callables there: {', '.join(public) or 'none'}")
    if not callable(fn):
        raise UsageError(f"custom:{rest}: {attr!r} in {target} is a {type(fn).__name__}, not a callable")
    return fn


def load_custom(rest: str, *, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    """The ``custom:`` scheme loader. An exception in the user's module or callable becomes one line naming the
    spec and the stage (the chained original keeps the traceback for ``-v``)."""
    stage = "importing"
    try:
        fn = resolve_callable(rest)
        stage = "calling"
        adapter = call_with_accepted(fn, device=device, precision=precision)
    except (UsageError, ModelLoadError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"custom:{rest}: {stage} the adapter failed: {type(exc).__name__}: {first}") from exc
    missing = missing_members(adapter)
    if missing:
        raise UsageError(
            f"custom:{rest} returned a {type(adapter).__name__}, not a ModelAdapter: missing {'; '.join(missing)}"
        )
    return adapter


@hookimpl
def register_model_schemes(register):
    register("custom", load_custom, description="your own adapter: MODULE:CALLABLE or path/to/file.py:CALLABLE")
