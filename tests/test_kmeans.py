"""KMeans the estimator: parity with scikit-learn, invariants, input handling."""

from __future__ import annotations

import importlib
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_identical, blobs, copies_found_on_the_cpu, tutorial_data
from sklearn.base import clone
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine, make_blobs
from sklearn.preprocessing import StandardScaler

from torchkmeans import ConvergenceWarning, KMeans, MiniBatchKMeans, NotFittedError, elbow, lloyd
from torchkmeans.functional import _native

DATASETS = {
    "digits": (lambda: load_digits().data, 10),
    "iris": (lambda: load_iris().data, 3),
    "wine": (lambda: StandardScaler().fit_transform(load_wine().data), 3),
    "tutorial": (tutorial_data, 4),
}


def recomputed(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, float]:
    d2 = ((X[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    return d2.argmin(1), float(d2.min(1).sum())


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("seed", range(5))
def test_inertia_matches_sklearn_with_the_same_n_init(name, seed):
    make, k = DATASETS[name]
    X = make()
    ours = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(X)
    theirs = SklearnKMeans(n_clusters=k, n_init=10, random_state=seed).fit(X)
    assert ours.inertia_ <= 1.01 * theirs.inertia_


@copies_found_on_the_cpu
@pytest.mark.parametrize(
    ("path", "n", "n_init"),
    [
        *[(path, n, 1) for path in ("fused kernel", "PyTorch ops") for n in (3000, 300)],
        ("PyTorch ops", 3000, 3),
        ("memmap", 3000, 1),
    ],
)
def test_a_repeated_initial_centroid_is_left_empty_as_sklearn_does(
    path, n, n_init, monkeypatch, tmp_path
):
    """Rows tied between two copies of a centroid go to the first, which
    scikit-learn's fit then leaves empty and reseeds: a BLAS product (on an
    AVX-512 CPU) scored the copies a rounding apart and split their rows
    between them (PyTorch ops, in blocks, small, or restarts in a batch; the
    streamed fit of a memmap)."""
    X, _ = make_blobs(n_samples=n, n_features=5, centers=6, random_state=0)
    init = np.vstack([X[:5], X[:1]])
    if path == "PyTorch ops":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    data = X
    if path == "memmap":
        data = _read_only_memmap(tmp_path / "x.dat", X)
    theirs = SklearnKMeans(6, init=init, n_init=1, algorithm="lloyd").fit(X)
    # n_init > 1: restarts from a callable init, all from the same centres.
    given = init if n_init == 1 else (lambda X, k, random_state: init)
    ours = KMeans(6, init=given, n_init=n_init, random_state=0).fit(data)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, atol=1e-10)
    assert ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("path", ["fused kernel", "PyTorch ops"])
@pytest.mark.parametrize("name", DATASETS)
def test_same_initial_centroids_give_sklearns_result(name, path, monkeypatch):
    """Both CPU paths: the fused native kernel (where it builds) and the
    PyTorch ops (see tests/test_native.py for the kernel on its own)."""
    if path == "PyTorch ops":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    make, k = DATASETS[name]
    X = make().astype(np.float64)
    start = X[np.random.default_rng(0).choice(len(X), k, replace=False)]
    ours = KMeans(n_clusters=k, init=start, n_init=1).fit(X)
    theirs = SklearnKMeans(n_clusters=k, init=start, n_init=1, algorithm="lloyd").fit(X)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(
        ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12, atol=1e-12
    )
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-12)
    assert ours.n_iter_ == theirs.n_iter_


def test_the_tutorial_workflow():
    # The tutorial's own code, legacy numpy random API included.
    X1 = np.random.randint(0, 4, size=[300, 1])  # noqa: NPY002
    X2 = np.random.uniform(0, 10, size=[300, 1])  # noqa: NPY002
    X = np.append(X1, X2, axis=1)
    km = KMeans(n_clusters=4, init="k-means++", max_iter=300, random_state=2021).fit(X)
    assert isinstance(km.cluster_centers_, np.ndarray) and km.cluster_centers_.shape == (4, 2)
    assert isinstance(km.labels_, np.ndarray) and km.labels_.shape == (300,)
    assert isinstance(km.inertia_, float) and isinstance(km.n_iter_, int)
    assert 1 <= km.n_iter_ <= 300
    assert set(km.labels_.tolist()) == {0, 1, 2, 3}


def test_hand_computed_toy_case():
    X = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0], [10.0, 4.0]])
    km = KMeans(n_clusters=2, init=np.array([[0.0, 0.0], [10.0, 0.0]])).fit(X)
    np.testing.assert_array_equal(km.labels_, [0, 0, 1, 1, 1])
    np.testing.assert_allclose(km.cluster_centers_, [[0.0, 1.0], [10.0, 2.0]])
    assert km.inertia_ == pytest.approx(1 + 1 + 4 + 0 + 4)
    assert km.n_iter_ == 2  # labels unchanged at the second iteration


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_labels_are_the_nearest_of_the_returned_centres(device, dtype, metric):
    X = torch.tensor(blobs(n=2000, d=6, k=7, seed=4), dtype=dtype, device=device)
    km = KMeans(n_clusters=7, n_init=3, random_state=0, metric=metric).fit(X)
    x64 = X.double().cpu()
    c64 = km.cluster_centers_.double().cpu()
    if metric == "cosine":
        d = (
            1
            - torch.nn.functional.normalize(x64, dim=1)
            @ torch.nn.functional.normalize(c64, dim=1).T
        )
    else:
        d = torch.cdist(x64, c64) ** 2
    best = d.min(1).values
    chosen = d.gather(1, km.labels_.cpu().view(-1, 1)).squeeze(1)
    # Where two centres tie within rounding the label may pick either one.
    slack = 1e-9 if dtype == torch.float64 else 1e-4 * (1 + best.abs())
    assert bool((chosen <= best + slack).all())
    assert km.inertia_ == pytest.approx(
        float(best.sum()), rel=1e-9 if dtype == torch.float64 else 1e-5
    )


def test_inertia_equals_recomputed_sum_float64():
    X = load_digits().data
    km = KMeans(n_clusters=10, random_state=0).fit(X)
    labels, inertia = recomputed(X, km.cluster_centers_)
    np.testing.assert_array_equal(km.labels_, labels)
    assert km.inertia_ == pytest.approx(inertia, rel=1e-12)
    assert km.score(X) == pytest.approx(-inertia, rel=1e-12)


def test_duplicate_points_warn_and_give_no_nan():
    X = np.array([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)
    with pytest.warns(
        ConvergenceWarning,
        match=r"Number of distinct clusters \(2\) found smaller than n_clusters \(4\)",
    ):
        km = KMeans(n_clusters=4, random_state=0).fit(X)
    assert np.isfinite(km.cluster_centers_).all()
    assert np.isfinite(km.inertia_) and km.inertia_ == 0.0


def test_torch_in_torch_out_on_the_same_device(device):
    X = torch.tensor(tutorial_data(), device=device, dtype=torch.float32)
    km = KMeans(n_clusters=4, random_state=2021).fit(X)
    for value in (km.cluster_centers_, km.labels_, km.predict(X), km.transform(X)):
        assert isinstance(value, torch.Tensor) and value.device.type == device
    assert km.cluster_centers_.dtype == torch.float32


def test_a_cpu_torch_generator_seeds_fits_on_any_device(device):
    # On CUDA the CPU generator had reached k-means++: "Expected a 'cuda'
    # device type for generator but found 'cpu'" (run by benchmarks/gpu_check.sh).
    X = torch.tensor(blobs(n=400, d=3, k=4, seed=1), device=device)
    fits = [
        estimator(n_clusters=4, random_state=torch.Generator().manual_seed(0)).fit(X)
        for estimator in (KMeans, KMeans, MiniBatchKMeans)
    ]
    torch.testing.assert_close(fits[0].cluster_centers_, fits[1].cluster_centers_)
    for km in fits:
        assert km.cluster_centers_.device.type == device
        assert bool(torch.isfinite(km.cluster_centers_).all())


@pytest.mark.filterwarnings("ignore::torchkmeans.ConvergenceWarning")
def test_numpy_list_and_pandas_in_numpy_out():
    pd = pytest.importorskip("pandas")
    X = tutorial_data()
    a = KMeans(n_clusters=4, random_state=1).fit(X)
    b = KMeans(n_clusters=4, random_state=1).fit(X.tolist())
    c = KMeans(n_clusters=4, random_state=1).fit(pd.DataFrame(X, columns=["a", "b"]))
    for km in (a, b, c):
        assert isinstance(km.cluster_centers_, np.ndarray) and isinstance(km.labels_, np.ndarray)
        np.testing.assert_array_equal(km.labels_, a.labels_)


@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
@pytest.mark.parametrize("source", ["array", "memmap"])
def test_predict_and_score_round_rows_to_the_half_precision_of_the_fit(estimator, source, tmp_path):
    """dtype='float16': the fit clusters the rows rounded to float16, so
    predict and score round them too (score had differed from inertia_)."""
    X = blobs(n=400, d=4, k=3, seed=2) * 37.1  # float64, most values not in float16
    if source == "memmap":
        X = _read_only_memmap(tmp_path / "x.dat", X)
    km = estimator(3, dtype="float16", random_state=0).fit(X)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert -km.score(X) == pytest.approx(km.inertia_, rel=1e-7)  # float32 distances


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(half):
    X = torch.tensor(blobs(n=1000, d=4, k=3, seed=0), dtype=half)
    km = KMeans(n_clusters=3, random_state=0, n_init=3).fit(X)
    assert km.cluster_centers_.dtype == torch.float32
    assert torch.isfinite(km.cluster_centers_).all() and np.isfinite(km.inertia_)
    ref = KMeans(n_clusters=3, random_state=0, n_init=3).fit(X.float())
    assert km.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)
    assert km.predict(X).dtype == torch.int64


