"""Built-in plugin: the ``cci`` attributor (DESIGN 7) and its ``random`` baseline.

Factories take the CCI settings as keyword arguments (``k``, ``layer``, ``target``, ``seed``,
``attribute_on``, ``kmeans_iters``, ``kmeans_n_init``, ``save_maps``, ``only_with_masks``, ``counterfactual``,
``cf_threshold``) and return a
BatchStep. The step module (and torch) is imported only when a factory is called, so plugin discovery,
``--help`` and ``ls`` stay torch-free.

Each attributor declares the K it allows (``k_range``, registered with it and checked when the step is built,
so a bad ``--cci-k`` is exit 2 before any model loads): CCI and the random baseline 2..64, cluster Shapley
2..10 (2^K removal passes per image): ``covar_harness.attribution.K_RANGES``.
"""

from __future__ import annotations

from typing import Any

from covar_harness.attribution import K_RANGES  # no torch at import
from covar_harness.hookspecs import hookimpl


def make_cci(**settings: Any):
    """CCI: importance of each k-means cluster of patch tokens = relative drop of cos(image, text) on removal."""
    from covar_harness.attribution import AttributionStep

    return AttributionStep("cci", **settings)


def make_cci_shapley(**settings: Any):
    """CCI's clusters with exact Shapley values for s (all 2^K coalitions in one batched removal call): credits a
    cue spread over many clusters, which leave-one-cluster-out misses. Refuses K > 10."""
    from covar_harness.attribution import AttributionStep

    return AttributionStep("cci-shapley", **settings)


def make_random(**settings: Any):
    """Same clusters as CCI, importances drawn uniformly in [0, 1) with the seed: the floor for comparisons."""
    from covar_harness.attribution import AttributionStep

    return AttributionStep("random", **settings)


@hookimpl
def register_attributors(register):
    register("cci", make_cci, k_range=K_RANGES["cci"],
             description="Cluster-based Concept Importance: k-means on patch tokens, relative similarity drop "
                         "when a cluster is removed (K+1 passes, K <= 64)")
    register("cci-shapley", make_cci_shapley, k_range=K_RANGES["cci-shapley"],
             description="exact Shapley values of CCI's K clusters (2^K coalition passes, K <= 10); also logs "
                         "the leave-one-out CCI record")
    register("random", make_random, k_range=K_RANGES["random"],
             description="baseline: CCI's clusters with random importances (seeded)")
