"""The report's plots, drawn with matplotlib (Agg backend) into SVG files of the site.

Only this module imports matplotlib, and only the ``report`` command imports this module. Names from result
files become tick labels and legend entries: control characters are removed, ``$`` is escaped (no mathtext), long
names are shortened, and the SVG holds text as paths (``svg.fonttype = path``), so nothing from a result file
is markup in the file. Each function returns the file name it wrote, or None when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covar_harness.common.console import one_line
from covar_harness.common.safe_files import slug
from covar_harness.data.subsets import COVAR_SUBSETS, SUBSET_TITLES
from covar_harness.leaderboard import published
from covar_harness.leaderboard import tables as lb
from covar_harness.results import files as results

MAX_LABEL = 42
MAX_PANELS = 12
BG_COLOUR, FINE_COLOUR, PUBLISHED_COLOUR = "#d9822b", "#7d4cc2", "#b5a36a"


def _plt():
    import matplotlib  # lazy: matplotlib only when a plot is drawn

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    plt.rcParams.update(
        {
            "svg.fonttype": "path",
            "svg.hashsalt": "covar-harness",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
        }
    )
    return plt


def label(text: Any, limit: int = MAX_LABEL) -> str:
    """A name as inert plot text: one line, no control characters, ``$`` escaped, at most ``limit`` chars."""
    text = one_line(text)
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return text.replace("\\", "\\\\").replace("$", r"\$")


def _save(fig, out: Path, name: str) -> str:
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    plt.close(fig)
    return name


def _value(rec: dict | None, key: str) -> float | None:
    value = None if rec is None else rec.get("metrics", {}).get(key)
    return float(value) if isinstance(value, (int, float)) and results.is_number(value) else None


def _colours(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def covar_subsets(models: dict[str, dict[str, dict]]) -> list[str]:
    return [s for s in ("original", *COVAR_SUBSETS) if any(s in runs for runs in models.values())]


def accuracy(
    models: dict[str, dict[str, dict]], subsets: list[str], titles: list[str], family: str, out: Path, name: str
) -> str | None:
    """Headline metric per subset per model: grouped bars up to 10 models, a heat map beyond."""
    plt = _plt()
    specs = list(models)
    values = [
        [_value(models[m].get(s), (models[m].get(s) or {}).get("task", {}).get("headline") or "acc1") for s in subsets]
        for m in specs
    ]
    if not specs or not subsets or all(v is None for row in values for v in row):
        return None
    if len(specs) <= 10:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(subsets) + 0.25 * len(subsets) * len(specs)), 3.6))
        width = 0.8 / len(specs)
        for i, (spec, row, colour) in enumerate(zip(specs, values, _colours(len(specs)))):
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(subsets))]
            ax.bar(xs, [100 * v if v is not None else 0 for v in row], width, label=label(spec), color=colour)
        ax.set_xticks(range(len(subsets)), [label(t, 20) for t in titles])
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(subsets) + 3), 0.28 * len(specs) + 1.5))
        grid = [[float("nan") if v is None else 100 * v for v in row] for row in values]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
        ax.set_xticks(range(len(subsets)), [label(t, 20) for t in titles], rotation=30, ha="right")
        ax.set_yticks(range(len(specs)), [label(s) for s in specs])
        fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(label(f"{family}: zero-shot accuracy per subset", 90))
    return _save(fig, out, name)


def diagnosis(models: dict[str, dict[str, dict]], family: str, out: Path, name: str) -> str | None:
    """BG-Er and Fine-Er stacked per subset, one panel per model, named by their rule; the counterfactual truth
    (``bg_sufficient_rate``: the wrong prediction survives with the background alone, when the result has it)
    marked by a black tick, so the rule's share can be read against the intervention."""
    plt = _plt()
    subsets = [s for s in COVAR_SUBSETS if any(_value(r.get(s), "bg_er") is not None for r in models.values())]
    specs = [m for m in models if any(_value(models[m].get(s), "bg_er") is not None for s in subsets)]
    if not subsets or not specs:
        return None
    shown = specs[:MAX_PANELS]
    cols = 1 if len(shown) == 1 else 2
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(6.0, 0.75 * len(subsets)) * cols, 2.5 * rows + 0.6), squeeze=False, sharey=True
    )
    has_truth, titles = False, lb.diag_titles(lb.headline_rule(models))
    for ax, spec in zip(axes.flat, shown):
        runs = models[spec]
        bg = [100 * (_value(runs.get(s), "bg_er") or 0) for s in subsets]
        fine = [100 * (_value(runs.get(s), "fine_er") or 0) for s in subsets]
        xs = range(len(subsets))
        ax.bar(xs, bg, 0.7, color=BG_COLOUR, label=label(titles["bg_er"], 60))
        ax.bar(xs, fine, 0.7, bottom=bg, color=FINE_COLOUR, label=label(titles["fine_er"], 60))
        for x, s in zip(xs, subsets):
            truth = _value(runs.get(s), "bg_sufficient_rate")
            if truth is not None:
                has_truth = True
                ax.plot([x - 0.38, x + 0.38], [100 * truth] * 2, color="black", lw=1.6)
        ax.set_xticks(list(xs), [label(SUBSET_TITLES[s], 12) for s in subsets], rotation=30, ha="right")
        ax.set_ylim(0, 100)
        ax.set_title(label(spec, 60), fontsize=9)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("% of misclassified")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if has_truth:
        from matplotlib.lines import Line2D  # lazy: matplotlib only when a plot is drawn

        handles.append(Line2D([], [], color="black", lw=1.6))
        names.append(titles["bg_sufficient_rate"])
    fig.legend(handles, names, loc="upper right", frameon=False, ncol=3)
    more = f" (first {MAX_PANELS} of {len(specs)} models)" if len(specs) > MAX_PANELS else ""
    fig.suptitle(label(f"{family}: error diagnosis{more}", 100), x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, out, name)


