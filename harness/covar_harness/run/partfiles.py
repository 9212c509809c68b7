"""Resumable pairs: a pair's finished batches, appended to ``<result file>.part`` every N batches.

The file starts with one JSON line, the pair's header: model, task, data fingerprint, sample count, batch size,
the class embeddings' checksum and ``config.run_settings`` (``RunOptions.result_settings()``). Then come chunks,
each ``length (8 bytes) + HMAC-SHA256 (32 bytes) + pickle`` of the batches it holds: per batch, the zero-shot rows,
the unreadable images, each step's records and the scalar state of each step (counters such as ``n_seen``).

A rerun of the pair reads the header; with the same settings it takes every complete chunk (a chunk cut short by a
kill, or one that fails its checksum, ends the read and is cut off before appending), restores them into the
pipeline and goes on from the next batch. Batches keep their boundaries (multiples of the batch size), so
the records, and therefore the result file and samples.jsonl, are those of an uninterrupted run. Other settings:
the part file is discarded and the pair starts over. The part file is removed once the result file is written.

Nothing from a file is executed unless this harness wrote it for this user: every chunk carries an HMAC keyed by
a secret that never leaves the user's cache folder (``~/.cache/covar-harness/part-file.key``, mode 600, made on
first use; ``COVAR_HARNESS_PART_KEY`` names another file). A part file copied from elsewhere, or edited, fails
the check before anything is unpickled, and the pair starts over.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covar_harness.pipeline.contract import PairContext, Pipeline
from covar_harness.run.text_cache import model_fingerprint

log = logging.getLogger(__name__)
MAGIC = "covar-harness part v1"
_HEAD = struct.Struct("<Q32s")
_SCALARS = (bool, int, float, str, type(None))


def part_path(result_file: Path) -> Path:
    return result_file.with_name(result_file.name + ".part")


def pair_header(ctx: PairContext) -> dict[str, Any]:
    """What must match for a part file to be resumed: everything that decides the pair's batches and records."""
    assert ctx.options is not None and ctx.task is not None and ctx.classifier is not None
    W = ctx.classifier.detach().float().cpu().contiguous().numpy().tobytes()
    header = {
        "magic": MAGIC,
        "model": ctx.model_spec,
        "task": ctx.task.task,
        "task_version": ctx.task.version,
        "data_fingerprint": ctx.samples.fingerprint(),
        "n_samples": len(ctx.samples),
        "batch_size": ctx.options.batch_size,
        "model_fingerprint": model_fingerprint(ctx.model_spec or "", ctx.adapter),  # image-side weights too
        "classifier_sha256": hashlib.sha256(W).hexdigest(),
        "steps": [step.name for step in ctx.steps],
        "run_settings": ctx.options.result_settings(),
    }
    return json.loads(json.dumps(header, default=str))


def _step_state(step: Any) -> dict[str, Any]:
    """A step's scalar attributes (counters, status): restored with its records on resume."""
    return {k: v for k, v in vars(step).items() if isinstance(v, _SCALARS)} if hasattr(step, "__dict__") else {}


