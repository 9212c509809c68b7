"""The main job at the cost of its forward passes: the README's demo run, against itself without attribution and
without the diagnosis null, each in one fresh process, paired (the three run one after another, ``--repeat`` times
in turn), so the ratios compare runs made under the same conditions.

    python benchmarks/main_job.py [--repeat 1] [--models demo] [--tasks 'covar-shapes/*'] [--limit N] [--threads N]

Prints, per configuration, the wall time (median over the repeats) and the ratios the issue asks for:
default / ``--attribution none`` (what CCI and the diagnosis cost on top of the zero-shot pass) and default /
``--null-draws 0`` (what the diagnosis null costs); then the default run's time per phase and its share:
imports (``covar_harness.cli.main``, torch and open_clip, which a demo run needs), model loading, the zero-shot
forward, k-means, the removal passes, the rest of attribution (patterns, scores, records), the masks, the
diagnosis, and everything else (data loading, text embeddings, metrics, writing). The phases are timed by
wrapping the harness's own functions in the child process; nothing in the harness is changed for it.
A warm-up run first generates the data and fills a text-embedding cache that every measured run then reads.
The machine (CPUs, torch threads, load average before and after) is printed with the numbers: on a shared
machine the load says how far to trust them. CPU time is printed beside wall time (the child's user + system
time from ``getrusage``, and ``process_time`` per phase): on a shared machine it moves much less than wall time
with other people's jobs, though OpenMP threads spin-waiting under load still inflate it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"default": [], "attribution none": ["--attribution", "none"], "null-draws 0": ["--null-draws", "0"]}
PHASES = ("imports", "load", "forward", "kmeans", "removal", "attribution other", "masks", "diagnosis", "other")


# ---- the child: one run of the CLI with its phases timed ------------------------------------------------------------
def child(argv: list[str], out: Path) -> None:
    """Run ``covar-harness run <argv>`` in this process and write its wall time and phase times to ``out``."""
    t0, c0 = time.perf_counter(), time.process_time()
    import open_clip  # noqa: F401  (imported by any openclip model: timed here as the run's import cost)
    import torch  # noqa: F401

    from covar_harness.cli.main import main

    imports, imports_cpu = time.perf_counter() - t0, time.process_time() - c0
    spent = _instrument()
    code = main(["run", *argv])
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    spent["cpu"].update(total=total_cpu, imports=imports_cpu)
    out.write_text(json.dumps({"code": code, "total": total, "imports": imports, **spent}))


def _instrument() -> dict[str, Any]:
    """Wrap the functions each phase runs in (where they are looked up) with timers; returns the running sums
    (wall seconds per phase, and CPU seconds per phase under ``"cpu"``)."""
    from covar_harness.attribution import engine
    from covar_harness.attribution.step import AttributionStep
    from covar_harness.diagnosis.step import DiagnosisStep
    from covar_harness.masks.patch_masks import PatchMasks
    from covar_harness.models import specs
    from covar_harness.run import pair

    names = ("load", "forward", "kmeans", "removal", "attribution", "masks", "diagnosis")
    spent: dict[str, Any] = dict.fromkeys(names, 0.0)
    cpu = spent["cpu"] = dict.fromkeys(names, 0.0)

    def timed(owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start
                cpu[phase] += time.process_time() - start_cpu

        setattr(owner, name, wrapper)

    for owner, name, phase in (
        (specs, "load_model", "load"),
        (pair, "_forward", "forward"),
        (engine, "batched_kmeans", "kmeans"),
        (engine, "encode_patterns", "removal"),
        (AttributionStep, "process", "attribution"),
        (PatchMasks, "for_batch", "masks"),
        (DiagnosisStep, "process", "diagnosis"),
        (DiagnosisStep, "finish", "diagnosis"),
    ):
        timed(owner, name, phase)
    spent["work"] = _count_work(pair, engine)
    return spent


def _count_work(pair: Any, engine: Any) -> dict[str, int]:
    """Count what the forwards process (outside the timers): images and patch tokens of the zero-shot forward,
    and the removal call's sequences (one per drop pattern) and the patch tokens they keep. Why: the removal
    passes' share can then be read as work (tokens) times the cost of a token, which the harness cannot lower
    without changing the arithmetic."""
    work = {"images": 0, "forward_tokens": 0, "removal_rows": 0, "removal_tokens": 0}
    forward, encode = pair._forward, engine.encode_patterns

    def counted_forward(adapter, pixels, *args, **kwargs):
        rows, cols = getattr(adapter, "patch_grid", None) or (0, 0)
        work["images"] += int(pixels.shape[0])
        work["forward_tokens"] += int(pixels.shape[0]) * rows * cols
        return forward(adapter, pixels, *args, **kwargs)

    def counted_encode(adapter, pixels, patterns, *args, **kwargs):
        work["removal_rows"] += int(patterns.shape[0] * patterns.shape[1])
        work["removal_tokens"] += int((~patterns).sum())
        return encode(adapter, pixels, patterns, *args, **kwargs)

    pair._forward, engine.encode_patterns = counted_forward, counted_encode
    return work


# ---- the parent: paired runs, ratios, phase shares ------------------------------------------------------------------
def run_once(argv: list[str], folder: Path, threads: int | None = None) -> dict[str, Any]:
    """One child run; its timings, with ``rusage``: the child's user + system CPU seconds (all its threads)."""
    out = folder / "timing.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("harness", "plugins", "tasks"))}
    if threads is not None:  # torch's intra-op threads in the child (it reads these at start-up)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", str(out), "--", *argv, "--output-dir", str(folder / "results")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-2000:]}")
    timing = json.loads(out.read_text())
    if timing["code"] != 0:
        raise SystemExit(f"covar-harness run exited {timing['code']}: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing["rusage"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return timing


def phases(t: dict[str, Any]) -> dict[str, float]:
    """The default run's phases, each counted once (k-means and removal are parts of attribution); ``t`` is the
    wall-time record or its ``"cpu"`` part."""
    parts = {
        "imports": t["imports"],
        "load": t["load"],
        "forward": t["forward"],
        "kmeans": t["kmeans"],
        "removal": t["removal"],
        "attribution other": t["attribution"] - t["kmeans"] - t["removal"],
        "masks": t["masks"],
        "diagnosis": t["diagnosis"],
    }
    parts["other"] = t["total"] - sum(parts.values())
    return parts


def machine(threads: int | None = None) -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {threads or torch.get_num_threads()} threads, load average {load:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="paired rounds (the median of each is reported)")
    parser.add_argument("--models", default="demo")
    parser.add_argument("--tasks", default="covar-shapes/*")
    parser.add_argument("--limit", type=int, default=None, help="images per task (default: all)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in each run (default: torch's own); 1 on a loaded machine, where spin-waiting "
        "OpenMP threads inflate both wall and CPU time",
    )
    args = parser.parse_args()
    selection = ["--models", args.models, "--tasks", args.tasks]
    options = [] if args.workers is None else ["--workers", str(args.workers)]
    print(f"machine before: {machine(args.threads)}")
    with tempfile.TemporaryDirectory(prefix="covar-main-job-") as tmp:
        root = Path(tmp)
        options += ["--text-cache", str(root / "text-cache")]
        run_once([*selection, *options, "--limit", "4", "--attribution", "none"], root / "warm-up", args.threads)
        options += [] if args.limit is None else ["--limit", str(args.limit)]
        times: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        for round_ in range(args.repeat):
            for name, extra in CONFIGS.items():
                folder = root / f"{round_}-{name.replace(' ', '-')}"
                times[name].append(run_once([*selection, *options, *extra], folder, args.threads))
    print(f"machine after:  {machine(args.threads)}")
    report(times, " ".join(selection))


def work_line(t: dict[str, Any]) -> None:
    """What the forwards of the default run processed, per image, and the cost of a patch token in each."""
    w = t["work"]
    if not w["images"] or not w["forward_tokens"] or not w["removal_tokens"]:
        return
    per_token = {
        name: 1e6 * t["cpu"][name] / w[f"{name}_tokens"] for name in ("forward", "removal") if t["cpu"][name] > 0
    }
    print(
        f"\nwork of the default run: {w['images']} images; zero-shot forward 1 sequence and "
        f"{w['forward_tokens'] / w['images']:.0f} patch tokens per image; removal passes "
        f"{w['removal_rows'] / w['images']:.1f} sequences and {w['removal_tokens'] / w['images']:.0f} kept patch "
        f"tokens per image ({w['removal_tokens'] / w['forward_tokens']:.2f}x the zero-shot forward's tokens)"
    )
    if len(per_token) == 2:
        forward, removal = per_token["forward"], per_token["removal"]
        print(f"  CPU per patch token: zero-shot forward {forward:.1f} us, removal passes {removal:.1f} us")


def report(times: dict[str, list[dict[str, Any]]], job: str) -> None:
    """Wall and CPU time per configuration (medians), both ratios in each, and the default run's phases."""
    wall = {name: statistics.median(t["total"] for t in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(t["rusage"] for t in runs) for name, runs in times.items()}
    print(f"\ncovar-harness run {job}  ({len(times['default'])} paired round(s), medians)")
    print(f"  {'':<18} {'wall':>8}  {'CPU (user+sys)':>14}")
    for name in wall:
        print(f"  {name:<18} {wall[name]:7.1f} s  {cpu[name]:12.1f} s")
    for name, label in (("attribution none", "--attribution none"), ("null-draws 0", "--null-draws 0")):
        print(f"  default / {label:<18}: wall {wall['default'] / wall[name]:.2f}, CPU {cpu['default'] / cpu[name]:.2f}")
    best = min(times["default"], key=lambda t: abs(t["total"] - wall["default"]))
    parts, parts_cpu = phases(best), phases(best["cpu"])
    print(f"\nphases of the default run ({best['total']:.1f} s wall, {best['cpu']['total']:.1f} s CPU in the process):")
    for name in PHASES:
        share = 100 * parts[name] / best["total"]
        print(f"  {name:<18} {parts[name]:7.2f} s  {share:5.1f} %   CPU {parts_cpu[name]:7.2f} s")
    work_line(best)
    imports = [t["imports"] for runs in times.values() for t in runs]
    imports_cpu = [t["cpu"]["imports"] for runs in times.values() for t in runs]
    print(
        f"\nimport time (covar_harness.cli.main, torch, open_clip): median {statistics.median(imports):.2f} s wall, "
        f"{statistics.median(imports_cpu):.2f} s CPU"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[4:], Path(sys.argv[2]))
    else:
        main()
