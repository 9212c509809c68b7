"""Data-parallel pairs under ``torchrun`` / ``accelerate launch`` (docs/scale-out.md).

Every rank runs the whole plan; inside each pair the batches (the boundaries of a one-process run) are dealt
round-robin: rank r takes batches b with ``b % world_size == r``. Each rank appends its finished batches to its own
part file (``<result>.json.part.rank<r>of<n>``, the format of ``partfiles.py``, so a rank resumes on its own) and
then writes a ``.done`` marker. Rank 0 waits for every marker, reads every rank's part file, replays the batches in
sample order into its pipeline and writes the one result file, as a one-process run would have: the records, the
sample log and every number are the same; only provenance differs (``distributed``: world size and the samples of
each rank). The other ranks write no result; they wait for rank 0's, so that every rank ends the pair the same way.

Why no collective call (all_gather, barrier) for the merge: a hung or dead rank would hang every other rank in
it. Here every wait polls files with a deadline (``--dist-timeout``), and a rank whose pair fails writes a
``.failed`` marker with its one-line error, which every other rank picks up and reports as its own failure of the
pair. The only thing the ranks agree on through torch's rendezvous store (``MASTER_ADDR``/``MASTER_PORT``, set by
the launcher) is a random token for the run, written into every marker, so markers left by an earlier run are
never taken for this run's.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from torch.distributed import TCPStore

from covar_harness.catalog.registry import UsageError
from covar_harness.common.interrupt import INTERRUPT
from covar_harness.common.safe_files import atomic_write, open_regular, parse_json
from covar_harness.run.partfiles import pair_header, read_batches
from covar_harness.run.text_cache import ClassifierCache

if TYPE_CHECKING:
    import torch

    from covar_harness.pipeline.contract import PairContext, Progress
    from covar_harness.run.partfiles import Checkpointer

T = TypeVar("T")
DEFAULT_TIMEOUT = 3600.0  # seconds a rank waits for the others: long enough for the slowest share of a big pair
POLL = 0.2
_STORES: list[Any] = []  # the rendezvous store of this process, kept open for the run


class RankFailed(RuntimeError):
    """Another rank failed this pair, or did not report in time; the message is the one line every rank shows."""


class ShareDone(Exception):
    """A rank other than 0 finished its share of the pair and rank 0 wrote the result: nothing left to do here."""

    def __init__(self, result: dict[str, Any]):
        super().__init__("share done")
        self.result = result


@dataclass(frozen=True)
class World:
    """Where this process stands in a ``torchrun`` / ``accelerate launch`` job (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    token: str = ""  # the run's token, the same on every rank (``agree_token``)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """One GPU per local rank: a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>``; other devices stay."""
        return f"cuda:{self.local_rank}" if self.active and device == "cuda" else device

    def own_batches(self, n_samples: int, batch_size: int, skip: int = 0) -> list[list[int]]:
        """This rank's batches (sample indices) after its first ``skip`` (already in its part file)."""
        starts = range(self.rank * batch_size, n_samples, self.world_size * batch_size)
        return [list(range(s, min(s + batch_size, n_samples))) for s in starts][skip:]

    def checkpoint_every(self, every: int) -> int:
        """Ranks always keep a part file (rank 0 merges from them); ``0`` then means: append once, at the end."""
        return every if every > 0 or not self.active else 1 << 30


def detect_world(environ: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> World:
    """The world from the launcher's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one process without them."""
    env = os.environ if environ is None else environ
    if timeout <= 0:
        raise UsageError("--dist-timeout must be > 0")
    if "WORLD_SIZE" not in env:
        return World(timeout=timeout)
    try:
        rank, size = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise UsageError(f"bad launcher environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local}")
    return World(rank, size, local, timeout=timeout)


def agree_token(world: World) -> World:
    """The world with the run's token: rank 0 makes one and puts it in the launcher's store, the others read it.

    The store: torchrun's own (its agent serves ``MASTER_ADDR:MASTER_PORT``), else one that rank 0 hosts there, as
    ``env://`` does, but without waiting for every rank to connect: a missing rank is noticed at the first pair's
    deadline, and meanwhile rank 0 gets its own share done (kept in its part file)."""
    if not world.active:
        return world

    try:
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        host = world.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        wait = timedelta(seconds=world.timeout)
        store = TCPStore(addr, port, None, is_master=host, timeout=wait, wait_for_workers=False)
        key = f"covar-harness/token/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        if world.rank == 0:
            store.set(key, uuid.uuid4().hex)
        token = store.get(key).decode()
        _STORES.append(store)  # rank 0 may host it: it must outlive this call, while the others read the token
    except KeyError as exc:
        raise UsageError(f"WORLD_SIZE is set but {exc.args[0]} is not: launch with torchrun") from None
    except (RuntimeError, ValueError, OSError) as exc:  # DistStoreError is a RuntimeError
        raise UsageError(f"rank {world.rank}: no rendezvous with the other ranks ({exc})".splitlines()[0]) from None
    return World(world.rank, world.world_size, world.local_rank, token, world.timeout)


def wait_for(probe: Callable[[], T | None], world: World, what: str, check: Callable[[], None] = lambda: None) -> T:
    """Poll ``probe`` until it gives something; ``check`` raises when another rank failed; RankFailed at the
    deadline."""

    deadline, pause = time.monotonic() + world.timeout, 0.01
    while True:
        INTERRUPT.check()
        check()
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise RankFailed(
                f"rank {world.rank}: gave up waiting for {what} after {world.timeout:g} s (--dist-timeout)"
            )
        time.sleep(pause)
        pause = min(POLL, pause * 2)


# ---- one pair on one rank ---------------------------------------------------------------------------------------
@dataclass
class PairSync:
    """The files through which the ranks of one pair talk: part files, ``.done`` and ``.failed`` markers."""

    world: World
    result: Path  # the pair's result file

    @classmethod
    def of(cls, world: World, part: Path) -> PairSync:
        """The pair whose one-process part file is ``part`` (``<result>.json.part``)."""
        return cls(world, part.with_name(part.name.removesuffix(".part")))

    def part(self, rank: int | None = None) -> Path:
        r = self.world.rank if rank is None else rank
        return self.result.with_name(f"{self.result.name}.part.rank{r}of{self.world.world_size}")

    def marker(self, kind: str, rank: int | None = None) -> Path:
        return self.part(rank).with_name(self.part(rank).name + f".{kind}")

    def begin(self, every: int) -> None:
        """Clear this rank's markers of an earlier run; without checkpoints, its part file too (no resume)."""
        for kind in ("done", "failed", "ready"):
            self.marker(kind).unlink(missing_ok=True)
        if every == 0:
            self.part().unlink(missing_ok=True)

    def _write(self, kind: str, body: dict[str, Any]) -> None:
        text = json.dumps({"token": self.world.token, "rank": self.world.rank, **body})
        atomic_write(self.marker(kind), lambda fh: fh.write(text))

    def _read(self, kind: str, rank: int) -> dict[str, Any] | None:
        """A marker of this run (by token), or None."""
        try:
            body = json.loads(self.marker(kind, rank).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) and body.get("token") == self.world.token else None

    def ready(self) -> None:
        """Rank 0 has the pair's class embeddings (and stored them, unless the text cache cannot be written)."""
        self._write("ready", {})

    def is_ready(self) -> bool:
        return self._read("ready", 0) is not None

    def share_done(self, ck: Checkpointer) -> None:
        ranges = _ranges(sorted(i for i, _ in ck.rows) + sorted(i for i, _ in ck.failures))
        self._write("done", {"n_samples": len(ck.rows) + len(ck.failures), "ranges": ranges})

    def fail(self, message: str) -> None:
        """Tell the other ranks (they raise ``message`` as it is: it names the rank that failed first)."""
        try:
            self._write("failed", {"error": message})
        except OSError:
            pass  # the others then stop at their deadline

    def check(self) -> None:
        """RankFailed when another rank of this run wrote a ``.failed`` marker for this pair."""
        for r in range(self.world.world_size):
            body = self._read("failed", r) if r != self.world.rank else None
            if body is not None:
                error = str(body.get("error", "failed")).splitlines()[0] if body.get("error") else "failed"
                raise RankFailed(error if error.startswith("rank ") else f"rank {r}: {error}")

    def wait_shares(self) -> list[dict[str, Any]]:
        """Rank 0: every rank's ``.done`` marker (rank order), once all are there."""

        def probe() -> list[dict[str, Any]] | None:
            found = [self._read("done", r) for r in range(self.world.world_size)]
            return None if any(f is None for f in found) else [f for f in found if f is not None]

        missing = f"the other ranks' shares of {self.result.name}"
        return wait_for(probe, self.world, missing, self.check)

    def wait_result(self) -> dict[str, Any]:
        """A rank other than 0: the result file rank 0 wrote for this run."""

        def probe() -> dict[str, Any] | None:
            try:
                obj = json.loads(self.result.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            dist = obj.get("provenance", {}).get("distributed", {}) if isinstance(obj, dict) else {}
            return obj if isinstance(dist, dict) and dist.get("token") == self.world.token else None

        return wait_for(probe, self.world, f"rank 0's {self.result.name}", self.check)

    def cleanup(self) -> None:
        """Rank 0, after the result is written: every rank's part file and ``.done`` marker."""
        for r in range(self.world.world_size):
            self.part(r).unlink(missing_ok=True)
            self.marker("done", r).unlink(missing_ok=True)
        self.marker("ready").unlink(missing_ok=True)


def _ranges(indices: list[int]) -> list[list[int]]:
    """Sorted sample indices as ``[first, last + 1]`` runs."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


# ---- the end of a rank's share ----------------------------------------------------------------------------------
def finish_share(ctx: PairContext, ck: Checkpointer, sync: PairSync) -> tuple[list, list]:
    """After this rank's batches: say so; rank 0 then merges every share (the rows and unreadable images of the
    whole pair, and its pipeline as if it had seen every batch); the other ranks wait for rank 0's result."""
    ck.flush()
    sync.share_done(ck)
    if sync.world.rank != 0:
        raise ShareDone(sync.wait_result())
    sync.wait_shares()
    return merge_shares(ctx, ck, sync)


def merge_shares(ctx: PairContext, ck: Checkpointer, sync: PairSync) -> tuple[list, list]:
    """Every rank's batches in sample order, replayed into rank 0's pipeline: the records of a one-process run.

    The steps' scalar state (partfiles ``snapshot``) is merged so: numbers are counters, so each rank's change
    from the state before the first batch adds up (``n_seen``: samples seen); any other value (a status, the
    error that stopped the masks) is the first change in sample order, as a one-process run would keep it.
    """

    header, shares = pair_header(ctx), []
    for r in range(sync.world.world_size):
        share = read_batches(sync.part(r), header)
        if share is None:
            raise RankFailed(f"rank 0: the part file of rank {r} {_mismatch(sync.part(r), header)}")
        shares.append(share)
    ordered = sorted((b for share in shares for b in share), key=_first_index)
    finals = [share[-1] for share in shares if share]
    final = {
        "state": [
            _merge_scalars(initial, [b["state"][i] for b in ordered], [f["state"][i] for f in finals])
            for i, initial in enumerate(ck.initial["state"])
        ],
        "masks": _merge_scalars(
            ck.initial["masks"], [b.get("masks") or {} for b in ordered], [f.get("masks") or {} for f in finals]
        ),
    }
    return ck.replay(ordered, final)


def _mismatch(path: Path, header: dict[str, Any]) -> str:
    """Why a rank's part file cannot be merged: missing, unreadable, or the header keys that differ from rank 0's
    (``model_fingerprint``: other weights, or weights summed on another kind of device; ``classifier_sha256``:
    class embeddings built apart, e.g. with ``--text-cache none``)."""
    try:
        with open_regular(path) as fh:  # a FIFO in its place must not hang rank 0
            found = parse_json(fh.readline(1 << 20), str(path))
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, RecursionError) as exc:
        return f"is unreadable ({type(exc).__name__})"
    keys = sorted(k for k in header if not isinstance(found, dict) or found.get(k) != header[k])
    return f"differs from rank 0 in {', '.join(keys)}" if keys else "holds a damaged or foreign chunk"


def _first_index(batch: dict[str, Any]) -> int:
    """A batch's first sample: its key (every batch holds at least one sample, read or not)."""
    return min([int(i) for i, _ in batch["rows"]] + [int(i) for i, _ in batch["failures"]])


def _merge_scalars(initial: dict[str, Any], ordered: list[dict[str, Any]], finals: list[dict[str, Any]]) -> dict:
    out = dict(initial)
    for key, start in initial.items():
        if isinstance(start, (int, float)) and not isinstance(start, bool):
            out[key] = start + sum(f.get(key, start) - start for f in finals)
        else:
            out[key] = next((s[key] for s in ordered if key in s and s[key] != start), start)
    return out


class SharedClassifiers(ClassifierCache):
    """Class embeddings computed once for all ranks: rank 0 builds them into the persistent text cache and the
    other ranks wait for its file (without a persistent cache every rank builds its own; so does a rank that finds
    rank 0 ready but no file: the cache folder could not be written)."""

    def __init__(self, adapter: Any, store: Any, world: World):
        super().__init__(adapter, store)
        self.world = world
        self.sync: PairSync | None = None  # the pair being opened (its failures end the wait)

    def get(self, classnames: list[str], templates: list[str], reporter: Progress) -> torch.Tensor:
        key = (tuple(classnames), tuple(templates))
        store = self.store
        sync = self.sync
        if self.world.rank != 0 and store is not None and key not in self._cache:

            def probe() -> Any:
                ready = sync is not None and sync.is_ready()  # first: rank 0 stores before it says ready
                found = store.load(classnames, templates)
                return found if found is not None else (_UNSTORED if ready else None)

            found = wait_for(probe, self.world, "rank 0's class embeddings", sync.check if sync else lambda: None)
            if found is not _UNSTORED:
                self._cache[key] = found
        W = super().get(classnames, templates, reporter)
        if self.world.rank == 0 and sync is not None:
            sync.ready()
        return W


_UNSTORED = object()  # rank 0 is ready but its text cache holds no file


def provenance(sync: PairSync) -> dict[str, Any]:
    """Rank 0: what the result file records of the ranks: world size, the run's token, each rank's samples."""
    shares = [sync._read("done", r) or {} for r in range(sync.world.world_size)]
    ranks = [
        {"rank": r, "n_samples": s.get("n_samples", 0), "ranges": s.get("ranges", [])} for r, s in enumerate(shares)
    ]
    return {"world_size": sync.world.world_size, "token": sync.world.token, "ranks": ranks}
