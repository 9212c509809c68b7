"""cci-shapley: exact cluster Shapley values through one batched removal call, checked on a hand-made game
(efficiency, symmetry, null player, the permutation definition), v(empty) on real towers, and the K limit."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import covar_harness
from covar_harness.attribution import AttributionStep, CCISettings
from covar_harness.attribution.engine import attribute, sample_seed
from covar_harness.attribution.shapley import coalition_patterns, shapley_from_values
from covar_harness.catalog.registry import UsageError
from covar_harness.models import token_removal as tr
from covar_harness.pipeline.contract import PairContext
from helpers import TINY_OPENCLIP_CFG, make_openclip_dir
from helpers import run_cli_inprocess as cli  # the CLI in this process: same exit codes and output, no start-up

# 1x4 patch grid. Patch p adds PATCH_VECS[p] to the embedding; BIAS is what the prefix token (CLS) contributes.
# Patches 0 and 1 are interchangeable (symmetric players), patch 2 adds nothing (null player), patch 3 differs.
PATCH_VECS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
TOKENS = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # distinct tokens: with K=4 every patch is its own cluster
BIAS = torch.tensor([0.2, 0.3, 1.0])
TEXT = F.normalize(torch.tensor([[1.0, 0.5, 0.2]]), dim=-1)


class AdditiveToy:
    """Embedding = BIAS + sum of the kept patches' vectors: cos to the text is NOT additive, so Shapley values are
    a real computation. ``can_remove_all_patches`` says whether an all-dropped pattern may be sent."""

    name, patch_grid = "toy:additive", (1, 4)
    supports_pattern_batches = True

    def __init__(self, can_remove_all_patches: bool):
        self.can_remove_all_patches = can_remove_all_patches
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def patch_tokens(self, pixels, layer=-1):
        return TOKENS.expand(pixels.shape[0], 4, 1)

    def encode_images(self, pixels):
        return (BIAS + PATCH_VECS.sum(0)).expand(pixels.shape[0], 3)

    def encode_images_without(self, pixels, drop, allow_empty: bool = False):
        self.calls.append((tuple(drop.shape), allow_empty))
        if drop.all(dim=-1).any() and not allow_empty:
            raise ValueError("a drop pattern removes every patch")
        return BIAS + (~drop).float() @ PATCH_VECS


def v_of(kept: set[int]) -> float:
    emb = BIAS + sum((PATCH_VECS[p] for p in kept), torch.zeros(3))
    return float(F.cosine_similarity(emb[None], TEXT)[0])


def shapley_by_permutations(v, players: list[int]) -> dict[int, float]:
    """The definition: average marginal contribution over every order of the players."""
    phi = {p: 0.0 for p in players}
    orders = list(itertools.permutations(players))
    for order in orders:
        seen: set[int] = set()
        for p in order:
            phi[p] += v(seen | {p}) - v(seen)
            seen.add(p)
    return {p: x / len(orders) for p, x in phi.items()}


def run(adapter, k=4):
    pixels = torch.zeros(1, 3, 1, 4)
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    return attribute(
        adapter, pixels, emb, TEXT, torch.tensor([0]), [sample_seed(0, "x")], CCISettings(k=k), "cci-shapley"
    )


@pytest.mark.parametrize("exact_empty", [True, False])
def test_efficiency_symmetry_null_player_and_the_definition(exact_empty):
    adapter = AdditiveToy(exact_empty)
    result = run(adapter)
    sh = result.shapley
    cluster_of = result.assignments[0].tolist()  # patch -> cluster
    assert sorted(cluster_of) == [0, 1, 2, 3]
    phi = {p: float(sh.values[0, cluster_of[p]]) for p in range(4)}
    v_empty = v_of(set()) if exact_empty else 0.0  # prefix-only forward, or the documented convention
    assert float(sh.v_all[0]) == pytest.approx(v_of({0, 1, 2, 3}), abs=1e-6) == pytest.approx(float(result.s[0]))
    assert float(sh.v_empty[0]) == pytest.approx(v_empty, abs=1e-6)
    assert sum(phi.values()) == pytest.approx(float(sh.v_all[0] - sh.v_empty[0]), abs=1e-9)  # efficiency
    assert phi[0] == pytest.approx(phi[1], abs=1e-7) and abs(phi[0]) > 1e-3  # symmetry
    if exact_empty:  # null player. With v(empty) := 0 the jump from "nothing" to the bias is shared by every
        assert phi[2] == pytest.approx(0.0, abs=1e-7)  # cluster, so patch 2 is not null in that game
    else:
        assert phi[2] > 1e-3  # (the permutation check below pins its exact value)
    game = lambda kept: v_of(kept) if kept else v_empty
    want = shapley_by_permutations(game, [0, 1, 2, 3])
    assert phi == pytest.approx(want, abs=1e-6)
    # one removal call with all 2^K coalitions; all-dropped only when the adapter allows it
    assert adapter.calls == [((1, 16, 4), exact_empty)]
    assert sh.v_empty_rule.startswith("prefix-only" if exact_empty else "0 by convention")


def test_the_cci_record_of_a_shapley_run_is_the_leave_one_out_cci():
    """Leave-one-out values come from the same coalition passes: identical to a plain CCI run."""
    shapley_run = run(AdditiveToy(True))
    adapter = AdditiveToy(True)
    pixels = torch.zeros(1, 3, 1, 4)
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    cci_run = attribute(adapter, pixels, emb, TEXT, torch.tensor([0]), [sample_seed(0, "x")], CCISettings(k=4))
    assert torch.equal(shapley_run.assignments, cci_run.assignments)
    torch.testing.assert_close(shapley_run.importance.float(), cci_run.importance.float(), atol=1e-6, rtol=0)
    assert shapley_run.record(0).method == "cci-shapley"
    rec = shapley_run.shapley.record(0).to_json()
    assert set(rec) == {"values", "v_all", "v_empty"} and len(rec["values"]) == 4


def test_empty_clusters_are_exact_null_players():
    """K=6 on 4 distinct tokens leaves 2 clusters empty: their value is exactly 0 and the others equal K=4's."""
    six, four = run(AdditiveToy(True), k=6), run(AdditiveToy(True), k=4)
    used = sorted(set(six.assignments[0].tolist()))
    empty = [k for k in range(6) if k not in used]
    assert len(empty) == 2 and all(float(six.shapley.values[0, k]) == 0.0 for k in empty)
    by_patch = lambda r: [float(r.shapley.values[0, r.assignments[0, p]]) for p in range(4)]  # noqa: E731
    assert by_patch(six) == pytest.approx(by_patch(four), abs=1e-9)


