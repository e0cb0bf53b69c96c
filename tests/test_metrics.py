"""torchkmeans.metrics against scikit-learn.metrics, blockwise memory, batches, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import assert_identical, on_the_cpu_paths_only
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn import datasets
from sklearn import metrics as sk

from torchkmeans import metrics
from torchkmeans.kmeans import KMeans

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RTOL = 1e-5  # the acceptance bound; float64 agrees far closer in practice


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    loader = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
    }
    bunch = loader[name]()
    return bunch.data.astype(np.float64), bunch.target


@pytest.fixture(scope="module", params=["digits", "iris", "wine"])
def dataset(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = _data(request.param)
    fitted = KMeans(n_clusters=4, random_state=0).fit(X).labels_
    return X, y, fitted


@pytest.mark.parametrize("which", ["target", "kmeans"])
def test_scores_match_sklearn_float64(dataset, which):
    X, y, fitted = dataset
    labels = y if which == "target" else fitted
    assert metrics.silhouette_score(X, labels) == pytest.approx(
        sk.silhouette_score(X, labels), rel=RTOL
    )
    np.testing.assert_allclose(
        metrics.silhouette_samples(X, labels),
        sk.silhouette_samples(X, labels),
        rtol=RTOL,
        atol=1e-12,
    )
    assert metrics.calinski_harabasz_score(X, labels) == pytest.approx(
        sk.calinski_harabasz_score(X, labels), rel=RTOL
    )
    assert metrics.davies_bouldin_score(X, labels) == pytest.approx(
        sk.davies_bouldin_score(X, labels), rel=RTOL
    )


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_silhouette_other_metrics_match_sklearn(metric):
    X, y = _data("iris")
    np.testing.assert_allclose(
        metrics.silhouette_samples(X, y, metric=metric),
        sk.silhouette_samples(X, y, metric=metric),
        rtol=RTOL,
        atol=1e-10,
    )


@pytest.mark.parametrize("metric", ["manhattan", "cityblock", "l1", "l2"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silhouette_metrics_of_sklearn_names_match_sklearn(metric, dtype):
    """scikit-learn's silhouette takes these names; they had been refused."""
    X, y = _data("wine")
    X = X.astype(dtype)
    np.testing.assert_allclose(
        metrics.silhouette_samples(X, y, metric=metric),
        sk.silhouette_samples(X.astype(np.float64), y, metric=metric),
        rtol=RTOL,
        atol=1e-6,
    )
    assert metrics.silhouette_score(X, y, metric=metric) == pytest.approx(
        sk.silhouette_score(X.astype(np.float64), y, metric=metric), rel=RTOL
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silhouette_of_a_precomputed_distance_matrix_matches_sklearn(dtype):
    """metric='precomputed' (X is the n x n distance matrix), as scikit-learn's,
    also for a subset of samples: it had been refused."""
    from sklearn.metrics import pairwise_distances

    X, y = _data("iris")
    distances = pairwise_distances(X, metric="manhattan").astype(dtype)
    expected = sk.silhouette_samples(distances, y, metric="precomputed")
    np.testing.assert_allclose(
        metrics.silhouette_samples(distances, y, metric="precomputed"),
        expected,
        rtol=RTOL,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        metrics.silhouette_samples(distances, y, metric="precomputed"),
        metrics.silhouette_samples(X, y, metric="manhattan"),
        rtol=RTOL,
        atol=1e-6,
    )
    score = metrics.silhouette_score(
        torch.tensor(distances),
        torch.tensor(y),
        metric="precomputed",
        sample_size=60,
        random_state=3,
    )
    reference = sk.silhouette_score(
        distances, y, metric="precomputed", sample_size=60, random_state=3
    )
    assert score == pytest.approx(reference, rel=RTOL)


def test_float32_close_to_sklearn_and_torch_gives_float():
    X, y = _data("wine")
    x = torch.tensor(X, dtype=torch.float32)
    value = metrics.silhouette_score(x, torch.tensor(y))
    assert isinstance(value, float)
    assert value == pytest.approx(sk.silhouette_score(X, y), rel=1e-4)
    samples = metrics.silhouette_samples(x, torch.tensor(y))
    assert isinstance(samples, torch.Tensor) and samples.dtype == torch.float32


def _far_from_the_mean() -> tuple[np.ndarray, np.ndarray]:
    """Float32 clusters of spread 1 at x = +-1e4 (two of them 10 apart), 200 points each."""
    centres = np.array([[1e4, 0.0, 0.0], [-1e4, 0.0, 0.0], [1e4, 10.0, 0.0]])
    X = np.random.RandomState(1).randn(600, 3) + np.repeat(centres, 200, axis=0)
    return X.astype(np.float32), np.repeat([0, 1, 2], 200)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("one_hot", [True, False])
def test_float32_far_from_the_mean_scores_as_float64(metric, one_hot, monkeypatch):
    """In float32, |x|^2 - 2 x.y + |y|^2 lost the distances within a cluster (0.865 for 0.845)."""
    X, labels = _far_from_the_mean()
    if not one_hot:
        monkeypatch.setattr(metrics, "_sums_by_product", lambda *args: False)
    exact = X.astype(np.float64)
    expected = sk.silhouette_samples(exact, labels, metric=metric)
    samples = metrics.silhouette_samples(X, labels, metric=metric)
    assert samples.dtype == np.float32
    np.testing.assert_allclose(samples, expected, rtol=RTOL, atol=1e-6)
    assert metrics.silhouette_score(X, labels, metric=metric) == pytest.approx(
        sk.silhouette_score(exact, labels, metric=metric), rel=RTOL
    )
    other = labels.copy()
    other[::3] = 3
    batch = np.stack([labels, other])
    scores = metrics.silhouette_score(torch.tensor(X), torch.tensor(batch), metric=metric)
    assert scores.dtype == torch.float64
    expected = [sk.silhouette_score(exact, row, metric=metric) for row in batch]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=RTOL)


@pytest.mark.parametrize("one_hot", [True, False])
def test_cosine_silhouette_of_rows_of_nearly_one_direction(one_hot, monkeypatch):
    """1 - u.v cancelled to rounding noise for rows 1e8 + noise (0.005 for 0.78)."""
    if not one_hot:
        monkeypatch.setattr(metrics, "_sums_by_product", lambda *args: False)
    blobs, labels = datasets.make_blobs(300, 3, centers=2, random_state=0)
    X = 1e8 + 1e-3 * blobs
    units = X / np.linalg.norm(X, axis=1, keepdims=True)
    # Differences of unit rows keep their digits: 1 - cos = |u - v|^2 / 2.
    exact = ((units[:, None] - units[None]) ** 2).sum(-1) / 2
    expected = sk.silhouette_samples(exact, labels, metric="precomputed")
    assert sk.silhouette_score(exact, labels, metric="precomputed") > 0.7
    samples = metrics.silhouette_samples(X, labels, metric="cosine")
    np.testing.assert_allclose(samples, expected, rtol=1e-4, atol=1e-6)
    # Rows of zeros stay at distance 1 from every row, as in scikit-learn.
    X[::7] = 0.0
    units = np.where((X != 0).any(1, keepdims=True), units, 0.0)
    exact = np.where((X != 0).any(1)[:, None] & (X != 0).any(1)[None], exact, 1.0 - units @ units.T)
    np.fill_diagonal(exact, 0.0)
    np.testing.assert_allclose(
        metrics.silhouette_samples(X, labels, metric="cosine"),
        sk.silhouette_samples(exact, labels, metric="precomputed"),
        rtol=1e-4,
        atol=1e-6,
    )


