"""Benchmark: cost of each attribution method per image relative to one plain forward, and of a deletion curve.

Run: ``python benchmarks/attribution_cost.py [--threads 1] [--reps 5] [--methods gradcam,rollout,...]``
(CPU; a few minutes on one idle core, most of it RISE and occlusion on ViT-B/32).

Two open_clip ViTs: the bundled tiny demo model (``demo/shapes-clean``, 64 px, 8x8 patches, 4 blocks) and a
ViT-B/32 with random weights (``open_clip.create_model('ViT-B-32')``, 224 px, 7x7 patches, 12 blocks). For a batch
of B random images it times (the fastest of ``--reps`` rounds after one warm-up call; every ratio is paired: a plain
forward is timed right before each call, so load drifting on a shared machine cancels out):

- one plain ``encode_images`` of the B images: the unit, 1.00x;
- each method's per-patch map through the path the faithfulness command uses (``importance_maps``: the engine's
  patch tokens and k-means, then the method; for cci / occlusion / rise its one removal call). Per image the
  ratio is the same, since everything is batched;
- for the trace methods, the map alone (``patch_map``: one traced forward, plus one backward for the gradient
  methods) without the engine's clustering, to separate the method from the harness around it;
- a full deletion curve (``--steps`` + 1 points): by pixels (one ``encode_images`` of B x (steps+1) images) and
  by token removal (one removal call of B x (steps+1) patterns); timed as half of the deletion + insertion pair
  that ``pixel_curves`` / ``token_curves`` compute (one call each).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

METHODS = ("random", "cci", "occlusion", "rise", "gradcam", "rollout", "chefer", "grad-eclip")


def paired_ratio(fn: Callable[[], object], plain: Callable[[], object], reps: int) -> tuple[float, float]:
    """(seconds of ``fn``, its ratio to ``plain``): the fastest of ``reps`` rounds after one warm-up call, each
    round timing ``plain`` right before ``fn``. Why paired and fastest: on a shared machine the load drifts over
    minutes and preempts single calls; the fastest run is the one least disturbed (as ``timeit`` advises)."""
    fn()
    mine, base = [], []
    for _ in range(reps):
        start = time.perf_counter()
        plain()
        mid = time.perf_counter()
        fn()
        mine.append(time.perf_counter() - mid)
        base.append(mid - start)
    return min(mine), min(mine) / min(base)


def models(batch: int, tiny_batch: int) -> dict[str, tuple[object, int]]:
    """name -> (adapter, batch size): the tiny demo model and a random-weight ViT-B/32 (no download). The tiny
    model gets a larger batch so that its calls last long enough to time on a busy machine."""
    import open_clip

    from covar_harness.models.specs import load_model
    from covar_harness_plugins.openclip import OpenClipAdapter

    torch.manual_seed(0)
    vit = open_clip.create_model("ViT-B-32")
    return {
        "demo/shapes-clean": (load_model("demo/shapes-clean"), tiny_batch),
        "ViT-B-32 (random)": (OpenClipAdapter("ViT-B-32", vit, None, None, "cpu", "fp32"), batch),
    }


def bench_model(adapter, batch: int, methods: list[str], steps: int, reps: int) -> list[tuple[str, float, float]]:
    """(what, seconds, ratio to a plain forward) rows for one model; the first row is the plain forward."""
    from covar_harness.attribution import CCISettings
    from covar_harness.attribution.base import find_attributor
    from covar_harness.attribution.patches import canvas, importance_order
    from covar_harness.faithfulness import Scorer, pixel_curves, token_curves
    from covar_harness.faithfulness.importance import importance_maps

    side = adapter.model.visual.image_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    pixels = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    text = F.normalize(torch.randn(1, emb.shape[1], generator=torch.Generator().manual_seed(2)), dim=-1)
    text = text.expand_as(emb).contiguous()
    target, seeds, cci = torch.zeros(batch, dtype=torch.long), list(range(batch)), CCISettings(k=7)

    def plain():
        with torch.no_grad():
            return adapter.encode_images(pixels)

    rows = [("plain forward", *paired_ratio(plain, plain, reps))]
    maps = None
    for method in methods:

        def run(method=method):
            with torch.no_grad():
                return importance_maps(method, adapter, pixels, emb, text, target, seeds, cci)

        rows.append((method, *paired_ratio(run, plain, 1 if method in ("rise", "occlusion") else reps)))
        cls = find_attributor(method)
        if hasattr(cls, "patch_map"):
            alone = cls()
            rows.append(
                (
                    f"{method} (map alone)",
                    *paired_ratio(lambda a=alone: a.patch_map(adapter, pixels, text), plain, reps),
                )
            )
        maps = run() if maps is None else maps
    if maps is None:
        rows_, cols = adapter.patch_grid
        maps = torch.rand(batch, rows_ * cols)
    order = importance_order(maps)
    scorer = Scorer(text[:1].T, target, "cosine")
    base = canvas(adapter, pixels, "blur", 8.0)
    with torch.no_grad():  # deletion + insertion are one call each: a deletion curve is half of the pair
        seconds, ratio = paired_ratio(lambda: pixel_curves(adapter, pixels, order, base, scorer, steps), plain, reps)
        rows.append((f"deletion curve, pixels ({steps + 1} pts)", seconds / 2, ratio / 2))
        seconds, ratio = paired_ratio(lambda: token_curves(adapter, pixels, order, scorer, steps), plain, reps)
        rows.append((f"deletion curve, tokens ({steps + 1} pts)", seconds / 2, ratio / 2))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="images per batch for ViT-B/32")
    parser.add_argument("--tiny-batch", type=int, default=32, help="images per batch for the tiny demo model")
    parser.add_argument("--models", default="demo/shapes-clean,ViT-B-32 (random)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    from covar_harness_plugins import cci  # noqa: F401 - registers the attributors

    print(f"{args.threads} thread(s), fastest of {args.reps} paired rounds; ratio = time / one plain forward")
    for name, (adapter, batch) in models(args.batch, args.tiny_batch).items():
        if name not in args.models.split(","):
            continue
        rows = bench_model(adapter, batch, methods, args.steps, args.reps)
        print(f"\n{name}, batch {batch}: plain forward {rows[0][1] * 1000 / batch:.1f} ms per image")
        for what, seconds, ratio in rows:
            print(f"  {what:<34} {seconds * 1000 / batch:9.1f} ms/image  {ratio:8.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