def accuracy_vs_bg(
    models: dict[str, dict[str, dict]], published: list[tuple[float, float]], family: str, out: Path, name: str
) -> str | None:
    """One point per model x subset: BG-Er (x) against accuracy (y); published rows in grey."""
    plt = _plt()
    points = {}
    for spec, runs in models.items():
        pairs = [(_value(r, "bg_er"), _value(r, "acc1")) for s, r in runs.items() if s in COVAR_SUBSETS]
        pts = [(100 * bg, 100 * acc) for bg, acc in pairs if bg is not None and acc is not None]
        if pts:
            points[spec] = pts
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if published:
        ax.scatter(
            [p[0] for p in published],
            [p[1] for p in published],
            s=10,
            color=PUBLISHED_COLOUR,
            alpha=0.6,
            label="published (paper; its rule unknown)",
            marker="s",
        )
    for (spec, pts), colour in zip(points.items(), _colours(len(points))):
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=28,
            color=colour,
            label=label(spec),
            edgecolors="white",
            linewidths=0.5,
        )
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    rule = lb.diag_titles(lb.headline_rule(models))["bg_er"]  # own points' rule; the paper's is unknown
    ax.set_xlabel(label(f"{rule}: % of misclassified that are background-driven", 90))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(label(f"{family}: accuracy vs background reliance (one point per subset)", 100))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out, name)


def counteranimals(
    own: list[tuple[str, float, float]], published: list[tuple[str, float, float]], title: str, out: Path, name: str
) -> str | None:
    """Common (x) against counter (y) class-balanced accuracy per model; the diagonal is no drop."""
    if not own and not published:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    values = [v for _, c, k in own + published for v in (c, k)]
    lo, hi = max(0.0, min(values) - 5), min(100.0, max(values) + 5)
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--", label="no drop")
    if published:
        ax.scatter(
            [c for _, c, _ in published],
            [k for _, _, k in published],
            s=14,
            marker="s",
            color=PUBLISHED_COLOUR,
            alpha=0.7,
            label="published (CounterAnimals paper)",
        )
    for (spec, c, k), colour in zip(own, _colours(len(own))):
        ax.scatter([c], [k], s=40, color=colour, label=label(spec), edgecolors="white", linewidths=0.5)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("common: class-balanced accuracy (%)")
    ax.set_ylabel("counter: class-balanced accuracy (%)")
    ax.set_title(label(title, 100))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out, name)


