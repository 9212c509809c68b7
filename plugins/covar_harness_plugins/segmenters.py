"""Built-in plugin: the ``dataset`` and ``groundedsam`` segmenters (docs/design.md section 8; contract in
``covar_harness.masks.segmenter``).

``dataset`` returns the masks a task ships. ``groundedsam`` is GroundedSAM rebuilt from transformers: Grounding
DINO finds the boxes for the class-name prompt, SAM segments inside each, and the object mask is the union of
those masks (every instance of the class is foreground; ``multi_box=False`` keeps the best box only). ``auto``
is not a segmenter but a rule of the caller (``covar_harness.masks.segmenter.choose_segmenter``). torch and
transformers are imported only when masks are computed, so plugin discovery stays light.

Defaults follow the Grounded-Segment-Anything demo, the usual meaning of "GroundedSAM" (the paper names no
variant or thresholds, research/paper-notes.md section 7): Grounding DINO Swin-T
(``IDEA-Research/grounding-dino-tiny``), SAM ViT-H (``facebook/sam-vit-huge``), box / text thresholds 0.3 / 0.25,
one mask per box (``multimask_output=False``), the union over boxes. The real checkpoints load by hub id, which
the offline test machines cannot reach: the tests run the same code on tiny random checkpoints saved locally.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.common.console import safe
from covar_harness.common.safe_files import read_json
from covar_harness.masks.segmenter import MaskCache, default_mask_cache_dir, grounding_prompt, image_fingerprint
from covar_harness.models.specs import unreachable_error

if TYPE_CHECKING:
    from PIL import Image

    from covar_harness.data.samples import SampleSet

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM = "facebook/sam-vit-huge"
CACHE_VERSION = 2  # bump when the mask computation changes, so old cache entries stop matching (2: union of boxes)


class DatasetSegmenter:
    """The task's own masks (``SampleSet.open_mask``), resized to the image when a dataset stores them at
    another resolution (nearest, so a binary mask stays binary). No settings: the class is the factory, so an
    unexpected setting is rejected by ``choose_segmenter`` rather than ignored. A mask that cannot be read
    (missing, corrupt, too large) is that sample's "no mask", counted in ``describe()``, not the end of the
    task's diagnosis."""

    name = "dataset"

    def __init__(self) -> None:
        self.n_unreadable = 0
        self.first_error: str | None = None

    def masks(self, samples: SampleSet, indices: list[int], prompts: list[str]) -> list[Image.Image | None]:
        return [self._read(samples, i) for i in indices]

    def _read(self, samples: SampleSet, index: int) -> Image.Image | None:
        try:
            return self._mask(samples, index)
        except Exception as exc:  # noqa: BLE001 - one bad file must not switch the diagnosis off
            self.n_unreadable += 1
            if self.first_error is None:
                first = (str(exc).strip().splitlines() or [""])[0]
                self.first_error = safe(f"{samples.samples[index].id}: {type(exc).__name__}: {first}")
            return None

    @staticmethod
    def _mask(samples: SampleSet, index: int) -> Image.Image | None:
        mask = samples.open_mask(index)
        if mask is None:
            return None
        size = samples.open_image(index).size
        return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if getattr(self, "n_unreadable", 0):
            out.update(n_unreadable_masks=self.n_unreadable, first_unreadable=self.first_error)
        return out


