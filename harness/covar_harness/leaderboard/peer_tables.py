"""Leaderboard tables of the peer background-reliance benchmarks, in their own papers' terms.

ImageNet-9 (the Backgrounds Challenge) reports accuracy per variation and the **BG-Gap**, mixed_same minus
mixed_rand: how much accuracy the right-class background was worth. Kept apart from ``leaderboard.py`` (the
paper's COVAR and CounterAnimals layouts), which dispatches here by family name.

The **background reliance** table puts every benchmark's own measure side by side, one row per model: COVAR's
bg_varied accuracy drop and BG-Er (named by its rule, with the counterfactual truth), the CounterAnimals
common - counter drop, the ImageNet-9 BG-Gap and the Waterbirds worst-group gap, each followed by its n; a column
only where some result has it, and the table only when a peer benchmark (not COVAR alone) has results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from covar_harness.leaderboard.readers import (
    Table,
    as_percent,
    diag_titles,
    diagnosis_counts,
    headline_rule,
    headline_value,
    metric_of,
    records_by_model,
)
from covar_harness.results import files as results

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
    "right class buys. The reference protocol: a 1000-way ImageNet classifier whose top-1 is mapped to the 9 classes "
    "through in_to_in9.json (an unmapped class is wrong), as the release's README table."
)
IMAGENET9_9WAY_CAPTION = (
    "BG-Gap = mixed_same - mixed_rand accuracy. Zero-shot 9-way over the IN-9 class names: not the published "
    "protocol (imagenet9/* maps 1000-way ImageNet predictions), so numbers differ from the release's README table."
)


def imagenet9_tables(records: list[dict], family: str, reference: str | None) -> list[Table]:
    """Accuracy per variation present, then BG-Gap where both mixed_same and mixed_rand ran."""
    models = records_by_model(records, family)
    present = {s for runs in models.values() for s in runs}
    columns = [v for v in IMAGENET9_VARIANTS if v in present]
    columns += sorted(present - set(IMAGENET9_VARIANTS))
    caption = IMAGENET9_CAPTION if family == "imagenet9" else IMAGENET9_9WAY_CAPTION
    t = Table(f"{family}: zero-shot accuracy (%) and BG-Gap", ["Model", *columns, "BG-Gap"], caption=caption)
    for spec, runs in models.items():
        same, rand = (headline_value(runs[v]) if v in runs else None for v in ("mixed_same", "mixed_rand"))
        gap = None if same is None or rand is None else same - rand
        t.rows.append(
            [spec, *[as_percent(headline_value(runs[c])) if c in runs else None for c in columns], as_percent(gap)]
        )
    return [t]


# ---- background reliance: every benchmark's own measure, side by side ---------------------------------------
Runs = dict[str, dict[str, dict]]  # family -> subset -> result record, for one model


@dataclass(frozen=True)
class Cell:
    """One measure of one model: its value (a fraction), n, and its 95 % interval when the result files give one."""

    value: float | None = None
    n: int | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class Measure:
    """One column: its title, whether it is a peer's (not COVAR's), and runs -> its cell."""

    title: str
    peer: bool
    value: Callable[[Runs], Cell]


def _n(rec: dict | None) -> int | None:
    n = None if rec is None else rec.get("task", {}).get("n_samples")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _interval(rec: dict | None, key: str) -> tuple[float, float] | None:
    """The result file's own interval of ``key``, when it is two finite numbers."""
    got = None if rec is None else (rec.get("intervals") or {}).get(key)
    if isinstance(got, (list, tuple)) and len(got) == 2 and all(results.is_number(v) for v in got):
        return float(got[0]), float(got[1])
    return None


def difference_interval(
    a: float, b: float, ia: tuple[float, float] | None, ib: tuple[float, float] | None, z: float = 1.96
) -> tuple[float, float] | None:
    """Normal interval of ``a - b`` from the two runs' own 95 % intervals, as independent estimates:
    se = half-width / z each, se_diff = sqrt(se_a^2 + se_b^2). Conservative when the two sets are paired."""
    if ia is None or ib is None:
        return None
    half = z * math.hypot((ia[1] - ia[0]) / 2 / z, (ib[1] - ib[0]) / 2 / z)
    return a - b - half, a - b + half


def _difference(family: str, first: str, second: str, key: str) -> Callable[[Runs], Cell]:
    """``first - second`` of metric ``key`` within ``family``; n = the second (shifted) set's samples."""

    def value(runs: Runs) -> Cell:
        fam = runs.get(family, {})
        a, b = metric_of(fam.get(first), key), metric_of(fam.get(second), key)
        if a is None or b is None:
            return Cell()
        ci = difference_interval(a, b, _interval(fam.get(first), key), _interval(fam.get(second), key))
        return Cell(a - b, _n(fam.get(second)), ci)

    return value


