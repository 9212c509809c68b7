"""Harness overhead: wall time of the harness's zero-shot evaluation over a bare encode_image loop.

Same model (random ViT-B-32 at 224 px, or --tiny), same images (generated JPEGs), same batch size. The bare loop
opens, preprocesses and encodes the images in the main process; the harness adds the DataLoader, class-text
embeddings, top-k, metrics and the per-sample bookkeeping. Goal: <= 1.10x. Prints ratios measured in this run.

    python benchmarks/eval_overhead.py [--images 256] [--batch-size 32] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_images(root: Path, n: int, classes=("cat", "dog", "fish", "bird")) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = classes[i % len(classes)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / cls / f"{i:05d}.jpg")
    return root


def bare_loop(adapter, files: list[Path], batch_size: int) -> float:
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(files), batch_size):
            pixels = torch.stack([adapter.preprocess(Image.open(f).convert("RGB")) for f in files[s : s + batch_size]])
            adapter.model.encode_image(pixels)
    return time.perf_counter() - t0


def harness(adapter, task_yaml: Path, batch_size: int, workers: int) -> float:
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.run.evaluator import evaluate_task
    from covar_harness.run.options import RunOptions
    from covar_harness.run.progress import Reporter
    from covar_harness.run.text_cache import ClassifierCache

    cat = load_catalog(include_paths=[task_yaml])
    cfg = cat.tasks.get("bench/images")
    opts = RunOptions(batch_size=batch_size, workers=workers)
    t0 = time.perf_counter()
    evaluate_task(adapter, cfg, cat, opts, ClassifierCache(adapter), Reporter())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny 32 px model instead of ViT-B-32")
    args = ap.parse_args()

    import open_clip
    import torch

    from covar_harness_plugins.openclip import OpenClipAdapter
    from helpers import make_openclip_dir, write_task_yaml

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    if args.tiny:
        import covar_harness

        adapter = covar_harness.load_model(f"openclip:local-dir:{make_openclip_dir(tmp / 'tiny')}")
    else:
        model, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        adapter = OpenClipAdapter("ViT-B-32 (random)", model, pre, open_clip.get_tokenizer("ViT-B-32"), "cpu", "fp32")
    folder = make_images(tmp / "imgs", args.images)
    task = write_task_yaml(tmp / "task.yaml", "bench/images", folder)
    files = sorted(folder.rglob("*.jpg"))
    bare_loop(adapter, files[: args.batch_size], args.batch_size)  # warm-up

    bare = statistics.median(bare_loop(adapter, files, args.batch_size) for _ in range(args.repeats))
    print(
        f"model: {adapter.name}; {len(files)} images, batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(f"bare encode_image loop        : {bare:7.2f} s  ({len(files) / bare:7.1f} img/s)  1.00x")
    for workers in (0, min(4, os.cpu_count() or 1)):
        t = statistics.median(harness(adapter, task, args.batch_size, workers) for _ in range(args.repeats))
        print(f"harness, {workers} DataLoader workers : {t:7.2f} s  ({len(files) / t:7.1f} img/s)  {t / bare:.2f}x")


if __name__ == "__main__":
    main()
