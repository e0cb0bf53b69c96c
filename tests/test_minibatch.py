"""MiniBatchKMeans and minibatch_step: parity with scikit-learn, streaming, memory, errors."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import subprocess
import sys
import textwrap
import types
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import assert_identical, blobs, copies_found_on_the_cpu, on_the_cpu_paths_only
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.cluster import MiniBatchKMeans as SklearnMiniBatchKMeans
from sklearn.cluster._kmeans import _mini_batch_step
from sklearn.datasets import load_digits, make_blobs
from sklearn.utils.estimator_checks import check_estimator

from torchkmeans import KMeans
from torchkmeans.functional.distances import underflow_exponent, underflow_exponent_of
from torchkmeans.functional.minibatch import minibatch_step
from torchkmeans.minibatch import MiniBatchKMeans


def nearest(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d2 = ((X[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    return d2.argmin(1)


# ---------------------------------------------------------------- minibatch_step


def test_step_equals_sklearns_mini_batch_step():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    weights = rng.uniform(0.5, 2.0, size=300)
    centers = X[:7].copy()
    weight_sums = np.array([0.0, 3.0, 10.0, 0.0, 1.0, 50.0, 2.0])
    theirs_centers, theirs_sums = np.empty_like(centers), weight_sums.copy()
    theirs_inertia = _mini_batch_step(
        X, weights, centers, theirs_centers, theirs_sums, np.random.RandomState(0)
    )
    step = minibatch_step(
        torch.tensor(X),
        torch.tensor(centers),
        torch.tensor(weight_sums),
        sample_weight=torch.tensor(weights),
    )
    np.testing.assert_allclose(step.centroids.numpy(), theirs_centers, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(step.weight_sums.numpy(), theirs_sums, rtol=1e-12)
    assert float(step.inertia) == pytest.approx(theirs_inertia, rel=1e-12)
    np.testing.assert_array_equal(step.labels.numpy(), nearest(X, centers))


def test_step_reassigns_light_centres_as_sklearn_does():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 3))
    centers = np.vstack([X[:2], rng.normal(size=(6, 3)) + 100.0])  # 6 far, empty centres
    weight_sums = np.array([50.0, 40.0, 0.1, 0.2, 0.3, 0.4, 0.5, 30.0])
    step = minibatch_step(
        torch.tensor(X),
        torch.tensor(centers),
        torch.tensor(weight_sums),
        random_reassign=True,
        reassignment_ratio=0.05,
        generator=torch.Generator().manual_seed(0),
    )
    theirs_centers, theirs_sums = np.empty_like(centers), weight_sums.copy()
    _mini_batch_step(
        X,
        np.ones(8),
        centers,
        theirs_centers,
        theirs_sums,
        np.random.RandomState(0),
        random_reassign=True,
        reassignment_ratio=0.05,
    )
    # Centres 2..6 are light, but at most half the batch (4) move: the lightest
    # four, which take the smallest weight of the others (centre 6's 0.5).
    np.testing.assert_allclose(step.weight_sums.numpy(), theirs_sums)
    np.testing.assert_allclose(theirs_sums[2:7], 0.5)
    ours = step.centroids.numpy()
    np.testing.assert_allclose(ours[[0, 1, 6, 7]], theirs_centers[[0, 1, 6, 7]], rtol=1e-12)
    np.testing.assert_array_equal(ours[6:], centers[6:])
    index = [int(np.flatnonzero((X == row).all(1))[0]) for row in ours[2:6]]
    assert len(set(index)) == 4  # distinct rows of the batch


@pytest.mark.parametrize("seed", range(5))
def test_step_reseeds_onto_rows_far_from_their_centroid(seed):
    # 200 rows at one centroid and 4 far from it, all nearest to it: the 4
    # empty centroids move to the far rows (drawn by squared distance, as
    # k-means++), where uniform draws left them among the 200 (a 1 in 7e7
    # chance of all four far rows), the far rows' cluster without a centroid.
    g = torch.Generator().manual_seed(seed)
    near = torch.randn(200, 3, generator=g, dtype=torch.float64) * 0.01
    far = torch.tensor([[50.0, 0, 0], [0, 50, 0], [0, 0, 50], [50, 50, 0]], dtype=torch.float64)
    x = torch.cat([near, far])[torch.randperm(204, generator=g)]
    centroids = torch.cat([torch.zeros(1, 3), torch.full((4, 3), -100.0)]).double()
    step = minibatch_step(
        x,
        centroids,
        torch.tensor([100.0, 0, 0, 0, 0], dtype=torch.float64),
        random_reassign=True,
        generator=g,
    )
    reseeded = step.centroids[1:]
    assert sorted(reseeded.tolist()) == sorted(far.tolist())


@copies_found_on_the_cpu
@pytest.mark.parametrize("seed", range(5))
def test_step_reseeds_onto_rows_that_are_no_copies(seed):
    # A batch drawn with replacement holds copies of a row, and a row may be
    # a centre already: centres reseeded onto them would be copies, whose
    # rows all go to the first copy (the others stay empty, their reseeding
    # wasted). Of the rows drawn (min(k, n), here all), those that are
    # neither are taken first; copies when no other row is left.
    a, b, c = [0.0, 0.0], [10.0, 0.0], [10.0, 1.0]
    x = torch.tensor([a, a, b, a, a, c, a, a])
    # The first centre is a, and stays there (it takes only the rows a); the
    # last takes b and c; the others are far.
    far = [[100.0, 100.0 + i] for i in range(6)]
    centers = torch.tensor([a, *far, [10.0, 0.5]])
    heavy = torch.full((8,), 1000.0)
    for light, expected in (([1, 2], [b, c]), ([1, 2, 3], [a, b, c])):
        weight_sums = heavy.clone()
        weight_sums[light] = 0.0
        step = minibatch_step(
            x,
            centers,
            weight_sums,
            random_reassign=True,
            generator=torch.Generator().manual_seed(seed),
        )
        assert sorted(step.centroids[light].tolist()) == sorted(expected)


@pytest.mark.parametrize(("d", "differences"), [(2, True), (5, True), (40, True), (40, False)])
def test_step_labels_are_the_nearest_far_from_the_origin(d, differences):
    # Narrow rows and small batches take one kernel call scored from
    # differences, others nearest_centroids and a scatter (forced here for
    # wide rows by a zero bound on the differences' work): both give the nearest centre of
    # the batch's float32 rows 1e4 from the origin, and the same sums.
    rng = np.random.default_rng(d)
    X = (1e4 + rng.normal(size=(500, d))).astype(np.float32)
    centers = X[:6] + np.float32(0.01)
    weights = rng.uniform(0.5, 2.0, size=500).astype(np.float32)
    distances = importlib.import_module("torchkmeans.functional.distances")
    bound = distances._DIFFERENCES_MAX_WORK if differences else 0
    with mock.patch.object(distances, "_DIFFERENCES_MAX_WORK", bound):
        step = minibatch_step(
            torch.tensor(X),
            torch.tensor(centers),
            torch.zeros(6),
            sample_weight=torch.tensor(weights),
        )
    labels = step.labels.numpy()
    table = ((X.astype(np.float64)[:, None] - centers.astype(np.float64)[None]) ** 2).sum(-1)
    assert bool((table[np.arange(500), labels] <= table.min(1) + 1e-3).all())
    expected = np.stack(
        [np.average(X[labels == j], axis=0, weights=weights[labels == j]) for j in range(6)]
    )
    np.testing.assert_allclose(step.centroids.numpy(), expected, rtol=1e-6)


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_of_twice_the_labelling_work_is_one_pass_of_differences(monkeypatch, dtype):
    # 1,024 rows of 64 features, k=32 (2^21 multiply-adds, twice what
    # nearest_centroids scores from differences): the step's labels and sums
    # come from one kernel call, where the expansion, its label check and a
    # scatter took 1.2-3x the time (every row checked again for tight
    # clusters shared by near-copies of their centre); the same step.
    native = importlib.import_module("torchkmeans.functional._native")
    if not native.available():
        pytest.skip("the fused kernel is not built on this machine")
    calls = []
    kernel = native.nearest

    def counted(*args, **kwargs):
        calls.append((kwargs.get("differences", False), kwargs.get("totals") is not None))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(native, "nearest", counted)
    X, _ = make_blobs(1024, 64, centers=8, cluster_std=0.1, random_state=0)
    X = X.astype(dtype)
    rng = np.random.default_rng(0)
    centers = X[rng.choice(1024, 32, replace=False)] + dtype(0.01)
    weight_sums = rng.uniform(0.0, 50.0, size=32)
    step = minibatch_step(torch.tensor(X), torch.tensor(centers), torch.tensor(weight_sums))
    assert calls == [(True, True)]
    theirs_centers, theirs_sums = np.empty(centers.shape), weight_sums.copy()
    theirs_inertia = _mini_batch_step(
        X.astype(np.float64),
        np.ones(1024),
        centers.astype(np.float64),
        theirs_centers,
        theirs_sums,
        np.random.RandomState(0),
    )
    np.testing.assert_array_equal(step.labels.numpy(), nearest(X, centers))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(step.centroids.numpy(), theirs_centers, rtol=rtol)
    np.testing.assert_allclose(step.weight_sums.numpy(), theirs_sums, rtol=1e-12)
    assert float(step.inertia) == pytest.approx(theirs_inertia, rel=rtol)


@on_the_cpu_paths_only
@pytest.mark.parametrize(("d", "k"), [(64, 32), (128, 64)])
def test_partial_fit_on_near_copies_of_centres_scores_each_batch_once(monkeypatch, d, k):
    # Tight clusters far from the centres' mean, each shared by near-copies
    # of its centre: neither the expansion's rounding nor Elkan's bound tells
    # those centres apart, and the label check scored every row again against
    # every centre. The kernel's certain labels measure again only the few
    # centres within the scores' rounding of the lowest: each step makes two
    # kernel calls (its labels, then the batch's under the new centres), and
    # labels_ and inertia_ are still the exact ones of cluster_centers_.
    native = importlib.import_module("torchkmeans.functional._native")
    if not native.available():
        pytest.skip("the fused kernel is not built on this machine")
    calls = []
    kernel = native.nearest

    def counted(*args, **kwargs):
        calls.append(kwargs.get("certain", False))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(native, "nearest", counted)
    generator = torch.Generator().manual_seed(0)
    blobs = 2.0 * torch.randn(8, d, generator=generator)
    picks = torch.randint(0, 8, (5 * 1024,), generator=generator)
    X = (blobs[picks] + 0.1 * torch.randn(5 * 1024, d, generator=generator)).numpy()
    model = MiniBatchKMeans(k, batch_size=1024, random_state=0)
    for start in range(0, 5 * 1024, 1024):
        batch = X[start : start + 1024]
        calls.clear()
        model.partial_fit(batch)
        if start:  # the first call also seeds the centres
            assert len(calls) == 2 and calls[-1], calls
        centers = model.cluster_centers_
        np.testing.assert_array_equal(model.labels_, nearest(batch, centers))
        exact = ((batch.astype(np.float64) - centers[model.labels_].astype(np.float64)) ** 2).sum()
        assert model.inertia_ == pytest.approx(exact, rel=1e-6)


def test_step_batched_equals_one_problem_at_a_time():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 200, 4, generator=g, dtype=torch.float64)
    c = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    ws = torch.rand(3, 6, generator=g, dtype=torch.float64) * 10
    both = minibatch_step(x, c, ws)
    for i in range(3):
        one = minibatch_step(x[i], c[i], ws[i])
        torch.testing.assert_close(both.centroids[i], one.centroids)
        torch.testing.assert_close(both.weight_sums[i], one.weight_sums)
        torch.testing.assert_close(both.inertia[i], one.inertia)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_step_moves_centroids_by_sklearns_rule_and_keeps_those_without_rows(dtype, weighted):
    # Centroids 3 and 5 get no rows (5 only rows of weight 0): they stay
    # exactly, the others move to (c * W + sum) / (W + w), scikit-learn's
    # rule (computed here in float64).
    g = torch.Generator().manual_seed(0)
    c = torch.randn(6, 5, generator=g, dtype=torch.float64)
    c[3] += 100.0
    near = torch.tensor([0, 1, 2, 4, 5] * 8 + ([5] * 4 if weighted else []))
    x = c[near] + 0.1 * torch.randn(near.numel(), 5, generator=g, dtype=torch.float64)
    weights = None
    if weighted:
        weights = torch.rand(near.numel(), generator=g, dtype=torch.float64) + 0.5
        weights[near == 5] = 0.0
    ws = torch.tensor([0.0, 3.0, 10.0, 2.0, 1.0, 4.0], dtype=torch.float64)
    step = minibatch_step(x.to(dtype), c.to(dtype), ws.to(dtype), sample_weight=weights)
    assert torch.equal(step.labels, near)
    w = torch.ones(near.numel(), dtype=torch.float64) if weights is None else weights
    rows = x.to(dtype).double() * w[:, None]
    sums = torch.zeros(6, 5, dtype=torch.float64).index_add_(0, near, rows)
    counts = torch.zeros(6, dtype=torch.float64).index_add_(0, near, w)
    old = c.to(dtype).double()
    expected = (old * ws[:, None] + sums) / (ws + counts)[:, None]
    moved = counts > 0
    assert moved.tolist() == [True, True, True, False, True, not weighted]
    # float32 sums are float32 off the CPU kernel's path: a few units of rounding.
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        step.centroids[moved].double(), expected[moved], rtol=tolerance, atol=tolerance
    )
    assert torch.equal(step.centroids[~moved], c.to(dtype)[~moved])
    assert step.centroids.is_contiguous() and step.centroids.dtype == dtype
    torch.testing.assert_close(
        step.weight_sums.double(), ws + counts, rtol=tolerance, atol=tolerance
    )


@on_the_cpu_paths_only
@pytest.mark.parametrize("weighted", [False, True])
def test_a_cpu_step_writes_only_the_centroids_it_moves_or_reseeds(monkeypatch, weighted):
    # On the CPU a step chose between moved and kept centroids, and between
    # reseeded and other centroids, by a where over all k x d values (k=20,
    # d=50,000: 1.5 ms each, a fifth of a sparse step): the centroids
    # without rows are put back (none for unweighted rows: they sum to 0)
    # and the reseeded ones written, with the same results.
    import torchkmeans.functional.minibatch as minibatch_module

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64)
    c = torch.randn(12, 8, generator=g, dtype=torch.float64)
    c[8:] += 50.0  # no rows: light, reseeded
    ws = torch.full((12,), 40.0, dtype=torch.float64)
    ws[8:] = 0.1
    weights = torch.rand(300, generator=g, dtype=torch.float64) if weighted else None

    def step() -> minibatch_module.MiniBatchStep:
        return minibatch_step(
            x,
            c,
            ws,
            sample_weight=weights,
            random_reassign=True,
            generator=torch.Generator().manual_seed(0),
        )

    with monkeypatch.context() as patched:
        patched.setattr(minibatch_module, "_device", mock.Mock(wraps=minibatch_module._device))
        patched.setattr(minibatch_module._device, "on_host", lambda device: False)
        expected = step()  # the accelerator's wheres, the same rule
    wheres = []
    where = torch.where

    def recorded(*args, **kwargs):
        shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
        wheres.append(tuple(torch.broadcast_shapes(*shapes)))
        return where(*args, **kwargs)

    monkeypatch.setattr(minibatch_module.torch, "where", recorded)
    ours = step()
    monkeypatch.undo()
    assert (12, 8) not in wheres
    assert torch.equal(ours.centroids, expected.centroids)
    assert torch.equal(ours.weight_sums, expected.weight_sums)
    reseeded = [i for i in range(12) if not torch.equal(ours.centroids[i], c[i])]
    assert set(range(8, 12)) <= set(reseeded)
    for i in range(8, 12):
        assert (ours.centroids[i] == x).all(1).any()  # onto a row of the batch


def test_step_with_duplicate_points_has_no_nan():
    x = torch.ones(50, 3)
    step = minibatch_step(
        x,
        torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0]]),
        torch.zeros(3),
        random_reassign=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(step.centroids).all() and torch.isfinite(step.weight_sums).all()


def test_steps_read_the_largest_centre_entry_without_an_inf_norm(monkeypatch):
    # Every step on the CPU asks whether its squared distances underflow;
    # linalg.vector_norm(ord=inf) is not vectorised there (20x slower than
    # amax/amin: 120 us for 50 x 1000 centres, a quarter of a 64-row step).
    inf_norms = []
    vector_norm = torch.linalg.vector_norm

    def counting(x, ord=2, *args, **kwargs):
        if ord == float("inf"):
            inf_norms.append(tuple(x.shape))
        return vector_norm(x, ord, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", counting)
    X = blobs(n=400, d=20, k=4).astype(np.float32)
    km = MiniBatchKMeans(n_clusters=4, batch_size=32, max_iter=2, random_state=0).fit(X)
    assert km.n_steps_ > 1
    assert inf_norms == []
    # Still the largest magnitude, of a negative entry too.
    tiny = torch.tensor([[-3e-30, 1e-31], [2e-30, 0.0]])
    assert underflow_exponent_of(tiny, tiny) == underflow_exponent(3e-30, torch.float32) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reassignment_ratio": -0.5}, r"reassignment_ratio=-0.5 should be >= 0"),
        ({"metric": "manhattan"}, r"Expected metric to be 'euclidean' or 'cosine'"),
    ],
)
def test_step_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        minibatch_step(torch.zeros(4, 2), torch.zeros(2, 2), torch.zeros(2), **kwargs)


# ---------------------------------------------------------------- quality


@pytest.fixture(scope="module")
def big_blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=200_000, n_features=16, centers=20, random_state=0)
    return X.astype(np.float32)


def quality(X: np.ndarray, k: int, batch_size: int, max_iter: int) -> tuple[float, float]:
    """Median inertia ratio to scikit-learn's MiniBatchKMeans (same batch size and
    steps, 5 seeds) and median ratio to full KMeans from the same initial centres."""
    ours, theirs, to_full = [], [], []
    common = {"batch_size": batch_size, "max_iter": max_iter, "max_no_improvement": None}
    for seed in range(5):
        mb = MiniBatchKMeans(k, random_state=seed, **common).fit(X)
        sk = SklearnMiniBatchKMeans(k, random_state=seed, **common).fit(X)
        assert mb.n_steps_ == sk.n_steps_ == (max_iter * len(X)) // batch_size
        ours.append(mb.inertia_)
        theirs.append(sk.inertia_)
        start = X[np.random.default_rng(seed).choice(len(X), k, replace=False)]
        same = MiniBatchKMeans(k, init=start, random_state=seed, **common).fit(X)
        full = KMeans(k, init=start).fit(X)
        to_full.append(same.inertia_ / full.inertia_)
    return float(np.median(ours) / np.median(theirs)), float(np.median(to_full))


def test_digits_inertia_close_to_sklearn_and_to_full_kmeans():
    vs_sklearn, vs_full = quality(load_digits().data, 10, batch_size=256, max_iter=100)
    assert vs_sklearn <= 1.02
    assert vs_full <= 1.05


def test_200k_blobs_inertia_close_to_sklearn_and_to_full_kmeans(big_blobs):
    # max_iter=5 passes (976 steps) keeps the test short; the centres are found
    # long before that.
    vs_sklearn, vs_full = quality(big_blobs, 20, batch_size=1024, max_iter=5)
    assert vs_sklearn <= 1.02
    assert vs_full <= 1.05


def test_many_clusters_inertia_at_least_sklearns():
    # k=256 of 256-row batches: centres no row of the first batches reached
    # (k-means++ seeds of clusters the batch missed) were reseeded as empty,
    # scikit-learn's rule, onto rows of clusters that had a centre; the rows
    # of the clusters left without one went to one centre between them,
    # whose weight set the 1%-of-the-heaviest threshold so high that half
    # the batch's worth of centres moved at every reassignment. Mean over
    # 4 seeds: 0.98x scikit-learn's, 1.39x the blobs' own; now 0.81x, 1.15x.
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(256, 32))
    labels = rng.integers(0, 256, size=20_000)
    X = centres[labels] + rng.normal(size=(20_000, 32))
    own = ((X - centres[labels]) ** 2).sum()
    common = {"batch_size": 256, "max_iter": 1, "max_no_improvement": None, "tol": 0.0}
    ours = [MiniBatchKMeans(256, random_state=s, **common).fit(X).inertia_ for s in range(4)]
    sk = [SklearnMiniBatchKMeans(256, random_state=s, **common).fit(X).inertia_ for s in range(4)]
    assert np.mean(ours) <= np.mean(sk)
    assert np.mean(ours) <= 1.25 * own


# ---------------------------------------------------------------- estimator


def test_labels_are_the_nearest_fitted_centre_and_attributes():
    X = blobs(n=3000, d=4, k=5, seed=3)
    km = MiniBatchKMeans(5, batch_size=100, random_state=0).fit(X)
    np.testing.assert_array_equal(km.labels_, nearest(X, km.cluster_centers_))
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert km.inertia_ == pytest.approx(-km.score(X), rel=1e-9)
    assert km.n_features_in_ == 4 and km.counts_.shape == (5,)
    assert km.n_iter_ == int(np.ceil(km.n_steps_ * 100 / 3000))
    assert 1 <= km.n_steps_ <= (100 * 3000) // 100
    np.testing.assert_allclose(
        km.transform(X), np.sqrt(((X[:, None] - km.cluster_centers_[None]) ** 2).sum(-1))
    )


def test_kmeans_plusplus_seeds_float32_data_far_from_the_origin():
    # 1e5 + noise in float32: the squared norms of the raw rows (~6e10) round
    # by ~4e3, far beyond the distances between blobs; seeded on raw rows,
    # two of these ten fits merged two blobs (inertia 8.6x and 2.4x).
    for seed in (0, 1):
        X = blobs(n=300, d=6, k=3, seed=seed, spread=5.0)
        reference = KMeans(3, random_state=0).fit(X).inertia_
        far = (X + 1e5).astype(np.float32)
        for random_state in range(5):
            km = MiniBatchKMeans(3, random_state=random_state).fit(far)
            assert km.inertia_ < 1.05 * reference


def test_seeding_sees_every_row_when_init_size_covers_the_data():
    # scikit-learn seeds on all of X when init_size >= n_samples; n draws with
    # replacement held about 63% of the rows, fewer distinct ones than k=40 of
    # 50, and k-means++ seeded duplicate centres (k near n: 15% worse inertia).
    X = np.random.default_rng(0).normal(size=(50, 3))
    seen = []

    def init(rows, n_clusters, generator):
        seen.append(rows.clone())
        return rows[:n_clusters]

    MiniBatchKMeans(40, init=init, n_init=1, random_state=0).fit(X)
    np.testing.assert_array_equal(np.unique(seen[0].numpy(), axis=0), np.unique(X, axis=0))
    # Over 30 seeds: the mean of 10 is off by 5% (a seed's inertia spans 2-6).
    inertia = [MiniBatchKMeans(40, random_state=s).fit(X).inertia_ for s in range(30)]
    sk = [SklearnMiniBatchKMeans(40, random_state=s).fit(X).inertia_ for s in range(30)]
    assert np.mean(inertia) <= 1.1 * np.mean(sk)


def test_partial_fit_equals_sklearns_from_the_same_centres():
    # No randomness left: given centres and no reseeding.
    X = blobs(n=1200, d=5, k=4, seed=9)
    start = X[:4].copy()
    ours = MiniBatchKMeans(4, init=start, reassignment_ratio=0.0)
    theirs = SklearnMiniBatchKMeans(4, init=start, n_init=1, reassignment_ratio=0.0)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=len(X))
    for rows in np.array_split(np.arange(len(X)), 6):
        ours.partial_fit(X[rows], sample_weight=weights[rows])
        theirs.partial_fit(X[rows], sample_weight=weights[rows])
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10)
    np.testing.assert_allclose(ours.counts_, theirs._counts, rtol=1e-12)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    assert ours.n_steps_ == theirs.n_steps_ == 6


def test_fit_then_partial_fit_goes_on_and_pickles():
    X = blobs(n=1000, d=3, k=3, seed=4)
    km = MiniBatchKMeans(3, batch_size=100, random_state=0).fit(X)
    steps, counts = km.n_steps_, km.counts_.sum()
    copy = pickle.loads(pickle.dumps(km))
    km.partial_fit(X[:100])
    copy.partial_fit(X[:100])
    assert km.n_steps_ == steps + 1 and km.counts_.sum() == pytest.approx(counts + 100)
    np.testing.assert_array_equal(km.cluster_centers_, copy.cluster_centers_)


def test_partial_fit_refuses_float64_rows_beyond_the_float32_centres_range():
    """A float32 model cast a later float64 batch after checking it: values
    beyond float32's range became infinities, and cluster_centers_ NaN."""
    X = blobs(n=300, d=3, k=3, seed=4).astype(np.float32)
    km = MiniBatchKMeans(3, random_state=0).partial_fit(X)
    centers, counts = km.cluster_centers_.copy(), km.counts_.copy()
    huge = np.full((50, 3), 1e39)
    with pytest.raises(ValueError, match=r"Input X holds values beyond the range of float32"):
        km.partial_fit(huge)
    np.testing.assert_array_equal(km.cluster_centers_, centers)
    np.testing.assert_array_equal(km.counts_, counts)
    km.partial_fit(X[:100].astype(np.float64))  # in range: accepted, as before
    assert np.isfinite(km.cluster_centers_).all()


