"""Sparse input (scipy.sparse, torch sparse tensors) to the estimators, against scikit-learn."""

from __future__ import annotations

import importlib
import math
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import assert_identical, copies_found_on_the_cpu, on_the_cpu_paths_only
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.datasets import load_digits

import torchkmeans._host as host_module
from torchkmeans import KMeans, MiniBatchKMeans, elbow, metrics
from torchkmeans._host import _CSR

sparse = pytest.importorskip("scipy.sparse")

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(autouse=True)
def _on_the_stored_values(request, monkeypatch):
    """Sparse data fitted on its stored values, however much of it is stored:
    these tests are of that path (KMeans, elbow and MiniBatchKMeans fit a
    mostly stored X dense, see dense_when_mostly_stored: the tests marked
    ``densified`` keep that rule)."""
    if request.node.get_closest_marker("densified") is None:
        monkeypatch.setattr(host_module, "DENSIFIED_SHARE", math.inf)


def _digits() -> tuple[np.ndarray, object]:
    """load_digits with the faint pixels dropped: 1797 x 64 CSR, about 30% stored."""
    X = load_digits().data
    dense = np.where(X > 8, X, 0.0)
    return dense, sparse.csr_matrix(dense)


DENSE, CSR = _digits()


def _rows_of(X: object, metric: str = "euclidean", dtype: torch.dtype = torch.float64) -> object:
    """A scipy CSR matrix as the functional API's SparseRows (float64 by
    default) on the CPU."""
    from torchkmeans.functional.sparse import sparse_rows

    return sparse_rows(
        torch.from_numpy(X.indptr.astype(np.int64)),
        torch.from_numpy(X.indices.astype(np.int64)),
        torch.from_numpy(X.data),
        X.shape[1],
        device=torch.device("cpu"),
        dtype=dtype,
        metric=metric,
    )


def _csr_rows(dense: np.ndarray, dtype: torch.dtype, stored_zeros: bool) -> tuple[object, object]:
    """``dense`` as a scipy CSR matrix and as the functional API's SparseRows
    in ``dtype`` on the CPU; with ``stored_zeros`` (and a value stored) its
    first stored value an explicit 0.0 and its last a -0.0."""
    X = sparse.csr_matrix(dense.astype(np.float64))
    if stored_zeros and X.nnz:
        X.data[0] = 0.0
        X.data[-1] = -0.0
    return X, _rows_of(X, dtype=dtype)


INIT = DENSE[[0, 100, 200, 300, 400, 500, 600, 700, 800, 900]]


def _same_fit(ours: KMeans, theirs: SklearnKMeans) -> None:
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, atol=1e-10)
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil"])
def test_fit_on_sparse_equals_scikit_learn_from_the_same_init(fmt):
    X = CSR.asformat(fmt)
    ours = KMeans(10, init=INIT).fit(X)
    theirs = SklearnKMeans(10, init=INIT, n_init=1).fit(X)
    _same_fit(ours, theirs)
    assert isinstance(ours.cluster_centers_, np.ndarray)
    assert isinstance(ours.labels_, np.ndarray)


def test_sample_weight_on_sparse_equals_scikit_learn():
    w = np.random.default_rng(0).uniform(0.1, 3.0, CSR.shape[0])
    ours = KMeans(10, init=INIT).fit(CSR, sample_weight=w)
    theirs = SklearnKMeans(10, init=INIT, n_init=1).fit(CSR, sample_weight=w)
    _same_fit(ours, theirs)
    np.testing.assert_allclose(
        ours.score(CSR, sample_weight=w), theirs.score(CSR, sample_weight=w), rtol=1e-12
    )


def test_empty_cluster_on_sparse_is_reseeded_as_scikit_learn():
    init = INIT.copy()
    init[3] = 1000.0  # far from every row: empty after the first assignment
    ours = KMeans(10, init=init).fit(CSR)
    theirs = SklearnKMeans(10, init=init, n_init=1).fit(CSR)
    _same_fit(ours, theirs)
    assert len(np.unique(ours.labels_)) == 10


def test_predict_transform_score_on_sparse_equal_scikit_learn_both_ways():
    theirs = SklearnKMeans(10, init=INIT, n_init=1).fit(DENSE)
    for fitted_on in (DENSE, CSR):
        ours = KMeans(10, init=INIT).fit(fitted_on)
        for X in (DENSE, CSR, CSR.tocsc()):
            np.testing.assert_array_equal(ours.predict(X), theirs.predict(CSR))
            np.testing.assert_allclose(ours.transform(X), theirs.transform(CSR), atol=1e-9)
            np.testing.assert_allclose(ours.score(X), theirs.score(CSR), rtol=1e-12)
    ours = KMeans(10, init=INIT).fit(CSR)
    np.testing.assert_array_equal(ours.fit_predict(CSR), theirs.labels_)
    out = ours.fit_transform(CSR)
    assert isinstance(out, np.ndarray) and out.shape == (CSR.shape[0], 10)


def test_labels_are_the_nearest_returned_centre_and_inertia_their_sum():
    X = sparse.random(500, 300, density=0.02, random_state=0, format="csr")
    km = KMeans(7, random_state=0).fit(X)
    dense = X.toarray()
    d2 = ((dense[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.labels_, d2.argmin(1))
    np.testing.assert_allclose(km.inertia_, d2.min(1).sum(), rtol=1e-10)
    assert np.isfinite(km.cluster_centers_).all()


def test_kmeans_plusplus_on_sparse_seeds_as_the_dense_fit():
    # The draws of the dense loop: the same seed seeds the same rows.
    ours = KMeans(10, random_state=0).fit(CSR)
    dense = KMeans(10, random_state=0).fit(DENSE)
    np.testing.assert_array_equal(ours.labels_, dense.labels_)
    np.testing.assert_allclose(ours.inertia_, dense.inertia_, rtol=1e-10)


def test_cosine_on_sparse_equals_the_dense_fit_with_rows_of_zeros():
    X = sparse.random(300, 40, density=0.05, random_state=1, format="csr")
    assert (X.getnnz(axis=1) == 0).sum() > 10
    init = X.toarray()[X.getnnz(axis=1) > 0][:5]
    ours = KMeans(5, metric="cosine", init=init).fit(X)
    dense = KMeans(5, metric="cosine", init=init).fit(X.toarray())
    np.testing.assert_array_equal(ours.labels_, dense.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, dense.cluster_centers_, atol=1e-12)
    np.testing.assert_allclose(ours.inertia_, dense.inertia_, rtol=1e-12)
    assert ours.n_iter_ == dense.n_iter_
    np.testing.assert_allclose(ours.transform(X), dense.transform(X.toarray()), atol=1e-12)
    np.testing.assert_allclose(ours.score(X), dense.score(X.toarray()), rtol=1e-12)


@pytest.mark.parametrize("layout", ["to_sparse", "to_sparse_csr", "to_sparse_csc"])
def test_torch_sparse_tensor_gives_tensors_equal_to_scipy(layout):
    tensor = getattr(torch.tensor(DENSE), layout)()
    km = KMeans(10, init=INIT).fit(tensor)
    reference = KMeans(10, init=INIT).fit(CSR)
    assert isinstance(km.labels_, torch.Tensor) and isinstance(km.cluster_centers_, torch.Tensor)
    np.testing.assert_array_equal(km.labels_.numpy(), reference.labels_)
    np.testing.assert_allclose(km.inertia_, reference.inertia_, rtol=1e-12)
    assert isinstance(km.predict(tensor), torch.Tensor)
    np.testing.assert_allclose(km.transform(tensor).numpy(), reference.transform(CSR))


def test_caller_sparse_matrix_is_not_modified_and_duplicates_are_summed():
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 50, 400), rng.integers(0, 20, 400)
    values = rng.uniform(1, 2, 400).astype(np.float32)
    coo = sparse.coo_matrix((values, (rows, cols)), shape=(50, 20))  # with duplicates
    csr = sparse.csr_matrix((values, cols, np.searchsorted(np.sort(rows), np.arange(51))))
    copies = [a.copy() for a in (coo.data, coo.row, coo.col, csr.data, csr.indices, csr.indptr)]
    init = coo.toarray()[:4]
    for X in (coo, csr):
        km = KMeans(4, init=init).fit(X)
        dense = KMeans(4, init=init).fit(X.toarray())
        np.testing.assert_array_equal(km.labels_, dense.labels_)
        np.testing.assert_allclose(km.inertia_, dense.inertia_, rtol=1e-5)
        km.predict(X), km.transform(X), km.score(X)
    for before, after in zip(
        copies, (coo.data, coo.row, coo.col, csr.data, csr.indices, csr.indptr)
    ):
        np.testing.assert_array_equal(before, after)


def test_blocks_of_rows_give_the_same_fit_and_nothing_is_densified(monkeypatch):
    # A budget of a few rows' scores: many blocks, the same result.
    X = sparse.random(400, 1000, density=0.01, random_state=0, format="csr")
    whole = KMeans(6, random_state=0).fit(X)

    def refuse(*args):
        raise AssertionError("a sparse matrix was densified")

    monkeypatch.setattr(_CSR, "read", refuse)
    small = KMeans(6, random_state=0, memory_budget=6 * 8 * 3 * 7).fit(X)
    np.testing.assert_array_equal(small.labels_, whole.labels_)
    np.testing.assert_allclose(small.inertia_, whole.inertia_, rtol=1e-12)
    np.testing.assert_array_equal(small.predict(X), whole.labels_)
    np.testing.assert_allclose(small.transform(X), whole.transform(X), rtol=1e-12)


def test_minibatch_on_sparse_equals_the_dense_fit_in_memory_and_streamed():
    for budget in (None, 20_000):  # densified whole; streamed a chunk at a time
        ours = MiniBatchKMeans(10, random_state=0, memory_budget=budget).fit(CSR)
        dense = MiniBatchKMeans(10, random_state=0, memory_budget=budget).fit(DENSE)
        np.testing.assert_array_equal(ours.labels_, dense.labels_)
        np.testing.assert_allclose(ours.cluster_centers_, dense.cluster_centers_)
        np.testing.assert_array_equal(ours.predict(CSR), dense.predict(DENSE))
    ours, dense = MiniBatchKMeans(10, random_state=0), MiniBatchKMeans(10, random_state=0)
    for start in range(0, CSR.shape[0], 256):
        ours.partial_fit(CSR[start : start + 256])
        dense.partial_fit(DENSE[start : start + 256])
    np.testing.assert_allclose(ours.cluster_centers_, dense.cluster_centers_)


@pytest.mark.filterwarnings("ignore:No knee found")
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_elbow_on_sparse_fits_the_stored_values_as_scikit_learn(monkeypatch, fmt):
    # A sparse X beyond memory_budget had been swept as a memmap is: dense
    # chunks densified every iteration (20,000 x 5,000, 1% stored, k = 1..9:
    # 441 s) and seeds from a sample. Each k is now a fit on the stored
    # values from the first k seeds of the dense sweep's k-means++ runs.
    from torchkmeans.functional import kmeans_plusplus

    def refuse(*args):
        raise AssertionError("a sparse matrix was densified")

    monkeypatch.setattr(_CSR, "read", refuse)
    monkeypatch.setattr(_CSR, "take", refuse)
    ks = range(1, 7)
    sweep = elbow(CSR.asformat(fmt), ks, n_init=2, random_state=0, memory_budget=100_000)
    monkeypatch.undo()
    # The seeds of the dense sweep: greedy k-means++ to k=6, two restarts.
    _, seeds = kmeans_plusplus(
        torch.tensor(DENSE), 6, n_problems=2, generator=torch.Generator().manual_seed(0)
    )
    for i, k in enumerate(ks):
        fits = [SklearnKMeans(k, init=DENSE[run[:k].numpy()], n_init=1).fit(CSR) for run in seeds]
        theirs = min(fits, key=lambda fit: fit.inertia_)
        assert sweep.inertia[i] == pytest.approx(theirs.inertia_, rel=1e-12)
        np.testing.assert_array_equal(sweep.labels[i], theirs.labels_)
        np.testing.assert_allclose(sweep.centroids[i], theirs.cluster_centers_, atol=1e-10)


def test_refused_sparse_input_says_why():
    bad = CSR.copy()
    bad.data[5] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity"):
        KMeans(3).fit(bad)
    with pytest.raises(ValueError, match=r"n_samples=10 should be >= n_clusters=30\."):
        KMeans(30).fit(CSR[:10])
    with pytest.raises(ValueError, match=r"Found array with 0 feature\(s\) \(shape=\(5, 0\)\)"):
        KMeans(2).fit(sparse.csr_matrix((5, 0)))
    match = r"Expected init to be .* when X is sparse \(csr_matrix\), got a callable\."
    with pytest.raises(TypeError, match=match):
        KMeans(3, init=lambda X, k, g: X[:k]).fit(CSR)
    with pytest.raises(ValueError, match=r"Complex data not supported; X has dtype complex128\."):
        KMeans(3).fit(CSR.astype(complex))
    km = KMeans(3, random_state=0).fit(CSR)
    with pytest.raises(ValueError, match=r"X has 10 features, but KMeans is expecting 64"):
        km.predict(CSR[:, :10])
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\) \(shape=\(0, 64\)\)"):
        MiniBatchKMeans(3).partial_fit(CSR[:0])
    mb = MiniBatchKMeans(3, random_state=0).partial_fit(CSR[:100])
    with pytest.raises(ValueError, match=r"X has 10 features, but MiniBatchKMeans is expecting 64"):
        mb.partial_fit(CSR[:100, :10])
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity"):
        mb.partial_fit(bad)
    match = r"Expected X to be a dense array or tensor, got a sparse matrix \(csr_matrix\)"
    for score in (metrics.calinski_harabasz_score, metrics.davies_bouldin_score):
        with pytest.raises(TypeError, match=match):
            score(CSR, km.labels_)