def test_float32_far_from_the_mean_centroid_scores_as_float64():
    X, labels = _far_from_the_mean()
    exact = X.astype(np.float64)
    for function in ("calinski_harabasz_score", "davies_bouldin_score"):
        ours = getattr(metrics, function)(X, labels)
        assert ours == pytest.approx(getattr(sk, function)(exact, labels), rel=RTOL), function


def test_arbitrary_label_values_and_singletons_match_sklearn():
    X, _ = _data("iris")
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([-7, 3, 100, 42]), size=X.shape[0])
    labels[5] = 999  # a cluster of one sample: silhouette 0 for it
    for function in ("silhouette_score", "calinski_harabasz_score", "davies_bouldin_score"):
        ours = getattr(metrics, function)(X, labels)
        assert ours == pytest.approx(getattr(sk, function)(X, labels), rel=RTOL), function
    samples = metrics.silhouette_samples(X, labels)
    assert samples[5] == 0.0
    names = np.array(["a", "b", "c"])[labels % 3]
    assert metrics.silhouette_score(X, names) == pytest.approx(sk.silhouette_score(X, names))


def test_labels_of_any_int64_range_match_sklearn():
    """Shifting the labels to 0 and offsetting the rows of a batch overflowed int64 (bincount)."""
    X, _ = _data("iris")
    extreme = np.repeat(np.array([-(2**63), 2**63 - 1]), 75)
    wide = np.repeat(np.array([0, 2**62]), 75)  # fine alone, overflowed in a batch of 2
    unsigned = np.repeat(np.array([0, 2**64 - 1], dtype=np.uint64), 75)
    batch = np.stack([extreme, wide, wide[::-1], np.arange(150) % 3])
    for function in ("silhouette_score", "calinski_harabasz_score", "davies_bouldin_score"):
        ours, reference = getattr(metrics, function), getattr(sk, function)
        for labels in (extreme, unsigned):
            assert ours(X, labels) == pytest.approx(reference(X, labels), rel=RTOL), function
        expected = [reference(X, row) for row in batch]
        np.testing.assert_allclose(ours(X, batch), expected, rtol=RTOL, err_msg=function)
    samples = metrics.silhouette_samples(torch.tensor(X), torch.tensor(batch))
    np.testing.assert_allclose(samples[1].numpy(), sk.silhouette_samples(X, wide), rtol=RTOL)
    within = [metrics.inertia(X, row) for row in batch]
    np.testing.assert_allclose(metrics.inertia(X, batch), within, rtol=1e-12)


def test_integral_float_labels_beyond_int64_stay_distinct():
    """Their cast to int64 overflowed: 1e19, 2e19 and 3e19 became one cluster ("1 label")."""
    X, _ = _data("iris")
    huge = np.repeat([1e19, 2e19, 3e19], 50)
    mixed = np.repeat([-1.5e19, 5.0, 3e19], 50)
    for function in ("silhouette_score", "calinski_harabasz_score", "davies_bouldin_score"):
        ours, reference = getattr(metrics, function), getattr(sk, function)
        for labels in (huge, mixed):
            assert ours(X, labels) == pytest.approx(reference(X, labels), rel=RTOL), function
        batch = ours(torch.tensor(X), torch.tensor(np.stack([huge, mixed])))
        expected = [reference(X, huge), reference(X, mixed)]
        np.testing.assert_allclose(batch.numpy(), expected, rtol=RTOL, err_msg=function)
    assert metrics.inertia(X, huge) == pytest.approx(metrics.inertia(X, np.repeat([0, 1, 2], 50)))
    with pytest.raises(ValueError, match=r"indices into centers, got values outside int64"):
        metrics.inertia(X, huge, np.zeros((3, 4)))
    for bad in (np.inf, np.nan):
        with pytest.raises(TypeError, match=r"integers or finite floats, got NaN or infinity"):
            metrics.silhouette_score(X, np.r_[bad, np.zeros(149)])


def test_non_integral_float_labels_are_categories_as_in_sklearn():
    """scikit-learn encodes any labels; 0.5, 1.5 and 2.5 had been refused."""
    X, _ = _data("wine")
    labels = np.array([0.5, 1.5, 2.5])[np.arange(len(X)) % 3]
    other = np.where(labels == 2.5, -1e30, labels)
    for function in ("silhouette_score", "calinski_harabasz_score", "davies_bouldin_score"):
        ours, reference = getattr(metrics, function), getattr(sk, function)
        for row in (labels, other):
            assert ours(X, row) == pytest.approx(reference(X, row), rel=RTOL), function
        batch = ours(torch.tensor(X), torch.tensor(np.stack([labels, other])))
        expected = [reference(X, labels), reference(X, other)]
        np.testing.assert_allclose(batch.numpy(), expected, rtol=RTOL, err_msg=function)
    np.testing.assert_allclose(
        metrics.silhouette_samples(X, labels), sk.silhouette_samples(X, labels), rtol=RTOL
    )
    assert metrics.inertia(X, labels) == pytest.approx(metrics.inertia(X, labels * 2 - 1))
    with pytest.raises(TypeError, match=r"Expected labels to hold integers, got non-integral"):
        metrics.inertia(X, labels, np.zeros((3, X.shape[1])))


@SETTINGS
@given(
    arrays(
        np.int64,
        st.tuples(st.integers(1, 4), st.integers(1, 12)),
        elements=st.one_of(
            st.integers(-3, 3), st.sampled_from([-(2**63), -(2**62), 2**62, 2**63 - 1])
        ),
    )
)
def test_encode_numbers_each_row_in_sorted_label_order(labels):
    encoded = metrics._encode(torch.tensor(labels), True, torch.float64)
    for row, codes, counts, k in zip(labels, encoded.codes, encoded.counts, encoded.n_clusters):
        values, inverse, sizes = np.unique(row, return_inverse=True, return_counts=True)
        assert k == len(values)
        np.testing.assert_array_equal(codes.numpy(), inverse.ravel())
        np.testing.assert_array_equal(counts[:k].numpy(), sizes)
        assert not counts[k:].any()


