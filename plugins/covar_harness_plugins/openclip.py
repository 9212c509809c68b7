"""Built-in plugin: open_clip models through ``openclip:`` specs.

``openclip:ARCH/TAG`` (pretrained tag, e.g. ``ViT-B-32-quickgelu/openai``), ``openclip:hf-hub:ORG/REPO``,
``openclip:local-dir:PATH`` (a folder with ``open_clip_config.json`` and weights), and ``openclip:ARCH``
(random weights: useful for smoke tests only, and said so). Preprocessing is open_clip's own for the tag.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from pathlib import Path
from typing import Any

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.common.console import safe
from covar_harness.models.adapter import BaseAdapter
from covar_harness.models.specs import ModelLoadError, torch_dtype, unreachable_error
from covar_harness_plugins.openclip_towers import removal_tower

log = logging.getLogger(__name__)


class OpenClipAdapter(BaseAdapter):
    """ModelAdapter over an ``open_clip`` CLIP / CustomTextCLIP model.

    Whether attribution works depends on this model's vision tower, so the capability members
    (``supports_attribution``, ``patch_grid``, ``can_remove_all_patches``, ``n_blocks``) are set per instance."""

    family = "openclip"
    supports_pattern_batches = True  # encode_images_without takes (B, K, N) drop patterns in one call

    def __init__(self, name: str, model, preprocess, tokenizer, device: str, precision: str):
        self.name = name
        self.model = model.eval()
        self.preprocess = preprocess  # torchvision Compose: picklable for DataLoader workers
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.dtype = torch_dtype(precision)
        self._tower, reason = removal_tower(self.model.visual)
        # per instance: whether attribution works depends on this model's vision tower, not on the class
        self.supports_attribution = self._tower is not None
        self.attribution_unsupported_reason = reason
        self.patch_grid: tuple[int, int] | None = self._tower.grid if self._tower is not None else None
        # whether encode_images_without(..., allow_empty=True) may drop every patch: the tower reads its embedding
        # from a prefix token (CLS readout or a pool whose keys include it), so "no patch" is still defined
        self.can_remove_all_patches = bool(self._tower is not None and self._tower.reads_prefix)
        # blocks a patch_tokens(layer=...) may index: lets the harness reject a bad --cci-layer before the pass
        self.n_blocks: int | None = self._tower.n_blocks if self._tower is not None else None

    def encode_images(self, pixels):
        import torch  # lazy: the plugin registers its names without torch

        with torch.inference_mode():
            return self.model.encode_image(pixels.to(self.device, self.dtype)).float()

    def encode_texts(self, texts: list[str]):
        import torch  # lazy: the plugin registers its names without torch

        with torch.inference_mode():
            return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()

    def patch_tokens(self, pixels, layer: int = -1):
        """(B, N, C) patch tokens (no CLS/prefix) after block ``layer`` (default the last), raster order."""
        import torch  # lazy: the plugin registers its names without torch

        tower = self._require_tower()
        with torch.inference_mode():
            return tower.patch_tokens(pixels.to(self.device, self.dtype), layer).float()

    def encode_images_with_tokens(self, pixels, layer: int = -1):
        """(encode_images, patch_tokens at ``layer``) from one forward where the tower allows it (native ViT)."""
        import torch  # lazy: the plugin registers its names without torch

        tower = self._require_tower()
        if not hasattr(tower, "encode_with_tokens"):
            return self.encode_images(pixels), self.patch_tokens(pixels, layer)
        with torch.inference_mode():
            emb, tokens = tower.encode_with_tokens(pixels.to(self.device, self.dtype), layer)
            return emb.float(), tokens.float()

    def input_tokens(self, pixels):
        """(B, N, C) patch tokens entering the first block (after the pre-norm), raster order."""
        import torch  # lazy: the plugin registers its names without torch

        tower = self._require_tower()
        with torch.inference_mode():
            return tower.embed(pixels.to(self.device, self.dtype))[:, tower.n_prefix :].float()

    def encode_images_without(
        self, pixels, drop, *, strategy: str = "auto", max_rows: int | None = None, allow_empty: bool = False
    ):
        """Image embeddings (B, D), or (B, K, D) for a (B, K, N) ``drop``, with the dropped patches removed from
        attention in every layer and from pooling. Same space and scale as :meth:`encode_images`.
        ``strategy``/``max_rows`` are for tests and benchmarks (see covar_harness.models.token_removal).
        ``allow_empty``: a pattern may drop every patch (only when ``can_remove_all_patches``)."""
        import torch  # lazy: the plugin registers its names without torch

        from covar_harness.models import token_removal as tr  # lazy: imports torch; the plugin registers without it

        tower = self._require_tower()
        if allow_empty and not self.can_remove_all_patches:
            raise ValueError(f"{self.name}: pooling does not read a prefix token, so removing every patch is undefined")
        with torch.inference_mode():
            tokens = tower.embed(pixels.to(self.device, self.dtype))
            rows = max_rows if max_rows is not None else tower.max_rows(tokens.shape[1])
            out = tr.encode_without(
                tokens,
                drop,
                tower.n_prefix,
                tower.run_shortened,
                tower.run_masked,
                rows,
                strategy=strategy,
                allow_empty=allow_empty,
            )
        return out.float()

    @property
    def attention_trace(self):  # None when this tower cannot trace (see BaseAdapter.attention_trace)
        """pixels -> ``Trace`` of this CLS-readout ViT (openclip_trace.py), or None for other towers."""
        # lazy: imports torch; the plugin registers without it
        from covar_harness_plugins.openclip_trace import OpenClipTracer, trace_unsupported

        if trace_unsupported(self.model.visual):
            return None
        tracer = OpenClipTracer(self.model.visual)
        return lambda pixels: tracer(pixels.to(self.device, self.dtype))

    def _require_tower(self):
        if self._tower is None:
            raise NotImplementedError(f"{self.name}: no attribution support ({self.attribution_unsupported_reason})")
        return self._tower

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "precision": self.precision}


# ---------------------------------------------------------------------------------------------------------------
def parse_spec(rest: str) -> tuple[str, str | None]:
    """``ARCH/TAG`` -> (ARCH, TAG); ``hf-hub:...`` and ``local-dir:...`` pass through with no tag."""
    if rest.startswith(("hf-hub:", "local-dir:")):
        return rest, None
    arch, _, tag = rest.partition("/")
    return arch, (tag or None)


def load_openclip(rest: str, *, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    import open_clip  # lazy: the backend loads with the model, not at plugin discovery

    model_name, tag = parse_spec(rest)
    if not rest.startswith(("hf-hub:", "local-dir:")) and model_name not in open_clip.list_models():
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"open_clip has no architecture {model_name!r}{hint}")
    if tag is None and not rest.startswith(("hf-hub:", "local-dir:")):
        log.warning("openclip:%s has no pretrained tag: the weights are RANDOM (smoke tests only)", safe(rest))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=tag,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
            pretrained_text=False if tag is None else True,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except Exception as exc:
        unreachable = unreachable_error(f"openclip:{rest}", exc, cache_dir)
        if unreachable is not None:  # one line with the way to fail fast, not the hub client's retry story
            raise unreachable from exc
        raise ModelLoadError(_explain_failure(rest, model_name, tag, exc)) from exc
    return OpenClipAdapter(f"openclip:{rest}", model, preprocess, tokenizer, device, precision)


def patch_count_hint(spec: str) -> int | None:
    """Patches (rows * cols) of an ``openclip:ARCH[/TAG]`` or ``openclip:local-dir:PATH`` spec from its config
    alone (no weights, no network): image_size / patch_size of a native ViT, or the patch size in a plain timm
    ``vit_*`` tower's name (SigLIP). None when it cannot tell (ResNets, ConvNeXt, hf-hub: specs, other timm)."""

    rest = spec[len("openclip:") :] if spec.startswith("openclip:") else spec
    if rest.startswith("hf-hub:"):
        return None
    try:
        if rest.startswith("local-dir:"):
            cfg = json.loads((Path(rest[len("local-dir:") :]).expanduser() / "open_clip_config.json").read_text())
            cfg = cfg.get("model_cfg", cfg)
        else:
            import open_clip  # lazy: the backend loads with the model, not at plugin discovery

            cfg = open_clip.get_model_config(parse_spec(rest)[0])
        return _patches_of(cfg["vision_cfg"]) if cfg else None
    except Exception:  # noqa: BLE001 - a hint is optional
        return None


