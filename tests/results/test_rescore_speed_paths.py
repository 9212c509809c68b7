"""Issue 26 item 4: the cheaper paths a rescore takes must not change what it computes.

- ``resampled_sums`` draws how many units of each distinct value a bootstrap replicate gets (a multinomial)
  instead of the units themselves: the same distribution, each replicate exactly n units.
- ``files.rewritten_line`` copies what a log row keeps from the line it was read from: the line written is the
  line a full serialization gives, or the row is serialized whole.
- ``safe_files.parse_json_record`` (orjson) reads what ``json`` reads, bit for bit, and refuses what it refuses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from covar_harness.common.metrics import DISTINCT_SHARE, Draws, bootstrap_interval, resampled_sums
from covar_harness.common.safe_files import JsonFormatError, parse_json, parse_json_record
from covar_harness.results import files


# ---- the bootstrap's draws ----------------------------------------------------------------------------------------
def test_counts_per_distinct_row_draw_n_units_per_replicate():
    rng = np.random.default_rng(3)
    flags = (rng.random(5000) < 0.3).astype(float)
    columns = np.column_stack([flags, np.ones_like(flags)])  # 2 distinct rows: the multinomial path
    totals = resampled_sums(columns, 400, 7)
    assert totals.shape == (400, 2)
    assert (totals[:, 1] == 5000).all()  # every replicate draws exactly n units
    assert (totals == np.floor(totals)).all()  # sums of whole numbers stay whole
    assert (resampled_sums(columns, 400, 7) == totals).all()  # seeded


def test_counts_per_distinct_row_have_the_unit_draws_distribution():
    """Means and spread of the replicates agree with drawing the units (the old scheme) within Monte Carlo
    error: a sampler with the wrong probabilities or a wrong total would miss by many standard errors."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4, 3000).astype(float)  # source objects with 1-3 samples
    correct = np.array([rng.binomial(int(s), 0.8 if i % 2 else 0.4) for i, s in enumerate(sizes)], dtype=float)
    columns = np.column_stack([correct, sizes])
    assert len(np.unique(columns, axis=0)) * DISTINCT_SHARE <= len(columns)  # the multinomial path
    new = resampled_sums(columns, 4000, 11)
    draws = Draws(np.random.default_rng(11), len(columns), 4000)
    old = np.column_stack([draws.totals(correct), draws.totals(sizes)])
    for a, b in ((new[:, 0] / new[:, 1], old[:, 0] / old[:, 1]), (new[:, 0], old[:, 0])):
        se = b.std() / np.sqrt(len(b))
        assert abs(a.mean() - b.mean()) < 5 * se * np.sqrt(2)
        assert abs(a.std() / b.std() - 1) < 0.1


def test_mostly_distinct_values_draw_the_units():
    values = np.random.default_rng(1).random(200)  # every row distinct: counts per row would cost more
    got = resampled_sums(values.reshape(-1, 1), 50, np.random.default_rng(4))
    want = Draws(np.random.default_rng(4), 200, 50).totals(values)
    assert (got[:, 0] == want).all()


def test_bootstrap_interval_of_flags_covers_the_binomial_spread():
    flags = np.array([1.0] * 300 + [0.0] * 700)
    lo, hi = bootstrap_interval(flags, seed=0)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 1000)
    assert lo < 0.3 < hi and abs((hi - lo) / 2 - half) < 0.2 * half


# ---- the log rewrite ------------------------------------------------------------------------------------------------
ROW = {"index": 3, "file": "a/b.png", "cci": {"importance": [0.25, -1e-05, 3.0]}, "driver": "bg", "fg": [0.5, 1e-07]}


def _line(row: dict) -> str:
    return json.dumps(row, allow_nan=False, separators=(",", ":"))


def test_an_unchanged_row_is_its_logged_line():
    line = _line(ROW)
    assert files.rewritten_line(dict(ROW), ROW, line) is line


