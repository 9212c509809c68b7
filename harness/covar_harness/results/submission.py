"""Strict checks for leaderboard submissions (``validate --strict``): beyond the schema, is a file what it claims?

A schema-valid file can still be a wrong submission: numbers edited by hand, a per-sample log that does not
add up to the metrics, data other than the benchmark's, or two files for one (model, task). Each check here
compares the file with an independent source: the shipped (or user-registered) data fingerprints, and the
file's own ``samples.jsonl`` from which acc1 and BG-Er are recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.results import files as results

MAX_SAMPLES_BYTES = 512 * 1024 * 1024
TOLERANCE = 1e-9  # recomputed fractions must match to float precision, not "roughly"


@dataclass
class StrictChecker:
    """Checks files one by one and remembers the (model, task) pairs seen, to refuse duplicate submissions."""

    fingerprints: dict[str, set[str]]
    seen: dict[tuple[str, str], Path] = field(default_factory=dict)

    def problems(self, path: Path, obj: dict[str, Any]) -> list[str]:
        """Every strict problem of one schema-valid result file, each one line; empty when it passes."""
        from covar_harness.faithfulness.leaderboard import is_faithfulness

        if is_faithfulness(obj):  # `validate` takes them; a submission is a classification result
            return ["a faithfulness result, not a submission: --strict checks classification results (run)"]
        out = _provenance_problems(obj) + _fingerprint_problems(obj, self.fingerprints)
        out += samples_problems(path, obj)
        key = (obj["model"]["spec"], obj["task"]["name"])
        if key in self.seen:
            out.append(f"duplicate submission: {key[0]} x {key[1]} is also in {self.seen[key]}")
        else:
            self.seen[key] = path
        return out


def known_fingerprints(extra: Path | None = None) -> dict[str, set[str]]:
    """The shipped fingerprints of the benchmark data versions, plus a user file ``{task: [fingerprint, ...]}``
    (their own COVAR copy, say)."""
    from covar_harness.data.resources import named

    shipped = named("reference", "data_fingerprints")
    known = {task: set(fps) for task, fps in shipped.items() if not task.startswith("_")}
    if extra is None:
        return known
    try:
        user = results.load(extra)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--fingerprints {extra}: cannot read ({exc})") from None
    if not isinstance(user, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in user.values()
    ):
        raise UsageError(f"--fingerprints {extra}: must be a JSON object {{task: [fingerprint, ...]}}")
    for task, fps in user.items():
        known.setdefault(str(task), set()).update(fps)
    return known


def _provenance_problems(obj: dict[str, Any]) -> list[str]:
    prov = obj.get("provenance") or {}
    wanted = ("harness_version", "python", "torch", "device", "started_at", "finished_at")
    missing = [key for key in wanted if not prov.get(key)]
    return [f"provenance: {', '.join(missing)} missing or empty"] if missing else []


def _fingerprint_problems(obj: dict[str, Any], known: dict[str, set[str]]) -> list[str]:
    task, fingerprint = obj["task"]["name"], obj["task"]["data_fingerprint"]
    if task not in known:
        return [f"task.data_fingerprint: no known data version for task {task!r} (register yours with --fingerprints)"]
    if fingerprint not in known[task]:
        return [
            f"task.data_fingerprint: {fingerprint} is not a known version of {task!r} "
            f"(known: {', '.join(sorted(known[task]))}); a --limit run or other data cannot be submitted"
        ]
    return []


def samples_problems(path: Path, obj: dict[str, Any]) -> list[str]:
    """The per-sample log must exist and add up: one line per evaluated sample, acc1 and BG-Er recomputed."""
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
    out = []
    acc1 = sum(bool(r.get("correct")) for r in rows) / n if n else None
    if not _same(acc1, obj["metrics"].get("acc1")):
        out.append(f"metrics.acc1: {obj['metrics'].get('acc1')} but the samples give {acc1}")
    if any(r.get("correct") != (r.get("pred") == r.get("label")) for r in rows):
        out.append("samples: a line's 'correct' disagrees with its pred and label")
    return out + _bg_er_problems(obj, rows)


def _bg_er_problems(obj: dict[str, Any], rows: list[dict]) -> list[str]:
    """BG-Er = background-driven errors / errors with a mask (headline rule): the count must match the log."""
    bg_er = obj["metrics"].get("bg_er")
    diagnosis = (obj.get("config") or {}).get("diagnosis") or {}
    rules = diagnosis.get("rules") or []
    by_rule = (diagnosis.get("by_rule") or {}).get(rules[0], {}) if rules else {}
    n_errors = by_rule.get("n_errors") if isinstance(by_rule, dict) else None
    if bg_er is None:
        return []
    if not isinstance(n_errors, int) or n_errors <= 0:
        return ["metrics.bg_er: set, but config.diagnosis.by_rule gives no error count to check it against"]
    bg = sum(1 for r in rows if not r.get("correct") and r.get("error_type") == "bg")
    wrong = sum(1 for r in rows if not r.get("correct"))
    if n_errors > wrong or not _same(bg / n_errors, bg_er):
        return [f"metrics.bg_er: {bg_er} but the samples give {bg}/{n_errors} background-driven errors"]
    return []


def _rows(log: Path) -> Iterable[dict]:
    text = results.read_regular(log, MAX_SAMPLES_BYTES).decode("utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object")
            yield row


def _same(a: float | None, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return results.is_number(b) and abs(a - float(b)) <= TOLERANCE
