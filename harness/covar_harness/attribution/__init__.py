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

Adding a method is one Attributor subclass plus ``Method.register_with(register)`` in a ``register_attributors``
hook (CONTRIBUTING). torch is imported inside functions, so importing this package (plugin discovery,
``--help``, ``--dry-run``) stays light.
"""

from __future__ import annotations

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores, check_k, find_attributor
from covar_harness.attribution.cci import CCI, EPS, cci_from_embeddings, relative_importance
from covar_harness.attribution.engine import Attribution, attribute, check_model, cluster, cluster_patterns, sample_seed
from covar_harness.attribution.kmeans import KMEANS_BUDGET_BYTES, KMeansResult, batched_kmeans, kmeans_plusplus, lloyd
from covar_harness.attribution.random_baseline import RandomBaseline, RandomPatch
from covar_harness.attribution.records import AttributionRecord, CCIRecord, RegionRecord, ShapleyRecord, short
from covar_harness.attribution.regions import OUTCOMES, RegionTest, region_outcome, region_patterns, region_test
from covar_harness.attribution.removal import (
    PATTERN_ROWS,
    can_remove_all_patches,
    encode_patterns,
    encode_without,
    grid_size,
    layer_supported,
    patch_tokens,
)
from covar_harness.attribution.settings import (
    ATTRIBUTE_ON,
    DEFAULTS,
    MAX_ITERS,
    MAX_K,
    MAX_N_INIT,
    TARGETS,
    AttributionSettings,
    CCISettings,
)
from covar_harness.attribution.shapley import (
    MAX_SHAPLEY_K,
    CCIShapley,
    ShapleyValues,
    canonical_coalitions,
    coalition_patterns,
    coalition_table,
    shapley_from_values,
    shapley_game,
)
from covar_harness.attribution.step import AttributionStep, summarise

__all__ = [
    "ATTRIBUTE_ON",
    "CCI",
    "DEFAULTS",
    "EPS",
    "KMEANS_BUDGET_BYTES",
    "MAX_ITERS",
    "MAX_K",
    "MAX_N_INIT",
    "MAX_SHAPLEY_K",
    "OUTCOMES",
    "PATTERN_ROWS",
    "TARGETS",
    "Attribution",
    "AttributionRecord",
    "AttributionSettings",
    "AttributionStep",
    "Attributor",
    "CCIRecord",
    "CCISettings",
    "CCIShapley",
    "ClusterBatch",
    "KMeansResult",
    "RandomBaseline",
    "RandomPatch",
    "RegionRecord",
    "RegionTest",
    "Scores",
    "ShapleyRecord",
    "ShapleyValues",
    "attribute",
    "batched_kmeans",
    "can_remove_all_patches",
    "canonical_coalitions",
    "cci_from_embeddings",
    "check_k",
    "check_model",
    "cluster",
    "cluster_patterns",
    "coalition_patterns",
    "coalition_table",
    "encode_patterns",
    "encode_without",
    "find_attributor",
    "grid_size",
    "kmeans_plusplus",
    "layer_supported",
    "lloyd",
    "patch_tokens",
    "region_outcome",
    "region_patterns",
    "region_test",
    "relative_importance",
    "sample_seed",
    "shapley_from_values",
    "shapley_game",
    "short",
    "summarise",
]
