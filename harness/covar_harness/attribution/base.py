"""Attributors: small strategies over one clustering-and-removal engine (:func:`~covar_harness.attribution.engine.
attribute`).

The engine does what every method shares: patch tokens -> per-image k-means -> ONE removal call for the patterns
of the method (and the counterfactual region test) -> the batch's records. A method is one :class:`Attributor`
subclass that declares its ``name``, ``description``, the K it allows (``k_range``) and the adapter members it
needs (``needs``), and implements two hooks: ``patterns`` (what to remove, (B, P, N)) and ``scores`` (importances
from the embeddings without those patterns). No table or switch elsewhere names the methods: the step finds a
method by name among the subclasses (:func:`find_attributor`), and the plugin that provides it registers it with
one line, ``MyMethod.register_with(register)`` inside ``register_attributors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from covar_harness.attribution.settings import MAX_K, CCISettings, is_int
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


def attributor_classes() -> list[type[Attributor]]:
    """Every named Attributor subclass defined so far, in definition order (the built-ins first)."""
    out: list[type[Attributor]] = []
    pending = list(Attributor.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if cls.name and all(c.name != cls.name for c in out):
            out.append(cls)
        pending += cls.__subclasses__()
    return out


def find_attributor(method: str | type[Attributor] | Attributor) -> type[Attributor]:
    """The Attributor class of ``method`` (a name, a class or an instance); UsageError for an unknown name."""
    if isinstance(method, Attributor):
        return type(method)
    if isinstance(method, type) and issubclass(method, Attributor):
        return method
    for cls in attributor_classes():
        if cls.name == method:
            return cls
    names = ", ".join(c.name for c in attributor_classes())
    raise UsageError(f"unknown attribution method {method!r}; choose from {names}")


def check_k(method: str | type[Attributor], k: Any) -> None:
    """``find_attributor(method).check_k(k)``: an unknown method or a K it does not allow is one UsageError."""
    find_attributor(method).check_k(k)