def test_assigned_cluster_centers_are_used_by_predict_and_partial_fit():
    X = blobs(n=1000, d=3, k=3, seed=4)
    km = MiniBatchKMeans(3, batch_size=100, random_state=0).fit(X)
    new = X[[0, 500, 999]].copy()
    km.cluster_centers_ = new
    np.testing.assert_array_equal(km.cluster_centers_, new)
    d2 = ((X[:, None, :] - new[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.predict(X), d2.argmin(1))
    assert km.score(X) == pytest.approx(-d2.min(1).sum())
    # The next step starts from the assigned centres and the fitted counts.
    counts = torch.tensor(km.counts_)
    km.reassignment_ratio = 0.0
    expected = minibatch_step(torch.tensor(X[:100]), torch.tensor(new), counts)
    km.partial_fit(X[:100])
    np.testing.assert_allclose(km.cluster_centers_, expected.centroids.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"Expected cluster_centers_ to be of shape \(3, 3\)"):
        km.cluster_centers_ = new[:2]


def test_estimator_pickled_with_a_plain_cluster_centers_attribute_still_works():
    """Before cluster_centers_ was a property it sat in the instance's dict; a
    pickle from then loads, predicts with its centres and refits."""
    X = blobs(n=500, d=2, k=3, seed=1)
    km = MiniBatchKMeans(3, batch_size=100, random_state=0).fit(X)
    km.__dict__["cluster_centers_"] = km.cluster_centers_
    old = pickle.loads(pickle.dumps(km))
    np.testing.assert_array_equal(old.predict(X), km.predict(X))
    old.fit(X)
    assert "cluster_centers_" not in vars(old)
    np.testing.assert_array_equal(old.cluster_centers_, km.cluster_centers_)


def test_half_precision_keeps_float32_centres():
    X = torch.tensor(blobs(n=2000, d=4, k=3, seed=6), dtype=torch.float16)
    km = MiniBatchKMeans(3, batch_size=100, random_state=0).fit(X)
    assert km.cluster_centers_.dtype == torch.float32
    ref = MiniBatchKMeans(3, batch_size=100, random_state=0).fit(X.float())
    assert km.inertia_ == pytest.approx(ref.inertia_, rel=1e-2)


def test_get_params_follows_its_own_signature():
    names = sorted(inspect.signature(MiniBatchKMeans.__init__).parameters)
    names.remove("self")
    assert sorted(MiniBatchKMeans().get_params()) == names
    assert "batch_size" in names and "reassignment_ratio" in names
    assert repr(MiniBatchKMeans(batch_size=64)) == "MiniBatchKMeans(batch_size=64)"


def test_torch_in_torch_out_numpy_in_numpy_out():
    X = blobs(n=500, d=3, k=3, seed=1).astype(np.float32)
    t = MiniBatchKMeans(3, batch_size=50, random_state=0).fit(torch.from_numpy(X))
    n = MiniBatchKMeans(3, batch_size=50, random_state=0).fit(X)
    assert isinstance(t.cluster_centers_, torch.Tensor) and isinstance(t.labels_, torch.Tensor)
    assert isinstance(n.cluster_centers_, np.ndarray) and isinstance(n.predict(X), np.ndarray)
    np.testing.assert_array_equal(t.cluster_centers_.numpy(), n.cluster_centers_)


def test_duplicate_points_give_no_nan():
    X = np.vstack([np.zeros((40, 2)), np.ones((40, 2))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = MiniBatchKMeans(4, batch_size=16, random_state=0).fit(X)
    assert np.isfinite(km.cluster_centers_).all() and np.isfinite(km.inertia_)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-12)


def test_compute_labels_false_and_early_stopping():
    X = blobs(n=4000, d=3, k=4, seed=5)
    km = MiniBatchKMeans(4, batch_size=200, compute_labels=False, random_state=0).fit(X)
    assert not hasattr(km, "labels_") and km.inertia_ > 0
    assert km.n_steps_ < (100 * 4000) // 200  # max_no_improvement stopped it
    np.testing.assert_array_equal(km.fit_predict(X), km.predict(X))
    tol = MiniBatchKMeans(4, batch_size=200, tol=1e-2, max_no_improvement=None).fit(X)
    assert tol.n_steps_ < (100 * 4000) // 200


@pytest.mark.parametrize("memory_budget", [None, 4096])
def test_tol_is_scaled_by_the_variance_of_data_far_from_the_origin(memory_budget):
    """Sums about a shift, in blocks of rows: E[x^2] - E[x]^2 about the origin
    was 5% off at 1e8 (and 5x at 1e9); the data stays as it was."""
    from torchkmeans.minibatch import _Source

    X = make_blobs(2000, 5, centers=6, random_state=1)[0] + 1e8
    before = X.copy()
    km = MiniBatchKMeans(6, tol=1.0, memory_budget=memory_budget)
    tol = km._scaled_tol(_Source(km, X))
    assert tol == pytest.approx(X.var(axis=0).mean(), rel=1e-9)
    np.testing.assert_array_equal(X, before)


def test_compute_labels_false_after_a_single_step_estimates_the_inertia():
    """One step has no smoothed inertia yet: that batch's, not 0 (a perfect fit)."""
    X = blobs(n=200, d=3, k=4, seed=5)
    km = MiniBatchKMeans(4, batch_size=200, max_iter=1, compute_labels=False, random_state=0)
    km.fit(X)
    assert km.n_steps_ == 1
    best = ((X[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1).min(1).sum()
    assert 0.5 * best < km.inertia_ < 2 * best


@pytest.mark.parametrize("tol", [0.0, 1e-3])
def test_deferred_checks_stop_at_the_same_step_as_checking_every_step(monkeypatch, tol):
    """On a GPU the early-stopping statistics are read every 10 steps and
    replayed; a stop inside a window rolls back to that step. Run on the CPU."""
    import torchkmeans.minibatch as minibatch_module

    X = blobs(n=4000, d=3, k=4, seed=5)
    params = dict(batch_size=200, reassignment_ratio=0.0, random_state=0, tol=tol)
    every_step = MiniBatchKMeans(4, max_no_improvement=3, **params).fit(X)
    monkeypatch.setattr(minibatch_module, "_steps_between_checks", lambda device: 7)
    deferred = MiniBatchKMeans(4, max_no_improvement=3, **params).fit(X)
    assert every_step.n_steps_ < (100 * 4000) // 200
    assert every_step.n_steps_ % 7 != 0  # the stop falls inside a window
    assert deferred.n_steps_ == every_step.n_steps_
    np.testing.assert_array_equal(deferred.cluster_centers_, every_step.cluster_centers_)
    np.testing.assert_array_equal(deferred.counts_, every_step.counts_)
    assert deferred.inertia_ == every_step.inertia_


def test_deferred_reassignment_decides_on_the_device(monkeypatch):
    import torchkmeans.minibatch as minibatch_module

    X = load_digits().data
    host = MiniBatchKMeans(10, batch_size=256, random_state=0).fit(X)
    monkeypatch.setattr(minibatch_module, "_steps_between_checks", lambda device: 10)
    deferred = MiniBatchKMeans(10, batch_size=256, random_state=0).fit(X)
    assert np.isfinite(deferred.cluster_centers_).all()
    assert deferred.inertia_ <= 1.05 * host.inertia_
    assert len(np.unique(deferred.labels_)) == 10


@pytest.mark.parametrize("tol", [0.0, 1e-3])
def test_fit_partial_fit_and_predict_on_the_device(device, tol):
    """On a GPU: deferred early-stopping checks and reassignment decided on the device."""
    X = torch.tensor(blobs(n=6000, d=8, k=6, seed=11), dtype=torch.float32, device=device)
    km = MiniBatchKMeans(6, batch_size=256, random_state=0, tol=tol, max_no_improvement=5)
    km.fit(X)
    centers = km.cluster_centers_
    assert centers.device.type == km.labels_.device.type == device
    assert bool(torch.isfinite(centers).all())
    assert km.n_steps_ < 100 * 6000 // 256  # stopped early
    d2 = torch.cdist(X.double(), centers.double()).square().cpu()
    best = d2.min(1).values
    chosen = d2.gather(1, km.labels_.cpu().view(-1, 1)).squeeze(1)
    assert bool((chosen <= best + 1e-4 * (1 + best)).all())
    assert km.inertia_ == pytest.approx(float(best.sum()), rel=1e-4)
    full = SklearnKMeans(6, n_init=3, random_state=0).fit(X.cpu().numpy())
    assert km.inertia_ <= 1.05 * full.inertia_
    steps = km.n_steps_
    km.partial_fit(X[:256])
    assert km.n_steps_ == steps + 1 and km.cluster_centers_.device.type == device
    predicted = km.predict(X)
    assert predicted.device.type == device
    d2 = torch.cdist(X.double(), km.cluster_centers_.double()).square().cpu()
    chosen = d2.gather(1, predicted.cpu().view(-1, 1)).squeeze(1)
    assert bool((chosen <= d2.min(1).values * (1 + 1e-4) + 1e-4).all())


def test_fewer_distinct_clusters_than_centres_is_a_convergence_warning():
    from torchkmeans.exceptions import ConvergenceWarning

    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]]), 50, axis=0)
    with pytest.warns(
        ConvergenceWarning,
        match=r"Number of distinct clusters \(3\) found smaller than n_clusters \(5\): some "
        r"centres are the nearest to no point",
    ):
        MiniBatchKMeans(5, batch_size=30, random_state=0).fit(X)


def test_sample_weight_draws_the_batches():
    X = np.array([[0.0], [0.1], [10.0], [10.1]])
    weights = np.array([1.0, 1.0, 0.0, 0.0])
    km = MiniBatchKMeans(1, batch_size=4, random_state=0, max_iter=20).fit(X, sample_weight=weights)
    assert km.cluster_centers_[0, 0] < 0.2  # the zero-weight points were never drawn


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_equal_weights_fit_as_no_weights(init):
    """scikit-learn's test_unit_weights_vs_no_weights and test_scaled_weights: equal
    weights draw the same batches and seeds as none, and only scale the inertia."""
    X, _ = make_blobs(300, n_features=3, centers=5, random_state=0)
    km = MiniBatchKMeans(5, init=init, n_init=1, batch_size=64, random_state=1)
    none = km.fit(X).cluster_centers_, km.labels_, km.inertia_
    for scale in (1.0, 0.5):
        km.fit(X, sample_weight=np.full(300, scale))
        np.testing.assert_allclose(km.cluster_centers_, none[0], rtol=1e-12)
        np.testing.assert_array_equal(km.labels_, none[1])
        assert km.inertia_ == pytest.approx(scale * none[2], rel=1e-12)


def test_sample_weight_draws_the_batches_of_more_than_2_to_the_24_rows():
    """torch.multinomial refuses more than 2**24 categories; rows of weight 0 are never drawn."""
    n = 2**24 + 2
    X = np.zeros((n, 1), dtype=np.float32)
    X[-1] = 5.0
    weights = np.zeros(n, dtype=np.float32)
    weights[-1] = 1.0
    km = MiniBatchKMeans(
        1, batch_size=8, init_size=8, max_no_improvement=1, compute_labels=False, random_state=0
    ).fit(X, sample_weight=weights)
    assert km.cluster_centers_.tolist() == [[5.0]]


def test_cosine_metric_gives_unit_centres():
    X = blobs(n=1000, d=5, k=3, seed=2)
    km = MiniBatchKMeans(3, batch_size=100, metric="cosine", random_state=0).fit(X)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, rtol=1e-6)