@pytest.mark.parametrize(
    "labels",
    [
        np.random.default_rng(5).integers(0, 10, (1, 5000)),
        np.random.default_rng(6).integers(-40, 40, (3, 500)),
        np.array([[7, 7, 7, 9], [-2, 5, 5, -2]]),
        np.array([[0]]),
    ],
)
def test_encode_by_a_table_equals_encode_by_sorting(labels, monkeypatch):
    tensor = torch.tensor(labels)
    table = metrics._encode(tensor, True, torch.float64)
    monkeypatch.setattr(metrics, "_TABLE_LABELS", -(2**40))
    sorted_ = metrics._encode(tensor, True, torch.float64)
    for ours, theirs in zip(table, sorted_):
        if isinstance(ours, torch.Tensor):
            assert ours.dtype == theirs.dtype
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_cluster_labels_are_encoded_and_compared_without_a_sort(monkeypatch):
    """Labels 0..k-1 (what a fit gives) are numbered from a table of their
    values, and the contingency of two of them is a table of its cells: the
    sorts took 3/4 of an ARI of 200,000 samples."""
    rng = np.random.default_rng(7)
    labels_true, labels_pred = rng.integers(0, 100, 20000), rng.integers(0, 100, 20000)
    sorts = []
    for name in ("sort", "argsort"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, **kwargs):
            sorts.append(tuple(self.shape))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    real_unique = torch.unique
    monkeypatch.setattr(
        torch, "unique", lambda *a, **k: sorts.append("unique") or real_unique(*a, **k)
    )
    value = metrics.adjusted_rand_score(labels_true, labels_pred)
    assert sorts == []
    assert value == pytest.approx(sk.adjusted_rand_score(labels_true, labels_pred), abs=1e-15)
    monkeypatch.setattr(metrics, "_TABLE_LABELS", -(2**40))
    assert metrics.adjusted_rand_score(labels_true, labels_pred) == value
    assert sorts


def test_degenerate_cases_follow_sklearn():
    X = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    labels = [0, 0, 1, 1]
    assert metrics.davies_bouldin_score(X, labels) == sk.davies_bouldin_score(X, labels) == 0.0
    assert metrics.calinski_harabasz_score(X, labels) == sk.calinski_harabasz_score(X, labels)
    assert metrics.silhouette_score(X, labels) == pytest.approx(sk.silhouette_score(X, labels))


def test_batched_labels_equal_rows_and_give_nan_where_undefined():
    X, y = _data("wine")
    fitted = KMeans(n_clusters=5, random_state=0).fit(X).labels_
    batch = np.stack([y, fitted, np.zeros_like(y)])
    for function in ("silhouette_score", "calinski_harabasz_score", "davies_bouldin_score"):
        values = getattr(metrics, function)(X, batch)
        assert isinstance(values, np.ndarray) and values.shape == (3,)
        assert values[0] == pytest.approx(getattr(metrics, function)(X, y), rel=1e-12)
        assert values[1] == pytest.approx(getattr(metrics, function)(X, fitted), rel=1e-12)
        assert np.isnan(values[2])
    samples = metrics.silhouette_samples(X, batch)
    assert samples.shape == (3, X.shape[0]) and np.isnan(samples[2]).all()
    tensor = metrics.davies_bouldin_score(torch.tensor(X), torch.tensor(batch))
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3,)


def test_index_add_path_equals_one_hot_path(monkeypatch):
    X, y = _data("digits")
    monkeypatch.setattr(metrics, "_sums_by_product", lambda *args: True)
    expected = metrics.silhouette_samples(X, y)
    monkeypatch.setattr(metrics, "_sums_by_product", lambda *args: False)
    np.testing.assert_allclose(metrics.silhouette_samples(X, y), expected, rtol=1e-10, atol=1e-14)


@on_the_cpu_paths_only
def test_cpu_sums_one_labelling_of_many_clusters_by_index_add():
    """A product with a one-hot (n, 128) matrix made the silhouette of 20,000 x 16
    2.8x slower than index_add_ on the CPU, and slower than scikit-learn."""
    cpu = torch.device("cpu")
    assert not metrics._sums_by_product(128, 1, cpu)
    assert not metrics._sums_by_product(8, 1, cpu)
    assert metrics._sums_by_product(2, 1, cpu)
    assert metrics._sums_by_product(55, 10, cpu)  # a sweep k = 1..10
    assert not metrics._sums_by_product(300, 20, cpu)


def test_sample_size_draws_sklearns_subset():
    X, y = _data("digits")
    ours = metrics.silhouette_score(X, y, sample_size=300, random_state=3)
    assert ours == pytest.approx(sk.silhouette_score(X, y, sample_size=300, random_state=3))
    assert ours != pytest.approx(metrics.silhouette_score(X, y), rel=1e-6)
    generator = torch.Generator().manual_seed(0)
    value = metrics.silhouette_score(X, y, sample_size=500, random_state=generator)
    assert -1.0 <= value <= 1.0


def test_sample_size_past_n_samples_scores_every_sample():
    """As scikit-learn (permutation(n)[:size]); it raised a ValueError."""
    X, y = _data("iris")
    ours = metrics.silhouette_score(X, y, sample_size=1000, random_state=0)
    assert ours == pytest.approx(sk.silhouette_score(X, y, sample_size=1000, random_state=0))
    assert ours == pytest.approx(metrics.silhouette_score(X, y))


def test_silhouette_of_50000_by_32_stays_in_small_blocks(monkeypatch):
    """No n x n matrix (10 GB in float32): every distance block fits a 16 MiB budget."""
    budget = 16 * 2**20
    shapes: list[tuple[int, int, int]] = []
    original = metrics._distance_block

    def spy(data, data_sq, rows, columns, metric, *rest):
        block = original(data, data_sq, rows, columns, metric, *rest)
        shapes.append((*block.shape, block.element_size()))
        return block

    monkeypatch.setattr(metrics, "_distance_block", spy)
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=generator) * 4
    labels = torch.randint(0, 4, (50_000,), generator=generator)
    x = centres[labels] + torch.randn(50_000, 32, generator=generator)
    value = metrics.silhouette_score(x, labels, memory_budget=budget)
    assert 0.3 < value < 1.0
    assert len(shapes) > 1 and sum(rows * columns for rows, columns, _ in shapes) == 50_000**2
    assert all(rows * columns * size <= budget and rows < 50_000 for rows, columns, size in shapes)
    # The same blocks on a subset agree with scikit-learn's chunked computation.
    subset = slice(0, 3000)
    assert metrics.silhouette_score(x[subset], labels[subset], memory_budget=2**18) == (
        pytest.approx(
            sk.silhouette_score(x[subset].double().numpy(), labels[subset].numpy()), rel=1e-4
        )
    )
    assert metrics.calinski_harabasz_score(x, labels, memory_budget=budget) > 0
    assert metrics.davies_bouldin_score(x, labels, memory_budget=budget) > 0


def test_on_device(device):
    X, y = _data("iris")
    x = torch.tensor(X, device=device)
    labels = torch.tensor(y, device=device)
    assert metrics.silhouette_score(x, labels) == pytest.approx(sk.silhouette_score(X, y), rel=RTOL)
    samples = metrics.silhouette_samples(x, labels)
    assert samples.device.type == device
    batch = metrics.calinski_harabasz_score(x, labels.expand(2, -1))
    assert batch.device.type == device


