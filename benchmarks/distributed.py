"""Data-parallel pairs: the demo main job under ``torchrun --nproc-per-node 2`` (CPU) against one process.

Both runs share one text-embedding cache, filled before either is timed, and every process gets one thread
(``OMP_NUM_THREADS=1``, what torchrun gives each rank): float sums depend on the thread count, so only then can the
results be compared byte for byte. The check: every result file minus provenance, and every samples.jsonl, equal.
Prints both wall-clock times (process start to exit, model loading included) and the ratio 2 ranks / 1 process
(goal in issue 16: at most 0.6 on 2 cores). ``--threads N`` also times one process with N threads (not compared).

    python benchmarks/distributed.py [--models demo] [--tasks 'covar-shapes/*'] [--limit N] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def covar_harness() -> str:
    return shutil.which("covar-harness") or str(Path(sys.executable).with_name("covar-harness"))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds


def results(out: Path) -> dict[str, tuple[dict, bytes]]:
    """Per result file: its content minus provenance, and its samples.jsonl."""
    found = {}
    for path in sorted(out.rglob("*.json")):
        obj = json.loads(path.read_text())
        obj.pop("provenance")
        log = path.with_name(path.stem + ".samples.jsonl")
        found[str(path.relative_to(out))] = (obj, log.read_bytes() if log.exists() else b"")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo")
    parser.add_argument("--tasks", default="covar-shapes/*")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers per process (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="also time one process with N threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COVAR_HARNESS_TEXT_CACHE": str(root / "text-cache")}
        base = [covar_harness(), "run", "--models", args.models, "--tasks", args.tasks, "--log-samples"]
        base += ["--workers", str(args.workers)] + ([] if args.limit is None else ["--limit", str(args.limit)])
        timed([*base, "--output-dir", str(root / "warm"), "--limit", "1"], env)  # fills the text cache
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        two = timed([*torchrun, "--no-python", *base, "--output-dir", str(root / "two")], env)
        one = timed([*base, "--output-dir", str(root / "one")], env)
        a, b = results(root / "two"), results(root / "one")
        same = a == b and len(a) > 0
        print(f"job: run --models {args.models} --tasks {args.tasks!r} --limit {args.limit}: {len(b)} pair(s)")
        print(f"1 process, 1 thread:              {one:7.1f} s")
        print(f"torchrun 2 ranks, 1 thread each:  {two:7.1f} s")
        print(f"ratio 2 ranks / 1 process:        {two / one:7.2f}")
        print(f"results identical except provenance: {same}")
        if args.threads:
            env_n = {**env, "OMP_NUM_THREADS": str(args.threads)}
            many = timed([*base, "--output-dir", str(root / "many")], env_n)
            label = f"1 process, {args.threads} threads:"
            print(f"{label:34s}{many:7.1f} s (ratio 2 ranks / this: {two / many:.2f})")
        if not same:
            raise SystemExit("results differ")


if __name__ == "__main__":
    main()