def test_cosine_tol_does_not_depend_on_the_scale_of_the_data():
    """The shift of unit centres is measured against the variance of unit rows."""
    X = make_blobs(2000, 5, centers=6, random_state=1)[0]
    params = dict(batch_size=100, metric="cosine", tol=1e-3, max_no_improvement=None)
    steps = {
        scale: MiniBatchKMeans(6, random_state=0, **params).fit(X * scale).n_steps_
        for scale in (1e-3, 1.0, 1e3)
    }
    assert steps[1e-3] == steps[1.0] == steps[1e3] > 2


def chunks_of(X: np.ndarray, size: int):
    return [X[i : i + size] for i in range(0, len(X), size)]


def test_partial_fit_over_chunks_equals_fit_on_a_generator_and_a_dataloader():
    X = blobs(n=2000, d=4, k=5, seed=7).astype(np.float32)
    parts = chunks_of(X, 256)
    step_by_step = MiniBatchKMeans(5, random_state=0)
    for part in parts:
        step_by_step.partial_fit(part)
    from_generator = MiniBatchKMeans(5, random_state=0).fit(p for p in parts)
    np.testing.assert_array_equal(step_by_step.cluster_centers_, from_generator.cluster_centers_)
    np.testing.assert_array_equal(step_by_step.counts_, from_generator.counts_)
    assert step_by_step.n_steps_ == from_generator.n_steps_ == len(parts)
    np.testing.assert_array_equal(step_by_step.labels_, from_generator.labels_)  # last batch

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(X)), batch_size=256, shuffle=False
    )
    from_loader = MiniBatchKMeans(5, random_state=0).fit(loader)  # yields [tensor] lists
    np.testing.assert_array_equal(
        from_loader.cluster_centers_.numpy(), step_by_step.cluster_centers_
    )
    # partial_fit on an iterable goes on from the fitted state, one step per batch.
    again = MiniBatchKMeans(5, random_state=0).partial_fit(iter(parts[:3]))
    again.partial_fit(iter(parts[3:]))
    np.testing.assert_array_equal(again.cluster_centers_, step_by_step.cluster_centers_)
    # fit() starts over.
    from_generator.fit(iter(parts))
    np.testing.assert_array_equal(from_generator.cluster_centers_, step_by_step.cluster_centers_)


