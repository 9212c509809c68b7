"""Curve protocols (``faithfulness --protocol``): one class per protocol, each saying what is deleted or inserted,
in which order, onto what canvas, at which points, and how each point is scored.

- ``patches`` (default, the harness's own): patches in order of importance in ``--steps`` equal shares, onto the
  ``--replacement`` canvas (blur by default), the ``--score`` of the ``--target`` class, and the same curves by
  token removal. Not a published protocol.
- ``grad-eclip``: Grad-ECLIP's ``imagenet_eval_deletion.py`` / ``_insertion.py`` (Zhao et al. 2024). Pixels of
  the bilinearly upsampled map, most important first; deletion turns them into uniform random colours, insertion
  reveals them on black; points at 5, 10, ..., 50% of the pixels (L = 100 steps of area / 200 pixels, every 10th
  scored) plus the untouched image (first deletion point, last insertion point); each point is top-1 accuracy
  of the label (the map explains the label: their ``eclip_gt``); the AUC is the mean accuracy over the 11 points.
- ``rise``: Petsiuk et al.'s causal metric (RISE ``evaluation.py`` / ``Evaluation.ipynb``). Pixels of the
  upsampled map, one image row of pixels per step (224 at 224 x 224); deletion to zeros of the normalised tensor,
  insertion from the image blurred by their ``gkern(11, 5)``; the softmax probability of the class predicted on
  the untouched image; the AUC is their normalised trapezoid.

Where both published protocols differ from here, by necessity: the images are perturbed in the model-input frame
(after the model's resize / crop), not at the image's own size, and the classes are the task's, not ImageNet's
1,000. RISE's softmax is the model's own over the task's classes at its logit scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from covar_harness.attribution.patches import canvas, importance_order
from covar_harness.faithfulness.curves import Curves, Scorer, pixel_curves, token_curves
from covar_harness.models.adapter import attribution_support, patch_grid

COLOUR_SEED_OFFSET = 4  # added to an image's seed for Grad-ECLIP's random colours (ties use +3)
CHUNK_IMAGES = 512  # images per model call when a protocol scores many pixel-level points


@dataclass
class CurveInput:
    """One batch of one method: the images (B, 3, H, W) in the model-input frame, the per-patch maps (B, N),
    each image's seed (ties, random canvases), whether ties break at random, and the score of the explained
    class that the settings ask for."""

    adapter: Any
    pixels: torch.Tensor
    maps: torch.Tensor
    order: torch.Tensor  # (B, N) patches most important first, ties broken as the settings say
    seeds: Sequence[int]
    random_ties: bool
    scorer: Scorer
    steps: int
    replacement: str
    blur_sigma: float
    token_removal: bool

    def tie_seeds(self) -> Sequence[int] | None:
        return self.seeds if self.random_ties else None


class CurveProtocol:
    """A protocol: ``curves`` gives {suffix: Curves} per batch (suffix "" for pixels, "_tokens" for token
    removal); ``fixed`` are the settings it sets itself (a flag for them is refused); ``record`` what the result's
    ``settings`` say about it (scalars, replacing the settings it does not use)."""

    name: ClassVar[str]
    fixed: ClassVar[dict[str, Any]] = {}

    def record(self) -> dict[str, Any]:
        return {"protocol": self.name}

    def curves(self, inp: CurveInput) -> dict[str, Curves]:
        raise NotImplementedError


class PatchCurves(CurveProtocol):
    name = "patches"

    def curves(self, inp: CurveInput) -> dict[str, Curves]:
        base = canvas(inp.adapter, inp.pixels, inp.replacement, inp.blur_sigma)
        out = {"": pixel_curves(inp.adapter, inp.pixels, inp.order, base, inp.scorer, inp.steps)}
        if inp.token_removal and attribution_support(inp.adapter)[0]:
            out["_tokens"] = token_curves(inp.adapter, inp.pixels, inp.order, inp.scorer, inp.steps)
        return out


class GradEclipCurves(CurveProtocol):
    name = "grad-eclip"
    fixed: ClassVar[dict[str, Any]] = {"score": "top1", "target": "label", "token_removal": False}
    L, CAL_GAP = 100, 10  # their 100 deletion steps of area / (2 L) pixels, scored every 10th

    def record(self) -> dict[str, Any]:
        return {
            "protocol": self.name,
            "order": "pixels of the bilinearly upsampled map",
            "replacement": "uniform random colours (deletion), black (insertion)",
            "steps": self.L // self.CAL_GAP,
            "blur_sigma": None,
            "auc": "mean over the points",
        }

    def counts(self, n_pixels: int) -> tuple[list[int], list[int]]:
        """Pixels changed at each point: deletion 0 then 10 scored steps; insertion 10 steps then every pixel."""
        once = max(1, int(n_pixels / (2 * self.L)))
        scored = [step * once for step in range(self.CAL_GAP, self.L + 1, self.CAL_GAP)]
        return [0, *scored], [*scored, n_pixels]

    def curves(self, inp: CurveInput) -> dict[str, Curves]:
        B, _, H, W = inp.pixels.shape
        order = importance_order(pixel_map(inp.adapter, inp.maps, (H, W)), inp.tie_seeds())
        colours = random_colours(inp.adapter, inp.pixels, inp.seeds)
        black = solid(inp.adapter, inp.pixels, (0, 0, 0))
        del_counts, ins_counts = self.counts(H * W)
        deletion = pixel_order_scores(inp.adapter, inp.pixels, colours, order, del_counts, inp.scorer)
        insertion = pixel_order_scores(inp.adapter, black, inp.pixels, order, ins_counts, inp.scorer)
        x_del, x_ins = (np.asarray(c, dtype=np.float64) / (H * W) for c in (del_counts, ins_counts))
        return {"": Curves(deletion, insertion, x_del, x_ins, area=mean_points)}


class RiseCurves(CurveProtocol):
    name = "rise"
    fixed: ClassVar[dict[str, Any]] = {"score": "softmax", "target": "pred", "token_removal": False}
    KLEN, NSIG = 11, 5  # their blur kernel for the insertion canvas

    def record(self) -> dict[str, Any]:
        return {
            "protocol": self.name,
            "order": "pixels of the bilinearly upsampled map",
            "replacement": "zeros of the normalised tensor (deletion), gkern(11, 5) blur (insertion)",
            "steps": None,
            "blur_sigma": float(self.NSIG),
            "auc": "normalised trapezoid",
        }

    def curves(self, inp: CurveInput) -> dict[str, Curves]:
        B, _, H, W = inp.pixels.shape
        order = importance_order(pixel_map(inp.adapter, inp.maps, (H, W)), inp.tie_seeds())
        step = W  # RISE: 224 pixels a step at 224 x 224, one image row
        n_steps = (H * W + step - 1) // step
        counts = [min(i * step, H * W) for i in range(n_steps + 1)]
        blurred = rise_blur(inp.pixels, self.KLEN, self.NSIG)
        deletion = pixel_order_scores(inp.adapter, inp.pixels, torch.zeros_like(inp.pixels), order, counts, inp.scorer)
        insertion = pixel_order_scores(inp.adapter, blurred, inp.pixels, order, counts, inp.scorer)
        x = np.arange(n_steps + 1, dtype=np.float64) / n_steps
        return {"": Curves(deletion, insertion, x, x)}


PROTOCOLS: dict[str, type[CurveProtocol]] = {p.name: p for p in (PatchCurves, GradEclipCurves, RiseCurves)}


def mean_points(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(B,) mean of each curve's points (Grad-ECLIP reports the accuracy at each point)."""
    return np.asarray(curves, dtype=np.float64).mean(axis=1)


