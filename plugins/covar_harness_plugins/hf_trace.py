"""The attention trace (``BaseAdapter.attention_trace``) of transformers CLIP, SigLIP and SigLIP2 vision towers.

The adapters load with SDPA attention, which returns no probabilities (``output_attentions`` needs the eager
implementation, and switching a loaded model's implementation would change every other call). So the encoder
layers are run here with their own modules and the attention written out
(:func:`covar_harness.attribution.attention_trace.attend`): same weights, same order of operations as
``get_image_features``; the equality is tested (tests/attribution/). The readout attention is the
CLS row of the last layer for CLIP and the attention-pool head's probe for SigLIP / SigLIP2 (its ``probe``,
fused-qkv ``attention``, ``layernorm`` and ``mlp``; SigLIP2's key mask is all ones for the adapter's full grids).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from covar_harness.attribution.attention_trace import Readout, Trace, attend, cls_pool, cls_readout


class HFTracer:
    """A traced forward of one ``HFAdapter``'s vision tower (embedding through the adapter's own ``embed``)."""

    def __init__(self, adapter: Any):
        self.adapter = adapter

    def __call__(self, pixels: Any) -> Any:
        a = self.adapter
        x = a.embed(pixels)
        attentions, last_input, parts = [], x, None
        for blk in a.tower.encoder.layers:
            last_input = x
            x, parts = encoder_layer(blk, x)
            attentions.append(parts[-1])
        assert parts is not None  # an encoder has at least one layer
        if a.n_prefix:  # CLIP: CLS readout, then the projection
            emb = a.model.visual_projection(a.tower.post_layernorm(x[:, 0]))
            return Trace(emb, attentions, last_input, cls_readout(*parts[:4]), cls_pool(x), a.n_prefix)
        emb, readout, pool = pool_head(a.tower.head, a.tower.post_layernorm(x))
        return Trace(emb, attentions, last_input, readout, pool, 0)


def encoder_layer(blk: Any, x: Any) -> tuple[Any, tuple[Any, ...]]:
    """``CLIPEncoderLayer`` / ``SiglipEncoderLayer`` forward with the attention written out:
    (new x, (q, k, v, out, probs))."""

    at = blk.self_attn
    h = blk.layer_norm1(x)
    q, k, v = at.q_proj(h), at.k_proj(h), at.v_proj(h)
    out, probs = attend(q, k, v, at.num_heads)
    x = x + at.out_proj(out)
    x = x + blk.mlp(blk.layer_norm2(x))
    return x, (q, k, v, out, probs)


def pool_head(head: Any, x: Any) -> tuple[Any, Any, Any]:
    """SigLIP's multihead attention-pooling head written out: (embedding (B, D), its ``Readout``, its attention
    over the tokens (B, T), mean over heads)."""

    mha = head.attention
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    probe = head.probe.expand(x.shape[0], -1, -1)
    q, k, v = F.linear(probe, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)
    out, probs = attend(q, k, v, mha.num_heads)
    h = mha.out_proj(out)
    h = h + head.mlp(head.layernorm(h))
    return h[:, 0], Readout(q[:, 0], k, v, out, 0), probs[:, :, 0].mean(dim=1).float()


def trace_unsupported(adapter: Any) -> str:
    """Why this adapter's tower cannot be traced, or "" when it can."""
    layers = adapter.tower.encoder.layers
    if not all(hasattr(blk, "self_attn") and hasattr(blk.self_attn, "q_proj") for blk in layers):
        return "encoder layers without separate q/k/v projections"
    if not adapter.n_prefix:
        head = getattr(adapter.tower, "head", None)
        mha = getattr(head, "attention", None)
        if head is None or not hasattr(head, "probe") or getattr(mha, "in_proj_weight", None) is None:
            return "no attention-pool head with a fused-qkv MultiheadAttention"
    return ""
