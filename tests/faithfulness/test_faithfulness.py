"""Faithfulness metrics (issue 15) on a planted truth: the toy model of test_cci reads only the top-left quarter,
so a map that ranks those patches first must beat random on deletion and insertion, by pixels and by token
removal; the deletion curve of that model never rises; every curve of a batch is one model call; pointing energy
and relevance-rank accuracy by hand; the occlusion attributor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covar_harness.attribution import CCISettings
from covar_harness.attribution.engine import attribute
from covar_harness.attribution.occlusion import Occlusion
from covar_harness.attribution.patches import canvas, importance_order, patch_pixel_masks, step_counts, top_masks
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.catalog.taskconfig import TaskConfig
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.faithfulness import (
    FaithfulnessSettings,
    Scorer,
    auc,
    pixel_curves,
    pointing_energy,
    relevance_rank_accuracy,
    token_curves,
)
from covar_harness.faithfulness.evaluate import PairData, run_pair
from covar_harness.faithfulness.importance import importance_maps
from covar_harness.faithfulness.step import CurveStep
from covar_harness.run.options import RunOptions
from covar_harness_plugins import cci as builtin_attributors  # noqa: F401 - defines occlusion, rise
from toy_vit import GRID, LAYOUTS, TopLeftReader, layout

N = GRID * GRID
W = torch.eye(2)  # class columns: "object" = [1, 0], "other" = [0, 1]


class Counting(TopLeftReader):
    """The planted-truth model, counting its calls."""

    def __init__(self):
        super().__init__()
        self.image_calls: list[int] = []

    def encode_images(self, pixels):
        self.image_calls.append(int(pixels.shape[0]))
        return super().encode_images(pixels)


class NoRemoval(Counting):
    """The same model without token removal (pixel methods only)."""

    name = "toy:no-removal"
    encode_images_without = None  # type: ignore[assignment]


def batch(adapter) -> torch.Tensor:
    return torch.stack([adapter.preprocess(layout(tl, seed=j)) for j, tl in enumerate(LAYOUTS[:3])])


def truth_map(b: int) -> torch.Tensor:
    return TopLeftReader.top_left().float()[None].expand(b, N)


def random_map(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, N, generator=torch.Generator().manual_seed(seed))


def pair_data(samples, classnames):
    """A classification pair of ``samples`` under the class columns ``W``, as the command opens one."""
    return PairData(TaskConfig("toy/pair", {"format": "toy-masked"}), samples, classnames, W, load_catalog())


def curves_for(adapter, pixels, importance, steps=8, kind="cosine", replacement="black", tokens=False):
    scorer = Scorer(W, torch.zeros(pixels.shape[0], dtype=torch.long), kind)
    order = importance_order(importance)
    if tokens:
        return token_curves(adapter, pixels, order, scorer, steps)
    return pixel_curves(adapter, pixels, order, canvas(adapter, pixels, replacement, 8.0), scorer, steps)


@pytest.mark.parametrize("tokens", [False, True])
@pytest.mark.parametrize("kind", ["cosine", "softmax"])
def test_planted_truth_beats_random(tokens, kind):
    adapter = Counting()
    pixels = batch(adapter)
    truth = curves_for(adapter, pixels, truth_map(3), kind=kind, tokens=tokens)
    t_del, t_ins = truth.aucs()
    for seed in range(3):
        r_del, r_ins = curves_for(adapter, pixels, random_map(3, seed), kind=kind, tokens=tokens).aucs()
        assert t_del.mean() < r_del.mean()
        assert t_ins.mean() > r_ins.mean()


@pytest.mark.parametrize("replacement", ["black", "blur", "mean"])
def test_deletion_curve_never_rises_on_the_planted_model(replacement):
    adapter = Counting()
    pixels = batch(adapter)
    for tokens in (False, True):
        c = curves_for(adapter, pixels, truth_map(3), replacement=replacement, tokens=tokens)
        if replacement == "black" or tokens:  # black (0) lowers every top-left patch; removal drops its term
            assert (np.diff(c.deletion, axis=1) <= 1e-6).all()
        assert (c.deletion[:, 0] >= c.deletion[:, -1]).all()
        # once every top-left patch is gone (the first quarter of the curve), nothing changes any more
        quarter = c.x_deletion >= 0.25
        assert np.allclose(c.deletion[:, quarter], c.deletion[:, quarter][:, :1], atol=1e-6)


def test_one_model_call_per_curve_per_batch():
    adapter = Counting()
    pixels = batch(adapter)
    curves_for(adapter, pixels, random_map(3), steps=16)
    assert adapter.image_calls == [3 * 17, 3 * 17]  # deletion, insertion: every point of every image at once
    curves_for(adapter, pixels, random_map(3), steps=16, tokens=True)
    assert adapter.calls == [(3, 17, N), (3, 17, N)]  # one removal call per curve with all patterns


def test_run_pair_calls_per_batch(tmp_path):
    """The whole pass: per batch one plain forward, then per method its map (cci: one removal call) and one call
    per curve (two pixel, two token-removal)."""
    root = tmp_path / "imgs"
    root.mkdir()
    for j, tl in enumerate(LAYOUTS):
        layout(tl, seed=j).save(root / f"{j}.png")
    samples = SampleSet([Sample(f"{j}.png", 0) for j in range(4)], ["object", "other"], root)
    adapter = Counting()
    settings = FaithfulnessSettings(steps=4, replacement="black", bootstrap=0)
    runs = run_pair(
        adapter,
        pair_data(samples, ["object", "other"]),
        ["cci"],
        settings,
        CCISettings(k=4),
        RunOptions(batch_size=2, workers=0),
    )
    assert len(runs["cci"].rows) == 4 and not runs["cci"].error
    # per batch of 2: the pass's one forward (the embeddings every method explains), deletion, insertion (5 points)
    assert adapter.image_calls == [2, 10, 10] * 2
    assert [c[1] for c in adapter.calls] == [4, 5, 5] * 2  # per batch: CCI's K patterns, two token curves


def test_registered_methods_on_the_planted_model():
    """occlusion and cci rank the top-left patches first: lower deletion and higher insertion AUC than random."""
    adapter = Counting()
    pixels = batch(adapter)
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    target = torch.zeros(3, dtype=torch.long)
    text = W[:, target].T
    settings = CCISettings(k=7)
    aucs = {}
    for method in ("cci", "occlusion", "rise", "random"):
        maps = importance_maps(method, adapter, pixels, emb, text, target, [1, 2, 3], settings)
        assert maps.shape == (3, N)
        aucs[method] = [a.mean() for a in curves_for(adapter, pixels, maps).aucs()]
    for method in ("cci", "occlusion", "rise"):
        assert aucs[method][0] < aucs["random"][0] and aucs[method][1] > aucs["random"][1]


def test_occlusion_scores_single_patches():
    adapter = Counting()
    pixels = batch(adapter)
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    target = torch.zeros(3, dtype=torch.long)
    result = attribute(adapter, pixels, emb, W[:, target].T, target, [1, 2, 3], CCISettings(k=7), "occlusion")
    patch = result.patch_importance()
    tl = TopLeftReader.top_left()
    assert (patch[:, tl] > 0).all() and torch.equal(patch[:, ~tl], torch.zeros(3, int((~tl).sum())))
    # a cluster's importance is the sum of its patches' (what diagnosis reads)
    sums = torch.zeros(3, 7).scatter_add_(1, result.assignments, patch) * result.valid
    assert torch.allclose(result.importance, sums)
    # the one removal call held the N single-patch patterns
    assert adapter.calls[-1] == (3, N, N)


def test_occlusion_in_pixels_without_removal():
    adapter = NoRemoval()
    pixels = batch(adapter)
    target = torch.zeros(3, dtype=torch.long)
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    adapter.image_calls.clear()
    maps = importance_maps("occlusion", adapter, pixels, emb, W[:, target].T, target, [1, 2, 3], CCISettings())
    tl = TopLeftReader.top_left()
    assert (maps[:, tl] > 0).all() and torch.allclose(maps[:, ~tl], torch.zeros(()))
    assert adapter.image_calls == [3 * (N + 1)]  # every occluded image in one call


def test_pointing_energy_and_rank_accuracy():
    fg = np.array([1.0, 1.0, 0.0, 0.0])
    assert pointing_energy(np.array([0.5, 2.0, -3.0, 0.0]), fg) == 1.0  # negatives outside do not count
    assert pointing_energy(np.array([1.0, 0.0, 1.0, 2.0]), fg) == 0.25
    assert pointing_energy(np.array([-1.0, 0.0, -2.0, 0.0]), fg) is None
    assert pointing_energy(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.5, 1.0, 0.0, 0.0])) == 0.75  # fractions
    assert relevance_rank_accuracy(np.array([3.0, 2.0, 1.0, 0.0]), fg) == 1.0
    assert relevance_rank_accuracy(np.array([3.0, 0.0, 1.0, 0.0]), fg) == 0.5
    assert relevance_rank_accuracy(np.array([3.0, 0.0, 1.0, 0.0]), np.zeros(4)) is None


def test_geometry_and_auc():
    masks = patch_pixel_masks((2, 3), (4, 6))
    assert masks.shape == (6, 4, 6) and (masks.sum(0) == 1).all() and masks[4, 2:, 2:4].all()
    assert step_counts(10, 4) == [0, 2, 5, 8, 10]
    order = torch.tensor([[2, 0, 1]])
    assert top_masks(order, [0, 1, 2, 3]).tolist() == [
        [[False, False, False], [False, False, True], [True, False, True], [True, True, True]]
    ]
    assert np.allclose(auc(np.array([[1.0, 1.0, 0.0]]), np.array([0.0, 0.5, 1.0])), [0.75])


def test_settings_are_checked():
    with pytest.raises(UsageError, match="--steps"):
        FaithfulnessSettings(steps=0)
    with pytest.raises(UsageError, match="--replacement"):
        FaithfulnessSettings(replacement="grey")


def test_rise_ranks_the_read_patches_first():
    adapter = Counting()
    pixels = batch(adapter)
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    target = torch.zeros(3, dtype=torch.long)
    result = attribute(adapter, pixels, emb, W[:, target].T, target, [1, 2, 3], CCISettings(k=7), "rise")
    patch = result.patch_importance()
    tl = TopLeftReader.top_left()
    # RISE's cells span 2x2 patches, so neighbours of the quarter share some credit: compare the means
    assert (patch[:, tl].mean(dim=1) > 3 * patch[:, ~tl].abs().mean(dim=1)).all()
    assert adapter.calls[-1] == (3, 256, N)  # every mask of the batch in one removal call
    again = attribute(adapter, pixels[:1], emb[:1], W[:, :1].T, target[:1], [1], CCISettings(k=7), "rise")
    assert torch.allclose(again.patch_importance()[0], patch[0])  # seeded per image, not per batch


def test_model_without_removal(tmp_path):
    """Pixel curves only (noted), occlusion in pixels, and cci refused in one line with no partial rows."""
    root = tmp_path / "imgs"
    root.mkdir()
    for j, tl in enumerate(LAYOUTS[:2]):
        layout(tl, seed=j).save(root / f"{j}.png")
    data = pair_data(SampleSet([Sample(f"{j}.png", 0) for j in range(2)], ["object", "other"], root), ["o", "x"])
    settings = FaithfulnessSettings(steps=4, replacement="black", bootstrap=0)
    runs = run_pair(
        NoRemoval(), data, ["occlusion", "cci"], settings, CCISettings(k=4), RunOptions(batch_size=2, workers=0)
    )
    assert data.notes and "token-removal" in data.notes[0]
    occ = runs["occlusion"]
    assert len(occ.rows) == 2 and not occ.error and "deletion_tokens_auc" not in occ.rows[0]
    assert runs["cci"].rows == [] and "\n" not in runs["cci"].error and runs["cci"].error


def test_rise_settings_pick_the_masks():
    """RISESettings: the mask count is the removal call's pattern count, the seed and the cell change the masks,
    the keep probability is the share of kept patches, the defaults are the registered class itself, and the
    settings are checked in one line each."""
    from covar_harness.attribution.base import find_attributor
    from covar_harness.attribution.rise import RISE, RISESettings

    assert RISE.with_settings(RISESettings()) is RISE and find_attributor("rise") is RISE
    few = RISE.with_settings(RISESettings(n_masks=16))
    assert few is RISE.with_settings(RISESettings(n_masks=16)) and few.name == "rise"
    adapter = Counting()
    pixels = batch(adapter)
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    target = torch.zeros(3, dtype=torch.long)
    attribute(adapter, pixels, emb, W[:, target].T, target, [1, 2, 3], CCISettings(k=7), few)
    assert adapter.calls[-1] == (3, 16, N)

    def masks(**kw):
        return RISE.with_settings(RISESettings(**kw))()._masks(7, GRID, GRID)

    assert torch.equal(masks(seed=1), masks(seed=1)) and not torch.equal(masks(seed=1), masks(seed=2))
    assert torch.equal(masks(), RISE()._masks(7, GRID, GRID))  # seed 0: the masks before the flag existed
    kept = (~masks(n_masks=4000, p_keep=0.25, cell=1)).float().mean().item()
    assert 0.23 < kept < 0.27
    # cell 1: every patch drawn on its own; cell GRID: a whole image is one cell (up to the shift), so far
    # fewer distinct patterns per mask
    assert masks(n_masks=200, cell=1).float().std(dim=0).mean() > 0.4
    for kw, flag in (({"n_masks": 0}, "--rise-masks"), ({"cell": 0}, "--rise-cell"), ({"p_keep": 0.0}, "--rise-keep"),
                     ({"p_keep": True}, "--rise-keep"), ({"seed": -1}, "--rise-seed")):  # fmt: skip
        with pytest.raises(UsageError, match=flag):
            RISESettings(**kw)


def test_rise_step_records_settings_only_when_not_the_defaults():
    """The run settings ``run`` compares before reusing a result: default RISE as before the flags (old files still
    resume), other masks named; the result config names them always."""
    from covar_harness.attribution.rise import RISE, RISESettings

    assert "rise" not in RISE.make_step().run_settings()
    step = RISE.make_step(rise=RISESettings(n_masks=8), k=5)
    assert step.run_settings()["rise"]["n_masks"] == 8 and step.settings.k == 5
    assert step.attributor().config(Counting(), step.settings) == {
        "rise": {"n_masks": 8, "cell": 2, "p_keep": 0.5, "seed": 0}
    }


def test_ties_break_in_a_seeded_random_order():
    """Strict order kept; tied patches in a random order seeded per image (the same in any batch), not raster
    order; rank accuracy takes that order, so a map tied everywhere scores about the mask's share."""
    imp = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0], [3.0, 2.0, 1.0, *[0.0] * 7]])
    order = importance_order(imp, seeds=[7, 8])
    assert order[0, :2].tolist() == [8, 9] and order[1, :3].tolist() == [0, 1, 2]
    assert sorted(order[0, 2:].tolist()) == list(range(8)) and order[0, 2:].tolist() != list(range(8))
    assert torch.equal(importance_order(imp[:1], seeds=[7]), order[:1])  # per image, whatever the batch
    assert torch.equal(importance_order(imp, seeds=[7, 8]), order)  # deterministic
    assert importance_order(imp)[0, 2:].tolist() == list(range(8))  # no seeds: raster order (the old ties)
    flat = np.zeros(64)
    fg = np.zeros(64)
    fg[48:] = 1.0  # the mask is the last quarter: raster ties never reach it
    assert relevance_rank_accuracy(flat, fg) == 0.0
    seeded = [relevance_rank_accuracy(flat, fg, 0.5, importance_order(torch.zeros(1, 64), [s])[0].numpy())
              for s in range(200)]  # fmt: skip
    assert abs(float(np.mean(seeded)) - 0.25) < 0.03


