"""The ModelAdapter contract: the small interface every model family implements (docs/design.md section 3).

Like CLIP_benchmark's encode_image / encode_text, it is deliberately tiny. Attribution (CCI) needs a few more
members; a model without them is still evaluated, with attribution skipped and the result saying so.

Two ways to meet the contract, both first-class:

- subclass :class:`BaseAdapter` (as llm's ``EmbeddingModel``): every optional member is declared there once,
  with a docstring and a safe default, so an adapter only writes what its model has;
- duck typing: any object with the members of the :class:`ModelAdapter` Protocol. Third-party adapters written
  before the base class existed keep working unchanged.

The harness never reads an optional member at the point of use: it asks the functions here
(:func:`capabilities`, :func:`attribution_support`, :func:`supports_pattern_batches`, :func:`patch_grid`, ...),
which treat a missing member exactly like the base class's default. That is what keeps the two ways equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # keep torch and PIL out of import time
    import torch
    from PIL import Image


@runtime_checkable
class ModelAdapter(Protocol):
    """The required members, for duck-typed adapters and type hints. Optional members: see :class:`BaseAdapter`."""

    name: str

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) float tensor, the model's own preprocessing. Runs in DataLoader workers: keep it picklable."""

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) on any device -> (B, D). The harness L2-normalises."""

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Raw strings -> (T, D); tokenisation is the adapter's business. The harness L2-normalises."""


@runtime_checkable
class AttributionCapable(Protocol):
    """The attribution capability (CCI), for type hints. Each member is documented on :class:`BaseAdapter`."""

    patch_grid: tuple[int, int]

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, N, C) patch tokens, N = rows * cols in raster order. May take ``layer: int`` (default -1)."""

    def encode_images_without(self, pixels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings with patches where ``drop[b, n]`` is True removed from attention and pooling.
        ``drop`` is (B, N) bool; (B, K, N) -> (B, K, D) only when ``supports_pattern_batches`` is True."""


