"""The attribution settings: :class:`CCISettings` is the one source of every CCI default, its limits and its
command-line flag (name and help text). The CLI builds its ``run`` and ``explain`` flags from it
(``flags.cli_flags``), the step records it in the result's ``config.attribution`` and ``config.run_settings``,
and ``sanity`` and the benchmarks start from it. :class:`AttributionSettings` adds what the step needs beyond the
method's numbers (which method, ``--save-maps``, ``--attribution auto``).

What the paper leaves open (paper-notes section 1) is a documented setting here: K, the token layer, the target,
the seed, which samples are attributed, and the k-means restarts / iterations. Nothing here imports torch.
"""

from __future__ import annotations

import os
from argparse import ArgumentTypeError
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.flags import flag, from_args

MAX_K = 64  # CCI: K+1 removal passes per image, (B, K, N) patterns; more clusters than this explain nothing
MAX_N_INIT = 100  # k-means restarts run side by side: memory grows with them
MAX_ITERS = 10_000  # Lloyd stops at convergence long before; a cap only bounds a runaway setting
TARGETS = ("pred", "label")
ATTRIBUTE_ON = ("all", "errors")
NORMALIZE = ("none", "l2", "ln")
EMBED = "embed"  # --cci-layer embed: input-level tokens (adapter member ``input_tokens``)
FLAG_PREFIX = "cci_"  # parsed `run` flags land under args.cci_<field>: CCISettings.from_args reads them there


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def layer_value(text: str) -> int | str:
    """A ``--cci-layer`` value: a block index, or ``embed``; anything else is argparse's one-line error (exit 2)."""
    if text.strip().lower() == EMBED:
        return EMBED
    try:
        return int(text)
    except ValueError:
        raise ArgumentTypeError(f"must be a block index (e.g. -1, 6) or {EMBED!r}, got {text!r}") from None


