"""A task's ``class_groups``: which classes count as a fine-grained confusion of each other (docs/design.md
section 8).

A core module (diagnosis reads it): it imports nothing from ``covar_harness_tasks``, which may import it.

The diagnosis step asks "do label and prediction share a group?"; this module answers it as a plain mapping
from the task's class index to a group id. Sources, as the task YAML's ``class_groups`` value:
  - a shipped name (``imagenet1k``: WordNet-derived groups over the ImageNet-1k label space, rule inside), or a
    JSON file path: either a plain mapping or ``{"rule": ..., "label_space": ..., "groups": {...}}``;
  - an inline mapping in the YAML.
Keys are the task's class indices or class names. A mapping declared over ``imagenet1k`` is keyed by ImageNet
index and applies to a task with a different class list (COVAR, the 45-way CounterAnimals variant) by matching
class names to ImageNet classes; classes that cannot be matched get a group of their own, so they never count
as fine-grained confusions, and the rule says how many those were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.catalog.registry import UsageError
from covar_harness.catalog.taskconfig import check_class_groups, check_size
from covar_harness.data.imagenet import imagenet_index
from covar_harness.data.resources import load_list

if TYPE_CHECKING:
    from covar_harness.catalog.taskconfig import TaskConfig

UNMATCHED = "unmatched:"


def _spec(cfg: TaskConfig) -> dict[str, Any] | None:
    """The task's groups as {"groups": mapping, "rule": str, "label_space": str | None}."""
    if cfg.class_groups is None:
        return None
    base = cfg.source.parent if cfg.source else None
    raw = load_list("class_groups", cfg.class_groups, base)
    if not isinstance(raw, dict):
        raise UsageError(f"task {cfg.task!r}: class_groups must be a mapping class -> group")
    where = f"task {cfg.task!r} ({cfg.class_groups if isinstance(cfg.class_groups, str) else 'inline'})"
    check_size(raw, where)  # a JSON file has no aliases, but may be huge or deep
    check_class_groups(raw, where)
    if isinstance(raw.get("groups"), dict):
        return {"groups": raw["groups"], "rule": str(raw.get("rule", "")), "label_space": raw.get("label_space")}
    where = cfg.class_groups if isinstance(cfg.class_groups, str) else "inline mapping"
    return {"groups": raw, "rule": f"groups from {where}", "label_space": None}


def _task_keyed(groups: dict, classnames: list[str], task: str) -> dict[int, str]:
    """Keys are task class indices or names; classes not named get their own group."""
    by_name = {n: i for i, n in enumerate(classnames)}
    out: dict[int, str] = {}
    for key, group in groups.items():
        k = str(key)
        index = int(k) if k.lstrip("-").isdigit() else by_name.get(k)
        if index is None or not 0 <= index < len(classnames):
            raise UsageError(f"task {task!r}: class_groups names {key!r}, which is not one of its classes")
        out[index] = str(group)
    return {i: out.get(i, f"{UNMATCHED}{name}") for i, name in enumerate(classnames)}


def _imagenet_keyed(groups: dict, classnames: list[str]) -> dict[int, str]:
    """Keys are ImageNet indices: used directly for a 1000-class task, else through class-name matching."""
    try:
        by_index = {int(k): str(v) for k, v in groups.items()}
    except ValueError:
        raise UsageError("class_groups over imagenet1k must be keyed by ImageNet index (0..999)") from None
    out = {}
    for i, (name, index) in enumerate(zip(classnames, imagenet_indices(classnames))):
        out[i] = by_index[index] if index in by_index else f"{UNMATCHED}{name}"
    return out


def imagenet_indices(classnames: list[str]) -> list[int | None]:
    """Each task class's ImageNet-1k index: the position itself for a 1000-class task, else by name (None: no
    unambiguous match). Rules over the ImageNet label space (groups, WordNet chains) apply through this."""
    if len(classnames) == 1000:
        return list(range(1000))
    return [imagenet_index(name) for name in classnames]


def class_groups(cfg: TaskConfig, classnames: list[str]) -> dict[int, str] | None:
    """Task class index -> group id, or None when the task defines no groups.

    Two classes share a group exactly when their ids are equal; ``unmatched:<name>`` ids are unique.
    """
    spec = _spec(cfg)
    if spec is None:
        return None
    if spec["label_space"] == "imagenet1k":
        return _imagenet_keyed(spec["groups"], classnames)
    return _task_keyed(spec["groups"], classnames, cfg.task)


def class_groups_rule(cfg: TaskConfig, classnames: list[str]) -> str | None:
    """A one-line description of the rule, for the result file (docs/design.md section 8: the rule used is recorded)."""
    spec = _spec(cfg)
    if spec is None:
        return None
    groups = class_groups(cfg, classnames) or {}
    unmatched = sum(1 for g in groups.values() if g.startswith(UNMATCHED))
    note = f"; {unmatched} of {len(classnames)} classes matched no group (never fine-grained)" if unmatched else ""
    return f"{spec['rule']}{note}"


def share_group(groups: dict[int, str] | None, label: int, pred: int) -> bool:
    """True when ``pred`` is a fine-grained confusion of ``label`` (a different class of the same group)."""
    if not groups or label == pred:
        return False
    return groups.get(label) is not None and groups.get(label) == groups.get(pred)