def test_sparse_input_of_broken_structure_is_refused():
    """CSR components built into a matrix unchecked (torch and scipy check
    neither bound): a column index past n_features had been read by the fused
    kernel (predict: garbage labels, or a crash) and written through
    (partial_fit's sums: the value added to a cluster's count)."""
    crow = torch.tensor([0, 1, 2, 3, 4])
    good = torch.sparse_csr_tensor(crow, torch.tensor([0, 1, 2, 0]), torch.ones(4), size=(4, 3))
    km = KMeans(2, n_init=1, random_state=0).fit(good)
    for index in (3, -1):
        col = torch.tensor([0, index, 1, 2])
        bad = torch.sparse_csr_tensor(crow, col, torch.ones(4), size=(4, 3))
        match = rf"Expected X's column indices to be in \[0, 3\), got indices from {min(index, 0)}"
        with pytest.raises(ValueError, match=match):
            km.predict(bad)
        with pytest.raises(ValueError, match=match):
            MiniBatchKMeans(2, init=np.eye(3)[:2], n_init=1).partial_fit(bad)
        scipy_bad = sparse.csr_matrix((np.ones(4), col.numpy(), crow.numpy()), shape=(4, 3))
        with pytest.raises(ValueError, match=match):
            km.predict(scipy_bad)
    falling = torch.sparse_csr_tensor(
        torch.tensor([0, 2, 1, 3, 4]), torch.tensor([0, 1, 2, 0]), torch.ones(4), size=(4, 3)
    )
    match = r"Expected X's 5 row pointers to rise from 0 to its 4 stored values, got 5 pointers"
    with pytest.raises(ValueError, match=match):
        km.predict(falling)


def test_fit_on_a_sparse_matrix_warns_about_too_few_distinct_clusters():
    X = sparse.csr_matrix(np.repeat(np.eye(3), 5, axis=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        km = KMeans(4, random_state=0).fit(X)
    assert any("Number of distinct clusters (3)" in str(w.message) for w in caught)
    assert np.isfinite(km.cluster_centers_).all()


def test_minibatch_labels_of_a_streamed_sparse_x_are_not_read_as_dense_chunks(monkeypatch):
    dense = MiniBatchKMeans(10, random_state=0, memory_budget=20_000).fit(DENSE)

    def refuse(*args):
        raise AssertionError("a sparse matrix was read as dense chunks")

    monkeypatch.setattr(_CSR, "read", refuse)
    ours = MiniBatchKMeans(10, random_state=0, memory_budget=20_000).fit(CSR)
    np.testing.assert_array_equal(ours.labels_, dense.labels_)
    np.testing.assert_allclose(ours.inertia_, dense.inertia_, rtol=1e-10)
    w = np.linspace(0.5, 2.0, CSR.shape[0])
    weighted = MiniBatchKMeans(10, random_state=0, memory_budget=20_000)
    reference = MiniBatchKMeans(10, random_state=0, memory_budget=20_000)
    monkeypatch.undo()
    reference.fit(DENSE, sample_weight=w)
    monkeypatch.setattr(_CSR, "read", refuse)
    weighted.fit(CSR, sample_weight=w)
    np.testing.assert_allclose(weighted.inertia_, reference.inertia_, rtol=1e-10)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_minibatch_steps_on_a_streamed_sparse_x_stay_sparse(monkeypatch, metric):
    import torchkmeans.minibatch as minibatch_module

    X = sparse.random(3000, 200, density=0.05, random_state=0, format="csr")
    X = sparse.vstack([X, sparse.csr_matrix((200, 200))]).tocsr()  # and rows of zeros
    # Light centres reseeded from the batch at most steps.
    params = dict(
        metric=metric,
        random_state=0,
        memory_budget=20_000,
        batch_size=256,
        reassignment_ratio=0.9,
    )
    dense = MiniBatchKMeans(8, **params).fit(X.toarray())

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse batch was densified for its step")

    monkeypatch.setattr(minibatch_module, "_minibatch_step", refuse)
    ours = MiniBatchKMeans(8, **params).fit(X)
    assert ours.n_steps_ == dense.n_steps_
    np.testing.assert_array_equal(ours.labels_, dense.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, dense.cluster_centers_, atol=1e-12)
    np.testing.assert_allclose(ours.counts_, dense.counts_)
    np.testing.assert_allclose(ours.inertia_, dense.inertia_, rtol=1e-12)


@pytest.mark.parametrize("scale", [2.0**-85, 2.0**63])
def test_sparse_data_of_any_magnitude_fits_as_the_same_data_at_unit_scale(scale):
    # Float32 squared distances of values near 1e-25 underflow (inertia 0,
    # predict of a fit's centres all ties) and near 1e19 overflow (fit
    # refused): the dense search scales such data by a power of two, and so
    # does the sparse one, an exact change.
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(200, 6)) * (rng.random((200, 6)) < 0.5)
    unit = sparse.csr_matrix(dense.astype(np.float32))
    scaled = sparse.csr_matrix((dense * scale).astype(np.float32))
    w = rng.random(200)
    ref = KMeans(4, n_init=2, random_state=0).fit(unit, sample_weight=w)
    ours = KMeans(4, n_init=2, random_state=0).fit(scaled, sample_weight=w)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_array_equal(ours.cluster_centers_, ref.cluster_centers_ * np.float32(scale))
    assert ours.inertia_ == pytest.approx(ref.inertia_ * scale**2, rel=1e-12)
    np.testing.assert_array_equal(ours.predict(scaled), ref.labels_)
    expected = ref.score(unit, sample_weight=w) * scale**2
    assert ours.score(scaled, sample_weight=w) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(ours.transform(scaled), ref.transform(unit) * scale, rtol=1e-6)
    # Centres fitted on the dense rows predict the sparse ones alike.
    mb = MiniBatchKMeans(4, random_state=0, batch_size=64).fit(scaled.toarray())
    np.testing.assert_array_equal(mb.predict(scaled), mb.predict(scaled.toarray()))
    assert mb.score(scaled) == pytest.approx(mb.score(scaled.toarray()), rel=1e-6)


@pytest.mark.parametrize("scale", [2.0**-85, 2.0**63])
def test_minibatch_sparse_steps_of_any_magnitude_equal_those_at_unit_scale(scale):
    # Sparse batches are stepped from their stored values, scored without
    # centring: float32 values near 1e-25 (squared distances 0, labels ties)
    # or 1e19 (refused) are stepped scaled by a power of two, as dense ones.
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(2000, 50)) * (rng.random((2000, 50)) < 0.2)
    unit = sparse.csr_matrix(dense.astype(np.float32))
    scaled = sparse.csr_matrix((dense * scale).astype(np.float32))
    params = dict(random_state=0, batch_size=256, memory_budget=100_000)  # dense form 400 kB
    ref = MiniBatchKMeans(4, **params).fit(unit)
    ours = MiniBatchKMeans(4, **params).fit(scaled)
    assert ours.n_steps_ == ref.n_steps_
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_array_equal(ours.cluster_centers_, ref.cluster_centers_ * np.float32(scale))
    assert ours.inertia_ == pytest.approx(ref.inertia_ * scale**2, rel=1e-12)


@pytest.mark.filterwarnings("ignore:No knee found")
def test_elbow_on_sparse_x_scores_its_dense_form_where_it_fits_memory_budget():
    # Scores other than the inertia take dense rows: a sparse X whose dense
    # form fits memory_budget is scored as that array, a larger one refused.
    scores = ("inertia", "silhouette", "davies_bouldin")
    dense_sweep = elbow(DENSE[:400], range(2, 5), random_state=0, scores=scores)
    sparse_sweep = elbow(CSR[:400], range(2, 5), random_state=0, scores=scores)
    np.testing.assert_allclose(sparse_sweep.inertia, dense_sweep.inertia, rtol=1e-12)
    np.testing.assert_array_equal(sparse_sweep.labels, dense_sweep.labels)
    for name in scores[1:]:
        np.testing.assert_allclose(sparse_sweep.scores[name], dense_sweep.scores[name])
    match = (
        r"Expected scores=\('inertia',\) when X is sparse \(csr_matrix\) and its dense "
        r"form exceeds memory_budget=100000 bytes, got \('inertia', 'silhouette'\)"
    )
    with pytest.raises(ValueError, match=match):
        elbow(CSR, range(2, 5), scores=("inertia", "silhouette"), memory_budget=100_000)


def _rows_far_from_the_origin():
    """3,000 float32 rows of 8 clusters near 1e4, 1e-2 apart (a stored zero
    column), and weights."""
    rng = np.random.default_rng(0)
    centres = 1e4 + rng.normal(size=(8, 4)) * 0.01
    X = centres[rng.integers(0, 8, 3000)] + rng.normal(size=(3000, 4)) * 0.003
    X[:, 0] = 0
    return X.astype(np.float32), rng.random(3000)


def test_labels_of_rows_far_from_the_origin_are_the_nearest_centre():
    # |x|^2 - 2 x.c + |c|^2 of float32 rows near 1e4, 1e-2 apart, cancels:
    # 2,602 of 3,000 labels were not the nearest returned centre, and the
    # inertia 1600 where the recomputed sum is 0.4 (scikit-learn's: 0).
    # Rows the expansion cannot label are labelled again from differences.
    X, w = _rows_far_from_the_origin()
    S = sparse.csr_matrix(X)
    for est in (
        KMeans(8, random_state=0, n_init=1).fit(S, sample_weight=w),
        MiniBatchKMeans(8, random_state=0, batch_size=256, memory_budget=40_000).fit(S),
    ):
        C = est.cluster_centers_.astype(np.float64)
        D = ((X.astype(np.float64)[:, None] - C[None]) ** 2).sum(-1)
        best = D.min(1)
        np.testing.assert_array_equal(D[np.arange(3000), est.labels_], best)
        np.testing.assert_array_equal(D[np.arange(3000), est.predict(S)], best)
        weights = np.ones(3000) if isinstance(est, MiniBatchKMeans) else w
        np.testing.assert_allclose(est.inertia_, (best * weights).sum(), rtol=1e-5)
        np.testing.assert_allclose(-est.score(S), best.sum(), rtol=1e-5)
        np.testing.assert_allclose(est.transform(S) ** 2, D, rtol=1e-5, atol=1e-9)


def _duplicated_counts(dtype: type) -> object:
    """Rows of large counts, each base row copied 100 times with +-1 changes:
    squared norms near 1e8, distances to the nearest centre near 1."""
    rng = np.random.default_rng(0)
    base = rng.poisson(3000, size=(6, 200)) * (rng.random((6, 200)) < 0.1)
    rows = []
    for b in base:
        stored = np.flatnonzero(b)[:3]
        for _ in range(100):
            r = b.copy()
            r[stored] += rng.integers(-1, 2, 3)
            rows.append(r)
    return sparse.csr_matrix(np.array(rows, dtype=dtype))