def _single(family: str, subset: str, key: str) -> Callable[[Runs], Cell]:
    """Metric ``key`` of one task; n = its diagnosed errors for BG-Er and bg-sufficient, else its samples."""

    def value(runs: Runs) -> Cell:
        rec = runs.get(family, {}).get(subset)
        got = metric_of(rec, key)
        if got is None or rec is None:
            return Cell()
        errors = diagnosis_counts(rec).get("diagnosis_n_errors") if key.startswith(("bg_er", "bg_suff")) else None
        return Cell(got, int(errors) if errors is not None else _n(rec), _interval(rec, key))

    return value


def _measures(bg_er: str = "BG-Er") -> list[Measure]:
    """The table's measures; ``bg_er`` is BG-Er's title, naming the rule the results used."""
    out = []
    for family, label in (("covar", "COVAR"), ("covar-shapes", "COVAR-Shapes")):
        out += [
            Measure(f"{label} bg_varied drop", False, _difference(family, "original", "bg_varied", "acc1")),
            Measure(f"{label} {bg_er}", False, _single(family, "bg_varied", "bg_er")),
            Measure(
                f"{label} bg-sufficient (counterfactual)", False, _single(family, "bg_varied", "bg_sufficient_rate")
            ),
        ]
    return [
        *out,
        Measure(
            "CounterAnimals drop", True, _difference("counteranimals", "common", "counter", "mean_per_class_recall")
        ),
        Measure("ImageNet-9 BG-Gap", True, _difference("imagenet9", "mixed_same", "mixed_rand", "acc1")),
        Measure("Waterbirds worst-group gap", True, _single("waterbirds", "test", "group_acc_gap")),
    ]


BACKGROUND_CAPTION = (
    "Each benchmark's own background-reliance measure, in points (%): COVAR bg_varied drop = original - "
    "bg_varied acc1; BG-Er = share of bg_varied errors the diagnosis attributes to the background, under the "
    "headline rule each result names (default `area`, a harness rule; `paper` is the inferred reconstruction); "
    "bg-sufficient = share of those errors whose prediction survives with the background alone (the "
    "counterfactual region test, rule-free); CounterAnimals drop = common - counter class-balanced accuracy; "
    "ImageNet-9 BG-Gap = mixed_same - mixed_rand acc1; Waterbirds gap = adj_acc_avg (WILDS: the group "
    "accuracies weighted by the training group sizes) - worst-group accuracy. "
    "n = images of the shifted set (bg_varied, counter, mixed_rand, Waterbirds test); for BG-Er, the diagnosed "
    "errors. 95% CI (a column only where result files carry intervals): a single run's own bootstrap interval; "
    "for a drop between two runs, a normal interval combining the two runs' intervals as independent "
    "(se = half-width / 1.96, se_drop = sqrt(se_a^2 + se_b^2)), conservative for paired sets (COVAR's "
    "original and bg_varied share their source objects)."
)


def background_reliance_tables(records: list[dict]) -> list[Table]:
    """The background-reliance table, or nothing when no peer benchmark (CounterAnimals, IN-9, Waterbirds) ran."""
    models: dict[str, Runs] = {}
    for family in ("covar", "covar-shapes", "counteranimals", "imagenet9", "waterbirds"):
        for spec, runs in records_by_model(records, family).items():
            models.setdefault(spec, {})[family] = runs
    order = [spec for spec in dict.fromkeys(r["model"]["spec"] for r in records) if spec in models]  # as given
    diagnosed = {spec: runs[f] for spec, runs in models.items() for f in ("covar", "covar-shapes") if f in runs}
    measures = _measures(diag_titles(headline_rule(diagnosed))["bg_er"])
    cells = {spec: [m.value(models[spec]) for m in measures] for spec in order}
    present = [i for i, _ in enumerate(measures) if any(row[i].value is not None for row in cells.values())]
    if not any(measures[i].peer for i in present):
        return []
    with_ci = {i for i in present if any(row[i].interval is not None for row in cells.values())}
    columns = ["Model"]
    for i in present:
        title = measures[i].title
        columns += [title, *([f"{title} 95% CI"] if i in with_ci else []), f"{title} n"]
    table = Table("background reliance: each benchmark's measure side by side", columns, caption=BACKGROUND_CAPTION)
    for spec, row in cells.items():
        if any(row[i].value is not None for i in present):
            values: list[Any] = [spec]
            for i in present:
                values += [as_percent(row[i].value), *([_ci(row[i].interval)] if i in with_ci else []), row[i].n]
            table.rows.append(values)
    return [table]


def _ci(interval: tuple[float, float] | None) -> str | None:
    """An interval in points, as the table shows it: ``[12.3, 17.9]``."""
    return None if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
