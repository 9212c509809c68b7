"""Foreground masks for the diagnosis (docs/design.md sections 7.5, 8): the segmenter contract and the helpers
every segmenter and its caller share.

A segmenter is anything with a ``name`` and a ``masks`` method (the :class:`Segmenter` protocol); plugins
register factories for them through ``register_segmenters``. The caller turns a mask into the patch-grid
fractions that CCI's ``fg_fraction`` needs in two steps, because the model never sees the original frame:

1. :func:`geometric_like` moves the mask into the model-input frame with the model's own resize / centre crop,
2. :func:`mask_to_patch_grid` averages it per patch: the fraction of each patch's pixels that are foreground.

Those two live in ``mask_geometry``; :class:`PatchMasks` (the masks of a task on the model's patch grid, what
the diagnosis reads) lives in ``patch_masks``. Also here: :func:`choose_segmenter` (the ``--segmenter auto``
rule), the ``--segmenter-opt`` checks, :class:`MaskCache` (atomic on-disk mask cache keyed by content) and
:func:`grounding_prompt`. Only numpy and PIL are imported at module import.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from covar_harness.catalog.plugin_manager import keywords_of
from covar_harness.catalog.registry import UsageError
from covar_harness.common.flags import parse_value
from covar_harness.common.safe_files import atomic_write

if TYPE_CHECKING:
    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.data.samples import SampleSet

AUTO = "auto"
DEFAULT_MASK_CACHE = "~/.cache/covar-harness/masks"
MASK_CACHE_ENV = "COVAR_HARNESS_MASK_CACHE"


@runtime_checkable
class Segmenter(Protocol):
    """Foreground-mask provider.

    ``masks`` returns one entry per index: a mode "L" image the size of ``samples.open_image(i)``, white (255)
    = object, grey values allowed for soft masks; or None when no object was found (the caller counts those).
    ``prompts[j]`` is the text describing the object of ``indices[j]`` (the label's class name); segmenters
    that do not need text ignore it. Implementations may also offer ``describe() -> dict`` (their settings,
    recorded in results), and say ``prompted = True`` when the mask follows the prompt (GroundedSAM): only then
    can ``--distractors`` ask for the predicted class's object.
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
        out[key] = parse_value(value.strip())
    return out


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