def test_inertia_variants():
    X, _ = _data("wine")
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    assert metrics.inertia(X, centers=km.cluster_centers_) == pytest.approx(km.inertia_, rel=1e-10)
    assert metrics.inertia(X, km.labels_, km.cluster_centers_) == pytest.approx(
        km.inertia_, rel=1e-10
    )
    # Labels alone: the within-cluster sum of squares around the cluster means.
    wcss = sum(((X[km.labels_ == c] - X[km.labels_ == c].mean(0)) ** 2).sum() for c in range(3))
    assert metrics.inertia(X, km.labels_) == pytest.approx(wcss, rel=1e-10)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0])
    weighted = sum(
        (
            weights[km.labels_ == c, None]
            * (X[km.labels_ == c] - np.average(X[km.labels_ == c], 0, weights[km.labels_ == c]))
            ** 2
        ).sum()
        for c in range(3)
    )
    assert metrics.inertia(X, km.labels_, sample_weight=weights) == pytest.approx(weighted)
    both = metrics.inertia(X, np.stack([km.labels_, km.labels_]), km.cluster_centers_)
    assert both.shape == (2,) and both[1] == pytest.approx(km.inertia_)


def _peak_growth(calls: str) -> int:
    """Bytes the resident set grows by while ``calls`` run on ``x``, ``labels``,
    ``weights`` and ``centers`` (200,000 x 128 float32, 16 clusters), in a
    fresh process so that the peak belongs to these calls alone."""
    script = textwrap.dedent(
        """
        import resource, torch
        from torchkmeans import metrics
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(200_000, 128, generator=generator)
        labels = torch.randint(0, 16, (200_000,), generator=generator)
        weights = torch.rand(200_000, generator=generator)
        centers = x[:16].clone()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        {calls}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) * 1024)
        """
    ).format(calls=calls)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_inertia_with_labels_keeps_to_the_memory_budget():
    """With labels and centers, or labels and weights, inertia held float64
    copies of all rows at once whatever memory_budget: 4x the float32 data
    (16x for four labellings, 6x with weights)."""
    growth = _peak_growth(
        "metrics.inertia(x, labels.expand(4, -1), centers, memory_budget=2**20); "
        "metrics.inertia(x, labels, sample_weight=weights, memory_budget=2**20)"
    )
    assert growth < 200_000 * 128 * 4 // 4, growth


def test_calinski_harabasz_holds_no_float64_copy_of_the_data():
    """The mean of the data was taken over a float64 copy of every row: 2x the float32 data."""
    growth = _peak_growth("metrics.calinski_harabasz_score(x, labels, memory_budget=2**20)")
    assert growth < 200_000 * 128 * 4 // 4, growth


def test_davies_bouldin_of_many_clusters_holds_no_k_by_k_by_d_block():
    """The centroid distances broadcast k x k x d float64: 1 GB for k = 1000."""
    growth = _peak_growth(
        "metrics.davies_bouldin_score(x, torch.arange(200_000) % 1000, memory_budget=2**20)"
    )
    assert growth < 200_000 * 128 * 4 // 2, growth  # k x k float64 temporaries: 8 MB each


def test_inertia_of_float64_centers_on_float32_data_far_from_the_origin():
    """The centres were rounded to float32 before the search: 79.035 for 78.883 at 1e6."""
    X, _ = _data("iris")
    km = KMeans(n_clusters=3, random_state=0).fit(X)
    X32 = (X + 1e6).astype(np.float32)
    centers = km.cluster_centers_ + 1e6
    exact = metrics.inertia(X32.astype(np.float64), centers=centers)
    assert metrics.inertia(X32, centers=centers) == pytest.approx(exact, rel=1e-6)
    labels = metrics.inertia(X32, centers=centers)  # nearest centre: at most any labelling's
    assert labels <= metrics.inertia(X32, km.labels_, centers) * (1 + 1e-6)
    tensor = metrics.inertia(torch.tensor(X32), centers=torch.tensor(centers))
    assert tensor == pytest.approx(exact, rel=1e-6)


