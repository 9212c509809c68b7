"""Plugin discovery: a pluggy manager over the ``covar_harness`` entry-point group, and the Catalog it fills.

Loading policy (as in llm): built-in plugins (entry points of the ``covar-harness`` distribution itself)
always load; third-party distributions load unless ``COVAR_HARNESS_PLUGINS`` is set, in which case only the
comma-separated distributions it names load (empty string: none). Nothing here imports torch.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from covar_harness.catalog import hookspecs
from covar_harness.catalog.registry import Entry, Registry, UsageError
from covar_harness.catalog.taskconfig import TaskIndex

PROJECT = "covar_harness"
DISTRIBUTION = "covar-harness"
ALLOW_ENV = "COVAR_HARNESS_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    builtin: bool = False


@dataclass
class Catalog:
    """Everything the loaded plugins registered. Built once per process (or per test) and passed along."""

    models: Registry[Any] = field(default_factory=lambda: Registry("model"))
    tasks: Any = None  # covar_harness.catalog.taskconfig.TaskIndex
    attributors: Registry[Any] = field(default_factory=lambda: Registry("attributor"))
    segmenters: Registry[Any] = field(default_factory=lambda: Registry("segmenter"))
    concepts: Registry[Any] = field(default_factory=lambda: Registry("concept bank"))
    schemes: Registry[Any] = field(default_factory=lambda: Registry("model scheme"))
    formats: Registry[Any] = field(default_factory=lambda: Registry("dataset format"))
    plugins: list[PluginInfo] = field(default_factory=list)


def _normalise(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=PROJECT))


def _allowed(dist_name: str, allow: str | None) -> bool:
    if _normalise(dist_name) == DISTRIBUTION:
        return True
    if allow is None:
        return True
    return _normalise(dist_name) in {_normalise(d) for d in allow.split(",") if d.strip()}


def build_plugin_manager(
    allow: str | None = None, extra_plugins: Iterable[object] = ()
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """A fresh manager with built-ins, allowed entry points and ``extra_plugins`` (objects or modules)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    seen_builtin = False
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist else "?"
        if not _allowed(dist, allow):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the harness down
            raise UsageError(f"plugin {ep.name!r} from {dist} failed to load: {exc}") from exc
        builtin = _normalise(dist) == DISTRIBUTION
        seen_builtin |= builtin
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=f"{dist}:{ep.name}")
        infos.append(PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist else "", builtin=builtin))
    if not seen_builtin:  # built-ins are entry points too: without the metadata nothing works
        raise UsageError("covar-harness is not installed (no entry points found); run: pip install -e .")
    for i, plugin in enumerate(extra_plugins):
        name = getattr(plugin, "__name__", None) or f"extra-{i}-{type(plugin).__name__}"
        pm.register(plugin, name=name)
        infos.append(PluginInfo(name, name, "(in-process)", ""))
    for info in infos:
        plugin = pm.get_plugin(f"{info.distribution}:{info.name}") or pm.get_plugin(info.name)
        info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm, infos


@dataclass(frozen=True)
class Keywords:
    """The keyword arguments a callable accepts: the one signature policy of the harness.

    ``names`` are the parameters that can be passed by keyword; ``var`` says it has ``**kwargs``. A callable
    whose signature cannot be read (some builtins and C callables) accepts nothing: the harness then passes
    only what it can prove the callee takes, so a call never fails on a setting the harness added.
    """

    names: frozenset[str] = frozenset()
    var: bool = False

    def accepts(self, name: str, *, explicit: bool = False) -> bool:
        """Whether ``name`` may be passed; ``explicit``: only when named, ``**kwargs`` does not count (for
        capability checks, where a callee that swallows an argument would silently ignore it)."""
        return name in self.names or (self.var and not explicit)

    def select(self, offered: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``offered`` this callable accepts (all of it, with ``**kwargs``)."""
        return dict(offered) if self.var else {k: v for k, v in offered.items() if k in self.names}


def keywords_of(fn: Callable[..., Any]) -> Keywords:
    """The :class:`Keywords` of ``fn`` (positional-only and ``*args`` parameters cannot be passed by name)."""

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return Keywords()
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return Keywords(
        frozenset(p.name for p in params if p.kind in by_name),
        any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
    )


def call_with_accepted(fn: Callable[..., Any], **offered: Any) -> Any:
    """Call a plugin's factory with the offered keyword arguments its signature accepts (all, with **kwargs).

    Factories from third parties may take fewer settings than the harness offers (device, precision, k, ...).
    The policy is :func:`keywords_of`.
    """
    return fn(**keywords_of(fn).select(offered))


def _registrar(registry: Registry, plugin_of: Callable[[], str]) -> Callable[..., None]:
    def register(name: str, item: Any, *, aliases=(), tags=(), description: str = "", **extra) -> None:
        if not isinstance(name, str) or not name:
            raise UsageError(f"{registry.kind} registered by {plugin_of()} has no name")
        registry.add(Entry(name, item, tuple(aliases), tuple(tags), description, plugin_of(), extra))

    return register


def load_catalog(
    include_paths: Iterable[str | Path] = (), allow: str | None = None, extra_plugins: Iterable[object] = ()
) -> Catalog:
    """Run every registration hook once and collect the results.

    ``allow`` defaults to the ``COVAR_HARNESS_PLUGINS`` environment variable. ``include_paths`` are extra
    task YAML files or directories (``--include-path``).
    """

    if allow is None:
        allow = os.environ.get(ALLOW_ENV)
    pm, infos = build_plugin_manager(allow, extra_plugins)
    cat = Catalog(plugins=infos, tasks=TaskIndex())
    current = {"plugin": "?"}

    def plugin_of() -> str:
        return current["plugin"]

    def call(hook_name: str, register: Callable[..., None]) -> None:
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: built-ins first
            current["plugin"] = impl.plugin_name
            impl.function(register)

    call("register_model_schemes", _registrar(cat.schemes, plugin_of))
    call("register_dataset_formats", _registrar(cat.formats, plugin_of))
    call("register_models", _registrar(cat.models, plugin_of))
    call("register_attributors", _registrar(cat.attributors, plugin_of))
    call("register_segmenters", _registrar(cat.segmenters, plugin_of))
    call("register_concept_banks", _registrar(cat.concepts, plugin_of))
    call("register_tasks", lambda source: cat.tasks.add_source(source, plugin=plugin_of()))
    for path in include_paths:
        cat.tasks.add_source(Path(path), plugin="--include-path")
    return cat


_DEFAULT: dict[tuple, Catalog] = {}


def default_catalog(include_paths: Iterable[str | Path] = ()) -> Catalog:
    """The catalog for this process (cached per include-path set), used by ``covar_harness.load_model``."""
    key = (tuple(str(p) for p in include_paths), os.environ.get(ALLOW_ENV))
    if key not in _DEFAULT:
        _DEFAULT[key] = load_catalog(include_paths)
    return _DEFAULT[key]
