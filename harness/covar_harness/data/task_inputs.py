"""What a run takes from a task besides its samples: its class names and prompt templates as resolved, the digest
of everything in it that changes a number (compared on resume), and the seeded ``--limit`` subset. Shared by the
run, its plan, retrieval and faithfulness.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from covar_harness.catalog.taskconfig import TaskConfig
from covar_harness.data.resources import load_list
from covar_harness.data.samples import SampleSet


def task_classnames(cfg: TaskConfig, samples: SampleSet) -> list[str]:
    base = cfg.source.parent if cfg.source else None
    names = load_list("classnames", cfg.classnames, base) if cfg.classnames is not None else samples.classnames
    if not names:
        raise ValueError(f"task {cfg.task!r} names no classes and its dataset provides none")
    return list(names)


def task_templates(cfg: TaskConfig, samples: SampleSet | None = None) -> list[str]:
    """The task's prompt templates. ``templates: dataset`` takes the prompts the data ships (a CLIP_benchmark
    webdataset root's); a task without ``templates:`` takes them too when the data ships any, as CLIP_benchmark
    always does for a webdataset, and ``simple`` otherwise. Before the data is open (the run plan) the shipped
    prompts are an empty list."""
    wanted = cfg.templates
    if wanted is None or wanted == "dataset":
        shipped = list(getattr(samples, "templates", None) or [])
        if shipped or samples is None:
            return shipped
        if wanted == "dataset":
            raise ValueError(f"task {cfg.task!r} says templates: dataset, but its dataset ships no templates")
        wanted = "simple"
    base = cfg.source.parent if cfg.source else None
    return list(load_list("templates", wanted, base))


def task_digest(cfg: TaskConfig, classnames: list[str], templates: list[str]) -> str:
    """What of a task, besides its samples (``data_fingerprint``), changes a number: its resolved class names and
    templates, class groups, ``diagnose`` and the dataset settings other than where the data lies. Recorded as
    ``config.task_digest`` and compared before an existing result is reused, so an edited task YAML (same name
    and version) is never taken for the same settings."""
    dataset = {k: v for k, v in cfg.dataset.items() if not str(k).endswith(("path", "dir"))}
    what = {
        "classnames": list(classnames),
        "templates": list(templates),
        "class_groups": cfg.class_groups,
        "diagnose": cfg.diagnose,
        "dataset": dataset,
    }
    text = json.dumps(what, sort_keys=True, ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def limit_samples(samples: SampleSet, limit: int | None, seed: int) -> SampleSet:
    """A seeded random subset (kept in dataset order), so ``--limit`` covers every class, reproducibly."""
    if not limit or limit >= len(samples):
        return samples

    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
    return samples.subset(keep.tolist())