class BaseAdapter:
    """Base class of model adapters: the whole contract in one place, optional members with safe defaults.

    Subclass it and implement :meth:`preprocess` (or assign a picklable transform to ``self.preprocess``),
    :meth:`encode_images` and :meth:`encode_texts`; set ``name``. That is a complete adapter. For CCI
    attribution also set ``patch_grid`` and implement :meth:`patch_tokens` and :meth:`encode_images_without`;
    the flags below then say what else the model can do. A default left alone is always safe: it makes the
    harness do less (no attribution, flattened pattern calls), never something wrong.

    Members left as declared here count as absent: :func:`missing_members` still names an unimplemented
    required method, and :func:`attribution_support` says no until the three attribution members exist.
    """

    #: Shown in results and messages; the built-ins use the model spec, e.g. ``hf:google/siglip-base-patch16-224``.
    name: str
    #: Optional, recorded as ``model.family`` in results (``openclip``, ``hf``, ...). Declared without a value on
    #: purpose: an adapter that does not set it gets the family of its spec's scheme.
    family: str

    #: (rows, cols) of the patch grid the attribution members work on; None: no attribution capability.
    patch_grid: tuple[int, int] | None = None
    #: Blocks that ``patch_tokens(layer=...)`` may index (Python style, -n_blocks..n_blocks-1); None: not told,
    #: so a bad ``--cci-layer`` is caught by the adapter itself instead of before the pass.
    n_blocks: int | None = None
    #: True when ``encode_images_without`` also takes (B, K, N) drop patterns and returns (B, K, D): all of an
    #: image's patterns in one call (much faster). False: the harness flattens the patterns to (B*K, N) rows,
    #: repeats each image's pixels, and calls the documented (B, N) -> (B, D) form in chunks.
    supports_pattern_batches: bool = False
    #: True when ``encode_images_without(..., allow_empty=True)`` may drop every patch because the tower reads its
    #: embedding from a prefix token (a CLS readout, or an attention pool whose keys include CLS). False: a
    #: pattern removing every patch is never sent (see ``covar_harness.models.token_removal``).
    can_remove_all_patches: bool = False
    #: An explicit answer: False says "no attribution" even when the members exist (e.g. a convolutional tower
    #: where removing a patch token is not defined); None: decided by the members alone.
    supports_attribution: bool | None = None
    #: Why not, when ``supports_attribution`` is False; recorded in the result's notes.
    attribution_unsupported_reason: str = ""

    # PIL image -> (3, H, W) float tensor, the checkpoint's own preprocessing; the same H, W for every image.
    # A method, or (better) a small picklable transform assigned in ``__init__``: it runs in DataLoader workers,
    # so a method that holds the model would be copied into each of them.
    preprocess: Callable[[Image.Image], torch.Tensor]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels on the CPU -> (B, D) float32 embeddings. Move them to the device inside; the harness
        L2-normalises the result."""
        raise NotImplementedError(f"{type(self).__name__} does not implement encode_images")

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Raw strings -> (T, D) float32 embeddings, in the image space. Tokenise inside, with the padding and
        truncation the model was trained with; the harness L2-normalises the result."""
        raise NotImplementedError(f"{type(self).__name__} does not implement encode_texts")

    def patch_tokens(self, pixels: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, C) patch tokens after block ``layer`` (default: the last), N = rows * cols of
        ``patch_grid`` in raster order, without prefix tokens (CLS). CCI clusters these."""
        raise NotImplementedError(f"{type(self).__name__} has no attribution capability (patch_tokens)")

    def encode_images_with_tokens(self, pixels: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Optional. ``(encode_images(pixels), patch_tokens(pixels, layer))`` from ONE forward: the zero-shot pass
        then also gives CCI its tokens, one pass fewer per batch. Both must equal the separate calls."""
        raise NotImplementedError(f"{type(self).__name__} does not fuse the token pass (encode_images_with_tokens)")

    def input_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Optional. (B, 3, H, W) -> (B, N, C) patch tokens as the first block receives them (after position
        embeddings and the pre-norm, where the tower has one), raster order, without prefix tokens. What
        ``--cci-layer embed`` clusters: the input-level choice of the only public CCI code."""
        raise NotImplementedError(f"{type(self).__name__} does not give input-level tokens (input_tokens)")

    def encode_images_without(
        self, pixels: torch.Tensor, drop: torch.Tensor, *, allow_empty: bool = False
    ) -> torch.Tensor:
        """(B, D) image embeddings with every patch where ``drop[b, n]`` is True removed from attention in every
        layer and from pooling; ``drop`` is a (B, N) bool tensor and an all-False row equals ``encode_images``.
        (B, K, N) -> (B, K, D) only when ``supports_pattern_batches``; ``allow_empty=True`` only when
        ``can_remove_all_patches``. Removal, not pixel greying: see docs/design.md section 7."""
        raise NotImplementedError(f"{type(self).__name__} has no attribution capability (encode_images_without)")

    def attention_trace(self, pixels: torch.Tensor) -> Any:
        """(B, 3, H, W) -> a ``covar_harness.attribution.attention_trace.Trace``: ONE differentiable forward of a
        ViT tower keeping in the autograd graph the embedding (as :meth:`encode_images` gives it), every block's
        attention probabilities (B, heads, T, T), the last block's input tokens and the attention that reads the
        embedding out. The gradient and attention baselines (``gradcam``, ``rollout``, ``chefer``,
        ``grad-eclip``) need it; without it they say so and skip the model. An instance whose model cannot trace
        (a convolutional tower) sets it to None. Must not run under ``inference_mode``."""
        raise NotImplementedError(f"{type(self).__name__} has no attention trace")


class AdapterContractError(RuntimeError):
    """An adapter returned something its contract does not allow (wrong shape, not a tensor). One line."""


REQUIRED_MEMBERS = {
    "name": "attribute `name: str`",
    "preprocess": "method `preprocess(image) -> Tensor[3, H, W]`",
    "encode_images": "method `encode_images(pixels) -> Tensor[B, D]`",
    "encode_texts": "method `encode_texts(texts) -> Tensor[T, D]`",
}
ATTRIBUTION_MEMBERS = ("patch_grid", "patch_tokens", "encode_images_without")


def implements(obj: Any, member: str) -> bool:
    """Whether ``obj`` really has ``member``: present, not None, and not :class:`BaseAdapter`'s placeholder.
    Why: a subclass inherits every declaration, so presence alone says nothing."""
    value = getattr(obj, member, None)
    if value is None:
        return False
    placeholder = BaseAdapter.__dict__.get(member)
    return not (callable(placeholder) and getattr(value, "__func__", None) is placeholder)


def missing_members(obj: Any) -> list[str]:
    """What ``obj`` lacks to be a ModelAdapter, one readable item per member."""
    out = []
    for member, what in REQUIRED_MEMBERS.items():
        value = getattr(obj, member, None)
        if member == "name":
            ok = isinstance(value, str)
        else:
            ok = implements(obj, member) and callable(value)
        if not ok:
            out.append(what)
    return out


def adapter_name(obj: Any) -> str:
    """The adapter's ``name`` for messages, or its class name when it has none."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else type(obj).__name__


