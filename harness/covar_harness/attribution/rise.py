"""``rise``: RISE (Petsiuk et al., 2018) with token removal instead of pixel masking.

``n_masks`` random masks per image keep each cell of ``cell`` x ``cell`` patches with probability ``p_keep``
(random offset of the cell grid per mask, as RISE's random shift); the dropped patches are removed from attention
(all masks of a batch in the engine's ONE removal call). A patch's importance is the mean similarity of the
masks that keep it minus the mean over all masks, relative to |s| (positive: keeping the patch raises the
explained class's similarity). A cluster's importance is the sum of its patches'; the per-patch map is kept
(``Scores.patch``). Masks that would remove every patch on a model without a prefix token do not count. Seeded
per image (the engine's per-sample seed, plus ``seed``), so an image gets the same masks whatever the batch.

The numbers are one :class:`RISESettings` (flags ``--rise-*`` on ``run`` and ``faithfulness``, read from the
dataclass as for ``CCISettings``); :meth:`RISE.with_settings` gives the RISE class that uses them, and the
settings land in the result's ``config.attribution`` (``run``) or ``attribution_settings.rise`` (faithfulness).
Nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores
from covar_harness.attribution.cci import EPS
from covar_harness.attribution.settings import CCISettings, is_int
from covar_harness.attribution.step import AttributionStep
from covar_harness.catalog.registry import UsageError
from covar_harness.common.flags import cli_flags, flag, from_args
from covar_harness.models.adapter import patch_grid

if TYPE_CHECKING:
    import torch

MAX_MASKS = 8192  # one removal pass per mask: (B, M, N) patterns and B * M forwards per batch
MAX_CELL = 64  # patches per cell side; a cell wider than the grid keeps or drops the whole image
FLAG_PREFIX = "rise_"  # parsed flags land under args.rise_<field>


@dataclass(frozen=True)
class RISESettings:
    """Every knob of RISE; recorded in the result (``config.attribution`` of ``run``, ``attribution_settings.rise``
    of ``faithfulness``). Defaults are RISE's usual ones on a ViT patch grid."""

    n_masks: int = field(default=256, metadata=flag("--rise-masks", "RISE: random masks per image", "{}", type=int))
    cell: int = field(default=2, metadata=flag("--rise-cell", "RISE: mask cell side in patches", "{}", type=int))
    p_keep: float = field(
        default=0.5, metadata=flag("--rise-keep", "RISE: probability that a cell is kept", "{}", type=float)
    )
    # added to each image's seed (the attribution seed mixed with the image id): another value, other masks
    seed: int = field(
        default=0, metadata=flag("--rise-seed", "RISE: mask seed, added to each image's seed", "{}", type=int)
    )

    def __post_init__(self) -> None:
        if not is_int(self.n_masks) or not 1 <= self.n_masks <= MAX_MASKS:
            raise UsageError(f"--rise-masks must be in 1..{MAX_MASKS} (one removal pass each), got {self.n_masks}")
        if not is_int(self.cell) or not 1 <= self.cell <= MAX_CELL:
            raise UsageError(f"--rise-cell must be in 1..{MAX_CELL} patches, got {self.cell}")
        if isinstance(self.p_keep, bool) or not isinstance(self.p_keep, (int, float)) or not 0 < self.p_keep < 1:
            raise UsageError(f"--rise-keep must be in (0, 1) (0 or 1: every mask alike), got {self.p_keep}")
        if not is_int(self.seed) or self.seed < 0:
            raise UsageError(f"--rise-seed must be an integer >= 0, got {self.seed}")

    @classmethod
    def from_args(cls, args: Any, prefix: str = FLAG_PREFIX) -> RISESettings:
        """From parsed arguments (flags from ``flags.cli_flags(RISESettings, prefix)``); absent flags: defaults."""
        return cls(**from_args(cls, args, prefix))


RISE_DEFAULTS = RISESettings()