class GroundedSAMSegmenter:
    """Grounding DINO boxes from the prompt, then SAM masks inside them, united; masks cached on disk.

    Settings (``--segmenter-opt key=value``): ``detector`` / ``sam`` (hub ids or local ``save_pretrained``
    folders), ``box_threshold`` (a box counts when its best token probability exceeds it), ``text_threshold``
    (and at least one token of the class name itself, not the special tokens or punctuation, exceeds this one:
    the box is about the prompt), ``multi_box`` (default True: the mask is the union of the SAM masks of every
    box that passes both thresholds, so every instance of the class is foreground; False: the best box only),
    ``nms_iou`` (default 0.8, as Grounded-SAM's demo: of boxes overlapping more than this IoU only the best-scoring
    one is kept, so ``n_boxes`` counts instances, not DINO's duplicate proposals; 1.0 keeps every box),
    ``prompts`` (a JSON file mapping class names to curated prompts; otherwise a WordNet-style name's first
    synonym is the prompt), ``device`` (default: cuda when available), ``batch_size`` (images per detector /
    SAM call), ``cache_dir`` (default ``~/.cache/covar-harness/masks`` or ``COVAR_HARNESS_MASK_CACHE``),
    ``cache`` (False: neither read nor write). The cache key covers the image pixels, the normalised prompt,
    both model ids (plus file sizes and times for local folders), both thresholds, ``multi_box``, ``nms_iou`` and a
    version number. An object whose boxes all get an empty SAM mask is reported as not found (None), like a missing box.
    Each mask's number of boxes is kept (``last_info`` per call, a summary in ``describe()``).
    """

    name = "groundedsam"
    prompted = True  # segments what the prompt names: it can find the predicted class too (distractors.py)

    def __init__(
        self,
        *,
        detector: str = DEFAULT_DETECTOR,
        sam: str = DEFAULT_SAM,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        device: str | None = None,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        multi_box: bool = True,
        prompts: str | Path | None = None,
        nms_iou: float = 0.8,
    ):
        _check_arguments(batch_size, box_threshold, text_threshold, multi_box, cache)
        if isinstance(nms_iou, bool) or not isinstance(nms_iou, (int, float)) or not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be a number in (0, 1], got {nms_iou!r}")
        self.nms_iou = float(nms_iou)
        self.detector_id, self.sam_id = str(detector), str(sam)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.device, self.batch_size, self.multi_box = device, int(batch_size), bool(multi_box)
        self.prompts_file: str | None = None if prompts is None else str(prompts)
        self.curated: dict[str, str] | None = None if prompts is None else _curated(prompts)
        self.cache = MaskCache(default_mask_cache_dir(cache_dir)) if cache else None
        self._models: dict[str, Any] | None = None
        self._identity = {"detector": _model_identity(self.detector_id), "sam": _model_identity(self.sam_id)}
        self.last_info: list[dict[str, Any]] = []  # per mask of the last masks() call: {"n_boxes": n}
        self.box_counts: dict[int, int] = {}  # n_boxes -> how many masks had that many (every call so far)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "detector": self.detector_id,
            "sam": self.sam_id,
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "multi_box": self.multi_box,
            "nms_iou": self.nms_iou,
            "cache_version": CACHE_VERSION,
            "n_boxes": _box_summary(self.box_counts),
        }
        if self.prompts_file is not None:
            out["prompts"] = self.prompts_file
        return out

    # ---- the contract ----------------------------------------------------------------------------------
    def masks(self, samples: SampleSet, indices: list[int], prompts: list[str]) -> list[Image.Image | None]:
        if len(indices) != len(prompts):
            raise ValueError(f"{len(indices)} indices but {len(prompts)} prompts")
        return self.segment((samples.open_image(i), p) for i, p in zip(indices, prompts))

    def segment(self, items: Iterable[tuple[Image.Image, str]]) -> list[Image.Image | None]:
        """Masks for (image, prompt) pairs: cache hits directly, misses gathered into full model batches.

        Images are consumed one at a time and only the pending misses are held, so memory stays bounded by
        ``batch_size`` whatever the number of items. ``last_info`` holds each mask's ``n_boxes`` afterwards.
        """
        out: list[Image.Image | None] = []
        info: list[dict[str, Any]] = []
        pending: list[tuple[int, str, Image.Image, str]] = []  # (position, cache key, image, prompt)
        for position, (image, prompt) in enumerate(items):
            prompt = grounding_prompt(prompt, self.curated)
            key = self._key(image, prompt)
            hit = self.cache.get(key) if self.cache is not None else MaskCache.MISSING
            out.append(None if hit is MaskCache.MISSING else cast("Image.Image | None", hit))
            info.append({"n_boxes": _cached_boxes(hit)})
            if hit is MaskCache.MISSING:
                pending.append((position, key, image, prompt))
            if len(pending) == self.batch_size:
                self._flush(pending, out, info)
        self._flush(pending, out, info)
        self.last_info = info
        for entry in info:
            self.box_counts[entry["n_boxes"]] = self.box_counts.get(entry["n_boxes"], 0) + 1
        return out

    def _flush(self, pending: list[tuple[int, str, Image.Image, str]], out: list, info: list) -> None:
        """Compute the pending misses in one batch, store them in ``out`` and the cache, empty ``pending``."""
        if not pending:
            return
        fresh = self._compute([image for _, _, image, _ in pending], [prompt for *_, prompt in pending])
        for (position, key, _, _), (mask, n_boxes) in zip(pending, fresh):
            out[position], info[position] = mask, {"n_boxes": n_boxes}
            if self.cache is not None:
                self.cache.put(key, mask, {"n_boxes": n_boxes})
        pending.clear()

    # ---- cache key -------------------------------------------------------------------------------------
    def _key(self, image: Image.Image, prompt: str) -> str:
        return MaskCache.key(
            version=CACHE_VERSION,
            image=image_fingerprint(image),
            prompt=prompt,
            **self._identity,
            box_threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            multi_box=self.multi_box,
            nms_iou=self.nms_iou,
        )

    # ---- models ----------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        """Processors and models, loaded on the first cache miss (a fully cached run never loads them)."""
        if self._models is None:
            try:
                self._models = self._build()
            except Exception as exc:
                unreachable = unreachable_error(f"segmenter groundedsam ({self.detector_id}, {self.sam_id})", exc)
                if unreachable is not None:  # one line with the way to fail fast
                    raise unreachable from exc
                raise
        return self._models

    def _build(self) -> dict[str, Any]:
        import torch  # lazy: the plugin registers its names without torch

        # lazy: the backend loads with the model, not at plugin discovery
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return {
            "device": device,
            "det_processor": AutoProcessor.from_pretrained(self.detector_id),
            "detector": AutoModelForZeroShotObjectDetection.from_pretrained(self.detector_id).to(device).eval(),
            "sam_processor": AutoProcessor.from_pretrained(self.sam_id),
            "sam": SamModel.from_pretrained(self.sam_id).to(device).eval(),  # type: ignore[arg-type]  # transformers stub
        }

    def _compute(self, images: list[Image.Image], prompts: list[str]) -> list[tuple[Image.Image | None, int]]:
        """(mask, number of boxes united into it) per image; (None, 0) when no box passes or SAM finds nothing."""
        boxes = self._detect_all(images, prompts)
        if not self.multi_box:
            boxes = [found[:1] for found in boxes]
        with_box = [j for j, found in enumerate(boxes) if found]
        out: list[tuple[Image.Image | None, int]] = [(None, 0)] * len(images)
        if with_box:
            masks = self._segment_boxes([images[j] for j in with_box], [boxes[j] for j in with_box])
            for j, mask in zip(with_box, masks):
                out[j] = (mask, len(boxes[j]) if mask is not None else 0)
        return out

    def _detect(self, images: list[Image.Image], prompts: list[str]) -> list[list[float] | None]:
        """Per image the best box [x0, y0, x1, y1] in pixels, or None."""
        return [found[0] if found else None for found in self._detect_all(images, prompts)]

    def _detect_all(self, images: list[Image.Image], prompts: list[str]) -> list[list[list[float]]]:
        """One Grounding DINO call for the batch; per image every box that passes both thresholds, in pixels
        [x0, y0, x1, y1], best score first (empty when none does)."""
        import torch  # lazy: the plugin registers its names without torch

        m = self._load()
        processor = m["det_processor"]
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True).to(m["device"])
        with torch.inference_mode():
            outputs = m["detector"](**inputs)
        words = _word_token_mask(inputs["input_ids"], processor.tokenizer)
        return [
            self._passing_boxes(
                outputs.logits[b].float().sigmoid(), outputs.pred_boxes[b].float(), words[b], images[b].size
            )
            for b in range(len(images))
        ]

    def _passing_boxes(self, probs, boxes, words, size: tuple[int, int]) -> list[list[float]]:
        """probs (Q, L) token probabilities, boxes (Q, 4) normalised cx, cy, w, h; size (W, H). The boxes that
        pass both thresholds and are not empty, best score first."""
        import torch  # lazy: the plugin registers its names without torch
        from torchvision.ops import nms  # lazy: the plugin registers its names without torch

        scores = probs.max(dim=-1).values
        word_probs = probs[:, : words.shape[0]][:, words]
        word_scores = word_probs.max(dim=-1).values if word_probs.shape[1] else torch.zeros_like(scores)
        corners = _corners(boxes, size)
        valid = (scores > self.box_threshold) & (word_scores > self.text_threshold)
        valid &= (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        kept = torch.nonzero(valid).flatten()
        # duplicates of one instance (DINO proposes several boxes per object) collapse to the best-scoring one, so
        # n_boxes counts instances; 1.0 keeps every box
        keep = kept[nms(corners[kept].float(), scores[kept].float(), self.nms_iou)] if self.nms_iou < 1.0 else kept
        order = sorted((int(q) for q in keep), key=lambda q: (-float(scores[q]), q))
        return [[float(v) for v in corners[q]] for q in order]

    def _segment_boxes(self, images: list[Image.Image], boxes: list[list[list[float]]]) -> list[Image.Image | None]:
        """One SAM call for the batch, every box of an image as one prompt each; per image the union of its
        boxes' masks at the original image size (None when empty). Images with fewer boxes than the most are
        padded with their own best box, which adds nothing to the union."""
        import torch  # lazy: the plugin registers its names without torch

        m = self._load()
        processor = m["sam_processor"]
        most = max(len(found) for found in boxes)
        padded = [found + [found[0]] * (most - len(found)) for found in boxes]
        inputs = processor(images=images, input_boxes=padded, return_tensors="pt")
        with torch.inference_mode():
            outputs = m["sam"](
                pixel_values=inputs["pixel_values"].to(m["device"]),
                input_boxes=inputs["input_boxes"].to(m["device"]),
                multimask_output=False,
            )
        masks = processor.image_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )
        out: list[Image.Image | None] = []
        for mask, found in zip(masks, boxes):
            binary = np.asarray(mask[: len(found), 0].numpy(), dtype=bool).any(axis=0)
            out.append(Image.fromarray(binary.astype(np.uint8) * 255, mode="L") if binary.any() else None)
        return out


