"""Task definitions: the task YAML schema, its validation, and the index that resolves ``--tasks``.

YAML is read with ``yaml.safe_load`` and checked key by key; nothing in a task file is executed. A task file must
be a regular file under ``TASK_FILE_MAX_BYTES`` and expand (aliases followed) to at most ``MAX_VALUES`` values, so
a "billion laughs" file is refused in microseconds instead of costing minutes and gigabytes later.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.catalog.registry import UnknownNameError, UsageError, is_glob
from covar_harness.common.console import unsafe_name
from covar_harness.common.safe_files import read_text_capped

if TYPE_CHECKING:
    from covar_harness.catalog.plugin_manager import Catalog

# A task's kind is its dataset format's ``task_kind`` (``register(..., task_kind=...)``), ``classification`` when
# it sets none; ``run.evaluator.PAIR_KINDS`` maps each kind to how its pairs run.
CLASSIFICATION = "classification"
# Retrieval tasks (a format registered with task_kind="retrieval"): recall@k, CLIP_benchmark's protocol.
TASK_KIND = "retrieval"
RECALL_K = (1, 5, 10)
RETRIEVAL_METRICS = tuple(f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in RECALL_K)
# CLIP_benchmark's default recall_k_list is [5]; text -> image is the direction its tables list first
DEFAULT_HEADLINE = "image_retrieval_recall@5"


def task_kind(cfg: TaskConfig, catalog: Catalog) -> str:
    """The task's kind: what its dataset format registered as ``task_kind``, else ``classification``."""
    entry = catalog.formats.entry(cfg.dataset["format"])
    return str(entry.extra.get("task_kind") or CLASSIFICATION)


REQUIRED = ("task", "dataset")
OPTIONAL = (
    "classnames",
    "templates",
    "version",
    "tags",
    "class_groups",
    "headline",
    "description",
    "metadata",
    "diagnose",
)
HEADLINE_METRICS = ("acc1", "acc5", "mean_per_class_recall", "adj_acc_avg", *RETRIEVAL_METRICS)  # adj: Waterbirds
TASK_FILE_MAX_BYTES = 1 << 20
MAX_VALUES = 200_000  # scalars and containers after alias expansion: far above any real task (1000 class names)
MAX_DEPTH = 32
# Keys the shipped dataset formats read under ``dataset:``. A key that is none of these but close to one is a typo
# ("pth", "subsset") and is refused with the match; any other key is a plugin format's own option and passes.
DATASET_KEYS = (
    "format", "path", "split", "subset", "name", "revision", "raw_path", "hf_id", "hf_split", "image_key",
    "label_key", "hf_image_key", "hf_label_key", "hf_group_key", "group", "label_space", "fg_mask", "crop_border",
    "layout", "karpathy_json", "images_dir", "captions_file", "captions_key", "folder_names", "how_to_get",
)  # fmt: skip
GROUP_SPEC_KEYS = ("groups", "rule", "label_space", "source", "max_classes_per_group", "group_names")


class TaskConfigError(UsageError):
    pass


@dataclass(frozen=True)
class TaskConfig:
    """One validated task definition. ``source`` is the YAML file it came from (None for dicts)."""

    task: str
    dataset: dict[str, Any]
    classnames: Any = None
    templates: Any = None  # None (no key): the prompts the dataset ships, if any (a wds root's), else "simple"
    version: int | str = 1
    tags: tuple[str, ...] = ()
    class_groups: Any = None
    headline: str = "acc1"
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    diagnose: bool | None = None  # True: --attribution auto runs CCI without dataset masks (a segmenter gives them)
    source: Path | None = None

    @property
    def name(self) -> str:
        return self.task

    @property
    def family(self) -> str:
        return self.task.split("/", 1)[0]

    def resolve_path(self, value: str | Path, data_dir: Path | None) -> Path:
        """A dataset path: absolute as given; else relative to the YAML file if it exists there; else to data_dir."""
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        if self.source is not None and (self.source.parent / p).exists():
            return self.source.parent / p
        return (data_dir or Path.cwd()) / p

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (*REQUIRED, *OPTIONAL)}
        out["tags"] = list(self.tags)
        if self.diagnose is None:  # unset stays out, so the recorded task of existing tasks does not change
            del out["diagnose"]
        return out


def _fail(where: str, key: str, message: str) -> TaskConfigError:
    return TaskConfigError(f"{where}: key {key!r}: {message}")