@dataclass
class Checkpointer:
    """The part file of one pair: what it restored (``rows``, ``failures``, ``start``) and the batches to append."""

    path: Path | None
    every: int
    pipeline: Pipeline
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    start: int = 0  # samples covered by the restored batches: the loop goes on from here
    pending: list = field(default_factory=list)
    strict: bool = False  # a part file that cannot be written raises (ranks: rank 0 merges from it)
    masks: Any = None  # the pair's PatchMasks: their counters are state too (n_without_mask)
    n_batches: int = 0  # batches restored
    initial: dict[str, Any] = field(default_factory=dict)  # the state before the first batch (``snapshot``)
    _marks: list[int] = field(default_factory=list)

    @classmethod
    def open(
        cls, path: Path | None, every: int, ctx: PairContext, pipeline: Pipeline, strict: bool = False
    ) -> Checkpointer:
        """Restore what the part file at ``path`` holds for this pair (call after ``pipeline.start``)."""
        ck = cls(path if every > 0 else None, every, pipeline, strict=strict, masks=ctx.masks)
        ck._marks = [len(kept) for kept in pipeline.records]
        ck.initial = ck.snapshot()
        if ck.path is None:
            return ck
        header = pair_header(ctx)
        batches = read_batches(ck.path, header)
        if batches is None:
            _write_header(ck.path, header)
            return ck
        for batch in batches:
            ck._restore(batch)
        if batches and ctx.reporter is not None:
            ctx.reporter.say(f"resuming {ctx.task.task if ctx.task else 'pair'} after {ck.start} sample(s)")
        return ck

    def _restore(self, batch: dict[str, Any]) -> None:
        self.rows += batch["rows"]
        self.failures += batch["failures"]
        self.start += batch["n"]
        self.n_batches += 1
        for kept, records in zip(self.pipeline.records, batch["records"]):
            kept += records
        self.apply(batch)
        self._marks = [len(kept) for kept in self.pipeline.records]

    def snapshot(self) -> dict[str, Any]:
        """The scalar state of the steps and the masks now (restored with the records)."""
        return {"state": [_step_state(step) for step in self.pipeline.steps], "masks": _step_state(self.masks)}

    def apply(self, snapshot: dict[str, Any]) -> None:
        """Set the steps' (and the masks') scalar state from a ``snapshot`` (a batch holds one)."""
        for step, state in zip(self.pipeline.steps, snapshot["state"]):
            for key, value in state.items():
                setattr(step, key, value)
        for key, value in (snapshot.get("masks") or {}).items() if self.masks is not None else ():
            setattr(self.masks, key, value)

    def replay(self, batches: list[dict[str, Any]], final: dict[str, Any]) -> tuple[list, list]:
        """Start over from ``batches`` (in sample order: the shares of all ranks), ending in state ``final``;
        returns the rows and unreadable images."""
        self.rows, self.failures, self.start, self.n_batches = [], [], 0, 0
        for kept in self.pipeline.records:
            kept.clear()
        for batch in batches:
            self._restore(batch)
        self.apply(final)
        return self.rows, self.failures

    def done(self, rows: list, failures: list, n: int) -> None:
        """One batch finished (its rows, unreadable images and ``n`` samples consumed): appended every N."""
        if self.path is None:
            return
        records = [kept[mark:] for kept, mark in zip(self.pipeline.records, self._marks)]
        self._marks = [len(kept) for kept in self.pipeline.records]
        self.pending.append({"rows": rows, "failures": failures, "n": n, "records": records, **self.snapshot()})
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Append the pending batches as one chunk; a part file that cannot be written switches itself off."""
        if self.path is None or not self.pending:
            return
        try:
            payload = pickle.dumps(self.pending, protocol=pickle.HIGHEST_PROTOCOL)
            with open(self.path, "ab") as fh:
                fh.write(_HEAD.pack(len(payload), _mac(payload)) + payload)
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
            if self.strict:
                why = getattr(exc, "strerror", None) or exc
                raise OSError(f"part file {self.path.name}: {type(exc).__name__}: {why}") from exc
            log.warning("part file %s switched off: %s", self.path, exc)
            self.path = None
        self.pending = []


def _write_header(path: Path, header: dict[str, Any]) -> None:
    from covar_harness.results.files import atomic_write

    try:
        atomic_write(path, lambda fh: fh.write((json.dumps(header) + "\n").encode()), binary=True)
    except OSError as exc:
        log.warning("no part file %s: %s", path, exc)


def read_batches(path: Path, header: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The complete batches of a part file with this ``header``, cutting off a torn tail; None: no usable file."""
    try:
        with open(path, "rb") as fh:
            found = json.loads(fh.readline(1 << 20))
            if found != header:
                log.warning("part file %s has other settings: starting the pair over", path)
                return None
            batches, good = [], fh.tell()
            while True:
                head = fh.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    break
                size, digest = _HEAD.unpack(head)
                payload = fh.read(size)
                if len(payload) != size or not hmac.compare_digest(_mac(payload), digest):
                    break  # torn, edited or not written by this user's harness: never unpickled
                batches += pickle.loads(payload)  # noqa: S301 - authenticated above with this user's secret
                good = fh.tell()
        os.truncate(path, good)  # a torn last chunk goes before anything is appended
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        log.warning("unusable part file %s (%s): starting the pair over", path, exc)
        return None
    return batches


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _mac(payload: bytes) -> bytes:
    return hmac.new(_key(), payload, hashlib.sha256).digest()


def _key() -> bytes:
    """This user's 32-byte secret for part-file MACs, created once with mode 600 (first writer wins)."""
    path = Path(os.environ.get("COVAR_HARNESS_PART_KEY", "~/.cache/covar-harness/part-file.key")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != 32:
            raise OSError(f"{path}: not a 32-byte key (delete it to make a new one)") from None
        return key
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
