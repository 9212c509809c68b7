"""The fused zero-shot forward: ``encode_images_with_tokens`` (one pass) against ``encode_images`` +
``patch_tokens`` (two passes), which is what each batch with CCI cost before. Both measured in this run on the
same pixels; the numbers are checked equal first.

    python benchmarks/fused_tokens.py [--batch-size 16] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch


def fastest(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    from covar_harness_plugins.openclip import OpenClipAdapter

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")  # random weights, no download
    adapter = OpenClipAdapter("ViT-B-32 (random)", model.eval(), preprocess, None, "cpu", "fp32")
    pixels = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    emb, tokens = adapter.encode_images_with_tokens(pixels)
    assert torch.equal(emb, adapter.encode_images(pixels)) and torch.equal(tokens, adapter.patch_tokens(pixels))
    separate = fastest(lambda: (adapter.encode_images(pixels), adapter.patch_tokens(pixels)), args.repeats)
    fused = fastest(lambda: adapter.encode_images_with_tokens(pixels), args.repeats)
    print(f"ViT-B/32, batch {args.batch_size}, {torch.get_num_threads()} thread(s), fastest of {args.repeats}")
    print(f"encode_images + patch_tokens: {separate * 1000:.1f} ms; fused: {fused * 1000:.1f} ms")
    print(f"ratio fused / separate: {fused / separate:.2f}")


if __name__ == "__main__":
    main()