def test_partial_fit_on_each_dataloader_batch_equals_fit_on_the_loader():
    # for batch in loader: partial_fit(batch) over a TensorDataset: [x] raised
    # "got shape (1, 256, 4)", [x, y] an inhomogeneous-array error.
    X = torch.from_numpy(blobs(n=2000, d=4, k=5, seed=7).astype(np.float32))
    y = torch.arange(len(X))
    for dataset in (torch.utils.data.TensorDataset(X), torch.utils.data.TensorDataset(X, y)):
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False)
        step_by_step = MiniBatchKMeans(5, random_state=0)
        for batch in loader:
            step_by_step.partial_fit(batch)
        from_loader = MiniBatchKMeans(5, random_state=0).fit(loader)
        torch.testing.assert_close(
            step_by_step.cluster_centers_, from_loader.cluster_centers_, rtol=0, atol=0
        )
        assert step_by_step.n_steps_ == len(loader)


def test_fit_on_a_stream_skips_empty_batches_before_the_first_step():
    # A filtered DataLoader may yield no rows at first: an empty batch later in
    # the stream is already a step that moves nothing, an empty first one raised.
    X = blobs(n=2000, d=4, k=5, seed=7).astype(np.float32)
    parts = chunks_of(X, 256)
    expected = MiniBatchKMeans(5, random_state=0).fit(iter(parts))
    empty = X[:0]
    fitted = MiniBatchKMeans(5, random_state=0).fit(iter([empty, empty, *parts]))
    np.testing.assert_array_equal(fitted.cluster_centers_, expected.cluster_centers_)
    assert fitted.n_steps_ == expected.n_steps_ == len(parts)
    stepped = MiniBatchKMeans(5, random_state=0).partial_fit(iter([torch.from_numpy(empty)]))
    assert not hasattr(stepped, "cluster_centers_")
    stepped.partial_fit(iter([torch.from_numpy(p) for p in parts]))
    np.testing.assert_array_equal(stepped.cluster_centers_.numpy(), expected.cluster_centers_)
    with pytest.raises(ValueError, match=r"Expected X to yield at least one batch, got none\."):
        MiniBatchKMeans(5).fit(iter([empty]))


