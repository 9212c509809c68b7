"""``chefer``: Chefer et al.'s transformer attribution (2021, "Transformer Interpretability Beyond Attention
Visualization"), in the gradient-weighted attention form of their CLIP notebook (Transformer-MM-Explainability).

R starts as the identity; every block adds mean_heads(clamp(dA * A, min=0)) @ R, where A is the block's attention
probabilities and dA the gradient of s = cos(image, text(class)) with respect to them. A patch's importance is the
readout's row of R (the CLS row, or an attention-pool head's weights ``Trace.pool``) at that patch.

Which blocks: ``start_layer``, as in their CLIP notebook's ``interpret(..., start_layer=-1)``: blocks before it
are skipped (``if i < start_layer: continue``), and -1 means the last block only, the notebook's default.
``chefer`` uses every block (start_layer 0: Chefer's generic-attention rule for ViTs); ``chefer-last`` is the
notebook's default. Another start: a subclass with its own ``start_layer``. One traced forward and one backward
per batch per explained class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from covar_harness.attribution.attention_trace import Trace, TraceAttributor, gradients, traced_scores

if TYPE_CHECKING:
    import torch


class Chefer(TraceAttributor):
    name = "chefer"
    description = "baseline: Chefer et al. 2021, gradient-weighted attention relevance (1 forward + 1 backward/class)"
    start_layer: ClassVar[int] = 0  # every block

    def patch_map(self, adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        trace, s = traced_scores(adapter, pixels, text)
        return chefer_map(trace, s, self.start_layer)

    def config(self, adapter: Any, settings: Any) -> dict[str, Any]:
        return {"chefer": {"start_layer": self.start_layer}}


class CheferLast(Chefer):
    name = "chefer-last"
    description = "baseline: Chefer et al. 2021 as their CLIP notebook's default, start_layer -1 (the last block only)"
    start_layer: ClassVar[int] = -1


def first_block(n_blocks: int, start_layer: int) -> int:
    """The first block used: ``start_layer``, where -1 is the last block (the notebook's ``len(blocks) - 1``)."""
    first = n_blocks - 1 if start_layer == -1 else start_layer
    if not 0 <= first < n_blocks:
        raise ValueError(f"chefer start_layer {start_layer}: the model has {n_blocks} traced blocks")
    return first


def chefer_map(trace: Trace, s: torch.Tensor, start_layer: int = 0) -> torch.Tensor:
    """(B, N) relevance of the patches from a trace and its scores s (B,) in the graph, over the blocks from
    ``start_layer`` on (-1: the last one only)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    first = first_block(len(trace.attentions), start_layer)
    used = trace.attentions[first:]
    grads = gradients(s, used)
    B, _, T, _ = trace.attentions[0].shape
    relevance = torch.eye(T, device=s.device).expand(B, T, T)
    for probs, grad in zip(used, grads):
        cam = (grad.float() * probs.detach().float()).clamp(min=0).mean(dim=1)
        relevance = relevance + cam @ relevance
    return (trace.pool.detach().float()[:, None, :] @ relevance)[:, 0, trace.n_prefix :]
