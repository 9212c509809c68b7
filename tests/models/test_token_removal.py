"""Unit tests for the shared token-removal driver (covar_harness.models.token_removal), on a toy attention "tower".

The toy tower is one softmax-attention pooling step whose result depends on every kept token and on their
order, so a wrong gather, a wrong mask, or rows written back to the wrong place all change the output.
"""

from __future__ import annotations

import pytest
import torch

from covar_harness.models import token_removal as tr

C = 6


def toy_tower(n_prefix: int = 1, seed: int = 0):
    """(run_shortened, run_masked, calls): attention pooling of a latent query over all kept tokens (a MAP head),
    plus the prefix tokens; ``calls`` records each forward's kind and input shape."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 1, C, generator=g, dtype=torch.float64)
    wk, wv = (torch.randn(C, C, generator=g, dtype=torch.float64) for _ in range(2))
    calls: list[tuple[str, tuple[int, ...]]] = []

    def attend(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits = query @ (x @ wk).transpose(1, 2) / C**0.5  # (R, 1, L)
        if mask is not None:
            logits = logits + mask[:, None, :]
        pooled = (logits.softmax(-1) @ (x @ wv))[:, 0]
        return torch.cat([pooled, x[:, :n_prefix].sum(dim=(1, 2))[:, None]], dim=1)

    def run_shortened(x):
        calls.append(("short", tuple(x.shape)))
        return attend(x, None)

    def run_masked(x, mask):
        calls.append(("mask", tuple(x.shape)))
        assert mask.shape == x.shape[:2] and mask.dtype == x.dtype
        return attend(x, mask)

    return run_shortened, run_masked, calls


def reference(tokens: torch.Tensor, drop: torch.Tensor, n_prefix: int, run_shortened) -> torch.Tensor:
    """Independent per-pattern loop: delete the dropped tokens with boolean indexing, run one sequence."""
    B, K, N = drop.shape
    out = torch.empty(B, K, C + 1, dtype=tokens.dtype)
    for b in range(B):
        for k in range(K):
            keep = torch.cat([torch.ones(n_prefix, dtype=torch.bool), ~drop[b, k]])
            out[b, k] = run_shortened(tokens[b, keep][None])[0]
    return out


def random_drop(B: int, K: int, N: int, p: float, seed: int) -> torch.Tensor:
    drop = torch.rand(B, K, N, generator=torch.Generator().manual_seed(seed)) < p
    drop[..., 0] = False  # keep at least one patch
    return drop


@pytest.mark.parametrize("strategy", ["auto", "shorten", "mask"])
@pytest.mark.parametrize("n_prefix", [0, 1, 2])
def test_every_strategy_equals_explicit_deletion(strategy, n_prefix):
    tokens = torch.randn(3, n_prefix + 10, C, dtype=torch.float64)
    drop = random_drop(3, 5, 10, 0.4, seed=n_prefix)
    short, masked, calls = toy_tower(n_prefix)
    got = tr.encode_without(tokens, drop, n_prefix, short, masked, max_rows=4, strategy=strategy, overhead_tokens=8)
    kinds = {kind for kind, _ in calls}
    assert kinds <= {"auto": {"short", "mask"}, "shorten": {"short"}, "mask": {"mask"}}[strategy]
    if strategy == "auto":  # padded chunks are shorter than the full sequence
        assert any(kind == "mask" and shape[1] < n_prefix + 10 for kind, shape in calls)
    calls.clear()
    torch.testing.assert_close(got, reference(tokens, drop, n_prefix, short), rtol=1e-12, atol=1e-12)


def test_2d_drop_squeezes_and_legacy_positional_call_still_works():
    tokens = torch.randn(2, 1 + 8, C, dtype=torch.float64)
    drop = random_drop(2, 1, 8, 0.5, seed=3)
    short, masked, _ = toy_tower()
    got = tr.encode_without(tokens, drop[:, 0], 1, short, masked, 256)  # the original positional signature
    assert got.shape == (2, C + 1)
    torch.testing.assert_close(got, reference(tokens, drop, 1, short)[:, 0], rtol=1e-12, atol=1e-12)


def test_equal_sized_patterns_run_as_one_shortened_call_without_masks():
    """B x K patterns that all drop 3 patches: one forward of B*K rows, physically shortened."""
    tokens = torch.randn(4, 1 + 9, C, dtype=torch.float64)
    drop = torch.zeros(4, 7, 9, dtype=torch.bool)
    for b in range(4):
        for k in range(7):
            drop[b, k, torch.randperm(9, generator=torch.Generator().manual_seed(b * 7 + k))[:3]] = True
    short, masked, calls = toy_tower()
    tr.encode_without(tokens, drop, 1, short, masked)
    assert calls == [("short", (28, 1 + 6, C))]


def test_shorten_strategy_never_masks_and_groups_by_kept_count():
    tokens = torch.randn(2, 1 + 9, C, dtype=torch.float64)
    drop = random_drop(2, 6, 9, 0.5, seed=5)
    short, masked, calls = toy_tower()
    tr.encode_without(tokens, drop, 1, short, masked, strategy="shorten")
    distinct = torch.unique((~drop).sum(-1)).numel()
    assert [kind for kind, _ in calls] == ["short"] * distinct
    assert sum(shape[0] for _, shape in calls) == 12


def test_chunks_bound_rows_per_forward():
    tokens = torch.randn(5, 1 + 6, C, dtype=torch.float64)
    drop = random_drop(5, 4, 6, 0.5, seed=7)
    for strategy in tr.STRATEGIES:
        short, masked, calls = toy_tower()
        got = tr.encode_without(tokens, drop, 1, short, masked, max_rows=3, strategy=strategy)
        assert max(shape[0] for _, shape in calls) <= 3
        torch.testing.assert_close(got, reference(tokens, drop, 1, short), rtol=1e-12, atol=1e-12)


def test_plan_covers_every_row_once_and_respects_the_padding_budget():
    kept = torch.tensor([5, 9, 9, 8, 2, 9, 5, 7, 8, 1, 9])
    for strategy, budget in [("auto", 0), ("auto", 3), ("auto", 1000), ("shorten", 1000), ("mask", 0)]:
        plan = tr.plan_chunks(kept, max_rows=4, strategy=strategy, overhead_tokens=budget)
        rows = torch.cat([c.rows for c in plan])
        assert sorted(rows.tolist()) == list(range(kept.numel())), strategy
        for c in plan:
            assert c.rows.numel() <= 4
            assert int(kept[c.rows].max()) <= c.length
            assert c.uniform == bool((kept[c.rows] == c.length).all()) or c.full
            if strategy == "auto" and not c.uniform:  # merged groups: padding within budget per group
                lengths, sizes = torch.unique(kept[c.rows], return_counts=True)
                assert all(int(n) * (c.length - int(length)) <= budget for length, n in zip(lengths, sizes))
    assert all(c.uniform for c in tr.plan_chunks(kept, 4, "shorten", 1000))
    assert all(c.full for c in tr.plan_chunks(kept, 4, "mask"))
    # zero budget never pads; a huge one packs rows as tightly as max_rows allows
    assert all(c.uniform for c in tr.plan_chunks(kept, 4, "auto", 0))
    assert len(tr.plan_chunks(kept, 4, "auto", 10**6)) == 3


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        tr.plan_chunks(torch.tensor([1]), strategy="fast")
    with pytest.raises(ValueError, match="max_rows"):
        tr.plan_chunks(torch.tensor([1]), max_rows=0)


def test_padded_keep_indices_keep_order_and_pad_with_a_kept_patch():
    drop = torch.tensor([[False, True, False, False, True], [True, True, True, False, True]])
    idx, pad = tr.padded_keep_indices(drop, 3)
    assert idx.tolist() == [[0, 2, 3], [3, 3, 3]]
    assert pad.tolist() == [[False, False, False], [False, True, True]]
    with pytest.raises(ValueError):
        tr.padded_keep_indices(drop, 2)


def test_key_mask_is_additive_float_and_never_masks_prefix():
    drop = torch.tensor([[True, False, True]])
    for dtype in (torch.float32, torch.bfloat16):
        m = tr.key_mask(drop, 2, dtype)
        assert m.dtype == dtype and m.shape == (1, 5)
        assert m[0, :2].eq(0).all() and m[0, 3] == 0
        assert m[0, 2] == torch.finfo(dtype).min and m[0, 4] == torch.finfo(dtype).min
        assert torch.isfinite(m).all()


def test_select_tokens_matches_gather_tokens():
    tokens = torch.randn(3, 2 + 5, C)
    images = torch.tensor([2, 0, 2, 1])
    keep = torch.tensor([[0, 3], [1, 4], [2, 3], [0, 1]])
    torch.testing.assert_close(tr.select_tokens(tokens, images, keep, 2), tr.gather_tokens(tokens[images], keep, 2))


def test_as_patterns_validates():
    with pytest.raises(TypeError):
        tr.as_patterns(torch.zeros(1, 4), 4)
    with pytest.raises(ValueError, match="N=4"):
        tr.as_patterns(torch.zeros(1, 5, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="every patch"):
        tr.as_patterns(torch.ones(1, 2, 4, dtype=torch.bool), 4)
    patterns, squeeze = tr.as_patterns(torch.zeros(2, 4, dtype=torch.bool), 4)
    assert patterns.shape == (2, 1, 4) and squeeze
