"""How fast ``rescore`` is, and what dominates: reading the JSON-lines sample log, the zero-shot part, or the
diagnosis (with its null). Issue 26's targets: the demo's 18 pairs under 5 s; a 50,000-sample log under 10 s on
2 cores. A columnar log is worth adding only if reading dominates. Times are CPU seconds of this process (the
machine may be shared; wall time is printed beside).

    python benchmarks/rescore_speed.py --results DIR [--synthetic 50000] [--null-draws N]

``--results``: a folder of results written with ``--log-samples`` (e.g. ``benchmarks/phase_costs.py --keep DIR``).
``--synthetic N``: the largest of them replicated to N samples (each copy its own sample ids and source objects),
rescored the same way. The sample id seeds the null, so every synthetic row's null changes and every line is
rewritten (the worst case for the writer, which copies what a row kept from the line read). Numbers are measured
in this run, on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / p) for p in ("harness", "plugins", "tasks")]


def timed_rescore(paths: list[Path], asked) -> dict[str, float]:
    """Seconds (wall, and CPU of this process) reading the logs, rescoring, and writing the results, as
    ``rescore_file`` does them (the collector paused); and the zero-shot part alone, timed apart."""
    from covar_harness.results import files
    from covar_harness.run.pair import zero_shot_summary
    from covar_harness.run.rescore import load_result_log, paused_gc, rescore_result

    out = {"rows": 0.0, "zero-shot": 0.0}
    with tempfile.TemporaryDirectory() as scratch:
        for path in paths:
            with paused_gc():  # as rescore_file does
                t = Stopwatch(out)
                obj, rows, lines = load_result_log(path)
                t.lap("read")
                done = rescore_result(obj, rows, asked)
                t.lap("rescore")
                target = Path(scratch) / f"{len(out)}-{path.name}"
                files.write_jsonl(files.samples_path(target), done.samples, logged=list(zip(rows, lines)))
                files.write_json(target, done.result)
                t.lap("write")
                labels, top5 = [r["label"] for r in rows], [r["top5"] for r in rows]
                sources, groups = [r.get("source_id") for r in rows], [r.get("group") for r in rows]
                t = Stopwatch(out)
                zero_shot_summary(labels, top5, obj["task"]["n_classes"], sources, groups, 0)
                t.lap("zero-shot")
                out["rows"] += len(rows)
    return out


class Stopwatch:
    """Adds the wall and CPU seconds since the last lap to ``totals[name]`` / ``totals[name + " cpu"]``. CPU time
    (``time.process_time``) because the machine is shared: wall time includes waiting for a core."""

    def __init__(self, totals: dict[str, float]):
        self.totals, self.wall, self.cpu = totals, time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.totals[name] = self.totals.get(name, 0.0) + wall - self.wall
        self.totals[f"{name} cpu"] = self.totals.get(f"{name} cpu", 0.0) + cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def synthetic(template: Path, n: int, folder: Path) -> Path:
    """``template``'s result and log replicated to ``n`` samples (ids and source objects made distinct)."""
    from covar_harness.results import files

    obj = json.loads(template.read_text())
    rows = [json.loads(x) for x in files.samples_path(template).read_text().splitlines() if x]
    out_rows = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        copy = i // len(rows)
        row["index"], row["file"] = i, f"copy{copy}/{row['file']}"
        if row.get("source_id") is not None:
            row["source_id"] = f"copy{copy}/{row['source_id']}"
        out_rows.append(row)
    obj["task"]["n_samples"] = n
    path = folder / "synthetic.json"
    files.write_jsonl(files.samples_path(path), out_rows)
    files.write_json(path, obj)
    return path


def report(name: str, t: dict[str, float], target: float | None = None) -> None:
    parts = ("read", "rescore", "write")
    wall, cpu = sum(t[p] for p in parts), sum(t[f"{p} cpu"] for p in parts)
    shares = " + ".join(f"{p} {t[f'{p} cpu']:.2f} s ({t[f'{p} cpu'] / cpu:.0%})" for p in parts)
    goal = f"; {cpu / target:.2f}x the {target:g} s target" if target else ""
    print(
        f"{name}: {int(t['rows'])} samples, CPU {cpu:.2f} s = {shares}; {1000 * cpu / t['rows']:.2f} ms per sample"
        f"{goal}; wall {wall:.2f} s (shared machine); the zero-shot part alone {t['zero-shot cpu']:.2f} s CPU"
    )


def main() -> int:
    from covar_harness.run.rescore import RescoreSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--synthetic", type=int, default=50_000)
    ap.add_argument("--null-draws", type=int, default=None, help="rescore with this many null draws")
    args = ap.parse_args()
    paths = sorted(p for p in args.results.rglob("*.json") if p.with_name(p.stem + ".samples.jsonl").is_file())
    asked = RescoreSettings(null_draws=args.null_draws)
    report(f"{len(paths)} result(s) under {args.results}", timed_rescore(paths, asked), 5.0)
    if args.synthetic:
        largest = max(paths, key=lambda p: p.with_name(p.stem + ".samples.jsonl").stat().st_size)
        with tempfile.TemporaryDirectory() as scratch:
            path = synthetic(largest, args.synthetic, Path(scratch))
            size = path.with_name(path.stem + ".samples.jsonl").stat().st_size
            print(
                f"synthetic log from {largest.name}: {size / 2**20:.0f} MiB, {size / args.synthetic:.0f} bytes a sample"
            )
            report("synthetic", timed_rescore([path], asked), 10.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
