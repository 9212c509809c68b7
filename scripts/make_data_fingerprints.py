"""Regenerate ``resources/reference/data_fingerprints.json``: per shipped benchmark data version, its
fingerprint, sample count and the digest of its sorted (file, label) list (``validate --strict`` binds a
submission's ``samples.jsonl`` to these). Reads the data only, runs no model:

    python scripts/make_data_fingerprints.py [--data-dir DIR]   # COVAR-Shapes is generated there if absent
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.data.resources import resource_path
from covar_harness.data.samples import open_task_data
from covar_harness.results.submission import samples_digest

ABOUT = (
    "Per task, per data fingerprint (covar_harness.data.samples.SampleSet.fingerprint) of a full benchmark data "
    "version shipped with the harness: its sample count and the sha256 of its sorted 'file<TAB>label' lines. "
    "validate --strict accepts a task's result only with one of these fingerprints (or one the user registers "
    "with --fingerprints) and recomputes count and digest from the result's samples.jsonl. "
    "Regenerate with: python scripts/make_data_fingerprints.py"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.data_dir:
        from covar_harness_tasks.covar_shapes import ensure_covar_shapes

        ensure_covar_shapes(Path(args.data_dir) / "covar-shapes", quiet=True)
    catalog = load_catalog()
    out: dict = {"_about": ABOUT}
    for cfg in catalog.tasks.resolve("covar-shapes/*"):
        samples = open_task_data(cfg, catalog, args.data_dir)
        pairs = [(s.id, s.label) for s in samples.samples]
        out[cfg.task] = {samples.fingerprint(): {"n_samples": len(pairs), "samples": samples_digest(pairs)}}
    path = resource_path("reference", "data_fingerprints.json")
    Path(path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}: {len(out) - 1} task(s)")


if __name__ == "__main__":
    main()
