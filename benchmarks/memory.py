"""Memory stays flat in dataset size: peak RSS of one pair at 1x and 4x the images (issue 16).

Generates an image folder of ``4 * N`` noisy PNGs (``--size`` pixels square) and a task over it, then runs the
demo model on the task twice, ``--limit N`` and ``--limit 4N``, each in its own child process: the peak RSS
is ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a wrapper process around each run, so the two runs
never share a high-water mark. The pass streams (a DataLoader, batches dropped once processed), so only per-sample
records (top-5, one log row) grow with N; holding every image would add ``3 x 4N x H x W`` floats.

    python benchmarks/memory.py [--n 500] [--size 96] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def make_folder(root: Path, n: int, size: int) -> None:
    """``n`` PNGs of noise around one colour per class (10 classes), written once."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = f"class{i % 10}"
        (root / cls).mkdir(parents=True, exist_ok=True)
        base = np.array([(i % 10) * 25, 128, 255 - (i % 10) * 25])
        pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / cls / f"{i:05d}.png")


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS in MiB of ``cmd`` and its children (Linux reports KiB)."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="images at 1x (4x: 4n)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--model", default="demo/shapes-clean")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root / "images", 4 * args.n, args.size)
        tasks = root / "tasks"
        tasks.mkdir()
        (tasks / "bench.yaml").write_text(
            f"task: bench/memory\ndataset:\n  format: imagefolder\n  path: {root / 'images'}\n"
            "templates: ['a photo of a {}.']\nversion: 1\n"
        )
        env = {**os.environ, "COVAR_HARNESS_TEXT_CACHE": str(root / "text-cache")}
        exe = shutil.which("covar-harness") or str(Path(sys.executable).with_name("covar-harness"))
        peaks = {}
        for scale in (1, 4):
            cmd = [exe, "run", "--models", args.model, "--tasks", "bench/memory", "--include-path", str(tasks)]
            cmd += ["--limit", str(scale * args.n), "--workers", str(args.workers), "--log-samples"]
            peaks[scale] = peak_rss_mib([*cmd, "--output-dir", str(root / f"out{scale}")], env)
    held = 3 * 4 * args.n * args.size * args.size * 4 / 2**20
    print(f"model {args.model}, {args.size}x{args.size} PNGs, workers {args.workers}")
    print(f"peak RSS at 1x ({args.n} images):  {peaks[1]:8.1f} MiB")
    print(f"peak RSS at 4x ({4 * args.n} images): {peaks[4]:8.1f} MiB")
    print(f"ratio 4x / 1x: {peaks[4] / peaks[1]:.3f} (growth {peaks[4] - peaks[1]:+.1f} MiB; holding the 4x images")
    print(f"  as float32 pixels at their stored size would take {held:.1f} MiB)")


if __name__ == "__main__":
    main()
