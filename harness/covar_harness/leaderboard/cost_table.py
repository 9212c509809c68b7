"""The cost table of the leaderboard and the report (docs/design.md section 10): per model, the wall time of
each phase summed over its tasks, forward passes per image and peak memory, from each result's
``provenance.cost`` (common/cost.py). Why: a leaderboard that shows what each number cost lets a user plan the
paper's grid and see which phase to make faster. Results written before the cost was recorded are left out.
"""

from __future__ import annotations

from typing import Any

from covar_harness.common.cost import PHASES
from covar_harness.results import files as results

TITLE = "cost per model (seconds summed over its tasks; load once per model)"


def _cost(rec: dict) -> dict | None:
    cost = rec.get("provenance", {}).get("cost") if isinstance(rec.get("provenance"), dict) else None
    return cost if isinstance(cost, dict) and isinstance(cost.get("phases"), dict) else None


def _number(value: Any) -> float:
    return float(value) if results.is_number(value) else 0.0


def _phase(cost: dict, name: str, key: str = "seconds") -> float:
    entry = cost["phases"].get(name)
    return _number(entry.get(key)) if isinstance(entry, dict) else 0.0


def _memory(cost: dict) -> dict:
    memory = cost.get("peak_memory_mb")
    return memory if isinstance(memory, dict) else {}


def _passes(cost: dict) -> float:
    """Image rows forwarded by one pair, over all its phases."""
    per_image = sum(_phase(cost, p, "forward_passes_per_image") for p in cost["phases"])
    return per_image * _number(cost.get("n_images"))


def cost_rows(records: list[dict]) -> list[list[Any]]:
    """One row per model: device, tasks, images, seconds per phase (``load`` the longest of its pairs, since the
    pairs of one run share one load), other phases, total, forward passes per image, peak memory (MiB)."""
    by_model: dict[str, list[dict]] = {}
    for rec in records:
        cost = _cost(rec)
        if cost is not None:
            by_model.setdefault(rec["model"]["spec"], []).append(cost)
    rows = []
    for spec, costs in by_model.items():
        images = sum(int(_number(c.get("n_images"))) for c in costs)
        seconds = {p: sum(_phase(c, p) for c in costs) for p in PHASES}
        seconds["load"] = max(_phase(c, "load") for c in costs)
        other = sum(_phase(c, p) for c in costs for p in c["phases"] if p not in PHASES)
        passes = sum(
            _phase(c, p, "forward_passes_per_image") * _number(c.get("n_images")) for c in costs for p in c["phases"]
        )
        peak = max(_number(_memory(c).get("cpu_rss_process")) for c in costs)
        gpu = [_number(_memory(c).get("gpu_allocated")) for c in costs]
        devices = sorted({str(c.get("device")) for c in costs})
        rows.append(
            [
                spec,
                ", ".join(devices),
                len(costs),
                images,
                *(round(seconds[p], 1) for p in PHASES),
                round(other, 1),
                round(sum(seconds.values()) + other, 1),
                round(passes / images, 1) if images else None,
                round(peak, 1),
                round(max(gpu), 1) if any(gpu) else None,
            ]
        )
    return rows


def cost_columns() -> list[str]:
    return [
        "model",
        "device",
        "tasks",
        "images",
        *(f"{p} s" for p in PHASES),
        "other s",
        "total s",
        "forward passes / image",
        "peak RSS MiB",
        "peak GPU MiB",
    ]