def test_shapley_formula_on_a_known_game_and_coalition_layout():
    # v(S) = |S|^2 over 3 symmetric players: each gets v(all)/3 = 3
    k = 3
    v = torch.tensor([[float(bin(c).count("1")) ** 2 for c in range(2**k)]])
    assert shapley_from_values(v, k)[0].tolist() == pytest.approx([3.0, 3.0, 3.0])
    # additive game: Shapley values are the weights
    w = torch.tensor([0.5, -1.0, 2.0])
    v = torch.tensor([[sum(float(w[j]) for j in range(k) if c >> j & 1) for c in range(2**k)]])
    assert shapley_from_values(v, k)[0].tolist() == pytest.approx(w.tolist())
    patterns = coalition_patterns(torch.tensor([[0, 1, 1, 2]]), k)  # bit j of coalition c keeps cluster j
    assert patterns.shape == (1, 8, 4)
    assert patterns[0, 0].all() and not patterns[0, 7].any()
    assert patterns[0, 0b010].tolist() == [True, False, False, True]


def test_k_above_ten_is_refused_with_a_usage_error(task_yaml):
    with pytest.raises(UsageError, match="2\\^K"):
        AttributionStep("cci-shapley", k=11)
    AttributionStep("cci-shapley", k=10)  # the limit itself is fine
    AttributionStep("cci", k=11)  # and plain CCI has no such limit
    r = cli(
        "run",
        "--models",
        "openclip:ViT-B-32",
        "--tasks",
        str(task_yaml),
        "--attribution",
        "cci-shapley",
        "--cci-k",
        "12",
    )
    assert r.returncode == 2 and "--cci-k 12 would need 4096 removal passes" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- v(empty) on real towers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    cls = make_openclip_dir(root / "cls")
    avg = make_openclip_dir(
        root / "avg", {**TINY_OPENCLIP_CFG, "vision_cfg": {**TINY_OPENCLIP_CFG["vision_cfg"], "pool_type": "avg"}}
    )
    return (
        covar_harness.load_model(f"openclip:local-dir:{cls}"),
        covar_harness.load_model(f"openclip:local-dir:{avg}"),
    )


