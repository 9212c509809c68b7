"""The attention trace (``BaseAdapter.attention_trace``) of open_clip's own VisionTransformer.

The block loop of ``open_clip.transformer.Transformer`` written out (as ``NativeViTTower`` in openclip_towers.py
wraps the tower for token removal), with each block's attention computed by
:func:`covar_harness.attribution.attention_trace.attend` so the probabilities stay in the autograd graph. Same
modules, same weights, same order of operations as ``encode_image``: the equality is tested
(tests/attribution/). Supported: towers of plain ``ResidualAttentionBlock``s with a CLS readout
(``pool_type 'tok'``, no attention pool), the layout of OpenAI and LAION CLIP ViTs. Nothing imports torch at
module import.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from covar_harness.attribution.attention_trace import Trace, attend, cls_pool, cls_readout


def trace_unsupported(visual: Any) -> str:
    """Why this vision tower cannot be traced, or "" when it can."""
    # lazy: the backend loads with the model, not at plugin discovery
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        return f"vision tower {type(visual).__name__} is not open_clip's VisionTransformer"
    if visual.attn_pool is not None or visual.pool_type != "tok":
        return "attention trace needs a CLS readout (pool_type 'tok', no attention pool)"
    blocks = visual.transformer.resblocks
    if not all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in blocks):
        return "attention trace needs plain ResidualAttentionBlocks (custom blocks: qk-norm, scaled cosine attention)"
    attn = blocks[0].attn
    if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
        return "attention trace needs a plain fused-qkv MultiheadAttention"
    if not visual.transformer.batch_first:
        return "attention trace needs a batch-first transformer"
    return ""


class OpenClipTracer:
    """Runs a traced forward of one open_clip VisionTransformer (see :func:`trace_unsupported`)."""

    n_prefix = 1

    def __init__(self, visual: Any):
        self.visual = visual

    def __call__(self, pixels: Any) -> Any:
        v = self.visual
        x = v._embeds(pixels)
        attentions = []
        blocks = list(v.transformer.resblocks)
        last_input = x
        readout = None
        for i, blk in enumerate(blocks):
            last_input = x
            x, (q, k, val, out, probs) = self._block(blk, x)
            attentions.append(probs)
            if i == len(blocks) - 1:
                readout = cls_readout(q, k, val, out)
        assert readout is not None  # a VisionTransformer has at least one block
        pooled, _ = v._pool(x)
        emb = pooled @ v.proj if v.proj is not None else pooled
        return Trace(emb, attentions, last_input, readout, cls_pool(x), self.n_prefix)

    @staticmethod
    def _block(blk: Any, x: Any) -> tuple[Any, tuple[Any, ...]]:
        """``ResidualAttentionBlock.forward`` with the attention written out: (new x, (q, k, v, out, probs))."""

        attn = blk.attn
        q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        out, probs = attend(q, k, v, attn.num_heads)
        x = x + blk.ls_1(attn.out_proj(out))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, (q, k, v, out, probs)
