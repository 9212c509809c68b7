"""Attributors: small strategies over one clustering-and-removal engine (:func:`~covar_harness.attribution.engine.
attribute`).

The engine does what every method shares: patch tokens -> per-image k-means -> ONE removal call for the patterns
of the method (and the counterfactual region test) -> the batch's records. A method is one :class:`Attributor`
subclass that declares its ``name``, ``description``, the K it allows (``k_range``) and the adapter members it
needs (``needs``), and implements two hooks: ``patterns`` (what to remove, (B, P, N)) and ``scores`` (importances
from the embeddings without those patterns). No table or switch elsewhere names the methods: the plugin that
provides one registers it with one line, ``MyMethod.register_with(register)`` inside ``register_attributors``,
and a name is found in the catalog, the one registry (:func:`find_attributor`): a class nobody registered is not
found by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from covar_harness.attribution.settings import MAX_K, CCISettings, is_int
from covar_harness.catalog.plugin_manager import ALLOW_ENV, Catalog, load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.models.adapter import attribution_support, implements

if TYPE_CHECKING:
    import torch

    from covar_harness.attribution.shapley import ShapleyValues
    from covar_harness.attribution.step import AttributionStep


@dataclass
class ClusterBatch:
    """What every attributor starts from: one batch, its clusters and its similarity before any removal."""

    adapter: Any
    pixels: torch.Tensor  # (B, 3, H, W)
    emb: torch.Tensor  # (B, D) float32, L2-normalised image embeddings
    text: torch.Tensor  # (B, D) float32, L2-normalised class embeddings of ``target``
    target: torch.Tensor  # (B,) class index explained
    seeds: Sequence[int]  # one per image (``engine.sample_seed``)
    settings: CCISettings
    labels: torch.Tensor  # (B, N) cluster id per patch, raster order
    patterns: torch.Tensor  # (B, K, N) leave-one-cluster-out drop patterns (invalid clusters: all False)
    valid: torch.Tensor  # (B, K) the cluster is non-empty and not every patch
    s: torch.Tensor  # (B,) cos(image, text(target))

    @property
    def k(self) -> int:
        return self.settings.k


@dataclass
class Scores:
    """An attributor's answer for a batch. ``importance`` (B, K) is what diagnosis reads (I_k); ``drop`` (B, K)
    is logged when given; ``s`` replaces the batch's s when the method recomputes it; ``patch`` (B, N) is the
    per-patch map of a method that scores patches (occlusion), else each patch carries its cluster's I_k."""

    importance: torch.Tensor
    drop: torch.Tensor | None = None
    s: torch.Tensor | None = None
    shapley: ShapleyValues | None = None
    patch: torch.Tensor | None = None  # (B, N) per-patch importance, for methods finer than the clusters


class Attributor:
    """One attribution method. Subclasses set the class attributes and implement :meth:`scores` (and
    :meth:`patterns` when they remove anything); the engine does the rest."""

    name: ClassVar[str] = ""  # --attribution NAME
    description: ClassVar[str] = ""  # shown by `covar-harness ls attributors`
    k_range: ClassVar[tuple[int, int]] = (2, MAX_K)  # the --cci-k it allows, checked before any model loads
    # adapter members it uses beyond the engine's own (``adapter.ATTRIBUTION_MEMBERS``); lacking one: skipped
    needs: ClassVar[tuple[str, ...]] = ()

    def patterns(self, batch: ClusterBatch) -> torch.Tensor:
        """(B, P, N) bool drop patterns for the engine's one removal call; none by default."""
        return batch.patterns[:, :0]

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        """Importances from ``without`` (B, P, D), the L2-normalised embeddings with each of :meth:`patterns`
        removed, and ``ran`` (B, P), False where a pattern removed every patch and could not run (its embedding
        must not be used). Both None when :meth:`patterns` gave none."""
        raise NotImplementedError

    def leave_one_out(self, batch: ClusterBatch, without: torch.Tensor | None) -> torch.Tensor | None:
        """(B, K, D) the normalised embeddings with each cluster removed on its own, read from ``without`` (the
        embeddings of :meth:`patterns`), or None when the method removes no cluster on its own. Later steps (concept
        naming, docs/design.md section 11) name each cluster from them without another model call."""
        return None

    def config(self, adapter: Any, settings: CCISettings) -> dict[str, Any]:
        """Method-specific entries of the result's ``config.attribution`` (how a convention was resolved)."""
        return {}

    @classmethod
    def check_k(cls, k: Any) -> None:
        """Raise UsageError (one line) when this method does not allow ``k`` clusters. Why here: the CLI builds
        the steps before any model loads, so a bad ``--cci-k`` exits 2 without a download."""
        lo, hi = cls.k_range
        if not is_int(k) or not lo <= k <= hi:
            raise UsageError(f"--cci-k {k} is outside what {cls.name} allows: {lo}..{hi}")

    @classmethod
    def supported_by(cls, adapter: Any) -> tuple[bool, str]:
        """(supported, why not): the adapter may say no (``supports_attribution = False``) or lack a member the
        engine (``adapter.attribution_support``) or this method (``needs``) uses."""
        supported, why = attribution_support(adapter)
        lacking = [m for m in cls.needs if not implements(adapter, m)]
        if supported and lacking:
            return False, f"adapter lacks {', '.join(lacking)}"
        return supported, why

    @classmethod
    def make_step(cls, **settings: Any) -> AttributionStep:
        """The registered factory: an attribution step running this method (keyword settings as the CLI offers
        them, see ``AttributionSettings.from_flat``)."""
        from covar_harness.attribution.step import AttributionStep  # cycle: the step module builds on this one

        return AttributionStep(cls, **settings)

    @classmethod
    def register_with(cls, register: Callable[..., None]) -> None:
        """Register this method with a ``register_attributors`` hook's ``register``."""
        register(cls.name, cls.make_step, k_range=cls.k_range, description=cls.description)


def find_attributor(method: str | type[Attributor] | Attributor, catalog: Catalog | None = None) -> type[Attributor]:
    """The Attributor class of ``method`` (a name, a class or an instance). A name is looked up in ``catalog``
    (default: the plugins installed, as ``COVAR_HARNESS_PLUGINS`` allows): an unknown name is a UsageError with
    close matches, and a registered factory that is not an Attributor's (a custom step) has no importance maps."""
    if isinstance(method, Attributor):
        return type(method)
    if isinstance(method, type) and issubclass(method, Attributor):
        return method
    entry = (catalog or _installed_catalog(os.environ.get(ALLOW_ENV))).attributors.entry(str(method))
    cls = getattr(entry.item, "__self__", None)  # Attributor.register_with registers the bound cls.make_step
    if not (isinstance(cls, type) and issubclass(cls, Attributor)):
        raise UsageError(f"attributor {entry.name!r} is a custom step, not an Attributor: it gives no importance maps")
    return cls


@lru_cache(maxsize=4)
def _installed_catalog(allow: str | None) -> Catalog:
    """The catalog of the installed plugins, once per process and allow-list (building it reads entry points)."""
    return load_catalog(allow=allow)


def check_k(method: str | type[Attributor], k: Any) -> None:
    """``find_attributor(method).check_k(k)``: an unknown method or a K it does not allow is one UsageError."""
    find_attributor(method).check_k(k)
