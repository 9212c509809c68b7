"""Built-in plugin: open_clip models through ``openclip:`` specs.

``openclip:ARCH/TAG`` (pretrained tag, e.g. ``ViT-B-32-quickgelu/openai``), ``openclip:hf-hub:ORG/REPO``,
``openclip:local-dir:PATH`` (a folder with ``open_clip_config.json`` and weights), and ``openclip:ARCH``
(random weights: useful for smoke tests only, and said so). Preprocessing is open_clip's own for the tag.
"""

from __future__ import annotations

import logging
from typing import Any

from covar_harness.adapter import BaseAdapter
from covar_harness.hookspecs import hookimpl
from covar_harness.models import ModelLoadError, torch_dtype, unreachable_error

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
        import torch

        with torch.inference_mode():
            return self.model.encode_image(pixels.to(self.device, self.dtype)).float()

    def encode_texts(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()

    def patch_tokens(self, pixels, layer: int = -1):
        """(B, N, C) patch tokens (no CLS/prefix) after block ``layer`` (default the last), raster order."""
        import torch

        tower = self._require_tower()
        with torch.inference_mode():
            return tower.patch_tokens(pixels.to(self.device, self.dtype), layer).float()

    def encode_images_with_tokens(self, pixels, layer: int = -1):
        """(encode_images, patch_tokens at ``layer``) from one forward where the tower allows it (native ViT)."""
        import torch

        tower = self._require_tower()
        if not hasattr(tower, "encode_with_tokens"):
            return self.encode_images(pixels), self.patch_tokens(pixels, layer)
        with torch.inference_mode():
            emb, tokens = tower.encode_with_tokens(pixels.to(self.device, self.dtype), layer)
            return emb.float(), tokens.float()

    def input_tokens(self, pixels):
        """(B, N, C) patch tokens entering the first block (after the pre-norm), raster order."""
        import torch

        tower = self._require_tower()
        with torch.inference_mode():
            return tower.embed(pixels.to(self.device, self.dtype))[:, tower.n_prefix :].float()

    def encode_images_without(
        self, pixels, drop, *, strategy: str = "auto", max_rows: int | None = None, allow_empty: bool = False
    ):
        """Image embeddings (B, D), or (B, K, D) for a (B, K, N) ``drop``, with the dropped patches removed from
        attention in every layer and from pooling. Same space and scale as :meth:`encode_images`.
        ``strategy``/``max_rows`` are for tests and benchmarks (see covar_harness.token_removal).
        ``allow_empty``: a pattern may drop every patch (only when ``can_remove_all_patches``)."""
        import torch

        from covar_harness import token_removal as tr

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
        """pixels -> ``Trace`` of this CLS-readout ViT (plugins/openclip_trace.py), or None for other towers."""
        from covar_harness.plugins.openclip_trace import OpenClipTracer, trace_unsupported

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
# Token removal for the attribution capability (docs/design.md section 3). A "tower" wraps one vision-tower family
# and exposes embed (tokens after position embedding), run_shortened / run_masked (the rest of the tower; see
# covar_harness.token_removal) and patch_tokens. Everything imports torch lazily.

MASK_BUDGET_BYTES = 1 << 28  # cap on a chunk's materialised (rows*heads, L, L) attention mask


def removal_tower(visual) -> tuple[Any, str]:
    """(tower, "") when patch-token removal is exact for this vision tower, else (None, reason)."""
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        reason = NativeViTTower.unsupported(visual)
        return (None, reason) if reason else (NativeViTTower(visual), "")
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and getattr(visual, "head", None) is not None:
        reason = TimmViTTower.unsupported(visual)
        return (None, reason) if reason else (TimmViTTower(visual), "")
    return None, (
        f"vision tower {type(visual).__name__} is not a ViT: patch tokens cannot be removed from it "
        "(convolutions mix neighbouring patches)"
    )


def block_index(n_blocks: int, layer: int) -> int:
    """Python-style block index -> absolute index, with a clear error when out of range."""
    if not -n_blocks <= layer < n_blocks:
        raise IndexError(f"layer {layer} out of range for {n_blocks} blocks")
    return layer % n_blocks


def masked_mean(x, mask):
    """Mean over tokens whose additive key mask is 0 (kept); x (R, L, C), mask (R, L)."""
    keep = (mask == 0).to(x.dtype)[..., None]
    return (x * keep).sum(dim=1) / keep.sum(dim=1)


class NativeViTTower:
    """open_clip's own VisionTransformer: CLS at index 0, then ``transformer`` blocks, then ``_pool`` and ``proj``.

    The masked path passes a per-row (R*heads, L, L) float mask to ``visual.transformer`` (v3.3 blocks accept
    (L, L) or (N*heads, L, L); bool masks would be cast to 0/1 additive values, hence float) and re-implements
    ``_pool`` with the key mask; the shortened path calls the library's own modules unchanged."""

    n_prefix = 1

    def __init__(self, visual):
        self.visual = visual
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.heads = int(visual.transformer.resblocks[0].attn.num_heads)
        self.n_blocks = len(visual.transformer.resblocks)
        # CLS readout ('tok') or an attention pool whose keys include the CLS token: defined with no patch left
        self.reads_prefix = visual.attn_pool is not None or visual.pool_type == "tok"

    @staticmethod
    def unsupported(visual) -> str:
        if visual.attn_pool is None and visual.pool_type == "none":
            return "pool_type 'none' without an attention pool gives no pooled image embedding"
        if visual.attn_pool is not None and getattr(visual, "attn_pool_contrastive", None) is not None:
            return (
                f"open_clip's work-in-progress {visual.attn_pool_type!r} attentional pool returns (B, 1, D) "
                "image features, not an embedding"
            )
        return ""

    def max_rows(self, seq_len: int) -> int:
        """Rows per chunk so the masked path's (rows*heads, L, L) mask stays within MASK_BUDGET_BYTES."""
        from covar_harness.token_removal import MAX_ROWS

        return max(1, min(MAX_ROWS, MASK_BUDGET_BYTES // (self.heads * seq_len * seq_len * 4)))

    def embed(self, pixels):
        return self.visual._embeds(pixels)

    def run_shortened(self, x):
        pooled, _ = self.visual._pool(self.visual.transformer(x))
        return self._project(pooled)

    def run_masked(self, x, mask):
        R, L = mask.shape
        attn_mask = mask[:, None, None, :].expand(R, self.heads, L, L).reshape(R * self.heads, L, L)
        return self._project(self._pool_masked(self.visual.transformer(x, attn_mask=attn_mask), mask))

    def patch_tokens(self, pixels, layer: int):
        idx = block_index(len(self.visual.transformer.resblocks), layer)
        x = self.visual._embeds(pixels)
        _, inter = self.visual.transformer.forward_intermediates(x, indices=[idx], stop_early=True)
        return inter[0][:, self.n_prefix :]

    def encode_with_tokens(self, pixels, layer: int):
        """``VisionTransformer.forward`` with block ``layer``'s output kept: the same operations, so the embedding
        equals ``encode_image`` and the tokens equal ``patch_tokens``."""
        idx = block_index(len(self.visual.transformer.resblocks), layer)
        x, inter = self.visual.transformer.forward_intermediates(self.visual._embeds(pixels), indices=[idx])
        pooled, _ = self.visual._pool(x)
        return self._project(pooled), inter[0][:, self.n_prefix :]

    def _project(self, pooled):
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def _pool_masked(self, x, mask):
        """``VisionTransformer._pool`` with dropped keys excluded from attention pools and average pools."""
        v = self.visual
        if v.attn_pool is not None:  # CoCa layout (parallel/cascade pools are rejected in `unsupported`)
            x = v.ln_post(attn_pool_masked(v.attn_pool, x, mask))
            return v._global_pool(x)[0]  # pools over the pooler's queries: nothing left to mask
        if v.final_ln_after_pool:
            return v.ln_post(self._global_pool_masked(x, mask))
        return self._global_pool_masked(v.ln_post(x), mask)

    def _global_pool_masked(self, x, mask):
        if self.visual.pool_type == "avg":
            return masked_mean(x[:, 1:], mask[:, 1:])
        return x[:, 0]  # 'tok': the CLS token, never dropped


def attn_pool_masked(pooler, x, mask):
    """open_clip ``AttentionalPooler.forward`` with a float key-padding mask, so dropped tokens are not keys."""
    q = pooler.ln_q(pooler.query)
    x = pooler.ln_k(x)
    query = q.unsqueeze(0).expand(x.shape[0], -1, -1)
    return pooler.attn(query, x, x, need_weights=False, key_padding_mask=mask.to(x.dtype))[0]


TIMM_POOLS = ("token", "avg", "max", "avgmax")


class TimmViTTower:
    """open_clip ``TimmModel`` over a plain timm ``VisionTransformer`` (e.g. SigLIP / SigLIP2: no CLS, a MAP
    attention-pool head). timm blocks and ``AttentionPoolLatent`` take a broadcastable additive ``attn_mask``, so
    the masked path passes one (R, 1, 1, L) mask to every block and to the MAP head's keys."""

    def __init__(self, visual):
        self.visual = visual
        self.trunk = visual.trunk
        self.n_prefix = int(self.trunk.num_prefix_tokens)
        self.grid = tuple(int(g) for g in self.trunk.patch_embed.grid_size)
        self.n_blocks = len(self.trunk.blocks)
        t = self.trunk  # a CLS-token readout (no MAP head, global_pool 'token') is defined with no patch left
        self.reads_prefix = self.n_prefix >= 1 and t.attn_pool is None and t.global_pool == "token"

    @staticmethod
    def unsupported(visual) -> str:
        from timm.layers import AttentionPoolLatent, PatchEmbed
        from timm.models.vision_transformer import VisionTransformer

        trunk = visual.trunk
        name = type(trunk).__name__
        if type(trunk) is not VisionTransformer:
            return (
                f"timm tower {name} is not a plain timm VisionTransformer (convolutional, windowed, rotary or "
                "relative-position towers cannot drop tokens exactly)"
            )
        if (
            type(trunk.patch_embed) is not PatchEmbed
            or trunk.patch_embed.proj.kernel_size != trunk.patch_embed.proj.stride
        ):
            return "patch embedding is not a non-overlapping patchify: a patch's pixels reach other tokens"
        if getattr(trunk, "dynamic_img_size", False):
            return "dynamic_img_size towers are not supported"
        if "pool" in dict(visual.head.named_children()):
            return "open_clip head pools 2-D feature maps (abs_attn/rot_attn) and takes no key mask"
        if trunk.attn_pool is not None and not isinstance(trunk.attn_pool, AttentionPoolLatent):
            return f"attention pool {type(trunk.attn_pool).__name__} takes no key mask"
        if trunk.attn_pool is None and trunk.global_pool not in TIMM_POOLS:
            return f"timm global_pool {trunk.global_pool!r} gives no pooled image embedding"
        from covar_harness.plugin_manager import keywords_of

        # named explicitly: a block that swallowed attn_mask through **kwargs would silently not remove anything
        if not all(keywords_of(blk.forward).accepts("attn_mask", explicit=True) for blk in trunk.blocks):
            return "timm blocks take no attention mask"
        return ""

    def max_rows(self, seq_len: int) -> int:
        from covar_harness.token_removal import MAX_ROWS

        return MAX_ROWS  # the (R, 1, 1, L) mask broadcasts: nothing quadratic is materialised

    def embed(self, pixels):
        t = self.trunk
        return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(pixels))))

    def run_shortened(self, x):
        t = self.trunk
        for blk in t.blocks:
            x = blk(x)
        return self.visual.head(t.forward_head(t.norm(x)))

    def run_masked(self, x, mask):
        t = self.trunk
        attn_mask = mask[:, None, None, :]
        for blk in t.blocks:
            x = blk(x, attn_mask=attn_mask)
        pooled = t.head(t.head_drop(t.fc_norm(self._pool_masked(t.norm(x), mask))))
        return self.visual.head(pooled)

    def patch_tokens(self, pixels, layer: int):
        idx = block_index(len(self.trunk.blocks), layer)
        return self.trunk.forward_intermediates(
            pixels, indices=[idx], output_fmt="NLC", intermediates_only=True, stop_early=True
        )[0]

    def _pool_masked(self, x, mask):
        """timm ``VisionTransformer.pool`` with dropped tokens excluded (MAP keys, averages, maxima)."""
        t = self.trunk
        if t.attn_pool is not None or t.global_pool != "token":
            if not getattr(t, "pool_include_prefix", False):
                x, mask = x[:, self.n_prefix :], mask[:, self.n_prefix :]
        if t.attn_pool is not None:
            return t.attn_pool(x, attn_mask=mask[:, None, None, :])
        if t.global_pool == "token":
            return x[:, 0]
        mean = masked_mean(x, mask)
        if t.global_pool == "avg":
            return mean
        top = x.masked_fill((mask != 0)[..., None], float("-inf")).amax(dim=1)
        return top if t.global_pool == "max" else 0.5 * (top + mean)


