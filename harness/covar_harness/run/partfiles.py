"""Resumable pairs: a pair's finished batches, appended to ``<result file>.part`` every N batches.

The file starts with one JSON line, the pair's header: model, task, data fingerprint, sample count, batch size,
the class embeddings' checksum, each step of the pipeline with its ``run_settings()``, ``config.run_settings``
(``RunOptions.result_settings()``) and a random nonce naming the file's writer. Then come chunks, each
``length (8 bytes) + HMAC-SHA256 (32 bytes) + pickle`` of the writer's nonce, the number of batches before the
chunk and the batches it holds: per batch, the zero-shot rows, the unreadable images, each step's records and
the state of each step (its scalar attributes, counters such as ``n_seen``, and copies of those it names in
``Step.resumed``).

One process writes a pair's part file at a time: the pair runs under its lock (``pair_lock``, an ``flock`` on
``<part>.lock`` that the kernel drops when the holder dies), and another run that reaches the pair meanwhile
leaves it alone with one line. The reader does not rely on the lock: it takes only the unbroken sequence of
the header's writer (each chunk from that writer, starting at the next batch, covering later samples than every
earlier chunk, each once, inside the pair), so chunks that a second writer appended, a repeated or reordered
chunk, are cut off and their batches redone, never counted twice.

A rerun of the pair reads the header; with the same settings it takes every chunk of that sequence (a chunk cut
short by a kill, one that fails its checksum or claims more bytes than the file holds ends the read and is cut
off before appending), restores them into the pipeline and goes on from the next batch. Batches keep their
boundaries (multiples of the batch size), so the records, and therefore the result file and samples.jsonl, are
those of an uninterrupted run. Other settings, or a file that cannot be read (not a regular file, a corrupt
header): the part file is replaced and the pair starts over, said once as a warning. The part file is removed
once the result file is written.

Nothing from a file is executed unless this harness wrote it for this user: every chunk carries an HMAC keyed by
a secret that never leaves the user's cache folder (``~/.cache/covar-harness/part-file.key``, mode 600, made on
first use; ``COVAR_HARNESS_PART_KEY`` names another file). A part file copied from elsewhere, or edited, fails
the check before anything is unpickled, and the pair starts over.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import os
import pickle
import secrets
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from covar_harness.common.console import one_line
from covar_harness.common.safe_files import atomic_write, open_regular, parse_json
from covar_harness.masks.step import MaskStep
from covar_harness.pipeline.contract import PairContext, Pipeline
from covar_harness.run.text_cache import model_fingerprint

try:
    import fcntl
except ImportError:  # Windows: no flock; the reader's sequence check still refuses a second writer's chunks
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
MAGIC = "covar-harness part v2"  # v2: a writer nonce in the header and every chunk, and each chunk's first batch
MAX_HEADER = 1 << 20
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
        "steps": [[step.name, step.run_settings()] for step in ctx.steps],  # the settings that decide its records
        "run_settings": ctx.options.result_settings(),
    }
    return json.loads(json.dumps(header, default=str))


def _step_state(step: Any) -> dict[str, Any]:
    """A step's scalar attributes (counters, status) and copies of those it names in ``Step.resumed``: restored
    with its records on resume."""
    if not hasattr(step, "__dict__"):
        return {}
    named = getattr(step, "resumed", ())
    return {
        k: copy.deepcopy(v) if k in named else v for k, v in vars(step).items() if k in named or isinstance(v, _SCALARS)
    }


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
    masks: Any = None  # the mask step's PatchMasks: their counters are state too (n_without_mask)
    n_batches: int = 0  # batches restored
    writer: str = ""  # the nonce of the file's writer (its header's): every chunk appended carries it
    written: int = 0  # batches in the file: the next chunk's ``first``
    initial: dict[str, Any] = field(default_factory=dict)  # the state before the first batch (``snapshot``)
    _marks: list[int] = field(default_factory=list)

    @classmethod
    def open(
        cls, path: Path | None, every: int, ctx: PairContext, pipeline: Pipeline, strict: bool = False
    ) -> Checkpointer:
        """Restore what the part file at ``path`` holds for this pair (call after ``pipeline.start``, holding the
        pair's lock, ``pair_lock``)."""
        masks = next((s.patch_masks for s in pipeline.steps if isinstance(s, MaskStep)), None)
        ck = cls(path if every > 0 else None, every, pipeline, strict=strict, masks=masks)
        ck._marks = [len(kept) for kept in pipeline.records]
        ck.initial = ck.snapshot()
        if ck.path is None:
            return ck
        header = pair_header(ctx)
        found = read_part(ck.path, header)
        if found is None:
            ck.writer = secrets.token_hex(8)
            _write_header(ck.path, {**header, "writer": ck.writer})
            return ck
        ck.writer, batches = found
        for batch in batches:
            ck._restore(batch)
        ck.written = len(batches)
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
            chunk = {"writer": self.writer, "first": self.written, "batches": self.pending}
            payload = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
            with open(self.path, "ab") as fh:
                fh.write(_HEAD.pack(len(payload), _mac(payload)) + payload)
                fh.flush()
                os.fsync(fh.fileno())
            self.written += len(self.pending)
        except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
            if self.strict:
                why = getattr(exc, "strerror", None) or exc
                raise OSError(f"part file {self.path.name}: {type(exc).__name__}: {why}") from exc
            log.warning("part file %s switched off: %s", self.path, exc)
            self.path = None
        self.pending = []


def _write_header(path: Path, header: dict[str, Any]) -> None:
    try:
        atomic_write(path, lambda fh: fh.write((json.dumps(header) + "\n").encode()), binary=True)
    except OSError as exc:
        log.warning("no part file %s: %s", path, exc)


def read_batches(path: Path, header: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The complete batches of a part file with this ``header``, cutting off a torn tail; None: no usable file."""
    found = read_part(path, header)
    return None if found is None else found[1]


def read_part(path: Path, header: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """(writer, batches) of the part file at ``path`` when its header is ``header`` (plus its writer's nonce); the
    batches are the unbroken sequence its writer appended, and anything after them (a torn chunk, a chunk that
    fails its HMAC, claims more bytes than the file holds, or breaks the sequence) is cut off. None: no usable
    file (missing, not a regular file, other settings, unreadable); the pair starts over."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            found = parse_json(fh.readline(MAX_HEADER), str(path))
            writer = found.pop("writer", None) if isinstance(found, dict) else None
            if found != header or not isinstance(writer, str):
                log.warning("part file %s has other settings: starting the pair over", path)
                return None
            batches, good = _chunks(fh, size, writer, header["n_samples"], path)
        os.truncate(path, good)  # a torn or foreign tail goes before anything is appended
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        log.warning("unusable part file %s (%s): starting the pair over", path, one_line(exc))
        return None
    return writer, batches


def _chunks(fh: IO[bytes], size: int, writer: str, n_samples: int, path: Path) -> tuple[list[dict[str, Any]], int]:
    """The batches of every chunk in sequence, and the offset after the last one taken."""
    batches: list[dict[str, Any]] = []
    good, last = fh.tell(), -1
    while True:
        head = fh.read(_HEAD.size)
        if len(head) < _HEAD.size:
            break
        length, digest = _HEAD.unpack(head)
        if length > size - fh.tell():
            break  # torn, or a size field no file this size can hold: never allocated
        payload = fh.read(length)
        if len(payload) != length or not hmac.compare_digest(_mac(payload), digest):
            break  # torn, edited or not written by this user's harness: never unpickled
        try:
            chunk = pickle.loads(payload)  # noqa: S301 - authenticated above with this user's secret
            why, last = _out_of_sequence(chunk, writer, len(batches), last, n_samples)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, KeyError, TypeError, ValueError) as exc:
            why = f"unreadable chunk ({type(exc).__name__})"
        if why:
            log.warning("part file %s: %s; the batches from there on are redone", path, why)
            break
        batches += chunk["batches"]
        good = fh.tell()
    return batches, good


def _out_of_sequence(chunk: Any, writer: str, first: int, last: int, n_samples: int) -> tuple[str, int]:
    """Why ``chunk`` does not continue the sequence (empty: it does), and the last sample index it covers.

    A chunk must come from the header's writer, start at the next batch, and cover samples after every earlier
    one, each once, inside the pair: so a chunk appended by a second writer, repeated or reordered, is never
    restored twice or out of place."""
    if not isinstance(chunk, dict) or chunk.get("writer") != writer:
        return "a chunk from another writer (two runs wrote this pair)", last
    if chunk.get("first") != first:
        return f"chunk out of order (batch {chunk.get('first')} where {first} was next)", last
    for batch in chunk["batches"]:
        indices = sorted(int(i) for i, _ in (*batch["rows"], *batch["failures"]))
        if not indices or len(indices) != batch["n"] or len(set(indices)) != len(indices):
            return "a batch whose sample count does not add up", last
        if indices[0] <= last or indices[-1] >= n_samples:
            return f"sample {indices[0]} repeated or out of order (after {last}, of {n_samples})", last
        last = indices[-1]
    return "", last


def remove(path: Path) -> None:
    """Remove the part file once the result is written; something else in its place (a folder) is left alone."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the part file %s: %s", path, exc)


class PairBusy(RuntimeError):
    """Another process holds the pair's lock: it is evaluating the pair now."""


@contextmanager
def pair_lock(part: Path) -> Iterator[None]:
    """Hold the lock of the pair whose part file is ``part`` (``<part>.lock``, an ``flock``); ``PairBusy`` when
    another process holds it.

    Why a lock: two runs of one pair would append to one part file, and the rerun would restore both writers'
    batches. The kernel drops an ``flock`` when its holder dies (``kill -9`` too), so a lock is never stale; the
    lock file is removed on release. Where the file system has no locks (``ENOLCK``), the pair runs unlocked
    and the reader's sequence check still refuses a second writer's chunks.
    """
    path = part.with_name(part.name + ".lock")
    fd = _acquire(path)
    try:
        yield
    finally:
        if fd is not None:
            _release(path, fd)


def _acquire(path: Path) -> int | None:
    if fcntl is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise PairBusy(
                f"another run ({holder or 'unknown process'}) is evaluating this pair now: not run here; rerun "
                "when it has finished to pick up its result"
            ) from None
        except OSError as exc:  # no locks on this file system
            os.close(fd)
            log.warning("no lock for %s (%s): running the pair unlocked", path, exc.strerror or exc)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder removed after we opened it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            return fd
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def _mac(payload: bytes) -> bytes:
    return hmac.new(_key(), payload, hashlib.sha256).digest()


def _key() -> bytes:
    """This user's 32-byte secret for part-file MACs, created once with mode 600 (first writer wins)."""
    path = Path(os.environ.get("COVAR_HARNESS_PART_KEY", "~/.cache/covar-harness/part-file.key")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open_regular(path, max_bytes=64) as fh:  # a FIFO or a huge file there: one line, no hang
            key = fh.read(64)
        if len(key) != 32:
            raise OSError(f"{path}: not a 32-byte key (delete it to make a new one)") from None
        return key
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