@SETTINGS
# Coordinates on a 0.01 grid and integer shifts: translation then changes no
# distance beyond rounding (a subnormal offset such as 1e-45 would vanish under
# x + 1 and turn distinct points into equal ones).
@given(
    arrays(np.float64, (12, 2), elements=st.integers(-5000, 5000).map(lambda v: v / 100)),
    st.lists(st.integers(0, 2), min_size=12, max_size=12),
    st.integers(-1000, 1000),
)
def test_silhouette_properties(X, labels, shift):
    labels = np.array(labels)
    if len(np.unique(labels)) < 2:
        return
    values = metrics.silhouette_samples(X, labels)
    assert np.all(values >= -1 - 1e-9) and np.all(values <= 1 + 1e-9)
    np.testing.assert_allclose(values, sk.silhouette_samples(X, labels), atol=1e-7)
    # Renaming the clusters or translating the data changes nothing.
    np.testing.assert_allclose(metrics.silhouette_samples(X, 2 - labels), values, atol=1e-9)
    np.testing.assert_allclose(metrics.silhouette_samples(X + shift, labels), values, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], [0, 0, 0]),
            ValueError,
            r"Number of labels is 1\. Valid values are 2 to n_samples - 1",
        ),
        (
            lambda: metrics.davies_bouldin_score([[0.0], [1.0]], [0, 1]),
            ValueError,
            r"Number of labels is 2",
        ),
        (
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], [0, 1]),
            ValueError,
            r"Expected labels to be of shape \(3,\) or \(batch, 3\), got shape \(2,\)",
        ),
        (
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], [0, 1, 1], metric="hamming"),
            ValueError,
            r"Expected metric to be one of 'euclidean', 'sqeuclidean', 'cosine', 'manhattan', "
            r"'precomputed', 'l2', 'cityblock', 'l1', got 'hamming'",
        ),
        (
            lambda: metrics.silhouette_score(
                [[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]], [0, 1, 1], metric="precomputed"
            ),
            ValueError,
            r"Expected X to be a square distance matrix of shape \(n_samples, n_samples\) with "
            r"metric='precomputed', got shape \(3, 2\)",
        ),
        (
            lambda: metrics.silhouette_samples(
                [[0.0, 1.0, 2.0], [1.0, 0.5, 1.0], [2.0, 1.0, 0.0]], [0, 1, 1], metric="precomputed"
            ),
            ValueError,
            r"The precomputed distance matrix contains non-zero elements on the diagonal",
        ),
        (
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], [0, 1, 1], sample_size=0),
            ValueError,
            r"sample_size",
        ),
        (
            # 0.5 is a category, as in scikit-learn; NaN is none
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], [np.nan, 1, 1]),
            TypeError,
            r"Expected labels to hold integers or finite floats, got NaN or infinity",
        ),
        (
            # numbered as categories before (as complex tensors never were)
            lambda: metrics.inertia([[0.0], [1.0], [2.0]], np.array([0, 1, 1]) + 1j),
            TypeError,
            r"Expected labels to hold integers, got dtype complex128",
        ),
        (
            lambda: metrics.calinski_harabasz_score([[0.0], [np.nan]], [0, 1]),
            ValueError,
            r"Input X contains NaN",
        ),
        (lambda: metrics.inertia([[0.0]]), ValueError, r"Expected labels or centers"),
        (
            lambda: metrics.inertia([[0.0], [1.0]], [0, 2], [[0.0], [1.0]]),
            ValueError,
            r"Expected labels to be indices into centers",
        ),
        (
            lambda: metrics.inertia([[0.0], [1.0]], centers=[[0.0, 1.0]]),
            ValueError,
            r"Expected centers to be of shape \(k, 1\)",
        ),
        (
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], [0, 1, 1], memory_budget=0),
            ValueError,
            r"memory_budget=0 should be >= 1",
        ),
        # An empty batch of labellings failed inside torch's max().
        (
            lambda: metrics.silhouette_score([[0.0], [1.0], [2.0]], np.zeros((0, 3), int)),
            ValueError,
            r"Expected labels to hold at least one labelling, got shape \(0, 3\)",
        ),
        (
            lambda: metrics.davies_bouldin_score([[0.0], [1.0], [2.0]], torch.zeros(0, 3)),
            ValueError,
            r"Expected labels to hold at least one labelling",
        ),
        # Unsortable objects gave numpy's "'<' not supported between ...".
        (
            lambda: metrics.silhouette_score(
                [[0.0], [1.0], [2.0]], np.array(["a", 1, None], dtype=object)
            ),
            TypeError,
            r"Expected labels to be integers or strings of one kind, got a mix of NoneType, int",
        ),
        # Batches of 3 labellings and 2 sets of centres failed in torch's expand().
        (
            lambda: metrics.inertia([[0.0], [1.0]], np.zeros((3, 2), int), np.zeros((2, 1, 1))),
            ValueError,
            r"Expected labels and centers with the same batch size .* got 3 labellings and 2",
        ),
        # No centres named "centroids" and the shape (1, 0, 1).
        (
            lambda: metrics.inertia([[0.0], [1.0]], centers=np.zeros((0, 1))),
            ValueError,
            r"Expected centers to be of shape \(k, 1\) .* with k >= 1, got shape \(0, 1\)",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("paths", ["host", "accelerator"])
@pytest.mark.parametrize("exponent", [505, 515])
def test_scale_free_scores_of_float64_data_whose_squares_overflow(request, paths, exponent):
    # float64 rows near 1e152 (2^505) and 1e155 (2^515): sums of squares
    # overflowed, Calinski-Harabasz was inf then NaN, Davies-Bouldin NaN and
    # every silhouette 0. Scaled by a power of two, an exact change that
    # leaves these ratios as they are, they must be the unit-scale scores.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6, size=(3, 6))
    X = np.concatenate([rng.normal(size=(100, 6)) + c for c in centres])
    labels = np.repeat(np.arange(3), 100)
    for score in (
        metrics.silhouette_score,
        metrics.calinski_harabasz_score,
        metrics.davies_bouldin_score,
    ):
        expected = score(X, labels)
        assert score(X * 2.0**exponent, labels) == pytest.approx(expected, rel=1e-12), score


def test_metrics_ignore_the_global_torch_defaults(torch_defaults_changed):
    # set_default_device (CUDA in a training script, meta here) and
    # set_default_dtype(float64): numpy and CPU tensors are scored on the CPU
    # in their own dtypes, as without them.
    X, labels = datasets.make_blobs(n_samples=600, n_features=4, centers=5, random_state=0)
    tensor, codes = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(labels)
    centers = np.stack([X[labels == c].mean(0) for c in range(5)])

    def results() -> list:
        return [
            metrics.silhouette_score(X, labels),
            metrics.silhouette_score(X, labels, sample_size=200, random_state=0),
            metrics.silhouette_samples(tensor, codes),
            metrics.calinski_harabasz_score(tensor, codes),
            metrics.davies_bouldin_score(X, labels),
            metrics.inertia(X, labels, centers),
        ]

    expected = results()
    with torch_defaults_changed():
        got = results()
    assert_identical(got, expected)


def _sparse_data(density: float) -> tuple[object, np.ndarray]:
    """600 x 400 CSR with rows of zeros among them, and labels of 5 clusters."""
    import scipy.sparse as sparse

    rng = np.random.default_rng(0)
    X = sparse.random(590, 400, density=density, random_state=0, format="csr")
    X = sparse.vstack([X, sparse.csr_matrix((10, 400))]).tocsr()[rng.permutation(600)]
    return X, rng.integers(0, 5, 600)


@pytest.mark.parametrize("density", [0.02, 0.3])  # sparse and dense products
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan", "l1"])
def test_silhouette_of_a_sparse_x_equals_scikit_learn(density, metric):
    X, y = _sparse_data(density)
    expected = sk.silhouette_samples(X, y, metric=metric)
    # Small budgets: many blocks of rows and tiles.
    for budget in (None, 50_000):
        samples = metrics.silhouette_samples(X, y, metric=metric, memory_budget=budget)
        np.testing.assert_allclose(samples, expected, rtol=1e-10, atol=1e-12)
    for fmt in ("csc", "coo"):
        score = metrics.silhouette_score(X.asformat(fmt), y, metric=metric)
        assert score == pytest.approx(sk.silhouette_score(X, y, metric=metric), rel=1e-10)
    subset = metrics.silhouette_score(X, y, metric=metric, sample_size=250, random_state=3)
    reference = sk.silhouette_score(X, y, metric=metric, sample_size=250, random_state=3)
    assert subset == pytest.approx(reference, rel=1e-10)
    tensor = torch.tensor(X.toarray()).to_sparse()
    batch = torch.tensor(np.stack([y, y % 2]))
    scores = metrics.silhouette_score(tensor, batch, metric=metric)
    assert isinstance(scores, torch.Tensor)
    expected_scores = [sk.silhouette_score(X, row, metric=metric) for row in batch.numpy()]
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-10)


def test_silhouette_of_a_sparse_x_densifies_no_more_than_a_block(monkeypatch):
    from torchkmeans.functional.sparse import SparseRows

    few, y = _sparse_data(0.02)
    many, _ = _sparse_data(0.3)
    expected = {
        (name, metric): sk.silhouette_samples(X, y, metric=metric)
        for name, X in (("few", few), ("many", many))
        for metric in ("euclidean", "manhattan")
    }
    take = SparseRows.take
    taken = []

    def recorded(self, index):
        taken.append(int(index.numel()))
        return take(self, index)

    monkeypatch.setattr(SparseRows, "take", recorded)
    # Few stored values: products and shared features of stored values only,
    # nothing densified (manhattan of dense blocks and tiles took n^2 d).
    for metric in ("euclidean", "manhattan"):
        samples = metrics.silhouette_samples(few, y, metric=metric, memory_budget=20_000)
        np.testing.assert_allclose(samples, expected["few", metric], rtol=1e-10)
    assert taken == []
    # Many: against dense blocks of rows, never all of them.
    for metric in ("euclidean", "manhattan"):
        samples = metrics.silhouette_samples(many, y, metric=metric, memory_budget=200_000)
        np.testing.assert_allclose(samples, expected["many", metric], rtol=1e-10)
    assert 0 < max(taken) < 600


