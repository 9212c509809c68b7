"""The known truth of concept naming (issue 27; README "What drives background errors"): both demo models on
COVAR-Shapes ``bg_varied`` with the ``covar-shapes-backgrounds`` bank.

Run: ``python scripts/concepts_known_truth.py [--data-dir DIR] [--limit N] [--tasks covar-shapes/bg_varied]``
(CPU, a few minutes on a busy 2-core machine).

The shortcut model learned "class i lives on background family i", so its background-driven errors should name the
family planted for the *predicted* class far above the null (the same named concepts permuted across the errors,
predictions fixed); the clean model's few background-driven errors should not follow the predicted class.
"""

from __future__ import annotations

import argparse
import json

import covar_harness
from covar_harness.data.samples import default_data_dir
from covar_harness_tasks.covar_shapes_bank import NAME, known_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--tasks", default="covar-shapes/bg_varied", help="comma-separated; pooled per model")
    parser.add_argument("--models", default="demo/shapes-clean,demo/shapes-shortcut")
    args = parser.parse_args()
    out = covar_harness.evaluate(
        args.models,
        args.tasks,
        data_dir=args.data_dir,
        limit=args.limit,
        log_samples=True,
        workers=0,
        concepts_bank=NAME,
    )
    classes = json.loads((default_data_dir(args.data_dir) / "covar-shapes" / "classes.json").read_text())
    by_model: dict[str, list[dict]] = {}
    for rec in out["results"]:  # the tasks of one model pooled: the clean model makes few errors per subset
        by_model.setdefault(rec["model"]["spec"], []).extend(rec["samples"])
    for model, rows in by_model.items():
        print(f"{model} x {args.tasks}: {len(rows)} images")
        for errors in ("bg", "all"):
            print(f"  {errors} errors: " + json.dumps(known_truth(rows, classes, errors=errors)))


if __name__ == "__main__":
    main()
