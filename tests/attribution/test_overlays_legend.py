"""Overlays that explain themselves (issue 17 item 4): a legend (importance scale, cluster and mask outlines) and a
caption (label, prediction, top-5, correct or wrong, fg fraction and driver per rule) on every overlay; file names
that say correct or wrong; a colour map readable on red objects; ``explain`` printing the prediction, the top-5
and, with ``--mask``, the fg fraction and driver under each rule."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covar_harness.attribution import overlays
from toy_vit import SIDE, layout, read, run_cli

CAPTION = overlays.Caption(
    pred="fire truck",
    top5=["fire truck", "ambulance", "tractor", "school bus", "tow truck", "sixth"],
    label="ambulance",
    correct=False,
    rules={"paper": (0.42, "bg"), "shapley": (None, None)},
    notes=["file: img/x.png"],
)


def _lab_lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* of sRGB colours (0..255)."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)


def _render(caption=CAPTION, mask=True):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[...] = (40, 140, 40)
    rgb[8:24, 8:24] = (230, 0, 0)  # a red object
    importance = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    assignments = np.arange(16).reshape(4, 4) // 4
    m = np.zeros((32, 32), dtype=bool)
    m[8:24, 8:24] = True
    return np.asarray(overlays.render_overlay(rgb, importance, assignments, m if mask else None, caption))


def test_caption_lines_say_label_prediction_top5_correct_fg_and_driver():
    lines = overlays.caption_lines(CAPTION)
    text = "\n".join(lines)
    assert lines[0].startswith("WRONG") and "label: ambulance" in lines[0] and "prediction: fire truck" in lines[0]
    assert lines[1] == "top-5: fire truck, ambulance, tractor, school bus, tow truck"  # five, no more
    assert "paper rule: fg fraction 0.42, driver bg" in text and "shapley rule: fg fraction n/a" in text
    assert lines[-1] == "file: img/x.png"
    right = overlays.caption_lines(overlays.Caption("cat", ["cat"], label="cat", correct=True))
    assert right[0].startswith("CORRECT") and "no mask" in right[2]
    unknown = overlays.caption_lines(overlays.Caption("cat", ["cat", "dog"]))
    assert not unknown[0].startswith(("CORRECT", "WRONG")) and "no ground truth" in unknown[0]


def test_caption_strings_are_plain_and_cut():
    hostile = "evil\x1b]8;;http://x\x07name\n\u202e" + "x" * 500
    lines = overlays.caption_lines(overlays.Caption(hostile, [hostile], label=hostile, correct=False))
    assert all(not any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or ch == "\u202e" for ch in ln) for ln in lines)
    assert all(len(ln) < 200 for ln in lines) and "…" in lines[0]
    image = overlays.render_overlay(
        np.zeros((8, 8, 3), np.uint8), np.ones((2, 2)), caption=overlays.Caption(hostile, ["猫"], label="猫")
    )
    assert image.size[0] == 2 * 224 + 4  # drawn, cut to the width, whatever the characters


def test_overlay_has_legend_and_caption_below_the_panels():
    arr = _render()
    side = (arr.shape[1] - 4) // 2
    assert side == 224 and arr.shape[0] > side + 60  # panels, then a strip
    strip = arr[side:]
    assert (strip < 250).any(axis=-1).mean() > 0.02, "the strip holds text and a colour bar, not blank paper"
    # the colour bar holds the colour map's ends; the mask swatch its outline colour
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    ends = overlays.colormap(np.array([0.0, 1.0])).round().astype(int)
    assert all(any(np.abs(np.array(c) - e).sum() <= 6 for c in colours) for e in ends)
    assert tuple(int(v) for v in overlays.OUTLINE) in colours
    # the caption rows (below the legend) are not blank, and a caption adds rows
    no_caption = _render(caption=None)
    assert no_caption.shape[0] < arr.shape[0]
    caption_rows = arr[no_caption.shape[0] :]
    assert (caption_rows < 200).any(axis=-1).any(axis=1).sum() >= 4 * 5  # >= 5 lines of text
    # the WRONG verdict is drawn in red
    assert ((caption_rows[..., 0] > 150) & (caption_rows[..., 1] < 60)).any()
    # deterministic
    assert np.array_equal(arr, _render())


def test_colour_map_monotone_in_lightness_and_never_red():
    t = np.linspace(0, 1, 256)
    rgb = overlays.colormap(t)
    lightness = _lab_lightness(rgb)
    assert np.all(np.diff(lightness) > 0), "strictly increasing lightness"
    assert lightness[-1] - lightness[0] > 60
    red = np.array([255, 0, 0])
    assert np.all(np.linalg.norm(rgb - red, axis=1) > 150)  # far from pure red at every level
    assert np.all(rgb[:, 1] >= rgb[:, 0] * 0.85)  # green never falls far below red: no red or orange hue
    assert np.array_equal(overlays.colormap(np.array([-5.0, 5.0])), overlays.CIVIDIS[[0, -1]])  # clipped


def test_heat_on_a_red_object_stays_distinguishable():
    red = np.full((1, 3, 3), (230, 0, 0), dtype=np.uint8)
    heat = np.array([[-1.0, 0.0, 1.0]])
    out = overlays.heat_overlay(red, heat).astype(int)
    assert tuple(out[0, 1]) == (230, 0, 0)  # zero importance: untouched
    assert out[0, 2, 1] > 120 and out[0, 0, 2] > 40  # supporting -> yellowish, opposing -> bluish
    assert np.abs(out[0, 0] - out[0, 2]).sum() > 150


def test_map_names_say_correct_or_wrong_and_keep_the_index_prefix():
    assert overlays.map_name(12, "cat0", True) == "000012_correct_cat0.png"
    assert overlays.map_name(12, "cat0", False) == "000012_wrong_cat0.png"
    assert overlays.map_name(12, "cat0", None) == "000012_cat0.png"
    assert overlays.verdict(None) is None


def test_report_finds_the_new_names(tmp_path):
    from covar_harness.leaderboard.report.gallery import find_map

    Image.new("RGB", (4, 4)).save(tmp_path / overlays.map_name(7, "cat0", False))
    assert find_map(tmp_path, {"index": 7, "file": "img/cat0.png"}) == tmp_path / "000007_wrong_cat0.png"


def test_save_maps_captions_match_the_logged_diagnosis(tmp_path, toy_catalog, masked_task, monkeypatch):
    captions = {}
    original = overlays.save_overlay

    def spy(path, *args, caption=None, **kwargs):
        captions[path.name] = caption
        return original(path, *args, caption=caption, **kwargs)

    monkeypatch.setattr(overlays, "save_overlay", spy)
    maps = tmp_path / "maps"
    code, out = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "cci", "--save-maps", str(maps))
    assert code == 0
    _, rows = read(out, "toy-topleft", "toy/masked")
    names = sorted(p.name for p in maps.rglob("*.png"))
    assert names == sorted(captions) and len(names) == 4
    for row in rows:
        word = "correct" if row["correct"] else "wrong"
        name = f"{row['index']:06d}_{word}_{row['file'].split('/')[-1].split('.')[0]}.png"
        caption = captions[name]
        assert caption.correct is row["correct"] and caption.label == "object"
        headline = next(iter(caption.rules.values()))
        assert headline[1] == row["driver"] and headline[0] == pytest.approx(row["fg_fraction"], abs=1e-6)
        assert caption.top5[0] == caption.pred and f"file: {row['file']}" in caption.notes
    arr = np.asarray(Image.open(maps.rglob("000003_wrong_*.png").__next__()).convert("RGB"))
    assert arr.shape[0] > (arr.shape[1] - 4) // 2 + 60


def _explain(tmp_path, *extra):
    from covar_harness.cli.main import main

    image = tmp_path / "red.png"
    layout(("red", "yellow")).save(image)
    args = ["explain", "--model", "toy-topleft", "--image", str(image), "--classes", "object,background"]
    return main([*args, "--out", str(tmp_path / "o.png"), "--k", "7", "--device", "cpu", *extra])


def test_explain_prints_prediction_and_top5(tmp_path, toy_catalog, capsys):
    assert _explain(tmp_path) == 0
    text = capsys.readouterr().out
    assert "prediction: object" in text and "top-5: object " in text and ", background " in text
    assert "driver" not in text  # no mask: no driver
    arr = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert arr.shape[0] > (arr.shape[1] - 4) // 2 + 60


def test_explain_with_mask_prints_fg_score_and_driver_per_configured_rule(tmp_path, toy_catalog, capsys):
    """The diagnosis record of the run's pass: the configured rules only (default ``area,paper``; a rule that was
    not asked for is not shown, as a run does not log it), each with its threshold, and the region test."""
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[:32, :32] = 255  # the top-left quarter the toy model reads
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert _explain(tmp_path, "--mask", str(tmp_path / "m.png")) == 0
    text = capsys.readouterr().out
    lines = {ln.split(":")[0].strip(): ln for ln in text.splitlines() if "rule" not in ln and ln.startswith("  ")}
    assert "fg score 1.000   driver: fg" in lines["paper"] and "fg at or above: area 0.5, paper 0.5" in text
    assert "driver: fg" in lines["area"]
    assert "shapley" not in lines and "counterfactual" not in lines
    assert "outcome fg-sufficient" in text and "verdict: correct" in text  # only the top-left quarter counts


def test_explain_labels_runs_headline_rule_as_the_headline(tmp_path, toy_catalog, capsys):
    """Issue 25: explain called the `paper` rule "(headline)" while run's headline is `area`."""
    from covar_harness.diagnosis.rules import DiagnosisSettings

    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[:32, :32] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert _explain(tmp_path, "--mask", str(tmp_path / "m.png")) == 0
    rules = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    headline = DiagnosisSettings().rules[0]
    assert headline == "area" and rules[0].startswith(f"{headline}:") and rules[0].endswith("(headline, as in run)")
    assert sum("headline" in ln for ln in rules) == 1
    caption = overlays.caption_lines(overlays.Caption("a", ["a"], rules={"area": (0.9, "fg"), "paper": (0.2, "bg")}))
    assert any(ln.startswith("area rule") and ln.endswith("(headline)") for ln in caption), caption
