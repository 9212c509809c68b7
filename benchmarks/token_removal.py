"""Benchmark: cost of exact patch-token removal (CCI's K removal passes) relative to one plain forward.

Run: ``python benchmarks/token_removal.py [--threads 2] [--reps 3] [--batch 4] [--k 7]`` (about 1 min on
2 idle cores; on a loaded machine pass ``--threads 1``: OpenMP spin-waits distort multi-thread timings).

For a ViT-B/32-sized open_clip model (random weights, 224 px) and a tiny tower, with B images and K drop
patterns per image that partition the patches into clusters of different sizes (as k-means gives), it prints
ratios measured in the same run (medians over ``--reps``):

- K removal passes, batched in one call, relative to one plain ``encode_images`` of the same B images
  (ideal: about K times the kept fraction, i.e. a bit under K);
- speedup of the batched call over a Python loop that calls ``encode_images_without`` once per cluster;
- cost of the forced masked path (full-length sequences, key masks) relative to the forced shortened path
  (sequences physically shortened, one forward per kept-token count), and of the default ``auto`` plan.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from covar_harness.attribution.settings import DEFAULTS


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls (bench() has already run every path once: warm)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cluster_patterns(batch: int, k: int, n: int, seed: int = 0) -> torch.Tensor:
    """(B, K, N) drop patterns: pattern k drops cluster k of a random partition with uneven cluster sizes."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch, k, generator=g) + 0.3  # uneven cluster sizes, different per image
    labels = torch.multinomial(weights, n, replacement=True, generator=g)  # (B, N)
    labels[:, :k] = torch.arange(k)  # every cluster non-empty
    return labels[:, None, :] == torch.arange(k)[None, :, None]


def adapter_for(model, name: str):
    from covar_harness_plugins.openclip import OpenClipAdapter

    return OpenClipAdapter(name, model, preprocess=None, tokenizer=None, device="cpu", precision="fp32")


def tiny_model():
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=64,
        vision_cfg={"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    )


def bench(adapter, image_size: int, batch: int, k: int, reps: int) -> dict[str, float]:
    """Seconds for each way of computing the same B x K embeddings, plus the plain forward."""
    rows, cols = adapter.patch_grid
    pixels = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    drop = cluster_patterns(batch, k, rows * cols)
    adapter.encode_images(pixels)  # warm-up
    reference = adapter.encode_images_without(pixels, drop, strategy="shorten")
    for strategy in ("auto", "mask"):  # the figures below compare equal results
        torch.testing.assert_close(
            adapter.encode_images_without(pixels, drop, strategy=strategy), reference, rtol=1e-4, atol=1e-4
        )
    return {
        "plain": median_seconds(lambda: adapter.encode_images(pixels), reps),
        "auto": median_seconds(lambda: adapter.encode_images_without(pixels, drop), reps),
        "loop": median_seconds(lambda: [adapter.encode_images_without(pixels, drop[:, j]) for j in range(k)], reps),
        "shorten": median_seconds(lambda: adapter.encode_images_without(pixels, drop, strategy="shorten"), reps),
        "mask": median_seconds(lambda: adapter.encode_images_without(pixels, drop, strategy="mask"), reps),
        "kept": float((~drop).float().mean()),
    }


def report(name: str, t: dict[str, float], k: int) -> None:
    print(f"\n{name}: plain forward {t['plain'] * 1e3:.1f} ms; mean kept fraction {t['kept']:.3f}")
    print(
        f"  K={k} removal passes (batched, auto) / plain forward : {t['auto'] / t['plain']:.2f}"
        f"   (ideal ~{k * t['kept']:.2f})"
    )
    print(f"  per-cluster Python loop / batched                   : {t['loop'] / t['auto']:.2f}x")
    print(f"  masked path / shortened path                        : {t['mask'] / t['shorten']:.2f}")
    print(f"  auto plan / shortened path                          : {t['auto'] / t['shorten']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--k", type=int, default=DEFAULTS.k, help=f"clusters (default: CCISettings, {DEFAULTS.k})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import open_clip

    print(
        f"torch {torch.__version__}, open_clip {open_clip.__version__}, {args.threads} threads, "
        f"B={args.batch}, K={args.k}, median of {args.reps}"
    )
    with torch.inference_mode():
        big = adapter_for(open_clip.create_model("ViT-B-32", pretrained=None), "ViT-B-32 (random)")
        report("ViT-B/32 @224 (7x7 patches)", bench(big, 224, args.batch, args.k, args.reps), args.k)
        small = adapter_for(tiny_model(), "tiny")
        report(
            "tiny ViT @64 (8x8 patches, width 128, 4 layers)",
            bench(small, 64, args.batch, args.k, max(args.reps, 5)),
            args.k,
        )


if __name__ == "__main__":
    main()
