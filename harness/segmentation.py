"""Foreground masks for the diagnosis (docs/design.md sections 7.5, 8): the segmenter contract and the helpers
every segmenter and its caller share.

A segmenter is anything with a ``name`` and a ``masks`` method (the :class:`Segmenter` protocol); plugins
register factories for them through ``register_segmenters``. The caller turns a mask into the patch-grid
fractions that CCI's ``fg_fraction`` needs in two steps, because the model never sees the original frame:

1. :func:`geometric_like` moves the mask into the model-input frame with the model's own resize / centre crop,
2. :func:`mask_to_patch_grid` averages it per patch: the fraction of each patch's pixels that are foreground.

Also here: :func:`choose_segmenter` (the ``--segmenter auto`` rule), :class:`MaskCache` (atomic on-disk mask
cache keyed by content) and :func:`grounding_prompt`. Only numpy and PIL are imported at module import.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from covar_harness.registry import UsageError

if TYPE_CHECKING:
    from covar_harness.data import SampleSet
    from covar_harness.plugin_manager import Catalog

AUTO = "auto"
DEFAULT_MASK_CACHE = "~/.cache/covar-harness/masks"
MASK_CACHE_ENV = "COVAR_HARNESS_MASK_CACHE"


log = logging.getLogger(__name__)


@runtime_checkable
class Segmenter(Protocol):
    """Foreground-mask provider.

    ``masks`` returns one entry per index: a mode "L" image the size of ``samples.open_image(i)``, white (255)
    = object, grey values allowed for soft masks; or None when no object was found (the caller counts those).
    ``prompts[j]`` is the text describing the object of ``indices[j]`` (the label's class name); segmenters
    that do not need text ignore it. Implementations may also offer ``describe() -> dict`` (their settings,
    recorded in results).
    """

    name: str

    def masks(self, samples: SampleSet, indices: list[int], prompts: list[str]) -> list[Image.Image | None]: ...


# ---- choosing a segmenter --------------------------------------------------------------------------------
def choose_segmenter(
    name: str, samples: SampleSet, catalog: Catalog, settings: dict[str, Any] | None = None
) -> Segmenter:
    """Build the segmenter for a task: ``auto`` = the dataset's masks when it has any, else ``groundedsam``.

    ``settings`` are keyword arguments for the factory. Under ``auto`` they configure the GroundedSAM fallback,
    so they are not passed to ``dataset`` (which takes none); naming a segmenter explicitly passes them and an
    unknown key is a usage error. ``dataset`` on a task without masks is a usage error too: every sample would
    silently come back without a mask.
    """
    settings = dict(settings or {})
    if name == AUTO:
        if samples.has_masks:
            name, settings = "dataset", {}
        else:
            name = "groundedsam"
    elif name == "dataset" and not samples.has_masks:
        raise UsageError(
            "segmenter 'dataset': this task ships no foreground masks; use --segmenter auto or groundedsam"
        )
    factory = catalog.segmenters.get(name)
    _check_settings(name, factory, settings)
    return factory(**settings)


def _check_settings(name: str, factory: Callable[..., Any], settings: dict[str, Any]) -> None:
    """Reject setting names the factory does not take, listing the ones it does (a typo must not be ignored).
    What a factory takes is read with the harness's one signature policy (``plugin_manager.keywords_of``)."""
    import difflib

    from covar_harness.plugin_manager import keywords_of

    accepts = keywords_of(factory)
    unknown = sorted(k for k in settings if not accepts.accepts(k))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(accepts.names), n=1)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise UsageError(
            f"segmenter {name!r} has no setting {', '.join(map(repr, unknown))}{hint}; "
            f"settings: {', '.join(sorted(accepts.names)) or '(none)'}"
        )


def segmenter_for_settings(name: str) -> str | None:
    """The segmenter ``--segmenter-opt`` settings configure: ``auto`` configures its GroundedSAM fallback,
    ``none`` has no settings (None)."""
    if name == "none":
        return None
    return "groundedsam" if name == AUTO else name


