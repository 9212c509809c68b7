"""``rollout``: attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Each block's attention, averaged over heads, gets the residual path added (0.5 A + 0.5 I, rows renormalised) and
the blocks are multiplied from the first to the last; a patch's importance is what the embedding's readout (the
CLS row, or an attention-pool head's weights, ``Trace.pool``) draws from it through the product. It does not
depend on the explained class (the same map for every class) and needs no backward: one traced forward per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covar_harness.attribution.attention_trace import TraceAttributor

if TYPE_CHECKING:
    import torch


class Rollout(TraceAttributor):
    name = "rollout"
    description = "baseline: attention rollout (class-agnostic, 1 forward, no backward)"

    def patch_map(self, adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        with torch.no_grad():
            trace = adapter.attention_trace(pixels)
            return rollout_map([a.detach() for a in trace.attentions], trace.pool.detach(), trace.n_prefix)


def rollout_map(attentions: list[torch.Tensor], pool: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """(B, N) rollout from per-block probabilities (B, H, T, T) and the readout's weights ``pool`` (B, T)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    B, _, T, _ = attentions[0].shape
    eye = torch.eye(T, device=attentions[0].device)
    joint = eye.expand(B, T, T)
    for probs in attentions:
        a = 0.5 * probs.float().mean(dim=1) + 0.5 * eye
        joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
    return (pool.float()[:, None, :] @ joint)[:, 0, n_prefix:]
