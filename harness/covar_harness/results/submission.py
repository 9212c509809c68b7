"""Strict checks for leaderboard submissions (``validate --strict``): beyond the schema, is a file what it claims?

A schema-valid file can still be a wrong submission: numbers edited by hand, a per-sample log that does not
add up to the metrics, data other than the benchmark's, a ``--limit`` run relabelled as a full one, or two files
for one (model, task). Each check here compares the file with an independent source:

- the shipped (or user-registered) data versions: per fingerprint, the sample count and a digest of the sorted
  ``(file, label)`` list, recomputed from the file's own ``samples.jsonl`` (so the log must be the benchmark's
  samples, each once, with the benchmark's labels);
- the log itself: every line well-typed, labels and predictions inside the class range, ``correct`` agreeing
  with ``pred`` and ``label``, and acc1, acc5, mean per-class recall, fg-driven rate and BG-Er recomputed;
- the model registry: a registered model name must record the target the registry gives it.

What no check here can prove: a log is self-reported, so a submitter who rewrites predictions, top-5 lists and
error types consistently, and the metrics to match, passes. Only re-running the pair shows that (README,
"Leaderboard CI").
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import parse_json
from covar_harness.data.resources import named
from covar_harness.results import files as results
from covar_harness.results.faithfulness import is_faithfulness

MAX_SAMPLES_BYTES = 512 * 1024 * 1024
TOLERANCE = 1e-9  # recomputed fractions must match to float precision, not "roughly"


@dataclass(frozen=True)
class DataVersion:
    """What a known data fingerprint binds a submission to: its sample count and the digest of its sorted
    ``(file, label)`` list (:func:`samples_digest`). None fields: registered without them (nothing to compare)."""

    n_samples: int | None = None
    samples: str | None = None


Known = dict[str, dict[str, DataVersion]]  # task -> fingerprint -> what it binds


@dataclass
class StrictChecker:
    """Checks files one by one and remembers the (model, task) pairs seen, to refuse duplicate submissions
    (names compared as they look: NFKC, without invisible characters or surrounding spaces)."""

    fingerprints: Known
    target_of: Callable[[str], str | None] = lambda spec: None  # the registry's model.target for a spec
    seen: dict[tuple[str, str], tuple[Path, tuple[str, str]]] = field(default_factory=dict)

    def problems(self, path: Path, obj: dict[str, Any]) -> list[str]:
        """Every strict problem of one schema-valid result file, each one line; empty when it passes."""

        if is_faithfulness(obj):  # `validate` takes them; a submission is a classification result
            return ["a faithfulness result, not a submission: --strict checks classification results (run)"]
        out = _provenance_problems(obj) + _config_problems(obj)
        fingerprint, version = _fingerprint_problems(obj, self.fingerprints)
        out += fingerprint + samples_problems(path, obj, version) + _target_problems(obj, self.target_of)
        raw = (obj["model"]["spec"], obj["task"]["name"])
        key = (look_alike_key(raw[0]), look_alike_key(raw[1]))
        if key in self.seen:
            other, before = self.seen[key]
            how = "also" if before == raw else "a look-alike of the one"
            out.append(f"duplicate submission: {raw[0]!r} x {raw[1]!r} is {how} in {other}")
        else:
            self.seen[key] = (path, raw)
        return out


def look_alike_key(name: str) -> str:
    """A name as a reader sees it: NFKC-normalised, case-folded, invisible (format) characters removed and
    white space trimmed, so ``demo`` and ``demo\\u200b`` or ``ｄｅｍｏ`` compare equal."""
    text = unicodedata.normalize("NFKC", name)
    return "".join(c for c in text if unicodedata.category(c) != "Cf").strip().casefold()


def samples_digest(pairs: Iterable[tuple[str, int]]) -> str:
    """sha256 over the sorted ``file<TAB>label`` lines: what a data version's samples are, independent of order."""
    h = hashlib.sha256()
    for file, label in sorted(pairs):
        h.update(f"{file}\t{label}\n".encode())
    return "sha256:" + h.hexdigest()


def known_fingerprints(extra: Path | None = None) -> Known:
    """The shipped data versions of the benchmark, plus a user file (their own COVAR copy, say):
    ``{task: [fingerprint, ...]}`` or ``{task: {fingerprint: {"n_samples": N, "samples": "sha256:..."}}}``."""

    shipped = named("reference", "data_fingerprints")
    known = {task: _versions(v) for task, v in shipped.items() if not task.startswith("_")}
    if extra is None:
        return known
    try:
        user = results.load(extra)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--fingerprints {extra}: cannot read ({exc})") from None
    try:
        if not isinstance(user, dict):
            raise ValueError
        for task, versions in user.items():
            known.setdefault(str(task), {}).update(_versions(versions))
    except ValueError:
        raise UsageError(
            f"--fingerprints {extra}: must be a JSON object {{task: [fingerprint, ...]}} or "
            '{task: {fingerprint: {"n_samples": N, "samples": "sha256:..."}}}'
        ) from None
    return known


