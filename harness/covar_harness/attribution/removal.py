"""The removal engine: patch tokens in, embeddings with patches removed out, through the adapter's
``encode_images_without``, ONE batched call for every pattern of a batch.

Every attributor's patterns (CCI's K clusters, cluster Shapley's 2^K coalitions) and the counterfactual region
test's two patterns go through :func:`encode_patterns` together. The adapter contract is checked here: (B, N) drop
rows unless the adapter declares ``supports_pattern_batches`` ((B, K, N) in one call), every returned shape checked
(one-line :class:`~covar_harness.models.adapter.AdapterContractError`), all-patches-removed patterns only where the
adapter ``can_remove_all_patches``. torch is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.models.adapter import (
    can_remove_all_patches,
    check_shape,
    implements,
    patch_grid,
    supports_pattern_batches,
    takes_layer,
)

if TYPE_CHECKING:
    import torch

PATTERN_ROWS = 64  # rows per call (at least the batch size) when patterns are flattened for a (B, N) adapter


def patch_tokens(adapter: Any, pixels: torch.Tensor, layer: int | str) -> torch.Tensor:
    """The adapter's patch tokens at ``layer`` (float32); ``"embed"``: the tokens entering the first block
    (``input_tokens``). Older adapters without a ``layer`` argument give the last block only; asking them for
    another layer is an error that ``layer_supported`` catches up front.
    The result must be (B, N, C) with N = rows * cols of ``patch_grid`` (else AdapterContractError)."""
    if layer == "embed":
        tokens = adapter.input_tokens(pixels)
        check_shape(adapter, "input_tokens", tokens, (pixels.shape[0], grid_size(adapter), None))
        return tokens.float()
    if layer == -1 and not layer_supported(adapter):
        tokens = adapter.patch_tokens(pixels)
    else:
        tokens = adapter.patch_tokens(pixels, layer=layer)
    check_shape(adapter, "patch_tokens", tokens, (pixels.shape[0], grid_size(adapter), None))
    return tokens.float()


def grid_size(adapter: Any) -> int:
    """N = rows * cols of the adapter's ``patch_grid``; AdapterContractError when it is not two positive ints."""
    rows, cols = patch_grid(adapter)
    return rows * cols


def layer_supported(adapter: Any, layer: int | str = 0) -> bool:
    """Whether the adapter gives tokens at ``layer``: ``"embed"`` needs ``input_tokens``; another block than the
    last needs a ``patch_tokens`` taking ``layer=`` (older adapters give the last block only)."""
    if layer == "embed":
        return implements(adapter, "input_tokens")
    return layer == -1 or takes_layer(adapter)


def encode_patterns(
    adapter: Any, pixels: torch.Tensor, patterns: torch.Tensor, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P, N) patterns -> L2-normalised (B, P, D) embeddings and (B, P) ``ran``, through
    :func:`encode_without` (ONE call when the adapter takes pattern batches). ``dim``: the D to expect.

    A pattern that removes every patch runs only when the adapter keeps a prefix token; otherwise it is replaced
    by "remove nothing" and marked not ``ran`` (its embedding must not be used)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    empty = patterns.all(dim=-1)
    if not bool(empty.any()):
        return F.normalize(encode_without(adapter, pixels, patterns, dim), dim=-1), ~empty
    if can_remove_all_patches(adapter):
        out = encode_without(adapter, pixels, patterns, dim, allow_empty=True)
        return F.normalize(out, dim=-1), torch.ones_like(empty)
    out = encode_without(adapter, pixels, patterns & ~empty[..., None], dim)
    return F.normalize(out, dim=-1), ~empty


def encode_without(
    adapter: Any, pixels: torch.Tensor, patterns: torch.Tensor, dim: int | None = None, **options: Any
) -> torch.Tensor:
    """(B, P, D) float embeddings for (B, P, N) drop patterns, honouring the adapter's declared contract.

    Adapters declaring ``supports_pattern_batches`` get the (B, P, N) patterns in one call. Every other adapter
    gets the public (B, N) contract: the patterns flattened to (B*P, N) rows, each with its image's pixels
    (``repeat_interleave`` order), in calls of at most max(B, PATTERN_ROWS) rows, reshaped back. Every result is
    shape-checked, so a wrong one fails the pair with one line instead of broadcasting into wrong numbers."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    B, P, N = patterns.shape
    if supports_pattern_batches(adapter):
        out = adapter.encode_images_without(pixels, patterns, **options)
        check_shape(adapter, "encode_images_without", out, (B, P, dim))
        return out.float()
    rows = patterns.reshape(B * P, N)
    step = max(B, PATTERN_ROWS)
    parts: list[torch.Tensor] = []
    for start in range(0, B * P, step):
        stop = min(B * P, start + step)
        images = torch.arange(start, stop, device=pixels.device) // P
        out = adapter.encode_images_without(pixels[images], rows[start:stop], **options)
        check_shape(adapter, "encode_images_without", out, (stop - start, dim))
        dim = int(out.shape[1])
        parts.append(out.float().to(parts[0].device) if parts else out.float())
    return torch.cat(parts).view(B, P, -1) if parts else patterns.new_zeros((B, P, dim or 0), dtype=torch.float32)
