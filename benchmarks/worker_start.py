"""What persistent DataLoader workers across a model's tasks would save: the start of a fresh loader per pair.

Each pair gets its own DataLoader (run/batches.py); its workers start (fork) with the pair. This prints, for 0,
2 and 4 workers, the wall time of a whole pass over a few COVAR-Shapes images with a fresh loader (fastest of
``--repeats``), and the start overhead against 0 workers: the most a shared worker pool could save per pair.

    python benchmarks/worker_start.py [--images 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import covar_harness
    from covar_harness.api import load_task
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.data.samples import open_task_data
    from covar_harness.run.batches import iterate_batches

    samples = open_task_data(load_task("covar-shapes/original"), load_catalog()).subset(list(range(args.images)))
    preprocess = covar_harness.load_model("demo/shapes-clean").preprocess
    times = {}
    for workers in (0, 2, 4):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _batch in iterate_batches(samples, preprocess, args.images, workers):
                pass
            best = min(best, time.perf_counter() - start)
        times[workers] = best
    for workers, t in times.items():
        print(f"{workers} workers: fresh loader, {args.images} images: {1000 * t:.0f} ms")
    for workers in (2, 4):
        extra = times[workers] - times[0]
        print(f"start overhead with {workers} workers: {1000 * extra:.0f} ms per pair ({162 * extra:.0f} s over 162)")


if __name__ == "__main__":
    main()