def _patches_of(vision: dict) -> int | None:
    size = vision.get("image_size")
    patch = vision.get("patch_size")
    timm_name = vision.get("timm_model_name")
    if timm_name:
        found = re.search(r"patch(\d+)", timm_name)
        patch = int(found.group(1)) if found and timm_name.startswith("vit_") else None
    if not patch or not isinstance(vision.get("layers", 0), int):
        return None
    if not isinstance(size, (int, list, tuple)):
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(h) // int(patch)) * (int(w) // int(patch))


load_openclip.patch_count_hint = patch_count_hint  # type: ignore[attr-defined]  # read by covar_harness.models.specs.patch_count_hint


def _explain_failure(rest: str, model_name: str, tag: str | None, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if rest.startswith("local-dir:"):
        return f"openclip:{rest}: cannot load the local model folder ({first})"
    what = f"config/weights of {model_name}" + (f" (pretrained={tag})" if tag else "")
    return (
        f"openclip:{rest}: fetching the {what} failed ({first}). Offline or gated? Download once with network "
        "access (HF_HOME / --cache-dir decide where), or save the model with open_clip and use "
        "openclip:local-dir:PATH."
    )


@hookimpl
def register_model_schemes(register):
    register("openclip", load_openclip, description="open_clip: ARCH/TAG, hf-hub:ORG/REPO, local-dir:PATH")
