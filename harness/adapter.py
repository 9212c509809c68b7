"""The ModelAdapter protocol: the small contract every model family implements (DESIGN section 3).

Like CLIP_benchmark's encode_image / encode_text, it is deliberately tiny. Attribution (CCI) needs three more
members; a model without them is still evaluated, with attribution skipped and the result saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # keep torch and PIL out of import time
    import torch
    from PIL import Image


@runtime_checkable
class ModelAdapter(Protocol):
    name: str

    def preprocess(self, image: "Image.Image") -> "torch.Tensor":
        """(3, H, W) float tensor, the model's own preprocessing. Runs in DataLoader workers: keep it picklable."""

    def encode_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """(B, 3, H, W) on any device -> (B, D). The harness L2-normalises."""

    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """Raw strings -> (T, D); tokenisation is the adapter's business. The harness L2-normalises."""


@runtime_checkable
class AttributionCapable(Protocol):
    patch_grid: tuple[int, int]

    def patch_tokens(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """(B, N, C) patch tokens, N = rows * cols in raster order."""

    def encode_images_without(self, pixels: "torch.Tensor", drop: "torch.Tensor") -> "torch.Tensor":
        """(B, D) embeddings with patches where ``drop[b, n]`` is True removed from attention and pooling."""


REQUIRED_MEMBERS = {
    "name": "attribute `name: str`",
    "preprocess": "method `preprocess(image) -> Tensor[3, H, W]`",
    "encode_images": "method `encode_images(pixels) -> Tensor[B, D]`",
    "encode_texts": "method `encode_texts(texts) -> Tensor[T, D]`",
}
ATTRIBUTION_MEMBERS = ("patch_grid", "patch_tokens", "encode_images_without")


def missing_members(obj: Any) -> list[str]:
    """What ``obj`` lacks to be a ModelAdapter, one readable item per member."""
    out = []
    for member, what in REQUIRED_MEMBERS.items():
        value = getattr(obj, member, None)
        if value is None or (member != "name" and not callable(value)) or (member == "name" and not isinstance(value, str)):
            out.append(what)
    return out


def attribution_support(obj: Any) -> tuple[bool, str]:
    """(supported, reason). An adapter may say no explicitly with ``supports_attribution = False``."""
    explicit = getattr(obj, "supports_attribution", None)
    if explicit is False:
        return False, getattr(obj, "attribution_unsupported_reason", "the adapter declares no attribution support")
    lacking = [m for m in ATTRIBUTION_MEMBERS if getattr(obj, m, None) is None]
    if lacking:
        return False, f"adapter lacks {', '.join(lacking)}"
    return True, ""