def test_silhouette_of_a_sparse_precomputed_matrix_equals_scikit_learn():
    import scipy.sparse as sparse

    X, y = _sparse_data(0.3)
    distances = sk.pairwise_distances(X)
    distances[distances < np.median(distances)] = 0.0  # missing entries are 0
    csr = sparse.csr_matrix(distances)
    expected = sk.silhouette_samples(csr, y, metric="precomputed")
    samples = metrics.silhouette_samples(csr, y, metric="precomputed", memory_budget=50_000)
    np.testing.assert_allclose(samples, expected, rtol=1e-10, atol=1e-12)
    subset = metrics.silhouette_score(csr, y, metric="precomputed", sample_size=300, random_state=1)
    reference = sk.silhouette_score(csr, y, metric="precomputed", sample_size=300, random_state=1)
    assert subset == pytest.approx(reference, rel=1e-10)
    bad = csr.tolil()
    bad[3, 3] = 1.0
    match = r"The precomputed distance matrix contains non-zero elements on the diagonal"
    with pytest.raises(ValueError, match=match):
        metrics.silhouette_samples(bad.tocsr(), y, metric="precomputed")
    match = r"Expected X to be a square distance matrix .* got shape \(600, 400\)\."
    with pytest.raises(ValueError, match=match):
        metrics.silhouette_score(X, y, metric="precomputed")


def test_scores_from_cluster_means_refuse_a_sparse_x_as_scikit_learn():
    # scikit-learn's calinski_harabasz_score and davies_bouldin_score take
    # dense X only (TypeError); so do these, naming X.
    import scipy.sparse as sparse

    X, y = _sparse_data(0.02)
    tensor = torch.tensor(X.toarray()).to_sparse()
    for name in ("calinski_harabasz_score", "davies_bouldin_score"):
        with pytest.raises(TypeError, match=r"must be an array-like"):
            getattr(sk, name)(X, y)
        match = r"Expected X to be a dense array or tensor, got a sparse matrix \(csr_matrix\)"
        with pytest.raises(TypeError, match=match):
            getattr(metrics, name)(X, y)
        match = r"Expected X to be a dense array or tensor, got a sparse tensor"
        with pytest.raises(TypeError, match=match):
            getattr(metrics, name)(tensor, y)
    match = r"Expected X to hold at least one sample and feature, got shape \(5, 0\)\."
    with pytest.raises(ValueError, match=match):
        metrics.silhouette_score(sparse.csr_matrix((5, 0)), np.arange(5) % 2)


def test_sparse_silhouette_takes_one_product_per_block_of_rows(monkeypatch):
    # A block of rows against a group of 1,024 rows (transposed once) in one
    # product of stored values, not one per tile of columns: 4x faster.
    X, y = _sparse_data(0.02)
    expected = sk.silhouette_samples(X, y)
    product = torch.sparse.mm
    calls = []

    def counted(*args):
        calls.append(1)
        return product(*args)

    monkeypatch.setattr(torch.sparse, "mm", counted)
    np.testing.assert_allclose(metrics.silhouette_samples(X, y), expected, rtol=1e-10)
    assert len(calls) <= 2  # 600 rows: one or two blocks


def _tfidf_like(scale: float = 0.0, dtype: type = np.float64) -> tuple[object, np.ndarray]:
    """700 x 300 unit rows at 3% (times factors in [1, 1 + scale]), 20 rows of
    zeros among them, and labels of 6 clusters."""
    import scipy.sparse as sparse
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(1)
    X = sparse.random(680, 300, density=0.03, random_state=1, format="csr")
    X = sparse.diags(1.0 + scale * rng.random(680)) @ normalize(X)
    X = sparse.vstack([X, sparse.csr_matrix((20, 300))]).tocsr()[rng.permutation(700)]
    return X.astype(dtype), rng.integers(0, 6, 700)


@pytest.mark.parametrize(
    "scale, dtype, terms",
    [
        (0.0, np.float64, "distinct"),  # unit rows: a few distinct squared norms
        (0.0, np.float32, "series"),  # each row's norm rounded differently
        (0.05, np.float64, "series"),  # squared norms within 1/16 of a middle value
        (1.0, np.float64, "tiles"),  # norms of all sizes: (m, n) tiles of roots
    ],
)
def test_sparse_euclidean_silhouette_from_products_equals_scikit_learn(
    scale, dtype, terms, monkeypatch
):
    """The distances of pairs that share no feature from the norms alone, the
    others corrected from their stored products, each pair once; the sparse
    products are never densified (they had been, with all their distances)."""
    X, y = _tfidf_like(scale, dtype)
    expected = sk.silhouette_samples(X.astype(np.float64), y)
    batch = np.stack([y, y % 2, np.arange(700) % 350])
    expected_scores = [sk.silhouette_score(X.astype(np.float64), row) for row in batch]
    apart_sums = metrics._apart_sums
    made = []

    def recorded(*args):
        out = apart_sums(*args)
        made.append(None if out is None else int(out[1].shape[0]))
        return out

    monkeypatch.setattr(metrics, "_apart_sums", recorded)
    monkeypatch.setattr(torch.Tensor, "to_dense", None)  # TypeError if called
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    # Default, then budgets where the (n, columns) sums of later rows do not
    # fit (each block against all rows) and where they do, in small blocks.
    for budget in (None, 20_000, 400_000):
        samples = metrics.silhouette_samples(X, y, memory_budget=budget)
        np.testing.assert_allclose(samples, expected, rtol=rtol, atol=1e-12)
        scores = metrics.silhouette_score(X, batch, memory_budget=budget)
        np.testing.assert_allclose(scores, expected_scores, rtol=rtol)
    if terms == "distinct":
        assert 1 < made[0] <= 4
    elif terms == "series":
        assert made[0] == (4 if dtype == np.float32 else 15)
    else:
        assert made[0] is None  # more terms than 6 * n / (columns + 8): tiles


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_sparse_silhouette_linear_in_products_equals_scikit_learn(metric):
    """Cosine and squared euclidean sums per cluster from each cluster's sum
    of rows, also in groups of clusters when those sums do not fit the budget."""
    X, y = _sparse_data(0.02)
    unit, labels = _tfidf_like()
    for data, target in ((X, y), (unit, labels)):
        # scikit-learn takes no sparse X for "sqeuclidean" (a scipy metric there).
        reference = data if metric == "cosine" else data.toarray()
        expected = sk.silhouette_samples(reference, target, metric=metric)
        for budget in (None, 4_000):
            samples = metrics.silhouette_samples(data, target, metric=metric, memory_budget=budget)
            np.testing.assert_allclose(samples, expected, rtol=1e-10, atol=1e-12)


