"""Built-in plugin: the ``dataset`` and ``groundedsam`` segmenters (docs/design.md section 8; contract in
``covar_harness.segmentation``).

``dataset`` returns the masks a task ships. ``groundedsam`` is GroundedSAM rebuilt from transformers: Grounding
DINO finds the best box for the class-name prompt, SAM segments inside it. ``auto`` is not a segmenter but a
rule of the caller (``covar_harness.segmentation.choose_segmenter``). torch and transformers are imported only
when masks are computed, so plugin discovery stays light.

Defaults follow the Grounded-Segment-Anything demo, the usual meaning of "GroundedSAM" (the paper names no
variant or thresholds, research/paper-notes.md section 7): Grounding DINO Swin-T
(``IDEA-Research/grounding-dino-tiny``), SAM ViT-H (``facebook/sam-vit-huge``), box / text thresholds 0.3 / 0.25,
one mask per box (``multimask_output=False``). The real checkpoints load by hub id, which the offline test
machines cannot reach: the tests run the same code on tiny random checkpoints saved locally.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.hookspecs import hookimpl
from covar_harness.segmentation import MaskCache, default_mask_cache_dir, grounding_prompt, image_fingerprint

if TYPE_CHECKING:
    from PIL import Image

    from covar_harness.data import SampleSet

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM = "facebook/sam-vit-huge"
CACHE_VERSION = 1  # bump when the mask computation changes, so old cache entries stop matching


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
            from covar_harness.console import safe

            self.n_unreadable += 1
            if self.first_error is None:
                first = (str(exc).strip().splitlines() or [""])[0]
                self.first_error = safe(f"{samples.samples[index].id}: {type(exc).__name__}: {first}")
            return None

    @staticmethod
    def _mask(samples: SampleSet, index: int) -> Image.Image | None:
        from PIL import Image

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
    """Grounding DINO box from the prompt, then SAM mask inside it; masks cached on disk.

    Settings: ``detector`` / ``sam`` (hub ids or local ``save_pretrained`` folders), ``box_threshold`` (a box
    counts when its best token probability exceeds it), ``text_threshold`` (and at least one token of the class
    name itself, not the special tokens or the '.', exceeds this one: the box is about the prompt), ``device``
    (default: cuda when available), ``batch_size`` (images per detector / SAM call), ``cache_dir`` (default
    ``~/.cache/covar-harness/masks`` or ``COVAR_HARNESS_MASK_CACHE``), ``cache`` (False: neither read nor write).
    The cache key covers the image pixels, the normalised prompt, both model ids (plus file sizes and times for
    local folders), both thresholds and a version number. An object whose best box gets an empty SAM mask is
    reported as not found (None), like a missing box.
    """

    name = "groundedsam"

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
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.detector_id, self.sam_id = str(detector), str(sam)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.device, self.batch_size = device, int(batch_size)
        self.cache = MaskCache(default_mask_cache_dir(cache_dir)) if cache else None
        self._models: dict[str, Any] | None = None
        self._identity = {"detector": _model_identity(self.detector_id), "sam": _model_identity(self.sam_id)}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "detector": self.detector_id,
            "sam": self.sam_id,
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
        }

    # ---- the contract ----------------------------------------------------------------------------------
    def masks(self, samples: SampleSet, indices: list[int], prompts: list[str]) -> list[Image.Image | None]:
        if len(indices) != len(prompts):
            raise ValueError(f"{len(indices)} indices but {len(prompts)} prompts")
        return self.segment((samples.open_image(i), p) for i, p in zip(indices, prompts))

    def segment(self, items: Iterable[tuple[Image.Image, str]]) -> list[Image.Image | None]:
        """Masks for (image, prompt) pairs: cache hits directly, misses gathered into full model batches.

        Images are consumed one at a time and only the pending misses are held, so memory stays bounded by
        ``batch_size`` whatever the number of items.
        """
        out: list[Image.Image | None] = []
        pending: list[tuple[int, str, Image.Image, str]] = []  # (position, cache key, image, prompt)
        for position, (image, prompt) in enumerate(items):
            prompt = grounding_prompt(prompt)
            key = self._key(image, prompt)
            hit = self.cache.get(key) if self.cache is not None else MaskCache.MISSING
            out.append(None if hit is MaskCache.MISSING else hit)
            if hit is MaskCache.MISSING:
                pending.append((position, key, image, prompt))
            if len(pending) == self.batch_size:
                self._flush(pending, out)
        self._flush(pending, out)
        return out

    def _flush(self, pending: list[tuple[int, str, Image.Image, str]], out: list) -> None:
        """Compute the pending misses in one batch, store them in ``out`` and the cache, empty ``pending``."""
        if not pending:
            return
        fresh = self._compute([image for _, _, image, _ in pending], [prompt for *_, prompt in pending])
        for (position, key, _, _), mask in zip(pending, fresh):
            out[position] = mask
            if self.cache is not None:
                self.cache.put(key, mask)
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
        )

    # ---- models ----------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        """Processors and models, loaded on the first cache miss (a fully cached run never loads them)."""
        if self._models is None:
            try:
                self._models = self._build()
            except Exception as exc:
                from covar_harness.models import unreachable_error

                unreachable = unreachable_error(f"segmenter groundedsam ({self.detector_id}, {self.sam_id})", exc)
                if unreachable is not None:  # one line with the way to fail fast
                    raise unreachable from exc
                raise
        return self._models

    def _build(self) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return {
            "device": device,
            "det_processor": AutoProcessor.from_pretrained(self.detector_id),
            "detector": AutoModelForZeroShotObjectDetection.from_pretrained(self.detector_id).to(device).eval(),
            "sam_processor": AutoProcessor.from_pretrained(self.sam_id),
            "sam": SamModel.from_pretrained(self.sam_id).to(device).eval(),  # type: ignore[arg-type]  # transformers stub
        }

    def _compute(self, images: list[Image.Image], prompts: list[str]) -> list[Image.Image | None]:
        boxes = self._detect(images, prompts)
        with_box = [j for j, box in enumerate(boxes) if box is not None]
        masks: list[Image.Image | None] = [None] * len(images)
        if with_box:
            found = [box for box in boxes if box is not None]  # the boxes of with_box, in order
            for j, mask in zip(with_box, self._segment_boxes([images[j] for j in with_box], found)):
                masks[j] = mask
        return masks

    def _detect(self, images: list[Image.Image], prompts: list[str]) -> list[list[float] | None]:
        """One Grounding DINO call for the batch; per image the best box [x0, y0, x1, y1] in pixels, or None."""
        import torch

        m = self._load()
        processor = m["det_processor"]
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True).to(m["device"])
        with torch.inference_mode():
            outputs = m["detector"](**inputs)
        words = _word_token_mask(inputs["input_ids"], processor.tokenizer)
        return [
            self._best_box(outputs.logits[b].float().sigmoid(), outputs.pred_boxes[b].float(), words[b], images[b].size)
            for b in range(len(images))
        ]

    def _best_box(self, probs, boxes, words, size: tuple[int, int]) -> list[float] | None:
        """probs (Q, L) token probabilities, boxes (Q, 4) normalised cx, cy, w, h; size (W, H)."""
        import torch

        scores = probs.max(dim=-1).values
        word_probs = probs[:, : words.shape[0]][:, words]
        word_scores = word_probs.max(dim=-1).values if word_probs.shape[1] else torch.zeros_like(scores)
        corners = _corners(boxes, size)
        valid = (scores > self.box_threshold) & (word_scores > self.text_threshold)
        valid &= (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        if not bool(valid.any()):
            return None
        best = int(torch.where(valid, scores, torch.full_like(scores, -1.0)).argmax())
        return [float(v) for v in corners[best]]

    def _segment_boxes(self, images: list[Image.Image], boxes: list[list[float]]) -> list[Image.Image | None]:
        """One SAM call for the batch, one box prompt per image; masks at the original image size."""
        import numpy as np
        import torch
        from PIL import Image

        m = self._load()
        processor = m["sam_processor"]
        inputs = processor(images=images, input_boxes=[[box] for box in boxes], return_tensors="pt")
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
        for mask in masks:
            binary = np.asarray(mask[0, 0].numpy(), dtype=bool)
            out.append(Image.fromarray(binary.astype(np.uint8) * 255, mode="L") if binary.any() else None)
        return out


def _corners(boxes, size: tuple[int, int]):
    """Normalised (cx, cy, w, h) -> pixel (x0, y0, x1, y1), clipped to the image of ``size`` = (W, H)."""
    import torch

    width, height = size
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], dim=-1
    )
    limit = torch.tensor([width, height, width, height], dtype=corners.dtype, device=corners.device)
    return torch.minimum(corners.clamp(min=0), limit)


def _word_token_mask(input_ids, tokenizer):
    """(B, L) bool: tokens of the class name itself, not special tokens, padding or the '.' separators."""
    import torch

    skip = set(tokenizer.all_special_ids) | set(tokenizer(".", add_special_tokens=False)["input_ids"])
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
        description=f"Grounding DINO box for the class name + SAM mask ({DEFAULT_DETECTOR}, {DEFAULT_SAM}; "
        "thresholds 0.3/0.25; cached)",
    )
