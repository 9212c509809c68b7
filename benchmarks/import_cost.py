"""What the start-up of a demo ``run`` imports, by package: ``python -X importtime`` of the imports
``benchmarks/main_job.py`` counts (open_clip, torch, ``covar_harness.cli.main``), each module's own time summed per
package, medians over ``--repeat`` fresh processes.

    python benchmarks/import_cost.py [--repeat 3]

Why: the import target of issue 28 (under 4 s) is decided by third-party packages the demo models need through
open_clip; this says which, with torch's compiler stack (``torch._dynamo``, which torchvision imports at module top
in ``torchvision.ops.roi_align``, and sympy, which dynamo imports) counted apart from the rest of torch. The machine
and its load average are printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATEMENT = "import open_clip, torch; import covar_harness.cli.main"
DYNAMO = "torch._dynamo + what it imports (torchvision.ops.roi_align)"
# a module whose name starts with one of these heads a group; every module first imported beneath it in the import
# tree belongs to that group (so sympy, first imported by dynamo, counts as dynamo's); the innermost head wins
# (torch's modules first imported by dynamo stay dynamo's)
HEADS = (
    ("torch._dynamo", DYNAMO),
    ("torchvision", "torchvision (open_clip.utils, transforms; masks.geometry)"),
    ("transformers", "transformers (open_clip.hf_model, coca_model)"),
    ("timm", "timm (open_clip.timm_model)"),
    ("open_clip", "open_clip itself"),
    ("covar_harness", "covar_harness"),
    ("torch", "torch"),  # torch's own modules, but those first imported by dynamo count as dynamo's
)


def head_of(module: str) -> str | None:
    for prefix, name in HEADS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    return None


def one_run() -> dict[str, float]:
    """Seconds of own import time per group in one fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("harness", "plugins", "tasks"))}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", STATEMENT], env=env, capture_output=True, text=True, check=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, _, name = line[len("import time:") :].split("|")
        rows.append((len(name) - len(name.lstrip(" ")), name.strip(), int(own) / 1e6))
    sums: dict[str, float] = defaultdict(float)
    stack: list[tuple[int, str | None]] = []  # (depth, group) of the ancestors; importtime prints children first
    for depth, name, own in reversed(rows):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        inherited = stack[-1][1] if stack else None
        mine = head_of(name)
        group = inherited if mine is None or (mine == "torch" and inherited == DYNAMO) else mine
        stack.append((depth, group))
        sums[group or "other (numpy, PIL, yaml, stdlib, ...)"] += own
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    runs = [one_run() for _ in range(args.repeat)]
    names = sorted({name for run in runs for name in run}, key=lambda n: -statistics.median(r[n] for r in runs))
    total = statistics.median(sum(run.values()) for run in runs)
    print(
        f"{STATEMENT!r}: {args.repeat} fresh processes, {os.cpu_count()} CPUs, load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(f"  {'total':<62} {total:6.2f} s")
    for name in names:
        seconds = statistics.median(run.get(name, 0.0) for run in runs)
        print(f"  {name:<62} {seconds:6.2f} s  {100 * seconds / total:5.1f} %")


if __name__ == "__main__":
    main()