@pytest.mark.parametrize(
    ("dtype", "memory_budget"), [(np.float32, None), (np.float32, 2048), (np.float64, None)]
)
def test_sparse_labels_are_the_nearest_centre_for_large_norms_and_small_distances(
    dtype, memory_budget
):
    X = _duplicated_counts(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct clusters than asked
        model = KMeans(12, random_state=0, memory_budget=memory_budget).fit(X)
    dense = X.toarray().astype(np.float64)
    centres = np.asarray(model.cluster_centers_, dtype=np.float64)
    exact = ((dense[:, None, :] - centres[None]) ** 2).sum(-1)
    rows = np.arange(dense.shape[0])
    for labels in (model.labels_, model.predict(X)):
        np.testing.assert_array_equal(exact[rows, labels], exact.min(1))
    np.testing.assert_allclose(model.inertia_, exact.min(1).sum(), rtol=1e-5)
    np.testing.assert_allclose(-model.score(X), exact.min(1).sum(), rtol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_minibatch_seeding_on_a_streamed_sparse_x_densifies_only_the_centres(
    monkeypatch, metric, init
):
    X = sparse.random(3000, 200, density=0.05, random_state=1, format="csr")
    X = sparse.vstack([X, sparse.csr_matrix((200, 200))]).tocsr()  # and rows of zeros
    params = dict(metric=metric, init=init, random_state=0, memory_budget=20_000, n_init=2)
    dense = MiniBatchKMeans(8, **params).fit(X.toarray())

    def refuse(*args):
        raise AssertionError("rows of a sparse matrix were densified to seed")

    monkeypatch.setattr(_CSR, "take", refuse)
    ours = MiniBatchKMeans(8, **params).fit(X)
    np.testing.assert_array_equal(ours.labels_, dense.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, dense.cluster_centers_, atol=1e-12)
    np.testing.assert_allclose(ours.inertia_, dense.inertia_, rtol=1e-12)


@pytest.mark.densified
def test_minibatch_keeps_a_sparse_x_that_fits_memory_sparse_unless_densely_stored(monkeypatch):
    import torchkmeans.minibatch as minibatch_module

    rng = np.random.default_rng(0)
    few = sparse.random(2000, 300, density=0.02, random_state=rng, format="csr")
    many = sparse.random(500, 20, density=0.5, random_state=rng, format="csr")
    dense_few = MiniBatchKMeans(8, random_state=0).fit(few.toarray())
    step = minibatch_module._minibatch_step
    dense_steps = []

    def counted(*args, **kwargs):
        dense_steps.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(minibatch_module, "_minibatch_step", counted)
    ours = MiniBatchKMeans(8, random_state=0).fit(few)  # 2% stored: its steps stay sparse
    assert dense_steps == []
    np.testing.assert_array_equal(ours.labels_, dense_few.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, dense_few.cluster_centers_, atol=1e-12)
    np.testing.assert_allclose(ours.inertia_, dense_few.inertia_, rtol=1e-12)
    MiniBatchKMeans(3, random_state=0).fit(many)  # half stored: densified whole
    assert dense_steps
    tensor = torch.tensor(many.toarray()).to_sparse()  # a torch COO tensor, half stored
    assert MiniBatchKMeans(3, random_state=0).fit(tensor).cluster_centers_.shape == (3, 20)


@pytest.mark.densified
def test_kmeans_and_elbow_fit_a_mostly_stored_sparse_x_as_its_dense_form(monkeypatch):
    # They fitted every sparse X on its stored values: 20 iterations on
    # 20,000 x 1,000, all stored, took 0.66 s against 0.12 s dense, and rows
    # far from the origin were searched again densified in every iteration
    # (20,000 x 100 near 1e4: 11-14 s against 0.14 s).
    sparse_fits = []

    def counted(fit):
        def wrapper(*args, **kwargs):
            sparse_fits.append(1)
            return fit(*args, **kwargs)

        return wrapper

    for name in ("torchkmeans.kmeans", "torchkmeans.elbow"):  # the modules, not the functions
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "sparse_kmeans", counted(module.sparse_kmeans))
    copy = CSR.copy()
    assert CSR.nnz / np.prod(CSR.shape) > 0.25
    ours, dense = KMeans(10, random_state=0).fit(CSR), KMeans(10, random_state=0).fit(DENSE)
    np.testing.assert_array_equal(ours.labels_, dense.labels_)
    np.testing.assert_array_equal(ours.cluster_centers_, dense.cluster_centers_)
    assert ours.inertia_ == dense.inertia_ and ours.n_iter_ == dense.n_iter_
    np.testing.assert_array_equal(ours.predict(CSR), dense.labels_)
    sweep, dense_sweep = (elbow(x, range(1, 5), random_state=0) for x in (CSR, DENSE))
    np.testing.assert_array_equal(sweep.inertia, dense_sweep.inertia)
    tensor = torch.tensor(DENSE).to_sparse()
    fitted = KMeans(10, random_state=0).fit(tensor)
    assert isinstance(fitted.cluster_centers_, torch.Tensor)
    np.testing.assert_array_equal(fitted.labels_.numpy(), dense.labels_)
    assert sparse_fits == []
    for data, attribute in ((copy.data, CSR.data), (copy.indices, CSR.indices)):
        np.testing.assert_array_equal(data, attribute)
    # A callable init is refused for every sparse X, however much is stored.
    with pytest.raises(TypeError, match=r"when X is sparse \(csr_matrix\), got a callable"):
        KMeans(10, init=lambda X, k, random_state: DENSE[:k]).fit(CSR)
    # Less than a quarter stored: fitted on its stored values.
    few = sparse.random(500, 300, density=0.05, random_state=0, format="csr")
    KMeans(4, random_state=0).fit(few)
    assert sparse_fits == [1]


@pytest.mark.densified
@pytest.mark.parametrize("fmt", ["coo", "csr", "lil", "dok"])
def test_a_mostly_stored_sparse_x_is_read_dense_as_its_own_toarray_and_predicted_so(
    monkeypatch, fmt
):
    # Densifying gathered every stored value into torch.zeros' pages
    # (20,000 x 1,000 float32, 30% stored: 228 ms against scipy's 13 ms),
    # and predict, transform and score searched a mostly stored X on its
    # stored values (far from the origin: predict 43 ms against 4 ms).
    from torchkmeans._host import densified, read_sparse

    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 60, 700), rng.integers(0, 8, 700)
    counts = sparse.coo_matrix((rng.integers(1, 9, 700), (rows, cols)), shape=(60, 8))
    expected = counts.toarray().astype(np.float64)  # duplicates summed
    X = counts.asformat(fmt)
    out = densified(X, None)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)
    flags = densified(sparse.csr_matrix(expected > 3), None)
    assert flags.dtype == np.float64 and (flags == (expected > 3)).all()
    tensor = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), torch.ones(700))
    np.testing.assert_array_equal(densified(tensor, None), tensor.to_dense())
    csr = read_sparse(X)
    for start, stop in ((0, 60), (5, 17), (30, 30), (59, 60)):
        np.testing.assert_array_equal(csr.read(start, stop), csr.take(torch.arange(start, stop)))
    far = 1e4 + expected.astype(np.float32)
    km = KMeans(4, random_state=0).fit(far)

    def refused(*args, **kwargs):
        raise AssertionError("searched on the stored values")

    module = importlib.import_module("torchkmeans.kmeans")  # not the function
    monkeypatch.setattr(module, "sparse_nearest", refused)
    monkeypatch.setattr(module, "sparse_distances", refused)
    for given in (sparse.csr_matrix(far).asformat(fmt), torch.tensor(far).to_sparse()):
        np.testing.assert_array_equal(np.asarray(km.predict(given)), km.predict(far))
        np.testing.assert_array_equal(np.asarray(km.transform(given)), km.transform(far))
        assert km.score(given) == km.score(far)


@pytest.mark.densified
@pytest.mark.parametrize(
    ("share", "dtype", "budget", "dense"),
    [
        (0.2, np.float32, None, False),  # too little stored, whatever the budget
        (0.3, np.float64, None, True),  # fits memory_budget
        (0.3, np.float64, 1000, False),  # 8 bytes an element against 0.3 * 20 for the copy
        (0.5, np.float64, 1000, True),  # 8 against 10: no larger than the sparse copy
        (0.3, np.float32, 1000, True),  # 4 against 0.3 * 16
    ],
)
def test_a_sparse_x_is_densified_where_mostly_stored_and_no_larger(share, dtype, budget, dense):
    from torchkmeans._host import dense_when_mostly_stored

    X = sparse.random(400, 50, density=share, random_state=0, format="csr", dtype=dtype)
    out = dense_when_mostly_stored(X, budget)
    assert (not sparse.issparse(out)) == dense
    if dense:
        np.testing.assert_array_equal(out, X.toarray())
        assert out.dtype == dtype
    assert dense_when_mostly_stored(sparse.csr_matrix((0, 5)), None).shape == (0, 5)


@pytest.mark.densified
def test_mostly_stored_sparse_rows_far_from_the_origin_get_the_dense_fit():
    rng = np.random.default_rng(0)
    dense = 1e4 + rng.standard_normal((3000, 20)) + 0.5 * rng.integers(0, 4, (3000, 1))
    dense = dense.astype(np.float32)
    ours = KMeans(4, random_state=0).fit(sparse.csr_matrix(dense))
    theirs = KMeans(4, random_state=0).fit(dense)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_array_equal(ours.cluster_centers_, theirs.cluster_centers_)
    # The labels are the nearest returned centres, measured in float64.
    wide = dense.astype(np.float64)
    gaps = ((wide[:, None, :] - ours.cluster_centers_.astype(np.float64)) ** 2).sum(-1)
    nearest = gaps.min(1)
    assert (gaps[np.arange(len(wide)), ours.labels_] <= nearest * (1 + 1e-5)).all()
    assert ours.inertia_ == pytest.approx(nearest.sum(), rel=1e-5)


def test_sparse_kmeans_reads_convergence_every_few_iterations_with_the_same_result():
    from torchkmeans.functional.sparse import sparse_kmeans

    X = sparse.random(800, 60, density=0.05, random_state=3, format="csr")
    rows = _rows_of(X)
    init = torch.from_numpy(X[:6].toarray())
    init[2] = 50.0  # empty after the first assignment
    every = sparse_kmeans(rows, 6, init=init, check_every=1)
    theirs = SklearnKMeans(6, init=init.numpy(), n_init=1).fit(X)
    assert int(every.n_iter) == theirs.n_iter_
    for check_every in (3, 7, 1000):
        late = sparse_kmeans(rows, 6, init=init, check_every=check_every)
        assert torch.equal(late.labels, every.labels)
        assert torch.equal(late.centroids, every.centroids)
        assert int(late.n_iter) == int(every.n_iter)
        torch.testing.assert_close(late.inertia_history, every.inertia_history, equal_nan=True)
    with pytest.raises(ValueError, match="check_every"):
        sparse_kmeans(rows, 6, init=init, check_every=0)


def test_sparse_kmeans_runs_each_restart_from_its_own_init():
    from torchkmeans.functional.sparse import sparse_kmeans, sparse_kmeans_plusplus

    rows = _rows_of(CSR)
    generator = torch.Generator().manual_seed(1)
    index = sparse_kmeans_plusplus(rows, 6, n_problems=3, generator=generator)
    starts = torch.from_numpy(DENSE)[index]
    both = sparse_kmeans(rows, 6, init=starts, n_init=3)
    alone = [sparse_kmeans(rows, 6, init=start) for start in starts]
    best = min(alone, key=lambda result: float(result.inertia))
    assert torch.equal(both.labels, best.labels) and torch.equal(both.centroids, best.centroids)
    with pytest.raises(ValueError, match=r"hold the centroids of n_init=2 runs, got shape \(3,"):
        sparse_kmeans(rows, 6, init=starts, n_init=2)


