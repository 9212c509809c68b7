"""Issue 25 (new-user friction): the report's legend called the mask outline yellow (it is cyan), yellow meant
"supports the class" on the overlay while the bars used red for it. One colour language now: the overlay's
scale ends, its outlines, the report's bars, patch grids, legend swatches and report.css all share the constants
in ``attribution.overlays``."""

from __future__ import annotations

import re

import numpy as np

from covar_harness.attribution import overlays
from covar_harness.data.resources import resource_path
from covar_harness.leaderboard.report import gallery


def _css() -> str:
    return resource_path("report", "report.css").read_text()


def test_the_overlay_scale_ends_are_the_support_and_oppose_colours():
    assert overlays.hex_colour(overlays.colormap(np.array([1.0]))[0]) == overlays.SUPPORT_HEX == "#fee838"
    assert overlays.hex_colour(overlays.colormap(np.array([0.0]))[0]) == overlays.OPPOSE_HEX
    assert "yellow supports the class, blue opposes it" in overlays.LEGEND_TITLE
    assert overlays.OUTLINE_HEX == "#00e6ff"  # cyan


def test_report_css_swatches_use_the_overlay_colours():
    css = _css()
    variables = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    assert variables["pos"] == overlays.SUPPORT_HEX and variables["neg"] == overlays.OPPOSE_HEX
    mask = re.search(r"\.sw-mask\s*\{\s*background:\s*(#[0-9a-f]{6})", css)
    bound = re.search(r"\.sw-bound\s*\{\s*background:\s*(#[0-9a-f]{6})", css)
    assert mask and mask.group(1) == overlays.OUTLINE_HEX and bound and bound.group(1) == overlays.BOUNDARY_HEX


def test_bars_and_grid_use_the_overlay_colours_and_the_legend_names_them():
    bars = gallery.importance_bars([0.5, -0.25], [0, 0, 1, 1])
    fills = re.findall(r'<rect [^>]*fill="(#[0-9a-f]{6})"', bars)
    assert fills == [overlays.SUPPORT_HEX, overlays.OPPOSE_HEX]  # a positive value supports: yellow, as overlaid
    grid = gallery.patch_grid([0.5, -0.25], [0, 0, 1, 1])
    assert {overlays.SUPPORT_HEX, overlays.OPPOSE_HEX} <= set(re.findall(r'fill="(#[0-9a-f]{6})"', grid))
    legend = gallery.OVERLAY_LEGEND
    assert "yellow: removing the cluster lowers the score" in legend and "cyan: object mask outline" in legend
    assert "white: cluster boundaries" in legend and "red" not in legend.lower()