def test_fit_on_a_memmap_equals_fit_on_the_array(tmp_path):
    X = blobs(n=5000, d=6, k=4, seed=8).astype(np.float32)
    mm = np.memmap(tmp_path / "x.dat", dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.memmap(tmp_path / "x.dat", dtype=np.float32, mode="r", shape=X.shape)
    a = MiniBatchKMeans(4, batch_size=128, random_state=0, tol=1e-4).fit(ro)
    b = MiniBatchKMeans(4, batch_size=128, random_state=0, tol=1e-4).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-9)
    out = a.predict(ro)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, b.predict(X))
    # float32 |x|^2 - 2x.c + |c|^2 rounds differently with the data's alignment.
    np.testing.assert_allclose(a.transform(ro), b.transform(X), rtol=1e-4, atol=1e-2)
    assert a.score(ro) == pytest.approx(b.score(X), rel=1e-9)


@pytest.mark.parametrize("accelerator", [False, True], ids=["host", "accelerator"])
def test_labels_of_half_precision_data_are_computed_block_by_block(
    request, monkeypatch, accelerator
):
    # The final labelling had converted the whole float16 tensor to float32
    # at once (twice the data's memory); blocks follow memory_budget.
    if accelerator:
        request.getfixturevalue("accelerator_paths")
    seen = []
    original = MiniBatchKMeans._assign_rows

    def spy(self, x, centers, exact=True):
        seen.append(x.shape[0])
        return original(self, x, centers, exact)

    monkeypatch.setattr(MiniBatchKMeans, "_assign_rows", spy)
    x = torch.tensor(blobs(n=5000, d=4, k=3, seed=2)).half()
    km = MiniBatchKMeans(3, batch_size=100, random_state=0, memory_budget=16_000).fit(x)
    assert 1 < max(seen) <= 1000
    d2 = ((x.double()[:, None] - km.cluster_centers_.double()) ** 2).sum(-1)
    assert torch.equal(km.labels_, d2.argmin(1))
    assert km.inertia_ == pytest.approx(float(d2.min(1).values.sum()), rel=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fit_on_a_memmap_in_half_precision_rounds_its_rows(tmp_path, dtype):
    # dtype="float16": the array is rounded to float16 whole, and the memmap's
    # rows had been read in float32 unrounded (inertia_ 8034.29 against 8034.27).
    X = (blobs(n=2000, d=4, k=4, seed=3) * 3.3).astype(np.float32)
    rounded = torch.from_numpy(X).to(getattr(torch, dtype)).float().numpy()
    for name, data in (("x", X), ("rounded", rounded)):
        np.save(tmp_path / f"{name}.npy", data)
    ro, ro_rounded = (np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("x", "rounded"))
    a = MiniBatchKMeans(4, random_state=0, dtype=dtype).fit(ro)
    b = MiniBatchKMeans(4, random_state=0, dtype=dtype).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-9)
    # KMeans streams a memmap (its sums in another order than in memory):
    # the same fit as on a memmap of the rounded rows.
    a = KMeans(4, init=X[:4], dtype=dtype).fit(ro)
    b = KMeans(4, init=X[:4]).fit(ro_rounded)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_


