"""Batched torch k-means (covar_harness.attribution): agreement with scikit-learn, empty clusters, seeds."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from covar_harness.attribution.engine import cluster_patterns, sample_seed
from covar_harness.attribution.kmeans import batched_kmeans, kmeans_plusplus


def _blobs(rng, n_per=12, k=4, dim=5, spread=0.6):
    centres = rng.normal(0, 4, (k, dim))
    pts = np.concatenate([c + rng.normal(0, spread, (n_per, dim)) for c in centres])
    return pts[rng.permutation(len(pts))]


def test_matches_sklearn_given_same_initial_centres():
    rng = np.random.default_rng(0)
    batch = np.stack([_blobs(rng, spread=2.5) for _ in range(5)])  # overlapping blobs: several Lloyd steps
    k = 4
    init = batch[:, :k].copy()  # the first points: a poor start that k-means has to repair
    ours = batched_kmeans(torch.tensor(batch), k, seeds=[], init=torch.tensor(init), max_iter=300)
    iterations = []
    for b in range(len(batch)):
        ref = KMeans(k, init=init[b], n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(batch[b])
        iterations.append(ref.n_iter_)
        assert ours.labels[b].tolist() == ref.labels_.tolist()
        np.testing.assert_allclose(ours.centres[b].numpy(), ref.cluster_centers_, rtol=1e-9, atol=1e-9)
        assert float(ours.inertia[b]) == pytest.approx(ref.inertia_, rel=1e-9)
    assert min(iterations) >= 3, "the comparison must exercise Lloyd updates, not one assignment step"


def test_empty_cluster_reseeded_from_the_farthest_point():
    # two tight groups far apart; two initial centres both near group A and a third one far from everything:
    # the far centre owns no point after the first assignment and must be moved onto the farthest point.
    a = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    b = np.array([[10.0, 10.0], [10.1, 10.0], [10.0, 10.1], [9.9, 10.0]])
    x = torch.tensor(np.concatenate([a, b]))[None]
    init = torch.tensor([[[0.0, 0.05], [0.05, 0.0], [-50.0, -50.0]]])
    res = batched_kmeans(x, 3, seeds=[], init=init, max_iter=50)
    labels = res.labels[0].tolist()
    assert sorted(set(labels)) == [0, 1, 2], "every cluster id ends up with points"
    assert len(set(labels[3:])) == 1 and labels[3] not in labels[:3], "group B gets a cluster of its own"
    assert torch.isfinite(res.centres).all()


def test_cluster_that_cannot_be_filled_stays_empty():
    # 3 distinct points, k = 5: two ids necessarily end with no patch; nothing breaks and patterns are safe
    x = torch.tensor([[[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 4 + [[5.0, 0.0]] * 4])
    res = batched_kmeans(x, 5, seeds=[7], n_init=2)
    assert len(set(res.labels[0].tolist())) == 3
    assert float(res.inertia[0]) == pytest.approx(0.0, abs=1e-9)
    patterns, valid = cluster_patterns(res.labels, 5)
    assert valid.sum().item() == 3
    assert not patterns[~valid].any(), "an empty cluster removes nothing"


def test_identical_points_give_one_cluster_marked_invalid():
    x = torch.ones(1, 9, 4)
    res = batched_kmeans(x, 3, seeds=[0])
    assert res.labels.unique().numel() == 1
    patterns, valid = cluster_patterns(res.labels, 3)
    assert not valid.any() and not patterns.any(), "removing every patch is undefined: nothing is removed"


def test_seeded_runs_are_deterministic_and_seeds_matter():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(4, 30, 6)), dtype=torch.float32)  # no structure: init decides
    one = batched_kmeans(x, 5, seeds=[1, 2, 3, 4], n_init=1)
    two = batched_kmeans(x, 5, seeds=[1, 2, 3, 4], n_init=1)
    other = batched_kmeans(x, 5, seeds=[11, 12, 13, 14], n_init=1)
    assert torch.equal(one.labels, two.labels) and torch.equal(one.centres, two.centres)
    assert not torch.equal(one.labels, other.labels)


def test_each_row_is_independent_of_its_batch_mates():
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.normal(size=(3, 25, 4)), dtype=torch.float32)
    together = batched_kmeans(x, 4, seeds=[5, 6, 7], n_init=2)
    alone = batched_kmeans(x[1:2], 4, seeds=[6], n_init=2)
    assert torch.equal(together.labels[1], alone.labels[0])


def test_restarts_keep_the_lowest_inertia():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(2, 40, 3)))
    first_only = batched_kmeans(x, 6, seeds=[0, 0], n_init=1).inertia
    best = batched_kmeans(x, 6, seeds=[0, 0], n_init=4).inertia
    # restart 0 of n_init=4 draws the same k-means++ numbers as the single run; the kept one is never worse
    assert torch.all(best <= first_only + 1e-9)
    assert torch.any(best < first_only - 1e-6), "unstructured data: some restart finds a better optimum"


def test_kmeans_plusplus_picks_distinct_points_when_possible():
    x = torch.arange(10.0).view(1, 10, 1)
    u = torch.tensor([[0.05, 0.5, 0.99, 0.3]], dtype=torch.float64)
    centres = kmeans_plusplus(x, 4, u)[0, :, 0].tolist()
    assert len(set(centres)) == 4 and centres[0] == 0.0  # first draw: floor(0.05 * 10) = point 0


def test_sample_seed_depends_on_seed_and_id_only():
    assert sample_seed(0, "a/b.png") == sample_seed(0, "a/b.png")
    assert sample_seed(0, "a/b.png") != sample_seed(1, "a/b.png") != sample_seed(0, "a/c.png")
