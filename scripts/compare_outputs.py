"""Compare two output folders of the harness, provenance aside (development tool, for "results unchanged" claims).

    python scripts/compare_outputs.py BEFORE AFTER [CHECKOUT_PATH ...]

Result and faithfulness JSON are compared without ``provenance``; sample logs, maps and every other file byte for
byte, except that each CHECKOUT_PATH given (e.g. the two checkouts' ``harness/covar_harness/resources``, which the
demo models' specs name) is replaced by one token, and in text files commits and timestamps are blanked (the
report's provenance table). Prints the counts and the files that differ; exit 1 when any does.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def normalised(path: Path, checkouts: list[str]) -> bytes | str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    if checkouts:
        text = re.sub("|".join(map(re.escape, checkouts)), "<CHECKOUT>", text)
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except ValueError:
            return text
        if isinstance(obj, dict):
            obj.pop("provenance", None)
        return json.dumps(obj, sort_keys=True)
    text = re.sub(r"\b[0-9a-f]{12}(?:[0-9a-f]{28})?\b", "<COMMIT>", text)
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+0-9:]*", "<TIME>", text)


def main(argv: list[str]) -> int:
    before, after, checkouts = Path(argv[0]), Path(argv[1]), argv[2:]
    files = [
        {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix != ".log"} for root in (before, after)
    ]
    common = sorted(files[0] & files[1])
    differ = [str(f) for f in common if normalised(before / f, checkouts) != normalised(after / f, checkouts)]
    print(f"{len(common)} files in both, {len(differ)} differ; only in one: {sorted(map(str, files[0] ^ files[1]))}")
    print("\n".join(differ))
    return 1 if differ or files[0] != files[1] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