def _versions(value: Any) -> dict[str, DataVersion]:
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return {x: DataVersion() for x in value}
    if not isinstance(value, dict):
        raise ValueError
    out = {}
    for fingerprint, bind in value.items():
        n, digest = (bind.get("n_samples"), bind.get("samples")) if isinstance(bind, dict) else (None, None)
        if not isinstance(bind, dict) or not _is_count(n) or not isinstance(digest, str):
            raise ValueError
        out[fingerprint] = DataVersion(n, digest)
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _provenance_problems(obj: dict[str, Any]) -> list[str]:
    prov = obj.get("provenance") or {}
    wanted = ("harness_version", "python", "torch", "device", "started_at", "finished_at")
    missing = [key for key in wanted if not prov.get(key)]
    return [f"provenance: {', '.join(missing)} missing or empty"] if missing else []


def _config_problems(obj: dict[str, Any]) -> list[str]:
    limit = (obj.get("config") or {}).get("limit")
    if limit is not None:
        return [f"config.limit: {results.short_value(limit)}; a --limit run is a subset and cannot be submitted"]
    return []


def _fingerprint_problems(obj: dict[str, Any], known: Known) -> tuple[list[str], DataVersion | None]:
    task, fingerprint = obj["task"]["name"], obj["task"]["data_fingerprint"]
    if task not in known:
        return [
            f"task.data_fingerprint: no known data version for task {task!r} (register yours with --fingerprints)"
        ], None
    if fingerprint not in known[task]:
        return [
            f"task.data_fingerprint: {fingerprint} is not a known version of {task!r} "
            f"(known: {', '.join(sorted(known[task]))}); a --limit run or other data cannot be submitted"
        ], None
    return [], known[task][fingerprint]


def _target_problems(obj: dict[str, Any], target_of: Callable[[str], str | None]) -> list[str]:
    """A registered model name must record the target this registry gives it (a demo or alias name put on
    another model's result shows here); local folders compare by their last path part (installs differ)."""
    spec, recorded = obj["model"]["spec"], obj["model"].get("target")
    expected = target_of(spec)
    if expected is None or recorded is None or _target_key(recorded) == _target_key(expected):
        return []
    return [f"model.target: {recorded!r}, but {spec!r} stands for {expected!r} in the registry"]


def _target_key(target: str) -> str:
    head, sep, path = target.partition("local-dir:")
    return f"{head}{sep}{Path(path).name}" if sep else target


def samples_problems(path: Path, obj: dict[str, Any], version: DataVersion | None = None) -> list[str]:
    """The per-sample log must exist, be the data version's samples (each once, with their labels), be well
    formed, and add up to every metric it determines."""
    log = results.samples_path(path)
    try:
        rows = list(_rows(log))
    except FileNotFoundError:
        return [f"samples: {log.name} missing (submit with --log-samples)"]
    except (OSError, ValueError) as exc:
        return [f"samples: {log.name} unreadable ({exc})"]
    n = obj["task"]["n_samples"]
    if len(rows) != n:
        return [f"samples: {len(rows)} line(s) in {log.name}, task.n_samples says {n}"]
    out = _row_problems(rows, obj["task"]["n_classes"])
    if out:  # a malformed log cannot be summed
        return out
    out += _binding_problems(rows, version)
    out += _metric_problems(obj, rows) + _bg_er_problems(obj, rows)
    return out


ROW_TYPES: dict[str, type] = {"index": int, "file": str, "label": int, "pred": int, "correct": bool}


def _row_problems(rows: list[dict], n_classes: int) -> list[str]:
    """Each line typed, in range and self-consistent; each sample (index, file) once. First offender per kind."""
    found: dict[str, str] = {}
    indices: set[int] = set()
    files: set[str] = set()
    for number, row in enumerate(rows, 1):
        where = f"samples line {number}"
        for key, typ in ROW_TYPES.items():
            value = row.get(key)
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                found.setdefault(
                    f"type:{key}", f"{where}: {key!r} must be {typ.__name__}, got {results.short_value(value)}"
                )
        if found:
            continue
        for key in ("label", "pred"):
            if not 0 <= row[key] < n_classes:
                found.setdefault(
                    key, f"{where}: {key} {row[key]} is outside the {n_classes} classes (0..{n_classes - 1})"
                )
        top5 = row.get("top5")
        if top5 is not None and not _top5_ok(top5, row["pred"], n_classes):
            found.setdefault("top5", f"{where}: 'top5' must be distinct classes in range, starting with 'pred'")
        if row["correct"] != (row["pred"] == row["label"]):
            found.setdefault("correct", f"{where}: 'correct' disagrees with its pred and label")
        if row["correct"] and row.get("error_type") is not None:
            found.setdefault("error_type", f"{where}: a correct sample has an error_type")
        if row["index"] in indices or row["file"] in files:
            found.setdefault("dup", f"{where}: sample {row['index']} / {row['file']!r} is logged twice")
        indices.add(row["index"])
        files.add(row["file"])
    return list(found.values())


