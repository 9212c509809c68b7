"""The faithfulness settings: every knob of the deletion / insertion curves and localisation metrics, recorded in
each result file's ``settings`` with what the curve protocol (``protocols``) says about itself."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.faithfulness.protocols import PROTOCOLS

REPLACEMENTS = ("blur", "black", "mean")
SCORES = ("softmax", "cosine", "top1")
TARGETS = ("pred", "label")
TIES = ("random", "raster")
MAX_STEPS = 256
PROTOCOL_OWN = ("steps", "replacement")  # what a published protocol fixes beyond ``fixed``: its points, canvases


@dataclass(frozen=True)
class FaithfulnessSettings:
    """``protocol``: the curve protocol (``protocols.PROTOCOLS``): ``patches``, the harness's own and the
    default, which the settings below describe; ``grad-eclip`` and ``rise``, the published ones, which fix score,
    target, token removal, points and canvases themselves (``for_protocol`` refuses a flag for them).
    ``steps``: points per curve minus one (the patches are removed in ``steps`` equal shares, most important
    first). ``replacement``: what a deleted patch becomes (and the canvas insertion starts from): ``blur`` (the
    image Gaussian-blurred with ``blur_sigma`` pixels), ``black`` (a black image through the model's own
    preprocessing) or ``mean`` (the image's mean colour). ``score``: ``top1`` (1 where the class is the
    prediction), ``softmax`` over the task's classes at ``temperature`` (None: the model's own logit scale,
    ``models.adapter.logit_scale``, so the probabilities are the model's; 100 when it exposes none), or
    ``cosine`` with the explained class's text embedding.
    ``target``: the class explained (prediction or label). ``token_removal``: also the curves with the patches
    removed from attention (adapters that support removal). ``mask_threshold``: a patch is inside the mask for
    relevance-rank accuracy when its foreground fraction is at least this. ``ties``: how patches of equal
    importance are ordered, in the curves and in rank accuracy: ``random`` (a seeded random order per image,
    from its seed) or ``raster`` (top-left first: what results before issue 23 used)."""

    steps: int = 16
    protocol: str = "patches"
    replacement: str = "blur"
    blur_sigma: float = 8.0
    score: str = "softmax"
    temperature: float | None = None
    target: str = "pred"
    token_removal: bool = True
    mask_threshold: float = 0.5
    seed: int = 0
    bootstrap: int = 1000
    ties: str = "random"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise UsageError(f"--steps must be in 1..{MAX_STEPS}, got {self.steps}")
        if self.replacement not in REPLACEMENTS:
            raise UsageError(f"--replacement must be one of {', '.join(REPLACEMENTS)}, got {self.replacement!r}")
        if self.score not in SCORES:
            raise UsageError(f"--score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.target not in TARGETS:
            raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not self.blur_sigma > 0:
            raise UsageError("--blur-sigma must be > 0")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        clash = [k for k, v in PROTOCOLS[self.protocol].fixed.items() if getattr(self, k) != v]
        if clash:
            raise UsageError(f"--protocol {self.protocol} sets {', '.join(clash)} itself")
        if self.ties not in TIES:
            raise UsageError(f"--ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise UsageError(f"the mask threshold must be in [0, 1], got {self.mask_threshold}")
        if not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be >= 0, got {self.bootstrap}")

    @classmethod
    def for_protocol(cls, protocol: str = "patches", **given: Any) -> FaithfulnessSettings:
        """The settings of ``protocol`` with the ``given`` values (None: not given); a given value for a setting the
        protocol fixes is refused in one line, naming the flag."""
        fixed = PROTOCOLS[protocol].fixed if protocol in PROTOCOLS else {}
        given = {k: v for k, v in given.items() if v is not None}
        clash = [
            "--" + k.replace("_", "-")
            for k, v in given.items()
            if (k in fixed and v != fixed[k]) or (fixed and k in PROTOCOL_OWN)
        ]
        if clash:
            raise UsageError(f"--protocol {protocol} sets {', '.join(clash)} itself (the published protocol)")
        return cls(protocol=protocol, **{**given, **fixed})

    def record(self) -> dict[str, Any]:
        """Every setting, then what the protocol says about itself (its order, canvases, points, AUC)."""
        return {**asdict(self), **PROTOCOLS[self.protocol]().record()}
