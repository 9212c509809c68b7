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
    """The attribution capability (CCI). Optional members, read with ``getattr`` so older adapters keep working:

    - ``supports_pattern_batches: bool`` (default False). The public contract of ``encode_images_without`` is a
      (B, N) ``drop`` -> (B, D). An adapter that also takes K patterns per image at once, (B, K, N) -> (B, K, D),
      says so with ``supports_pattern_batches = True`` (the built-in ``openclip:`` and ``hf:`` adapters do: one
      batched call is much faster). Without it the harness flattens the patterns to (B*K, N) rows with each
      image's pixels repeated, and calls the (B, N) contract in chunks.
    - ``can_remove_all_patches: bool`` (default False): ``encode_images_without(..., allow_empty=True)`` may drop
      every patch (the tower reads a prefix token such as CLS), see ``covar_harness.token_removal``.
    - ``supports_attribution = False`` with ``attribution_unsupported_reason``: an explicit no.

    The harness checks every returned shape; a wrong one fails that model x task pair with one line naming the
    adapter, the method, and the expected and actual shapes (:class:`AdapterContractError`).
    """

    patch_grid: tuple[int, int]

    def patch_tokens(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """(B, N, C) patch tokens, N = rows * cols in raster order. May take ``layer: int`` (default -1)."""

    def encode_images_without(self, pixels: "torch.Tensor", drop: "torch.Tensor") -> "torch.Tensor":
        """(B, D) embeddings with patches where ``drop[b, n]`` is True removed from attention and pooling.
        ``drop`` is (B, N) bool; (B, K, N) -> (B, K, D) only when ``supports_pattern_batches`` is True."""


class AdapterContractError(RuntimeError):
    """An adapter returned something its contract does not allow (wrong shape, not a tensor). One line."""


def adapter_name(obj: Any) -> str:
    """The adapter's ``name`` for messages, or its class name when it has none."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else type(obj).__name__


def supports_pattern_batches(obj: Any) -> bool:
    """Whether ``encode_images_without`` takes (B, K, N) drop patterns: only when the adapter declares it."""
    return getattr(obj, "supports_pattern_batches", False) is True


def check_shape(obj: Any, method: str, value: Any, expected: tuple[int | None, ...]) -> None:
    """Raise :class:`AdapterContractError` unless ``value`` is a tensor-like of shape ``expected`` (None = any
    size on that axis). Why: a wrong shape would otherwise broadcast silently or crash deep in the harness."""
    shape = getattr(value, "shape", None)
    want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    if shape is None:
        raise AdapterContractError(f"adapter {adapter_name(obj)!r}: {method} returned a {type(value).__name__}, "
                                   f"expected a tensor of shape {want}")
    got = tuple(int(x) for x in shape)
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise AdapterContractError(f"adapter {adapter_name(obj)!r}: {method} returned shape {got}, expected {want}")


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