def test_sparse_sums_make_one_temporary_of_the_stored_values():
    # labels[row_of] * d + col: three nnz-sized int64 temporaries, by an
    # advanced-indexing gather 3x slower than index_select (the scatter of
    # the cluster sums was most of an iteration of a TF-IDF fit at small k).
    from torch.utils._python_dispatch import TorchDispatchMode

    # The row of each stored value stored, as the fits that scatter store it.
    rows = _rows_of(CSR).with_row_of()
    nnz = rows.values.numel()

    class Temporaries(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.numel() == nnz:
                if not (func._schema.name.endswith("_") or "out" in (kwargs or {})):
                    self.made.append(str(func))
            return out

    labels = torch.from_numpy(np.arange(CSR.shape[0]) % 10)
    with Temporaries() as temporaries:
        sums = rows.sums(labels, rows.values, 10)
    assert len(temporaries.made) == 1, temporaries.made
    np.testing.assert_allclose(
        sums.numpy(), np.stack([DENSE[labels.numpy() == j].sum(0) for j in range(10)])
    )


def test_sparse_search_without_suspects_runs_no_dense_search(monkeypatch):
    # Rows the expansion labels surely were split into one empty part,
    # searched densely (no rows, 1-2 ms a call) every iteration and transform.
    import torchkmeans.functional.sparse as sparse_module

    searched = []

    def counted(search):
        def wrapper(x, *args, **kwargs):
            searched.append(x.shape[0] if isinstance(x, torch.Tensor) else x.n_rows)
            return search(x, *args, **kwargs)

        return wrapper

    for name in ("_nearest", "_distances_by_support"):
        monkeypatch.setattr(sparse_module, name, counted(getattr(sparse_module, name)))
    km = KMeans(10, init=INIT).fit(CSR)
    km.transform(CSR)
    assert 0 not in searched
    theirs = SklearnKMeans(10, init=INIT, n_init=1).fit(CSR)
    _same_fit(km, theirs)


@pytest.mark.parametrize("layout", ["to_sparse", "to_sparse_csr", "to_sparse_csc"])
def test_functional_kmeans_of_a_sparse_tensor_fits_its_stored_values(layout):
    # functional.kmeans refused torch sparse tensors ("convert it with
    # x.to_dense()"), where KMeans fits them without densifying.
    from torchkmeans.functional import kmeans

    x = getattr(torch.tensor(DENSE), layout)()
    init = torch.tensor(INIT)
    result = kmeans(x, 10, init=init)
    theirs = SklearnKMeans(10, init=INIT, n_init=1).fit(CSR)
    np.testing.assert_array_equal(result.labels.numpy(), theirs.labels_)
    np.testing.assert_allclose(result.centroids.numpy(), theirs.cluster_centers_, atol=1e-10)
    assert float(result.inertia) == pytest.approx(theirs.inertia_, rel=1e-12)
    assert int(result.n_iter) == theirs.n_iter_
    w = torch.linspace(0.5, 2.0, CSR.shape[0], dtype=torch.float64)
    ours = kmeans(x, 10, generator=torch.Generator().manual_seed(0), sample_weight=w)
    estimator = KMeans(10, random_state=0).fit(CSR, sample_weight=w.numpy())
    np.testing.assert_array_equal(ours.labels.numpy(), estimator.labels_)
    assert float(ours.inertia) == pytest.approx(estimator.inertia_, rel=1e-12)
    restarts = kmeans(x, 10, init=torch.stack([init, torch.tensor(DENSE[-10:])]))
    alone = [kmeans(x, 10, init=start) for start in (init, torch.tensor(DENSE[-10:]))]
    assert float(restarts.inertia) == min(float(r.inertia) for r in alone)


def test_functional_kmeans_of_a_sparse_tensor_refuses_what_it_cannot_fit():
    from torchkmeans.functional import kmeans

    x = torch.tensor(DENSE).to_sparse_csr()
    with pytest.raises(TypeError, match=r"Expected init to be .* when x is sparse, got a callable"):
        kmeans(x, 3, init=lambda x, k, g: None)
    with pytest.raises(ValueError, match=r"n_samples=1797 should be >= n_clusters=2000\."):
        kmeans(x, 2000)
    with pytest.raises(TypeError, match=r"Expected x to be a floating-point tensor"):
        kmeans(torch.tensor(DENSE).long().to_sparse(), 3)
    bad = torch.tensor(DENSE)
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"Input x contains NaN or infinity"):
        kmeans(bad.to_sparse(), 3)
    with pytest.raises(ValueError, match=r"Expected a sparse x to be 2-D \(n, d\)"):
        kmeans(torch.zeros(2, 3, 4).to_sparse(), 1)


@pytest.mark.filterwarnings("ignore:No knee found")
@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_global_torch_defaults_change_no_sparse_result(paths, request, torch_defaults_changed):
    # Under torch.set_default_device (CUDA in a training script, meta here)
    # every block of rows was made on that device (torch.sparse_csr_tensor
    # without device=): fits, predictions and sweeps of sparse data on the
    # CPU raised "Could not run 'aten::addmm.out' ... 'SparseCsrMeta' backend".
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    from torchkmeans.functional import kmeans
    from torchkmeans.functional.sparse import sparse_kmeans_plusplus

    rng = np.random.default_rng(0)
    X = sparse.random(400, 30, density=0.1, format="csr", random_state=rng)
    X32 = X.astype(np.float32)
    weights = rng.uniform(0.5, 2.0, X.shape[0])
    coo = torch.from_numpy(X.toarray()).to_sparse()
    tensor_csr = coo.to_sparse_csr()

    def fitted(model, x, **kwargs):
        model.fit(x, **kwargs)
        state = [model.cluster_centers_, model.labels_, model.inertia_, model.n_iter_]
        return [*state, model.predict(x), model.transform(x), model.score(x)]

    def results() -> list:
        generator = torch.Generator(device="cpu").manual_seed(0)
        rows = _rows_of(X)
        minibatch = MiniBatchKMeans(6, batch_size=64, random_state=0)
        return [
            fitted(KMeans(5, random_state=0), X),
            fitted(KMeans(5, random_state=0, n_init=3), X32, sample_weight=weights),
            fitted(KMeans(5, init="random", random_state=0), X.tocsc()),
            fitted(KMeans(5, metric="cosine", random_state=0), X),
            fitted(KMeans(5, init=X[:5].toarray(), n_init=1), X),
            fitted(KMeans(5, random_state=0), coo),
            fitted(KMeans(5, random_state=0), tensor_csr.float()),
            KMeans(5, random_state=0).fit_predict(X),
            [*fitted(minibatch, X)[:3], minibatch.n_steps_],
            fitted(MiniBatchKMeans(6, batch_size=64, random_state=0, memory_budget=4_000), X)[:3],
            elbow(X, k=range(1, 5), random_state=0).inertia,
            elbow(X, k=range(1, 5), random_state=0, memory_budget=4_000).inertia,
            elbow(coo, k=range(1, 5), random_state=0, n_init=2).inertia,
            tuple(kmeans(coo, 4, generator=generator)),
            tuple(kmeans(tensor_csr, 4, init="random", n_init=2, generator=generator)),
            sparse_kmeans_plusplus(rows, 4, n_problems=2, generator=generator),
        ]

    expected = results()
    with torch_defaults_changed():
        got = results()
    assert_identical(got, expected)


def _sparse_batches(seed: int) -> tuple[object, np.ndarray]:
    """3,100 x 300 CSR, 2% stored, with rows of zeros among them, and weights."""
    rng = np.random.default_rng(seed)
    X = sparse.random(3000, 300, density=0.02, random_state=seed, format="csr")
    X = sparse.vstack([X, sparse.csr_matrix((100, 300))]).tocsr()[rng.permutation(3100)]
    return X, rng.uniform(0.5, 2.0, 3100)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("init", ["k-means++", "random", "array", "callable"])
def test_partial_fit_steps_sparse_batches_on_their_stored_values(monkeypatch, metric, init):
    import torchkmeans.minibatch as minibatch_module

    X, w = _sparse_batches(0)
    dense = X.toarray()
    if init == "array":
        init = dense[:6].copy()
    elif init == "callable":
        init = lambda rows, k, generator: rows[:k]  # noqa: E731
    # Light centres reseeded from the batch at most steps.
    params = dict(init=init, metric=metric, random_state=0, reassignment_ratio=0.3)
    expected = MiniBatchKMeans(6, **params)
    for start in range(0, 3100, 256):
        expected.partial_fit(dense[start : start + 256], sample_weight=w[start : start + 256])

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse batch was densified for its step")

    monkeypatch.setattr(minibatch_module, "minibatch_step", refuse)
    monkeypatch.setattr(_CSR, "read", refuse)
    ours = MiniBatchKMeans(6, **params)
    for start in range(0, 3100, 256):
        ours.partial_fit(X[start : start + 256], sample_weight=w[start : start + 256])
    assert ours.n_steps_ == expected.n_steps_
    np.testing.assert_allclose(ours.cluster_centers_, expected.cluster_centers_, atol=1e-12)
    np.testing.assert_allclose(ours.counts_, expected.counts_, rtol=1e-12)
    np.testing.assert_array_equal(ours.labels_, expected.labels_)
    assert ours.inertia_ == pytest.approx(expected.inertia_, rel=1e-12)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=on_the_cpu_paths_only)])
def test_partial_fit_on_sparse_batches_equals_scikit_learn_from_the_same_centres(
    monkeypatch, fused
):
    # On the CPU each step labels, sums and counts its rows in one pass over
    # their stored values (the fused kernel); the scatter of the stored
    # values after the products read them twice.
    from sklearn.cluster import MiniBatchKMeans as SklearnMiniBatchKMeans

    import torchkmeans.functional.sparse as sparse_module

    if fused:
        if not sparse_module._native.available():
            pytest.skip("no C++ compiler for the kernel")

        def refused(*args, **kwargs):
            raise AssertionError("sums of a CPU step taken by a scatter, not the fused kernel")

        monkeypatch.setattr(sparse_module.SparseRows, "sums", refused)
    else:
        monkeypatch.setattr(sparse_module, "_FUSED_MAX_CLUSTERS", 0)
    X, w = _sparse_batches(1)
    start = X[:5].toarray()
    # No randomness left: given centres and no reseeding.
    ours = MiniBatchKMeans(5, init=start, reassignment_ratio=0.0)
    theirs = SklearnMiniBatchKMeans(5, init=start, n_init=1, reassignment_ratio=0.0)
    for rows in np.array_split(np.arange(3100), 8):
        ours.partial_fit(X[rows], sample_weight=w[rows])
        theirs.partial_fit(X[rows], sample_weight=w[rows])
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, atol=1e-12)
    np.testing.assert_allclose(ours.counts_, theirs._counts, rtol=1e-12)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)


@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
def test_partial_fit_takes_sparse_batches_beyond_memory_budget_and_torch_sparse(layout):
    # A batch whose dense form exceeds memory_budget was refused.
    X, _ = _sparse_batches(2)
    batches = [X[start : start + 512] for start in range(0, 3100, 512)]
    ours = MiniBatchKMeans(4, random_state=0, memory_budget=100_000)
    dense = MiniBatchKMeans(4, random_state=0)
    for batch in batches:
        ours.partial_fit(batch)
        dense.partial_fit(batch.toarray())
    np.testing.assert_allclose(ours.cluster_centers_, dense.cluster_centers_, atol=1e-12)
    tensors = MiniBatchKMeans(4, random_state=0, memory_budget=100_000)
    for batch in batches:
        tensor = torch.tensor(batch.toarray())
        tensor = tensor.to_sparse() if layout == torch.sparse_coo else tensor.to_sparse_csr()
        tensors.partial_fit(tensor)
    assert isinstance(tensors.cluster_centers_, torch.Tensor)
    np.testing.assert_allclose(tensors.cluster_centers_.numpy(), dense.cluster_centers_, atol=1e-12)
    np.testing.assert_array_equal(tensors.labels_.numpy(), dense.labels_)


def test_sparse_search_of_trusted_rows_calls_no_dense_search(monkeypatch):
    # Rows whose labels the expansion settles are not searched again: the
    # dense search of no rows still fingerprinted every centroid.
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import sparse_distances, sparse_nearest

    X = sparse.random(200, 1000, density=0.01, random_state=0, format="csr")
    rows = _rows_of(X)
    centroids = torch.from_numpy(X[:50].toarray().reshape(5, 10, 1000).mean(1))
    expected_labels, expected = sparse_nearest(rows, centroids)
    expected_table = sparse_distances(rows, centroids)

    def refuse(*args, **kwargs):
        raise AssertionError("a dense search of no rows")

    monkeypatch.setattr(sparse_module, "_nearest", refuse)
    monkeypatch.setattr(sparse_module, "_distances_by_support", refuse)
    labels, distances = sparse_nearest(rows, centroids)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(distances, expected)
    np.testing.assert_array_equal(sparse_distances(rows, centroids), expected_table)


