"""The persistent text-embedding cache: a classifier's first build (every prompt encoded, then stored) against
its second (read from the cache, as a later run or another shard does), in one run.

Default: the bundled demo model (tiny open_clip ViT) with 1000 classes x 80 templates (80,000 prompts), the
CounterAnimals / ImageNet size. Goal (issue 16): the cached build at least 20x faster. Prints the times and the
ratio measured in this run.

    python benchmarks/text_cache.py [--classes 1000] [--templates 80] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed_build(adapter, spec: str, root: Path, classes: list[str], templates: list[str]):
    """Seconds for one classifier build through a fresh ClassifierCache over the store at ``root``, as a new run
    does (fingerprint included), and the classifier."""
    from covar_harness.run.progress import Reporter
    from covar_harness.run.text_cache import ClassifierCache, store_for

    t0 = time.perf_counter()
    store = store_for(spec, adapter, root, "fp32")
    W = ClassifierCache(adapter, store).get(classes, templates, Reporter())
    return time.perf_counter() - t0, W


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo/shapes-clean")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--templates", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3, help="cached builds timed (median reported)")
    args = parser.parse_args()

    import torch

    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.models.specs import load_model, resolve_models

    torch.set_grad_enabled(False)
    catalog = load_catalog()
    spec = resolve_models(args.model, catalog)[0].spec
    adapter = load_model(spec, "cpu", "fp32", None, catalog)
    classes = [f"class number {i}" for i in range(args.classes)]
    templates = [f"template {j}: a photo of a {{}}." for j in range(args.templates)]
    with tempfile.TemporaryDirectory() as tmp:
        cold, W = timed_build(adapter, spec, Path(tmp), classes, templates)
        warm_times = []
        for _ in range(args.repeats):
            seconds, W2 = timed_build(adapter, spec, Path(tmp), classes, templates)
            assert torch.equal(W, W2), "a cached classifier must be the built one, bit for bit"
            warm_times.append(seconds)
    warm = statistics.median(warm_times)
    print(
        f"model {spec}: {args.classes} classes x {args.templates} templates = {args.classes * args.templates} prompts"
    )
    print(f"uncached build (encode + store): {cold:.3f} s")
    print(f"cached build (fingerprint + read), median of {args.repeats}: {warm:.4f} s")
    print(f"speed-up: {cold / warm:.1f}x (cached / uncached = {warm / cold:.4f})")


if __name__ == "__main__":
    main()
