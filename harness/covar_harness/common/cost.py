"""What a number cost (docs/design.md section 6, ``provenance.cost``): wall time per phase of one model x task
pair, model forward passes per image per phase, peak memory and the device.

Why: a result that says BG-Er = 12 % should also say what it took (CCI is K+3 forward passes per image, cluster
Shapley 2^K), so a user can plan a grid and see which phase to make faster. Phases are exclusive: time spent in
a nested phase (masks asked for inside a step) counts there, not twice. Nothing here imports torch at module
import.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PHASES = ("load", "data", "zero-shot", "masks", "attribution", "diagnosis", "write")  # in pipeline order
# adapter members that run the image tower, and how many image rows one call forwards (see ``_rows``)
IMAGE_MEMBERS = (
    "encode_images",
    "encode_images_with_tokens",
    "patch_tokens",
    "input_tokens",
    "encode_images_without",
    "attention_trace",
)


class Cost:
    """Exclusive wall time per phase and image rows forwarded per phase, for one pair."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.rows: dict[str, int] = {}
        self._stack: list[tuple[str, float]] = []

    @property
    def current(self) -> str:
        return self._stack[-1][0] if self._stack else "other"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time spent inside counts to ``name`` (the enclosing phase is paused meanwhile)."""
        now = time.perf_counter()
        self._pause(now)
        self._stack.append((name, now))
        try:
            yield
        finally:
            end = time.perf_counter()
            self._pause(end)
            self._stack.pop()
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], end)

    def _pause(self, now: float) -> None:
        if self._stack:
            name, since = self._stack[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + (now - since)
            self._stack[-1] = (name, now)

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (a model's load, shared by its pairs)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def count(self, rows: int) -> None:
        self.rows[self.current] = self.rows.get(self.current, 0) + int(rows)

    def record(self, n_images: int, device: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``provenance.cost`` entry: seconds and forward passes per image for each phase that ran."""
        names = [p for p in PHASES if p in self.seconds or p in self.rows]
        names += sorted((set(self.seconds) | set(self.rows)) - set(PHASES))
        phases = {
            name: {
                "seconds": round(self.seconds.get(name, 0.0), 4),
                "forward_passes_per_image": round(self.rows.get(name, 0) / n_images, 3) if n_images else None,
            }
            for name in names
        }
        return {
            "device": str(device),
            "n_images": n_images,
            "seconds": round(sum(self.seconds.values()), 4),
            "phases": phases,
            "peak_memory_mb": peak_memory_mb(device),
            **(extra or {}),
        }


def _rows(member: str, args: tuple, kwargs: dict) -> int:
    """Image rows one call forwards: the batch size; for ``encode_images_without`` with (B, K, N) patterns, B*K."""
    first = args[0] if args else kwargs.get("pixels")
    rows = int(getattr(first, "shape", (0,))[0]) if first is not None else 0
    if member == "encode_images_without":
        drop = args[1] if len(args) > 1 else kwargs.get("drop")
        shape = getattr(drop, "shape", None)
        if shape is not None and len(shape) == 3:
            rows = int(shape[0]) * int(shape[1])
    return rows


class ForwardMeter:
    """Counts the image rows an adapter forwards, into the current pair's :class:`Cost` (``meter.cost``).

    It wraps the instance's own image-tower members (those it implements: a missing member stays missing, and
    ``functools.wraps`` keeps signatures readable, so capability checks see the adapter as it was). A member
    that cannot be replaced on the instance (a property, or an object refusing new attributes) is left alone and
    named in ``uncounted``."""

    def __init__(self, adapter: Any, implements: Callable[[Any, str], bool]):
        self.cost: Cost | None = None
        self.uncounted: list[str] = []
        for member in IMAGE_MEMBERS:
            method = getattr(adapter, member, None)
            if method is None or not callable(method) or not implements(adapter, member):
                continue
            try:
                setattr(adapter, member, self._wrap(member, method))
            except (AttributeError, TypeError):
                self.uncounted.append(member)

    def _wrap(self, member: str, method: Callable) -> Callable:
        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.cost is not None:
                self.cost.count(_rows(member, args, kwargs))
            return method(*args, **kwargs)

        return counted


def peak_memory_mb(device: Any) -> dict[str, Any]:
    """Peak resident memory of the process (CPU; the process's lifetime peak, not the pair's) and, on CUDA, the
    pair's peak allocated GPU memory (reset at the pair's start by :func:`reset_peak`)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024  # bytes on macOS, KiB on Linux
    out: dict[str, Any] = {"cpu_rss_process": round(cpu, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def reset_peak(device: Any) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
