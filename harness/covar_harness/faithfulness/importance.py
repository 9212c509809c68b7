"""Any registered attributor's per-patch importance map for a batch, as the faithfulness metrics read it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from covar_harness.attribution.base import find_attributor
from covar_harness.attribution.engine import attribute, check_model

if TYPE_CHECKING:
    import torch

    from covar_harness.attribution.base import Attributor
    from covar_harness.attribution.settings import CCISettings


class Unsupported(Exception):
    """The method cannot explain this model (one line: why)."""


def importance_maps(
    method: str | type[Attributor],
    adapter: Any,
    pixels: torch.Tensor,
    emb: torch.Tensor,
    text: torch.Tensor,
    target: torch.Tensor,
    seeds: Sequence[int],
    settings: CCISettings,
) -> torch.Tensor:
    """(B, N) importance of every patch for the explained class (``text`` (B, D) normalised), on CPU. Methods
    over the clustering-and-removal engine run through ``attribution.engine.attribute``; a method the adapter cannot
    run that has ``pixel_importance`` (occlusion) uses it; anything else raises :class:`Unsupported`."""

    cls = find_attributor(method)
    ok, why = cls.supported_by(adapter)
    if ok:
        check_model(adapter, settings, cls)
        result = attribute(adapter, pixels, emb, text, target, seeds, settings, cls)
        return result.patch_importance().float().cpu()
    fallback = getattr(cls, "pixel_importance", None)
    if callable(fallback):
        return fallback(adapter, pixels, text).float().cpu()
    raise Unsupported(f"{cls.name}: {why}")
