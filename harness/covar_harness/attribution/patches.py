"""Patch geometry and replacement canvases: which pixels belong to which patch, the order in which patches are
removed, and what a removed patch becomes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    import torch


def patch_pixel_masks(grid: tuple[int, int], size_hw: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool, raster order: patch (r, c) covers rows [r*H//rows, (r+1)*H//rows) and the same for columns
    (exact tiles for a ViT; the nearest split otherwise)."""

    rows, cols = grid
    H, W = size_hw
    r = (torch.arange(H) * rows) // H  # patch row of each pixel row
    c = (torch.arange(W) * cols) // W
    ids = r[:, None] * cols + c[None, :]  # (H, W) patch id
    return ids[None] == torch.arange(rows * cols)[:, None, None]


TIE_SEED_OFFSET = 3  # added to an image's seed for its tie order (random uses +1, random-patch +2)


def importance_order(importance: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """(B, N) -> (B, N) indices, most important first. Ties keep raster order without ``seeds``; with one seed
    per image they fall in a seeded random order of that image (the same whatever the batch). Why: a ReLU map
    (gradcam, grad-eclip) is exactly 0 on about half the patches and a cluster-constant map (cci) ties within
    each cluster, so raster order would hand the top-left patches the lead in every curve and rank."""

    values = importance.float()
    if seeds is None:
        return torch.sort(values, dim=1, descending=True, stable=True).indices
    N = values.shape[1]
    perms = torch.stack(
        [torch.randperm(N, generator=torch.Generator().manual_seed(int(s) + TIE_SEED_OFFSET)) for s in seeds]
    ).to(values.device)
    ranked = torch.sort(values.gather(1, perms), dim=1, descending=True, stable=True).indices
    return perms.gather(1, ranked)


def step_counts(n: int, steps: int) -> list[int]:
    """How many patches are removed (deletion) or revealed (insertion) at each of the ``steps + 1`` points."""
    return [round(k * n / steps) for k in range(steps + 1)]


def top_masks(order: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(B, S + 1, N) bool: at point k, the ``counts[k]`` most important patches of each image."""

    B, N = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=order.device).expand(B, N))  # rank of each patch
    limits = torch.tensor(counts, device=order.device)
    return rank[:, None, :] < limits[None, :, None]


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding (kernel radius 3 sigma, capped by the image)."""

    B, C, H, W = pixels.shape
    radius = max(1, min(int(3 * sigma), H - 1, W - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=pixels.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(pixels.dtype)
    out = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out.reshape(B * C, 1, *out.shape[-2:]), kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out.view(B, C, H, W)


def canvas(adapter: Any, pixels: torch.Tensor, replacement: str, sigma: float) -> torch.Tensor:
    """(B, 3, H, W): what deleted patches become and what insertion starts from (``FaithfulnessSettings``).
    ``black`` goes through the adapter's own preprocessing, so it is black whatever the normalisation."""
    if replacement == "blur":
        return gaussian_blur(pixels, sigma)
    if replacement == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).clone()

    H, W = pixels.shape[-2:]
    black = adapter.preprocess(Image.new("RGB", (W, H), (0, 0, 0)))
    if tuple(black.shape) != tuple(pixels.shape[1:]):
        raise ValueError(f"--replacement black: preprocessing a black image gives {tuple(black.shape)}")
    return black.to(device=pixels.device, dtype=pixels.dtype)[None].expand_as(pixels).clone()