@pytest.mark.parametrize(
    "change",
    [
        {"driver": "fg"},  # a diagnosis field changed, the rest kept
        {"driver": "fg", "fg": [0.5, 1e-07], "nulls": {"area": 0.25}},  # one added at the end
        {"cci": {"importance": [1.0]}},  # the attribution swapped (--cci-target): fields on both sides kept
        {"index": 3, "fg": [0.25]},  # only the last field changed
    ],
)
def test_a_changed_row_is_written_as_a_full_serialization_writes_it(change):
    row = {**ROW, **change}
    got = files.rewritten_line(row, ROW, _line(ROW))
    assert got == _line(row)


def test_fields_removed_at_the_end_or_between_kept_ones():
    for gone in (("driver", "fg"), ("cci",), ("cci", "driver")):
        row = {k: v for k, v in ROW.items() if k not in gone}
        assert files.rewritten_line(row, ROW, _line(ROW)) == _line(row)
    row = {"index": 3, "file": "a/b.png", "new": [1], "fg": [0.5, 1e-07]}  # removed and added between kept ones
    assert files.rewritten_line(row, ROW, _line(ROW)) == _line(row)


def test_a_line_that_cannot_be_cut_safely_is_serialized_whole(tmp_path):
    nested = {**ROW, "file": {"x": 1, "driver": 2}}  # the changed field's key also inside a kept value
    assert files.rewritten_line({**nested, "driver": "fg"}, nested, _line(nested)) is None
    spaced = json.dumps(ROW)  # not compact: the cut looks for compact keys
    assert files.rewritten_line({**ROW, "driver": "fg"}, ROW, spaced) is None
    assert files.rewritten_line({"index": 4, **{k: v for k, v in ROW.items() if k != "index"}}, ROW, _line(ROW)) is None
    rows = [{**nested, "driver": "fg"}, {**ROW, "driver": "fg"}]
    files.write_jsonl(tmp_path / "log.jsonl", rows, logged=[(nested, _line(nested)), (ROW, spaced)])
    assert (tmp_path / "log.jsonl").read_text() == "".join(_line(r) + "\n" for r in rows)


# ---- reading ------------------------------------------------------------------------------------------------------
def test_parse_json_record_reads_floats_as_json_does_bit_for_bit():
    rng = np.random.default_rng(5)
    values = rng.standard_normal(20000) * 10.0 ** rng.integers(-300, 300, 20000)
    text = "[" + ",".join([repr(float(v)) for v in values] + [f"{v:.25e}" for v in values[:2000]]) + "]"
    got, want = np.array(parse_json_record(text, "x")), np.array(json.loads(text))
    assert (got.view(np.uint64) == want.view(np.uint64)).all()
    fg32 = [float(np.float32(v)) for v in rng.random(2000)]
    assert parse_json_record(json.dumps(fg32), "x") == fg32


@pytest.mark.parametrize("bad", ['{"a":NaN}', '{"a":Infinity}', '{"a":', "[" * 100 + "]" * 100])
def test_parse_json_record_refuses_what_parse_json_refuses(bad):
    with pytest.raises(JsonFormatError, match="^log:3: "):
        parse_json_record(bad, "log:3")
    with pytest.raises(JsonFormatError):
        parse_json(bad, "log:3", constants=False)


def test_rows_equal_in_python_but_not_in_json_are_not_the_logged_line():
    """Python's == ignores key order and 1 == 1.0 == True; the line written must be the row's own JSON."""
    old = {**ROW, "scores": {"area": 1.0, "paper": 0.5}, "n": 1}
    reordered = {**old, "scores": {"paper": 0.5, "area": 1.0}}
    retyped = {**old, "n": 1.0}
    for row in (reordered, retyped):
        assert row == old
        assert files.rewritten_line(row, old, _line(old)) == _line(row) != _line(old)
    assert files.same_json([1.0, {"a": 1}], [1.0, {"a": 1}]) and not files.same_json([1.0], [True])
