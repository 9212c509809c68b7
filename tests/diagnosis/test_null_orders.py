"""The null's draws made for a batch (``arrays.null_orders``: one generator, its PCG64 state set per sample) are
the very arrays a generator built per sample gives (``null_order``: ``Generator(PCG64(seed))``), so every null
share and p-value is unchanged."""

from __future__ import annotations

import numpy as np

from covar_harness.diagnosis.arrays import null_order, null_orders, pcg64_states


def test_pcg64_states_are_numpys_for_every_seed_width():
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 2]
    seeds += rng.integers(0, 2**63 - 1, 3000).tolist() + rng.integers(0, 2**32, 1000).tolist()
    for seed, (state, inc) in zip(seeds, pcg64_states(seeds)):
        ref = np.random.PCG64(seed).state["state"]
        assert (state, inc) == (ref["state"], ref["inc"]), seed


def test_null_orders_are_null_order_bit_for_bit():
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, 2**63 - 1, 500).tolist() + [0, 7]
    sizes = rng.integers(1, 12, len(seeds)).tolist()
    for draws in (1, 20, 33):
        got = null_orders(seeds, sizes, draws)
        for seed, n, order in zip(seeds, sizes, got):
            assert np.array_equal(order, null_order(seed, n, draws)) and order.dtype == null_order(seed, n, draws).dtype
    assert null_orders([], [], 20) == []