def pixel_map(adapter: Any, maps: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """(B, N) patch maps -> (B, H * W): bilinearly upsampled to the model-input frame (torchvision's ``Resize``
    on a tensor, as Grad-ECLIP does), raster order."""
    rows, cols = patch_grid(adapter)
    grid = maps.float().view(-1, 1, rows, cols)
    return F.interpolate(grid, size=size_hw, mode="bilinear", align_corners=False).flatten(1)


def pixel_order_scores(
    adapter: Any, start: torch.Tensor, finish: torch.Tensor, order: torch.Tensor, counts: Sequence[int], scorer: Scorer
) -> np.ndarray:
    """(B, len(counts)): at point k the first ``counts[k]`` pixels of ``order`` (B, H * W) show ``finish``, the
    rest ``start``; scored in model calls of at most ``CHUNK_IMAGES`` images."""
    B, C, H, W = start.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(H * W, device=order.device).expand(B, H * W))
    rank = rank.view(B, 1, 1, H, W).to(start.device)
    per_call = max(1, CHUNK_IMAGES // B)
    out = []
    with torch.no_grad():
        for i in range(0, len(counts), per_call):
            limits = torch.tensor(counts[i : i + per_call], device=start.device).view(1, -1, 1, 1, 1)
            images = torch.where(rank < limits, finish[:, None], start[:, None])  # (B, k, C, H, W)
            emb = adapter.encode_images(images.flatten(0, 1)).float().view(B, images.shape[1], -1)
            out.append(scorer(emb))
    return torch.cat(out, dim=1).numpy()


def solid(adapter: Any, pixels: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """(B, 3, H, W): a one-colour image through the model's own preprocessing."""
    H, W = pixels.shape[-2:]
    image = adapter.preprocess(Image.new("RGB", (W, H), rgb))
    if tuple(image.shape) != tuple(pixels.shape[1:]):
        raise ValueError(f"preprocessing a solid image gives {tuple(image.shape)}, not {tuple(pixels.shape[1:])}")
    return image.to(device=pixels.device, dtype=pixels.dtype)[None].expand_as(pixels).clone()


def random_colours(adapter: Any, pixels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """(B, 3, H, W): every pixel a uniform random colour (Grad-ECLIP's ``torch.rand(n, 3) * 255.`` written into a
    uint8 image, so 0..254 per channel), seeded per image, through the model's normalisation: black + c (white -
    black), exact for the per-channel affine normalisation every CLIP preprocessing ends with."""
    B, _, H, W = pixels.shape
    black, white = solid(adapter, pixels[:1], (0, 0, 0)), solid(adapter, pixels[:1], (255, 255, 255))
    draws = [torch.rand(3, H, W, generator=torch.Generator().manual_seed(int(s) + COLOUR_SEED_OFFSET)) for s in seeds]
    c = (torch.stack(draws) * 255.0).floor().div(255.0).to(device=pixels.device, dtype=pixels.dtype)
    return black + c * (white - black)


def gkern(klen: int, nsig: float) -> torch.Tensor:
    """RISE's ``gkern``: a centred delta of side ``klen`` through scipy's ``gaussian_filter`` (sigma ``nsig``,
    truncate 4, reflect mode), as a (3, 3, klen, klen) per-channel kernel. Computed here (the filter is separable
    and the delta is too, so the result is the outer product of one 1-D pass) rather than by importing
    scipy.ndimage, which costs seconds at start-up; the test compares it with theirs, verbatim."""
    radius = int(4.0 * nsig + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / nsig) ** 2)
    weights /= weights.sum()
    line = np.zeros(klen)
    for i in range(klen):
        source = (i + offsets) % (2 * klen)  # scipy's "reflect": d c b a | a b c d | d c b a
        source = np.where(source >= klen, 2 * klen - 1 - source, source)
        line[i] = weights[source == klen // 2].sum()
    k = np.outer(line, line)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    return torch.from_numpy(kern.astype("float32"))


def rise_blur(pixels: torch.Tensor, klen: int, nsig: float) -> torch.Tensor:
    """RISE's insertion canvas: ``conv2d(x, gkern(klen, nsig), padding=klen // 2)`` on the normalised tensor
    (zero padding, so the border darkens towards the normalised zero as in theirs)."""
    kern = gkern(klen, nsig).to(device=pixels.device, dtype=pixels.dtype)
    return F.conv2d(pixels, kern, padding=klen // 2)
