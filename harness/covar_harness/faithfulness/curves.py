"""Deletion and insertion curves of the ``patches`` protocol (the harness's own, not Grad-ECLIP's: see
``protocols``) and their AUC, by pixel replacement and by token removal.

Patches are taken in order of importance, most important first, in ``steps`` equal shares. Deletion: the top
patches' pixels become the replacement canvas. Insertion: the image starts as the canvas and the top patches'
pixels are revealed. Each point is scored by :class:`Scorer` (softmax or cosine of the explained class). Every
point of a curve for a whole batch goes to the model in ONE call (``encode_images`` with B * (steps + 1) images;
the removal engine's one ``encode_images_without`` call for the token variant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from covar_harness.attribution.patches import patch_pixel_masks, step_counts, top_masks
from covar_harness.attribution.removal import encode_patterns
from covar_harness.models.adapter import can_remove_all_patches, patch_grid

if TYPE_CHECKING:
    import torch


@dataclass
class Scorer:
    """The score of the explained class for (B, P, D) embeddings: softmax over the classes at ``temperature``,
    the cosine with the class's text embedding, or ``top1``: 1 where the class is the top-1 prediction, else 0
    (Grad-ECLIP's accuracy on the label) (``classifier`` (D, C) holds L2-normalised class columns)."""

    classifier: torch.Tensor
    target: torch.Tensor  # (B,)
    kind: str = "softmax"
    temperature: float = 100.0

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(emb.float().cpu(), dim=-1)
        W = self.classifier.float().cpu()
        target = self.target.cpu()
        if self.kind == "cosine":
            return (emb * W[:, target].T[:, None, :]).sum(dim=-1)
        if self.kind == "top1":
            return ((emb @ W).argmax(dim=-1) == target[:, None]).float()
        probs = (self.temperature * emb @ W).softmax(dim=-1)  # (B, P, C)
        return probs.gather(-1, target[:, None, None].expand(-1, emb.shape[1], 1))[..., 0]


@dataclass
class Curves:
    """(B, points) scores at the fractions ``x`` (points,) of patches (or pixels) removed (deletion) or revealed;
    ``area`` turns a curve and its fractions into its AUC (the trapezoid unless a protocol says otherwise)."""

    deletion: np.ndarray
    insertion: np.ndarray
    x_deletion: np.ndarray
    x_insertion: np.ndarray
    area: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(default=lambda y, x: auc(y, x))

    def aucs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.area(self.deletion, self.x_deletion), self.area(self.insertion, self.x_insertion)


def auc(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(B,) trapezoidal area under each curve over the fractions ``x``."""
    y = np.asarray(curves, dtype=np.float64)
    dx = np.diff(np.asarray(x, dtype=np.float64))
    return ((y[:, 1:] + y[:, :-1]) / 2 * dx).sum(axis=1)


def _encode_images(adapter: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, P, 3, H, W) -> (B, P, D): one ``encode_images`` call for every point of every image."""
    B, P = images.shape[:2]
    return adapter.encode_images(images.flatten(0, 1)).float().view(B, P, -1)


def pixel_curves(
    adapter: Any, pixels: torch.Tensor, order: torch.Tensor, base: torch.Tensor, scorer: Scorer, steps: int
) -> Curves:
    """Deletion and insertion by pixel replacement; ``order`` (B, N) most important first, ``base`` the canvas."""

    B, _, H, W = pixels.shape
    masks = patch_pixel_masks(patch_grid(adapter), (H, W)).to(pixels.device).float()  # (N, H, W)
    counts = step_counts(masks.shape[0], steps)
    chosen = top_masks(order.to(pixels.device), counts).float()  # (B, S + 1, N)
    region = (torch.einsum("bkn,nhw->bkhw", chosen, masks) > 0.5)[:, :, None]  # (B, S + 1, 1, H, W)
    deleted = torch.where(region, base[:, None], pixels[:, None])
    with torch.no_grad():
        deletion = scorer(_encode_images(adapter, deleted))
        del deleted
        inserted = torch.where(region, pixels[:, None], base[:, None])
        insertion = scorer(_encode_images(adapter, inserted))
    x = np.asarray(counts, dtype=np.float64) / masks.shape[0]
    return Curves(deletion.numpy(), insertion.numpy(), x, x)


def token_curves(adapter: Any, pixels: torch.Tensor, order: torch.Tensor, scorer: Scorer, steps: int) -> Curves:
    """Deletion and insertion by removing patches from attention (``encode_images_without`` through the removal
    engine: one call per curve for adapters that take pattern batches). Where the adapter cannot remove every
    patch, deletion stops at N - 1 patches removed and insertion starts from one patch kept (``x`` says so)."""

    N = order.shape[1]
    counts = step_counts(N, steps)
    full = can_remove_all_patches(adapter)
    del_counts = counts if full else [min(c, N - 1) for c in counts]
    ins_counts = counts if full else [max(c, 1) for c in counts]
    with torch.no_grad():
        drop = top_masks(order, del_counts)
        deletion = scorer(encode_patterns(adapter, pixels, drop)[0])
        keep = top_masks(order, ins_counts)
        insertion = scorer(encode_patterns(adapter, pixels, ~keep)[0])
    return Curves(
        deletion.numpy(),
        insertion.numpy(),
        np.asarray(del_counts, dtype=np.float64) / N,
        np.asarray(ins_counts, dtype=np.float64) / N,
    )