MEMMAP_SCRIPT = """
import json, sys, threading, time
import numpy as np, torch
from torchkmeans import KMeans
from torchkmeans.minibatch import MiniBatchKMeans

torch.set_num_threads(2)
path, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

def peak_anon_growth(work):
    # Anonymous memory only: the memmap's pages are file-backed and count in
    # VmHWM/ru_maxrss as soon as they are read, however little is kept.
    base, peak, done = status("RssAnon"), [0], [False]
    def poll():
        while not done[0]:
            peak[0] = max(peak[0], status("RssAnon") - base)
            time.sleep(0.001)
    thread = threading.Thread(target=poll)
    thread.start()
    try:
        result = work()
    finally:
        done[0] = True
        thread.join()
    return peak[0], result

X = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
MiniBatchKMeans(8, batch_size=1024, max_iter=1, random_state=0).fit(np.array(X[:4096]))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
hwm = status("VmHWM")
start = time.perf_counter()
km = MiniBatchKMeans(8, batch_size=1024, max_iter=1, random_state=0)
fit_growth, _ = peak_anon_growth(lambda: km.fit(X))
predict_growth, labels = peak_anon_growth(lambda: km.predict(X))
seconds = time.perf_counter() - start
# KMeans streams the memmap through every Lloyd iteration.
full = KMeans(8, max_iter=2, random_state=0)
kmeans_growth, _ = peak_anon_growth(lambda: full.fit(X))
hwm_growth = status("VmHWM") - hwm
# Control: the probe sees a whole copy of the data.
control, _ = peak_anon_growth(lambda: float(np.array(X).sum()))
print(json.dumps({
    "fit": fit_growth, "predict": predict_growth, "vmhwm": hwm_growth, "control": control,
    "kmeans": kmeans_growth, "kmeans_n_iter": full.n_iter_,
    "kmeans_labels": int(full.labels_.shape[0]), "kmeans_inertia": full.inertia_,
    "n_steps": km.n_steps_, "labels": int(labels.shape[0]), "seconds": seconds,
    "same_labels": bool((labels == km.labels_).all()),
}))
"""


@pytest.mark.slow
def test_memmap_of_512mb_fits_with_memory_far_below_its_size(tmp_path):
    n, d = 2_000_000, 64
    path = tmp_path / "big.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, d))
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(8, d)).astype(np.float32)
    for start in range(0, n, 250_000):
        rows = min(250_000, n - start)
        block = rng.standard_normal((rows, d), dtype=np.float32)
        block += centres[rng.integers(0, 8, size=rows)]
        mm[start : start + rows] = block
    mm.flush()
    del mm
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMMAP_SCRIPT), str(path), str(n), str(d)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)
    file_bytes = n * d * 4
    assert result["labels"] == n and result["same_labels"]
    assert result["control"] > 0.9 * file_bytes  # the probe would see a full copy
    # What stays is one chunk's worth of work plus per-row outputs: 16 MB of
    # labels (KMeans: 32 MB, labels of two iterations), 8 MB of distances and
    # up to three 8 MB chunks (read, prepared, prefetched). The sampled peak
    # measured 53-92 MB over repeated runs (a quarter of the file at most).
    bound = file_bytes / 4
    assert result["fit"] < bound, result
    assert result["predict"] < bound, result
    assert result["kmeans_n_iter"] == 2 and result["kmeans_labels"] == n
    assert result["kmeans"] < bound, result


