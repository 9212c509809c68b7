"""How fast ``rescore`` is, and what dominates: reading the JSON-lines sample log, the zero-shot part, or the
diagnosis (with its null). Issue 26's targets: the demo's 18 pairs under 5 s; a 50,000-sample log under 10 s on
2 cores. A columnar log is worth adding only if reading dominates.

    python benchmarks/rescore_speed.py --results DIR [--synthetic 50000] [--null-draws N]

``--results``: a folder of results written with ``--log-samples`` (e.g. ``benchmarks/phase_costs.py --keep DIR``).
``--synthetic N``: the largest of them replicated to N samples (each copy its own sample ids and source objects),
rescored the same way. Numbers are measured in this run, on this machine.
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
    """Seconds spent reading the logs, in the zero-shot part, in the whole rescore, and writing the results."""
    from covar_harness.results import files
    from covar_harness.run.pair import zero_shot_summary
    from covar_harness.run.rescore import load_result, paused_gc, rescore_result

    out = {"read": 0.0, "zero-shot": 0.0, "rescore": 0.0, "write": 0.0, "rows": 0, "cpu": 0.0}
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        for path in paths:
            with paused_gc():  # as rescore_file does
                t0 = time.perf_counter()
                obj, rows = load_result(path)
                t1 = time.perf_counter()
                zero_shot_summary(
                    [r["label"] for r in rows],
                    [r["top5"] for r in rows],
                    obj["task"]["n_classes"],
                    [r.get("source_id") for r in rows],
                    [r.get("group") for r in rows],
                    0,
                )
                t2 = time.perf_counter()
                done = rescore_result(obj, rows, asked)
                t3 = time.perf_counter()
                target = Path(scratch) / f"{len(out)}-{path.name}"
                files.write_jsonl(files.samples_path(target), done.samples)
                files.write_json(target, done.result)
                t4 = time.perf_counter()
                out["read"] += t1 - t0
                out["zero-shot"] += t2 - t1
                out["rescore"] += t3 - t2
                out["write"] += t4 - t3
                out["rows"] += len(rows)
    out["cpu"] = time.process_time() - cpu  # on a shared machine wall time includes waiting for a core
    return out


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


def report(name: str, t: dict[str, float]) -> None:
    diagnosis = t["rescore"]
    total = t["read"] + t["rescore"] + t["write"]
    print(
        f"{name}: {int(t['rows'])} samples, total {total:.2f} s = read {t['read']:.2f} s ({t['read'] / total:.0%}) "
        f"+ rescore {diagnosis:.2f} s ({diagnosis / total:.0%}; its zero-shot part alone {t['zero-shot']:.2f} s) "
        f"+ write {t['write']:.2f} s ({t['write'] / total:.0%}); CPU time {t['cpu']:.2f} s "
        f"({1000 * t['cpu'] / t['rows']:.2f} ms per sample)"
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
    report(f"{len(paths)} result(s) under {args.results}", timed_rescore(paths, asked))
    if args.synthetic:
        largest = max(paths, key=lambda p: p.with_name(p.stem + ".samples.jsonl").stat().st_size)
        with tempfile.TemporaryDirectory() as scratch:
            path = synthetic(largest, args.synthetic, Path(scratch))
            size = path.with_name(path.stem + ".samples.jsonl").stat().st_size / 2**20
            print(f"synthetic log from {largest.name}: {size:.0f} MiB")
            report("synthetic", timed_rescore([path], asked))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
