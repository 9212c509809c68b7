"""``gradcam``: Grad-CAM (Selvaraju et al., 2017) for ViTs, on the last block.

Activations are the tokens ENTERING the last block (what pytorch-grad-cam's ViT recipe hooks, ``blocks[-1].norm1``
before its norm, and what Grad-ECLIP's own Grad-CAM baseline uses): the last block's output patch tokens never
reach a CLS readout, so their gradient is zero. Channel weights are the gradients of s = cos(image, text(class))
averaged over the patches; a patch's importance is ReLU(sum_c w_c A_nc). One traced forward and one backward per
batch per explained class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.attribution.attention_trace import Trace, TraceAttributor, gradients, traced_scores

if TYPE_CHECKING:
    import torch


class GradCAM(TraceAttributor):
    name = "gradcam"
    description = "baseline: Grad-CAM on the last block's input tokens (1 forward + 1 backward/class)"

    def patch_map(self, adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        trace, s = traced_scores(adapter, pixels, text)
        return gradcam_map(trace, s)


def gradcam_map(trace: Trace, s: torch.Tensor) -> torch.Tensor:
    """(B, N) Grad-CAM of the patches from a trace and its scores s (B,) in the graph."""
    (grad,) = gradients(s, [trace.last_input])
    p = trace.n_prefix
    acts, grad = trace.last_input[:, p:].detach().float(), grad[:, p:].float()
    weights = grad.mean(dim=1, keepdim=True)  # (B, 1, C): gradient averaged over the patches
    return (weights * acts).sum(dim=-1).clamp_min(0)
