"""What the gradient and attention baselines (``gradcam``, ``rollout``, ``chefer``, ``grad-eclip``) share: the
:class:`Trace` an adapter's ``attention_trace`` returns, the attention arithmetic the adapters' traced forwards
use (:func:`attend`), and :class:`TraceAttributor`, the engine-side base class of the four methods.

A trace is one differentiable forward of the vision tower that keeps, in the autograd graph, each block's
attention probabilities, the last block's input tokens and the attention that reads the embedding out (the CLS
row of the last block, or an attention-pool head). Each method reads what it needs; a gradient method does ONE
backward per batch per explained class: the sum over the batch of cos(image_b, text_b) is differentiated, and
since images do not interact, each image gets its own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores

if TYPE_CHECKING:
    import torch


@dataclass
class Readout:
    """The attention that reads the embedding out of the last tokens, at its query (Grad-ECLIP's "last
    attention"): the CLS query of the last block for CLS-readout towers, the probe of an attention-pool head
    otherwise. Heads are concatenated (channel c of head h is c // head_dim == h)."""

    query: torch.Tensor  # (B, C) the readout query's projection q
    keys: torch.Tensor  # (B, T, C) k of every token it attends to
    values: torch.Tensor  # (B, T, C) v of every token
    attended: torch.Tensor  # (B, Tq, C) that attention's output, before the output projection, as the forward
    # used it (a slice taken afterwards would not be in the graph): the readout query is row ``row``
    row: int = 0


@dataclass
class Trace:
    """One differentiable forward of a ViT image tower (``BaseAdapter.attention_trace``). T tokens = ``n_prefix``
    prefix tokens (CLS) then the N patches in raster order; every tensor is in the autograd graph."""

    embedding: torch.Tensor  # (B, D) the image embedding, as ``encode_images`` returns it (not normalised)
    attentions: list[torch.Tensor]  # per block, (B, H, T, T) attention probabilities
    last_input: torch.Tensor  # (B, T, C) tokens entering the last block (Grad-CAM's activations)
    readout: Readout
    pool: torch.Tensor  # (B, T) how the embedding weighs the last block's output tokens: one-hot on CLS for a
    # CLS readout, the pool head's attention (mean over heads) for an attention-pool tower
    n_prefix: int


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out, so the probabilities stay in the graph: q (B, Tq, C), k and v
    (B, T, C), ``mask`` additive, broadcastable to (B, heads, Tq, T) -> (output (B, Tq, C) heads concatenated,
    probabilities (B, heads, Tq, T))."""
    B, Tq, C = q.shape
    d = C // heads
    qh = q.reshape(B, Tq, heads, d).transpose(1, 2)
    kh = k.reshape(B, -1, heads, d).transpose(1, 2)
    vh = v.reshape(B, -1, heads, d).transpose(1, 2)
    logits = (qh @ kh.transpose(-1, -2)) * d**-0.5
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1)
    return (probs @ vh).transpose(1, 2).reshape(B, Tq, C), probs


def cls_readout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> Readout:
    """The :class:`Readout` of a CLS-readout tower from its last block's q, k, v and attention output (CLS at 0)."""
    return Readout(q[:, 0], k, v, out, 0)


def cls_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, T) one-hot on the CLS token (index 0) for tokens ``x`` (B, T, C): a CLS readout's ``Trace.pool``."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    pool = torch.zeros(x.shape[:2], device=x.device, dtype=torch.float32)
    pool[:, 0] = 1.0
    return pool


def traced_scores(adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> tuple[Trace, torch.Tensor]:
    """(trace, s): a traced forward with gradients on, and s (B,) = cos(image_b, text_b) in the graph. Works
    under the callers' ``no_grad``; inputs made in inference mode are cloned into normal tensors first."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    with torch.inference_mode(False), torch.enable_grad():
        # the pixels require grad so the graph exists even for a model with frozen weights
        trace = adapter.attention_trace(pixels.clone().float().requires_grad_(True))
        emb = F.normalize(trace.embedding.float(), dim=-1)
        s = (emb * text.clone().float().to(emb.device)).sum(dim=-1)
    return trace, s


def gradients(s: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """d(sum_b s_b)/d tensors: one backward for the whole batch (images are independent, so row b of each
    gradient is image b's own)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    with torch.inference_mode(False), torch.enable_grad():
        return list(torch.autograd.grad(s.sum(), tensors))


class TraceAttributor(Attributor):
    """Base of the methods that read an :class:`Trace`: they remove nothing, score each patch from the trace
    (:meth:`patch_map`) and give a cluster the sum of its patches' scores (what diagnosis reads), keeping the
    per-patch map (``Scores.patch``) for maps and faithfulness curves."""

    needs: ClassVar[tuple[str, ...]] = ("attention_trace",)

    def patch_map(self, adapter: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, N) importance of each patch for the class whose normalised text embedding is ``text`` (B, D)."""
        raise NotImplementedError

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        patch = self.patch_map(batch.adapter, batch.pixels, batch.text).detach().float().to(batch.s.device)
        clusters = torch.zeros(patch.shape[0], batch.k, device=patch.device, dtype=patch.dtype)
        clusters.scatter_add_(1, batch.labels.to(patch.device), patch)
        return Scores(clusters * batch.valid.to(patch.device), patch=patch)