def adapter_family(obj: Any, fallback: str) -> str:
    """The adapter's ``family`` for the result's ``model.family``, or ``fallback`` (the spec's scheme) when it sets
    none. Why a function: ``BaseAdapter`` declares ``family`` without a value, so both kinds of adapter read alike."""
    family = getattr(obj, "family", None)
    return family if isinstance(family, str) and family else fallback


def attribution_support(obj: Any) -> tuple[bool, str]:
    """(supported, reason). An adapter may say no explicitly with ``supports_attribution = False``."""
    if getattr(obj, "supports_attribution", None) is False:
        reason = getattr(obj, "attribution_unsupported_reason", "")
        return False, reason if isinstance(reason, str) and reason else "the adapter declares no attribution support"
    lacking = [m for m in ATTRIBUTION_MEMBERS if not implements(obj, m)]
    if lacking:
        return False, f"adapter lacks {', '.join(lacking)}"
    return True, ""


def has_attention_trace(obj: Any) -> bool:
    """Whether ``attention_trace`` is really there (not the base class's placeholder, not set to None)."""
    return implements(obj, "attention_trace") and callable(getattr(obj, "attention_trace", None))


def fuses_tokens(obj: Any, layer: int | str | None) -> bool:
    """Whether the zero-shot forward can also give the patch tokens of block ``layer`` (an int index)."""
    return isinstance(layer, int) and not isinstance(layer, bool) and implements(obj, "encode_images_with_tokens")


def supports_pattern_batches(obj: Any) -> bool:
    """Whether ``encode_images_without`` takes (B, K, N) drop patterns: only when the adapter declares it."""
    return getattr(obj, "supports_pattern_batches", False) is True


def can_remove_all_patches(obj: Any) -> bool:
    """Whether ``encode_images_without(..., allow_empty=True)`` may drop every patch: only when declared."""
    return getattr(obj, "can_remove_all_patches", False) is True


def patch_grid(obj: Any) -> tuple[int, int]:
    """The adapter's ``patch_grid`` as (rows, cols) of positive ints; :class:`AdapterContractError` otherwise.
    Why: a malformed grid would otherwise surface as a reshape error deep inside CCI."""
    grid = getattr(obj, "patch_grid", None)
    try:
        rows, cols = (int(g) for g in grid)  # type: ignore[union-attr]
        ok = rows >= 1 and cols >= 1 and (rows, cols) == tuple(grid)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AdapterContractError(
            f"adapter {adapter_name(obj)!r}: patch_grid must be (rows, cols) of positive integers, got {grid!r}"
        )
    return rows, cols


