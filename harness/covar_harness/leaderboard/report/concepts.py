"""The "what drives background errors" section of a model x task page (docs/design.md section 11): the pair's
concept table (counts, share with its interval, null, p-value), the top concept per predicted class, whether the
concepts follow the predicted class, and examples: background-driven errors with their driving background cluster
highlighted on the patch grid (and the run's overlay beside it when ``--maps`` gave one) and named.

Reads only what ``validate`` accepts, defensively (the page must never break on a result file).
"""

from __future__ import annotations

from typing import Any

from covar_harness.leaderboard.concepts import concepts_of
from covar_harness.leaderboard.report import gallery as gal
from covar_harness.leaderboard.report.html import esc, pct
from covar_harness.results.files import is_number

EXAMPLES = 8


def _interval(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value):
        return f" [{pct(value[0])}, {pct(value[1])}]"
    return ""


def _concept_rows(concepts: dict) -> str:
    rows = []
    for r in concepts["background_errors"]:
        count = r.get("count") if is_number(r.get("count")) else "-"
        p = r.get("p_value")
        rows.append(
            f'<tr><td class="text">{esc(r["concept"])}</td><td>{esc(count)}</td>'
            f"<td>{pct(r.get('share'))}{_interval(r.get('interval'))}</td><td>{pct(r.get('null_share'))}</td>"
            f"<td>{esc(f'{p:.3g}' if is_number(p) else '-')}</td></tr>"
        )
    return (
        '<table class="sortable"><thead><tr><th class="text">concept</th><th>errors</th><th>share [95% CI]</th>'
        "<th>null</th><th>p</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _class_rows(concepts: dict) -> str:
    rows = []
    items = concepts.get("by_predicted_class")
    for r in items if isinstance(items, list) else []:
        if not isinstance(r, dict) or not isinstance(r.get("concept"), str):
            continue
        rows.append(
            f'<tr><td class="text">predicted <b>{esc(r.get("class"))}</b> because of <b>{esc(r["concept"])}</b>'
            f"</td><td>{esc(r.get('count'))} of {esc(r.get('n'))}</td><td>{pct(r.get('share'))}</td></tr>"
        )
    if not rows:
        return ""
    return (
        '<h3>Top background concept per predicted class</h3><table><thead><tr><th class="text">reading</th>'
        "<th>errors</th><th>share</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _association(concepts: dict) -> str:
    a = concepts.get("class_association")
    if not isinstance(a, dict) or not is_number(a.get("agreement")):
        return ""
    return (
        f"<p>The named concept is the most frequent one of the error's predicted class in {pct(a['agreement'])} of "
        f"the errors; with the concepts permuted across errors: {pct(a.get('null_mean'))} (95th percentile "
        f"{pct(a.get('null_95'))}, p = {esc(a.get('p_value'))}).</p>"
    )


def example_card(row: dict, names: list[str] | None, image: str | None) -> str | None:
    """A background-driven error with its driving background cluster highlighted and named; None when the log row
    names no driving cluster."""
    named = row.get("concepts")
    if not isinstance(named, dict) or not isinstance(named.get("driving_bg_concept"), str):
        return None
    k = named.get("driving_bg_cluster")
    clusters = gal.cluster_values(row)
    if not (isinstance(k, int) and clusters and clusters[1] and 0 <= k < len(clusters[0])):
        return None
    values = [v if i == k else 0.0 for i, v in enumerate(clusters[0])]
    grid = gal.patch_grid(values, clusters[1])
    img = f'<img src="{esc(image)}" alt="CCI overlay of sample {esc(row.get("index"))}">' if image else ""
    score = next((s for c, s in _pairs(named, k) if c == named["driving_bg_concept"]), None)
    facts = [
        ("label", gal.class_label(row.get("label"), names)),
        ("prediction", gal.class_label(row.get("pred"), names)),
        ("named region", f"<b>{esc(named['driving_bg_concept'])}</b>" + (f" ({score:+.3f})" if score else "")),
        ("importance", f"{clusters[0][k]:+.3f}"),
    ]
    dl = "".join(f"<dt>{a}</dt><dd>{b}</dd>" for a, b in facts)
    return (
        f'<div class="card"><div class="maps">{img}{grid}</div><div class="file">#{esc(row.get("index"))} '
        f"{esc(row.get('file', ''))}</div><dl>{dl}</dl></div>"
    )


def _pairs(named: dict, k: int) -> list[tuple[str, float]]:
    clusters = named.get("clusters")
    if not isinstance(clusters, list) or k >= len(clusters) or not isinstance(clusters[k], list):
        return []
    return [(p[0], float(p[1])) for p in clusters[k] if isinstance(p, list) and len(p) == 2 and is_number(p[1])]


def concepts_section(rec: dict, rows: list[dict], names: list[str] | None, images: dict[int, str]) -> str:
    """The page's section; empty when the pair did not name its regions. ``rows``: log rows of background-driven
    errors (the gallery's), ``images``: overlays copied for them."""
    concepts = concepts_of(rec)
    if concepts is None:
        return ""
    described = concepts.get("bank")
    bank: dict = described if isinstance(described, dict) else {}
    head = (
        f'<h2>What drives background errors</h2><p class="note">Bank <b>{esc(bank.get("name"))}</b> '
        f"({esc(bank.get('kind'))}, {esc(bank.get('n_concepts'))} concepts; source: {esc(bank.get('source'))}). "
        f"{esc(concepts.get('n_bg_errors_named'))} of {esc(concepts.get('n_bg_errors'))} background-driven errors "
        "have a named driving background cluster. Null: the concept labels permuted across each error's clusters.</p>"
    )
    cards = [c for row in rows if (c := example_card(row, names, images.get(row.get("index", -1)))) is not None]
    examples = (
        '<h3>Examples</h3><p class="note">Shaded: the driving background cluster on the model\'s patch grid.</p>'
        f'<div class="cards">{"".join(cards[:EXAMPLES])}</div>'
        if cards
        else ""
    )
    return head + _concept_rows(concepts) + _association(concepts) + _class_rows(concepts) + examples