def test_sparse_products_reuse_blocks_with_int32_indices_built_once(monkeypatch):
    # Blocks of rows were built again in every iteration with int64 indices,
    # which MKL converted to int32 in every product (half the product's time
    # on a 1% stored TF-IDF matrix).
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import sparse_kmeans

    rows = _rows_of(CSR)
    operands = []
    product = torch.sparse.mm

    def spy(a, b):
        if a.layout == torch.sparse_csr and a.shape[1] == 64:
            operands.append(a)  # kept alive: the ids of freed blocks are reused
        return product(a, b)

    monkeypatch.setattr(torch.sparse, "mm", spy)
    monkeypatch.setattr(sparse_module, "_FUSED_MAX_CLUSTERS", 0)  # the products' path
    budget = 3 * 10 * 8 * 600  # blocks of 600 rows: 3 blocks
    result = sparse_kmeans(rows, 10, init=torch.from_numpy(INIT), memory_budget=budget)
    assert int(result.n_iter) > 2
    assert {a.crow_indices().dtype for a in operands} == {torch.int32}
    assert {a.col_indices().dtype for a in operands} == {torch.int32}
    assert len({id(a) for a in operands}) == 3
    monkeypatch.undo()
    sk = SklearnKMeans(10, init=INIT, n_init=1).fit(CSR)
    np.testing.assert_array_equal(result.labels.numpy(), sk.labels_)
    assert int(result.n_iter) == sk.n_iter_


