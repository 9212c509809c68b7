"""Built-in plugin: Hugging Face transformers CLIP, SigLIP and SigLIP2 (NaFlex) models through ``hf:`` specs.

``hf:ORG/NAME`` (a hub id, fetched into ``--cache-dir`` or the HF_HOME cache) or ``hf:/path/to/dir`` (a folder
written by ``model.save_pretrained`` + ``processor.save_pretrained``). Preprocessing and tokenisation are the
checkpoint's own processor, with the known traps handled here so users do not have to:

- SigLIP / SigLIP2 text is padded to ``max_length`` (64 for every released checkpoint): the text tower pools
  the last position, so shorter padding silently changes the embedding. Its text is encoded WITHOUT the
  tokenizer's ``attention_mask``: SigLIP was trained with no text mask (big_vision; open_clip's SigLIP uses none),
  and masking the pad keys changes the embedding. CLIP keeps its mask (it pools at the end-of-text token).
- transformers 4.x returns tensors from ``get_image_features``/``get_text_features``, 5.x output objects.
- SigLIP2 (NaFlex) takes patch sequences; the adapter keeps one fixed-size (3, H, W) tensor per image (the
  processor's square grid) and builds ``pixel_values``/``pixel_attention_mask``/``spatial_shapes`` itself.
  Square images get exactly the processor's input; other aspect ratios are resized to the square grid.

Every adapter also has the attribution capability (docs/design.md section 3): patches are removed from attention
in every layer and from pooling (CLS readout for CLIP, the attention-pool head's keys for SigLIP/SigLIP2) through
the shared driver in ``covar_harness.models.token_removal``. Nothing here imports torch at module import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from covar_harness.catalog.hookspecs import hookimpl
from covar_harness.models.adapter import BaseAdapter
from covar_harness.models.specs import ModelLoadError, torch_dtype, unreachable_error

MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}


# ---- preprocessing (picklable: runs in DataLoader workers) -----------------------------------------------
class ProcessorTransform:
    """PIL image -> (3, H, W) through the checkpoint's own image processor (CLIP, SigLIP)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class NaflexTransform:
    """PIL image -> (3, S, S): SigLIP2's processor output for the square patch grid, folded back into an image.

    Any square image gets exactly the processor's patches (the processor maps every square to the same grid and
    the fold is lossless); other shapes are first resized to S x S, since one adapter needs one patch grid
    (batching, attribution maps).
    """

    def __init__(self, image_processor):
        # lazy: the backend loads with the model, not at plugin discovery
        from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

        self.image_processor = image_processor
        self.patch = image_processor.patch_size
        self.side, _ = get_image_size_for_max_num_patches(
            4096, 4096, self.patch, image_processor.max_num_patches
        )  # any square gives the same grid

    @property
    def grid(self) -> int:
        return self.side // self.patch

    def __call__(self, image):
        image = image.convert("RGB")
        if image.width != image.height:  # the processor would keep the aspect ratio: a different grid
            image = image.resize((self.side, self.side), resample=Image.Resampling.BILINEAR)
        out = self.image_processor(images=image, return_tensors="pt")
        return unpatchify(out["pixel_values"][0, : self.grid**2], self.grid, self.patch)


def unpatchify(patches, grid: int, patch: int):
    """(g*g, p*p*3) NaFlex patches (row-major, channels last) -> (3, g*p, g*p)."""
    return patches.reshape(grid, grid, patch, patch, 3).permute(4, 0, 2, 1, 3).reshape(3, grid * patch, grid * patch)