def test_verbose_without_tqdm_writes_to_stderr(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X = blobs(n=1000, d=2, k=3, seed=0)
    MiniBatchKMeans(3, batch_size=50, verbose=True, random_state=0).fit(X)
    err = capsys.readouterr().err
    assert "[MiniBatchKMeans] step 1/" in err and "ewa inertia" in err


@pytest.mark.parametrize("tqdm_installed", [False, True])
def test_verbose_says_where_and_why_the_fit_stopped(capsys, monkeypatch, tqdm_installed):
    """As scikit-learn's "Converged (...) at step": a tqdm bar is cleared at the
    end, and without tqdm the last step line did not say why it was the last."""
    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X = blobs(n=1000, d=2, k=3, seed=0)
    km = MiniBatchKMeans(3, batch_size=50, verbose=True, random_state=0).fit(X)
    assert km.n_steps_ < 2000
    err = capsys.readouterr().err
    assert (
        f"[MiniBatchKMeans] converged at step {km.n_steps_}/2000: no improvement of the "
        "ewa inertia in 10 steps"
    ) in err
    km = MiniBatchKMeans(3, batch_size=50, verbose=True, random_state=0, tol=1e-2).fit(X)
    err = capsys.readouterr().err
    assert f"converged at step {km.n_steps_}/2000: centre shift below tol" in err
    MiniBatchKMeans(3, batch_size=500, max_iter=1, verbose=True, random_state=0).fit(X)
    assert "converged" not in capsys.readouterr().err  # ran all its steps


@pytest.fixture
def fake_tqdm(monkeypatch):
    """A stand-in tqdm.auto.tqdm; yields the calls its bars receive."""
    calls = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            calls.append(("total", total))

        def update(self, n):
            calls.append(("update", n))

        def set_postfix(self, **kwargs):
            calls.append(("postfix", kwargs))

        def close(self):
            calls.append(("close", None))

    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = FakeBar
    monkeypatch.setitem(sys.modules, "tqdm", types.ModuleType("tqdm"))
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    return calls


def test_verbose_uses_tqdm_when_present(fake_tqdm):
    calls = fake_tqdm
    X = blobs(n=1000, d=2, k=3, seed=0)
    km = MiniBatchKMeans(3, batch_size=50, verbose=True, random_state=0).fit(X)
    assert calls[0] == ("total", (100 * 1000) // 50)
    assert sum(1 for c in calls if c[0] == "update") == km.n_steps_
    assert any(c[0] == "postfix" for c in calls) and calls[-1][0] == "close"


def test_verbose_reports_the_steps_of_an_iterable_without_tqdm(capsys, monkeypatch):
    # fit on a DataLoader or generator is the long work verbose is for.
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X = blobs(n=1000, d=2, k=3, seed=0)
    batches = (X[i : i + 100] for i in range(0, 1000, 100))
    km = MiniBatchKMeans(3, verbose=True, random_state=0).fit(batches)
    err = capsys.readouterr().err
    assert "[MiniBatchKMeans] step 1: mean batch inertia" in err
    assert f"[MiniBatchKMeans] {km.n_steps_} steps" in err
    km.partial_fit(iter([X[:100], X[100:200]]))
    assert "[MiniBatchKMeans] step 1: mean batch inertia" in capsys.readouterr().err


def test_verbose_shows_a_tqdm_bar_over_the_batches(fake_tqdm):
    calls = fake_tqdm
    X = blobs(n=1000, d=2, k=3, seed=0)
    batches = torch.utils.data.DataLoader(torch.as_tensor(X), batch_size=100)
    km = MiniBatchKMeans(3, verbose=True, random_state=0).fit(batches)
    assert calls[0] == ("total", 10)  # a DataLoader has a length; a generator gives None
    assert sum(1 for c in calls if c[0] == "update") == km.n_steps_ == 10
    assert any(c[0] == "postfix" for c in calls) and calls[-1][0] == "close"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size=0 should be >= 1\."),
        ({"batch_size": 2.5}, TypeError, r"Expected batch_size to be an int, got 2\.5\."),
        (
            {"reassignment_ratio": -0.1},
            ValueError,
            r"reassignment_ratio=-0\.1 should be a finite number >= 0\.",
        ),
        ({"max_no_improvement": -1}, ValueError, r"max_no_improvement=-1 should be >= 0\."),
        ({"init_size": 0}, ValueError, r"init_size=0 should be >= 1\."),
        ({"max_iter": 0}, ValueError, r"max_iter=0 should be >= 1\."),
        ({"n_init": 0}, ValueError, r"n_init=0 should be >= 1\."),
        ({"tol": -1.0}, ValueError, r"tol=-1\.0 should be a finite number >= 0\."),
        ({"compute_labels": None}, TypeError, r"compute_labels to be a bool, got NoneType"),
        ({"verbose": "yes"}, TypeError, r"Expected verbose to be a bool or an int"),
        ({"init": "kmeans"}, ValueError, r"Expected init to be 'k-means\+\+', 'random'"),
        ({"metric": "l1"}, ValueError, r"Expected metric to be 'euclidean' or 'cosine'"),
        ({"n_clusters": 50}, ValueError, r"n_samples=20 should be >= n_clusters=50\."),
        ({"init": np.zeros((3, 2))}, ValueError, r"Expected init to be of shape \(2, 3\)"),
        ({"init": np.zeros(6)}, ValueError, r"init to be 2-D of shape \(2, 3\), got shape \(6,\)"),
        # The shape expected of centres, not of X's rows (n_samples, n_features).
        (
            {"init": lambda X, k, g: None},
            TypeError,
            r"Expected init to be an array-like or tensor of shape \(2, 3\), got None\.",
        ),
    ],
)
def test_parameter_errors(params, error, match):
    X = np.random.default_rng(0).normal(size=(20, 3))
    params = {"n_clusters": 2, **params}
    with pytest.raises(error, match=match):
        MiniBatchKMeans(**params).fit(X)
    with pytest.raises(error, match=match):
        MiniBatchKMeans(**params).partial_fit(X)


def test_input_errors(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 2))
    km = MiniBatchKMeans(2, batch_size=5, random_state=0).partial_fit(X)
    with pytest.raises(ValueError, match=r"X has 3 features, but MiniBatchKMeans is expecting 2"):
        km.partial_fit(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"X has 3 features, but MiniBatchKMeans is expecting 2"):
        km.predict(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"Expected sample_weight=None when X is an iterable"):
        MiniBatchKMeans(2).fit(iter([X]), sample_weight=np.ones(20))
    with pytest.raises(ValueError, match=r"Expected X to yield at least one batch, got none\."):
        MiniBatchKMeans(2).fit(iter([]))
    with pytest.raises(TypeError, match=r"Expected X to be an array-like or tensor for fit_p"):
        MiniBatchKMeans(2).fit_predict(iter([X]))
    # fit_transform fitted on the batches, then failed to read the spent
    # generator as an object array ("float() argument must be ... not 'generator'").
    fresh = MiniBatchKMeans(2)
    with pytest.raises(TypeError, match=r"Expected X to be an array-like or tensor for fit_t"):
        fresh.fit_transform(iter([X]))
    assert not hasattr(fresh, "cluster_centers_")
    batches = r"Expected X to be an array-like, memmap or tensor, got an iterable of batches"
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(TypeError, match=batches + r" \(generator\)"):
            method(b for b in [X])
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity"):
        MiniBatchKMeans(2).fit(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]))
    bad = np.memmap(tmp_path / "nan.dat", dtype=np.float32, mode="w+", shape=(30, 2))
    bad[:] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity"):
        MiniBatchKMeans(2, batch_size=5).fit(bad)
    flat = np.memmap(tmp_path / "flat.dat", dtype=np.float32, mode="w+", shape=(30,))
    with pytest.raises(ValueError, match=r"Expected X to be 2-D of shape"):
        MiniBatchKMeans(2).fit(flat)


# ---------------------------------------------------------------- scikit-learn checks

_RANDOM_BATCHES = (
    "the batches and the seeding are random: integer weights and repeated rows draw "
    "different batches. scikit-learn marks the same check as an expected failure for "
    "its own MiniBatchKMeans."
)
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": _RANDOM_BATCHES,
    "check_sample_weight_equivalence_on_sparse_data": _RANDOM_BATCHES,
}


@pytest.mark.parametrize("params", [{}, {"tol": 1e-4, "max_no_improvement": None}])
def test_float32_data_near_1e_minus_30_stops_where_it_stops_at_unit_scale(params):
    # The batch inertia and the centre shift of a step underflowed to 0 in
    # float32: early stopping saw no improvement from the first steps (12 of
    # 41 steps here) and tol > 0 a shift below it at the second step (2 of 40).
    X = blobs(n=4000, d=4, k=8, spread=3.0).astype(np.float32)
    tiny = X * np.float32(2.0**-100)
    expected = MiniBatchKMeans(8, batch_size=128, random_state=0, **params).fit(X)
    km = MiniBatchKMeans(8, batch_size=128, random_state=0, **params).fit(tiny)
    assert km.n_steps_ == expected.n_steps_
    np.testing.assert_allclose(
        km.cluster_centers_, expected.cluster_centers_ * 2.0**-100, rtol=1e-5, atol=1e-5 * 2.0**-100
    )
    assert km.inertia_ == pytest.approx(expected.inertia_ * 2.0**-200, rel=1e-5)
    step = minibatch_step(torch.from_numpy(tiny[:64]), torch.from_numpy(tiny[:8]), torch.zeros(8))
    unit = minibatch_step(torch.from_numpy(X[:64]), torch.from_numpy(X[:8]), torch.zeros(8))
    assert float(step.inertia) == pytest.approx(float(unit.inertia) * 2.0**-200, rel=1e-5)


def test_float32_data_whose_batch_inertia_exceeds_float32_is_fitted_as_kmeans_fits_it():
    # Squared distances near 1e36 are finite in float32 (KMeans fits these
    # rows), but a batch's sum of them is not: summed in float32, the step's
    # inertia was infinite and MiniBatchKMeans refused X as overflowing.
    X = blobs(n=4000, d=4, k=8, spread=3.0).astype(np.float32)
    huge = X * np.float32(2.0**60)
    KMeans(8, random_state=0).fit(huge)
    expected = MiniBatchKMeans(8, batch_size=128, random_state=0).fit(X)
    km = MiniBatchKMeans(8, batch_size=128, random_state=0).fit(huge)
    assert km.n_steps_ == expected.n_steps_
    assert km.inertia_ == pytest.approx(expected.inertia_ * 2.0**120, rel=1e-5)
    expected = MiniBatchKMeans(8, random_state=0).partial_fit(X[:1000]).partial_fit(X[1000:])
    km = MiniBatchKMeans(8, random_state=0).partial_fit(huge[:1000]).partial_fit(huge[1000:])
    np.testing.assert_allclose(km.cluster_centers_, expected.cluster_centers_ * 2.0**60, rtol=1e-5)
    assert km.inertia_ == pytest.approx(expected.inertia_ * 2.0**120, rel=1e-5)
    step = minibatch_step(torch.from_numpy(huge[:1000]), torch.from_numpy(huge[:8]), torch.zeros(8))
    assert torch.isfinite(step.inertia)


