"""Shared primitives for removing patch tokens from a ViT (the attribution capability of DESIGN 3).

Adapters implement ``encode_images_without(pixels, drop)`` for their architecture with these helpers:
``drop`` is (B, N) or (B, K, N) boolean (K drop patterns per image, e.g. one per CCI cluster). Tokens are
embedded once per image and expanded to B*K sequences; then, per chunk of sequences,
- if every pattern in the chunk drops the same number of patches, the dropped tokens are physically
  deleted from the sequence (exact for ViTs with absolute position embeddings, and cheaper), else
- dropped tokens are masked as attention keys in every layer (float additive mask; queries are never fully
  masked because prefix tokens such as CLS are always kept, and pooling heads get the same key mask).
Both give the same embedding; tests check it against an explicit shortened-sequence forward.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

MAX_ROWS = 256  # sequences per forward chunk: bounds memory for B x K patterns


def as_patterns(drop: torch.Tensor, n_patches: int) -> tuple[torch.Tensor, bool]:
    """(B, K, N) bool view of ``drop`` and whether the caller passed (B, N) (so the result is squeezed)."""
    if drop.dtype != torch.bool:
        raise TypeError(f"drop must be a bool tensor, got {drop.dtype}")
    squeeze = drop.dim() == 2
    patterns = drop[:, None, :] if squeeze else drop
    if patterns.dim() != 3 or patterns.shape[-1] != n_patches:
        raise ValueError(f"drop must be (B, N) or (B, K, N) with N={n_patches}, got {tuple(drop.shape)}")
    if patterns.all(dim=-1).any():
        raise ValueError("a drop pattern removes every patch; keep at least one")
    return patterns, squeeze


def chunks(total: int, max_rows: int = MAX_ROWS) -> Iterator[slice]:
    for start in range(0, total, max_rows):
        yield slice(start, min(total, start + max_rows))


def keep_indices(drop_rows: torch.Tensor) -> torch.Tensor | None:
    """(R, N_keep) indices of kept patches, in order, when every row keeps the same number; else None."""
    kept = (~drop_rows).sum(dim=1)
    if not bool((kept == kept[0]).all()):
        return None
    return torch.nonzero(~drop_rows, as_tuple=False)[:, 1].view(drop_rows.shape[0], int(kept[0]))


def gather_tokens(tokens: torch.Tensor, keep: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """tokens (R, P+N, C) -> (R, P+N_keep, C): prefix tokens (CLS/registers) plus the kept patches."""
    idx = keep.to(tokens.device) + n_prefix
    patches = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
    return torch.cat([tokens[:, :n_prefix], patches], dim=1)


def key_mask(drop_rows: torch.Tensor, n_prefix: int, dtype: torch.dtype) -> torch.Tensor:
    """(R, P+N) additive float mask: 0 keeps a key, the dtype's most negative finite value drops it."""
    prefix = torch.zeros(drop_rows.shape[0], n_prefix, dtype=torch.bool, device=drop_rows.device)
    full = torch.cat([prefix, drop_rows], dim=1)
    mask = torch.zeros(full.shape, dtype=dtype, device=drop_rows.device)
    return mask.masked_fill(full, torch.finfo(dtype).min)


def encode_without(
    tokens: torch.Tensor,
    drop: torch.Tensor,
    n_prefix: int,
    run_shortened: Callable[[torch.Tensor], torch.Tensor],
    run_masked: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_rows: int = MAX_ROWS,
) -> torch.Tensor:
    """The generic driver: tokens (B, P+N, C) after position embedding, drop (B, N) or (B, K, N).

    ``run_shortened(x)`` runs the rest of the tower on (R, L', C) sequences; ``run_masked(x, mask)`` runs it
    with an (R, L) additive key mask. Returns (B, D) or (B, K, D).
    """
    n_patches = tokens.shape[1] - n_prefix
    patterns, squeeze = as_patterns(drop.to(tokens.device), n_patches)
    B, K, _ = patterns.shape
    rows = patterns.reshape(B * K, n_patches)
    image_of_row = torch.arange(B, device=tokens.device).repeat_interleave(K)
    outs = []
    for sl in chunks(B * K, max_rows):
        x = tokens[image_of_row[sl]]
        keep = keep_indices(rows[sl])
        if keep is not None:
            outs.append(run_shortened(gather_tokens(x, keep, n_prefix)))
        else:
            outs.append(run_masked(x, key_mask(rows[sl], n_prefix, x.dtype)))
    out = torch.cat(outs).view(B, K, -1)
    return out[:, 0] if squeeze else out