def patchify(pixels, patch: int):
    """(B, 3, H, W) -> (B, (H/p)*(W/p), p*p*3), the layout of SigLIP2's ``convert_image_to_patches``."""
    B, C, H, W = pixels.shape
    x = pixels.reshape(B, C, H // patch, patch, W // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * C)


def features(output):
    """The embedding from ``get_*_features``: a tensor (transformers 4.x) or an output object (5.x)."""
    return output if hasattr(output, "shape") else output.pooler_output


# ---- adapters --------------------------------------------------------------------------------------------
class HFAdapter(BaseAdapter):
    """ModelAdapter over a transformers dual encoder; subclasses say how the vision tower runs."""

    family = "hf"
    n_prefix = 0  # tokens before the patches (CLIP's CLS)
    can_remove_all_patches = False  # True when pooling reads the prefix token (CLIP's CLS): see token_removal
    supports_pattern_batches = True  # encode_images_without takes (B, K, N) drop patterns in one call
    text_padding: str | bool = "max_length"
    text_attention_mask = False  # SigLIP family: trained without a text mask (see the module docstring)

    def __init__(self, name: str, model, processor, device: str, precision: str):
        self.name = name
        self.model = model.eval()
        self.tokenizer = processor.tokenizer
        self.device, self.precision, self.dtype = device, precision, torch_dtype(precision)
        self.architecture = model.config.model_type
        self.tower = model.vision_model
        self.preprocess = self._transform(processor.image_processor)
        self.patch_grid: tuple[int, int] = self._grid()
        # encoder blocks ``patch_tokens(layer=...)`` may index (Python style: -n_blocks..n_blocks-1)
        self.n_blocks: int = len(self.tower.encoder.layers)
        self.max_text_length = model.config.text_config.max_position_embeddings

    def _transform(self, image_processor):
        return ProcessorTransform(image_processor)

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "architecture": self.architecture, "precision": self.precision}

    # -- the protocol
    def encode_texts(self, texts: list[str]):
        import torch  # lazy: the plugin registers its names without torch

        tokens = self.tokenizer(
            list(texts),
            padding=self.text_padding,
            max_length=self.max_text_length,
            truncation=True,
            return_tensors="pt",
        )
        keys = ("input_ids", "attention_mask") if self.text_attention_mask else ("input_ids",)
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in keys}
        with torch.inference_mode():
            return features(self.model.get_text_features(**inputs)).float()

    def encode_images(self, pixels):
        import torch  # lazy: the plugin registers its names without torch

        with torch.inference_mode():
            return features(self.model.get_image_features(**self.image_inputs(pixels))).float()

    def image_inputs(self, pixels) -> dict:
        """What ``get_image_features`` takes for a (B, 3, H, W) batch."""
        return {"pixel_values": pixels.to(self.device, self.dtype)}

    # -- attribution capability
    def _grid(self) -> tuple[int, int]:
        g = self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size
        return g, g

    def patch_tokens(self, pixels, layer: int = -1):
        """(B, N, C) patch tokens after encoder block ``layer`` (default: the last), raster order."""
        import torch  # lazy: the plugin registers its names without torch

        n_layers = self.n_blocks
        if not -n_layers <= layer < n_layers:  # no modulo: layer 7 of 2 blocks must not quietly mean block 1
            raise IndexError(f"layer {layer} out of range for {n_layers} blocks")
        stop = layer % n_layers
        with torch.inference_mode():
            x = self.embed(pixels)
            for block in self.tower.encoder.layers[: stop + 1]:
                out = block(x, None)
                x = out[0] if isinstance(out, tuple) else out  # 4.x layers return tuples
            return x[:, self.n_prefix :].float()

    def input_tokens(self, pixels):
        """(B, N, C) patch tokens entering the first encoder block (CLIP: after its pre-norm), raster order."""
        import torch  # lazy: the plugin registers its names without torch

        with torch.inference_mode():
            return self.embed(pixels)[:, self.n_prefix :].float()

    def encode_images_without(self, pixels, drop, **driver_options):
        """(B, D) or (B, K, D): embeddings with the ``drop``ped patches removed from attention and pooling.

        ``driver_options`` go to ``models.token_removal.encode_without`` (e.g. ``strategy``, ``max_rows``).
        """
        import torch  # lazy: the plugin registers its names without torch

        # lazy: imports torch; the plugin registers without it
        from covar_harness.models.token_removal import encode_without

        if driver_options.get("allow_empty") and not self.can_remove_all_patches:
            raise ValueError(f"{self.name}: pooling does not read a prefix token, so removing every patch is undefined")
        with torch.inference_mode():
            tokens = self.embed(pixels)
            return encode_without(tokens, drop, self.n_prefix, self.finish, self.finish, **driver_options).float()

    @property
    def attention_trace(self):  # None when the tower cannot trace (see BaseAdapter.attention_trace)
        """pixels -> ``Trace`` of this tower (hf_trace.py), or None when its layers do not fit."""
        # lazy: imports torch; the plugin registers without it
        from covar_harness_plugins.hf_trace import HFTracer, trace_unsupported

        return None if trace_unsupported(self) else HFTracer(self)

    def embed(self, pixels):
        """(B, P+N, C) tokens with position embeddings: everything before the first attention layer."""
        return self.tower.embeddings(pixels.to(self.device, self.dtype))

    def encode_tokens(self, x, key_mask=None):
        """Run the encoder on (R, L, C) tokens; ``key_mask`` (R, L) additive float masks keys in every layer."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return self.tower.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state

    def finish(self, x, key_mask=None):
        raise NotImplementedError


class ClipAdapter(HFAdapter):
    n_prefix = 1
    can_remove_all_patches = True  # CLS readout: with every patch removed the CLS token alone gives the embedding
    text_padding = True  # CLIP pools at the end-of-text token under a causal mask: padding length is irrelevant
    text_attention_mask = True  # as CLIP is run everywhere (the mask only hides padding after end-of-text)

    def embed(self, pixels):
        return self.tower.pre_layrnorm(super().embed(pixels))  # per token: commutes with deleting tokens

    def finish(self, x, key_mask=None):
        cls = self.tower.post_layernorm(self.encode_tokens(x, key_mask)[:, 0])
        return self.model.visual_projection(cls)


class SiglipAdapter(HFAdapter):
    def finish(self, x, key_mask=None):
        x = self.tower.post_layernorm(self.encode_tokens(x, key_mask))
        head = self.tower.head
        if key_mask is None:
            return head(x)
        # transformers' SigLIP head takes no mask: the same computation with the dropped keys masked
        probe = head.probe.expand(x.shape[0], -1, -1)
        h = head.attention(probe, x, x, key_padding_mask=key_mask, need_weights=False)[0]
        return (h + head.mlp(head.layernorm(h)))[:, 0]


class Siglip2Adapter(HFAdapter):
    def _transform(self, image_processor):
        self.naflex = NaflexTransform(image_processor)
        return self.naflex

    def _grid(self) -> tuple[int, int]:
        return self.naflex.grid, self.naflex.grid

    def image_inputs(self, pixels) -> dict:
        """NaFlex inputs for fixed-size images: every image is a full g x g grid, so the mask is all ones."""
        import torch  # lazy: the plugin registers its names without torch

        patches = patchify(pixels.to(self.device, self.dtype), self.naflex.patch)
        B, P, _ = patches.shape
        return {
            "pixel_values": patches,
            "pixel_attention_mask": torch.ones(B, P, dtype=torch.long, device=self.device),
            "spatial_shapes": torch.tensor([list(self.patch_grid)] * B, device=self.device),
        }

    def embed(self, pixels):
        inputs = self.image_inputs(pixels)
        return self.tower.embeddings(inputs["pixel_values"], inputs["spatial_shapes"])

    def finish(self, x, key_mask=None):
        x = self.tower.post_layernorm(self.encode_tokens(x, key_mask))
        keep = None if key_mask is None else (key_mask == 0).long()
        return self.tower.head(x, keep)  # SigLIP2's head masks its keys with pixel_attention_mask semantics


ADAPTERS = {"clip": ClipAdapter, "siglip": SiglipAdapter, "siglip2": Siglip2Adapter}


# ---- loading ---------------------------------------------------------------------------------------------
def load_hf(rest: str, *, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None) -> HFAdapter:
    """The ``hf:`` scheme loader: config -> model class by ``model_type`` -> weights -> processor."""
    import transformers  # lazy: the backend loads with the model, not at plugin discovery

    source = _source(rest)
    stage = "config"
    try:
        config = transformers.AutoConfig.from_pretrained(source, cache_dir=cache_dir)
        arch = config.model_type
        if arch not in MODEL_CLASSES:
            raise ModelLoadError(
                f"hf:{rest} is a {arch!r} model; the hf: scheme supports "
                f"{', '.join(MODEL_CLASSES)} (use custom: for other architectures)"
            )
        stage = "weights"
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        model = getattr(transformers, MODEL_CLASSES[arch]).from_pretrained(
            source, cache_dir=cache_dir, attn_implementation="sdpa", **{dtype_kw: torch_dtype(precision)}
        )
        stage = "processor (tokenizer and image processor)"
        processor = transformers.AutoProcessor.from_pretrained(source, cache_dir=cache_dir)
    except ModelLoadError:
        raise
    except Exception as exc:
        unreachable = unreachable_error(f"hf:{rest}", exc, cache_dir)
        if unreachable is not None:  # one line with the way to fail fast, not the hub client's retry story
            raise unreachable from exc
        raise ModelLoadError(_explain_failure(rest, source, stage, cache_dir, exc)) from exc
    return ADAPTERS[arch](f"hf:{rest}", model.to(device), processor, device, precision)


def patch_count_hint(spec: str) -> int | None:
    """Patches of an ``hf:/path`` save_pretrained folder from its config.json alone (no weights, no network);
    None for hub ids (their config would need the network) and anything it cannot tell."""

    rest = spec[len("hf:") :] if spec.startswith("hf:") else spec
    path = Path(rest).expanduser() / "config.json"
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else {}
        vision = cfg.get("vision_config") or {}
        if cfg.get("model_type") == "siglip2":  # the processor's square grid, as NaflexTransform computes it
            # lazy: the backend loads with the model, not at plugin discovery
            from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

            pre = _image_processor_config(path.parent)
            edge, _ = get_image_size_for_max_num_patches(4096, 4096, pre["patch_size"], pre["max_num_patches"])
            return (edge // pre["patch_size"]) ** 2
        side = int(vision["image_size"]) // int(vision["patch_size"])
    except Exception:  # noqa: BLE001 - a hint is optional
        return None
    return side * side if cfg.get("model_type") in MODEL_CLASSES else None


def _image_processor_config(folder: Path) -> dict:
    """The saved image processor settings: ``preprocessor_config.json`` (transformers 4.x) or the
    ``image_processor`` entry of ``processor_config.json`` (5.x)."""

    old = folder / "preprocessor_config.json"
    if old.is_file():
        return json.loads(old.read_text())
    return json.loads((folder / "processor_config.json").read_text())["image_processor"]


load_hf.patch_count_hint = patch_count_hint  # type: ignore[attr-defined]  # read by covar_harness.models.specs.patch_count_hint


def _source(rest: str) -> str:
    """A local folder's path, or the hub id. A path-looking spec that does not exist is an error, not a download."""
    path = Path(rest).expanduser()
    if path.is_dir():
        return str(path)
    if rest.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"hf:{rest}: no such folder {str(path)!r} (expected a save_pretrained directory)")
    return rest


def _explain_failure(rest: str, source: str, stage: str, cache_dir: str | None, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(source).is_dir():
        return f"hf:{rest}: cannot load the {stage} from the local folder {source} ({first})"
    from huggingface_hub import constants  # lazy: optional dependency, imported where used

    cache = cache_dir or constants.HF_HUB_CACHE
    return (
        f"hf:{rest}: fetching the {stage} of {source!r} from the Hugging Face hub failed ({first}). "
        f"Offline, gated or misspelt? Cache looked in: {cache} (set by --cache-dir or HF_HOME). To use local "
        "weights, run model.save_pretrained(DIR) and processor.save_pretrained(DIR) where the hub is reachable "
        "and pass hf:/path/to/DIR."
    )


@hookimpl
def register_model_schemes(register):
    register("hf", load_hf, description="transformers CLIP/SigLIP/SigLIP2: hub id or save_pretrained folder")
