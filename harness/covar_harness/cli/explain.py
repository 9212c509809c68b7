"""``covar-harness explain``: CCI for one image, as a table of clusters and an overlay PNG.

It prints the prediction and the top-5 (cosine similarities); with ``--mask``, the fg fraction and the driver
under each diagnosis rule (``diagnosis.RULES``, default threshold, no null draws), the same numbers the
overlay's caption shows. Rules that need what explain does not compute (Shapley values, the region test) say so.

The same code path as ``run --attribution cci`` (``covar_harness.attribution.engine.attribute``) on a batch of one, with
the same ``CCISettings`` (its defaults are the flags' defaults), so what you see here is what the sample logs of a
run contain for that image.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.table import Table

from covar_harness.attribution import CCISettings, overlays
from covar_harness.attribution.base import check_k
from covar_harness.attribution.engine import attribute, check_model, sample_seed
from covar_harness.attribution.overlays import Caption
from covar_harness.attribution.settings import DEFAULTS
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import console as make_console
from covar_harness.common.console import markup
from covar_harness.concepts.banks import resolve_bank
from covar_harness.concepts.naming import name_batch
from covar_harness.data.resources import load_list
from covar_harness.diagnosis.rules import RULES, DiagnosisSettings, Evidence, diagnose_sample
from covar_harness.masks.geometry import mask_patch_fractions
from covar_harness.models.adapter import AdapterContractError, attribution_support, logit_scale
from covar_harness.models.specs import ModelLoadError, load_model
from covar_harness.run.text_cache import build_classifier, default_text_cache, store_for

if TYPE_CHECKING:
    from covar_harness.attribution import CCISettings


def parse_classes(text: str) -> list[str]:
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if not classes:
        raise UsageError("--classes needs at least one class name")
    if len(set(classes)) != len(classes):
        raise UsageError("--classes has duplicates")
    return classes


def _load_image(path: Path, what: str = "image", mode: str = "RGB"):
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as exc:  # unreadable, truncated, decompression bomb: one line, exit 2
        raise UsageError(f"cannot read {what} {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def _load_adapter(args: Namespace, settings: CCISettings):
    """The model, or one line (exit 2) when it cannot be loaded or attributed: no traceback for a bad spec,
    an unreachable hub or a model that cannot honour ``--k`` / ``--layer``."""

    catalog = load_catalog(args.include_path)
    try:
        adapter = load_model(args.model, args.device, args.precision, None, catalog)
    except UsageError:
        raise
    except Exception as exc:  # one command, one model: its failure is the one line the user sees
        text = str(exc).strip().splitlines()
        raise UsageError(
            str(exc)
            if isinstance(exc, ModelLoadError) and text
            else f"cannot load model {args.model!r}: {type(exc).__name__}: {text[0] if text else ''}"
        ) from exc
    supported, why = attribution_support(adapter)
    if not supported:
        raise UsageError(f"model {args.model!r} cannot be attributed: {why}")
    try:
        check_model(adapter, settings, "cci")
    except (ValueError, AdapterContractError) as exc:  # --k above the patch count, a missing layer, a bad grid
        raise UsageError(str(exc)) from exc
    return adapter


def explain_image(
    adapter: Any,
    image,
    classes: list[str],
    *,
    templates: list[str],
    target: str | None = None,
    settings: CCISettings | None = None,
    sample_id: str = "image",
) -> dict[str, Any]:
    """Zero-shot scores and CCI of one PIL image (``settings``: CCISettings, its defaults when None; ``target``
    None explains the predicted class); returns what the table and the overlay need."""

    if target is not None and target not in classes:
        raise UsageError(f"--target {target!r} is not one of --classes")
    settings = replace(settings or DEFAULTS, target="pred" if target is None else "label")
    check_k("cci", settings.k)
    W = build_classifier(adapter, classes, templates)  # (D, C)
    pixels = adapter.preprocess(image)[None]
    emb = F.normalize(adapter.encode_images(pixels).float(), dim=-1)
    scores = (emb @ W.to(emb.device))[0].cpu()
    t = int(scores.argmax()) if target is None else classes.index(target)
    tgt = torch.tensor([t])
    result = attribute(adapter, pixels, emb, W[:, tgt].T, tgt, [sample_seed(settings.seed, sample_id)], settings)
    return {"pixels": pixels[0], "scores": scores, "target": t, "pred": int(scores.argmax()), "result": result}


def cluster_rows(result) -> list[tuple[int, int, float, float]]:
    """(cluster, #patches, importance, drop), most important first; empty clusters are left out."""
    assignments = result.assignments[0].tolist()
    rows = [
        (c, assignments.count(c), float(result.importance[0, c]), float(result.drop[0, c]))
        for c in range(result.k)
        if assignments.count(c)
    ]
    return sorted(rows, key=lambda r: -r[2])


def top_classes(scores: Any, classes: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` best (class, score) pairs, best first."""
    values = [float(v) for v in scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]
    return [(classes[i], values[i]) for i in order]


NOT_COMPUTED = {"shapley": "explain computes no Shapley values", "counterfactual": "explain runs no region test"}


def rule_drivers(result: Any, fg: Any) -> dict[str, tuple[float | None, str | None]]:
    """{rule: (fg score, driver)} for every registered driver rule (default threshold, no null draws), from the
    attribution ``result`` (a batch of one) and the (N,) foreground fraction per patch. ``run``'s default rules
    come first, in its order, so the first (labelled the headline) is ``run``'s headline rule."""

    order = (*DiagnosisSettings().rules, *(name for name in RULES if name not in DiagnosisSettings().rules))
    settings = DiagnosisSettings(rules=order, null_draws=0)
    evidence = Evidence.of(result.sample_record(0, 0))
    outcome = diagnose_sample(0, 0, 0, evidence, np.asarray(fg, dtype=np.float64).reshape(-1), None, settings)
    return {name: (o.score, o.driver) for name, o in outcome.outcomes.items()}


def _print_prediction(console: Any, top: list[tuple[str, float]], drivers: dict | None) -> None:
    console.print(f"prediction: [bold]{markup(top[0][0])}[/bold]")
    console.print("top-5: " + ", ".join(f"{markup(name)} {score:.4f}" for name, score in top))
    if drivers is None:
        return
    console.print(f"fg fraction and driver under each rule (fg at or above {DiagnosisSettings().threshold}):")
    for i, (name, (score, driver)) in enumerate(drivers.items()):
        tail = "   (headline, as in run)" if i == 0 else ""  # rule_drivers puts run's headline rule first
        if score is None:
            why = NOT_COMPUTED.get(name, "undetermined")
            console.print(f"  {markup(name)}: n/a ({why}){tail}")
        else:
            console.print(f"  {markup(name)}: fg fraction {score:.3f}   driver: {driver}{tail}")


def cmd_explain(args: Namespace) -> int:
    classes = parse_classes(args.classes)
    check_k("cci", args.k)  # before the model loads
    settings = CCISettings(k=args.k, layer=args.layer, seed=args.seed)
    image = _load_image(args.image)
    mask_image = _load_mask(args.mask) if args.mask is not None else None
    templates = list(load_list("templates", args.templates, Path.cwd()))
    bank = resolve_bank(args.concepts) if getattr(args, "concepts", None) else None  # before the model loads
    adapter = _load_adapter(args, settings)
    out = explain_image(
        adapter, image, classes, templates=templates, target=args.target, settings=settings, sample_id=args.image.name
    )
    result, grid = out["result"], tuple(adapter.patch_grid)
    named = None if bank is None else cluster_names(adapter, result, bank, templates, args.model, args.precision)
    console = make_console()
    console.print(
        f"model: {markup(adapter.name)}   image: {markup(args.image)}   "
        f"predicted: [bold]{markup(classes[out['pred']])}[/bold]   "
        f"explained: [bold]{markup(classes[out['target']])}[/bold]   s = {float(result.s[0]):.4f}"
    )
    _print_clusters(console, result, args.k, args.layer, grid, named)
    top = top_classes(out["scores"], classes)
    size_hw = tuple(out["pixels"].shape[-2:])
    drivers = None
    if mask_image is not None:
        drivers = rule_drivers(result, mask_patch_fractions(adapter.preprocess, mask_image, grid, size_hw))
    _print_prediction(console, top, drivers)
    path = args.out or Path(f"{args.image.stem}.cci.png")
    _write_overlay(path, adapter, out, mask_image, _caption(args, classes, out, top, drivers))
    console.print(f"overlay written to {markup(path)}")
    return 0


def cluster_names(
    adapter: Any, result: Any, bank: Any, templates: list[str], spec: str, precision: str = "fp32"
) -> list[list[tuple[str, float]]]:
    """Per cluster of the explained image, its top concepts (concept, score) from the bank (docs/design.md section
    11), read off the removal embeddings CCI computed; the bank is cached by model fingerprint like a run's."""
    store = store_for(spec, adapter, default_text_cache(None), precision)
    embeddings = bank.embed(adapter, templates, store)
    temperature, _ = logit_scale(adapter)
    named = name_batch(
        result.emb, result.without, result.valid, embeddings, bank.concepts, 3, temperature, [[]], [[]], [None]
    )
    return named[0][0]


def _print_clusters(
    console: Any, result: Any, k: int, layer: int, grid: tuple, named: list[list[tuple[str, float]]] | None = None
) -> None:
    table = Table(title=f"CCI clusters (K={k}, layer {layer}, {grid[0]}x{grid[1]} patches)", title_justify="left")
    for col in ("cluster", "#patches", "importance", "drop"):
        table.add_column(col, justify="right")
    if named is not None:
        table.add_column("concept (score)", justify="left")
    for c, n, imp, drop in cluster_rows(result):
        cells = [str(c), str(n), f"{imp:+.4f}", f"{drop:+.5f}"]
        if named is not None:
            cells.append(", ".join(f"{markup(name)} ({score:+.3f})" for name, score in named[c]) or "-")
        table.add_row(*cells)
    console.print(table)


def _caption(args: Namespace, classes: list[str], out: dict, top: list, drivers: dict | None):
    """No ground truth in explain: the caption names the explained class and the image instead."""

    return Caption(
        pred=classes[out["pred"]],
        top5=[name for name, _ in top],
        rules=drivers or {},
        notes=[f"explained: {classes[out['target']]}", f"file: {args.image.name}"],
    )


def _write_overlay(path: Path, adapter: Any, out: dict, mask_image: Any, caption: Any) -> None:
    grid = tuple(adapter.patch_grid)
    size_hw = tuple(out["pixels"].shape[-2:])
    mask = None if mask_image is None else overlays.mask_to_input_frame(mask_image, adapter.preprocess, size_hw)
    result = out["result"]
    try:
        overlays.save_overlay(
            path,
            out["pixels"],
            result.patch_importance()[0].view(grid),
            result.assignments[0].view(grid),
            mask,
            adapter.preprocess,
            caption=caption,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write the overlay {str(path)!r}: {exc}") from exc


def _load_mask(path: Path):
    """The ``--mask`` PNG as mode L, read before any model loads; one line when it cannot be read."""
    return _load_image(path, "mask", "L")
