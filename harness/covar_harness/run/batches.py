"""The image side of the zero-shot pass: a DataLoader over a task's samples that never raises on a bad image
(unreadable files come back as failures, counted by the evaluator), with Ctrl-C left to the main process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from covar_harness.common.interrupt import ignore_sigint, sigint_deferred
from covar_harness.data.samples import SampleSet


class _PixelDataset:
    """Map-style dataset: (index, pixels or None, error). Never raises on a bad image."""

    def __init__(self, samples: SampleSet, preprocess: Callable):
        self.samples, self.preprocess = samples, preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(self.samples.open_image(i)), None
        except Exception as exc:  # corrupt, truncated, missing: skipped and counted by the evaluator
            return i, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], pixels, failed


def iterate_batches(
    samples: SampleSet,
    preprocess: Callable,
    batch_size: int,
    workers: int,
    start: int = 0,
    batches: list[list[int]] | None = None,
    pin_memory: bool = False,
):
    """Batches of (indices, pixels or None, failures) from sample ``start`` on (a resumed pair: a multiple of
    ``batch_size``, so batches keep the boundaries of an uninterrupted run); with ``batches``, exactly those
    (one rank's share of a pair, ``distributed.World.own_batches``). ``pin_memory``: page-locked pixels, so the
    copy to a CUDA device can overlap (``to_device``)."""

    dataset: Any = _PixelDataset(samples, preprocess)  # map-style: __len__ and __getitem__
    if start and batches is None:
        dataset = Subset(dataset, range(start, len(samples)))  # items keep their own sample index
    split: dict[str, Any] = {"batch_size": batch_size, "shuffle": False} if batches is None else {}
    loader: Any = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,  # one pass per loader: persistent workers would only outlive it
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_sigint if workers > 0 else None,
        **split,
    )
    with sigint_deferred():  # workers fork here: a Ctrl-C now would land in an at-fork hook and be swallowed
        batches = iter(loader)
    yield from batches


def is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def to_device(pixels: Any, device: Any) -> Any:
    """Pixels on a CUDA ``device``, copied without blocking the host (from pinned memory the copy overlaps the
    next batch's loading); anything else stays where it is (adapters move pixels themselves)."""
    return pixels.to(device, non_blocking=True) if is_cuda(device) else pixels


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)