def test_labels_as_a_column_vector_are_one_labelling_as_in_sklearn():
    """Labels of shape (n_samples, 1), such as a one-column frame, are one
    labelling with scikit-learn's warning (they had been refused as a batch)."""
    import pandas as pd

    X, y = _data("iris")
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    for column in (y.reshape(-1, 1), pd.DataFrame({"species": names}), torch.tensor(y)[:, None]):
        for name in ("silhouette_score", "calinski_harabasz_score", "davies_bouldin_score"):
            with pytest.warns(UserWarning, match=r"A column-vector labels was passed"):
                got = getattr(metrics, name)(X, column)
            assert isinstance(got, float)
            assert got == pytest.approx(getattr(sk, name)(X, y), rel=1e-12)
        with pytest.warns(UserWarning, match=r"A column-vector labels was passed"):
            samples = metrics.silhouette_samples(X, column)
        np.testing.assert_allclose(samples, sk.silhouette_samples(X, y), rtol=1e-12)
    with pytest.warns(UserWarning, match=r"A column-vector labels was passed"):
        assert metrics.inertia(X, y[:, None]) == pytest.approx(metrics.inertia(X, y), rel=1e-15)
    # A batch of one labelling stays a batch.
    assert metrics.silhouette_score(X, y[None, :]).shape == (1,)


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_dense_silhouette_linear_in_products_takes_no_pairwise_block(metric, monkeypatch):
    """Cosine and squared euclidean sums per cluster from the cluster means
    (``|C| |x - m_C|^2 + sum |y - m_C|^2``), no (m, n) block of distances
    (every pair had been computed), equal to scikit-learn's: with rows of
    zeros (at cosine distance 1 from all), a cluster of them only, a
    singleton, and a batch of labellings."""
    X, y = _data("wine")
    X = X[:120].copy()
    y = y[:120].copy()
    X[::9] = 0.0
    y[[0, 9, 18]] = 7  # rows of zeros only
    y[5] = 8  # a singleton
    batch = np.stack([y, np.arange(120) % 4])
    expected = sk.silhouette_samples(X, y, metric=metric)
    expected_scores = [sk.silhouette_score(X, row, metric=metric) for row in batch]

    def refused(*args):
        raise AssertionError("a pairwise block of distances")

    monkeypatch.setattr(metrics, "_distance_block", refused)
    for x, rtol, atol in ((X, 1e-10, 1e-12), (X.astype(np.float32), 1e-5, 1e-6)):
        samples = metrics.silhouette_samples(x, y, metric=metric)
        np.testing.assert_allclose(samples, expected, rtol=rtol, atol=atol)
        scores = metrics.silhouette_score(torch.tensor(x), torch.tensor(batch), metric=metric)
        np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=rtol)


@SETTINGS
@given(
    arrays(np.float64, (12, 2), elements=st.integers(-3, 3).map(float)),
    st.lists(st.integers(0, 2), min_size=12, max_size=12),
    st.sampled_from(["cosine", "sqeuclidean"]),
)
def test_silhouette_from_cluster_means_properties(X, labels, metric):
    """Duplicate rows, rows of zeros and singletons, from the cluster means as
    scikit-learn sums every pair."""
    labels = np.array(labels)
    if len(np.unique(labels)) < 2:
        return
    expected = sk.silhouette_samples(X, labels, metric=metric)
    np.testing.assert_allclose(
        metrics.silhouette_samples(X, labels, metric=metric), expected, atol=1e-9
    )
    import scipy.sparse as sparse

    samples = metrics.silhouette_samples(sparse.csr_matrix(X), labels, metric=metric)
    np.testing.assert_allclose(samples, expected, atol=1e-9)


# ------------------------------------------------ scores against reference labels

REFERENCE_SCORES = [
    "adjusted_rand_score",
    "rand_score",
    "mutual_info_score",
    "homogeneity_score",
    "completeness_score",
    "v_measure_score",
    "normalized_mutual_info_score",
    "adjusted_mutual_info_score",
]


def _reference_cases() -> list[tuple[object, object]]:
    rng = np.random.default_rng(0)
    digits = datasets.load_digits()
    fitted = KMeans(n_clusters=10, random_state=0).fit(digits.data).labels_
    return [
        (digits.target, fitted),
        (digits.target, rng.integers(0, 10, len(fitted))),
        (rng.integers(0, 3, 50), rng.integers(0, 40, 50)),
        (rng.integers(0, 60, 700), rng.integers(0, 45, 700)),
        (np.array(["b", "a", "c"])[rng.integers(0, 3, 40)], rng.integers(-5, 5, 40) * 10**15),
        (np.arange(30), np.arange(30)[::-1]),
        (rng.permutation(np.repeat(np.arange(7), [1, 2, 3, 5, 8, 13, 21])), np.zeros(53, int)),
        ([0, 0, 1], [0, 1, 2]),
        ([0, 1], [0, 0]),
        ([0, 0], [1, 1]),
        ([0], [0]),
    ]


@pytest.mark.parametrize("function", REFERENCE_SCORES)
def test_scores_against_reference_labels_match_sklearn(function):
    # The digits demo's table (homogeneity ... AMI) in torchkmeans alone:
    # torchkmeans.metrics had none of these (AttributeError).
    for labels_true, labels_pred in _reference_cases():
        ours = getattr(metrics, function)(labels_true, labels_pred)
        theirs = getattr(sk, function)(labels_true, labels_pred)
        assert isinstance(ours, float)
        # AMI subtracts the expected mutual information: 1e-12 of cancellation.
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-11), (labels_true, labels_pred)


@pytest.mark.parametrize("average_method", ["arithmetic", "geometric", "max", "min"])
def test_normalized_and_adjusted_mutual_info_of_every_average_match_sklearn(average_method):
    for labels_true, labels_pred in _reference_cases()[:5]:
        for function in ("normalized_mutual_info_score", "adjusted_mutual_info_score"):
            ours = getattr(metrics, function)(
                labels_true, labels_pred, average_method=average_method
            )
            theirs = getattr(sk, function)(labels_true, labels_pred, average_method=average_method)
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-11)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.0])
def test_homogeneity_completeness_v_measure_of_any_beta_match_sklearn(beta):
    for labels_true, labels_pred in _reference_cases()[:5]:
        ours = metrics.homogeneity_completeness_v_measure(labels_true, labels_pred, beta=beta)
        theirs = sk.homogeneity_completeness_v_measure(labels_true, labels_pred, beta=beta)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
        assert metrics.v_measure_score(labels_true, labels_pred, beta=beta) == ours[2]


def test_scores_of_one_partition_twice_are_one():
    # Relabelled, of every size: AMI had been the ratio of two rounding
    # errors when the expected mutual information equals the entropies
    # (30 singletons: 0.83 before the mutual information was snapped).
    rng = np.random.default_rng(1)
    for sizes in ([1] * 30, [1, 1, 2, 3, 5, 8], [40, 40], [1] * 5 + [100]):
        labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
        relabelled = rng.permutation(len(sizes))[labels] + 7
        for function in REFERENCE_SCORES[:2] + REFERENCE_SCORES[3:]:
            assert getattr(metrics, function)(labels, relabelled) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("n", [1000, 50000])