@pytest.mark.parametrize("weighted", [False, True])
def test_sums_of_few_clusters_are_one_product_equal_to_the_scatter(monkeypatch, weighted):
    # For few clusters the scatter of the stored values (index arithmetic per
    # stored value) took twice the time of the assignment; the product of the
    # transposed rows and the one-hot labels adds the same values in the same
    # order: the same fit, to the bit.
    import torchkmeans.functional.sparse as sparse_module

    rows = _rows_of(CSR)
    init = torch.from_numpy(INIT[:4])
    weights = torch.rand(
        CSR.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    weights = weights if weighted else None
    scatter = sparse_module.SparseRows.sums
    monkeypatch.setattr(sparse_module, "_FUSED_MAX_CLUSTERS", 0)  # the products' path
    monkeypatch.setattr(sparse_module, "_PRODUCT_SUMS_UP_TO", 0)
    scattered = sparse_module.sparse_kmeans(rows, 4, init=init, sample_weight=weights)

    def refused(*args, **kwargs):
        raise AssertionError("the sums of few clusters are a product, not a scatter")

    monkeypatch.setattr(sparse_module.SparseRows, "sums", refused)
    monkeypatch.setattr(sparse_module, "_PRODUCT_SUMS_UP_TO", 10)
    product = sparse_module.sparse_kmeans(rows, 4, init=init, sample_weight=weights)
    monkeypatch.setattr(sparse_module.SparseRows, "sums", scatter)
    assert int(product.n_iter) > 2
    assert_identical(product.centroids, scattered.centroids)
    assert_identical(product.labels, scattered.labels)
    assert_identical(product.inertia, scattered.inertia)
    assert int(product.n_iter) == int(scattered.n_iter)
    sk = SklearnKMeans(4, init=INIT[:4], n_init=1).fit(
        CSR, sample_weight=None if weights is None else weights.numpy()
    )
    np.testing.assert_array_equal(product.labels.numpy(), sk.labels_)
    np.testing.assert_allclose(float(product.inertia), sk.inertia_, rtol=1e-10)
    assert int(product.n_iter) == sk.n_iter_


def test_sums_of_few_clusters_scatter_when_the_one_hot_labels_exceed_the_budget(monkeypatch):
    # The product's (n, k) one-hot labels are made whole: beyond
    # memory_budget the sums are the scatter's (the same fit).
    import torchkmeans.functional.sparse as sparse_module

    rows = _rows_of(CSR)
    init = torch.from_numpy(INIT[:4])
    monkeypatch.setattr(sparse_module, "_FUSED_MAX_CLUSTERS", 0)  # the products' path
    product = sparse_module.sparse_kmeans(rows, 4, init=init)
    transposed = []
    build = sparse_module._transposed
    monkeypatch.setattr(
        sparse_module, "_transposed", lambda *args: transposed.append(1) or build(*args)
    )
    budget = CSR.shape[0] * 4 * 8 - 1
    scattered = sparse_module.sparse_kmeans(rows, 4, init=init, memory_budget=budget)
    assert transposed == []
    assert_identical(scattered.labels, product.labels)
    assert_identical(scattered.centroids, product.centroids)


def test_sums_as_a_product_make_no_weighted_copy_of_the_stored_values(monkeypatch):
    # The weighted values (and the weights gathered per stored value) were
    # two nnz-sized temporaries kept for a fit whose sums are a product.
    from torch.utils._python_dispatch import TorchDispatchMode

    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import sparse_kmeans

    monkeypatch.setattr(sparse_module, "_FUSED_MAX_CLUSTERS", 0)  # the products' path
    rows = _rows_of(CSR)
    nnz = rows.values.numel()

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() == nnz:
                self.made.append(str(func))
            return out

    weights = torch.rand(
        CSR.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    with Copies() as copies:
        sparse_kmeans(rows, 2, init=torch.from_numpy(INIT[:2]), sample_weight=weights)
    # weights[row_of], then values * weights: gone (the transposed rows'
    # values, taken by index_select, are all the fit keeps).
    assert "aten.index.Tensor" not in copies.made, copies.made
    assert "aten.mul.Tensor" not in copies.made, copies.made


@on_the_cpu_paths_only
@pytest.mark.parametrize("k", [2, 5, 9, 20])
@pytest.mark.parametrize("weighted", [False, True])
def test_cpu_fits_label_and_sum_in_one_pass_over_the_stored_values(monkeypatch, k, weighted):
    # Each iteration read the stored values twice, a product for the scores
    # then a product or scatter for the sums (a fit at k=2 took 2-3x
    # scikit-learn's time, whose Cython loop reads them once): the fused
    # kernel labels and sums them in one pass, with scikit-learn's result.
    from torchkmeans.functional import _native

    if not _native.available():
        pytest.skip("no C++ compiler for the kernel")
    import torchkmeans.functional.sparse as sparse_module

    products, passes = [], []
    product, fused = torch.sparse.mm, _native.sparse_lloyd
    monkeypatch.setattr(torch.sparse, "mm", lambda *a: products.append(1) or product(*a))
    monkeypatch.setattr(
        sparse_module._native, "sparse_lloyd", lambda *a, **kw: passes.append(1) or fused(*a, **kw)
    )
    weights = np.random.default_rng(0).random(CSR.shape[0]) if weighted else None
    init = DENSE[np.arange(k) * 85]
    ours = KMeans(k, init=init).fit(CSR, sample_weight=weights)
    # (The last assignment is skipped where the labels repeated: see below.)
    assert products == [] and len(passes) in (ours.n_iter_, ours.n_iter_ + 1)
    theirs = SklearnKMeans(k, init=init, n_init=1).fit(CSR, sample_weight=weights)
    _same_fit(ours, theirs)
    X32 = CSR.astype(np.float32)
    ours = KMeans(k, init=init.astype(np.float32)).fit(X32, sample_weight=weights)
    theirs = SklearnKMeans(k, init=init.astype(np.float32), n_init=1).fit(
        X32, sample_weight=weights
    )
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=1e-5)
    assert ours.n_iter_ == theirs.n_iter_


def test_fits_without_the_kernel_take_the_sparse_products(monkeypatch):
    # No compiler: the products and sums of PyTorch ops, the same fit.
    import torchkmeans.functional.sparse as sparse_module

    monkeypatch.setattr(sparse_module._native, "available", lambda: False)
    monkeypatch.setattr(
        sparse_module._native, "sparse_lloyd", lambda *a, **kw: pytest.fail("the kernel ran")
    )
    ours = KMeans(5, init=INIT[:5]).fit(CSR)
    ours.predict(CSR)
    _same_fit(ours, SklearnKMeans(5, init=INIT[:5], n_init=1).fit(CSR))


def test_sums_of_a_fused_step_follow_the_rows_labelled_again():
    # Rows the expansion cannot label are labelled again densely after the
    # fused pass summed them into the expansion's cluster: those sums are
    # then taken again from the corrected labels.
    X, w = _rows_far_from_the_origin()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct clusters than asked
        km = KMeans(8, init=X[:8], max_iter=1).fit(sparse.csr_matrix(X), sample_weight=w)
    X64 = X.astype(np.float64)
    labels = ((X64[:, None] - X64[None, :8]) ** 2).sum(-1).argmin(1)
    means = np.stack([np.average(X64[labels == j], 0, weights=w[labels == j]) for j in range(8)])
    # float32 centres near 1e4: within one unit in the last place.
    np.testing.assert_allclose(km.cluster_centers_, means, rtol=0, atol=2e-3)


@on_the_cpu_paths_only
def test_a_kernel_without_threads_takes_no_sparse_fit_of_several_threads(monkeypatch):
    # A kernel built without OpenMP runs on one thread: with several, the
    # products (on all of them) label and sum the rows, as for dense rows.
    import torchkmeans.functional.sparse as sparse_module

    rows = _rows_of(CSR)
    monkeypatch.setattr(sparse_module._native, "available", lambda: True)
    monkeypatch.setattr(sparse_module._native, "parallel", lambda: False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not sparse_module._fused(rows, 5, None, totals=True)
        torch.set_num_threads(1)
        assert sparse_module._fused(rows, 5, None, totals=True)
        assert not sparse_module._fused(rows, 5, 5 * 65 * 8 - 1, totals=True)  # totals too big
        assert sparse_module._fused(rows, 5, 5 * 65 * 8 - 1, totals=False)
    finally:
        torch.set_num_threads(threads)


@on_the_cpu_paths_only
def test_cpu_fits_build_no_row_index_of_the_stored_values(monkeypatch):
    # The row of each stored value (repeat_interleave), and squared norms
    # scattered by it, were most of a fit's setup (1% stored TF-IDF, 20,000
    # x 5,000, k=2: 10 of 45 ms): the fused kernel reads the row bounds, and
    # the norms are summed from them, each row's squares in the same order.
    from torchkmeans.functional import _native

    if not _native.available():
        pytest.skip("no C++ compiler for the kernel")
    dense = DENSE.copy()
    dense[[3, 500, 1796]] = 0.0  # rows of nothing stored, the last among them
    X = sparse.csr_matrix(dense)
    rows = _rows_of(X)
    assert rows.row_index is None
    lengths = torch.from_numpy(np.diff(X.indptr))
    reference = torch.repeat_interleave(torch.arange(X.shape[0]), lengths)
    assert torch.equal(rows.row_of, reference)
    assert torch.equal(rows.with_row_of().row_index, reference)
    norms = torch.zeros(X.shape[0], dtype=torch.float64).index_add_(
        0, reference, torch.from_numpy(X.data).square()
    )
    assert torch.equal(rows.sq_norms, norms)
    cosine = _rows_of(X, metric="cosine")
    assert torch.equal(cosine.row_of, reference)

    built = []
    repeat = torch.repeat_interleave

    def repeat_interleave(*args, **kwargs):
        built.append(repeat(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(torch, "repeat_interleave", repeat_interleave)
    init = DENSE[[0, 900]]
    ours = KMeans(2, init=init).fit(X)
    # (Rows labelled again densely are gathered: a few, not all stored values.)
    assert all(index.numel() < X.nnz for index in built)
    _same_fit(ours, SklearnKMeans(2, init=init, n_init=1).fit(X))


def test_subsets_of_sparse_rows_gather_their_values_without_a_row_index():
    # A mini-batch step's rows were gathered by indexing with tensors, with
    # the row of each stored value built for a fused step that reads none
    # (a third of a sparse MiniBatchKMeans fit): index_select, no index.
    dense = DENSE.copy()
    dense[[3, 1796]] = 0.0
    X = sparse.csr_matrix(dense)
    rows = _rows_of(X)
    index = torch.tensor([1796, 5, 3, 5, 0, 1795, 3])
    subset = rows.subset(index)
    assert subset.row_index is None
    picked = X[index.numpy()]
    assert torch.equal(subset.crow, torch.from_numpy(picked.indptr.astype(np.int64)))
    assert torch.equal(subset.col, torch.from_numpy(picked.indices.astype(np.int64)))
    assert torch.equal(subset.values, torch.from_numpy(picked.data))
    assert torch.equal(subset.sq_norms, rows.sq_norms[index])
    expected = torch.from_numpy(dense[index.numpy()])
    assert torch.equal(subset.take(torch.arange(len(index))), expected)
    lengths = torch.from_numpy(np.diff(picked.indptr))
    assert torch.equal(subset.row_of, torch.repeat_interleave(torch.arange(len(index)), lengths))
    empty = rows.subset(torch.tensor([3, 1796], dtype=torch.int64))
    assert empty.crow.tolist() == [0, 0, 0] and empty.values.numel() == 0


def test_the_scale_of_sparse_rows_is_read_without_a_copy_of_their_values():
    # |values| then its maximum: a temporary of all the stored values (8 MB
    # for a million) at every fit; their extremes give the same largest.
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchkmeans.functional.sparse import sparse_scale_exponent

    rows = _rows_of(CSR)
    nnz = rows.values.numel()

    class Copies(TorchDispatchMode):
        made = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == nnz:
                Copies.made += 1
            return out

    with Copies():
        exponent = sparse_scale_exponent(rows)
    assert Copies.made == 0 and exponent == 0
    for scale, values in ((1e-30, -rows.values), (1e30, rows.values)):
        scaled = rows._replace(values=values.to(torch.float32) * scale)
        assert sparse_scale_exponent(scaled) == sparse_scale_exponent(
            scaled._replace(values=scaled.values.abs())
        )
        assert sparse_scale_exponent(scaled) != 0


def test_the_scale_of_centroids_is_read_without_a_copy_of_them():
    # |centroids| then its maximum: a temporary of all the centres at every
    # sparse partial_fit, twice (8 MB at k=20, d=50,000); their extremes
    # give the same largest magnitude.
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchkmeans.functional.sparse import sparse_scale_exponent

    rows = _rows_of(CSR)
    centroids = torch.from_numpy(INIT)
    size = centroids.numel()

    class Copies(TorchDispatchMode):
        made = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == size:
                Copies.made += 1
            return out

    with Copies():
        exponent = sparse_scale_exponent(rows, centroids)
    assert Copies.made == 0 and exponent == 0
    small = rows._replace(values=rows.values.to(torch.float32) * 1e-30)
    for scale in (1e-30, -1e-30, 1e30, -1e30):
        scaled = centroids.to(torch.float32) * scale
        expected = sparse_scale_exponent(small, scaled.abs())
        assert sparse_scale_exponent(small, scaled) == expected
        assert expected != 0  # underflows (1e-30) or overflows (1e30): scaled


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [2, 7, 20, 100])
def test_the_kernel_transposes_centroids_of_many_features_tile_by_tile(dtype, k):
    # The kernel transposes the centroids to (d, k) a tile of columns at a
    # time (written column by column, the transpose took 3.2 ms of a 3.4 ms
    # call at k=20, d=50,000), four centroids' norms at a time and the rest
    # one by one (k=7: both): every tile, the last one partial, gives each
    # row its nearest centre, its distance and its cluster's sums.
    from torchkmeans.functional import _native

    if not _native.available():
        pytest.skip("no C++ compiler for the kernel")
    g = torch.Generator().manual_seed(k)
    n, d = 200, 2_500  # 1, 2 or 3 tiles of 1,024, 85 or 19 columns and a part of one
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    x *= torch.rand(n, d, generator=g, dtype=torch.float64) < 0.02
    centroids = x[torch.randperm(n, generator=g)[:k]] + 0.01 * torch.rand(k, d, generator=g)
    X = sparse.csr_matrix(x.numpy())
    crow = torch.from_numpy(X.indptr.astype(np.int64))
    col = torch.from_numpy(X.indices.astype(np.int64))
    values = torch.from_numpy(X.data).to(dtype)
    labels = torch.empty(n, dtype=torch.int64)
    found = torch.empty(n, dtype=dtype)
    totals = torch.empty((k, d + 1), dtype=torch.float64)
    _native.sparse_lloyd(
        crow, col, values, d, centroids.to(dtype), values.new_zeros(n).index_add_(
            0, torch.repeat_interleave(torch.arange(n), crow.diff()), values.square()
        ), labels, found, totals=totals, threads=1,
    )  # fmt: skip
    distances = torch.cdist(x, centroids).square()
    assert torch.equal(labels, distances.argmin(1))
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(found.double(), distances.min(1).values, rtol=0, atol=tolerance)
    sums = torch.zeros(k, d + 1, dtype=torch.float64).index_add_(
        0, labels, torch.cat([x.to(dtype).double(), torch.ones(n, 1, dtype=torch.float64)], 1)
    )
    assert torch.equal(totals, sums)


@on_the_cpu_paths_only
@pytest.mark.parametrize("fused", [False, True])
def test_a_fit_whose_labels_repeat_skips_the_last_assignment(monkeypatch, fused):
    # A run that stops with its labels unchanged returns the centres it
    # labelled the rows with (the same labels give the same sums): the last
    # assignment, a pass over every stored value (a third of a fit of 2
    # iterations), gave the same labels again. scikit-learn skips it too.
    # (The accelerators' loop, which reads nothing on the host per
    # iteration, scores the rows its bounds cannot settle in passes of
    # their own: it is counted differently.)
    import torchkmeans.functional.sparse as sparse_module

    if not fused:
        monkeypatch.setattr(sparse_module, "_FUSED_MAX_CLUSTERS", 0)
    passes = []
    scored = sparse_module._scored
    monkeypatch.setattr(
        sparse_module, "_scored", lambda *a, **kw: passes.append(1) or scored(*a, **kw)
    )
    init = INIT[:5]
    # Labels repeated; centres still moving at the last iteration allowed, or
    # by less than a large tol: labelled again.
    for tol, max_iter, last in ((0.0, 300, 0), (0.0, 2, 1), (1.0, 300, 1)):
        passes.clear()
        ours = KMeans(5, init=init, tol=tol, max_iter=max_iter).fit(CSR)
        theirs = SklearnKMeans(5, init=init, n_init=1, tol=tol, max_iter=max_iter).fit(CSR)
        _same_fit(ours, theirs)
        assert len(passes) == ours.n_iter_ + last, (tol, max_iter)
        labels, distances = sparse_module.sparse_nearest(
            _rows_of(CSR), torch.from_numpy(ours.cluster_centers_)
        )
        assert np.array_equal(labels.numpy(), ours.labels_)
        assert float(distances.sum()) == pytest.approx(ours.inertia_, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_equal_to_a_centre_are_labelled_again_without_a_dense_search(monkeypatch, dtype):
    # A mini-batch step reseeds centres onto rows; those rows, drawn again or
    # labelled by partial_fit, are suspects of the expansion (distance near
    # 0 for their norm): each was searched densely against every centre,
    # 5-9 ms for one row against 20 centres of 50,000 features, half a step.
    # From differences: the nearest centre, at distance 0, the centres unchanged.
    import torchkmeans.functional.sparse as sparse_module

    X = sparse.random(300, 2000, density=0.01, random_state=0, format="csr")
    rows = sparse_module.sparse_rows(
        torch.from_numpy(X.indptr),
        torch.from_numpy(X.indices),
        torch.from_numpy(X.data),
        X.shape[1],
        device=torch.device("cpu"),
        dtype=dtype,
    )
    dense = torch.from_numpy(X.toarray()).to(dtype)
    centroids = dense[:60].reshape(6, 10, 2000).mean(1)
    centroids[[1, 4]] = dense[[7, 250]]  # centres reseeded onto rows 7 and 250
    given = centroids.clone()

    def refuse(*args, **kwargs):
        raise AssertionError("a dense search of the suspects")

    monkeypatch.setattr(sparse_module, "_nearest", refuse)
    labels, distances = sparse_module.sparse_nearest(rows, centroids)
    exact = ((dense.double()[:, None] - centroids.double()[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(exact[torch.arange(300), labels], exact.min(1).values)
    assert labels[[7, 250]].tolist() == [1, 4]
    assert distances[[7, 250]].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(distances.double(), exact.min(1).values, rtol=1e-6)
    assert torch.equal(centroids, given)


@copies_found_on_the_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repeated_sparse_rows_are_those_of_their_dense_rows(dtype):
    # The reseeding's copies, found from the stored values, are those found
    # from the dense rows: copies of a centroid (even with explicit zeros
    # stored, or -0.0), of an earlier row, and rows of zeros against a centroid
    # of zeros.
    from torchkmeans.functional.minibatch import _repeated_rows
    from torchkmeans.functional.sparse import _repeated_sparse_rows

    rng = np.random.default_rng(0)
    found = 0
    for trial in range(40):
        n, d, k = 30, int(rng.integers(1, 40)), int(rng.integers(1, 8))
        dense = rng.integers(-2, 3, (n, d)) * (rng.random((n, d)) < 0.2)
        dense[rng.integers(0, n, 3)] = 0  # rows of zeros
        # Every third matrix with an explicit zero and a -0.0 stored.
        _, rows = _csr_rows(dense, dtype, stored_zeros=trial % 3 == 0)
        picked = torch.from_numpy(rng.integers(0, n, k + 3))
        centroids = torch.from_numpy(rng.normal(size=(k, d))).to(dtype)
        copies = rng.integers(0, n, 2)
        centroids[0] = rows.take(torch.from_numpy(copies[:1]))[0]
        if k > 1 and trial % 2:
            centroids[1] = 0.0 if trial % 4 == 1 else rows.take(torch.from_numpy(copies[1:]))[0]
        expected = _repeated_rows(rows.take(picked), centroids)
        got = _repeated_sparse_rows(rows, picked, centroids)
        found += expected is not None
        if expected is None:
            assert got is None
        else:
            assert got is not None and torch.equal(got, expected), trial
    assert 10 < found < 40


@copies_found_on_the_cpu
@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_sparse_minibatch_reseeding_finds_copies_without_dense_candidates(monkeypatch):
    # Copies among the reseeding's candidates were found from their dense
    # rows and the centroids' fingerprints (k * d values, most of a sparse
    # step's time with 50,000 features): found from the stored values, the
    # fits are those of the dense search for copies.
    import torchkmeans.functional.minibatch as minibatch_module
    import torchkmeans.functional.sparse as sparse_module

    X = sparse.random(2000, 3000, density=0.005, random_state=0, format="csr")
    X.data[:] = np.round(X.data * 4)  # few distinct values
    X = sparse.vstack([X, X[:300]]).tocsr()  # equal rows

    def fits() -> list[MiniBatchKMeans]:
        return [
            MiniBatchKMeans(40, random_state=seed, batch_size=256, max_iter=3).fit(X)
            for seed in range(3)
        ]

    found = sparse_module._repeated_sparse_rows
    monkeypatch.setattr(
        sparse_module,
        "_repeated_sparse_rows",
        lambda rows, picked, centroids: minibatch_module._repeated_rows(
            rows.take(picked), centroids
        ),
    )
    expected = fits()
    monkeypatch.undo()
    copies = []

    def counted(rows, picked, centroids):
        repeated = found(rows, picked, centroids)
        copies.append(0 if repeated is None else int(repeated.sum()))
        return repeated

    def refuse(*args, **kwargs):
        raise AssertionError("the candidates' dense rows compared")

    monkeypatch.setattr(sparse_module, "_repeated_sparse_rows", counted)
    monkeypatch.setattr(minibatch_module, "_repeated_rows", refuse)
    for ours, dense in zip(fits(), expected):
        np.testing.assert_array_equal(ours.cluster_centers_, dense.cluster_centers_)
        np.testing.assert_array_equal(ours.labels_, dense.labels_)
    assert sum(copies) > 0


@on_the_cpu_paths_only
@pytest.mark.parametrize("weighted", [False, True])
def test_cpu_fits_pass_the_kernel_int32_columns_with_the_same_results(monkeypatch, weighted):
    # The fused kernel read int64 columns: 16 bytes per stored float64 value
    # against scikit-learn's 12, most of a pass at k=2. A fit converts them
    # to int32 once; the kernel's labels, distances and totals are the same.
    import torchkmeans.functional._native as native_module
    import torchkmeans.functional.sparse as sparse_module

    if not native_module.available():
        pytest.skip("the kernel is not built")
    rows = _rows_of(CSR)
    centroids = torch.from_numpy(INIT[:5])
    weights = torch.from_numpy(np.random.default_rng(0).random(CSR.shape[0]))
    out = {}
    for col in (rows.col, rows.col.to(torch.int32)):
        labels = torch.empty(rows.n_rows, dtype=torch.int64)
        distances = torch.empty(rows.n_rows, dtype=torch.float64)
        totals = torch.empty((5, rows.n_features + 1), dtype=torch.float64)
        total = native_module.sparse_lloyd(
            rows.crow,
            col,
            rows.values,
            rows.n_features,
            centroids,
            rows.sq_norms,
            labels,
            distances,
            weights=weights if weighted else None,
            totals=totals,
        )
        out[col.dtype] = (labels, distances, totals, total)
    for got, expected in zip(out[torch.int32], out[torch.int64]):
        assert_identical(got, expected)

    columns = []
    kernel = native_module.sparse_lloyd
    monkeypatch.setattr(
        native_module,
        "sparse_lloyd",
        lambda crow, col, *a, **kw: columns.append(col.dtype) or kernel(crow, col, *a, **kw),
    )
    w = weights.numpy() if weighted else None
    ours = KMeans(5, init=INIT[:5]).fit(CSR, sample_weight=w)
    assert columns and set(columns) == {torch.int32}
    theirs = SklearnKMeans(5, init=INIT[:5], n_init=1).fit(CSR, sample_weight=w)
    _same_fit(ours, theirs)
    assert sparse_module._FUSED_MAX_CLUSTERS >= 5


@on_the_cpu_paths_only
def test_a_sparse_step_densifies_only_the_rows_of_reseeded_centroids(monkeypatch):
    # The reseeding made the rows of all k centroids dense (k x d values,
    # the where between them and the others as many again), then kept
    # those of the few reseeded: only these are made dense now, with the
    # same step.
    import torchkmeans.functional.minibatch as minibatch_module
    import torchkmeans.functional.sparse as sparse_module

    rows = _rows_of(CSR[:300])
    centroids = torch.from_numpy(DENSE[[0, 100, 200, 250, 290]].copy())
    centroids[3:] += 100.0  # no rows: light, reseeded
    ws = torch.tensor([40.0, 40.0, 40.0, 0.1, 0.1], dtype=torch.float64)

    def step() -> object:
        return sparse_module.sparse_minibatch_step(
            rows, centroids, ws, random_reassign=True, generator=torch.Generator().manual_seed(0)
        )

    with monkeypatch.context() as patched:
        patched.setattr(minibatch_module, "_device", mock.Mock(wraps=minibatch_module._device))
        patched.setattr(minibatch_module._device, "on_host", lambda device: False)
        expected = step()  # every centroid's row made dense, then a where
    taken = []
    take = sparse_module.SparseRows.take

    def counted(self, index):
        taken.append(int(index.numel()))
        return take(self, index)

    monkeypatch.setattr(sparse_module.SparseRows, "take", counted)
    ours = step()
    # The two reseeded centroids' rows (before them, candidates of equal
    # fingerprints compared whole), never one per centroid.
    assert taken[-1] == 2 and 5 not in taken
    assert torch.equal(ours.centroids, expected.centroids)
    assert torch.equal(ours.weight_sums, expected.weight_sums)
    assert torch.equal(ours.labels, expected.labels)


@pytest.mark.parametrize("scale", [1.0, 2.0**-85, 2.0**63])
def test_sparse_partial_fit_reads_the_scale_of_its_centres_once(monkeypatch, scale):
    # partial_fit read the largest entry of all k x d centres before its
    # step and again for the labels after it. The new centres are weighted
    # means of the old ones and the batch rows (or rows): where neither
    # needs a scale, neither do they, and they are not read again. Data
    # that needs one (float32 near 1e-25 or 1e19) is still read and scaled:
    # the same fits either way.
    import torchkmeans.minibatch as minibatch_module

    rng = np.random.default_rng(0)
    dense = rng.normal(size=(1200, 40)) * (rng.random((1200, 40)) < 0.2)
    X = sparse.csr_matrix((dense * scale).astype(np.float32))
    batches = [X[start : start + 200] for start in range(0, 1200, 200)]
    read = []
    exponent_of = minibatch_module.sparse_scale_exponent
    needs_no_scale = minibatch_module.sparse_needs_no_scale

    def counted(rows, centroids=None):
        read.append(centroids is not None)
        return exponent_of(rows, centroids)

    def fit(decide) -> MiniBatchKMeans:
        monkeypatch.setattr(minibatch_module, "sparse_needs_no_scale", decide)
        model = MiniBatchKMeans(4, random_state=0, batch_size=200)
        model.partial_fit(batches[0])  # seeds (reads the rows) and steps
        read.clear()
        for batch in batches[1:]:
            model.partial_fit(batch)
        return model

    monkeypatch.setattr(minibatch_module, "sparse_scale_exponent", counted)
    expected = fit(lambda rows: False)  # read before and after each step
    assert read.count(True) == 2 * len(batches[1:])
    ours = fit(needs_no_scale)
    assert read.count(True) == (1 if scale == 1.0 else 2) * len(batches[1:])
    np.testing.assert_array_equal(ours.cluster_centers_, expected.cluster_centers_)
    np.testing.assert_array_equal(ours.labels_, expected.labels_)
    assert ours.inertia_ == expected.inertia_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_between_sparse_rows_are_those_of_their_dense_differences(dtype):
    # k-means++ measures again, from the stored values, the rows its
    # expansion cannot trust (a candidate's own row, its copies): each column
    # either stores counted once, explicit zeros and -0.0 as zeros; a row
    # equal to another at distance 0, however far from the origin.
    from torchkmeans.functional.sparse import _distances_between

    rng = np.random.default_rng(1)
    for trial in range(30):
        n, d = 25, int(rng.integers(1, 60))
        dense = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.3)
        dense[rng.integers(0, n, 2)] = 0.0  # rows of zeros
        dense[3] = dense[4] = dense[5] + (1e6 if trial % 2 else 0.0) * (dense[5] != 0)
        # Every third matrix with an explicit zero and a -0.0 stored.
        X, rows = _csr_rows(dense, dtype, stored_zeros=trial % 3 == 0)
        a = torch.from_numpy(rng.integers(0, n, 7))
        b = torch.cat([torch.tensor([3, 4]), torch.from_numpy(rng.integers(0, n, 3))])
        got = _distances_between(rows.subset(a), rows.subset(b))
        stored = torch.from_numpy(X.toarray()).to(dtype).double()
        expected = (stored[a][:, None] - stored[b][None]).square().sum(-1)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0)
        copies = got[(a == 3) | (a == 4)][:, :2]
        assert torch.equal(copies, torch.zeros_like(copies)), trial


def _year_among_one_hot(n: int, dtype: type, seed: int = 0) -> object:
    """``n`` rows of 200 columns 2% stored, then a year stored in every row."""
    rng = np.random.default_rng(seed)
    one_hot = sparse.random(n, 200, density=0.02, random_state=seed, format="csr")
    year = sparse.csr_matrix((2000.0 + rng.integers(0, 20, n))[:, None])
    return sparse.hstack([one_hot, year]).tocsr().astype(dtype)


def _nearest_in_float64(X: object, model: KMeans) -> np.ndarray:
    """``(n,)`` squared distances of X's rows to the model's centres, the
    least and those of their labels, measured in float64."""
    dense = X.toarray().astype(np.float64)
    gaps = ((dense[:, None] - np.asarray(model.cluster_centers_, np.float64)[None]) ** 2).sum(-1)
    return gaps.min(1), gaps[np.arange(len(dense)), model.labels_]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_far_from_the_origin_in_columns_all_store_are_fitted_shifted(monkeypatch, dtype):
    # A year stored in every row made every float32 row a suspect of the
    # expansion, measured again from its stored columns in every iteration
    # (200,000 x 1,001, k=20: 10 iterations 4.0 s, scikit-learn 0.21 s). Shifted by the
    # means of the columns every row stores, the rows store the same columns
    # and the expansion labels them; the centres are shifted back.
    import torchkmeans.functional.sparse as sparse_module

    X = _year_among_one_hot(3000, dtype)
    init = X[:6].toarray()
    measured = []
    support = sparse_module._distances_by_support

    def counted(rows, *args):
        measured.append(rows.n_rows)
        return support(rows, *args)

    monkeypatch.setattr(sparse_module, "_distances_by_support", counted)
    ours = KMeans(6, init=init).fit(X)
    assert sum(measured) < 0.05 * 3000 * ours.n_iter_
    least, labelled = _nearest_in_float64(X, ours)
    np.testing.assert_array_equal(labelled, least)  # the nearest returned centres
    np.testing.assert_allclose(ours.inertia_, least.sum(), rtol=1e-5)
    theirs = SklearnKMeans(6, init=init.astype(np.float64), n_init=1).fit(X.astype(np.float64))
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, atol=1e-3)
    assert ours.n_iter_ == theirs.n_iter_
    # Seeded by k-means++ and fitted with restarts and weights, alike.
    w = np.random.default_rng(1).uniform(0.5, 2.0, 3000)
    seeded = KMeans(6, random_state=0, n_init=3).fit(X, sample_weight=w)
    least, labelled = _nearest_in_float64(X, seeded)
    np.testing.assert_array_equal(labelled, least)
    np.testing.assert_allclose(seeded.inertia_, (least * w).sum(), rtol=1e-5)


def test_a_shift_that_rounds_the_rows_labels_them_unshifted(monkeypatch):
    # Values a shift cannot subtract exactly (a tenth of the years times
    # 1e-6, against a mean near 1.8e3): the fit is of the rows as rounded,
    # its labels those of the rows as given, against the returned centres.
    from torchkmeans.functional.sparse import _frame_shift, _shifted

    rng = np.random.default_rng(2)
    X = _year_among_one_hot(2000, np.float32, seed=2).tolil()
    X[:, 200] = X[:, 200].toarray() * rng.choice([1e-6, 1.0], size=(2000, 1), p=[0.1, 0.9])
    X = X.tocsr()
    rows = _rows_of(X, dtype=torch.float32)
    shift = _frame_shift(rows)
    assert shift is not None and not _shifted(rows, shift)[1]
    import torchkmeans.functional.sparse as sparse_module

    searched = []
    search = sparse_module.sparse_nearest

    def spied(rows, *args):
        searched.append(rows.values.clone())
        return search(rows, *args)

    monkeypatch.setattr(sparse_module, "sparse_nearest", spied)
    model = KMeans(5, random_state=0).fit(X)
    assert any(torch.equal(values, torch.from_numpy(X.data)) for values in searched)
    least, labelled = _nearest_in_float64(X, model)
    np.testing.assert_array_equal(labelled, least)
    np.testing.assert_allclose(model.inertia_, least.sum(), rtol=1e-5)


@on_the_cpu_paths_only  # the transpose is built on the CPU only
def test_kmeans_plusplus_takes_no_transpose_where_a_column_is_stored_in_every_row(monkeypatch):
    # The transpose's products meet, per stored value, its column's rows:
    # through a column every row stores, each product was dense. The share a
    # stored value meets is the density where columns are alike.
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import _met_share, sparse_kmeans_plusplus

    uniform = _rows_of(sparse.random(4000, 400, density=0.01, random_state=0, format="csr"))
    assert _met_share(uniform) == pytest.approx(0.01, rel=0.1)
    with_year = _rows_of(_year_among_one_hot(4000, np.float64))
    assert _met_share(with_year) > 0.2
    built = []
    transposed = sparse_module._transposed

    def counted(*args):
        built.append(1)
        return transposed(*args)

    monkeypatch.setattr(sparse_module, "_transposed", counted)
    sparse_kmeans_plusplus(uniform, 30, generator=torch.Generator().manual_seed(0))
    assert built == [1]
    seeds = sparse_kmeans_plusplus(with_year, 30, generator=torch.Generator().manual_seed(0))
    assert built == [1] and seeds.shape == (1, 30)


def test_frame_shift_only_for_columns_every_row_stores_far_from_the_origin():
    from torchkmeans.functional.sparse import _frame_shift, _shifted

    rows = _rows_of(_year_among_one_hot(500, np.float64))
    shift = _frame_shift(rows)
    assert shift is not None and bool((shift[:200] == 0).all())
    assert float(shift[200]) == pytest.approx(2009.5, abs=1.0)
    shifted, exact = _shifted(rows, shift)
    assert exact and torch.equal(shifted.col, rows.col)
    np.testing.assert_allclose(shifted.values + shift[rows.col], rows.values, rtol=0, atol=0)
    from torchkmeans.functional.sparse import sparse_kmeans

    with pytest.raises(ValueError, match=r"Expected init to be of shape \(3, 201\)"):
        sparse_kmeans(rows, 3, init=torch.zeros(3, 5, dtype=torch.float64))
    assert _frame_shift(_rows_of(CSR)) is None  # no column every row stores
    near = _year_among_one_hot(500, np.float64).tolil()
    near[:, 200] = np.random.default_rng(0).normal(size=(500, 1)) + 0.5
    assert _frame_shift(_rows_of(near.tocsr())) is None  # stored everywhere, near 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmeans_plusplus_measures_rows_far_from_the_origin_against_its_candidates_columns(
    monkeypatch, dtype
):
    # Rows far from the origin (a year among one-hot columns) are all
    # measured again against each round's candidates: from the differences,
    # every row was densified over the columns either stores (float32,
    # 20,000 x 1,001: k-means++ 0.6 s of a 0.7 s fit, now 0.09 s). From the
    # rows' own columns and the candidates' squares off them, the distances
    # are those of the differences to the trusted precision, copies at 0.
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import _distances_to_few

    rng = np.random.default_rng(2)
    n, d = 300, 120
    dense = (rng.random((n, d)) < 0.03) * rng.normal(size=(n, d))
    dense[:, 7] = 2000.0 + rng.integers(0, 20, n)  # stored in every row
    dense[11] = dense[12]
    X, rows = _csr_rows(dense, dtype, stored_zeros=False)
    b = torch.tensor([12, 40, 41, 40])
    between = sparse_module._distances_between

    def refused(*args):
        raise AssertionError("rows densified over their columns")

    monkeypatch.setattr(sparse_module, "_distances_between", refused)
    got = _distances_to_few(rows, rows.subset(b), memory_budget=20_000)  # in parts
    stored = torch.from_numpy(X.toarray()).to(dtype).double()
    expected = (stored[:, None] - stored[b][None]).square().sum(-1)
    assert got.shape == (n, 4) and got.dtype == torch.float64
    np.testing.assert_allclose(got, expected, rtol=2.0**-16, atol=0)
    assert got[11, 0] == got[12, 0] == 0.0 and got[40, 1] == got[40, 3] == 0.0
    # Rows that store most of the columns they share with the candidates,
    # and a few rows: from the differences.
    monkeypatch.setattr(sparse_module, "_distances_between", between)
    few = rows.subset(torch.tensor([11, 12, 40]))
    np.testing.assert_array_equal(_distances_to_few(few, few, None), between(few, few))
    full = _csr_rows(1e4 + rng.normal(size=(1000, 6)), dtype, stored_zeros=False)[1]
    picked = full.subset(torch.tensor([0, 5]))
    np.testing.assert_array_equal(_distances_to_few(full, picked, None), between(full, picked))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_of_sparse_rows_to_centres_from_their_columns_do_not_cancel(monkeypatch, dtype):
    # The rows the expansion cannot label (a row on its centre, rows far from
    # the origin) are measured again from their stored columns and the
    # centres' squares off them: a row equal to a centre at distance 0, a
    # centre within a row's columns or a hair outside them (where |c|^2 less
    # its squares on the columns cancels) to the trusted precision, and the
    # caller's centres untouched (float64 centres were once squared in place).
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import _distances_by_support, _wide_squared_norms

    # Rows storing most of their columns are left to the dense search.
    X, rows = _csr_rows(np.ones((4, 8)), dtype, stored_zeros=False)
    centres = torch.zeros((3, 8), dtype=dtype)
    assert _distances_by_support(rows, centres, _wide_squared_norms(centres)) is None
    # Here any share, and pairs summed off the rows however many.
    monkeypatch.setattr(sparse_module, "_SUPPORT_MAX_STORED_SHARE", 1.0)
    monkeypatch.setattr(sparse_module, "_SUPPORT_MAX_PAIRS_PER_ROW", 100)
    rng = np.random.default_rng(2)
    for trial in range(40):
        n, d, k = 25, int(rng.integers(2, 80)), int(rng.integers(3, 8))
        scale = 1e4 if trial % 2 else 1.0
        dense = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.3) * scale
        dense[rng.integers(0, n, 2)] = 0.0  # rows of zeros
        dense[6, 0], dense[6, 1], dense[7, 0] = scale, 0.0, scale  # a stored and a free column
        X, rows = _csr_rows(dense, dtype, stored_zeros=trial % 3 == 0)
        stored = torch.from_numpy(X.toarray()).to(dtype)
        centres = torch.from_numpy(rng.normal(size=(k, d)) * scale).to(dtype)
        centres[0] = stored[5]
        centres[1] = stored[6]
        centres[1, 1] = 1e-7 * scale  # a hair outside row 6's columns
        centres[2] = stored[7]
        centres[2, 0] += 1e-3 * scale  # within row 7's columns
        before = centres.clone()
        part = torch.cat([torch.tensor([5, 6, 7]), torch.from_numpy(rng.integers(0, n, 6))])
        got = _distances_by_support(rows.subset(part), centres, _wide_squared_norms(centres))
        assert torch.equal(centres, before), trial
        exact = (stored[part].double()[:, None] - centres.double()[None]).square().sum(-1)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got, exact, rtol=2.0**-17, atol=0, err_msg=str(trial))
        assert float(got[0, 0]) == 0.0
        assert torch.equal(got[:3].argmin(1), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_kmeans_plusplus_seeds_alike_by_either_product_densifying_no_row(
    monkeypatch, metric, dtype
):
    # Many draws score the candidates by a sparse-sparse product with the
    # rows' transpose, few by the sparse-dense product: the same distances
    # (a candidate's own row and its copies at 0) and the same seeds, and
    # neither densifies a row of 50,000 features.
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional import _device

    X = sparse.random(400, 50_000, density=0.002, random_state=0, format="csr")
    X = sparse.vstack([X, X[:5] * 1.0, X[10:11] * 3.0]).tocsr()  # copies, a scaled copy
    rows = _rows_of(X, metric, dtype)
    dense = torch.from_numpy(X.toarray()).to(dtype).double()
    if metric == "cosine":
        dense = dense / dense.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def refuse(*args, **kwargs):
        raise AssertionError("rows densified")

    monkeypatch.setattr(sparse_module, "dense_rows", refuse)
    candidates = torch.tensor([0, 2, 10, 400, 405])
    exact = (dense[candidates][:, None] - dense[None]).square().sum(-1)
    if metric == "cosine":
        exact = exact / 2  # 1 - cos of unit rows
    seeds, transposes = {}, []
    real_transposed = sparse_module._transposed
    monkeypatch.setattr(
        sparse_module,
        "_transposed",
        lambda *args: transposes.append(1) or real_transposed(*args),
    )
    for built in (False, True):
        monkeypatch.setattr(sparse_module, "_TRANSPOSE_ROUNDS", 1 if built else 10**9)
        transposes.clear()
        to_rows = sparse_module._to_rows(rows, None, 100, 5)
        # The transpose is built on the CPU only (not on the accelerator paths).
        assert bool(transposes) == (built and _device.on_host(rows.device))
        got = to_rows(candidates).double()
        tolerance = 1e-5 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(got, exact, rtol=tolerance, atol=tolerance)
        if metric == "euclidean":
            own = got[torch.arange(5), candidates]
            assert torch.equal(own, torch.zeros(5, dtype=torch.float64))
            assert got[0, 400] == 0 and got[1, 402] == 0  # copies
        seeds[built] = sparse_module.sparse_kmeans_plusplus(
            rows, 12, n_problems=2, generator=torch.Generator().manual_seed(0)
        )
    assert torch.equal(seeds[False], seeds[True])
    assert all(len(set(run)) == 12 for run in seeds[True].tolist())


def test_sparse_suspects_left_to_the_dense_search_go_in_parts_of_the_memory_budget(monkeypatch):
    # Parts of suspects were sized for the stored columns' work alone: left
    # to the dense search, a part of thousands of rows of 50,000 features
    # was densified whole, far past memory_budget.
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional.sparse import sparse_nearest

    X = sparse.random(200, 5_000, density=0.01, random_state=0, format="csr")
    rows = _rows_of(X)
    centroids = torch.from_numpy(X[:10].toarray())  # rows 0-9 sit on their centres
    budget = 3 * 5_000 * 8 * 2  # dense parts of 2 rows
    searched = []
    dense_search = sparse_module._nearest

    def spy(x, *args, **kwargs):
        searched.append(x.shape[0])
        return dense_search(x, *args, **kwargs)

    monkeypatch.setattr(sparse_module, "_nearest", spy)
    monkeypatch.setattr(sparse_module, "_SUPPORT_MAX_PAIRS_PER_ROW", -1)  # always left to it
    labels, distances = sparse_nearest(rows, centroids, memory_budget=budget)
    assert searched and max(searched) <= 2, searched
    np.testing.assert_array_equal(labels[:10], np.arange(10))
    assert float(distances[:10].abs().max()) == 0.0
    monkeypatch.undo()
    expected_labels, expected = sparse_nearest(rows, centroids, memory_budget=budget)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(distances, expected, rtol=1e-12)


@on_the_cpu_paths_only
def test_float32_suspects_are_scored_again_in_float64(monkeypatch):
    # A year among one-hot columns: most float32 rows are suspects of the
    # expansion, each measured again from its stored columns (200,000 x
    # 1,001, k=20: predict 0.14 s, scikit-learn's 0.01 s). Scored again in
    # float64, by the fused kernel for labels and by products for every
    # distance, in parts of the memory budget, only rows suspect there too
    # are measured so (none here): the labels are the nearest centres
    # measured in float64, and all is as the measures make it.
    import torchkmeans.functional.sparse as sparse_module
    from torchkmeans.functional import _native

    if not _native.available():
        pytest.skip("the fused kernel is not built here")
    X = _year_among_one_hot(3000, np.float32)
    rows = _rows_of(X, dtype=torch.float32)
    dense = torch.from_numpy(X.toarray()).double()
    centroids = dense[:600].reshape(6, 100, -1).mean(1).float()
    exact = ((dense[:, None] - centroids.double()[None]) ** 2).sum(-1)
    least = exact.min(1).values
    measured, scored = [], []
    support, kernel = sparse_module._distances_by_support, _native.sparse_lloyd

    def measure(part, *args):
        measured.append(part.n_rows)
        return support(part, *args)

    def score(crow, col, values, *args, **kwargs):
        scored.append((values.dtype, int(crow.numel()) - 1, int(values.numel())))
        return kernel(crow, col, values, *args, **kwargs)

    monkeypatch.setattr(sparse_module, "_distances_by_support", measure)
    monkeypatch.setattr(_native, "sparse_lloyd", score)
    found = {}
    for budget in (None, 20_000):
        measured.clear(), scored.clear()
        labels, distances = sparse_module.sparse_nearest(rows, centroids, budget)
        np.testing.assert_array_equal(exact[torch.arange(3000), labels], least)
        np.testing.assert_allclose(distances.double(), least, rtol=1e-6)
        wide = [(m, stored) for dtype, m, stored in scored if dtype == torch.float64]
        assert scored[0][:2] == (torch.float32, 3000) and sum(m for m, _ in wide) > 1000
        if budget is None:
            assert len(wide) == 1
        else:  # parts of 625 stored values (8 bytes 4 times), one row past them
            longest = int(np.diff(X.indptr).max())
            assert len(wide) > 1 and max(stored for _, stored in wide) <= budget // 32 + longest
        assert not measured
        found[budget] = labels
    counts = torch.full((6,), 100.0)
    step = sparse_module.sparse_minibatch_step(rows, centroids, counts)
    np.testing.assert_array_equal(exact[torch.arange(3000), step.labels], least)
    # Every distance (transform), and those to k-means++'s candidates: from
    # float64 products, in parts of the memory budget.
    products = []
    mm = torch.sparse.mm

    def product(block, dense):
        products.append((block.values().dtype, int(block.shape[0])))
        return mm(block, dense)

    monkeypatch.setattr(torch.sparse, "mm", product)
    for budget in (None, 20_000):
        products.clear()
        distances = sparse_module.sparse_distances(rows, centroids, budget)
        np.testing.assert_allclose(distances.double(), exact, rtol=1e-6, atol=1e-3)
        widened = [m for dtype, m in products if dtype == torch.float64]
        assert sum(widened) > 1000 and len(widened) > (budget is not None)
    products.clear()
    index = sparse_module.sparse_kmeans_plusplus(
        rows, 6, generator=torch.Generator().manual_seed(0)
    )
    assert not measured and sum(m for dtype, m in products if dtype == torch.float64) > 1000
    # Without the float64 scores the rows are measured, to the same labels
    # and the same step.
    monkeypatch.setattr(sparse_module, "_WIDE_MIN_SUSPECTS", math.inf)
    measured.clear()
    labels, _ = sparse_module.sparse_nearest(rows, centroids)
    assert sum(measured) == sum(m for m, _ in wide)
    assert torch.equal(labels, found[None]) and torch.equal(labels, found[20_000])
    measured_step = sparse_module.sparse_minibatch_step(rows, centroids, counts)
    assert torch.equal(measured_step.labels, step.labels)
    torch.testing.assert_close(measured_step.centroids, step.centroids, rtol=1e-6, atol=0)
    measured_index = sparse_module.sparse_kmeans_plusplus(
        rows, 6, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(measured_index, index)