def test_settings_check_ties():
    with pytest.raises(UsageError, match="--ties"):
        FaithfulnessSettings(ties="none")


def test_softmax_at_the_models_own_logit_scale():
    """The softmax score's T: ``--temperature`` when given, else the model's learned logit scale (exp of the
    stored log), else CLIP's 100 with a note saying the model exposes none."""
    from covar_harness.faithfulness.evaluate import softmax_temperature

    class WithScale(Counting):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(14.8))))

    assert softmax_temperature(WithScale(), FaithfulnessSettings()) == (pytest.approx(14.8), "the model's logit scale")
    assert softmax_temperature(WithScale(), FaithfulnessSettings(temperature=50.0)) == (50.0, "--temperature")
    T, source = softmax_temperature(Counting(), FaithfulnessSettings())
    assert T == 100.0 and "exposes no logit scale" in source
    with pytest.raises(UsageError, match="--temperature"):
        FaithfulnessSettings(temperature=0.0)


class FailsOnSecondBatch(Occlusion):
    """Occlusion in pixels that fails on its second batch (say, out of memory on a larger image)."""

    name = "fails-later"
    calls = 0

    @staticmethod
    def pixel_importance(adapter, pixels, text):
        FailsOnSecondBatch.calls += 1
        if FailsOnSecondBatch.calls == 2:
            raise RuntimeError("out of memory\nwhile explaining")
        return Occlusion.pixel_importance(adapter, pixels, text)


