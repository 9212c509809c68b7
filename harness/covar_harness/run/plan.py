"""The run plan: which model x task pairs to run, skip or refuse, decided before any weights load.

Everything cheap is checked here (the device, the output folder, each task's data, existing result files and
the settings they were made with), so a mistake costs one line and exit 2, not a download of 18 models
followed by 162 failed pairs.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import slug
from covar_harness.data.resources import load_list
from covar_harness.data.samples import DatasetNotFound, open_task_data, preflight
from covar_harness.data.task_inputs import limit_samples, task_classnames, task_digest, task_templates
from covar_harness.models.specs import patch_count_hint
from covar_harness.results import files as results
from covar_harness.results import validation

if TYPE_CHECKING:
    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.models.specs import ModelRef
    from covar_harness.run.options import RunOptions

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


@dataclass
class PlannedPair:
    ref: ModelRef
    cfg: TaskConfig
    path: Path
    status: str  # run | skipped (result file made with the same settings) | noted (task not applicable)
    reason: str = ""
    existed: bool = False  # a result file was there when planned (redone: --overwrite, or outputs newly asked for)


def check_device(device: str) -> None:
    """Unknown or unavailable devices fail here, not after the weights have been downloaded."""
    match = re.fullmatch(r"auto|cpu|mps|cuda(?::(\d+))?", device)
    if match is None:
        close = difflib.get_close_matches(device, ["auto", "cpu", "cuda", "mps"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown --device {device!r}: choose from {', '.join(DEVICES)}{hint}")
    if device in ("auto", "cpu"):
        return

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: MPS is not available on this machine; use --device cpu or auto")
        return
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
            "use --device cpu or auto"
        )
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")


def check_writable(folder: Path, flag: str) -> None:
    """Create ``folder`` and write a probe file into it: an unwritable output is exit 2 before any model loads."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {folder}: not writable ({exc.strerror or exc})") from None


def check_k(models: list[ModelRef], catalog: Catalog, options: RunOptions) -> None:
    """``--cci-k`` above a model's patch count, refused before download where the patch count is known from the
    model's config alone (open_clip architectures, local folders); other models fail that pair at start."""
    ks = options.cluster_counts()
    if not ks:
        return

    for ref in models:
        n = patch_count_hint(ref.target, catalog)
        if n is not None and max(ks) > n:
            raise UsageError(f"--cci-k {max(ks)} is more than the {n} patches of {ref.spec}; use --cci-k <= {n}")


def check_data(tasks: list[TaskConfig], catalog: Catalog, data_dir: Path | None) -> dict[str, str]:
    """Every task's data opens (cheaply, no image decoded); returns {task: note} for tasks to skip with a note.

    Missing data for several tasks is one error naming them all, not one per task and model.
    """

    notes, missing = {}, []
    for cfg in tasks:
        task_templates(cfg)  # a missing templates or class-names file is exit 2 now, not a failed pair later
        load_list("classnames", cfg.classnames, cfg.source.parent if cfg.source else None)
        try:
            note = preflight(cfg, catalog, data_dir)
        except DatasetNotFound as exc:
            missing.append((cfg.task, str(exc)))
            continue
        if note:
            notes[cfg.task] = note
    if len(missing) == 1:
        raise UsageError(missing[0][1])
    if missing:
        names = ", ".join(name for name, _ in missing)
        raise UsageError(f"{len(missing)} tasks have no data ({names}); first: {missing[0][1]}")
    return notes