def check_size(value: Any, where: str, limit: int = MAX_VALUES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a value that expands to more than ``limit`` values or nests deeper than ``max_depth``.

    Counted as expanded (an alias is counted each time it is used), iteratively, stopping at the limit: YAML
    aliases share objects, so a 500-byte file can stand for a billion strings, or a cycle for infinitely many.
    """
    stack, seen = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > limit:
            raise TaskConfigError(f"{where}: more than {limit} values once YAML aliases are expanded; refused")
        if depth > max_depth:
            raise TaskConfigError(f"{where}: nested more than {max_depth} levels deep; refused")
        if isinstance(item, dict):
            stack.extend((x, depth + 1) for kv in item.items() for x in kv)
        elif isinstance(item, (list, tuple)):
            stack.extend((x, depth + 1) for x in item)


def _group_key_ok(key: Any) -> bool:
    return isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))


def check_class_groups(value: Any, where: str) -> None:
    """``class_groups`` as documented: a name or path (str), a mapping class -> group name (str), or a spec
    ``{"groups": {...}, "rule": str, "label_space": str, ...}``. Raises TaskConfigError (one line) otherwise."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, dict):
        raise _fail(where, "class_groups", "must be a mapping class -> group, a file path, or a shipped name")
    groups = value
    if isinstance(value.get("groups"), dict):
        extra = [k for k in value if k not in GROUP_SPEC_KEYS]
        if extra:
            raise _fail(where, "class_groups", f"unknown key {extra[0]!r}; allowed: {', '.join(GROUP_SPEC_KEYS)}")
        for key in ("rule", "label_space"):
            if value.get(key) is not None and not isinstance(value[key], str):
                raise _fail(where, f"class_groups.{key}", "must be a string")
        groups = value["groups"]
    for key, group in groups.items():
        if not _group_key_ok(key):
            raise _fail(where, "class_groups", f"keys are class names or indices, got {type(key).__name__}")
        if not isinstance(group, str):
            raise _fail(
                where,
                "class_groups",
                f"the group of {str(key)[:60]!r} must be a string (a group name), got {type(group).__name__}",
            )


def _check_keys(raw: dict, where: str) -> None:
    """Unknown keys (with close matches) and missing required keys, each one line."""
    for key in raw:
        if key not in REQUIRED + OPTIONAL:
            close = difflib.get_close_matches(str(key), REQUIRED + OPTIONAL, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(where, key, f"unknown key{hint}; allowed: {', '.join(REQUIRED + OPTIONAL)}")
    for key in REQUIRED:
        if key not in raw:
            raise _fail(where, key, "missing (required)")


def parse_task(raw: Any, source: Path | None = None) -> TaskConfig:
    where = str(source) if source else "task dict"
    if not isinstance(raw, dict):
        raise TaskConfigError(f"{where}: a task must be a mapping, got {type(raw).__name__}")
    check_size(raw, where)
    _check_keys(raw, where)
    name = raw["task"]
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise _fail(where, "task", "must be a non-empty name like 'family/name'")
    if unsafe_name(name):  # a name that prints like another would make two rows look like one
        raise _fail(where, "task", "must not contain control, bidi or invisible characters (zero-width, LRM, BOM)")
    ds = raw["dataset"]
    if not isinstance(ds, dict) or not isinstance(ds.get("format"), str):
        raise _fail(where, "dataset", "must be a mapping with a 'format' string (imagefolder, hf, covar, ...)")
    if "path" in ds and not isinstance(ds["path"], str):
        raise _fail(where, "dataset.path", "must be a string")
    for key in ds:
        close = [] if key in DATASET_KEYS else difflib.get_close_matches(str(key), DATASET_KEYS, n=1, cutoff=0.8)
        if close:
            raise _fail(where, f"dataset.{key}", f"unknown key (did you mean {close[0]!r}?)")
    for key in ("classnames", "templates"):
        v = raw.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            raise _fail(where, key, "must be a name, a file path, or a list of strings")
    templates = raw.get("templates")
    if isinstance(templates, list) and not all("{}" in t or "{c}" in t for t in templates):
        raise _fail(where, "templates", "every template needs a '{}' placeholder for the class name")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _fail(where, "tags", "must be a list of strings")
    version = raw.get("version", 1)
    if not isinstance(version, (int, str)) or isinstance(version, bool):
        raise _fail(where, "version", "must be an integer or a string")
    headline = raw.get("headline", "acc1")
    if headline not in HEADLINE_METRICS:
        raise _fail(where, "headline", f"must be one of {', '.join(HEADLINE_METRICS)}")
    groups = raw.get("class_groups")
    check_class_groups(groups, where)
    meta = raw.get("metadata", {})
    if not isinstance(meta, dict):
        raise _fail(where, "metadata", "must be a mapping")
    diagnose = raw.get("diagnose")
    if diagnose is not None and not isinstance(diagnose, bool):
        raise _fail(where, "diagnose", "must be true or false")
    description = raw.get("description") or ""
    if not isinstance(description, (str, int, float)) or isinstance(description, bool):
        raise _fail(where, "description", "must be a string")
    return TaskConfig(
        task=name,
        dataset=dict(ds),
        classnames=raw.get("classnames"),
        templates=templates,
        version=version,
        tags=tuple(tags),
        class_groups=groups,
        headline=headline,
        description=str(description),
        metadata=meta,
        diagnose=diagnose,
        source=source.resolve() if source else None,
    )


def load_task_file(path: Path) -> TaskConfig:
    """One task YAML: a regular file under the size cap, safe-loaded, size-bounded, then validated."""
    import yaml  # lazy: --help loads this module (the parser's class-group checks) without a YAML parser

    try:
        raw = yaml.safe_load(read_text_capped(path, TASK_FILE_MAX_BYTES))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise TaskConfigError(
            f"{path}: cannot read task YAML: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
        ) from exc
    except RecursionError:
        raise TaskConfigError(f"{path}: cannot read task YAML: nested too deeply") from None
    return parse_task(raw, path)


class TaskIndex:
    """All known tasks, by name. Sources: plugins' ``register_tasks`` and ``--include-path``."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskConfig] = {}
        self._origin: dict[str, str] = {}

    def add(self, cfg: TaskConfig, plugin: str = "") -> None:
        old = self._tasks.get(cfg.task)
        if old is not None and old.source is not None and old.source == cfg.source:
            return
        if old is not None:
            raise TaskConfigError(
                f"task {cfg.task!r} defined twice: {old.source or self._origin[cfg.task]} and {cfg.source or plugin}"
            )
        self._tasks[cfg.task] = cfg
        self._origin[cfg.task] = plugin

    def add_source(self, source: Any, plugin: str = "") -> None:
        if isinstance(source, dict):
            self.add(parse_task(source), plugin)
            return
        path = Path(source)
        if path.is_dir():
            for f in sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")]):
                self.add(load_task_file(f), plugin)
        elif path.is_file():
            self.add(load_task_file(path), plugin)
        else:
            raise TaskConfigError(f"task source {str(path)!r} (from {plugin or '?'}) does not exist")

    def __iter__(self):
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: str) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        return list(self._tasks)

    def get(self, name: str) -> TaskConfig:
        if name not in self._tasks:
            raise UnknownNameError("task", name, [*self._tasks, *self.tags()])
        return self._tasks[name]

    def tags(self) -> set[str]:
        return {t for cfg in self._tasks.values() for t in cfg.tags}

    def resolve(self, specs: str | Iterable[str]) -> list[TaskConfig]:
        """``--tasks``: comma-separated names, fnmatch globs, tags, YAML files or directories; order kept."""
        tokens = [t.strip() for t in (specs.split(",") if isinstance(specs, str) else specs) if t.strip()]
        if not tokens:
            raise UsageError("no tasks given")
        out: dict[str, TaskConfig] = {}
        for token in tokens:
            for cfg in self._resolve_one(token):
                out.setdefault(cfg.task, cfg)
        return list(out.values())

    def _resolve_one(self, token: str) -> list[TaskConfig]:
        if token.endswith((".yaml", ".yml")) or Path(token).is_dir():
            path = Path(token)
            if not path.exists():
                raise UsageError(f"task file {token!r} does not exist")
            found = TaskIndex()
            found.add_source(path, "--tasks")
            return list(found)
        if token in self._tasks:
            return [self._tasks[token]]
        if is_glob(token):
            hits = [c for n, c in self._tasks.items() if fnmatch.fnmatchcase(n, token)]
            if not hits:
                raise UnknownNameError("task pattern", token, self.names())
            return hits
        tagged = [c for c in self._tasks.values() if token in c.tags]
        if tagged:
            return tagged
        raise UnknownNameError("task", token, [*self._tasks, *self.tags()])