class RISE(Attributor):
    name = "rise"
    description = "baseline: RISE with token removal (random patch masks, one removal pass each; --rise-*)"
    settings: ClassVar[RISESettings] = RISE_DEFAULTS

    @classmethod
    def with_settings(cls, settings: RISESettings) -> type[RISE]:
        """The RISE class that uses ``settings`` (``cls`` itself for the defaults). A class, not an instance,
        because the engine and the attribution step take attributor classes; one class per distinct settings."""
        return cls if settings == cls.settings else _configured(cls, settings)

    @classmethod
    def make_step(cls, rise: RISESettings | None = None, **settings: Any) -> AttributionStep:
        """The registered factory: ``rise`` (offered by ``run`` from its ``--rise-*`` flags) picks the masks."""
        return RISEStep(cls if rise is None else cls.with_settings(rise), **settings)

    def config(self, adapter: Any, settings: CCISettings) -> dict[str, Any]:
        return {"rise": asdict(self.settings)}

    def patterns(self, batch: ClusterBatch) -> torch.Tensor:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        rows, cols = patch_grid(batch.adapter)
        drops = [self._masks(int(seed), rows, cols) for seed in batch.seeds]
        return torch.stack(drops).to(batch.labels.device)  # (B, M, N) drop patterns

    def _masks(self, seed: int, rows: int, cols: int) -> torch.Tensor:
        """(M, N) drop patterns for one image: coarse keep cells, shifted by a random offset per mask."""
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        s = self.settings
        g = torch.Generator().manual_seed(seed + 2 + s.seed)
        c, m = s.cell, s.n_masks
        cells = torch.rand(m, rows // c + 2, cols // c + 2, generator=g) < s.p_keep
        keep = cells.repeat_interleave(c, dim=1).repeat_interleave(c, dim=2)
        dy, dx = torch.randint(0, c, (2, m), generator=g)
        r = torch.arange(rows)[None, :, None] + dy[:, None, None]
        q = torch.arange(cols)[None, None, :] + dx[:, None, None]
        shifted = keep[torch.arange(m)[:, None, None], r, q]  # (M, rows, cols)
        return ~shifted.reshape(m, rows * cols)

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        assert without is not None and ran is not None
        s = batch.s
        sims = (without.to(s.device) * batch.text[:, None, :]).sum(dim=-1)  # (B, M)
        used = ran.to(s.device).float()
        keep = (~self.patterns(batch)).to(s.device).float() * used[..., None]  # (B, M, N)
        mean_all = (sims * used).sum(dim=1) / used.sum(dim=1).clamp_min(1.0)
        mean_kept = (sims[..., None] * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        patch = (mean_kept - mean_all[:, None]) / s.abs().clamp_min(EPS)[:, None]
        clusters = torch.zeros(s.shape[0], batch.k, device=s.device, dtype=patch.dtype)
        clusters.scatter_add_(1, batch.labels.to(s.device), patch)
        return Scores(clusters * batch.valid.to(s.device), patch=patch)


class RISEStep(AttributionStep):
    """The attribution step of RISE: its run settings (what ``run`` compares before reusing a result file) name
    the masks when they are not the defaults, so a rerun with other ``--rise-*`` values is not skipped as done,
    and files made with the defaults before the flags existed still match."""

    def run_settings(self) -> dict[str, Any]:
        own = getattr(self.attributor, "settings", RISE_DEFAULTS)
        return super().run_settings() | ({} if own == RISE_DEFAULTS else {"rise": asdict(own)})


_CONFIGURED: dict[tuple[type[RISE], RISESettings], type[RISE]] = {}


def _configured(cls: type[RISE], settings: RISESettings) -> type[RISE]:
    """A subclass of ``cls`` holding ``settings``, one per (class, settings) (same name: ``find_attributor("rise")``
    still finds ``cls``, the first class of that name)."""
    key = (cls, settings)
    if key not in _CONFIGURED:
        attrs = {"settings": settings, "__module__": cls.__module__, "__doc__": cls.__doc__}
        _CONFIGURED[key] = type(cls.__name__, (cls,), attrs)
    return _CONFIGURED[key]


def rise_flags(prefix: str = FLAG_PREFIX):
    """The ``--rise-*`` flags (``add_argument`` keywords), defaults and help text from :class:`RISESettings`."""

    return cli_flags(RISESettings, prefix)