def test_integer_input_and_dtype_parameter():
    X = np.random.default_rng(0).integers(0, 10, size=(100, 3))
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    assert km.cluster_centers_.dtype == np.float64
    km32 = KMeans(n_clusters=3, random_state=0, dtype="float32").fit(X)
    assert km32.cluster_centers_.dtype == np.float32


def test_same_seed_same_result_and_different_seeds_differ():
    X = blobs(n=800, d=3, k=12, seed=9)
    a = KMeans(n_clusters=12, random_state=7).fit(X)
    b = KMeans(n_clusters=12, random_state=7).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    c = KMeans(n_clusters=12, random_state=8).fit(X)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
def test_random_state_none_follows_numpys_global_seed_as_sklearn(estimator):
    # None drew fresh entropy: np.random.seed did not make a notebook's fit
    # repeatable, as it does scikit-learn's.
    X = blobs(n=800, d=3, k=12, seed=9)
    np.random.seed(3)  # noqa: NPY002 (the legacy global state is what is tested)
    a = estimator(n_clusters=12, init="random", n_init=1).fit(X)
    b = estimator(n_clusters=12, init="random", n_init=1).fit(X)
    np.random.seed(3)  # noqa: NPY002 (the legacy global state is what is tested)
    again = estimator(n_clusters=12, init="random", n_init=1).fit(X)
    seeded = estimator(12, init="random", n_init=1, random_state=np.random.RandomState(3)).fit(X)
    np.testing.assert_array_equal(again.cluster_centers_, a.cluster_centers_)
    np.testing.assert_array_equal(seeded.cluster_centers_, a.cluster_centers_)
    assert not np.array_equal(a.cluster_centers_, b.cluster_centers_)


