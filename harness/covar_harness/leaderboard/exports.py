"""``covar-harness export``: result files -> the Hugging Face Hub's evaluation-results layouts or Weights & Biases.

``--to hf --out DIR`` writes one folder per model (``slug`` of its spec)::

    <slug>/README.md                      model-card front matter: the ``model-index`` block (task, dataset,
                                          metrics, source), ready to merge into the model's card
    <slug>/.eval_results/<task>.yaml      the Hub's newer layout: one file per benchmark, the headline metric
    .covar-harness-export                 marker: the folder is an earlier export (replaced by the next one)

Numbers are the leaderboard's (``leaderboard.long_records``: fractions, unrounded). Every string comes from a
result file, i.e. from strangers: each goes through ``console.one_line`` and is written by ``yaml.safe_dump``
(quoted as YAML needs; no tags, no anchors). ``--push REPO`` opens two pull requests on the Hub with one model's
results (the ``.eval_results/`` files; the ``model-index`` merged into the card), only when ``huggingface_hub``
is installed and the Hub is not switched off (``HF_HUB_OFFLINE``).

``--to wandb --project P`` logs one run per model: a ``wandb.Table`` of its long records and its headline
metrics as the run summary. ``WANDB_MODE`` (online, offline, disabled) is wandb's own and is respected.
"""

from __future__ import annotations

import json
import os
import re
from argparse import Namespace
from pathlib import Path
from typing import Any

import yaml

from covar_harness import __version__
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import console, inert, markup, one_line
from covar_harness.common.safe_files import slug
from covar_harness.leaderboard import generated_folders
from covar_harness.leaderboard import tables as lb
from covar_harness.results import files as results

MARKER = ".covar-harness-export"
TASK_TYPE = "zero-shot-image-classification"
TASK_TITLE = "Zero-Shot Image Classification"
SPLIT = "test"  # every task of the harness is an evaluation set
SOURCE_NAME = "covar-harness"
METRIC_TYPES = {"acc1": "accuracy", "acc5": "accuracy"}  # Hub metric ids; the others keep the harness's name
METRIC_NAMES = {
    "acc1": "top-1 accuracy",
    "acc5": "top-5 accuracy",
    "mean_per_class_recall": "mean per-class recall",
    "bg_er": "BG-Er (background-driven error share)",
    "fine_er": "Fine-Er (fine-grained error share)",
    "bg_er_null_p": "BG-Er p-value against the rule's permutation null (one-sided)",
    "fine_er_null_p": "Fine-Er p-value against the rule's permutation null (one-sided)",
    "bg_sufficient_rate": "counterfactual truth: share of errors whose prediction survives with the background alone",
    "fg_sufficient_rate": "counterfactual truth: share of errors whose prediction survives with the foreground alone",
    "fg_driven_rate": "foreground-driven rate",
}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
WANDB_HINT = "wandb is not installed: pip install wandb (or pip install 'covar-harness[wandb]')"
HUB_HINT = "huggingface_hub is not installed: pip install huggingface_hub (or pip install 'covar-harness[hub]')"


# ---- what is exported ----------------------------------------------------------------------------------
def by_model(records: list[dict], model: str | None = None) -> dict[str, list[dict]]:
    """Records per model spec, the last file of a (model, task) winning as in the leaderboard and the report."""
    pairs: dict[tuple[str, str], dict] = {}
    for rec in records:
        if model is None or rec["model"]["spec"] == model:
            pairs[(rec["model"]["spec"], rec["task"]["name"])] = rec
    out: dict[str, list[dict]] = {}
    for (spec, _task), rec in pairs.items():
        out.setdefault(spec, []).append(rec)
    return out


def _text(value: Any) -> str:
    return one_line(value)


def _date(rec: dict) -> str | None:
    stamp = rec.get("provenance", {}).get("finished_at")
    match = _DATE.match(stamp) if isinstance(stamp, str) else None
    return match.group(0) if match else None


def _metric_rows(rec: dict) -> list[dict]:
    """The record's long rows (the leaderboard's numbers) that hold a number."""
    return [row for row in lb.long_records([rec]) if results.is_number(row["value"])]


def _source(rec: dict, url: str | None) -> dict | None:
    """The Hub requires a url with a source's name: without one, no source."""
    version = _text(rec.get("provenance", {}).get("harness_version", ""))
    return None if url is None else {"name": f"{SOURCE_NAME} {version}".strip(), "url": _text(url)}


def _metric_name(row: dict) -> str:
    """The metric's name for the Hub; a diagnosis metric names its rule ("BG-Er (background-driven error share;
    area, harness rule)"), since the harness's rules and the paper's unknown one measure different things."""
    name = METRIC_NAMES.get(row["metric"], row["metric"])
    rule = row.get("rule")
    if not rule:
        return name
    return f"{name[:-1]}; {rule})" if name.endswith(")") else f"{name} ({rule})"


