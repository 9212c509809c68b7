"""Attribution (docs/design.md section 7): attributors as small strategies over one clustering-and-removal engine.

Modules:

- ``settings``: :class:`CCISettings`, the one source of every CCI default, limit and flag; ``AttributionSettings``.
- ``kmeans``: batched k-means in torch (k-means++ seeding, Lloyd, restarts side by side).
- ``removal``: the removal engine, ONE ``encode_images_without`` call for every pattern of a batch.
- ``base``: the :class:`Attributor` strategy (name, K range, adapter needs, ``patterns`` and ``scores`` hooks).
- ``engine``: :func:`attribute`, clusters -> patterns -> one removal call -> scores -> :class:`Attribution`.
- ``cci``, ``shapley``, ``random_baseline``: the built-in methods, one class each.
- ``regions``: the counterfactual region test (foreground only / background only), riding the same call.
- ``records``: the typed per-sample records written to the sample log.
- ``overlays``: drawing an importance map as a PNG (the maps step, ``results.maps``, and ``explain`` use it).
- ``step``: :class:`AttributionStep`, the pipeline step.

The package exports what a plugin author writes a method or a step against (``Attributor``, ``ClusterBatch``,
``Scores``, ``CCISettings``, ``AttributionRecord``, ``AttributionStep``); everything else is imported from its
module. Adding a method is one Attributor subclass plus ``Method.register_with(register)`` in a
``register_attributors`` hook (CONTRIBUTING). The modules that plugin discovery, ``--help`` and ``--dry-run``
load import torch inside functions, so importing this package stays light.
"""

from __future__ import annotations

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores
from covar_harness.attribution.records import AttributionRecord
from covar_harness.attribution.settings import CCISettings
from covar_harness.attribution.step import AttributionStep

__all__ = ["AttributionRecord", "AttributionStep", "Attributor", "CCISettings", "ClusterBatch", "Scores"]
