"""Mean deletion and insertion curves per method as PNG (matplotlib, Agg; imported only by the command).

Two figures per model x task: ``curves.png`` beside the pair's result files (pixel replacement solid, token
removal dashed, on the same axes) and ``curves-<model>-<task>.png`` in the output folder, one panel per curve
kind (rows: pixels, tokens where computed) with the random baseline in grey, for a README or a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from covar_harness.common.safe_files import atomic_write

KINDS = ("deletion", "insertion")
BASELINE_STYLE = {"color": "0.45", "linestyle": ":", "linewidth": 2.0}


def _pyplot() -> Any:
    import matplotlib  # lazy: matplotlib only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    return plt


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
    _pyplot().close(fig)
    return path


def _label(r: dict[str, Any], curve: str, suffix: str = "") -> str | None:
    auc = r.get(f"{curve}_auc")
    return None if auc is None else f"{r['attributor']}{suffix} AUC {auc:.3f}"


def _axes_text(ax: Any, kind: str, how: str = "") -> None:
    ax.set_title(f"{kind}{how}" if how else f"{kind} (most important patches first)", fontsize=9)
    done = "removed" if kind == "deletion" else "revealed"
    ax.set_xlabel(f"fraction of patches {done}" + (", most important first" if how else ""))
    ax.set_ylabel("score of the explained class")
    ax.legend(fontsize=7)


def plot_curves(results: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One PNG for one model x task: deletion and insertion (pixel replacement; token removal dashed where
    present), one colour per method, the AUC in the legend."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results):
        colour = colours[i % len(colours)]
        for ax, name in zip(axes, KINDS):
            for suffix, style in (("", "-"), ("_tokens", "--")):
                curve = r["curves"].get(f"{name}{suffix}")
                if curve is None:
                    continue
                label = _label(r, f"{name}{suffix}", " (tokens)" if suffix else "")
                ax.plot(curve["x"], curve["mean"], style, color=colour, label=label)
    for ax, name in zip(axes, KINDS):
        _axes_text(ax, name)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_methods(results: Sequence[dict[str, Any]], path: Path, title: str, baseline: str = "random") -> Path:
    """Every method's mean curves on one figure: columns deletion / insertion, rows pixel replacement and (where
    any method has them) token removal; one colour per method, the ``baseline`` dotted grey, AUC in the legend."""
    plt = _pyplot()
    rows = [("", ": pixels replaced")]
    if any(f"{k}_tokens" in r["curves"] for r in results for k in KINDS):
        rows.append(("_tokens", ": patches removed from attention"))
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 4 * len(rows)), squeeze=False, constrained_layout=True)
    results = sorted(results, key=lambda r: r["attributor"] == baseline)  # the baseline last in each legend
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    style = {
        r["attributor"]: BASELINE_STYLE if r["attributor"] == baseline else {"color": next(colours)} for r in results
    }
    for (suffix, how), line in zip(rows, axes):
        for ax, kind in zip(line, KINDS):
            for r in results:
                curve = r["curves"].get(f"{kind}{suffix}")
                if curve is not None:
                    ax.plot(curve["x"], curve["mean"], label=_label(r, f"{kind}{suffix}"), **style[r["attributor"]])
            _axes_text(ax, kind, how)
    fig.suptitle(f"{title}: mean curves per method", fontsize=10)
    return _save(fig, path)
