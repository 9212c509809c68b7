"""Faithfulness of attributions (issue 15): deletion / insertion curves and AUC under a curve protocol (the
harness's own ``patches``, by pixel replacement and by token removal; Grad-ECLIP's; RISE's), localisation against
masks (energy pointing game, Quantus' relevance-rank accuracy), and paired per-image differences from two random
baselines, for any registered attributor's per-patch importance map over any task.

Modules: ``settings`` (:class:`FaithfulnessSettings`), ``protocols`` (one class per curve protocol),
``curves`` (the patch curves, one model call per curve per batch), ``localisation``, ``importance`` (any attributor's
map), ``step`` (every method's curves for a batch, a step of the run's one per-sample pass), ``evaluate`` (one model
x task through that pass), ``summary`` (metrics, intervals, result files, table rows), ``plots``
(PNG, matplotlib imported there only) and ``command`` (``covar-harness faithfulness``). The result schema is
``results.faithfulness`` and the leaderboard's table ``leaderboard.faithfulness``: ``validate`` and
``leaderboard`` import nothing from this package. The names below load their module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Curves": "curves",
    "Scorer": "curves",
    "auc": "curves",
    "pixel_curves": "curves",
    "token_curves": "curves",
    "pointing_energy": "localisation",
    "relevance_rank_accuracy": "localisation",
    "FaithfulnessSettings": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