def check_segmenter_settings(name: str, catalog: Catalog, settings: dict[str, Any]) -> None:
    """``--segmenter-opt`` checked before anything loads: unknown names (with close matches) and, for
    ``groundedsam``, values it refuses, are usage errors."""
    if not settings:
        return
    target = segmenter_for_settings(name)
    if target is None:
        raise UsageError("--segmenter-opt needs a segmenter (--segmenter none takes no settings)")
    factory = catalog.segmenters.get(target)
    _check_settings(target, factory, settings)
    if target == "groundedsam":  # building it is cheap (no model loads until the first mask)
        try:
            factory(**settings)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--segmenter-opt: {exc}") from None


def parse_segmenter_opts(items: Sequence[str] | None) -> dict[str, Any]:
    """``--segmenter-opt key=value`` (repeatable) -> settings; values read as int, float, bool, else str."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"--segmenter-opt takes key=value (e.g. box_threshold=0.35), got {item!r}")
        out[key] = _parse_value(value.strip())
    return out


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    return text


def label_prompts(samples: SampleSet, indices: Sequence[int]) -> list[str]:
    """The default prompt of each sample: its label's class name (or the label number without class names)."""
    names = samples.classnames
    labels = [samples.samples[i].label for i in indices]
    return [names[y] if names is not None else str(y) for y in labels]


def grounding_prompt(text: str, curated: dict[str, str] | None = None) -> str:
    """Grounding DINO's text format: lowercase, single spaces, ending with '.' (it separates phrases by dots).

    A curated name for ``text`` (``curated``, looked up by the name as given) wins; else a WordNet-style list of
    synonyms keeps its first one ("tench, Tinca tinca" -> "tench."): the detector reads every word of the
    prompt, and a Latin binomial or a second synonym only dilutes it.
    """
    if curated and text in curated:
        text = curated[text]
    text = text.split(",")[0]
    text = " ".join(text.replace("_", " ").split()).lower().rstrip(".").strip()
    return text + "."


# ---- masks in the model-input frame ------------------------------------------------------------------------
_GEOMETRIC = re.compile(r"Resize|Crop|Pad")


def as_fraction_image(mask: Image.Image) -> Image.Image:
    """Mode "F" with values in [0, 1]: "F" masks are taken as fractions already, other modes are 0..255."""
    if mask.mode == "F":
        return mask
    arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return Image.fromarray(arr, mode="F")


def geometric_like(
    preprocess: Callable, mask: Image.Image, input_size_hw: tuple[int, int] | None = None
) -> Image.Image:
    """The mask moved into the model-input frame as ``preprocess`` moves the image; mode "F", values in [0, 1].

    Three tiers, most exact first:

    1. torchvision ``Compose`` (open_clip's transforms): only its geometric steps (class names with Resize, Crop
       or Pad: Resize, CenterCrop, open_clip's ResizeKeepRatio / CenterCropOrPad) are applied, each copied with
       its interpolation switched to BOX, so a downscaled pixel holds the area fraction of foreground under it
       (exact for integer factors) and the crop/resize geometry is the transform's own. Colour conversion,
       ToTensor and Normalize are skipped. Random geometric steps cannot be matched and are an error.
    2. any other callable returning a (3, H, W) array-like (e.g. a Hugging Face image processor wrapped by the
       ``hf:`` adapter): the mask, as a grey RGB image, goes through the whole ``preprocess``; the per-channel
       affine normalisation is undone with a black and a white probe image. This follows any geometry the
       processor applies, with its own interpolation (clipped to [0, 1] against bicubic overshoot).
    3. when that fails (the preprocess is not per-channel affine, or raises): a plain resize of the mask to
       ``input_size_hw`` (the model's input size), which is only right for squash-resizing models; without
       ``input_size_hw`` the mask is returned unchanged.
    """
    fraction = as_fraction_image(mask)
    steps = getattr(preprocess, "transforms", None)
    if isinstance(steps, (list, tuple)):
        return _apply_geometric_steps(steps, fraction)
    probed = _through_preprocess(preprocess, fraction)
    if probed is not None:
        return probed
    if input_size_hw is not None:
        return fraction.resize((input_size_hw[1], input_size_hw[0]), Image.Resampling.BOX)
    return fraction


def _apply_geometric_steps(steps: Sequence[Callable], mask: Image.Image) -> Image.Image:
    for step in steps:
        kind = type(step).__name__
        if not _GEOMETRIC.search(kind):
            continue
        if kind.startswith("Random"):
            raise ValueError(f"cannot replay the random transform {kind} on a mask")
        mask = _box_interpolating(step)(mask)
    return mask


