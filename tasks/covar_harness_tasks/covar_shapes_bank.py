"""The ``covar-shapes-backgrounds`` concept bank: COVAR-Shapes' ten background families rendered alone (no object),
one folder per family, for naming the regions of models evaluated on COVAR-Shapes (docs/design.md section 11).

It is the known truth of concept naming on the demo: the shortcut demo model learned "class i lives on family i",
so its background-driven ``bg_varied`` errors should name the family planted for the *predicted* class. The images
are drawn with the benchmark's own generator (``shape_drawing.render_background``) but other seeds, so the bank
holds none of the benchmark's backgrounds. Generated on first use into ``<data-dir>/concept-banks/
covar-shapes-backgrounds`` (well under a second), like COVAR-Shapes itself; a folder that is not an earlier build of
this bank is never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import read_text_capped
from covar_harness.concepts.banks import ImageBank
from covar_harness.concepts.summary import expected_agreement
from covar_harness.data.samples import default_data_dir
from covar_harness_tasks.covar_shapes import GENERATOR_VERSION
from covar_harness_tasks.shape_drawing import CLASSES, FAMILIES, render_background

NAME = "covar-shapes-backgrounds"
BANK_SEED = 7331  # not the benchmark's (2024): the bank's images are new draws of the same families
PER_FAMILY = 16
SIZE = 96  # the size the benchmark's background sources are drawn at
STAMP = "concept-bank.version"
PLANTED = dict(zip(CLASSES, FAMILIES))  # class -> the background family the shortcut demo model learned with it
DESCRIPTION = "COVAR-Shapes' 10 background families rendered alone (images; generated on first use)"


def stamp_text() -> str:
    return json.dumps({"bank": NAME, "generator": GENERATOR_VERSION, "seed": BANK_SEED, "per_family": PER_FAMILY})


def _is_ours(root: Path) -> bool:
    try:
        return (root / STAMP).is_file()
    except OSError:
        return False


def ensure_bank(root: Path) -> Path:
    """The bank's folder at ``root``, generated when absent, empty or an outdated build of this bank."""
    try:
        if read_text_capped(root / STAMP, 1 << 12) == stamp_text():
            return root
    except (OSError, ValueError):
        pass
    if os.path.lexists(root) and not _is_ours(root) and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{NAME}: {root} exists and is not a build of this bank; refusing to write into it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=root.parent))
    try:
        for fi, family in enumerate(FAMILIES):
            (tmp / family).mkdir()
            for k in range(PER_FAMILY):
                img = render_background(family, np.random.default_rng([BANK_SEED, fi, k]), SIZE)
                Image.fromarray(img).save(tmp / family / f"{family}-{k:03d}.png")
        (tmp / STAMP).write_text(stamp_text(), encoding="utf-8")
        if os.path.lexists(root):  # empty, or an earlier build of ours: replaced
            old = Path(tempfile.mkdtemp(prefix=f".{NAME}-old-", dir=root.parent))
            os.rename(root, old / "bank")
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, root)
    except FileExistsError:  # another process installed it first
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def covar_shapes_backgrounds(data_dir: str | Path | None = None) -> ImageBank:
    """The registered bank's factory: nothing is generated until the bank is embedded."""
    root = default_data_dir(data_dir) / "concept-banks" / NAME
    source = (
        f"COVAR-Shapes background families rendered alone by shape_drawing.render_background "
        f"(seed {BANK_SEED}, {PER_FAMILY} per family, {SIZE} px)"
    )
    return ImageBank(NAME, concepts=list(FAMILIES), source=source, root=root, prepare=lambda: ensure_bank(root))


def known_truth(rows: list[dict], classnames: list[str], seed: int = 0, errors: str = "bg") -> dict:
    """The demo's known truth read from ``--log-samples`` logs of COVAR-Shapes tasks run with this bank: over the
    errors (``errors="bg"``: background-driven ones; ``"all"``: every error) whose driving background cluster was
    named, the share naming the family planted for the *predicted* class against its null (concepts permuted
    across errors), and the share naming the family actually behind the object (``variation.background``)."""
    named = [
        r
        for r in rows
        if not r.get("correct", True)
        and (errors == "all" or r.get("error_type") == "bg")
        and isinstance(r.get("concepts"), dict)
        and r["concepts"]["driving_bg_concept"]
    ]
    concepts = [r["concepts"]["driving_bg_concept"] for r in named]
    planted = {i: PLANTED[c] for i, c in enumerate(classnames) if c in PLANTED}
    out = expected_agreement(concepts, [r["pred"] for r in named], planted, seed)
    shown = [str(r.get("variation", {}).get("background", "")).split("-")[1:2] for r in named]
    out["shown_background_share"] = sum(s == [c] for s, c in zip(shown, concepts)) / len(named) if named else None
    out["n_errors"] = sum(1 for r in rows if not r.get("correct", True))
    out["n_bg_errors"] = sum(1 for r in rows if r.get("error_type") == "bg")
    return out
