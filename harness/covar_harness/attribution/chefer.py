"""``chefer``: Chefer et al.'s transformer attribution (2021, "Transformer Interpretability Beyond Attention
Visualization"), in the gradient-weighted attention form of their CLIP notebook (Transformer-MM-Explainability).

R starts as the identity; every block adds mean_heads(clamp(dA * A, min=0)) @ R, where A is the block's attention
probabilities and dA the gradient of s = cos(image, text(class)) with respect to them. A patch's importance is the
readout's row of R (the CLS row, or an attention-pool head's weights ``Trace.pool``) at that patch. All blocks
are used: Chefer's generic-attention rule for ViTs. Their CLIP notebook's default is different, ``start_layer =
-1``, the last block only; this module does not offer that variant (issue 23 leaves it open). One traced forward
and one backward per batch per explained class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.attribution.attention_trace import Trace, TraceAttributor, gradients, traced_scores

if TYPE_CHECKING:
    import torch


class Chefer(TraceAttributor):
    name = "chefer"
    description = "baseline: Chefer et al. 2021, gradient-weighted attention relevance (1 forward + 1 backward/class)"

    def patch_map(self, adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        trace, s = traced_scores(adapter, pixels, text)
        return chefer_map(trace, s)


def chefer_map(trace: Trace, s: torch.Tensor) -> torch.Tensor:
    """(B, N) relevance of the patches from a trace and its scores s (B,) in the graph."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    grads = gradients(s, trace.attentions)
    B, _, T, _ = trace.attentions[0].shape
    relevance = torch.eye(T, device=s.device).expand(B, T, T)
    for probs, grad in zip(trace.attentions, grads):
        cam = (grad.float() * probs.detach().float()).clamp(min=0).mean(dim=1)
        relevance = relevance + cam @ relevance
    return (trace.pool.detach().float()[:, None, :] @ relevance)[:, 0, trace.n_prefix :]