def _box_interpolating(step: Any) -> Any:
    """A copy of a resize-like step that resamples with BOX (area average); other steps are returned as is."""
    current = getattr(step, "interpolation", None)
    if current is None:
        return step
    from torchvision.transforms import InterpolationMode

    step = copy.copy(step)
    step.interpolation = InterpolationMode.BOX if isinstance(current, InterpolationMode) else Image.Resampling.BOX
    return step


def _through_preprocess(preprocess: Callable, mask: Image.Image) -> Image.Image | None:
    """Tier 2 of :func:`geometric_like`; None when the preprocess is unusable that way."""
    grey = Image.fromarray((np.asarray(mask) * 255).round().clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    try:
        ramp, lo, hi = (
            _channel0(preprocess(im)) for im in (grey, *(Image.new("RGB", mask.size, (v,) * 3) for v in (0, 255)))
        )
    except Exception:  # any failure of a foreign preprocess means: use the plain-resize fallback
        return None
    if ramp is None or lo is None or hi is None:
        return None
    black, white = lo.mean(), hi.mean()
    if not np.isfinite(white - black) or abs(white - black) < 1e-6:
        return None
    return Image.fromarray(np.clip((ramp - black) / (white - black), 0.0, 1.0).astype(np.float32), mode="F")


def _channel0(pixels: Any) -> np.ndarray | None:
    if hasattr(pixels, "detach"):
        pixels = pixels.detach().float().cpu().numpy()
    arr = np.asarray(pixels, dtype=np.float32)
    return arr[0] if arr.ndim == 3 else None


def mask_to_patch_grid(mask: Image.Image, image_size_hw: tuple[int, int] | None, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols) float32 in [0, 1]: the fraction of each patch's pixels that are foreground
    (docs/design.md section 7.5).

    ``mask`` must already be in the model-input frame (see :func:`geometric_like`); mode "F" holds fractions,
    other modes 0..255. ``image_size_hw`` is that frame's size: a mask of another size is first area-resampled
    to it; None takes the mask's own size. When the patches tile the frame exactly (the ViT case) each value
    is the exact mean over the patch's pixels; otherwise a BOX resample to the grid approximates it.
    """
    fraction = as_fraction_image(mask)
    if image_size_hw is not None and fraction.size != (image_size_hw[1], image_size_hw[0]):
        fraction = fraction.resize((image_size_hw[1], image_size_hw[0]), Image.Resampling.BOX)
    rows, cols = grid
    arr = np.asarray(fraction, dtype=np.float64)
    height, width = arr.shape
    if height % rows == 0 and width % cols == 0:
        out = arr.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3))
    else:
        out = np.asarray(fraction.resize((cols, rows), Image.Resampling.BOX), dtype=np.float64)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def mask_patch_fractions(
    preprocess: Callable, mask: Image.Image, grid: tuple[int, int], input_size_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Both steps at once: a mask in the original image frame -> patch-grid foreground fractions."""
    return mask_to_patch_grid(geometric_like(preprocess, mask, input_size_hw), input_size_hw, grid)


# ---- caching -----------------------------------------------------------------------------------------------
def image_fingerprint(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: the same picture gives the same key wherever the file lives."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def default_mask_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``COVAR_HARNESS_MASK_CACHE``, else ``~/.cache/covar-harness/masks``."""
    return Path(cache_dir or os.environ.get(MASK_CACHE_ENV) or DEFAULT_MASK_CACHE).expanduser()


class MaskCache:
    """Masks on disk under a content key, written atomically (temp file + rename) so that parallel runs and
    interrupted ones never leave a half-written PNG. "No object found" is cached too (an empty ``.none``
    file), so a second run does not rerun the models to find nothing again."""

    MISSING = object()  # get()'s answer for a key never stored (None means: stored, no mask)
    INFO = "covar_harness"  # PNG text key of the JSON stored beside a mask (e.g. GroundedSAM's n_boxes)

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(**parts: Any) -> str:
        """sha256 over the JSON of ``parts`` (sorted keys): everything the mask depends on."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str) -> Image.Image | None | object:
        """The cached mask, None for a cached "no object", or ``MaskCache.MISSING``; unreadable = missing."""
        if self._path(key, ".none").is_file():
            return None
        path = self._path(key, ".png")
        if not path.is_file():
            return self.MISSING
        try:
            with Image.open(path) as im:
                mask = im.convert("L")
                mask.info = dict(im.info)
                return mask
        except OSError:
            return self.MISSING

    def put(self, key: str, mask: Image.Image | None, info: dict[str, Any] | None = None) -> None:
        """Store ``mask`` (None: "no object"); ``info`` (small JSON) travels in the PNG's text chunk and comes
        back as ``get(key).info[MaskCache.INFO]``."""
        from PIL.PngImagePlugin import PngInfo

        from covar_harness.results import atomic_write

        text = PngInfo()
        if info:
            text.add_text(self.INFO, json.dumps(info, sort_keys=True))
        path = self._path(key, ".png" if mask is not None else ".none")
        atomic_write(
            path,
            lambda fh: mask.convert("L").save(fh, format="PNG", pnginfo=text) if mask is not None else None,
            binary=True,
        )

    @classmethod
    def info_of(cls, mask: Image.Image) -> dict[str, Any]:
        """The ``info`` stored with a cached mask ({} when none, or unreadable)."""
        try:
            value = json.loads(mask.info.get(cls.INFO, "{}"))
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


# ---- per task: masks on the model's patch grid -------------------------------------------------------------
class PatchMasks:
    """Foreground fraction of every patch, per sample, in the model's input frame (what diagnosis reads).

    Prompts are the samples' label class names (the task's own names, which may differ from the dataset's).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        samples: SampleSet,
        classnames: Sequence[str],
        preprocess: Callable,
        grid: tuple[int, int],
    ):
        self.segmenter, self.samples, self.classnames = segmenter, samples, list(classnames)
        self.preprocess, self.grid = preprocess, (int(grid[0]), int(grid[1]))
        self.n_missing = 0
        self.failed: str | None = None  # why the segmenter stopped (e.g. its weights cannot be fetched offline)
        self.info: dict[int, dict[str, Any]] = {}  # per sample index: the segmenter's ``last_info`` entry

    def for_batch(self, indices: Sequence[int]) -> list[np.ndarray | None]:
        """(rows*cols,) float32 per index, raster order; None where the segmenter found no object.

        A segmenter that fails (e.g. GroundedSAM weights unreachable) is not allowed to sink the zero-shot
        and attribution results: it is switched off, and the caller reports why instead of a diagnosis.
        """
        if self.failed is not None:
            return [None] * len(indices)
        prompts = [self.classnames[self.samples.samples[i].label] for i in indices]
        stage = "failed"
        try:
            masks = list(self.segmenter.masks(self.samples, list(indices), prompts))
            if len(masks) != len(indices):
                raise ValueError(f"returned {len(masks)} masks for {len(indices)} images")
            stage = "masks cannot be mapped onto the model's patch grid"
            out = [
                None if m is None else mask_patch_fractions(self.preprocess, m, self.grid).reshape(-1) for m in masks
            ]
        except Exception as exc:  # noqa: BLE001 - any failure of a mask provider means: no diagnosis
            self._fail(stage, exc)
            return [None] * len(indices)
        self.n_missing += sum(m is None for m in masks)
        about = getattr(self.segmenter, "last_info", None)  # optional: per-mask facts (GroundedSAM: n_boxes)
        if isinstance(about, list) and len(about) == len(indices):
            self.info.update({int(i): dict(a) for i, a in zip(indices, about) if isinstance(a, dict)})
        return out

    def sample_info(self, index: int) -> dict[str, Any]:
        """What the segmenter said about one sample's mask (e.g. ``{"n_boxes": 2}``); {} when nothing."""
        return self.info.get(int(index), {})

    def _fail(self, stage: str, exc: Exception) -> None:
        """Switch the masks off for this task with one line saying why (untrusted text made inert)."""
        from covar_harness.console import safe

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        name = safe(getattr(self.segmenter, "name", type(self.segmenter).__name__))
        self.failed = safe(f"segmenter {name!r} {stage}: {type(exc).__name__}: {first}")
        log.warning("%s; diagnosis skipped for this task", self.failed)

    def describe(self) -> dict[str, Any]:
        about = self.segmenter.describe() if hasattr(self.segmenter, "describe") else {"name": self.segmenter.name}
        return {**about, "n_without_mask": self.n_missing}
