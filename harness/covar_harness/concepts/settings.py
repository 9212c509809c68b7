"""``--concepts BANK`` and ``--concepts-top N`` (docs/design.md section 11): the settings of concept naming, light
enough for the CLI's parser (no numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.flags import flag

SCORE = "p_c(e) - p_c(e without cluster k), p = softmax over the bank of T * cosine"
BACKGROUND_CLUSTER = "largest positive importance among clusters with mean foreground fraction < 0.5"
MAX_TOP = 20


@dataclass(frozen=True)
class ConceptSettings:
    """Which bank names the regions, and how many concepts are logged per cluster."""

    bank: str | None = field(
        default=None,
        metadata=flag(
            "--concepts",
            "name each CCI region against a concept bank: text:FILE, images:DIR or a registered bank "
            "(covar-harness ls concepts); off by default",
            None,
            metavar="BANK",
        ),
    )
    top: int = field(default=3, metadata=flag("--concepts-top", "concepts logged per cluster", type=int))
    temperature: float | None = field(
        default=None,
        metadata=flag(
            "--concepts-temperature",
            "softmax temperature over the bank's concepts (default: the model's own logit scale, else 100)",
            None,
            type=float,
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or not 1 <= self.top <= MAX_TOP:
            raise UsageError(f"--concepts-top must be an integer in 1..{MAX_TOP}, got {self.top!r}")
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1000):
            raise UsageError(f"--concepts-temperature must be a number in (0, 1000], got {t!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.bank)

    def as_config(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "top": self.top,
            "temperature": "model" if self.temperature is None else self.temperature,
            "score": SCORE,
            "background_cluster": BACKGROUND_CLUSTER,
        }
