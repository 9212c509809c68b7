"""Faithfulness of attributions (issue 15): deletion / insertion curves and AUC (Grad-ECLIP protocol) by pixel
replacement and by token removal, and localisation against masks (energy pointing game, Quantus' relevance-rank
accuracy), for any registered attributor's per-patch importance map over any task.

Modules: ``settings`` (:class:`FaithfulnessSettings`), ``patches`` (patch geometry, order, canvases),
``curves`` (the curves, one model call per curve per batch), ``localisation``, ``importance`` (any attributor's
map), ``evaluate`` (one model x task), ``summary`` (metrics, intervals, result files, table rows), ``plots``
(PNG, matplotlib imported there only) and ``command`` (``covar-harness faithfulness``). torch is imported inside
functions.
"""

from __future__ import annotations

from covar_harness.faithfulness.curves import Curves, Scorer, auc, pixel_curves, token_curves
from covar_harness.faithfulness.localisation import pointing_energy, relevance_rank_accuracy
from covar_harness.faithfulness.settings import FaithfulnessSettings

__all__ = [
    "Curves",
    "FaithfulnessSettings",
    "Scorer",
    "auc",
    "pixel_curves",
    "pointing_energy",
    "relevance_rank_accuracy",
    "token_curves",
]