def _check_arguments(batch_size: Any, box_threshold: Any, text_threshold: Any, multi_box: Any, cache: Any) -> None:
    """One-line ValueError for settings GroundedSAM cannot use (``--segmenter-opt`` turns them into exit 2)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    for name, value in (("multi_box", multi_box), ("cache", cache)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")


def _curated(path: str | Path) -> dict[str, str]:
    """A JSON object class name -> prompt (the ``prompts`` setting), read once, under 1 MiB."""
    try:
        value = read_json(Path(path).expanduser(), 1 << 20)
    except (OSError, ValueError) as exc:
        raise ValueError(f"prompts file {str(path)!r}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"prompts file {str(path)!r} must be a JSON object of class name -> prompt text")
    return value


def _cached_boxes(hit: Any) -> int:
    """n_boxes of a cache entry: 0 for "no object" (None) and a miss, else what was stored with the mask."""
    if hit is None or hit is MaskCache.MISSING:
        return 0
    n = MaskCache.info_of(hit).get("n_boxes", 1)
    return n if isinstance(n, int) else 1


def _box_summary(counts: dict[int, int]) -> dict[str, Any]:
    """Masks computed or read so far by number of boxes: how many, mean and max boxes, how many from 2+."""
    found = {n: c for n, c in counts.items() if n > 0}
    total = sum(found.values())
    return {
        "n_masks": total,
        "mean": round(sum(n * c for n, c in found.items()) / total, 4) if total else None,
        "max": max(found) if found else 0,
        "n_multi": sum(c for n, c in found.items() if n > 1),
    }


def _corners(boxes, size: tuple[int, int]):
    """Normalised (cx, cy, w, h) -> pixel (x0, y0, x1, y1), clipped to the image of ``size`` = (W, H)."""
    import torch  # lazy: the plugin registers its names without torch

    width, height = size
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], dim=-1
    )
    limit = torch.tensor([width, height, width, height], dtype=corners.dtype, device=corners.device)
    return torch.minimum(corners.clamp(min=0), limit)


def _word_token_mask(input_ids, tokenizer):
    """(B, L) bool: tokens of the class name itself, not special tokens, padding, the '.' separators or any
    other punctuation (a box must be about a word of the name, not about "(" or "'")."""

    import torch  # lazy: the plugin registers its names without torch

    skip = set(tokenizer.all_special_ids) | set(tokenizer(".", add_special_tokens=False)["input_ids"])
    for token_id in {int(t) for t in input_ids.flatten().tolist()} - skip:
        token = str(tokenizer.convert_ids_to_tokens(token_id) or "").removeprefix("##")
        if token and all(ch in string.punctuation for ch in token):
            skip.add(token_id)
    return ~torch.isin(input_ids, torch.tensor(sorted(skip), dtype=input_ids.dtype, device=input_ids.device))


def _model_identity(model_id: str) -> Any:
    """The id for the cache key; a local folder adds its files' sizes and modification times, so re-saving
    different weights under the same path does not serve stale masks."""
    path = Path(model_id).expanduser()
    if not path.is_dir():
        return model_id
    files: Sequence[Path] = sorted(p for p in path.rglob("*") if p.is_file())
    return [str(path.resolve()), [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


@hookimpl
def register_segmenters(register):
    register("dataset", DatasetSegmenter, description="foreground masks shipped with the task (metadata 'mask')")
    register(
        "groundedsam",
        GroundedSAMSegmenter,
        description=f"Grounding DINO boxes for the class name + union of their SAM masks ({DEFAULT_DETECTOR}, "
        f"{DEFAULT_SAM}; thresholds 0.3/0.25; cached; settings: --segmenter-opt key=value)",
    )