def model_index_result(rec: dict, source_url: str | None = None) -> dict:
    """One ``model-index`` result: task, dataset, every metric with a number, source (with a url only)."""
    task = _text(rec["task"]["name"])
    family, _, subset = task.partition("/")
    dataset: dict[str, Any] = {"name": task, "type": family or task, "split": SPLIT}
    if subset:
        dataset["config"] = subset
    metrics = [
        {
            "type": METRIC_TYPES.get(row["metric"], _text(row["metric"])),
            "value": row["value"],
            "name": _text(_metric_name(row)),
        }
        for row in _metric_rows(rec)
    ]
    out = {"task": {"type": TASK_TYPE, "name": TASK_TITLE}, "dataset": dataset, "metrics": metrics}
    source = _source(rec, source_url)
    return out if source is None else {**out, "source": source}


def eval_result(rec: dict, source_url: str | None = None) -> list[dict]:
    """The ``.eval_results/<task>.yaml`` entry: the task's headline metric (a fraction, as in the leaderboard)."""
    rows = [row for row in _metric_rows(rec) if row["headline"]]
    if not rows:
        return []
    entry: dict[str, Any] = {
        "dataset": {"id": _text(rec["task"]["name"]), "task_id": _text(rows[0]["metric"])},
        "value": rows[0]["value"],
    }
    date = _date(rec)
    if date:
        entry["date"] = date
    source = _source(rec, source_url)
    if source is not None:
        entry["source"] = source
    entry["notes"] = _text(f"{rows[0]['metric']} as a fraction in [0, 1], n={rec['task']['n_samples']}")
    return [entry]


def hf_documents(records: list[dict], source_url: str | None = None) -> dict[str, dict]:
    """Per model: its slug -> {"model_index": [...], "eval_results": {file name: entries}}."""
    out = {}
    for spec, recs in by_model(records).items():
        index = [{"name": _text(spec), "results": [model_index_result(r, source_url) for r in recs]}]
        evals = {f"{slug(r['task']['name'])}.yaml": eval_result(r, source_url) for r in recs}
        out[slug(spec)] = {"model_index": index, "eval_results": {k: v for k, v in evals.items() if v}}
    return out


# ---- writing ---------------------------------------------------------------------------------------------
def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=10_000)


def check_out(out: Path) -> None:
    """``--out`` must be missing, empty, or an earlier export (see ``leaderboard.generated_folders``)."""
    generated_folders.check_out(out, MARKER, "export")


def _write_tree(folder: Path, documents: dict[str, dict]) -> None:
    (folder / MARKER).write_text(json.dumps({"generator": "covar-harness export", "version": __version__}) + "\n")
    for name, doc in documents.items():
        model_dir = folder / name
        (model_dir / ".eval_results").mkdir(parents=True)
        card = "---\n" + _dump({"model-index": doc["model_index"]}) + "---\n"
        (model_dir / "README.md").write_text(card, encoding="utf-8")
        for file_name, entries in doc["eval_results"].items():
            (model_dir / ".eval_results" / file_name).write_text(_dump(entries), encoding="utf-8")


def write_hf(documents: dict[str, dict], out: Path) -> None:
    """Write ``hf_documents(...)`` atomically: built in a temp folder beside ``out``, then renamed into place."""
    out = Path(out)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with generated_folders.building(out) as tmp:
        _write_tree(tmp, documents)
        generated_folders.swap_in(tmp, out)


# ---- pushing to the Hub (never in tests) -----------------------------------------------------------------
def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_push(repo: str, documents: dict[str, dict]) -> Any:
    """``huggingface_hub`` importable, the Hub not switched off, one model to push: its module, else UsageError."""
    if len(documents) != 1:
        raise UsageError(f"--push needs exactly one model, found {len(documents)}; choose one with --model SPEC")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise UsageError(f"--push {one_line(repo)!r} is not a Hub repository id (owner/name)")
    try:
        import huggingface_hub  # lazy: optional dependency, imported where used
    except ImportError:
        raise UsageError(HUB_HINT) from None
    if _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"):
        raise UsageError("--push needs the Hub, but HF_HUB_OFFLINE is set")
    return huggingface_hub


