"""COVAR's subsets, named once for the whole harness (docs/design.md sections 5 and 10).

The task YAML files (``covar_harness_tasks/covar/``, ``covar-shapes/``), the ``covar`` reader, ``build-covar`` and the
leaderboard all follow this list; a test checks that the shipped task files cover exactly these subsets. It
lives in the core (not in ``tasks/``) because the leaderboard and ``build-covar`` need it and the core never
imports ``tasks``.
"""

from __future__ import annotations

ORIGINAL = "original"  # the unmodified sources: reported, but not part of the paper's average
#: The eight controlled variations in the column order of the paper's tables (and of the leaderboard).
COVAR_SUBSETS: tuple[str, ...] = ("bg_varied", "hflip", "translate", "crop", "vflip", "rotation", "viewpoint", "scale")
#: Every subset folder a COVAR copy may hold: ``original`` first, then the paper's order.
ALL_SUBSETS: tuple[str, ...] = (ORIGINAL, *COVAR_SUBSETS)
#: Column titles, as the paper prints them.
SUBSET_TITLES: dict[str, str] = {
    "bg_varied": "Bg-varied",
    "hflip": "H-flip",
    "translate": "Translate",
    "crop": "Crop",
    "vflip": "V-flip",
    "rotation": "Rotation",
    "viewpoint": "Viewpoint",
    "scale": "Scale",
    ORIGINAL: "Original",
}
