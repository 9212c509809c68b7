"""``gradcam``: Grad-CAM (Selvaraju et al., 2017) for ViTs, on the last block.

Activations are the tokens ENTERING the last block, before its first LayerNorm (the last block's output patch
tokens never reach a CLS readout, so their gradient is zero). Channel weights are the gradients of
s = cos(image, text(class)) averaged over the patches, CLS excluded; a patch's importance is ReLU(sum_c w_c A_nc).
One traced forward and one backward per batch per explained class.

Neither named reference is matched exactly (measured on the clean demo model by the science audit, issue 23;
none of the three variants beats the random baseline on pixel curves there): pytorch-grad-cam's ViT recipe hooks
``blocks[-1].norm1`` and stores its OUTPUT (post-LayerNorm) and that output's gradient; Grad-ECLIP's own Grad-CAM
baseline (``generate_emap.py::grad_cam``) uses the block input, as here, but averages the gradient over all tokens
including CLS.
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
