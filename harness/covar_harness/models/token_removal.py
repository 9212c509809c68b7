"""Shared primitives for removing patch tokens from a ViT (the attribution capability of docs/design.md section 3).

Adapters implement ``encode_images_without(pixels, drop)`` for their architecture with these helpers:
``drop`` is (B, N) or (B, K, N) boolean (K drop patterns per image, e.g. one per CCI cluster). The public
adapter contract is (B, N); an adapter built on this driver accepts (B, K, N) too and says so with
``supports_pattern_batches = True`` (``covar_harness.models.adapter``), so the harness sends all patterns in one
call. Tokens are embedded once per image (position embeddings included) and expanded to B*K sequences. The
sequences are then planned into chunks of at most ``max_rows`` rows (to bound memory), sorted by how many
patches they keep:

- a chunk whose rows all keep the same number of patches is run *shortened*: the dropped tokens are physically
  deleted from the sequence. Exact for ViTs with absolute position embeddings (added before deletion), and the
  cheapest path: no mask, shorter sequences;
- a chunk whose rows keep different numbers is run *masked*: each row holds its kept tokens and is padded to the
  chunk's longest row with copies of a kept token, and the padding is masked as an attention key in every layer
  and in pooling (float additive mask). Masked keys get exactly zero attention weight, so this equals the
  shortened forward up to float summation order.
- ``strategy="mask"`` forces the reference path: full-length sequences with the dropped patches key-masked.

Prefix tokens (CLS, registers) are never dropped or masked, and by default at least one patch is always kept, so
no attention row is ever fully masked (which would give NaN).

Removing EVERY patch (``allow_empty=True``) is allowed only when the tower keeps a prefix token: the sequence is
then the prefix alone (shortened) or the prefix plus fully masked patches (masked), and the embedding is what the
tower reads out from its prefix token with no image evidence, e.g. v(empty) of cluster Shapley values. Adapters
expose it as ``can_remove_all_patches`` (True only when pooling reads the prefix token: a CLS readout; average or
attention pools over patches would divide by zero keys) and an ``allow_empty`` keyword on
``encode_images_without``; the default stays strict so an accidental all-dropped pattern is still an error.

Callbacks, for an (R, L, C) sequence of prefix + patch tokens (L <= P + N, position embeddings applied):
``run_shortened(x) -> (R, D)`` runs the rest of the tower; ``run_masked(x, mask) -> (R, D)`` does the same with an
(R, L) additive key mask (0 keep, most negative finite value drop) applied in every attention layer and in
pooling. Adapters' exactness tests check both against an explicit shortened-sequence forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

MAX_ROWS = 256  # sequences per forward chunk: bounds memory for B x K patterns
STRATEGIES = ("auto", "shorten", "mask")
# Merging a group of n rows into a longer chunk costs n * (extra length) padded tokens; a separate forward call
# costs a fixed overhead. Measured on CPU (2 threads): per-call overhead of a ViT forward is small next to the
# GEMMs, so merging only pays off for a few padded tokens. On CUDA, kernel launches dominate small calls.
CALL_OVERHEAD_TOKENS = {"cpu": 16, "cuda": 4096}


@dataclass(frozen=True)
class Chunk:
    """Rows (indices into the B*K sequences) run in one forward; ``length`` kept patches per row (padded)."""

    rows: torch.Tensor
    length: int
    uniform: bool  # every row keeps exactly ``length`` patches: run shortened, no mask
    full: bool = False  # reference path: full-length sequence, dropped patches key-masked


def as_patterns(drop: torch.Tensor, n_patches: int, allow_empty: bool = False) -> tuple[torch.Tensor, bool]:
    """(B, K, N) bool view of ``drop`` and whether the caller passed (B, N) (so the result is squeezed).
    ``allow_empty`` lets a pattern drop every patch (the caller guarantees a prefix token is kept)."""
    if drop.dtype != torch.bool:
        raise TypeError(f"drop must be a bool tensor, got {drop.dtype}")
    squeeze = drop.dim() == 2
    patterns = drop[:, None, :] if squeeze else drop
    if patterns.dim() != 3 or patterns.shape[-1] != n_patches:
        raise ValueError(f"drop must be (B, N) or (B, K, N) with N={n_patches}, got {tuple(drop.shape)}")
    if not allow_empty and patterns.all(dim=-1).any():
        raise ValueError("a drop pattern removes every patch; keep at least one")
    return patterns, squeeze


def chunks(total: int, max_rows: int = MAX_ROWS) -> Iterator[slice]:
    """Consecutive slices of at most ``max_rows`` over ``range(total)``."""
    for start in range(0, total, max_rows):
        yield slice(start, min(total, start + max_rows))


def keep_indices(drop_rows: torch.Tensor) -> torch.Tensor | None:
    """(R, N_keep) indices of kept patches, in order, when every row keeps the same number; else None."""
    kept = (~drop_rows).sum(dim=1)
    if not bool((kept == kept[0]).all()):
        return None
    return torch.nonzero(~drop_rows, as_tuple=False)[:, 1].view(drop_rows.shape[0], int(kept[0]))


def padded_keep_indices(drop_rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, length) kept-patch indices in order, padded with each row's first kept patch, and the (R, length)
    bool padding mask. Padding repeats a real token (not zeros) so padded rows stay numerically ordinary."""
    keep = ~drop_rows
    kept = keep.sum(dim=1, keepdim=True)
    if int(kept.max()) > length:
        raise ValueError(f"a row keeps {int(kept.max())} patches, more than the padded length {length}")
    # a stable sort puts kept patches first, in their original (raster) order
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :length]
    pad = torch.arange(length, device=drop_rows.device)[None, :] >= kept
    return torch.where(pad, order[:, :1], order), pad