def n_blocks(obj: Any) -> int | None:
    """The adapter's ``n_blocks`` when it is a positive int (not a bool), else None (not told)."""
    value = getattr(obj, "n_blocks", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def takes_layer(obj: Any) -> bool:
    """Whether ``patch_tokens`` accepts ``layer=`` (by name or through ``**kwargs``). Adapters written before the
    argument existed give the last block only. The policy is :func:`catalog.plugin_manager.keywords_of`."""

    method = getattr(obj, "patch_tokens", None)
    # lazy: `import covar_harness` stays light (the plugin manager reads entry-point metadata)
    from covar_harness.catalog.plugin_manager import keywords_of

    return method is not None and keywords_of(method).accepts("layer")


DEFAULT_LOGIT_SCALE = 100.0  # CLIP's learned logit scale at its clamp: for models that expose none
DEFAULT_LOGIT_SCALE_SOURCE = "default: CLIP's 100, the model exposes no logit scale"


def logit_scale(obj: Any) -> tuple[float, str]:
    """(T, where it comes from): the temperature the model itself turns cosines into class logits with, its
    learned ``logit_scale`` when its module exposes one (open_clip and transformers CLIP / SigLIP keep it as a
    log), else ``DEFAULT_LOGIT_SCALE``. A softmax at another T is sharper or flatter than the model's own."""
    scale = getattr(getattr(obj, "model", None), "logit_scale", None)
    try:
        value = float(scale.detach().float().exp())  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return DEFAULT_LOGIT_SCALE, DEFAULT_LOGIT_SCALE_SOURCE
    if not math.isfinite(value) or value <= 0:
        return DEFAULT_LOGIT_SCALE, DEFAULT_LOGIT_SCALE_SOURCE
    return value, "the model's logit scale"


@dataclass(frozen=True)
class Capabilities:
    """Everything optional an adapter offers, read once through the functions above (never raises)."""

    attribution: bool  # the three attribution members exist and the adapter does not say no
    reason: str  # why not, when ``attribution`` is False
    patch_grid: tuple[int, int] | None  # None when absent or malformed (``patch_grid()`` says which)
    n_blocks: int | None
    takes_layer: bool
    pattern_batches: bool
    remove_all_patches: bool
    attention_trace: bool = False  # ``attention_trace`` exists: the gradient / attention baselines can run


def capabilities(obj: Any) -> Capabilities:
    """The adapter's optional members as one typed value, the same for a :class:`BaseAdapter` subclass and a
    duck-typed object (a missing member reads as the base class's default)."""
    supported, reason = attribution_support(obj)
    try:
        grid: tuple[int, int] | None = patch_grid(obj)
    except AdapterContractError:
        grid = None
    return Capabilities(
        supported,
        reason,
        grid,
        n_blocks(obj),
        takes_layer(obj) if supported else False,
        supports_pattern_batches(obj),
        can_remove_all_patches(obj),
        has_attention_trace(obj),
    )


def check_shape(obj: Any, method: str, value: Any, expected: tuple[int | None, ...]) -> None:
    """Raise :class:`AdapterContractError` unless ``value`` is a tensor-like of shape ``expected`` (None = any
    size on that axis). Why: a wrong shape would otherwise broadcast silently or crash deep in the harness."""
    shape = getattr(value, "shape", None)
    want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    if shape is None:
        raise AdapterContractError(
            f"adapter {adapter_name(obj)!r}: {method} returned a {type(value).__name__}, "
            f"expected a tensor of shape {want}"
        )
    got = tuple(int(x) for x in shape)
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise AdapterContractError(f"adapter {adapter_name(obj)!r}: {method} returned shape {got}, expected {want}")


def check_finite(obj: Any, method: str, values: Any, name: Callable[[int], str], what: str = "row") -> None:
    """Raise :class:`AdapterContractError` when a model output holds NaN or infinity, naming the output and the
    first ``what`` (``name(row)``) it hit. Why: a NaN embedding scores as some class (``topk`` of NaN picks one),
    so a broken model would be reported as a plausible accuracy; the pair fails with one line instead."""
    finite = values.detach().isfinite().reshape(len(values), -1).all(dim=1)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten().tolist()
    raise AdapterContractError(
        f"adapter {adapter_name(obj)!r}: {method} returned NaN or inf for {len(bad)} of {len(values)} {what}(s), "
        f"first {name(bad[0])!r}; the pair is not scored"
    )