# ---- which plots a set of results gets -----------------------------------------------------------------
def _group(records: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """family -> model spec -> subset -> record (the last file of a pair wins, as in the leaderboard)."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for r in records:
        family, _, subset = r["task"]["name"].partition("/")
        out.setdefault(family, {}).setdefault(r["model"]["spec"], {})[subset or family] = r
    return out


def _published(reference: str | None) -> tuple[list[tuple[float, float]], dict[str, dict[str, float]]]:
    """Published COVAR (BG-Er, accuracy) points and CounterAnimals {model: {group: %}}, from the leaderboard."""
    if reference != "paper":
        return [], {}
    covar: dict[tuple[str, str], dict[str, float]] = {}
    ca: dict[str, dict[str, float]] = {}
    for row in published.published_records():
        if not results.is_number(row["value"]):
            continue
        if row["task"].startswith("covar/") and row["metric"] in ("acc1", "bg_er"):
            covar.setdefault((row["model"], row["task"]), {})[row["metric"]] = 100 * row["value"]
        elif row["task"].startswith("counteranimals/"):
            ca.setdefault(row["model"], {})[row["task"].split("/", 1)[1]] = 100 * row["value"]
    points = [(v["bg_er"], v["acc1"]) for v in covar.values() if "bg_er" in v and "acc1" in v]
    return points, ca


def draw_plots(records: list[dict], reference: str | None, out: Path) -> list[tuple[str, str]]:
    """Every plot the results allow, as (file name, caption); one folder per family (its slug)."""
    made: list[tuple[str, str]] = []
    covar_points, ca_published = _published(reference)
    for family, models in _group(records).items():
        if family == "counteranimals":
            made += _counteranimals_plots(family, models, ca_published, out)
        else:
            made += _family_plots(family, models, covar_points if family == "covar" else [], out)
    return made


def _counteranimals_plots(family: str, models: dict, ca_published: dict, out: Path) -> list[tuple[str, str]]:
    """Common vs counter, one plot per CounterAnimals variant (official, and acc1)."""
    shown, stem, made = one_line(family), slug(family), []
    for suffix, title in lb.CA_VARIANTS:
        own = []
        for spec, runs in models.items():
            c = _value(runs.get(f"common{suffix}"), "mean_per_class_recall")
            k = _value(runs.get(f"counter{suffix}"), "mean_per_class_recall")
            if c is not None and k is not None:
                own.append((spec, 100 * c, 100 * k))
        pub = [
            (m, v["common"], v["counter"])
            for m, v in ca_published.items()
            if suffix == "" and "common" in v and "counter" in v
        ]
        file = f"{stem}/common-vs-counter{suffix or '-official'}.svg"
        name = counteranimals(own, pub if own else [], f"{family}: {title}: common vs counter", out, file)
        if name:
            made.append(
                (
                    name,
                    f"{shown}, {title}: class-balanced accuracy on common (x) against counter (y) "
                    "backgrounds, one point per model; below the diagonal = drop on counter.",
                )
            )
    return made


def _family_plots(family: str, models: dict, published: list, out: Path) -> list[tuple[str, str]]:
    """Accuracy per subset, the diagnosis bars and accuracy vs BG-Er for one task family."""
    shown, stem, made = one_line(family), slug(family), []
    subsets = covar_subsets(models)
    titles = [SUBSET_TITLES[s] for s in subsets]
    if not subsets:
        subsets = list(dict.fromkeys(s for runs in models.values() for s in runs))
        titles = subsets
    name = accuracy(models, subsets, titles, family, out, f"{stem}/accuracy.svg")
    if name:
        made.append((name, f"{shown}: headline accuracy per subset and model (the first table)."))
    name = diagnosis(models, family, out, f"{stem}/diagnosis.svg")
    if name:
        made.append(
            (
                name,
                f"{shown}: BG-Er (background-driven) and Fine-Er (fine-grained) errors as a share of "
                "the misclassified images, per subset, under the rule the legend names; a black tick marks the "
                "counterfactual truth (the share of errors whose prediction survives with the background alone) "
                "when the results carry it.",
            )
        )
    name = accuracy_vs_bg(models, published, family, out, f"{stem}/accuracy-vs-bg-er.svg")
    if name:
        made.append(
            (
                name,
                f"{shown}: accuracy against BG-Er, one point per model and subset"
                + (", published rows in grey." if published else "."),
            )
        )
    return made
