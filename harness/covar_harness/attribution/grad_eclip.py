"""``grad-eclip``: Grad-ECLIP (Zhao et al., ICML 2024, "Gradient-based Visual Explanation for Transformer-based
CLIP"; reference code github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py::grad_eclip``), written anew here.

On the attention that reads the embedding out (the CLS row of the last block; an attention-pool head's probe for
SigLIP, ``Trace.readout``):

- channel weights w_c: the gradient of s = cos(image, text(class)) with respect to that attention's output at the
  readout query (heads concatenated, before the output projection);
- spatial weights l_i: the cosine of the readout query q and each patch's key k_i, min-max normalised over the
  patches (the paper's "loosened" attention, instead of the softmax);
- a patch's importance: ReLU(sum_c w_c * l_i * v_ic), with v_i the patch's value.

As in the reference code, q and k are the raw projections of all heads together. One traced forward and one
backward per batch per explained class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.attribution.attention_trace import Trace, TraceAttributor, gradients, traced_scores

if TYPE_CHECKING:
    import torch

EPS = 1e-12


class GradECLIP(TraceAttributor):
    name = "grad-eclip"
    description = "baseline: Grad-ECLIP, gradient channels x loosened q-k attention (1 forward + 1 backward/class)"

    def patch_map(self, adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        trace, s = traced_scores(adapter, pixels, text)
        return grad_eclip_map(trace, s)


def grad_eclip_map(trace: Trace, s: torch.Tensor) -> torch.Tensor:
    """(B, N) Grad-ECLIP map of the patches from a trace and its scores s (B,) in the graph."""
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    r, p = trace.readout, trace.n_prefix
    grad = gradients(s, [r.attended])[0][:, r.row]  # (B, C) at the readout query
    q = F.normalize(r.query.detach().float(), dim=-1)
    k = F.normalize(r.keys[:, p:].detach().float(), dim=-1)
    cos = (k @ q[:, :, None])[..., 0]  # (B, N)
    lo, hi = cos.min(dim=1, keepdim=True).values, cos.max(dim=1, keepdim=True).values
    loose = (cos - lo) / (hi - lo).clamp_min(EPS)
    channel = (grad.float()[:, None, :] * r.values[:, p:].detach().float()).sum(dim=-1)  # (B, N)
    return F.relu(channel * loose)
