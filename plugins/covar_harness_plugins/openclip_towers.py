"""The open_clip vision towers the ``openclip:`` adapter removes tokens from (its attribution capability,
docs/design.md section 3): the native ViT and timm ViTs. Split from openclip.py, which loads the models.
"""

from __future__ import annotations

from typing import Any

from covar_harness.catalog.plugin_manager import keywords_of

# Token removal for the attribution capability (docs/design.md section 3). A "tower" wraps one vision-tower family
# and exposes embed (tokens after position embedding), run_shortened / run_masked (the rest of the tower; see
# covar_harness.models.token_removal) and patch_tokens. Everything imports torch lazily.

MASK_BUDGET_BYTES = 1 << 28  # cap on a chunk's materialised (rows*heads, L, L) attention mask


def removal_tower(visual) -> tuple[Any, str]:
    """(tower, "") when patch-token removal is exact for this vision tower, else (None, reason)."""
    # lazy: the backend loads with the model, not at plugin discovery
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
        from covar_harness.models.token_removal import MAX_ROWS  # lazy: imports torch; the plugin registers without it

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
        # lazy: the backend loads with the model, not at plugin discovery
        from timm.layers import AttentionPoolLatent, PatchEmbed

        # lazy: the backend loads with the model, not at plugin discovery
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

        # named explicitly: a block that swallowed attn_mask through **kwargs would silently not remove anything
        if not all(keywords_of(blk.forward).accepts("attn_mask", explicit=True) for blk in trunk.blocks):
            return "timm blocks take no attention mask"
        return ""

    def max_rows(self, seq_len: int) -> int:
        from covar_harness.models.token_removal import MAX_ROWS  # lazy: imports torch; the plugin registers without it

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