def push_hf(hub: Any, repo: str, model_dir: Path, model_index: list) -> str:
    """Open pull requests on ``repo``: the ``.eval_results/`` files, then the ``model-index`` merged into the card
    (``huggingface_hub.metadata_update``, never overwriting a result already there). Returns the first's URL."""
    try:
        api = hub.HfApi()
        commit = api.upload_folder(
            repo_id=repo,
            folder_path=str(model_dir / ".eval_results"),
            path_in_repo=".eval_results",
            commit_message="Add covar-harness evaluation results",
            create_pr=True,
        )
        hub.metadata_update(repo, {"model-index": model_index}, overwrite=False, create_pr=True)
    except Exception as exc:  # noqa: BLE001 - offline, auth and Hub errors come in many types: one line each
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(
            f"--push {one_line(repo)}: the Hub could not be reached or refused the upload ({type(exc).__name__}: "
            f"{one_line(why)}); the files are written under {one_line(model_dir)}, push again when online"
        ) from None
    return str(getattr(commit, "pr_url", None) or commit)


# ---- Weights & Biases --------------------------------------------------------------------------------------
def import_wandb() -> Any:
    try:
        import wandb  # lazy: optional dependency, imported where used
    except ImportError:
        raise UsageError(WANDB_HINT) from None
    return wandb


def wandb_payload(recs: list[dict]) -> tuple[list[list[Any]], dict[str, Any]]:
    """(table rows in ``leaderboard.LONG_FIELDS`` order, summary {"task/metric": value} of the headlines)."""

    rows = inert(lb.long_records(recs))
    data = [[row[f] for f in lb.LONG_FIELDS] for row in rows]
    summary = {f"{row['task']}/{row['metric']}": row["value"] for row in rows if row["headline"]}
    return data, {k: v for k, v in summary.items() if results.is_number(v)}


def log_wandb(wandb: Any, records: list[dict], project: str, entity: str | None) -> list[str]:
    """One run per model; returns the model specs logged."""
    logged = []
    for spec, recs in by_model(records).items():
        data, summary = wandb_payload(recs)
        run = wandb.init(
            project=project,
            entity=entity,
            name=_text(spec)[:128],
            job_type="covar-harness-export",
            config={"model": _text(spec), "tasks": [_text(r["task"]["name"]) for r in recs]},
        )
        try:
            run.log({"long_records": wandb.Table(columns=list(lb.LONG_FIELDS), data=data)})
            run.summary.update(summary)
        finally:
            run.finish()
        logged.append(spec)
    return logged


# ---- the command ------------------------------------------------------------------------------------------
def _check_flags(args: Namespace) -> None:
    if args.to == "hf":
        if args.out is None:
            raise UsageError("--to hf needs --out DIR")
        if args.project is not None or args.entity is not None:
            raise UsageError("--project and --entity go with --to wandb")
        if args.source_url is not None and not re.fullmatch(r"https?://[^\s]+", args.source_url):
            raise UsageError(f"--source-url {one_line(args.source_url)!r} is not an http(s) URL")
    else:
        if args.project is None:
            raise UsageError("--to wandb needs --project NAME")
        if args.out is not None or args.push is not None or args.source_url is not None:
            raise UsageError("--out, --push and --source-url go with --to hf")


def _load(args: Namespace, err: Any) -> list[dict]:
    if not os.path.isdir(args.results_dir):
        raise UsageError(f"results folder {one_line(args.results_dir)!r} does not exist")
    loaded = lb.collect(args.results_dir)
    for path, why in loaded.invalid:
        err.print(f"[yellow]skipped invalid result {markup(path)}: {markup(why)}[/yellow]", soft_wrap=True)
    records = [r for r in loaded.records if args.model is None or r["model"]["spec"] == args.model]
    if not records:
        which = "" if args.model is None else f" of model {one_line(args.model)!r}"
        raise UsageError(f"no valid result files{which} under {one_line(args.results_dir)}")
    return records


def cmd_export(args: Namespace) -> int:
    _check_flags(args)
    wandb = import_wandb() if args.to == "wandb" else None  # before anything is read: one line, exit 2
    out, err = console(), console(stderr=True)
    records = _load(args, err)
    if wandb is not None:
        logged = log_wandb(wandb, records, args.project, args.entity)
        out.print(f"logged {len(logged)} run(s) to wandb project {markup(args.project)}", soft_wrap=True)
        return 0
    url = args.source_url or (None if args.push is None else f"https://huggingface.co/{args.push}")
    documents = hf_documents(records, url)
    hub = check_push(args.push, documents) if args.push is not None else None  # checked before writing
    write_hf(documents, args.out)
    out.print(f"wrote {len(documents)} model folder(s) to {markup(args.out)}", soft_wrap=True)
    if hub is not None:
        ((name, doc),) = documents.items()
        pr = push_hf(hub, args.push, Path(args.out) / name, doc["model_index"])
        out.print(f"opened pull requests on {markup(args.push)}: {markup(pr)}", soft_wrap=True)
    return 0
