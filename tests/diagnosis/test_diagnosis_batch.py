"""The diagnosis as array operations (issue 28): a batch diagnosed at once gives every sample exactly the numbers
it gets alone and that the per-draw loop of the null gave (same seeds, same permutations, same sums), for every
rule with a null, and a rule registered per sample (``@rule``) still runs, with the same null."""

import numpy as np
import pytest

from covar_harness.diagnosis import arrays
from covar_harness.diagnosis.rules import (
    RULES,
    Case,
    DiagnosisSettings,
    Evidence,
    _null_seed,
    density_ratio,
    diagnose_batch,
    diagnose_sample,
    fg_fraction,
    rule,
)

SCALAR = {"paper": fg_fraction, "area": density_ratio, "shapley": fg_fraction}


def cases(n=120, seed=3):
    """Every kind of sample a batch holds: float32 and float64 grids, no mask, no record, few or empty clusters,
    cluster ids without a value, values that are all negative (undetermined), both explained targets."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 7 if i % 4 else int(rng.integers(1, 9))
        ids = rng.integers(0, 3 if i % 5 == 0 else 8, 16)  # id 7 has no value when k == 7
        short = lambda v: [float(f"{x:.7g}") for x in v]  # noqa: E731 (values as the sample log holds them)
        imp = short(rng.normal(0, 0.1, k) - (0.5 if i % 11 == 0 else 0.0))
        evidence = Evidence(
            ids.tolist(), imp, short(rng.normal(0, 0.1, k)), 0.3, 0.1, {"pred": imp, "label": short(rng.normal(size=k))}
        )
        fg = (rng.random(16) < rng.random()) * rng.random(16)
        fg = None if i % 13 == 0 else fg.astype(np.float32 if i % 3 else np.float64)
        if i % 17 == 0:
            evidence = Evidence()
        out.append(Case(i, i % 3, (5 * i) % 3, evidence, fg, f"img-{i}.png", f"obj{i // 4}"))
    return out


def per_draw_null(name, case, settings):
    """The null as it was computed before it was batched: one ``rng.permutation`` and one score per draw."""
    field = RULES[name].null_field
    values, ids = getattr(case.evidence, field), np.asarray(case.evidence.assignments)
    vals = np.asarray(values, dtype=np.float64)
    present = np.unique(ids)
    present = present[(present >= 0) & (present < len(vals))]
    rng = np.random.default_rng(_null_seed(settings.seed, case.sample_id))
    calls = decided = 0
    for _ in range(settings.null_draws):
        drawn = vals.copy()
        drawn[present] = vals[present][rng.permutation(len(present))]
        score = SCALAR[name](arrays.patch_values(ids, drawn), case.fg)
        if score is not None:
            decided += 1
            calls += score >= RULES[name].threshold(settings)
    return None if decided == 0 else calls / decided


def flat(record):
    out = {"area": record.area, "correct": record.correct, "fine": record.fine, "mask": record.has_mask}
    for name, o in record.outcomes.items():
        out[name] = (o.score, o.driver, o.error_type, o.null_fg)
        if o.by_target is not None:
            out[name + "/targets"] = {t: (x.score, x.driver, x.error_type) for t, x in o.by_target.items()}
    return out


def test_a_batch_gives_each_sample_its_per_draw_null_and_its_own_scores():
    settings = DiagnosisSettings(rules=("paper", "area", "shapley", "counterfactual"), null_draws=25, seed=4)
    batch = cases()
    records = diagnose_batch(batch, None, settings)
    checked = 0
    for case, record in zip(batch, records):
        for name in ("paper", "area", "shapley"):
            outcome = record.outcomes[name]
            if case.fg is None or case.evidence.assignments is None:
                assert outcome.score is None and outcome.null_fg is None
                continue
            values = getattr(case.evidence, RULES[name].null_field)
            assert outcome.score == SCALAR[name](arrays.patch_values(case.evidence.assignments, values), case.fg)
            if outcome.driver is not None:
                assert outcome.null_fg == per_draw_null(name, case, settings), (case.index, name)
                checked += 1
    assert checked > 150  # most samples decided under most rules: the comparison is not vacuous
    assert any(r.outcomes["paper"].driver is None and r.has_mask for r in records)  # and undetermined ones occur


def test_a_sample_gets_the_same_record_alone_as_in_any_batch():
    settings = DiagnosisSettings(null_draws=30)
    batch = cases(80, seed=9)
    together = diagnose_batch(batch, {0: "a", 1: "a", 2: "b"}, settings)
    reordered = diagnose_batch(batch[::-1], {0: "a", 1: "a", 2: "b"}, settings)[::-1]
    for case, a, b in zip(batch, together, reordered):
        c = case
        alone = diagnose_sample(
            c.index, c.label, c.pred, c.evidence, c.fg, {0: "a", 1: "a", 2: "b"}, settings, c.sample_id, c.cluster
        )
        assert flat(a) == flat(b) == flat(alone), case.index
        assert a.to_json() == alone.to_json()


def test_the_null_in_slices_is_the_null_at_once(monkeypatch):
    settings = DiagnosisSettings(null_draws=40)
    batch = cases(60, seed=5)
    at_once = [flat(r) for r in diagnose_batch(batch, None, settings)]
    monkeypatch.setattr(arrays, "NULL_BLOCK", 16 * 40 * 3)  # three samples per slice
    assert [flat(r) for r in diagnose_batch(batch, None, settings)] == at_once


def test_a_rule_registered_per_sample_runs_with_the_same_null_as_its_array_form():
    """A plugin's ``@rule`` (one Python call per sample and draw) and the built-in array rule it copies agree."""

    def slow_paper(evidence, fg):
        if evidence.assignments is None or evidence.importance is None:
            return None
        return fg_fraction(arrays.patch_values(evidence.assignments, evidence.importance), fg)

    rule("slow-paper", uses_threshold=True, null_field="importance")(slow_paper)
    try:
        settings = DiagnosisSettings(rules=("paper", "slow-paper"), null_draws=15)
        records = diagnose_batch(cases(40, seed=11), None, settings)
    finally:
        RULES.pop("slow-paper")
    for r in records:
        fast, slow = r.outcomes["paper"], r.outcomes["slow-paper"]
        assert (fast.score, fast.driver, fast.null_fg, fast.by_target) == (
            slow.score,
            slow.driver,
            slow.null_fg,
            slow.by_target,
        )