def _top5_ok(top5: Any, pred: int, n_classes: int) -> bool:
    if not isinstance(top5, list) or not top5 or len(top5) > n_classes:
        return False
    ints = all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n_classes for c in top5)
    return ints and top5[0] == pred and len(set(top5)) == len(top5)


def _binding_problems(rows: list[dict], version: DataVersion | None) -> list[str]:
    if version is None:
        return []
    out = []
    if version.n_samples is not None and len(rows) != version.n_samples:
        out.append(f"samples: {len(rows)} logged, the data version has {version.n_samples}; submit a full run")
    if version.samples is not None and samples_digest((r["file"], r["label"]) for r in rows) != version.samples:
        out.append("samples: the logged (file, label) list is not this data version's (other files or labels)")
    return out


def _metric_problems(obj: dict[str, Any], rows: list[dict]) -> list[str]:
    """acc1, acc5, mean per-class recall and the fg-driven rate, recomputed from the log."""
    metrics, n_classes = obj["metrics"], obj["task"]["n_classes"]
    out = []
    for key, value in recomputed_metrics(rows, n_classes).items():
        if key in metrics or value is not None:
            if not _same(value, metrics.get(key)):
                out.append(f"metrics.{key}: {metrics.get(key)} but the samples give {value}")
    return out


def recomputed_metrics(rows: list[dict], n_classes: int) -> dict[str, float | None]:
    """What the log determines: the zero-shot accuracies (``common.metrics`` definitions) and, when the log
    carries the headline rule's drivers, the share of decided samples that are foreground-driven."""
    n = len(rows)
    out: dict[str, float | None] = {"acc1": sum(r["correct"] for r in rows) / n if n else None}
    tops = [r.get("top5") for r in rows]
    five = n and n_classes >= 5 and all(isinstance(t, list) and len(t) >= 5 for t in tops)
    out["acc5"] = sum(r["label"] in t[:5] for r, t in zip(rows, tops)) / n if five else None  # type: ignore[index]
    by_class: dict[int, list[bool]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r["correct"])
    out["mean_per_class_recall"] = sum(sum(v) / len(v) for v in by_class.values()) / len(by_class) if by_class else None
    if any("driver" in r for r in rows):
        decided = [r["driver"] for r in rows if r.get("driver") is not None]
        out["fg_driven_rate"] = sum(d == "fg" for d in decided) / len(decided) if decided else None
    return out


def _bg_er_problems(obj: dict[str, Any], rows: list[dict]) -> list[str]:
    """BG-Er = background-driven errors / errors with a mask (headline rule): the count must match the log."""
    bg_er = obj["metrics"].get("bg_er")
    diagnosis = (obj.get("config") or {}).get("diagnosis") or {}
    rules = diagnosis.get("rules") or []
    by_rule = (diagnosis.get("by_rule") or {}).get(rules[0], {}) if rules and isinstance(rules[0], str) else {}
    n_errors = by_rule.get("n_errors") if isinstance(by_rule, dict) else None
    wrong = sum(1 for r in rows if not r["correct"])
    if isinstance(n_errors, int) and _is_count(n_errors) and n_errors > wrong:
        return [f"config.diagnosis: {n_errors} diagnosed errors, but the samples have {wrong} wrong"]
    if bg_er is None:
        return []
    if not isinstance(n_errors, int) or not _is_count(n_errors) or n_errors <= 0:
        return ["metrics.bg_er: set, but config.diagnosis.by_rule gives no error count to check it against"]
    bg = sum(1 for r in rows if not r["correct"] and r.get("error_type") == "bg")
    if not _same(bg / n_errors, bg_er):
        return [f"metrics.bg_er: {bg_er} but the samples give {bg}/{n_errors} background-driven errors"]
    return []


def _rows(log: Path) -> Iterable[dict]:
    text = results.read_regular(log, MAX_SAMPLES_BYTES).decode("utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row = parse_json(line, f"line {number}", constants=False)
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object")
            yield row


def _same(a: float | None, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return results.is_number(b) and abs(a - float(b)) <= TOLERANCE