def test_cls_tower_removes_every_patch_only_on_request_and_reads_the_cls_alone(towers):
    cls, _ = towers
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    n = cls.patch_grid[0] * cls.patch_grid[1]
    drop = torch.zeros(2, 3, n, dtype=torch.bool)
    drop[:, 0] = True  # every patch
    drop[0, 1, :5] = True
    with pytest.raises(ValueError, match="every patch"):
        cls.encode_images_without(px, drop)  # still strict by default
    assert cls.can_remove_all_patches
    out = {s: cls.encode_images_without(px, drop, strategy=s, allow_empty=True) for s in ("auto", "shorten", "mask")}
    v = cls.model.visual
    with torch.inference_mode():  # explicit forward of the CLS token alone (position embedding included)
        alone = v._embeds(px)[:, :1]
        want = v._pool(v.transformer(alone))[0] @ v.proj
    for strategy, o in out.items():
        torch.testing.assert_close(o[:, 0], want, atol=1e-5, rtol=1e-4, msg=strategy)
        torch.testing.assert_close(o[:, 1:], out["shorten"][:, 1:], atol=1e-5, rtol=1e-4)
    assert (want[0] - want[1]).abs().max() < 1e-6  # no image evidence left: the same for every image


def test_towers_that_pool_patches_refuse_empty_removal(towers):
    _, avg = towers
    assert avg.can_remove_all_patches is False
    n = avg.patch_grid[0] * avg.patch_grid[1]
    with pytest.raises(ValueError, match="prefix token"):
        avg.encode_images_without(torch.randn(1, 3, 32, 32), torch.ones(1, n, dtype=torch.bool), allow_empty=True)
    with pytest.raises(ValueError, match="prefix token"):  # the driver itself refuses without a prefix
        tr.encode_without(
            torch.randn(1, 4, 8),
            torch.ones(1, 4, dtype=torch.bool),
            0,
            lambda x: x[:, 0],
            lambda x, m: x[:, 0],
            allow_empty=True,
        )


def test_shapley_step_on_a_real_tower_records_and_config(towers):
    """The step end to end on a tiny open_clip model: v_empty is the CLS-only forward, efficiency holds."""
    from covar_harness.data.samples import Sample, SampleSet
    from covar_harness.pipeline.contract import Batch

    cls, _ = towers
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    emb = F.normalize(cls.encode_images(px), dim=-1)
    W = F.normalize(torch.randn(emb.shape[1], 2, generator=torch.Generator().manual_seed(2)), dim=0)
    samples = SampleSet([Sample(f"{i}.png", 0) for i in range(3)], ["a", "b"], None)
    step = AttributionStep("cci-shapley", k=4)
    step.start(PairContext(cls, None, samples))
    records = step.process(Batch([0, 1, 2], px, emb, W, emb @ W, torch.tensor([0, 0, 0]), samples))
    rows = [r.to_json() for r in records]
    for r in rows:
        sh, cci = r["shapley"], r["cci"]
        assert sum(sh["values"]) == pytest.approx(sh["v_all"] - sh["v_empty"], abs=1e-5)
        assert sh["v_all"] == pytest.approx(cci["s"], abs=1e-6)
        assert math.isfinite(sh["v_empty"]) and sh["v_empty"] != 0.0
    assert len({round(r["shapley"]["v_empty"], 5) for r in rows if r["cci"]["target"] == 0}) <= 1
    config = step.finish(records).config
    assert config is not None
    assert config["method"] == "cci-shapley" and config["shapley"]["v_empty"].startswith("prefix-only")
    assert config["shapley"]["coalitions"] == 16
