"""CCI cost: images/s of the harness's evaluation alone and with ``--attribution cci``, and CCI's compute
relative to the (K+1)-forward-pass bound (one plain forward + one per removed cluster).

Models: the tiny test open_clip ViT (32 px, 4x4 patches) and a random ViT-B/32 (224 px, 7x7 patches).
End to end: ``evaluate_task`` on generated JPEGs (same DataLoader, batch size, workers) with and without the CCI
step. Compute breakdown, on preprocessed pixels already in memory: encode_images, patch_tokens, batched k-means,
the single batched encode_images_without call; ratio = (encode + CCI parts) / ((K+1) x encode). Every ratio
printed is measured in this run.

    python benchmarks/cci.py [--images 64] [--batch-size 32] [--k 7] [--repeats 3] [--device cpu] [--models tiny,b32]
                             [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable, device: str, repeats: int) -> float:
    """Fastest wall time of ``fn()`` over ``repeats`` runs, after one warm-up run (the minimum is the figure
    least disturbed by other processes on shared CPUs)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def load_adapter(which: str, tmp: Path, device: str):
    import open_clip

    import covar_harness
    from covar_harness_plugins.openclip import OpenClipAdapter
    from helpers import make_openclip_dir

    if which == "tiny":
        return covar_harness.load_model(f"openclip:local-dir:{make_openclip_dir(tmp / 'tiny')}", device=device)
    model, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, device=device)
    return OpenClipAdapter("ViT-B-32 (random)", model, pre, open_clip.get_tokenizer("ViT-B-32"), device, "fp32")


def end_to_end(
    adapter, task_yaml: Path, batch_size: int, workers: int, steps: list, repeats: int, device: str
) -> float:
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.run.evaluator import evaluate_task
    from covar_harness.run.options import RunOptions
    from covar_harness.run.progress import Reporter
    from covar_harness.run.text_cache import ClassifierCache

    cat = load_catalog(include_paths=[task_yaml])
    cfg = cat.tasks.get("bench/images")
    opts = RunOptions(batch_size=batch_size, workers=workers, steps=steps)
    classifiers = ClassifierCache(adapter)
    return timed(lambda: evaluate_task(adapter, cfg, cat, opts, classifiers, Reporter()), device, repeats)


def breakdown(adapter, pixels, k: int, repeats: int, device: str) -> dict[str, float]:
    """Seconds per batch of each CCI part, on the same in-memory batch."""
    import torch
    import torch.nn.functional as F

    from covar_harness.attribution.engine import attribute, cluster_patterns
    from covar_harness.attribution.kmeans import batched_kmeans
    from covar_harness.attribution.removal import patch_tokens
    from covar_harness.attribution.settings import DEFAULTS

    settings = replace(DEFAULTS, k=k)
    seeds = list(range(len(pixels)))
    tokens = patch_tokens(adapter, pixels, settings.layer)
    labels = batched_kmeans(tokens, k, seeds, settings.kmeans_n_init, settings.kmeans_iters).labels
    patterns, _ = cluster_patterns(labels, k)
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    text = F.normalize(torch.randn(1, emb.shape[1], device=emb.device), dim=-1).expand_as(emb)
    target = torch.zeros(len(pixels), dtype=torch.long)
    return {
        "encode": timed(lambda: adapter.encode_images(pixels), device, repeats),
        "patch_tokens": timed(lambda: patch_tokens(adapter, pixels, settings.layer), device, repeats),
        "kmeans": timed(
            lambda: batched_kmeans(tokens, k, seeds, settings.kmeans_n_init, settings.kmeans_iters), device, repeats
        ),
        "removal": timed(lambda: adapter.encode_images_without(pixels, patterns), device, repeats),
        "cci_total": timed(lambda: attribute(adapter, pixels, emb, text, target, seeds, settings), device, repeats),
    }


def main() -> None:
    from covar_harness.attribution.settings import DEFAULTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--k", type=int, default=DEFAULTS.k, help=f"clusters (default: CCISettings, {DEFAULTS.k})")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="tiny,b32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on busy machines)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from eval_overhead import make_images

    from covar_harness.attribution import AttributionStep
    from covar_harness.attribution.settings import AttributionSettings
    from helpers import write_task_yaml

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    folder = make_images(tmp / "imgs", args.images)
    task = write_task_yaml(tmp / "task.yaml", "bench/images", folder)
    files = sorted(folder.rglob("*.jpg"))
    print(
        f"{len(files)} images, batch {args.batch_size}, K={args.k}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, DataLoader workers {args.workers}"
    )
    for which in args.models.split(","):
        adapter = load_adapter(which, tmp, args.device)
        from PIL import Image

        pixels = torch.stack([adapter.preprocess(Image.open(f).convert("RGB")) for f in files[: args.batch_size]])
        step = AttributionStep(AttributionSettings("cci", replace(DEFAULTS, k=args.k)))
        plain = end_to_end(adapter, task, args.batch_size, args.workers, [], args.repeats, args.device)
        with_cci = end_to_end(adapter, task, args.batch_size, args.workers, [step], args.repeats, args.device)
        parts = breakdown(adapter, pixels.to(args.device), args.k, args.repeats, args.device)
        n, b = len(files), len(pixels)
        bound = (args.k + 1) * parts["encode"]
        grid = "x".join(map(str, adapter.patch_grid))
        print(f"\n== {adapter.name}  ({grid} patches)")
        print(f"  evaluation alone      : {n / plain:8.1f} img/s")
        print(f"  evaluation + CCI      : {n / with_cci:8.1f} img/s   ({with_cci / plain:.2f}x the time of evaluation)")
        print(
            f"  per batch of {b}: encode {parts['encode'] * 1e3:.1f} ms | patch_tokens "
            f"{parts['patch_tokens'] * 1e3:.1f} ms | k-means {parts['kmeans'] * 1e3:.1f} ms | "
            f"removal (1 call, {args.k} patterns) {parts['removal'] * 1e3:.1f} ms | "
            f"attribute() {parts['cci_total'] * 1e3:.1f} ms"
        )
        summed = parts["encode"] + parts["patch_tokens"] + parts["kmeans"] + parts["removal"]
        print(
            f"  (K+1)-pass bound      : {bound * 1e3:.1f} ms;  (encode + attribute()) / bound = "
            f"{(parts['encode'] + parts['cci_total']) / bound:.2f};  (encode + sum of parts) / bound = "
            f"{summed / bound:.2f};  removal / (K x encode) = {parts['removal'] / (args.k * parts['encode']):.2f}"
        )


if __name__ == "__main__":
    main()
