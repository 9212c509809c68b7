"""Where the time of the demo's main job goes: the share of each phase (load, data, zero-shot, masks, attribution,
diagnosis, write) summed over its pairs, and the forward passes per image, read back from each result's
``provenance.cost`` (what the leaderboard's cost table shows).

    python benchmarks/phase_costs.py [--limit N] [--data-dir DIR] [--keep DIR]

The main job is ``covar-harness run --models demo --tasks 'covar-shapes/*'`` (default rules, CCI, the region test);
``--limit`` makes it shorter (a seeded subset per task). Numbers are measured in this run, on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="images per task (default: all 240)")
    ap.add_argument("--data-dir", type=Path, default=None, help="where COVAR-Shapes is (generated when absent)")
    ap.add_argument("--keep", type=Path, default=None, help="write the results here (default: a temp folder)")
    ap.add_argument("--tasks", default="covar-shapes/*")
    args = ap.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="phase-costs-"))
    cmd = [sys.executable, "-m", "covar_harness", "run", "--models", "demo", "--tasks", args.tasks]
    cmd += ["--output-dir", str(out), "--log-samples", "--overwrite"]
    cmd += ["--limit", str(args.limit)] if args.limit else []
    cmd += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    env = {"PYTHONPATH": ":".join(str(ROOT / p) for p in ("harness", "plugins", "tasks"))}
    started = time.perf_counter()
    done = subprocess.run(cmd, env={**__import__("os").environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    seconds: dict[str, float] = {}
    rows: dict[str, float] = {}
    images = pairs = 0
    loads: dict[str, float] = {}
    for path in sorted(out.rglob("*.json")):
        result = json.loads(path.read_text())
        cost = result["provenance"]["cost"]
        pairs += 1
        images += cost["n_images"]
        for name, phase in cost["phases"].items():
            if name == "load":  # one load per model, recorded in each of its pairs
                loads[result["model"]["spec"]] = phase["seconds"]
                continue
            seconds[name] = seconds.get(name, 0.0) + phase["seconds"]
            rows[name] = rows.get(name, 0.0) + (phase["forward_passes_per_image"] or 0) * cost["n_images"]
    seconds["load"] = sum(loads.values())
    total = sum(seconds.values())
    print(f"{pairs} pairs, {images} images, wall {wall:.1f} s (process), phases sum {total:.1f} s, results in {out}")
    print(f"{'phase':<14}{'seconds':>10}{'share':>9}{'passes/img':>12}")
    for name in sorted(seconds, key=seconds.get, reverse=True):  # type: ignore[arg-type]
        print(f"{name:<14}{seconds[name]:>10.1f}{seconds[name] / total:>9.1%}{rows.get(name, 0) / images:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