def plan_run(
    models: list[ModelRef],
    tasks: list[TaskConfig],
    catalog: Catalog,
    options: RunOptions,
    *,
    check_only_plan: bool = False,
) -> list[PlannedPair]:
    """The pairs in run order, each marked run / skipped / noted; UsageError when the run must not start.

    ``check_only_plan`` (``--dry-run``) skips the checks that write to disk.
    """
    check_device(options.device)
    if not check_only_plan:
        check_writable(options.output_dir, "--output-dir")
    grid = shard_pairs(models, tasks, options.shard)
    check_k(list({id(ref): ref for ref, _ in grid}.values()), catalog, options)
    notes = check_data(list({id(cfg): cfg for _, cfg in grid}.values()), catalog, options.data_dir)
    for ref in {id(ref): ref for ref, _ in grid}.values():
        check_device(options.for_model(ref).device)
    facts = _TaskFacts(catalog, options)
    pairs, conflicts = [], []
    owners: dict[Path, tuple[str, str]] = {}
    for ref, cfg in grid:
        path = pair_result_path(options.output_dir, ref.spec, cfg.task)
        owner = owners.setdefault(path, (ref.spec, cfg.task))
        if owner != (ref.spec, cfg.task):  # never two pairs into one file: the first would be lost
            raise UsageError(
                f"{owner[0]} x {owner[1]} and {ref.spec} x {cfg.task} map to one result file, {path}; rename "
                "one of them"
            )
        pair, conflict = _plan_pair(ref, cfg, path, notes.get(cfg.task), options, facts)
        pairs.append(pair)
        conflicts += [conflict] if conflict else []
    if conflicts:
        more = f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else ""
        raise UsageError(
            f"a result file exists from a run with other settings: {conflicts[0]}{more}; pass "
            "--overwrite to redo such pairs, or another --output-dir"
        )
    return pairs


def pair_result_path(output_dir: Path, spec: str, task: str) -> Path:
    """The pair's result file: ``results.result_path``, or the file an earlier harness named with the shorter
    hash (``results.legacy_result_path``) when only that one exists, so earlier results are still found."""
    path = results.result_path(output_dir, spec, task)
    legacy = results.legacy_result_path(output_dir, spec, task)
    return legacy if legacy is not None and not path.exists() and legacy.exists() else path


def _plan_pair(
    ref: ModelRef, cfg: TaskConfig, path: Path, note: str | None, options: RunOptions, facts: _TaskFacts
) -> tuple[PlannedPair, str]:
    """One pair of the plan, and the conflict that refuses the run (empty: none)."""
    if note:
        return PlannedPair(ref, cfg, path, "noted", note), ""
    existed = path.exists()
    if options.overwrite or not existed:
        return PlannedPair(ref, cfg, path, "run", existed=existed), ""
    stored, diffs = stored_differences(path, ref.spec, cfg, options.for_model(ref).result_settings(), facts.of)
    if diffs:
        return PlannedPair(ref, cfg, path, "skipped"), f"{path} ({'; '.join(diffs)})"
    wanted = missing_outputs(path, stored, ref.spec, cfg.task, options)
    if wanted:
        return PlannedPair(ref, cfg, path, "run", f"redone for {' and '.join(wanted)}", existed=True), ""
    return PlannedPair(ref, cfg, path, "skipped", "result file exists with the same settings"), ""