def test_null_order_draws_what_successive_permutations_draw():
    for n in (0, 1, 2, 7):
        rng = np.random.default_rng(123)
        expected = np.stack([rng.permutation(n) for _ in range(12)]) if n else np.zeros((12, 0), dtype=np.int64)
        assert np.array_equal(arrays.null_order(123, n, 12), expected)


def test_a_cluster_id_without_a_value_counts_zero_and_is_not_permuted():
    values = arrays.patch_values([0, 1, 5, -1], [0.5, 0.25])
    assert values.tolist() == [0.5, 0.25, 0.0, 0.0]
    table, lengths = arrays.value_table([[0.5, 0.25]])
    index = arrays.patch_index(np.array([[0, 1, 5, -1]]), lengths, table.shape[1])
    assert arrays.present_clusters(index, table.shape[1]).tolist() == [[True, True, False]]


@pytest.mark.parametrize("name", ["paper", "area"])
def test_scalar_and_array_scores_agree_on_edge_cases(name):
    fg = np.array([1.0, 0.0, 0.5, 0.0])
    score = SCALAR[name]
    batched = {"paper": arrays.fg_fractions, "area": arrays.density_ratios}[name]
    rows = np.array([[0.2, -0.1, 0.3, 0.0], [-0.1, -0.2, 0.0, 0.0], [np.nan, 0.1, 0.1, 0.1]])
    values, decided = batched(rows, fg)
    for row, v, ok in zip(rows, values, decided):
        alone = score(row, fg)
        assert (alone is None) == (not ok)
        if alone is not None:
            assert np.array_equal(np.float64(alone), v, equal_nan=True)