@dataclass(frozen=True)
class CCISettings:
    """Every knob of CCI; all of them end up in the result's ``config.attribution`` (in this order)."""

    # clusters per image (S7 code and the paper's likely value; S8 suggests 8 is also used)
    k: int = field(default=7, metadata=flag("--cci-k", "clusters per image", "{}", type=int))
    # which block's patch tokens are clustered; -1 = last block; "embed" = the first block's input (after the
    # pre-norm), the choice of the only public CCI code
    layer: int | str = field(
        default=-1,
        metadata=flag(
            "--cci-layer",
            "block whose patch tokens are clustered (an index, or 'embed': the tokens entering the first block)",
            "{}, last",
            type=layer_value,
        ),
    )
    # tokens as k-means sees them: raw, L2-normalised per token, or layer-normed without affine (per token)
    normalize: str = field(
        default="none", metadata=flag("--cci-normalize", "token normalisation before k-means", "{}", choices=NORMALIZE)
    )
    # class whose text is explained: predicted class or ground-truth label
    target: str = field(default="pred", metadata=flag("--cci-target", "class explained", "{}", choices=TARGETS))
    # k-means (and random-baseline) seed; mixed with each sample's id. On the command line it defaults to --seed
    seed: int = field(
        default=0, metadata=flag("--cci-seed", "k-means / baseline seed", "--seed", type=int, default=None)
    )
    attribute_on: str = field(
        default="all",
        metadata=flag(
            "--attribute-on", "attribute every sample or only misclassified ones", "{}", choices=ATTRIBUTE_ON
        ),
    )
    # Lloyd iterations at most (stops earlier when assignments are stable)
    kmeans_iters: int = field(default=100, metadata=flag("--cci-iters", "k-means iterations at most", "{}", type=int))
    # k-means++ restarts per image; the lowest-inertia one is kept
    kmeans_n_init: int = field(default=3, metadata=flag("--cci-n-init", "k-means++ restarts per image", "{}", type=int))
    # region test on samples with a foreground mask (2 extra patterns: cheap)
    counterfactual: bool = field(
        default=True,
        metadata=flag(
            "--no-counterfactual",
            "skip the counterfactual region test (foreground only / background only) on masked tasks",
            None,
            action="store_false",
        ),
    )
    # a patch is foreground for the region test when its mask fraction >= this
    cf_threshold: float = field(
        default=0.5,
        metadata=flag(
            "--cf-threshold",
            "mask fraction at or above which a patch counts as foreground in that test",
            "{}",
            type=float,
        ),
    )

    def __post_init__(self) -> None:
        if not is_int(self.k) or self.k < 2:
            raise UsageError(f"--cci-k must be >= 2 (one cluster would remove every patch), got {self.k}")
        if self.k > MAX_K:
            raise UsageError(f"--cci-k {self.k} is more than {MAX_K} clusters; use --cci-k 2..{MAX_K}")
        if not is_int(self.layer) and self.layer != EMBED:
            raise UsageError(f"--cci-layer must be an integer block index or {EMBED!r}, got {self.layer!r}")
        if self.normalize not in NORMALIZE:
            raise UsageError(f"--cci-normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        if self.target not in TARGETS:
            raise UsageError(f"--cci-target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.attribute_on not in ATTRIBUTE_ON:
            raise UsageError(f"--attribute-on must be one of {', '.join(ATTRIBUTE_ON)}, got {self.attribute_on!r}")
        if not is_int(self.kmeans_iters) or not 1 <= self.kmeans_iters <= MAX_ITERS:
            raise UsageError(f"--cci-iters must be in 1..{MAX_ITERS}, got {self.kmeans_iters}")
        if not is_int(self.kmeans_n_init) or not 1 <= self.kmeans_n_init <= MAX_N_INIT:
            raise UsageError(
                f"--cci-n-init must be in 1..{MAX_N_INIT} (restarts run side by side in memory), "
                f"got {self.kmeans_n_init}"
            )
        if not 0.0 <= self.cf_threshold <= 1.0:
            raise UsageError(f"the counterfactual mask threshold must be in [0, 1], got {self.cf_threshold}")

    @classmethod
    def from_args(cls, args: Any, prefix: str = FLAG_PREFIX) -> CCISettings:
        """From parsed ``run`` arguments (flags from ``flags.cli_flags``, values under ``prefix``): a flag the
        namespace lacks keeps its default, and ``--cci-seed`` falls back to ``--seed``."""
        values = from_args(cls, args, prefix)
        if "seed" not in values and isinstance(getattr(args, "seed", None), int):
            values["seed"] = args.seed
        return cls(**values)


DEFAULTS = CCISettings()

NO_MASKS = "auto: the task has no foreground masks"


def auto_decision(
    has_masks: bool, diagnose: bool | None = None, segmenter: str | None = None, diagnosis_on: bool = False
) -> tuple[bool, str]:
    """``--attribution auto`` on one task: (run CCI?, why). It runs when the diagnosis can follow it: the task
    has foreground masks, or the diagnosis is on and the chosen segmenter provides them: a segmenter named
    explicitly (``--segmenter groundedsam`` or a plugin; ``dataset`` and ``none`` give none), or the default
    ``auto`` segmenter on a task whose YAML says ``diagnose: true``. ``diagnose: false`` turns it off even on a
    task with masks. ``segmenter`` None (no run options known) decides by the task's masks alone."""
    if diagnose is False:
        return False, "auto: the task says diagnose: false"
    if has_masks:
        return True, "auto: the task has foreground masks"
    if not diagnosis_on or segmenter in (None, "none", "dataset"):
        return False, NO_MASKS
    if segmenter == "auto":
        if diagnose:
            return True, "auto: the task says diagnose: true; masks from groundedsam (the auto segmenter)"
        return False, NO_MASKS
    return True, f"auto: masks from segmenter {segmenter!r}"


@dataclass(frozen=True)
class AttributionSettings:
    """One attribution step: which method, its numbers, and what the run asks of it around them."""

    method: str = "cci"
    cci: CCISettings = DEFAULTS
    save_maps: Path | None = None  # --save-maps: overlay PNGs of attributed samples under this folder
    only_with_masks: bool = False  # --attribution auto: runs only on tasks whose samples have foreground masks

    @classmethod
    def from_flat(cls, method: str, **flat: Any) -> AttributionSettings:
        """From keyword settings as attributor factories receive them (``k=3, save_maps=...``); an unknown name
        is a TypeError, as for any function."""
        names = {f.name for f in fields(CCISettings)}
        own = {k: flat.pop(k) for k in ("save_maps", "only_with_masks") if k in flat}
        unknown = sorted(set(flat) - names)
        if unknown:
            raise TypeError(f"unexpected attribution setting(s): {', '.join(unknown)}")
        return cls(
            method,
            replace(DEFAULTS, **flat) if flat else DEFAULTS,
            own.get("save_maps"),
            bool(own.get("only_with_masks", False)),
        )

    def flat(self) -> dict[str, Any]:
        """The keyword form (:meth:`from_flat`): what the CLI offers to an attributor's factory."""
        return {**asdict(self.cci), "save_maps": self.save_maps, "only_with_masks": self.only_with_masks}


def check_maps_dir(save_maps: str | Path) -> Path:
    """``--save-maps`` checked before any model loads (when the attribution step is built): a regular file on the
    way, or a folder that cannot be created or written, is a one-line UsageError (rather than every pair failing
    later). The maps step (``results.maps``) writes into it."""
    path = Path(save_maps).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--save-maps {str(path)!r}: {str(probe)!r} is not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--save-maps {str(path)!r}: {str(probe)!r} is not writable")
    return path