def test_check_estimator_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(
            MiniBatchKMeans(), on_fail=None, expected_failed_checks=EXPECTED_FAILURES
        )
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert failed == {}
    assert {r["check_name"] for r in results if r["status"] == "xfail"} == set(EXPECTED_FAILURES)
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}  # needs SCIPY_ARRAY_API=1 at import
    assert len(results) > 40


def test_feature_names_of_a_data_frame_in_fit_and_partial_fit():
    pd = pytest.importorskip("pandas")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    # fit, predict/transform/score, and partial_fit's second call.
    check_dataframe_column_names_consistency(
        "MiniBatchKMeans", MiniBatchKMeans(n_clusters=2, batch_size=50, random_state=0)
    )
    X = pd.DataFrame(blobs(n=200, d=3, k=3, seed=0), columns=["a", "b", "c"])
    batches = MiniBatchKMeans(n_clusters=3, random_state=0).fit(iter([X[:100], X[100:]]))
    np.testing.assert_array_equal(batches.feature_names_in_, np.array(["a", "b", "c"], object))
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        batches.partial_fit(X[["c", "b", "a"]])
    # (frame, y) tuples, as (array, y) ones: the tuple was read as one ragged
    # array ("Expected X to be a rectangular array-like of numbers").
    y = np.zeros(100)
    pairs = MiniBatchKMeans(n_clusters=3, random_state=0).fit(iter([(X[:100], y), (X[100:], y)]))
    np.testing.assert_array_equal(pairs.feature_names_in_, batches.feature_names_in_)
    np.testing.assert_array_equal(pairs.cluster_centers_, batches.cluster_centers_)


def test_callable_init_auto_n_init_is_three_as_sklearn():
    X = blobs(n=300, d=2, k=3, seed=0)
    calls = []

    def init(x, k, generator):
        calls.append(k)
        return x[torch.randperm(x.shape[0], generator=generator)[:k]]

    MiniBatchKMeans(n_clusters=3, init=init, random_state=0).fit(X)
    assert len(calls) == 3


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_cosine_rows_of_zeros_make_no_zero_centres(init):
    # Rows of zeros (distance 1 from every centre) were seeds, reassignment
    # targets and, at the first step, a centre's only rows: centres of zeros,
    # up to 2 of 20 per fit with 60% empty rows.
    rng = np.random.default_rng(7)
    axes = rng.normal(size=(20, 32))
    X = np.repeat(axes, 150, axis=0) + rng.normal(scale=0.1, size=(3000, 32))
    X = np.concatenate([X, np.zeros((4500, 32))])[rng.permutation(7500)].astype(np.float32)
    for seed in range(4):
        km = MiniBatchKMeans(20, metric="cosine", init=init, batch_size=512, random_state=seed)
        km.fit(X)
        np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_global_torch_defaults_change_no_result(paths, request, torch_defaults_changed):
    # Under torch.set_default_device (CUDA in a training script, meta here)
    # fits of numpy data failed ("Tensor.item() cannot be called on meta
    # tensors"), and under set_default_dtype(torch.float64) the reseeding of
    # light clusters drew float64 keys: other rows than without the default.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    X = blobs(n=2000, d=3, k=4)
    tensor = torch.from_numpy(X.astype(np.float32))

    def results() -> list:
        out: list = []
        for data in (X, tensor):
            # Many clusters for 4 blobs, a high ratio: clusters are reseeded.
            model = MiniBatchKMeans(12, batch_size=64, reassignment_ratio=0.5, random_state=0)
            model.fit(data)
            out += [model.cluster_centers_, model.labels_, model.inertia_, model.n_steps_]
            out += [model.predict(data), model.transform(data), model.score(data)]
            model = MiniBatchKMeans(4, batch_size=64, random_state=0)
            for start in range(0, 2000, 500):
                model.partial_fit(data[start : start + 500])
            out += [model.cluster_centers_, model.counts_]
        return out

    expected = results()
    with torch_defaults_changed():
        got = results()
    assert_identical(got, expected)


@copies_found_on_the_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_copies_among_wide_rows_are_found_with_small_temporaries(dtype):
    # The reseeding of a sparse step looks for copies among its candidate
    # rows and the centres, (k + m) x d dense values: fingerprints made four
    # int64 temporaries of all of them (40 x 50,000 float64: 16 MB each,
    # page-faulted in at every step, most of the step). In blocks of
    # columns, the same fingerprints.
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchkmeans.functional import certify

    generator = torch.Generator().manual_seed(0)
    rows = torch.randn((1, 40, 50_000), generator=generator).to(dtype)
    rows[rows.abs() < 2.0] = 0.0
    rows[0, 30] = rows[0, 7]
    rows[0, 31] = -0.0 * rows[0, 9]  # -0.0 and 0.0 are the same value
    rows[0, 9] = 0.0
    d = rows.shape[-1]
    weights = torch.randint(
        -(2**62), 2**62, (2, d), generator=torch.Generator().manual_seed(0), dtype=torch.int64
    )
    weights |= 1
    narrow = {2: torch.int16, 4: torch.int32}.get(rows.element_size())
    if narrow is not None:
        expected = ((rows + 0.0).view(narrow).long() * weights[0]).sum(-1)
    else:
        bits = (rows + 0.0).view(torch.int64)
        expected = ((bits & 0xFFFFFFFF) * weights[0] + (bits >> 32) * weights[1]).sum(-1)

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                # Memory taken: views (of the rows' bits, expanded indices) take none.
                storage = out.untyped_storage()
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                inputs = [a.untyped_storage().data_ptr() for a in tensors]
                if storage.data_ptr() not in inputs:
                    size = storage.nbytes() // out.element_size()
                    Largest.largest = max(Largest.largest, size)
            return out

    with Largest():
        fingerprints = certify._fingerprints(rows)
        # Without copies: nothing to check in full, no copy of the rows.
        assert certify.first_copies(rows[:, :7]) is None
    assert torch.equal(fingerprints, expected)
    assert Largest.largest <= 2 * d  # the weights: blocks of columns take less
    copies = certify.first_copies(rows)
    assert copies is not None
    assert (
        copies[0, 30] == 7
        and copies[0, 31] == 9
        and int((copies[0] != torch.arange(40)).sum()) == 2
    )


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_fit_scores_validation_rows_only_to_choose_between_seedings(monkeypatch, init):
    # The validation subsample's labels pick the best of n_init seedings:
    # with one seeding they chose nothing and took a tenth of a small fit
    # (wine, 21 steps). They are still drawn: the same random stream.
    X = load_digits().data[:400]
    scored = []
    original = MiniBatchKMeans._assign_rows

    def spy(self, x, centers):
        scored.append(int(x.shape[0]))
        return original(self, x, centers)

    monkeypatch.setattr(MiniBatchKMeans, "_assign_rows", spy)
    for n_init in (1, 3):
        scored.clear()
        MiniBatchKMeans(5, init=init, n_init=n_init, random_state=0, batch_size=50).fit(X)
        # The validation rows (init_size=150) once per seeding, then the
        # final labels of the 400 rows.
        assert scored == [150] * (n_init if n_init > 1 else 0) + [400]


def test_fit_decides_the_kernel_pass_of_its_steps_once(monkeypatch):
    # Whether a step labels and sums its batch in one pass of the kernel's
    # differences depends on the batch's shape, dtype and device, the same
    # for every step of a fit: decided once, where its checks took a tenth of
    # a small step, with the same fit as deciding at each step.
    import torchkmeans.minibatch as minibatch_module

    X = load_digits().data[:300]
    decided = []
    original = minibatch_module._batch_by_differences

    def counted(x, centroids, metric, differences):
        decided.append(centroids.shape[0])
        return original(x, centroids, metric, differences)

    step = minibatch_module._minibatch_step
    with monkeypatch.context() as patched:
        # Each step decides on its own (the decision left to _minibatch_step).
        patched.setattr(
            minibatch_module,
            "_minibatch_step",
            lambda *args, by_differences=None, **kwargs: step(*args, **kwargs),
        )
        expected = MiniBatchKMeans(4, random_state=0, batch_size=30).fit(X)
    monkeypatch.setattr(minibatch_module, "_batch_by_differences", counted)
    ours = MiniBatchKMeans(4, random_state=0, batch_size=30).fit(X)
    assert decided == [4]
    assert ours.n_steps_ == expected.n_steps_ > 1
    np.testing.assert_array_equal(ours.cluster_centers_, expected.cluster_centers_)
    np.testing.assert_array_equal(ours.labels_, expected.labels_)
    np.testing.assert_array_equal(ours.counts_, expected.counts_)