def test_fit_predict_equals_fit_then_predict():
    X = load_iris().data
    labels = KMeans(n_clusters=3, random_state=0).fit_predict(X)
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    np.testing.assert_array_equal(labels, km.predict(X))
    np.testing.assert_allclose(km.fit_transform(X), km.transform(X))
    d = np.sqrt(((X[:, None] - km.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(km.transform(X), d, rtol=1e-10, atol=1e-10)


def test_float32_transform_is_exact_to_float32_far_from_the_centres_mean():
    # README: transform is computed in float64 for float32 data, with the
    # entries rounding could spoil measured again. Rows near the origin,
    # centres at 0 and 2e4: 4.6e-6 off (80 of float32's units) before.
    rng = np.random.default_rng(0)
    X = (0.1 * rng.normal(size=(2000, 4))).astype(np.float32)
    centres = np.concatenate([X[:2] + 0.05, X[:2] + 2e4]).astype(np.float32)
    km = KMeans(n_clusters=4, init=centres, max_iter=1).fit(X)
    km.cluster_centers_ = centres
    expected = np.sqrt(((X[:, None].astype(np.float64) - centres[None]) ** 2).sum(-1))
    np.testing.assert_allclose(km.transform(X), expected, rtol=2e-7, atol=0.0)


def test_callable_init_and_random_init():
    X = load_iris().data
    first = X[:3].copy()
    km = KMeans(n_clusters=3, init=lambda x, k, generator: x[:k]).fit(X)
    ref = KMeans(n_clusters=3, init=first).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_)
    rnd = KMeans(n_clusters=3, init="random", random_state=0).fit(X)
    assert (
        rnd.inertia_
        <= 1.01 * SklearnKMeans(3, init="random", n_init=10, random_state=0).fit(X).inertia_
    )


def test_callable_init_is_called_once_per_restart():
    # It was called once and its centres copied to all n_init restarts.
    X = load_iris().data
    starts = []

    def init(x, k, generator):
        start = x[torch.randperm(x.shape[0], generator=generator)[:k]]
        starts.append(start.numpy().copy())
        return start

    km = KMeans(n_clusters=3, init=init, n_init=4, random_state=0).fit(X)
    assert len(starts) == 4
    assert len({start.tobytes() for start in starts}) == 4
    best = min(KMeans(n_clusters=3, init=start).fit(X).inertia_ for start in starts)
    assert km.inertia_ == pytest.approx(best, rel=1e-12)
    # n_init="auto" runs a callable 10 times, as scikit-learn does.
    starts.clear()
    KMeans(n_clusters=3, init=init, random_state=0).fit(X)
    assert len(starts) == 10


def test_explicit_init_with_n_init_warns():
    X = load_iris().data
    with pytest.warns(
        RuntimeWarning, match="Explicit initial centers given; running a single init"
    ):
        KMeans(n_clusters=3, init=X[:3], n_init=5).fit(X)


def test_inertia_history_decreases():
    X = load_digits().data
    km = KMeans(n_clusters=10, init="random", n_init=1, random_state=3).fit(X)
    history = np.array(km.inertia_history_)
    assert len(history) == km.n_iter_
    assert (np.diff(history) <= 1e-9 * history[0]).all()
    assert km.inertia_ <= history[-1] + 1e-9 * history[0]


def test_callers_data_is_never_modified():
    X = blobs(n=300, d=3, k=3, seed=0).astype(np.float32)
    X_copy = X.copy()
    w = np.ones(300)
    init = X[:3].copy()
    init_copy = init.copy()
    km = KMeans(n_clusters=3, init=init).fit(X, sample_weight=w)
    km.predict(X)
    km.transform(X)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(init, init_copy)
    np.testing.assert_array_equal(w, np.ones(300))
    T = torch.tensor(X_copy)
    KMeans(n_clusters=3, random_state=0).fit(T).predict(T)
    assert torch.equal(T, torch.tensor(X_copy))
    X_int = (X * 10).astype(np.int32)
    X_int_copy = X_int.copy()
    KMeans(n_clusters=3, random_state=0).fit(X_int)
    np.testing.assert_array_equal(X_int, X_int_copy)


def test_read_only_memmap_input(tmp_path):
    X = blobs(n=300, d=3, k=3, seed=0)
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        km = KMeans(n_clusters=3, random_state=0).fit(mm)
    np.testing.assert_array_equal(km.labels_, KMeans(n_clusters=3, random_state=0).fit(X).labels_)


@pytest.mark.parametrize("memmap", [False, True], ids=["array", "memmap"])
@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
def test_squared_distances_beyond_float32_are_fitted_scaled(tmp_path, memmap, estimator):
    # Finite float32 rows of norm ~1e20 whose squared distances are not: every
    # distance was inf, labels ties (99 of 300 rows not on their nearest
    # centre) and inertia_ inf; then they were refused, though in float64
    # the same data clusters. Fitted scaled by a power of two, labels are
    # the nearest returned centres and inertia_ their float64 sum.
    X = (blobs(n=300, d=6, k=3, seed=0) * 1e19).astype(np.float32)
    if memmap:
        np.save(tmp_path / "x.npy", X)
        X = np.load(tmp_path / "x.npy", mmap_mode="r")
    km = estimator(n_clusters=3, random_state=0, dtype="float64").fit(X)
    scaled = estimator(n_clusters=3, random_state=0).fit(X)
    exact = ((X[:, None].astype(np.float64) - scaled.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(scaled.labels_, exact.argmin(1))
    assert scaled.inertia_ == pytest.approx(exact.min(1).sum(), rel=1e-6)
    assert scaled.inertia_ == pytest.approx(km.inertia_, rel=1e-6)


@pytest.mark.parametrize("accelerator", [False, True], ids=["host", "accelerator"])
@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
@pytest.mark.parametrize("scale", [1e19, 2.0**62], ids=["1e19", "2^62"])
def test_predict_score_transform_of_rows_whose_squared_distances_overflow_float32(
    request, accelerator, estimator, scale
):
    # After a fit on data of norm ~1e16, rows of norm ~1e19: predict gave
    # every row label 0 (ties of inf), score -inf and transform inf; then they
    # were refused. Scored scaled by a power of two, labels, inertia (float64)
    # and distances (their roots fit in float32) are exact.
    if accelerator:
        request.getfixturevalue("accelerator_paths")
    km = estimator(n_clusters=3, random_state=0).fit(
        blobs(n=300, d=6, k=3).astype(np.float32) * np.float32(2.0**50)
    )
    X = (blobs(n=50, d=6, k=3, seed=1) * scale).astype(np.float32)
    exact = ((X[:, None].astype(np.float64) - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.predict(X), exact.argmin(1))
    assert km.score(X) == pytest.approx(-exact.min(1).sum(), rel=1e-6)
    distances = km.transform(X)
    assert distances.dtype == np.float32
    np.testing.assert_allclose(distances, np.sqrt(exact), rtol=1e-6)
    assert np.isfinite(km.score(X / scale))


@pytest.mark.parametrize("accelerator", [False, True], ids=["host", "accelerator"])
def test_minibatch_partial_fit_of_squared_distances_beyond_float32(request, accelerator):
    # partial_fit took such rows (inertia_ inf or NaN, labels ties), then
    # refused them. Stepped scaled by a power of two, an exact change, it is
    # the unit-scale partial_fit scaled alike. Rows far larger than the
    # centres (not the centres' scale) are still refused, the model unchanged.
    if accelerator:
        request.getfixturevalue("accelerator_paths")
    X = blobs(n=300, d=6, k=3, seed=0).astype(np.float32)
    expected = MiniBatchKMeans(n_clusters=3, random_state=0)
    km = MiniBatchKMeans(n_clusters=3, random_state=0)
    for start in (0, 150):
        expected.partial_fit(X[start : start + 150])
        km.partial_fit(X[start : start + 150] * np.float32(2.0**64))
    np.testing.assert_array_equal(km.cluster_centers_, expected.cluster_centers_ * 2.0**64)
    np.testing.assert_array_equal(km.labels_, expected.labels_)
    assert km.inertia_ == pytest.approx(expected.inertia_ * 2.0**128, rel=1e-6)
    km = MiniBatchKMeans(n_clusters=3, random_state=0).partial_fit(X)
    centers = km.cluster_centers_.copy()
    match = r"Squared distances between the rows of X overflow float32"
    with pytest.raises(ValueError, match=match):
        km.partial_fit(X * np.float32(1e19))
    np.testing.assert_array_equal(km.cluster_centers_, centers)
    assert km.n_steps_ == 1


@pytest.mark.parametrize("accelerator", [False, True], ids=["host", "accelerator"])
@pytest.mark.parametrize("compute_labels", [True, False])
def test_minibatch_fit_of_float32_rows_whose_squared_distances_overflow(
    request, accelerator, compute_labels
):
    # float32 rows near 1e19 (2^64 here) were refused, though their inertia
    # is finite in float64. Stepped scaled by a power of two, an exact
    # change, the fit must be the unit-scale one scaled alike.
    if accelerator:
        request.getfixturevalue("accelerator_paths")
    X = blobs(n=600, d=6, k=3, seed=0).astype(np.float32)
    options = dict(n_clusters=3, random_state=0, batch_size=64, compute_labels=compute_labels)
    expected = MiniBatchKMeans(**options).fit(X)
    km = MiniBatchKMeans(**options).fit(X * np.float32(2.0**64))
    assert km.n_steps_ == expected.n_steps_
    np.testing.assert_array_equal(km.cluster_centers_, expected.cluster_centers_ * 2.0**64)
    assert km.inertia_ == pytest.approx(expected.inertia_ * 2.0**128, rel=1e-6)
    if compute_labels:
        np.testing.assert_array_equal(km.labels_, expected.labels_)


def test_squared_distances_that_overflow_are_blamed_on_X():
    # The in-memory fit named "the rows of x", the functional core's argument;
    # the streamed fit and predict already named X. (float32 rows of norm
    # ~1e20 are fitted scaled: float64 ones of norm ~1e155 overflow all the same.)
    X = blobs(n=60, d=3, k=3, seed=0) * 1e155
    with pytest.raises(ValueError, match=r"Squared distances between the rows of X overflow"):
        KMeans(n_clusters=3, random_state=0).fit(X)


def test_an_inertia_beyond_float64_without_weights_is_blamed_on_X():
    # Each squared distance finite, their sum not (the README's randn x 1e153):
    # the in-memory fit and elbow blamed a sample_weight that was never given.
    X = np.random.RandomState(0).randn(1000, 3) * 1e153
    overflow = r"Squared distances between the rows of X overflow float64"
    with pytest.raises(ValueError, match=overflow):
        KMeans(n_clusters=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match=overflow):
        elbow(X, k=range(1, 4), random_state=0)


def test_rows_whose_summed_squares_overflow_fit_as_the_unscaled_rows():
    # Every float64 row's centred squared norm below max / 8, their sum
    # over 569 rows beyond max: the mean variance, clamped to max, made tol
    # max, and the fit stopped after 4 iterations (11 unscaled) with 2.8% more
    # inertia and a NaN in inertia_history_.
    X0 = load_breast_cancer().data
    centred = X0 - X0.mean(0)
    scale = np.sqrt(np.finfo(np.float64).max / 8 / (centred**2).sum(1).max()) * 0.9
    init = X0[[0, 100, 200, 300]]
    plain = KMeans(n_clusters=4, init=init, n_init=1).fit(X0)
    big = KMeans(n_clusters=4, init=init * scale, n_init=1).fit(X0 * scale)
    assert big.n_iter_ == plain.n_iter_
    np.testing.assert_array_equal(big.labels_, plain.labels_)
    assert big.inertia_ == pytest.approx(plain.inertia_ * scale**2, rel=1e-12)
    assert np.isfinite(big.inertia_history_).all()


def test_weights_that_overflow_are_blamed_not_the_data():
    # Weights of 1e308 sum to infinity (the centres became NaN) and weights of
    # 1e10 on distances ~1e305 overflow the inertia: both had been reported
    # as "squared distances between the rows of x overflow".
    X = blobs(n=30, d=3, k=3, seed=0)
    for estimator in (KMeans, MiniBatchKMeans):
        with pytest.raises(ValueError, match=r"sample_weight to have a finite sum.*float64"):
            estimator(n_clusters=3, random_state=0).fit(X, sample_weight=np.full(30, 1e308))
    far = X / np.abs(X).max() * 1e152
    with pytest.raises(ValueError, match=r"weighted by sample_weight overflows"):
        KMeans(n_clusters=3, random_state=0).fit(far, sample_weight=np.full(30, 1e10))
    assert np.isfinite(KMeans(n_clusters=3, random_state=0).fit(far).inertia_)


@pytest.mark.parametrize("memmap", [False, True], ids=["array", "memmap"])
def test_big_endian_input_is_read_like_native(tmp_path, memmap):
    # FITS files and data written on big-endian machines load as ">f8": torch
    # cannot wrap those bytes, so they must be converted, not refused.
    X = blobs(n=300, d=3, k=3, seed=0)
    big = X.astype(">f8")
    if memmap:
        np.save(tmp_path / "x.npy", big)
        big = np.load(tmp_path / "x.npy", mmap_mode="r")
    km = KMeans(n_clusters=3, random_state=0).fit(big)
    ref = KMeans(n_clusters=3, random_state=0).fit(X)
    np.testing.assert_array_equal(km.labels_, ref.labels_)
    np.testing.assert_array_equal(km.predict(big), ref.labels_)
    assert km.cluster_centers_.dtype == np.float64


@pytest.mark.parametrize("cls", [KMeans, MiniBatchKMeans])
def test_big_endian_sample_weight_is_read_like_native(cls):
    X = blobs(n=300, d=3, k=3, seed=0)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=300)
    km = cls(n_clusters=3, random_state=0).fit(X, sample_weight=weights.astype(">f8"))
    ref = cls(n_clusters=3, random_state=0).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(km.labels_, ref.labels_)
    assert km.inertia_ == ref.inertia_


@pytest.mark.parametrize("cls", [KMeans, MiniBatchKMeans])
def test_reversed_sample_weight_view_is_read_like_a_copy(cls):
    X = blobs(n=300, d=3, k=3, seed=0)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=300)[::-1]  # negative stride
    km = cls(n_clusters=3, random_state=0).fit(X, sample_weight=weights)
    ref = cls(n_clusters=3, random_state=0).fit(X, sample_weight=weights.copy())
    np.testing.assert_array_equal(km.labels_, ref.labels_)
    assert km.inertia_ == ref.inertia_
    assert km.score(X, sample_weight=weights) == ref.score(X, sample_weight=weights.copy())


def test_object_sample_weight_is_read_as_numbers_like_x():
    X = blobs(n=60, d=2, k=3, seed=0)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=60)
    km = KMeans(3, init=X[:3]).fit(X, sample_weight=weights.astype(object))
    ref = KMeans(3, init=X[:3]).fit(X, sample_weight=weights)
    assert km.inertia_ == ref.inertia_
    with pytest.raises(ValueError, match="Input sample_weight contains NaN or infinity"):
        KMeans(3).fit(X, sample_weight=np.array([None] + [1.0] * 59, dtype=object))
    with pytest.raises(TypeError, match="Expected sample_weight to hold numbers, got an object"):
        KMeans(3).fit(X, sample_weight=np.array(["a"] + [1.0] * 59, dtype=object))


def test_complex_tensor_sample_weight_is_refused():
    # Complex numpy weights were refused, a complex tensor lost its imaginary part.
    from torchkmeans.functional import kmeans

    X = blobs(n=60, d=2, k=3, seed=0)
    weights = torch.ones(60, dtype=torch.complex64)
    match = "Expected sample_weight to hold real numbers, got dtype torch.complex64"
    for estimator in (KMeans(3, random_state=0), MiniBatchKMeans(3, random_state=0)):
        with pytest.raises(TypeError, match=match):
            estimator.fit(X, sample_weight=weights)
    with pytest.raises(TypeError, match=match):
        kmeans(torch.as_tensor(X), 3, sample_weight=weights)


def test_device_auto_runs_where_cuda_is():
    km = KMeans(n_clusters=2, device="auto", random_state=0).fit(torch.randn(50, 2))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert km._centers.device.type == expected
    assert km.cluster_centers_.device.type == "cpu"  # handed back where the input was


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="Expected device='cuda' to be available"):
        KMeans(n_clusters=2, device="cuda").fit(X_OK)
    with pytest.raises(ValueError, match="Expected device to be None, 'auto', 'cpu', 'cuda'"):
        KMeans(n_clusters=2, device="tpu:x").fit(X_OK)


def test_verbose_reports_on_stderr_unless_logging_takes_it(capsys, caplog):
    import logging

    X = blobs(n=300, d=2, k=3, seed=0)
    km = KMeans(3, init=X[:3], verbose=True).fit(X)
    err = capsys.readouterr().err
    assert f"[KMeans] iteration {km.n_iter_ - 1}: inertia" in err
    assert f"[KMeans] final inertia {km.inertia_:.6g} after {km.n_iter_} iterations" in err
    with caplog.at_level(logging.INFO, logger="torchkmeans"):
        KMeans(3, init=X[:3], verbose=True).fit(X)
    assert "Final inertia" in caplog.text and capsys.readouterr().err == ""
    KMeans(3, init=X[:3]).fit(X)
    assert capsys.readouterr().err == ""


def test_verbose_says_which_of_several_restarts_it_lists(capsys, caplog):
    import logging

    X = blobs(n=300, d=2, k=3, seed=0)
    km = KMeans(3, n_init=4, random_state=0, verbose=1).fit(X)
    err = capsys.readouterr().err
    assert err.endswith(
        f"[KMeans] final inertia {km.inertia_:.6g} after {km.n_iter_} iterations "
        "(the best of 4 runs, whose iterations are listed)\n"
    )
    assert err.count("[KMeans] iteration 0:") == 1
    KMeans(3, init="random", random_state=0, verbose=1).fit(X)  # n_init="auto": 10 runs
    assert "(the best of 10 runs, whose iterations are listed)" in capsys.readouterr().err
    KMeans(3, random_state=0, verbose=1).fit(X)  # "auto" with k-means++: one run
    assert capsys.readouterr().err.endswith(" iterations\n")
    with caplog.at_level(logging.INFO, logger="torchkmeans"):
        KMeans(3, n_init=2, random_state=0, verbose=1).fit(X)
    assert "iterations (the best of 2 runs, whose iterations are listed)" in caplog.text


def test_get_set_params_and_repr():
    km = KMeans(n_clusters=3, random_state=1)
    assert km.get_params()["n_clusters"] == 3
    assert km.set_params(n_clusters=5) is km and km.n_clusters == 5
    assert repr(km) == "KMeans(n_clusters=5, random_state=1)"
    with pytest.raises(ValueError, match="Invalid parameter 'bogus' for estimator KMeans"):
        km.set_params(bogus=1)


def test_not_fitted_error_before_fit():
    km = KMeans()
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(NotFittedError, match="This KMeans instance is not fitted yet"):
            method(np.zeros((2, 2)))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_assigned_cluster_centers_are_used_like_sklearn(kind):
    """km.cluster_centers_ = C (a scikit-learn idiom) changes what predict,
    transform and score use, as in scikit-learn."""
    X = np.random.RandomState(0).randn(100, 2)
    new = np.array([[100.0, 100.0], [0.0, 0.0]])
    theirs = SklearnKMeans(2, random_state=0, n_init=1).fit(X)
    theirs.cluster_centers_ = new
    data = X if kind == "numpy" else torch.tensor(X)
    ours = KMeans(2, random_state=0).fit(data)
    ours.cluster_centers_ = new if kind == "numpy" else torch.tensor(new)
    centers = ours.cluster_centers_
    assert isinstance(centers, np.ndarray if kind == "numpy" else torch.Tensor)
    np.testing.assert_array_equal(np.asarray(centers), new)
    np.testing.assert_array_equal(np.asarray(ours.predict(data)), theirs.predict(X))
    np.testing.assert_allclose(np.asarray(ours.transform(data)), theirs.transform(X))
    assert ours.score(data) == pytest.approx(theirs.score(X))


@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
@pytest.mark.parametrize("kind", ["numpy", "float32 tensor", "float64 tensor"])
def test_a_fitted_model_pickled_copied_or_cloned_predicts_alike(estimator, kind):
    import copy

    X = np.random.RandomState(0).randn(400, 5).astype(np.float32)
    data = {"numpy": X, "float32 tensor": torch.from_numpy(X)}.get(kind)
    data = torch.from_numpy(X).double() if data is None else data
    fitted = estimator(4, random_state=0).fit(data)
    expected = fitted.predict(data)
    for twin in (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted), copy.copy(fitted)):
        got = twin.predict(data)
        assert type(got) is type(expected)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        np.testing.assert_array_equal(
            np.asarray(twin.cluster_centers_), np.asarray(fitted.cluster_centers_)
        )
        assert twin.inertia_ == fitted.inertia_
    refitted = clone(fitted).fit(data)
    np.testing.assert_array_equal(np.asarray(refitted.predict(data)), np.asarray(expected))