def test_a_method_failing_part_way_is_reported_without_rows(tmp_path):
    """A method that fails on a later batch: its error in one line and no rows (no partial summary), not asked
    again; the other methods keep every row."""
    root = tmp_path / "imgs"
    root.mkdir()
    for j, tl in enumerate(LAYOUTS):
        layout(tl, seed=j).save(root / f"{j}.png")
    data = pair_data(SampleSet([Sample(f"{j}.png", 0) for j in range(4)], ["object", "other"], root), ["o", "x"])
    settings = FaithfulnessSettings(steps=2, replacement="black", bootstrap=0)
    FailsOnSecondBatch.calls = 0
    runs = run_pair(
        NoRemoval(),
        data,
        [FailsOnSecondBatch, "occlusion"],
        settings,
        CCISettings(k=4),
        RunOptions(batch_size=1, workers=0),
    )
    assert runs["fails-later"].rows == []
    assert runs["fails-later"].error == "RuntimeError: out of memory while explaining"  # one line
    assert FailsOnSecondBatch.calls == 2  # not asked again after it failed
    assert [r["index"] for r in runs["occlusion"].rows] == [0, 1, 2, 3] and not runs["occlusion"].error


def test_a_resumed_pair_keeps_its_failed_methods_and_curve_points(tmp_path, monkeypatch):
    """The part file keeps the curve step's state beyond counters (``Step.resumed``): a method that failed before
    Ctrl-C is not asked again after it and keeps its error, and a pair restored whole from its part file keeps
    the curves' points (``x``) without forwarding a batch; both end as the uninterrupted pair."""
    root = tmp_path / "imgs"
    root.mkdir()
    for j, tl in enumerate(LAYOUTS):
        layout(tl, seed=j).save(root / f"{j}.png")

    def pair(part=None):
        data = pair_data(SampleSet([Sample(f"{j}.png", 0) for j in range(4)], ["object", "other"], root), ["o", "x"])
        settings = FaithfulnessSettings(steps=2, replacement="black", bootstrap=0)
        options = RunOptions(batch_size=1, workers=0, checkpoint_every=1)
        FailsOnSecondBatch.calls = 0
        return run_pair(NoRemoval(), data, [FailsOnSecondBatch, "occlusion"], settings, CCISettings(k=4), options, part)

    expected = pair()
    assert expected["fails-later"].error and expected["occlusion"].x["deletion"]
    part, batches, real = tmp_path / "curves.part", [], CurveStep.process

    def process(step, batch):
        batches.append(batch.indices)
        if len(batches) == 3:
            raise KeyboardInterrupt  # after the 2nd batch, where fails-later failed
        return real(step, batch)

    with monkeypatch.context() as m:
        m.setattr(CurveStep, "process", process)
        with pytest.raises(KeyboardInterrupt):
            pair(part)
    batches.clear()
    monkeypatch.setattr(CurveStep, "process", lambda step, batch: batches.append(batch.indices) or real(step, batch))
    resumed = pair(part)
    assert batches == [[2], [3]] and FailsOnSecondBatch.calls == 0  # not asked again on batches 3 and 4
    assert resumed == expected
    batches.clear()
    assert pair(part) == expected and batches == []  # every batch restored: the points come from the part file
