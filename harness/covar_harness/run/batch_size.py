"""``--batch-size auto``: the largest batch that fits, found once per model (issue 16, GPU defaults).

On a CUDA device the model is given synthetic batches of doubling size, each doing a batch's heaviest work
(the zero-shot forward, and with attribution on, one removal call with K + 3 patterns per image: CCI's K clusters,
the reference and the two counterfactual regions), until one runs out of memory; the largest that ran is used for
every pair of that model and recorded in the result (``config.batch_size`` and ``config.batch_size_auto``). On a
CPU or MPS device there is no memory to probe: the default (64) is used and the record says so.

Nothing here imports torch at module level.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from covar_harness.attribution.removal import encode_patterns
from covar_harness.models.adapter import attribution_support, patch_grid

AUTO = "auto"
DEFAULT = 64
PROBE_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)  # doubling; a batch above 1024 buys nothing on one device


def batch_size_value(text: str) -> int | str:
    """A ``--batch-size`` value: a positive integer, or ``auto``."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"must be a positive integer or {AUTO!r}, got {text!r}") from None
    if value < 1:
        raise ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error (or an allocator's 'out of memory' RuntimeError on another backend)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def largest_fitting(run: Callable[[int], None], sizes: Sequence[int] = PROBE_SIZES) -> tuple[int | None, list]:
    """The largest of ``sizes`` (ascending) for which ``run(size)`` does not run out of memory, trying upwards
    and stopping at the first failure; (None, tried) when even the smallest fails. Other errors propagate."""
    best, tried = None, []
    for size in sizes:
        try:
            run(size)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            tried.append([size, "out of memory"])
            break
        finally:
            _free()
        tried.append([size, "ok"])
        best = size
    return best, tried


def resolve(adapter: Any, device: Any, k: int | None) -> tuple[int, dict[str, Any]]:
    """(batch size, what to record) for ``--batch-size auto`` on this model and device. ``k``: the clusters of
    an active attribution step (its removal call is the heaviest part of a batch), None without one."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return DEFAULT, {"device": str(device), "chosen": DEFAULT, "why": f"no memory probe off CUDA: {DEFAULT}"}
    best, tried = largest_fitting(lambda size: _heaviest_batch(adapter, size, k))
    if best is None:
        raise RuntimeError(f"--batch-size auto: even a batch of {PROBE_SIZES[0]} runs out of memory on {device}")
    return best, {"device": str(device), "chosen": best, "tried": tried, "attribution_k": k}


def _heaviest_batch(adapter: Any, size: int, k: int | None) -> None:
    """One synthetic batch of ``size`` images through what a real batch costs most."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    pixels = adapter.preprocess(Image.new("RGB", (224, 224))).unsqueeze(0).expand(size, -1, -1, -1).contiguous()
    with torch.inference_mode():
        adapter.encode_images(pixels)
        if k is not None and attribution_support(adapter)[0]:
            rows, cols = patch_grid(adapter)
            patterns = torch.rand(size, k + 3, rows * cols) < 0.5
            encode_patterns(adapter, pixels, patterns)


def _free() -> None:
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
