"""``occlusion``: the patch sliding window (a 1x1-patch window, stride 1), the classic perturbation baseline.

A patch's importance is the relative drop of the explained class's similarity when that patch alone is removed
from attention (``encode_images_without``, the same exact removal CCI uses): I_n = (s - s_n) / |s|. All N
single-patch patterns of a batch go to the model in the engine's ONE removal call. A cluster's importance (what
diagnosis reads) is the sum of its patches' importances; the per-patch map is kept (``Scores.patch``), so maps
and faithfulness curves see patch resolution. Adapters without removal get :meth:`Occlusion.pixel_importance`:
the patch's pixels set to the preprocessing mean (0 after normalisation), N + 1 images in one ``encode_images``
call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores
from covar_harness.attribution.cci import relative_importance
from covar_harness.models.adapter import patch_grid

if TYPE_CHECKING:
    import torch


class Occlusion(Attributor):
    name = "occlusion"
    description = "baseline: occlusion, relative similarity drop when one patch alone is removed (N removal passes)"

    def patterns(self, batch: ClusterBatch) -> torch.Tensor:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        B, N = batch.labels.shape
        eye = torch.eye(N, dtype=torch.bool, device=batch.labels.device)
        return eye[None].expand(B, N, N)

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        assert without is not None and ran is not None  # N >= 1 patterns always go through the call
        s = batch.s
        s_n = (without.to(s.device) * batch.text[:, None, :]).sum(dim=-1)
        _, _, patch = relative_importance(s, s_n, ran.to(s.device))
        clusters = torch.zeros(s.shape[0], batch.k, device=s.device, dtype=patch.dtype)
        clusters.scatter_add_(1, batch.labels.to(s.device), patch)
        return Scores(clusters * batch.valid.to(s.device), patch=patch)

    @staticmethod
    def pixel_importance(adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, N) occlusion in pixel space, for adapters without removal: each patch zeroed (the normalised
        mean colour) in turn; the B * (N + 1) images go to ``encode_images`` in one call."""
        import torch  # lazy: ls / --help / plugin discovery import this module without torch
        import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

        # lazy: imports torch; ls registers this attributor without it
        from covar_harness.attribution.patches import patch_pixel_masks

        B, _, H, W = pixels.shape
        masks = patch_pixel_masks(patch_grid(adapter), (H, W)).to(pixels.device)  # (N, H, W)
        N = masks.shape[0]
        keep = torch.cat([torch.ones(1, H, W, dtype=torch.bool, device=pixels.device), ~masks])  # (N + 1, H, W)
        images = pixels[:, None] * keep[None, :, None].to(pixels.dtype)  # (B, N + 1, 3, H, W)
        emb = F.normalize(adapter.encode_images(images.flatten(0, 1)).float(), dim=-1).view(B, N + 1, -1)
        sims = (emb * text.float().to(emb.device)[:, None, :]).sum(dim=-1)
        ones = torch.ones(B, N, dtype=torch.bool, device=sims.device)
        return relative_importance(sims[:, 0], sims[:, 1:], ones)[2]