def missing_outputs(path: Path, stored: dict[str, Any], spec: str, task: str, options: RunOptions) -> list[str]:
    """Outputs this run asks for that an existing result with the same settings lacks (its samples log, its
    ``--save-maps`` overlays where attribution ran): the pair is redone to write them, never skipped in silence.
    """
    wanted = []
    if options.log_samples and not results.samples_path(path).is_file():
        wanted.append("its samples log (--log-samples)")
    for step in options.steps:
        root = getattr(step, "save_maps", None)
        ran = (stored.get("config", {}).get(getattr(step, "name", "")) or {}).get("status") == "ran"
        folder = Path(root) / slug(spec) / slug(task) if root else None
        if folder is not None and ran and not (folder.is_dir() and any(folder.glob("*.png"))):
            wanted.append("its maps (--save-maps)")
    return wanted


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` as (i, n) with 0 <= i < n; None without the flag; UsageError (exit 2) for anything else."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UsageError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shards are numbered 0 to n-1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text!r}: need n >= 1 and 0 <= i < n (here i={index}, n={count})")
    return index, count


def shard_pairs(
    models: list[ModelRef], tasks: list[TaskConfig], shard: tuple[int, int] | None
) -> list[tuple[ModelRef, TaskConfig]]:
    """The (model, task) pairs of shard ``(i, n)``, in run order (model by model, so each model loads once).

    Pairs are dealt round-robin over the grid sorted by (model spec, task name): the split depends only on the
    set of pairs, not on the order of ``--models`` / ``--tasks``, it is balanced (shard sizes differ by at most
    one), and shards ``0..n-1`` of the same command partition the grid: no pair twice, none left out.
    """
    grid = [(ref, cfg) for ref in models for cfg in tasks]
    if shard is None:
        return grid
    index, count = shard
    order = sorted(range(len(grid)), key=lambda j: (grid[j][0].spec, grid[j][1].task, j))
    mine = {j for rank, j in enumerate(order) if rank % count == index}
    return [pair for j, pair in enumerate(grid) if j in mine]


class _TaskFacts:
    """What a task's existing results are compared with, computed only for tasks with a result to compare: the
    data fingerprint of its evaluated samples, its templates and its task digest (``task_inputs.task_digest``)."""

    def __init__(self, catalog: Catalog, options: RunOptions):
        self.catalog, self.options = catalog, options
        self._cache: dict[str, tuple[str, list[str], str]] = {}

    def of(self, cfg: TaskConfig) -> tuple[str, list[str], str]:
        if cfg.task not in self._cache:
            samples = open_task_data(cfg, self.catalog, self.options.data_dir)
            samples = limit_samples(samples, self.options.limit, self.options.seed)
            try:
                classnames, templates = task_classnames(cfg, samples), task_templates(cfg, samples)
            except ValueError as exc:  # the pair would fail: compare nothing that it cannot have
                classnames, templates = [str(exc)], []
            self._cache[cfg.task] = (samples.fingerprint(), templates, task_digest(cfg, classnames, templates))
        return self._cache[cfg.task]


def stored_differences(
    path: Path, spec: str, cfg: TaskConfig, settings: dict, facts: Callable[[TaskConfig], tuple[str, list[str], str]]
) -> tuple[dict[str, Any], list[str]]:
    """The existing result file and what differs between it and the pair about to run; no differences: the
    file can be reused. Compared: model, task and version, every run setting, then the data, the templates and
    the task digest (class names, class groups and the other task fields that change a number)."""
    try:
        stored = results.load(path)
    except (OSError, ValueError) as exc:
        return {}, [f"unreadable: {exc}"]
    if validation.validate(stored):
        return stored, ["not a valid result file"]
    wanted = {"model": spec, "task": cfg.task, "task version": cfg.version}
    found = {
        "model": stored["model"]["spec"],
        "task": stored["task"]["name"],
        "task version": stored["task"]["version"],
    }
    diffs = [f"{key}: {found[key]!r} there, {wanted[key]!r} now" for key in wanted if found[key] != wanted[key]]
    ran_with = stored["config"].get("run_settings")
    if not isinstance(ran_with, dict):
        return stored, diffs + ["made by an older harness that did not record its settings"]
    stored_flat = _with_added_settings(_flat(ran_with))
    diffs += [f"{key}: {a!r} there, {b!r} now" for key, a, b in _changed(stored_flat, _flat(settings))]
    if diffs:
        return stored, diffs
    fingerprint, templates, digest = facts(cfg)
    if stored["task"]["data_fingerprint"] != fingerprint:
        diffs.append("the data changed (data_fingerprint differs)")
    if templates and stored["config"]["templates"] != templates:
        diffs.append(f"templates: {_clip(stored['config']['templates'])} there, {_clip(templates)} now")
    recorded = stored["config"].get("task_digest")  # absent: written before it was recorded; templates compared
    if not diffs and recorded is not None and recorded != digest:
        diffs.append("the task's class names, class groups or dataset settings changed (task_digest differs)")
    return stored, diffs


def _clip(values: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(v)[:60] for v in values[:n])
    return f"[{shown}{f', ... {len(values) - n} more' if len(values) > n else ''}]"


# settings recorded only since a later version: (flat key, the value a file without it was made with); a file
# without the key compares as made with that value, so adding a setting does not orphan earlier results
ADDED_SETTINGS = (("diagnosis.fine_rule", "shared class group"), ("steps.attribution.normalize", "none"))


def _with_added_settings(flat: dict[str, Any]) -> dict[str, Any]:
    out = dict(flat)
    for key, value in ADDED_SETTINGS:
        parent = key.rsplit(".", 1)[0] + "."
        if key not in out and any(k.startswith(parent) for k in out):  # only where that section was recorded
            out[key] = value
    return out


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _changed(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
