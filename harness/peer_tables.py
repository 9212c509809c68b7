"""Leaderboard tables of the peer background-reliance benchmarks, in their own papers' terms.

ImageNet-9 (the Backgrounds Challenge) reports accuracy per variation and the **BG-Gap**, mixed_same minus
mixed_rand: how much accuracy the right-class background was worth. Kept apart from ``leaderboard.py`` (the
paper's COVAR and CounterAnimals layouts), which dispatches here by family name.
"""

from __future__ import annotations

from covar_harness.leaderboard import Table, _by_model, _headline, _pct

IMAGENET9_VARIANTS = (
    "original",
    "only_fg",
    "mixed_same",
    "mixed_rand",
    "mixed_next",
    "no_fg",
    "only_bg_b",
    "only_bg_t",
)
IMAGENET9_CAPTION = (
    "BG-Gap = mixed_same - mixed_rand accuracy (Xiao et al. 2020): the accuracy a background of the "
    "right class buys. Zero-shot 9-way over the IN-9 superclass names; the original protocol maps "
    "1000-way ImageNet predictions to the 9 superclasses, so numbers differ from its README table."
)


def imagenet9_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    """Accuracy per variation present, then BG-Gap where both mixed_same and mixed_rand ran."""
    models = _by_model(records, family)
    present = {s for runs in models.values() for s in runs}
    columns = [v for v in IMAGENET9_VARIANTS if v in present]
    columns += sorted(present - set(IMAGENET9_VARIANTS))
    t = Table(f"{family}: zero-shot accuracy (%) and BG-Gap", ["Model", *columns, "BG-Gap"], caption=IMAGENET9_CAPTION)
    for spec, runs in models.items():
        same, rand = (_headline(runs[v]) if v in runs else None for v in ("mixed_same", "mixed_rand"))
        gap = None if same is None or rand is None else same - rand
        t.rows.append([spec, *[_pct(_headline(runs[c])) if c in runs else None for c in columns], _pct(gap)])
    return [t]