def test_many_singletons_twice_score_one_and_their_mutual_information_is_their_entropy(n):
    """The mutual information was summed by index_add_, one cell after
    another: 1,000 singletons came out 1.7e-14 above their entropy, and AMI
    the ratio of two rounding errors (1.21)."""
    rng = np.random.default_rng(n)
    labels_true, labels_pred = rng.permutation(n), rng.permutation(n)
    assert metrics.mutual_info_score(labels_true, labels_pred) == pytest.approx(
        np.log(n), rel=4e-16
    )
    assert metrics.adjusted_mutual_info_score(labels_true, labels_pred) == 1.0
    batch = np.stack([labels_pred, labels_pred % 7])
    np.testing.assert_allclose(
        metrics.mutual_info_score(labels_true, batch),
        [np.log(n), sk.mutual_info_score(labels_true, batch[1])],
        rtol=4e-16,
    )
    assert metrics.adjusted_mutual_info_score(labels_true, batch)[0] == 1.0


def test_expected_mutual_info_in_chunks_equals_one_chunk(monkeypatch):
    rng = np.random.default_rng(2)
    labels_true, labels_pred = rng.integers(0, 60, 700), rng.integers(0, 45, 700)
    whole = metrics.adjusted_mutual_info_score(labels_true, labels_pred)
    monkeypatch.setattr(metrics, "_EMI_TERMS", 97)
    chunked = metrics.adjusted_mutual_info_score(labels_true, labels_pred)
    assert chunked == pytest.approx(whole, rel=1e-9, abs=1e-13)
    assert chunked == pytest.approx(
        sk.adjusted_mutual_info_score(labels_true, labels_pred), rel=1e-9, abs=1e-11
    )


def test_expected_mutual_info_window_leaves_out_only_negligible_terms(monkeypatch):
    """Counts n_ij beyond Bernstein's bound are left out: the sum over every
    count gives the same AMI (to rounding), on clusters large and small."""
    rng = np.random.default_rng(4)
    sizes = [5000, 3000, 1000, 50, 3, 1]
    cases = [
        (rng.integers(0, 20, 20000), rng.integers(0, 15, 20000)),
        (rng.permutation(np.repeat(np.arange(6), sizes)), rng.integers(0, 4, sum(sizes))),
        (rng.integers(0, 200, 3000), rng.integers(0, 150, 3000)),
    ]
    windowed = [metrics.adjusted_mutual_info_score(*case) for case in cases]
    monkeypatch.setattr(metrics, "_EMI_TAIL", float("inf"))
    every = [metrics.adjusted_mutual_info_score(*case) for case in cases]
    np.testing.assert_allclose(windowed, every, rtol=1e-12, atol=1e-15)
    reference = [sk.adjusted_mutual_info_score(*case) for case in cases]
    # scikit-learn's own sum is 4e-12 off the exact EMI (mpmath) on the last.
    np.testing.assert_allclose(windowed, reference, rtol=1e-9, atol=1e-11)


def test_reference_scores_of_a_batch_are_its_rows():
    digits = datasets.load_digits()
    y = digits.target
    fitted = KMeans(n_clusters=10, random_state=0).fit(digits.data).labels_
    batch = np.stack([fitted, np.roll(fitted, 7), np.zeros_like(y)])
    for function in REFERENCE_SCORES:
        values = getattr(metrics, function)(y, batch)
        assert isinstance(values, np.ndarray) and values.shape == (3,)
        rows = [getattr(metrics, function)(y, row) for row in batch]
        np.testing.assert_allclose(values, rows, rtol=1e-13, atol=1e-15)
        # A batch on both sides: row against row.
        swapped = getattr(metrics, function)(batch, np.stack([y, y, y]))
        reverse = [getattr(sk, function)(row, y) for row in batch]
        np.testing.assert_allclose(swapped, reverse, rtol=1e-12, atol=1e-11)
    tensor = metrics.adjusted_rand_score(torch.tensor(y), torch.tensor(batch))
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3,)
    assert isinstance(metrics.adjusted_rand_score(torch.tensor(y), torch.tensor(fitted)), float)
    scores = metrics.homogeneity_completeness_v_measure(y, batch)
    assert len(scores) == 3 and all(s.shape == (3,) for s in scores)


def test_reference_scores_of_no_samples_follow_sklearn():
    for function in ("adjusted_rand_score", "rand_score", "normalized_mutual_info_score"):
        assert getattr(metrics, function)([], []) == getattr(sk, function)([], []) == 1.0
    assert metrics.adjusted_mutual_info_score([], []) == 1.0
    assert metrics.homogeneity_completeness_v_measure([], []) == (1.0, 1.0, 1.0)
    # scikit-learn's mutual_info_score fails in log(0) ("math domain error").
    assert metrics.mutual_info_score([], []) == 0.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: metrics.adjusted_rand_score([0, 1], [0, 1, 1]),
            r"Expected labels_true and labels_pred of shape .* got shapes \(2,\) and \(3,\)",
        ),
        (
            lambda: metrics.adjusted_rand_score(np.zeros((2, 3)), np.zeros((3, 3))),
            r"same n_samples and batch, got shapes \(2, 3\) and \(3, 3\)",
        ),
        (
            lambda: metrics.v_measure_score([[[0]]], [[[0]]]),
            r"got shapes \(1, 1, 1\) and \(1, 1, 1\)",
        ),
        (
            lambda: metrics.normalized_mutual_info_score([0], [0], average_method="mean"),
            r"Expected average_method to be one of 'arithmetic', .* got 'mean'",
        ),
        (lambda: metrics.v_measure_score([0], [0], beta=-1.0), r"beta=-1.0 should be .* >= 0"),
    ],
)
def test_reference_score_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        # Both labellings go through the checks of one "labels": the message
        # said "Expected labels to ..." whichever was wrong.
        (
            lambda: metrics.adjusted_rand_score([0, 1], [0.0, np.nan]),
            r"Expected labels_pred to hold integers or finite floats, got NaN or infinity",
        ),
        (
            lambda: metrics.adjusted_mutual_info_score(np.array(["a", 1], dtype=object), [0, 1]),
            r"Expected labels_true to be integers or strings of one kind, got a mix of int, str",
        ),
        (
            lambda: metrics.rand_score(torch.tensor([0j, 1j]), [0, 1]),
            r"Expected labels_true to hold integers, got dtype torch.complex64",
        ),
    ],
)
def test_reference_score_errors_name_the_labelling(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_reference_scores_on_device(device):
    rng = np.random.default_rng(3)
    labels_true, labels_pred = rng.integers(0, 12, 900), rng.integers(0, 9, (2, 900))
    true = torch.tensor(labels_true, device=device)
    pred = torch.tensor(labels_pred, device=device)
    for function in REFERENCE_SCORES:
        values = getattr(metrics, function)(true, pred)
        assert isinstance(values, torch.Tensor) and values.device.type == device
        reference = [getattr(sk, function)(labels_true, row) for row in labels_pred]
        np.testing.assert_allclose(values.cpu().numpy(), reference, rtol=1e-12, atol=1e-11)
