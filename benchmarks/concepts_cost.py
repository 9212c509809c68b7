"""Benchmark: the added cost of naming CCI's regions (``--concepts``) per image, relative to CCI alone.

Run: ``python benchmarks/concepts_cost.py [--threads 1] [--reps 5] [--batch 32]`` (CPU; about a minute).

Two open_clip ViTs: the bundled demo model (``demo/shapes-shortcut``, 64 px, 8x8 patches) with the
``covar-shapes-backgrounds`` image bank (10 concepts), and a ViT-B/32 with random weights (224 px, 7x7 patches,
no download) with the shipped ``visual-concepts`` text bank (172 concepts, 80 ImageNet templates' worth of text
would be the same matrix; the bank is encoded once per model and cached, so it is timed separately, once).

Per batch of B random images, each timed as the fastest of ``--reps`` paired rounds (CCI right before naming, so
load drifting on a shared machine cancels out):

- CCI alone: ``attribute`` (patch tokens, k-means, ONE removal call of K patterns, scores), what ``run
  --attribution cci`` does per batch;
- naming: what the concepts step adds per batch (``name_batch``: directions from the removal embeddings CCI
  already holds, one matrix product with the bank, top concepts, the driving background cluster per image and
  the records). No model call.

Prints per model: ms per image for each, and the ratio naming / CCI (the issue's aim: under 5%).
"""

from __future__ import annotations

import argparse
import time

import torch

from covar_harness.models.adapter import logit_scale


def _fastest(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, adapter, bank_spec: str, batch: int, reps: int) -> None:
    import numpy as np
    import torch.nn.functional as F

    from covar_harness.attribution.engine import attribute, sample_seed
    from covar_harness.attribution.settings import DEFAULTS
    from covar_harness.concepts.banks import resolve_bank
    from covar_harness.concepts.naming import name_batch
    from covar_harness.run.text_cache import build_classifier

    torch.manual_seed(0)
    from PIL import Image

    shape = adapter.preprocess(Image.new("RGB", (96, 96))).shape  # the model's input size, from its own transform
    pixels = torch.rand(batch, *shape)
    bank = resolve_bank(bank_spec)
    start = time.perf_counter()
    embeddings = bank.embed(adapter, ["a photo of a {}."], None)
    bank_seconds = time.perf_counter() - start
    classes = ["cat", "dog", "bird", "fish"]
    W = build_classifier(adapter, classes, ["a photo of a {}."])
    with torch.no_grad():
        emb = F.normalize(adapter.encode_images(pixels).float(), dim=-1)
    target = (emb @ W).argmax(dim=-1)
    seeds = [sample_seed(0, str(i)) for i in range(batch)]
    n = adapter.patch_grid[0] * adapter.patch_grid[1]
    fg = [np.random.default_rng(i).random(n) for i in range(batch)]
    temperature, _ = logit_scale(adapter)
    holder = {}

    def cci() -> None:
        with torch.no_grad():
            holder["r"] = attribute(adapter, pixels, emb, W[:, target].T, target, seeds, DEFAULTS)

    def naming() -> None:
        r = holder["r"]
        name_batch(
            r.emb,
            r.without,
            r.valid,
            embeddings,
            bank.concepts,
            3,
            temperature,
            r.importance.tolist(),
            r.assignments.tolist(),
            fg,
        )

    cci()
    t_cci, t_name = [], []
    for _ in range(reps):
        t_cci.append(_fastest(cci, 1))
        t_name.append(_fastest(naming, 1))
    cci_ms, name_ms = 1000 * min(t_cci) / batch, 1000 * min(t_name) / batch
    print(
        f"{name:28s} bank {bank.name} ({len(bank.concepts)} concepts, embedded once in {bank_seconds:.2f} s): "
        f"CCI {cci_ms:.2f} ms/image, naming {name_ms:.3f} ms/image, naming / CCI = {name_ms / cci_ms:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from covar_harness.models.specs import load_model

    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, fastest of {args.reps}")
    bench("demo/shapes-shortcut", load_model("demo/shapes-shortcut"), "covar-shapes-backgrounds", args.batch, args.reps)
    torch.manual_seed(0)
    adapter = load_model("openclip:ViT-B-32")  # random weights (no tag): no download
    bench("ViT-B-32 (random weights)", adapter, "visual-concepts", max(4, args.batch // 4), args.reps)


if __name__ == "__main__":
    main()