def parse_spec(rest: str) -> tuple[str, str | None]:
    """``ARCH/TAG`` -> (ARCH, TAG); ``hf-hub:...`` and ``local-dir:...`` pass through with no tag."""
    if rest.startswith(("hf-hub:", "local-dir:")):
        return rest, None
    arch, _, tag = rest.partition("/")
    return arch, (tag or None)


def load_openclip(rest: str, *, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    import open_clip

    model_name, tag = parse_spec(rest)
    if not rest.startswith(("hf-hub:", "local-dir:")) and model_name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"open_clip has no architecture {model_name!r}{hint}")
    if tag is None and not rest.startswith(("hf-hub:", "local-dir:")):
        from covar_harness.console import safe

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
    import json
    from pathlib import Path

    rest = spec[len("openclip:") :] if spec.startswith("openclip:") else spec
    if rest.startswith("hf-hub:"):
        return None
    try:
        if rest.startswith("local-dir:"):
            cfg = json.loads((Path(rest[len("local-dir:") :]).expanduser() / "open_clip_config.json").read_text())
            cfg = cfg.get("model_cfg", cfg)
        else:
            import open_clip

            cfg = open_clip.get_model_config(parse_spec(rest)[0])
        return _patches_of(cfg["vision_cfg"]) if cfg else None
    except Exception:  # noqa: BLE001 - a hint is optional
        return None


def _patches_of(vision: dict) -> int | None:
    import re

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


load_openclip.patch_count_hint = patch_count_hint  # type: ignore[attr-defined]  # read by covar_harness.models.patch_count_hint


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