def gather_tokens(tokens: torch.Tensor, keep: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """tokens (R, P+N, C) -> (R, P+N_keep, C): prefix tokens (CLS/registers) plus the kept patches."""
    idx = keep.to(tokens.device) + n_prefix
    patches = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
    return torch.cat([tokens[:, :n_prefix], patches], dim=1)


def select_tokens(tokens: torch.Tensor, images: torch.Tensor, keep: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """tokens (B, P+N, C), images (R,), keep (R, L') -> (R, P+L', C) in one indexing pass (no B*K full copy)."""
    patches = tokens[images[:, None], keep + n_prefix]
    return torch.cat([tokens[images, :n_prefix], patches], dim=1)


def key_mask(drop_rows: torch.Tensor, n_prefix: int, dtype: torch.dtype) -> torch.Tensor:
    """(R, P+N) additive float mask: 0 keeps a key, the dtype's most negative finite value drops it."""
    prefix = torch.zeros(drop_rows.shape[0], n_prefix, dtype=torch.bool, device=drop_rows.device)
    full = torch.cat([prefix, drop_rows], dim=1)
    mask = torch.zeros(full.shape, dtype=dtype, device=drop_rows.device)
    return mask.masked_fill(full, torch.finfo(dtype).min)


def plan_chunks(
    kept: torch.Tensor,
    max_rows: int = MAX_ROWS,
    strategy: str = "auto",
    overhead_tokens: int = CALL_OVERHEAD_TOKENS["cpu"],
) -> list[Chunk]:
    """Split rows (``kept[r]`` = patches row r keeps) into forward chunks of at most ``max_rows`` rows.

    ``shorten``: one shortened chunk per kept count (no masks at all). ``mask``: full-length masked chunks in
    the caller's order. ``auto``: rows sorted by kept count (longest first); a group of n rows keeping l patches
    joins the current chunk (padded to its length L) while n * (L - l) <= ``overhead_tokens``, i.e. while the
    padding costs less than another forward call would.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    if strategy == "mask":
        n_max = int(kept.max()) if kept.numel() else 0
        return [Chunk(torch.arange(kept.numel())[sl], n_max, False, full=True) for sl in chunks(kept.numel(), max_rows)]
    order = torch.sort(kept.cpu(), descending=True, stable=True)
    counts, sizes = torch.unique_consecutive(order.values, return_counts=True)
    budget = overhead_tokens if strategy == "auto" else -1
    plan: list[Chunk] = []
    current: list[torch.Tensor] = []
    length, n_rows, uniform, start = 0, 0, True, 0

    def close() -> None:
        if current:
            plan.append(Chunk(torch.cat(current), length, uniform))

    for count, size in zip(counts.tolist(), sizes.tolist()):
        rows = order.indices[start : start + size]
        start += size
        if current and size * (length - count) <= budget and n_rows < max_rows:
            uniform = uniform and count == length
        else:
            close()
            current, length, n_rows, uniform = [], count, 0, True
        while n_rows + rows.numel() > max_rows:  # the group overflows the chunk: fill it and start another
            take = max_rows - n_rows
            current.append(rows[:take])
            close()
            rows = rows[take:]
            current, length, n_rows, uniform = [], count, 0, True
        if rows.numel():
            current.append(rows)
            n_rows += rows.numel()
    close()
    return plan


def default_overhead(device: torch.device) -> int:
    """Per-call overhead in padded tokens worth paying to avoid another forward (see CALL_OVERHEAD_TOKENS)."""
    return CALL_OVERHEAD_TOKENS.get(device.type, CALL_OVERHEAD_TOKENS["cuda"])


def encode_without(
    tokens: torch.Tensor,
    drop: torch.Tensor,
    n_prefix: int,
    run_shortened: Callable[[torch.Tensor], torch.Tensor],
    run_masked: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_rows: int = MAX_ROWS,
    *,
    strategy: str = "auto",
    overhead_tokens: int | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """The generic driver: tokens (B, P+N, C) after position embedding, drop (B, N) or (B, K, N).

    Returns (B, D) or (B, K, D), in the dtype ``run_*`` return. No Python loop over patterns: rows are
    planned into chunks by :func:`plan_chunks` (``strategy``, ``overhead_tokens``); see the module docstring.
    ``allow_empty``: a pattern may drop every patch (needs ``n_prefix >= 1``: the prefix alone is then run).
    """
    if allow_empty and n_prefix < 1:
        raise ValueError("allow_empty needs a prefix token (CLS): with no patch and no prefix nothing is left")
    n_patches = tokens.shape[1] - n_prefix
    patterns, squeeze = as_patterns(drop.to(tokens.device), n_patches, allow_empty)
    B, K, _ = patterns.shape
    if B != tokens.shape[0]:  # else rows would index images that do not exist (an IndexError deep in a chunk)
        raise ValueError(f"drop has patterns for {B} images but the pixels hold {tokens.shape[0]}")
    rows = patterns.reshape(B * K, n_patches)
    image_of_row = torch.arange(B, device=tokens.device).repeat_interleave(K)
    overhead = default_overhead(tokens.device) if overhead_tokens is None else overhead_tokens
    plan = plan_chunks((~rows).sum(dim=1), max_rows, strategy, overhead)
    out: torch.Tensor | None = None
    for chunk in plan:
        idx = chunk.rows.to(tokens.device)
        result = _run_chunk(tokens, rows[idx], image_of_row[idx], chunk, n_prefix, run_shortened, run_masked)
        if out is None:
            out = result.new_empty((B * K, *result.shape[1:]))
        out[idx] = result
    assert out is not None
    out = out.view(B, K, *out.shape[1:])
    return out[:, 0] if squeeze else out


def _run_chunk(
    tokens: torch.Tensor,
    drop_rows: torch.Tensor,
    images: torch.Tensor,
    chunk: Chunk,
    n_prefix: int,
    run_shortened: Callable[[torch.Tensor], torch.Tensor],
    run_masked: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One forward for one chunk, on the path its plan chose."""
    if chunk.full:
        return run_masked(tokens[images], key_mask(drop_rows, n_prefix, tokens.dtype))
    if chunk.uniform:
        keep = keep_indices(drop_rows)
        assert keep is not None and keep.shape[1] == chunk.length
        return run_shortened(select_tokens(tokens, images, keep, n_prefix))
    keep, pad = padded_keep_indices(drop_rows, chunk.length)
    return run_masked(select_tokens(tokens, images, keep, n_prefix), key_mask(pad, n_prefix, tokens.dtype))
