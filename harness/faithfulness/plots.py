"""Mean deletion and insertion curves per method as PNG (matplotlib, Agg; imported only by the command)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(results: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One PNG for one model x task: deletion and insertion (pixel replacement; token removal dashed where
    present), one colour per method, the AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covar_harness.results import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results):
        colour = colours[i % len(colours)]
        for ax, name in zip(axes, ("deletion", "insertion")):
            for suffix, style in (("", "-"), ("_tokens", "--")):
                curve = r["curves"].get(f"{name}{suffix}")
                if curve is None:
                    continue
                auc = r.get(f"{name}{suffix}_auc")
                label = f"{r['attributor']}{' (tokens)' if suffix else ''} AUC {auc:.3f}" if auc is not None else None
                ax.plot(curve["x"], curve["mean"], style, color=colour, label=label)
    for ax, name in zip(axes, ("deletion", "insertion")):
        ax.set_title(f"{name} (most important patches first)")
        ax.set_xlabel("fraction of patches " + ("removed" if name == "deletion" else "revealed"))
        ax.set_ylabel("score of the explained class")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
    plt.close(fig)
    return path