def test_assigned_cluster_centers_are_validated_copied_and_kept():
    X = np.random.RandomState(0).randn(60, 3).astype(np.float32)
    km = KMeans(2, random_state=0).fit(X)
    new = np.array([[5.0, 5.0, 5.0], [-5.0, -5.0, -5.0]])  # float64 into a float32 fit
    km.cluster_centers_ = new
    assert km.cluster_centers_.dtype == np.float32
    new[0] = 0.0  # the caller's array is copied: changing it later changes nothing
    np.testing.assert_array_equal(km.cluster_centers_[0], [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(km.predict([[4.0, 4.0, 4.0]]), [0])
    restored = pickle.loads(pickle.dumps(km))
    np.testing.assert_array_equal(restored.cluster_centers_, km.cluster_centers_)
    np.testing.assert_array_equal(restored.predict(X), km.predict(X))
    assert clone(km).get_params() == km.get_params()
    with pytest.raises(ValueError, match=r"Expected cluster_centers_ to be of shape \(2, 3\), "):
        km.cluster_centers_ = np.zeros((3, 3))
    with pytest.raises(
        ValueError,
        match=r"Expected cluster_centers_ to be 2-D of shape \(n_clusters, n_features\), "
        r"got shape \(3,\)\.$",
    ):
        km.cluster_centers_ = np.zeros(3)
    with pytest.raises(ValueError, match="Input cluster_centers_ contains NaN or infinity"):
        km.cluster_centers_ = np.array([[np.nan, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(km.cluster_centers_[0], [5.0, 5.0, 5.0])  # unchanged
    with pytest.raises(NotFittedError, match="call 'fit' before assigning cluster_centers_"):
        KMeans(2).cluster_centers_ = new
    assert not hasattr(KMeans(2), "cluster_centers_")


def test_assigned_cluster_centers_are_unit_vectors_for_cosine():
    X = np.random.RandomState(1).randn(50, 2)
    km = KMeans(2, metric="cosine", random_state=0).fit(X)
    km.cluster_centers_ = [[3.0, 0.0], [0.0, -2.0]]
    np.testing.assert_allclose(km.cluster_centers_, [[1.0, 0.0], [0.0, -1.0]])


@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
@pytest.mark.parametrize(
    "dtype, scale",
    [(np.float32, 1e20), (np.float32, 1e-25), (np.float64, 1e-25), (np.float64, 1e200)],
)
def test_cosine_labels_do_not_depend_on_extreme_row_norms(estimator, dtype, scale):
    # torch.nn.functional.normalize made these rows 0 (float32 norms ~1e20
    # overflow) or ~1e-13 long (norms below its eps=1e-12): inertia_ was
    # n_samples, every row in one cluster.
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(60, 4))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    X = (unit * rng.uniform(0.5, 2.0, size=(60, 1)) * scale).astype(dtype)
    expected = estimator(3, metric="cosine", random_state=0, n_init=1).fit(unit.astype(dtype))
    km = estimator(3, metric="cosine", random_state=0, n_init=1).fit(X)
    np.testing.assert_array_equal(km.labels_, expected.labels_)
    np.testing.assert_array_equal(km.predict(X), expected.labels_)
    np.testing.assert_allclose(km.cluster_centers_, expected.cluster_centers_, atol=1e-5)
    assert km.inertia_ == pytest.approx(expected.inertia_, rel=1e-5)
    assert km.score(X) == pytest.approx(-expected.inertia_, rel=1e-5)


def _directions_and_rows_of_zeros(n_zeros: int) -> np.ndarray:
    """Non-negative directions around 6 axes (every cosine distance below 1),
    followed by ``n_zeros`` rows of zeros, at distance 1 from every centre."""
    rng = np.random.default_rng(4)
    axes = np.abs(rng.normal(size=(6, 16)))
    X = np.abs(np.repeat(axes, 100, axis=0) + rng.normal(scale=0.3, size=(600, 16)))
    return np.concatenate([X, np.zeros((n_zeros, 16))]).astype(np.float32)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_cosine_rows_of_zeros_seed_no_centroid(init):
    # Rows of zeros were drawn as seeds (and taken as the farthest points by
    # relocation): centroids of zeros, which kept the rows of zeros and no
    # others, up to 3 of 20 per fit with 30% empty rows.
    X = _directions_and_rows_of_zeros(400)
    for seed in range(6):
        km = KMeans(6, metric="cosine", init=init, n_init=1, random_state=seed).fit(X)
        np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, rtol=1e-5)
        unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-30)
        similarities = unit.astype(np.float64) @ km.cluster_centers_.T.astype(np.float64)
        assert km.inertia_ == pytest.approx((1.0 - similarities.max(1)).sum(), rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_rows_of_zeros_do_not_change_the_fit(dtype):
    # Two copies of one initial centroid: one cluster is empty and takes the
    # farthest point, which was a row of zeros (distance 1), making it zero.
    X = _directions_and_rows_of_zeros(100).astype(dtype)
    init = X[[0, 0, 100, 200, 300, 400]]
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    alone = KMeans(6, metric="cosine", init=init).fit(X[:600], sample_weight=weights[:600])
    km = KMeans(6, metric="cosine", init=init).fit(X, sample_weight=weights)
    np.testing.assert_allclose(km.cluster_centers_, alone.cluster_centers_, atol=1e-6)
    np.testing.assert_array_equal(km.labels_[:600], alone.labels_)
    assert km.n_iter_ == alone.n_iter_
    # Each row of zeros is at distance 1 from every centre.
    expected = alone.inertia_ + weights[600:].sum()
    assert km.inertia_ == pytest.approx(expected, rel=1e-6)
    assert km.score(X, sample_weight=weights) == pytest.approx(-expected, rel=1e-6)
    history = np.asarray(alone.inertia_history_) + weights[600:].sum()
    np.testing.assert_allclose(km.inertia_history_, history, rtol=1e-6)


@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "memmap"])
def test_float32_data_near_1e_minus_30_is_clustered_as_at_unit_scale(tmp_path, streamed):
    # Squared distances of float32 rows near 1e-30 underflow to 0: every
    # score was 0, 7% of the labels were the nearest centre, inertia_ 0.
    # Scaled by a power of two (exact) the fit is the same fit, bit for bit.
    X = blobs(n=200, d=3, k=4).astype(np.float32)
    tiny = X * np.float32(2.0**-100)
    if streamed:  # each compared with its own path
        np.save(tmp_path / "x.npy", X)
        np.save(tmp_path / "tiny.npy", tiny)
        X = np.load(tmp_path / "x.npy", mmap_mode="r")
        tiny = np.load(tmp_path / "tiny.npy", mmap_mode="r")
    expected = KMeans(4, random_state=0).fit(X)
    km = KMeans(4, random_state=0).fit(tiny)
    np.testing.assert_array_equal(km.labels_, expected.labels_)
    np.testing.assert_array_equal(km.cluster_centers_, expected.cluster_centers_ * 2.0**-100)
    assert km.inertia_ == pytest.approx(expected.inertia_ * 2.0**-200, rel=1e-6)
    np.testing.assert_array_equal(km.predict(tiny), expected.labels_)
    assert -km.score(tiny) == pytest.approx(km.inertia_, rel=1e-6)
    np.testing.assert_allclose(km.transform(tiny), expected.transform(X) * 2.0**-100, rtol=1e-6)


def test_minibatch_float32_data_near_1e_minus_30_is_labelled_nearest():
    X = (blobs(n=300, d=3, k=4) * 1e-30).astype(np.float32)
    km = MiniBatchKMeans(4, batch_size=64, random_state=0, n_init=1).fit(X)
    # Brute force in float64, where these squared distances are normal numbers.
    d = ((X[:, None].astype(np.float64) - km.cluster_centers_[None].astype(np.float64)) ** 2).sum(
        -1
    )
    np.testing.assert_array_equal(km.labels_, d.argmin(1))
    assert km.inertia_ == pytest.approx(d.min(1).sum(), rel=1e-5)


X_OK = np.random.default_rng(0).normal(size=(20, 3))
X_NAN = X_OK.copy()
X_NAN[3, 1] = np.nan
X_INF = X_OK.copy()
X_INF[0, 0] = np.inf


@pytest.mark.parametrize(
    ("params", "X", "fit_kwargs", "error", "match"),
    [
        ({}, X_NAN, {}, ValueError, "Input X contains NaN or infinity"),
        ({}, X_INF, {}, ValueError, "Input X contains NaN or infinity"),
        (
            {},
            X_OK[0],
            {},
            ValueError,
            r"Expected X to be 2-D of shape \(n_samples, n_features\), got shape \(3,\)",
        ),
        ({}, np.zeros((3, 4, 5)), {}, ValueError, r"Expected X to be 2-D .* got shape \(3, 4, 5\)"),
        ({"n_clusters": 30}, X_OK, {}, ValueError, "n_samples=20 should be >= n_clusters=30"),
        ({"n_clusters": 0}, X_OK, {}, ValueError, "n_clusters=0 should be >= 1"),
        ({"n_clusters": 2.5}, X_OK, {}, TypeError, "Expected n_clusters to be an int, got 2.5"),
        ({"n_init": 0}, X_OK, {}, ValueError, "n_init=0 should be >= 1"),
        ({"max_iter": 0}, X_OK, {}, ValueError, "max_iter=0 should be >= 1"),
        ({"tol": -1.0}, X_OK, {}, ValueError, "tol=-1.0 should be a finite number >= 0"),
        ({"verbose": "yes"}, X_OK, {}, TypeError, "Expected verbose to be a bool or an int"),
        ({"verbose": -1}, X_OK, {}, ValueError, "verbose=-1 should be >= 0"),
        ({"copy_x": None}, X_OK, {}, TypeError, "Expected copy_x to be a bool, got NoneType"),
        (
            {"metric": "l1"},
            X_OK,
            {},
            ValueError,
            "Expected metric to be 'euclidean' or 'cosine', got 'l1'",
        ),
        ({"init": "kmeans"}, X_OK, {}, ValueError, "Expected init to be 'k-means\\+\\+', 'random'"),
        (
            {"init": np.zeros((2, 3))},
            X_OK,
            {},
            ValueError,
            r"Expected init to be of shape \(8, 3\), got shape \(2, 3\)",
        ),
        (
            {"init": np.zeros(24)},
            X_OK,
            {},
            ValueError,
            r"Expected init to be 2-D of shape \(8, 3\), got shape \(24,\)\.$",
        ),
        ({"dtype": "int8"}, X_OK, {}, ValueError, "Expected dtype to be None or one of float16"),
        ({"random_state": "seed"}, X_OK, {}, TypeError, "Expected random_state to be None, an int"),
        (
            {"random_state": 2**64},
            X_OK,
            {},
            ValueError,
            r"random_state=18446744073709551616 should be >= 0 and < 2\*\*64\.",
        ),
        ({"random_state": -1}, X_OK, {}, ValueError, r"random_state=-1 should be >= 0 and < 2"),
        (
            {},
            None,
            {},
            TypeError,
            r"Expected X to be an array-like or tensor of shape \(n_samples, n_features\), "
            r"got None\.",
        ),
        (
            {"n_clusters": 1},
            3.0,
            {},
            ValueError,
            r"Expected X to be 2-D of shape \(n_samples, n_features\), got a scalar \(3\.0\)\.",
        ),
        (
            {"n_clusters": 1},
            torch.tensor(3.0),
            {},
            ValueError,
            r"Expected X to be 2-D of shape \(n_samples, n_features\), got a scalar",
        ),
        (
            {"n_clusters": 1},
            [[1.0, 2.0], [3.0]],
            {},
            ValueError,
            r"Expected X to be a rectangular array-like of numbers \(rows of equal length\), "
            r"got one numpy cannot convert: ",
        ),
        (
            {},
            X_OK,
            {"sample_weight": np.ones(5)},
            ValueError,
            r"Expected sample_weight to be of shape \(20,\), got shape \(5,\)",
        ),
        (
            {},
            X_OK,
            {"sample_weight": -np.ones(20)},
            ValueError,
            "Expected sample_weight to be non-negative",
        ),
        ({}, X_OK, {"sample_weight": np.zeros(20)}, ValueError, "got all weights zero"),
        ({}, np.array([["a", "b"], ["c", "d"]]), {}, ValueError, "Expected X to hold numbers"),
        ({}, np.ones((4, 2)) * 1j, {}, ValueError, "Complex data not supported"),
        ({}, np.zeros((0, 3)), {}, ValueError, r"Found array with 0 sample\(s\)"),
        (
            {},
            (batch for batch in (X_OK[:10], X_OK[10:])),
            {},
            TypeError,
            r"Expected X to be an array-like, memmap or tensor that KMeans can read once per "
            r"Lloyd iteration, got generator; MiniBatchKMeans.fit and partial_fit take",
        ),
    ],
)
def test_bad_input_errors(params, X, fit_kwargs, error, match):
    with pytest.raises(error, match=match):
        KMeans(**params).fit(X, **fit_kwargs)


def test_numbers_as_strings_fit_as_numbers_as_scikit_learn_does():
    """scikit-learn's KMeans converts an array of numeric strings (text read
    with dtype=str) to float; it had been refused."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    X = np.random.default_rng(0).normal(size=(40, 3)).round(3)
    text = X.astype(str)
    km = KMeans(n_clusters=3, random_state=0).fit(text)
    reference = KMeans(n_clusters=3, random_state=0).fit(X)
    np.testing.assert_array_equal(km.labels_, reference.labels_)
    assert km.inertia_ == reference.inertia_
    np.testing.assert_array_equal(km.predict(text), reference.predict(X))
    np.testing.assert_array_equal(km.transform(text.astype(bytes)), reference.transform(X))
    init = X[:3]
    ours = KMeans(n_clusters=3, init=init, n_init=1).fit(text)
    theirs = sklearn_cluster.KMeans(n_clusters=3, init=init, n_init=1).fit(text)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=1e-12)
    with pytest.raises(
        ValueError,
        match=r"Expected X to hold numbers, got an array of dtype <U3 that could not be "
        r"converted to float: could not convert string to float",
    ):
        KMeans(n_clusters=2).fit(np.array([["1", "2"], ["one", "3"], ["4", "5"]]))


def test_pandas_missing_values_are_refused_as_nan():
    pd = pytest.importorskip("pandas")
    frames = [
        pd.DataFrame({"a": [1.0, pd.NA, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0]}),
        pd.DataFrame({"a": pd.array([1.0, None, 3.0, 4.0], dtype="Float64"), "b": [0.0] * 4}),
        pd.DataFrame({"a": pd.array([1, None, 3, 4], dtype="Int64"), "b": [0.0] * 4}),
    ]
    for frame in frames:
        with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
            KMeans(n_clusters=2).fit(frame)
    # Objects that are not numbers, and not missing, are refused as before.
    with pytest.raises(TypeError, match="Expected X to hold numbers, got an object array"):
        KMeans(n_clusters=2).fit(pd.DataFrame({"a": [1.0, object(), 3.0], "b": [0.0] * 3}))


def test_largest_torch_seed_is_accepted():
    X = np.random.default_rng(0).normal(size=(20, 2))
    a = KMeans(2, random_state=2**64 - 1).fit(X)
    b = KMeans(2, random_state=2**64 - 1).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_large_finite_values_are_not_mistaken_for_infinity():
    """The finiteness check sums the data first; a sum that overflows is checked
    element by element, so only real NaN and infinities are refused."""
    from torchkmeans._validation import all_finite

    huge = torch.full((4, 2), 3e38, dtype=torch.float32)
    assert not bool(torch.isfinite(huge.sum()))
    assert all_finite(huge)
    for bad in (float("nan"), float("inf"), float("-inf")):
        spoiled = huge.clone()
        spoiled[2, 1] = bad
        assert not all_finite(spoiled)
    mixed = torch.tensor([float("inf"), float("-inf")])  # sums to NaN
    assert not all_finite(mixed)
    assert all_finite(torch.empty(0, 3))
    X = np.array([[3e38, 0.0], [3e38, 1.0], [-3e38, 0.0], [-3e38, 1.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        KMeans(n_clusters=2).fit(np.vstack([X, [[np.nan, 0.0]]]))
    KMeans(n_clusters=2, n_init=1, random_state=0).fit(X.astype(np.float64))  # accepted


def test_float32_data_whose_summed_squares_overflow_float32_still_converge():
    # Every squared distance fits in float32 (about 1e37), their sum over
    # 2,000 rows does not: the tol scale is accumulated in float64, as the
    # inertia is, instead of becoming infinite and stopping after one step.
    X = blobs(n=2000, d=3, k=6, seed=0, spread=3.0)
    scaled = KMeans(6, init=X[:6] * 1e17).fit((X * 1e17).astype(np.float32))
    plain = KMeans(6, init=X[:6]).fit(X.astype(np.float32))
    assert scaled.n_iter_ == plain.n_iter_ > 1
    np.testing.assert_array_equal(scaled.labels_, plain.labels_)
    np.testing.assert_allclose(scaled.inertia_ / 1e34, plain.inertia_, rtol=1e-5)


@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_float32_rows_whose_centred_squares_overflow_float32_still_converge(request, paths):
    # One row's centred squared norm (3.6e38) overflows float32; every
    # distance to a centre fits. That made the tol scale infinite: each fit
    # stopped after one iteration, and a little farther out the unconverged
    # centres left distances beyond float32, refused as overflowing.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    X = blobs(n=300, d=3, k=3, seed=0)
    scale = float(np.sqrt(3.6e38 / ((X - X.mean(0)) ** 2).sum(1).max()))
    plain = KMeans(3, init=X[[0, 1, 2]]).fit(X.astype(np.float32))
    init = np.stack([X[plain.labels_ == j][0] for j in range(3)])
    plain = KMeans(3, init=init).fit(X.astype(np.float32))
    scaled = KMeans(3, init=init * scale).fit((X * scale).astype(np.float32))
    assert scaled.n_iter_ == plain.n_iter_ > 1
    np.testing.assert_array_equal(scaled.labels_, plain.labels_)
    np.testing.assert_allclose(scaled.inertia_ / scale**2, plain.inertia_, rtol=1e-5)


def test_predict_with_another_feature_count():
    km = KMeans(n_clusters=2, random_state=0).fit(X_OK)
    with pytest.raises(
        ValueError, match="X has 5 features, but KMeans is expecting 3 features as input"
    ):
        km.predict(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        km.predict(X_NAN)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("to_tensor", [False, True])
def test_rows_are_checked_for_nan_from_the_results_not_summed_first(monkeypatch, metric, to_tensor):
    """predict, score and transform read X for NaN and infinity only when
    their results are not finite (a distance from differences is NaN or
    infinite where its row is): a sum of X first had cost 0.15 ms of a 2.4 ms
    predict on 60,000 x 64 rows. Such rows are refused as before, on every
    path of the search."""
    from torchkmeans import _validation

    X = np.random.default_rng(0).normal(size=(600, 24)).astype(np.float32)
    model = KMeans(n_clusters=5, n_init=1, random_state=0, metric=metric).fit(X)
    shapes = []
    all_finite = _validation.all_finite
    monkeypatch.setattr(
        _validation, "all_finite", lambda t: shapes.append(tuple(t.shape)) or all_finite(t)
    )
    data = torch.from_numpy(X) if to_tensor else X
    for method in ("predict", "score", "transform"):
        if method == "predict" and metric == "cosine":
            continue  # no distances computed: X is checked first
        getattr(model, method)(data)
    assert X.shape not in shapes
    for bad in (np.nan, np.inf, -np.inf):
        spoiled = X.copy()
        spoiled[7, 3] = bad
        spoiled = torch.from_numpy(spoiled) if to_tensor else spoiled
        for method in ("predict", "score", "transform"):
            with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
                getattr(model, method)(spoiled)


def test_predict_takes_no_sample_weight_as_sklearn():
    # It was accepted and ignored: a caller's weights changed nothing, silently.
    from sklearn.cluster import KMeans as SkKMeans

    for estimator in (KMeans(2, random_state=0).fit(X_OK), SkKMeans(2, n_init=1).fit(X_OK)):
        with pytest.raises(TypeError, match="sample_weight"):
            estimator.predict(X_OK, sample_weight=np.ones(len(X_OK)))


def test_float64_rows_beyond_float32_centres_are_refused_not_made_infinite():
    """predict/transform/score on a float32 fit cast float64 input after
    checking it: 1e39 became inf, giving label 0 and NaN distances."""
    km = KMeans(n_clusters=2, random_state=0).fit(X_OK.astype(np.float32))
    huge = np.full((4, 3), 1e39)
    match = r"Input X holds values beyond the range of float32 \(converted from float64\)"
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(ValueError, match=match):
            method(huge)
    with pytest.raises(ValueError, match=match):
        KMeans(n_clusters=2, dtype="float32").fit(huge)
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        km.predict(X_INF)


def test_sparse_input_is_clustered_as_dense():
    # Sparse input in detail: tests/test_sparse.py.
    sparse = pytest.importorskip("scipy.sparse")
    dense = KMeans(n_clusters=2, init=X_OK[:2]).fit(X_OK)
    km = KMeans(n_clusters=2, init=X_OK[:2]).fit(sparse.csr_matrix(X_OK))
    np.testing.assert_array_equal(km.labels_, dense.labels_)
    np.testing.assert_allclose(km.cluster_centers_, dense.cluster_centers_)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["to_sparse", "to_sparse_csr"])
def test_sparse_tensor_init_is_refused_with_a_hint(layout):
    dense = torch.tensor(X_OK)
    sparse = getattr(dense, layout)()
    km = KMeans(n_clusters=2, random_state=0).fit(dense)
    np.testing.assert_array_equal(km.predict(sparse).numpy(), km.labels_.numpy())
    with pytest.raises(TypeError, match=r"convert it with init\.to_dense\(\)"):
        KMeans(n_clusters=2, init=dense[:2].to_sparse()).fit(dense)


def test_sparse_sample_weight_and_functional_input_are_refused_with_a_hint():
    # Refused inside torch before ('aten::lt.Scalar' ... 'SparseCPU' backend,
    # 'copy_() between dense and sparse', 'Cannot access storage').
    from torchkmeans.functional import kmeans, lloyd, nearest_centroids

    dense = torch.tensor(X_OK)
    weights = torch.ones(len(X_OK), dtype=dense.dtype).to_sparse()
    match = r"Expected sample_weight to be a dense .* sample_weight\.to_dense\(\)"
    with pytest.raises(TypeError, match=match):
        KMeans(n_clusters=2).fit(dense, sample_weight=weights)
    with pytest.raises(TypeError, match=match):
        MiniBatchKMeans(n_clusters=2).partial_fit(dense, sample_weight=weights)
    # A sparse x is fitted on its stored values (tests/test_sparse.py); its
    # weights are dense too.
    for x in (dense, dense.to_sparse()):
        with pytest.raises(TypeError, match=match):
            kmeans(x, 2, sample_weight=weights)
    with pytest.raises(TypeError, match=r"convert it with x\.to_dense\(\)"):
        nearest_centroids(dense.to_sparse(), dense[:2])
    with pytest.raises(TypeError, match=r"convert it with centroids\.to_dense\(\)"):
        lloyd(dense, dense[:2].to_sparse())


def test_feature_names_of_a_data_frame_are_kept_and_checked():
    pd = pytest.importorskip("pandas")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    check_dataframe_column_names_consistency("KMeans", KMeans(n_clusters=2, random_state=0))
    X = pd.DataFrame(tutorial_data(), columns=["a", "b"])
    km = KMeans(n_clusters=4, random_state=0).fit(X)
    np.testing.assert_array_equal(km.feature_names_in_, np.array(["a", "b"], dtype=object))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        km.predict(X.to_numpy())
    with pytest.raises(ValueError, match="Feature names unseen at fit time:\n- c"):
        km.transform(X.rename(columns={"b": "c"}))
    # Refitted on data without names (integer columns count as none), it forgets them.
    km.fit(pd.DataFrame(tutorial_data()))
    assert not hasattr(km, "feature_names_in_")
    with pytest.warns(UserWarning, match="X has feature names, but KMeans was fitted without"):
        km.score(X)
    with pytest.raises(TypeError, match="Feature names are only supported if all"):
        KMeans(n_clusters=2).fit(pd.DataFrame(tutorial_data(), columns=["a", 0]))


@pytest.mark.filterwarnings("ignore::torchkmeans.ConvergenceWarning")
@pytest.mark.parametrize("path", ["fused kernel", "PyTorch ops"])
def test_more_clusters_than_distinct_points_converge(path, monkeypatch):
    """Empty clusters were reseeded from points that sat on their centroids up
    to rounding; the exact copy then took the rows from their rounded mean,
    emptying that cluster, and the fit ran to max_iter (300 iterations here
    where scikit-learn stops after 2)."""
    if path == "PyTorch ops":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    from sklearn.datasets import make_blobs

    for seed, distinct, k, dtype in [(0, 5, 8, np.float64), (2, 5, 6, np.float32)]:
        X = make_blobs(2000, 5, centers=6, random_state=seed)[0]
        X = np.repeat(X[:distinct], 100, axis=0).astype(dtype)
        km = KMeans(n_clusters=k, random_state=seed).fit(X)
        assert km.n_iter_ <= 2 + k
        assert len(np.unique(km.labels_)) == distinct
        assert km.inertia_ <= 1e-9 * float((X.astype(np.float64) ** 2).sum())
        # An inertia that rounding took below zero (-7e-12) was reported as is.
        assert min(km.inertia_history_) >= 0.0
    # A point off its centroid by more than rounding is still taken, beside an
    # outlier too (test_certify.py has the float64 case).
    x = np.array([[0.0], [1.0], [3e4]], dtype=np.float32)
    km = KMeans(n_clusters=3, init=x, max_iter=1).fit(x)
    assert km.labels_.tolist() == [0, 1, 2] and km.inertia_ == 0.0


def test_unavailable_or_dataless_device_is_a_clear_error():
    # device='mps' on a torch without MPS had failed inside torch's copy
    # ("PyTorch is not linked with support for mps devices"), device='meta'
    # at the finiteness check ("Tensor.item() cannot be called on meta tensors").
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="Expected device='mps' to be available"):
            KMeans(n_clusters=2, device="mps").fit(X_OK)
        with pytest.raises(ValueError, match="Expected device='mps' to be available"):
            MiniBatchKMeans(n_clusters=2, device="mps").fit(X_OK)
    with pytest.raises(ValueError, match="Expected device to be one that holds data, got 'meta'"):
        KMeans(n_clusters=2, device="meta").fit(X_OK)
    meta = torch.empty(20, 3, device="meta")
    with pytest.raises(ValueError, match="Expected X to hold values, got a tensor on the meta"):
        KMeans(n_clusters=2).fit(meta)
    with pytest.raises(ValueError, match="Expected init to hold values, got a tensor on the meta"):
        KMeans(n_clusters=2, init=meta[:2]).fit(X_OK)


@pytest.mark.filterwarnings("ignore:No knee found")
@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_autocast_region_changes_no_result(paths, request):
    # A fit inside a model's torch.autocast region computed its distances in
    # bfloat16: k-means++ picked other seeds (host paths), and the
    # accelerator paths labelled 915 of these 2,000 rows differently.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    from torchkmeans import elbow
    from torchkmeans.functional import kmeans_plusplus, nearest_centroids

    generator = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 16, generator=generator) + 100
    X += torch.randint(0, 5, (2000, 1), generator=generator) * 30.0
    init = X[:8].clone()

    def results() -> list[torch.Tensor]:
        seeds = kmeans_plusplus(X, 8, generator=torch.Generator().manual_seed(0))[1]
        km = KMeans(n_clusters=8, random_state=0).fit(X)
        given = KMeans(n_clusters=8, init=init, n_init=1).fit(X)
        cosine = KMeans(n_clusters=8, metric="cosine", random_state=0).fit(X)
        mbk = MiniBatchKMeans(n_clusters=8, random_state=0).fit(X)
        return [
            seeds,
            km.labels_,
            given.labels_,
            given.predict(X + 0.5),
            given.transform(X),
            cosine.labels_,
            mbk.labels_,
            nearest_centroids(X, init).labels,
            elbow(X, k=range(1, 5), random_state=0).inertia,
        ]

    expected = results()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = results()
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:No knee found")
@pytest.mark.parametrize("paths", ["fused kernel", "PyTorch ops", "accelerator"])
def test_global_torch_defaults_change_no_result(paths, request, tmp_path, torch_defaults_changed):
    # Under torch.set_default_device (CUDA in a training script, meta here)
    # the buffers of the CPU paths were made on that device: the fused
    # kernel's self-test wrote through their null pointers (a segfault), and
    # fits of numpy data failed ("Tensor on device meta is not on the
    # expected device cpu", "Cannot copy out of meta tensor").
    if paths != "fused kernel":
        request.getfixturevalue("accelerator_paths" if paths == "accelerator" else "torch_ops_only")
    from scipy import sparse

    from torchkmeans import elbow

    X = blobs(n=3000, d=3, k=5)
    X32 = X.astype(np.float32)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    memmap = _read_only_memmap(tmp_path / "X.dat", X32)
    tensor = torch.from_numpy(X32)
    high = np.quantile(X, 0.8)

    def fitted(model, x, **kwargs):
        model.fit(x, **kwargs)
        state = [model.cluster_centers_, model.labels_, model.inertia_, model.n_iter_]
        return [*state, model.predict(x), model.transform(x), model.score(x)]

    def results() -> list:
        return [
            fitted(KMeans(5, random_state=0), X),
            fitted(KMeans(5, random_state=0, n_init=3), X32, sample_weight=weights),
            fitted(KMeans(5, init="random", random_state=0), tensor),
            fitted(KMeans(5, metric="cosine", random_state=0), tensor.double()),
            fitted(KMeans(5, init=X[:5].tolist(), n_init=1), X),
            fitted(KMeans(5, init=lambda x, k, g: X32[:k] + 1, n_init=1), X32),
            fitted(KMeans(5, random_state=0), memmap),
            # On the stored values (a fifth stored), and dense (more stored).
            fitted(KMeans(5, random_state=0), sparse.csr_matrix(np.where(X > high, X, 0.0))),
            fitted(KMeans(5, random_state=0), sparse.csr_matrix(np.where(X > 0, X, 0.0))),
            KMeans(5, random_state=0).fit_predict(X),
            elbow(X, k=range(1, 5), random_state=0).inertia,
            elbow(tensor, k=range(1, 5), random_state=0).inertia,
        ]

    expected = results()
    with torch_defaults_changed():
        got = results()
    assert_identical(got, expected)


def _read_only_memmap(path, X):
    """``X`` written to ``path`` and mapped back read-only, as a user's file."""
    written = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    written[:] = X
    written.flush()
    return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


def _nearly_as_many_clusters_as_points(count, seed):
    """Small data sets, k from n/2 to n, initial centres near distinct points:
    empty clusters are reseeded in most fits, and a reseeding often takes a
    cluster's only point. Dyadic weights sum exactly (a cluster emptied so
    has weight 0, no rounding left) and leave no two points of a cluster
    equally far from its centre (a tie in the choice of the farthest point,
    which each library breaks its own way)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, d = int(rng.integers(20, 121)), int(rng.integers(1, 5))
        k = int(rng.integers(n // 2, n + 1))
        X = rng.normal(size=(n, d))
        init = X[rng.choice(n, k, replace=False)] + rng.normal(scale=0.3, size=(k, d))
        yield X, init, rng.integers(64, 257, n) / 64


@pytest.mark.parametrize(
    "path",
    ["fused kernel", "PyTorch ops", "restarts", "accelerator", "memmap", "accelerator memmap"],
)
def test_a_cluster_emptied_by_a_reseeding_takes_the_heaviest_centre_as_sklearn_does(
    path, request, monkeypatch, tmp_path
):
    """scikit-learn's Lloyd moves the farthest point into each empty cluster;
    a cluster left without weight so then takes the heaviest cluster's centre
    (its undivided sum when that cluster comes later). It kept its previous
    centre: 5 of these 150 fits ended with another inertia or n_iter_ (and
    12 of 400 such unweighted fits, inertia up to 121% apart). The copies
    of the heaviest centre are masked on the accelerator paths, where
    finding copies takes a host read: rounding split their rows."""
    if path != "fused kernel":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    if "accelerator" in path:
        request.getfixturevalue("accelerator_paths")
    for case, (X, init, weights) in enumerate(_nearly_as_many_clusters_as_points(150, 0)):
        k = len(init)
        theirs = SklearnKMeans(k, init=init, n_init=1, algorithm="lloyd").fit(
            X, sample_weight=weights
        )
        if path == "restarts":
            # Restarts in one batch, from these centres and from the reversed ones.
            starts = torch.tensor(np.stack([init, init[::-1]]))
            got = lloyd(torch.tensor(X), starts, sample_weight=torch.tensor(weights))
            labels, inertia, n_iter = (
                got.labels[0].numpy(),
                float(got.inertia[0]),
                int(got.n_iter[0]),
            )
            reversed_fit = SklearnKMeans(k, init=init[::-1], n_init=1, algorithm="lloyd")
            reversed_fit.fit(X, sample_weight=weights)
            assert float(got.inertia[1]) == pytest.approx(
                reversed_fit.inertia_, rel=1e-9, abs=1e-12
            ), case
        else:
            data = X
            if "memmap" in path:
                data = _read_only_memmap(tmp_path / f"{case}.dat", X)
            ours = KMeans(k, init=init, n_init=1).fit(data, sample_weight=weights)
            labels, inertia, n_iter = ours.labels_, ours.inertia_, ours.n_iter_
        # Equal up to rounding (a fit ending on n points as their own centres
        # has an inertia of rounding alone, 1e-31 or so).
        assert inertia == pytest.approx(theirs.inertia_, rel=1e-9, abs=1e-12), case
        assert n_iter == theirs.n_iter_, case
        # The same clusters; scikit-learn can number the reseeded ones in
        # another order (np.argpartition does not sort the farthest points).
        pairs = set(zip(labels.tolist(), theirs.labels_.tolist()))
        assert len(pairs) == len(set(labels.tolist())) == len(set(theirs.labels_.tolist())), case


@pytest.mark.parametrize("path", ["fused kernel", "PyTorch ops", "accelerator", "memmap"])
@pytest.mark.parametrize(
    "init",
    [[[-3.0], [0.2], [0.85], [7.0], [2.1], [2.95], [5.0]], [[0.25], [1.5], [2.25], [8.0], [9.0]]],
)
def test_no_point_is_reseeded_when_every_point_is_on_its_centre(
    init, path, request, monkeypatch, tmp_path
):
    """More clusters than distinct points: once every point sits on its
    centre, scikit-learn relocates nothing (the largest distance is 0) and
    the empty clusters take the heaviest centre. Points at distance 0 were
    moved into the empty clusters every iteration: with the heaviest rule
    the fit from the first init ran to max_iter, and each ended with other
    centres than scikit-learn's."""
    if path != "fused kernel":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    if path == "accelerator":
        request.getfixturevalue("accelerator_paths")
    X = np.repeat(np.arange(4.0), [1, 2, 3, 4])[:, None]
    init = np.array(init)
    data = X
    if path == "memmap":
        data = _read_only_memmap(tmp_path / "x.dat", X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn: 4 distinct points
        theirs = SklearnKMeans(len(init), init=init, n_init=1, algorithm="lloyd").fit(X)
        ours = KMeans(len(init), init=init, n_init=1).fit(data)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_array_equal(ours.cluster_centers_, theirs.cluster_centers_)
    assert ours.n_iter_ == theirs.n_iter_


_X_WARN = np.random.RandomState(0).rand(60, 2)
_FRAME_COLUMNS = ["a", "b"]


def _fitted_on_a_frame(estimator):
    pd = pytest.importorskip("pandas")
    return estimator.fit(pd.DataFrame(_X_WARN, columns=_FRAME_COLUMNS))


@pytest.mark.parametrize(
    ("call", "category", "message"),
    [
        (lambda: MiniBatchKMeans(3, init_size=1).fit(_X_WARN), RuntimeWarning, "init_size=1"),
        (lambda: MiniBatchKMeans(3, init_size=1).partial_fit(_X_WARN), RuntimeWarning, "init_size"),
        (
            lambda: MiniBatchKMeans(3, init_size=1).fit_predict(_X_WARN),
            RuntimeWarning,
            "init_size",
        ),
        (
            lambda: MiniBatchKMeans(3, init=_X_WARN[:3], n_init=2).fit(_X_WARN),
            RuntimeWarning,
            "Explicit initial centers given",
        ),
        (
            lambda: KMeans(3, init=_X_WARN[:3], n_init=2).fit_predict(_X_WARN),
            RuntimeWarning,
            "Explicit initial centers given",
        ),
        (
            lambda: KMeans(3, random_state=0).fit_transform(np.ones((6, 2))),
            ConvergenceWarning,
            "Number of distinct clusters",
        ),
        (
            lambda: MiniBatchKMeans(3, random_state=0).fit_predict(np.ones((6, 2))),
            ConvergenceWarning,
            "Number of distinct clusters",
        ),
        (
            lambda: _fitted_on_a_frame(KMeans(3, random_state=0)).predict(_X_WARN),
            UserWarning,
            "X does not have valid feature names",
        ),
        (
            lambda: _fitted_on_a_frame(MiniBatchKMeans(3, random_state=0)).score(_X_WARN),
            UserWarning,
            "X does not have valid feature names",
        ),
    ],
)
def test_warnings_point_at_the_callers_line(call, category, message):
    # MiniBatchKMeans.fit's warnings pointed past the caller ("sys:1" from a
    # script), fit_predict's into the package.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    ours = [w for w in caught if issubclass(w.category, category) and message in str(w.message)]
    assert ours, [str(w.message) for w in caught]
    lines = {line for _, _, line in call.__code__.co_lines() if line is not None}
    assert {w.filename for w in ours} == {__file__}
    assert {w.lineno for w in ours} <= lines


def test_strided_arrays_and_frames_are_not_copied_before_the_fit(monkeypatch):
    """The fit's centred copy reads any strides: a Fortran-ordered array, a
    data frame's block or every other row reach it as views of the caller's
    memory (a C-ordered copy first had doubled the fit's peak memory), and
    fit exactly as the C-ordered array does, to the last bit of the inertia
    (its final distances are summed along contiguous rows, by the fused
    kernel for narrow rows, as for C order)."""
    # The module, not the function torchkmeans.kmeans that shadows it on the package.
    kmeans_module = importlib.import_module("torchkmeans.kmeans")
    pd = pytest.importorskip("pandas")
    seen = []
    original = kmeans_module.kmeans

    def recording(x, *args, **kwargs):
        seen.append(x)
        return original(x, *args, **kwargs)

    monkeypatch.setattr(kmeans_module, "kmeans", recording)
    for X in (blobs(n=300, d=5, k=3, seed=0), blobs(n=2000, d=40, k=3, seed=1).astype(np.float32)):
        wide = np.zeros((2 * X.shape[0], 2 * X.shape[1]), dtype=X.dtype)
        wide[::2, ::2] = X
        expected = KMeans(n_clusters=3, random_state=0).fit(X)
        frame = pd.DataFrame(X, index=np.arange(X.shape[0])[::-1] + 1000)
        for data, memory in [
            (np.asfortranarray(X), None),
            (wide[::2, ::2], wide),
            (frame, frame.to_numpy()),
        ]:
            seen.clear()
            km = KMeans(n_clusters=3, random_state=0).fit(data)
            memory = data if memory is None else memory
            assert np.shares_memory(seen[0].numpy(), memory)
            np.testing.assert_array_equal(km.labels_, expected.labels_)
            np.testing.assert_array_equal(km.cluster_centers_, expected.cluster_centers_)
            assert km.inertia_ == expected.inertia_
    # Negative strides, which torch cannot wrap, are still copied.
    km = KMeans(n_clusters=3, random_state=0).fit(np.ascontiguousarray(X[::-1])[::-1])
    np.testing.assert_array_equal(km.labels_, expected.labels_)


@pytest.mark.parametrize("path", ["fused kernel", "PyTorch ops"])
@pytest.mark.parametrize("d", [16, 128])
def test_cosine_inertia_of_tight_float32_clusters_is_their_1_minus_cos(path, d, monkeypatch):
    """1 - x.c of float32 unit rows keeps the rounding of their lengths (~1e-7):
    rows 1e-3 from their centroid had inertia_, score and the elbow's inertia
    up to 2.4x the exact 1 - cos of the data."""
    if path == "PyTorch ops":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    rng = np.random.default_rng(0)
    base = rng.normal(size=d)
    offsets = make_blobs(2000, d, centers=5, cluster_std=0.3, random_state=1)[0]
    X = (base / np.linalg.norm(base) + 1e-3 * offsets / np.abs(offsets).max()).astype(np.float32)
    units = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)

    def exact(centres, labels):
        centres = np.asarray(centres, dtype=np.float64)
        return float((((units - centres[labels]) ** 2).sum(1) / 2).sum())

    km = KMeans(n_clusters=5, metric="cosine", random_state=0).fit(X)
    expected = exact(km.cluster_centers_, km.labels_)
    assert km.inertia_ == pytest.approx(expected, rel=1e-4)
    assert -km.score(X) == pytest.approx(expected, rel=1e-4)
    # The padded batches of the PyTorch ops (and every accelerator) sum 1 - x.c
    # from their scores: within 3e-4 here, not 1e-4 (README, known limits).
    result = elbow(X, k=range(1, 7), metric="cosine", random_state=0)
    kernel = path == "fused kernel" and not os.environ.get("TORCHKMEANS_TEST_ACCELERATOR_PATHS")
    for i in range(len(result.ks)):
        assert result.inertia[i] == pytest.approx(
            exact(result.centroids[i], result.labels[i]), rel=1e-4 if kernel else 1e-3
        )
    # A row of zeros stays at 1 - cos = 1 from every centre.
    X[0] = 0.0
    km = KMeans(n_clusters=5, metric="cosine", random_state=0).fit(X)
    centres = np.asarray(km.cluster_centers_, dtype=np.float64)[km.labels_[1:]]
    expected = 1.0 + float((((units[1:] - centres) ** 2).sum(1) / 2).sum())
    assert km.inertia_ == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_transform_of_tight_clusters_is_their_1_minus_cos(dtype):
    """transform's 1 - x.c kept the rounding of the rows' unit lengths: float32
    rows 1e-3 from their centre were up to 45x too far from it."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=16)
    offsets = make_blobs(1000, 16, centers=4, cluster_std=0.3, random_state=2)[0]
    scale = 1e-3 if dtype == np.float32 else 1e-7
    X = (base / np.linalg.norm(base) + scale * offsets / np.abs(offsets).max()).astype(dtype)
    X[0] = 0.0
    km = KMeans(n_clusters=4, metric="cosine", random_state=0).fit(X)
    units = X.astype(np.float64)
    norms = np.linalg.norm(units, axis=1, keepdims=True)
    units = np.divide(units, norms, out=np.zeros_like(units), where=norms > 0)
    centres = np.asarray(km.cluster_centers_, dtype=np.float64)
    exact = ((units[:, None] - centres[None]) ** 2).sum(-1) / 2
    exact[0] = 1.0  # a row of zeros
    distances = km.transform(X)
    assert distances.dtype == dtype
    np.testing.assert_allclose(distances, exact, rtol=1e-3)
    assert distances.min(1)[1:].mean() == pytest.approx(-km.score(X[1:]) / 999, rel=1e-4)


def test_a_view_of_one_row_with_a_negative_stride_is_read():
    """numpy calls a view C-contiguous whatever the stride of a dimension of
    length 1, and torch refuses a negative one: the last row of reversed data
    (``X[::-1][:1]``) failed predict with torch's stride error, and a reversed
    memmap failed fit (its dtype is probed on its first row)."""
    X = load_wine().data[::-1]
    one = X[:1]
    assert one.strides[0] < 0 and one.flags.c_contiguous
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    np.testing.assert_array_equal(km.predict(one), km.labels_[:1])
    np.testing.assert_array_equal(km.transform(one), km.transform(X)[:1])
    assert KMeans(n_clusters=1).fit(one).inertia_ == 0.0


def test_a_reversed_memmap_is_streamed(tmp_path):
    X = load_wine().data
    stored = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    stored[:] = X
    stored.flush()
    reversed_rows = np.load(tmp_path / "x.npy", mmap_mode="r")[::-1]
    assert isinstance(reversed_rows, np.memmap)
    init = X[[0, 70, 140]]
    streamed = KMeans(n_clusters=3, init=init).fit(reversed_rows)
    in_memory = KMeans(n_clusters=3, init=init).fit(X[::-1].copy())
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    np.testing.assert_array_equal(streamed.predict(reversed_rows), in_memory.labels_)


def test_a_memoryview_is_an_array_like():
    """A buffer (``memoryview`` of an array) is read as numpy reads it, as
    scikit-learn does; it was taken for an iterable of batches and refused."""
    X = load_wine().data
    expected = KMeans(n_clusters=3, random_state=0).fit(X)
    view = memoryview(np.ascontiguousarray(X))
    km = KMeans(n_clusters=3, random_state=0).fit(view)
    np.testing.assert_array_equal(km.labels_, expected.labels_)
    np.testing.assert_array_equal(km.predict(view), expected.labels_)
    assert km.score(view) == expected.score(X)
    assert isinstance(MiniBatchKMeans(n_clusters=3, random_state=0).fit(view).labels_, np.ndarray)


@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_a_streamed_memmap_beyond_the_fitted_dtype_is_said_to_be_so(tmp_path, method):
    """float64 rows beyond float32's range, given to a float32 fit: in memory
    and from a memmap alike, the error says so, not that the file (which
    holds none) contains NaN or infinity."""
    X = load_wine().data
    km = KMeans(n_clusters=3, random_state=0).fit(X.astype(np.float32))
    beyond = X.copy()
    beyond[100, 2] = 1e39
    np.save(tmp_path / "beyond.npy", beyond)
    stored = np.load(tmp_path / "beyond.npy", mmap_mode="r")
    match = r"Input X holds values beyond the range of float32 \(converted from float64\)"
    for data in (beyond, stored):
        with pytest.raises(ValueError, match=match):
            getattr(km, method)(data)
    beyond[100, 2] = np.inf
    np.save(tmp_path / "infinite.npy", beyond)
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        getattr(km, method)(np.load(tmp_path / "infinite.npy", mmap_mode="r"))
