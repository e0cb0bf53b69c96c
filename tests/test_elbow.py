"""The elbow sweep and knee detection: exactness, quality, knees, kinds, errors."""

from __future__ import annotations

import importlib
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import on_the_cpu_paths_only, tutorial_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits, load_iris, make_blobs

from torchkmeans.elbow import ElbowResult, elbow, find_knee
from torchkmeans.exceptions import ConvergenceWarning
from torchkmeans.functional import kmeans_plusplus, lloyd
from torchkmeans.kmeans import KMeans

# The module, not the function torchkmeans.elbow that shadows it on the package.
elbow_module = importlib.import_module("torchkmeans.elbow")


def _blobs(centers: int, random_state: int) -> np.ndarray:
    X, _ = make_blobs(
        n_samples=3000, n_features=8, centers=centers, cluster_std=0.6, random_state=random_state
    )
    return X


@pytest.mark.parametrize("centers", [4, 6, 10, 16])
@pytest.mark.parametrize("random_state", [0, 1])
def test_knee_is_the_true_number_of_blobs(centers, random_state):
    result = elbow(_blobs(centers, random_state), k=range(1, 21), random_state=0)
    assert result.knee == centers


@pytest.mark.parametrize("centers", [10, 16])
def test_plain_kneedle_on_raw_inertia_undercounts_many_blobs(centers):
    """Why the default is curve="log": raw Kneedle answers far too few clusters here."""
    result = elbow(_blobs(centers, 0), k=range(1, 21), random_state=0, curve="raw")
    # find_knee's docstring quotes this 7 (it had said 8).
    assert result.knee == 7
    assert find_knee(result.ks, result.inertia, curve="log") == centers


def test_tutorial_data_has_a_knee_at_3_or_4():
    for seed in range(3):
        assert elbow(tutorial_data(), k=range(1, 11), random_state=seed).knee in (3, 4)


@pytest.mark.filterwarnings("ignore:No knee found")
@pytest.mark.parametrize(
    "overhead, torch_ops",
    [(None, False), (0, True), (10**12, True)],
    ids=["a-fit-per-k-in-the-kernel", "torch-one-group-per-k", "torch-one-group"],
)
def test_sweep_equals_independent_lloyd_runs_from_the_same_seeds(
    monkeypatch, request, overhead, torch_ops
):
    """Padding, groups, converged fits leaving the batch and fits per k
    through the fused kernel change nothing: each k is the best of its own
    independent runs."""
    if torch_ops:
        request.getfixturevalue("torch_ops_only")
        monkeypatch.setattr(elbow_module, "_CPU_GROUP_OVERHEAD", overhead)
    X = _blobs(6, 3)[:800]
    x = torch.tensor(X)
    ks = (1, 2, 3, 5, 8, 9)
    result = elbow(x, k=ks, n_init=3, random_state=7)
    _, indices = kmeans_plusplus(
        x - x.mean(0), 9, n_problems=3, generator=torch.Generator().manual_seed(7)
    )
    for i, k in enumerate(ks):
        runs = [lloyd(x, x[indices[j, :k]]) for j in range(3)]
        best = min(float(run.inertia) for run in runs)
        assert float(result.inertia[i]) == pytest.approx(best, rel=1e-12)
        # Restarts that reach the same optimum tie up to rounding: any of them.
        tied = [run for run in runs if float(run.inertia) == pytest.approx(best, rel=1e-12)]
        assert any(
            torch.allclose(result.centroids[i], run.centroids, rtol=1e-10, atol=1e-10)
            and torch.equal(result.labels[i], run.labels)
            for run in tied
        )


@on_the_cpu_paths_only
@pytest.mark.filterwarnings("ignore:No knee found")
@pytest.mark.parametrize("n_init", [1, 2, 3])
def test_fits_through_the_kernel_finish_only_the_best_restart_of_each_k(monkeypatch, n_init):
    """The fused kernel runs a batch's problems one by one: padded batches of
    every restart gained nothing there and finished (relabelled, measured
    exactly) all n_init restarts of every k, where one per k is kept. With
    one restart there is nothing to save: padded groups prepare the data
    once per group, not once per k."""
    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")
    finished = []
    finish = lloyd_module._finish

    def spy(result, *args, **kwargs):
        finished.append(result.centroids.shape[0])
        return finish(result, *args, **kwargs)

    monkeypatch.setattr(lloyd_module, "_finish", spy)
    X = _blobs(4, random_state=0)
    ks = range(1, 7)
    result = elbow(X, k=ks, n_init=n_init, random_state=0)
    # 3,000 x 8 rows: one padded group by the cost model of _groups.
    assert finished == ([len(ks)] if n_init == 1 else [1] * len(ks))
    for i in range(len(ks)):
        d2 = ((X[:, None, :] - result.centroids[i][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(result.labels[i], d2.argmin(1))
        assert result.inertia[i] == pytest.approx(d2.min(1).sum(), rel=1e-9)


def test_digits_inertia_within_1_percent_of_sklearns_loop():
    X = load_digits().data
    ks = range(1, 21)
    result = elbow(X, k=ks, n_init=10, random_state=0)
    # Lower is better: no k may be more than 1% worse than either loop of fits.
    reference = np.array([SkKMeans(k, n_init=10, random_state=0).fit(X).inertia_ for k in ks])
    assert np.all(result.inertia / reference < 1.01), result.inertia / reference
    independent = np.array([KMeans(k, n_init=10, random_state=0).fit(X).inertia_ for k in ks])
    assert np.all(result.inertia / independent < 1.01), result.inertia / independent
    assert result.inertia[0] == pytest.approx(((X - X.mean(0)) ** 2).sum(), rel=1e-12)


@pytest.mark.filterwarnings("ignore:No knee found")
def test_numpy_in_numpy_out_with_scores_equal_to_sklearn():
    X = load_digits().data[:600]
    names = ("inertia", "silhouette", "calinski_harabasz", "davies_bouldin")
    result = elbow(X, k=range(1, 7), random_state=0, scores=names)
    assert isinstance(result, ElbowResult) and result.ks == (1, 2, 3, 4, 5, 6)
    assert isinstance(result.inertia, np.ndarray) and result.inertia.shape == (6,)
    assert result.labels.shape == (6, 600) and result.labels.dtype == np.int64
    assert [c.shape for c in result.centroids] == [(k, 64) for k in result.ks]
    assert set(result.scores) == set(names)
    np.testing.assert_array_equal(result.scores["inertia"], result.inertia)
    for name in names[1:]:
        assert np.isnan(result.scores[name][0])  # undefined for one cluster
    reference = {
        "silhouette": sk.silhouette_score,
        "calinski_harabasz": sk.calinski_harabasz_score,
        "davies_bouldin": sk.davies_bouldin_score,
    }
    for i in range(1, 6):
        labels = result.labels[i]
        assert labels.max() < result.ks[i]
        for name, function in reference.items():
            assert result.scores[name][i] == pytest.approx(function(X, labels), rel=1e-9)
        # Labels are those of the centroids: each point is nearest to its own.
        d = ((X[:, None] - result.centroids[i][None]) ** 2).sum(-1)
        assert np.allclose(d[np.arange(600), labels], d.min(1))


def test_tensors_in_tensors_out(device):
    x = torch.tensor(_blobs(4, 0)[:500], dtype=torch.float32, device=device)
    result = elbow(x, k=6, random_state=0, scores=("silhouette",))
    assert result.ks == (1, 2, 3, 4, 5, 6)
    assert isinstance(result.inertia, torch.Tensor) and result.inertia.device.type == device
    assert result.scores["silhouette"].device.type == device
    assert result.centroids[3].shape == (4, 8) and result.centroids[3].dtype == torch.float32
    assert result.labels.device.type == device
    assert result.knee == 4


@pytest.mark.filterwarnings("ignore:No knee found")
def test_cosine_rows_of_zeros_seed_no_centroid():
    # Rows of zeros (distance 1 from every centre) were drawn as k-means++
    # seeds: centroids of zeros from k=8 on, whose inertia stayed at k=7's.
    rng = np.random.default_rng(7)
    axes = rng.normal(size=(8, 32))
    X = np.repeat(axes, 250, axis=0) + rng.normal(scale=0.1, size=(2000, 32))
    X = np.concatenate([X, np.zeros((1500, 32))])
    result = elbow(X, k=range(1, 13), metric="cosine", random_state=0)
    for k, centroids in zip(range(1, 13), result.centroids):
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-6, err_msg=k)
    alone = elbow(X[:2000], k=range(1, 13), metric="cosine", random_state=0)
    np.testing.assert_allclose(result.inertia[7:] - 1500, alone.inertia[7:], rtol=0.05)


def test_same_seed_same_result_and_cosine_runs():
    X = _blobs(4, 2)[:400]
    first, second = elbow(X, k=5, random_state=3), elbow(X, k=5, random_state=3)
    np.testing.assert_array_equal(first.inertia, second.inertia)
    cosine = elbow(X, k=5, random_state=3, metric="cosine", scores=("silhouette",))
    assert np.all(cosine.inertia >= 0) and np.all(np.diff(cosine.inertia) < 1e-9)
    labels = cosine.labels[3]
    expected = sk.silhouette_score(X, labels, metric="cosine")
    assert cosine.scores["silhouette"][3] == pytest.approx(expected, rel=1e-9)


@pytest.mark.filterwarnings("ignore:No knee found")
def test_verbose_without_tqdm_reports_every_k_on_stderr(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    elbow(_blobs(4, 0)[:300], k=range(2, 6), random_state=0, verbose=True, scores=("silhouette",))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("elbow: seeding k-means++ to k=5")
    assert [line.split()[1] for line in lines if "converged" in line] == [
        "k=2",
        "k=3",
        "k=4",
        "k=5",
    ]
    assert lines[-1] == "elbow: scores: silhouette"


@pytest.mark.filterwarnings("ignore:No knee found")
def test_quiet_by_default(capsys):
    elbow(_blobs(4, 0)[:300], k=range(1, 6), random_state=0)
    assert capsys.readouterr().err == ""


def test_find_knee_on_known_curves():
    ks = [1, 2, 3, 4, 5, 6, 7, 8]
    values = [1000.0, 300.0, 100.0, 90.0, 82.0, 75.0, 70.0, 66.0]
    assert find_knee(ks, values) == 3
    assert find_knee(np.array(ks), torch.tensor(values), curve="raw") == 3
    # Uneven ks: the knee is a value of ks, not a position.
    assert find_knee([2, 4, 8, 16, 32], [100.0, 20.0, 4.0, 3.5, 3.2]) == 8


@pytest.mark.parametrize("n_ks, knee", [(11, 3), (12, 4), (13, 4), (20, 5), (21, 5)])
def test_a_knee_on_a_plateau_of_the_difference_curve(n_ks, knee):
    """On y = 1/k the difference curve ties at its maximum for 12 and 20 ks
    (k = 3 and 4, k = 4 and 5): no knee was found there, k = 3 or 4 either side."""
    ks = np.arange(1, n_ks + 1)
    assert find_knee(ks, 1.0 / ks, curve="raw") == knee


@pytest.mark.parametrize("last", [0.0, 2.5e-12, 1.6e-28])
def test_a_perfect_fit_at_the_last_k_keeps_the_knee(last):
    """The last k as many clusters as distinct points: inertia 0, or the
    rounding residue of float32 or float64 centres. In log scale that fall
    dwarfed the corner at 3 and no knee was found."""
    values = [1000.0, 300.0, 100.0, 90.0, 82.0, 75.0, 70.0, 66.0, last]
    assert find_knee(range(1, 10), values) == 3
    assert find_knee(range(1, 7), [100.0, 20.0, 0.0, 0.0, 0.0, 0.0]) == 3
    assert find_knee(range(1, 5), [100.0, 0.0, 0.0, 0.0]) == 2


def test_a_plateau_then_a_perfect_fit_is_not_flat():
    # No decay before the fall to 0: nothing to continue, the fall stays a corner.
    assert find_knee(range(1, 5), [100.0, 100.0, 0.0, 0.0]) == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elbow_of_three_groups_of_three_distinct_points(dtype):
    rng = np.random.default_rng(0)
    corners = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.vstack([corner + rng.normal(size=(3, 2)) for corner in corners])
    result = elbow(np.repeat(points, 20, axis=0).astype(dtype), k=range(1, 10), random_state=0)
    assert result.inertia[-1] < 1e-9 * result.inertia[0]  # k=9: every point its own centre
    assert result.knee == 3


@pytest.mark.parametrize(
    "values",
    [
        [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # a straight line (raw) has no knee
        [3.0] * 8,  # flat
    ],
)
def test_no_knee_warns_and_returns_none(values):
    with pytest.warns(UserWarning, match="No knee found"):
        assert find_knee(range(1, 9), values, curve="raw") is None


def test_high_sensitivity_needs_a_sharper_knee():
    ks = range(1, 9)
    values = [100.0, 60.0, 40.0, 30.0, 24.0, 20.0, 17.0, 15.0]
    assert find_knee(ks, values, curve="raw", sensitivity=0.5) is not None
    with pytest.warns(UserWarning, match="No knee found"):
        assert find_knee(ks, values, curve="raw", sensitivity=20.0) is None


def test_two_ks_give_no_knee_with_a_warning():
    with pytest.warns(UserWarning, match="at least 3 values of k"):
        result = elbow(_blobs(4, 0)[:200], k=[2, 3], random_state=0)
    assert result.knee is None and result.inertia.shape == (2,)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(0.01, 100.0), min_size=3, max_size=15),
    st.sampled_from(["log", "raw"]),
    st.floats(0.0, 3.0),
)
def test_a_knee_is_an_interior_k(drops, curve, sensitivity):
    values = np.cumsum(drops[::-1])[::-1]  # strictly decreasing, positive
    ks = np.arange(1, len(values) + 1) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        knee = find_knee(ks, values, curve=curve, sensitivity=sensitivity)
    assert knee is None or (knee in ks[1:-1] and isinstance(knee, int))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": [3, 2, 4]}, ValueError, r"Expected k to be strictly increasing ints >= 1"),
        ({"k": [0, 1, 2]}, ValueError, r"Expected k to be strictly increasing ints >= 1"),
        ({"k": [1, 2, 50]}, ValueError, r"n_samples=20 should be >= the largest k=50"),
        ({"k": [1, 2.5]}, TypeError, r"Expected k to be a non-empty sequence of ints"),
        ({"k": 0}, ValueError, r"Expected k to be >= 1 \(the sweep 1\.\.k\), got 0\."),
        ({"k": []}, ValueError, r"Expected k to be a non-empty sequence of ints, got \[\]\."),
        ({"k": range(0)}, ValueError, r"Expected k to be a non-empty sequence of ints"),
        ({"k": "abc"}, TypeError, r"Expected k to be a non-empty sequence of ints"),
        ({"scores": ("silhouette", "gap")}, ValueError, r"Expected scores to be names from"),
        ({"curve": "sqrt"}, ValueError, r"Expected curve to be 'log' or 'raw', got 'sqrt'"),
        ({"n_init": 0}, ValueError, r"n_init=0 should be >= 1"),
        ({"metric": "manhattan"}, ValueError, r"Expected metric to be 'euclidean' or 'cosine'"),
        ({"sensitivity": -1.0}, ValueError, r"sensitivity=-1.0 should be a finite number >= 0"),
        # As KMeans checks it: 'yes' and -1 had shown progress.
        ({"verbose": "yes"}, TypeError, r"Expected verbose to be a bool or an int, got 'yes'\."),
        ({"verbose": -1}, ValueError, r"verbose=-1 should be >= 0\."),
    ],
)
def test_elbow_errors(kwargs, error, match):
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(error, match=match):
        elbow(X, **kwargs)


def test_elbow_of_an_iterable_of_batches_says_what_it_takes():
    # A generator had been read as one object array: "Expected X to hold
    # numbers, got an object array".
    X = np.random.default_rng(0).normal(size=(400, 2))
    batches = (X[i : i + 100] for i in range(0, 400, 100))
    with pytest.raises(TypeError, match=r"Expected X to be an array-like.*got generator"):
        elbow(batches, k=range(2, 4))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([1, 2, 3], [3.0, 2.0]), {}, r"Expected ks and values of the same length, got 3 and 2"),
        (([1, 2], [3.0, 2.0]), {}, r"Expected at least 3 points to find a knee, got 2"),
        (([1, 3, 2], [3.0, 2.0, 1.0]), {}, r"Expected ks to be strictly increasing"),
        (([1, 2, 3], [3.0, np.nan, 1.0]), {}, r"Input values contains NaN"),
        (([1, 2, 3], [3.0, -2.0, 1.0]), {}, r"Expected values >= 0 for curve='log'"),
        (([1, 2, 3], [3.0, 2.0, 1.0]), {"curve": "exp"}, r"Expected curve to be 'log' or 'raw'"),
    ],
)
def test_find_knee_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_knee(*args, **kwargs)


def test_groups_trade_padding_for_fewer_batches():
    ks = tuple(range(1, 21))
    assert elbow_module._groups(ks, row_cost=1, overhead=10**9) == [list(range(20))]
    assert elbow_module._groups(ks, row_cost=1, overhead=0) == [[i] for i in range(20)]
    groups = elbow_module._groups(ks, row_cost=1797 * 65 * 10, overhead=10**7)
    assert 1 < len(groups) < 20
    # Every position once, in order.
    assert [i for group in groups for i in group] == list(range(20))


@pytest.mark.parametrize("n_init", [1, 2])
def test_centroids_and_labels_give_the_reported_inertia(n_init):
    # Regression: with n_init=1 every k once shared one centroid buffer.
    X = load_iris().data
    result = elbow_module.elbow(X, k=range(1, 7), n_init=n_init, random_state=0)
    for i, k in enumerate(result.ks):
        centres = result.centroids[i]
        assert centres.shape == (k, X.shape[1])
        d2 = ((X[:, None, :] - centres[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(result.labels[i], d2.argmin(1))
        assert result.inertia[i] == pytest.approx(d2.min(1).sum(), rel=1e-9)


def test_squared_distances_beyond_float32_are_swept_scaled():
    # Finite float32 rows of norm ~1e20: the inertia was inf and find_knee
    # refused it as "Input values contains NaN or infinity"; then the sweep
    # was refused. Scaled by a power of two, an exact change, it is the
    # unit-scale sweep scaled alike.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no knee in 3 values
        expected = elbow(X, k=range(1, 4), random_state=0)
        result = elbow(X * np.float32(2.0**66), k=range(1, 4), random_state=0)
    np.testing.assert_allclose(result.inertia, expected.inertia * 2.0**132, rtol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.labels)


def test_squared_distances_beyond_float64_are_refused():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) * 1e155
    # Named X, the argument the caller passed (the functional core's x before).
    with pytest.raises(ValueError, match=r"Squared distances between the rows of X overflow"):
        elbow(X, k=range(1, 4), random_state=0)


def test_no_knee_warning_of_a_sweep_points_at_the_caller():
    # Shown inside torchkmeans/elbow.py, the warning told a user nothing about their own code.
    X = np.random.default_rng(0).normal(size=(200, 5))
    with pytest.warns(UserWarning, match="No knee found: the curve") as record:
        result = elbow(X, k=range(1, 6), random_state=0)
    assert result.knee is None
    assert [w.filename for w in record] == [__file__]


def _memmap(X: np.ndarray, path) -> np.memmap:
    written = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    written[:] = X
    written.flush()
    return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


def test_a_memmap_is_swept_in_passes_not_loaded(tmp_path, monkeypatch):
    # elbow loaded a memmap whole (about twice a float32 file): it now fits
    # each k in passes over chunks of rows, as KMeans does.
    from torchkmeans import _validation
    from torchkmeans.functional import streaming

    monkeypatch.setitem(streaming._CHUNK_BYTES, "cpu", 8 * 8 * 400)  # 400 rows a chunk
    as_tensor = _validation.as_tensor

    def refuse_memmaps(X, *args, **kwargs):
        assert not isinstance(X, np.memmap), "the memmap was loaded whole"
        return as_tensor(X, *args, **kwargs)

    monkeypatch.setattr(_validation, "as_tensor", refuse_memmaps)
    X = _blobs(5, random_state=3)
    streamed = elbow(_memmap(X, tmp_path / "x.dat"), k=range(1, 9), random_state=0)
    in_memory = elbow(X, k=range(1, 9), random_state=0)
    assert streamed.knee == in_memory.knee == 5
    assert isinstance(streamed.inertia, np.ndarray) and isinstance(streamed.labels, np.ndarray)
    assert streamed.labels.shape == (8, X.shape[0])
    # From k = 5 on one partition is far best; below it two fits can settle
    # on different merges of the blobs (both seedings find either).
    np.testing.assert_allclose(streamed.inertia[4:], in_memory.inertia[4:], rtol=0.02)
    for i, k in enumerate(streamed.ks):
        centres = streamed.centroids[i]
        assert centres.shape == (k, X.shape[1]) and centres.dtype == X.dtype
        d2 = ((X[:, None, :] - centres[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(streamed.labels[i], d2.argmin(1))
        assert streamed.inertia[i] == pytest.approx(d2.min(1).sum(), rel=1e-9)


def test_compute_labels_false_keeps_no_labels(tmp_path, monkeypatch):
    # A memmap's sweep held len(k) * n int64 labels nobody asked for: 80
    # bytes a row for ten ks, more than its rows of a few float32 features.
    from torchkmeans.functional import streaming

    monkeypatch.setitem(streaming._CHUNK_BYTES, "cpu", 8 * 8 * 400)
    X = _blobs(5, random_state=3)
    for data in (X, _memmap(X, tmp_path / "x.dat")):
        full = elbow(data, k=range(1, 7), random_state=0)
        bare = elbow(data, k=range(1, 7), random_state=0, compute_labels=False)
        assert full.labels.shape == (6, X.shape[0]) and bare.labels is None
        np.testing.assert_array_equal(bare.inertia, full.inertia)
        for a, b in zip(bare.centroids, full.centroids):
            np.testing.assert_array_equal(a, b)
        assert bare.knee == full.knee
    # Other scores still label the rows internally.
    scored = elbow(X, k=range(1, 5), random_state=0, scores=("silhouette",), compute_labels=False)
    assert scored.labels is None and np.isfinite(scored.scores["silhouette"][1:]).all()
    with pytest.raises(TypeError, match=r"Expected compute_labels to be a bool, got str\."):
        elbow(X, k=range(1, 4), compute_labels="no")


def test_a_streamed_sweep_holds_one_fits_labels_at_a_time(tmp_path, monkeypatch):
    # Each k's result (labels of all its restarts, n_init * n int64) stayed
    # alive through the next k's fit: 835 MB -> 615 MB peak for 8,000,000 x 8.
    import weakref

    elbow_module = importlib.import_module("torchkmeans.elbow")
    fit = elbow_module.streamed_kmeans
    held = []

    def spy(*args, **kwargs):
        assert all(ref() is None for ref in held), "an earlier k's labels are still held"
        result = fit(*args, **kwargs)
        held.append(weakref.ref(result.labels))
        return result

    monkeypatch.setattr(elbow_module, "streamed_kmeans", spy)
    X = _memmap(_blobs(3, random_state=0), tmp_path / "x.dat")
    result = elbow(X, k=range(1, 5), random_state=0, compute_labels=False)
    assert len(held) == 4 and result.labels is None


def test_a_streamed_sweep_scores_only_inertia(tmp_path):
    X = _memmap(_blobs(3, random_state=0), tmp_path / "x.dat")
    with pytest.raises(ValueError, match=r"scores=\('inertia',\) when X is streamed \(memmap\)"):
        elbow(X, k=range(1, 4), scores=("inertia", "silhouette"))
    assert elbow(X, k=range(1, 4), random_state=0).scores.keys() == {"inertia"}


def test_a_streamed_sweep_of_squared_distances_beyond_float32_is_the_scaled_sweep(tmp_path):
    # Refused as overflowing; scaled by a power of two (an exact change) it
    # is the unit-scale streamed sweep scaled alike.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no knee in 3 values
        expected = elbow(_memmap(X, tmp_path / "x.dat"), k=range(1, 4), random_state=0)
        far = _memmap(X * np.float32(2.0**66), tmp_path / "far.dat")
        result = elbow(far, k=range(1, 4), random_state=0)
    np.testing.assert_allclose(result.inertia, expected.inertia * 2.0**132, rtol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.labels)
    beyond = _memmap(rng.normal(size=(60, 3)) * 1e155, tmp_path / "beyond.dat")
    with pytest.raises(ValueError, match=r"Squared distances between the rows of X overflow"):
        elbow(beyond, k=range(1, 4), random_state=0)


def test_each_lloyd_run_of_a_sweep_keeps_its_rows_state_within_the_budget(
    monkeypatch, torch_ops_only
):
    # One batch of every restart of every k held all their labels at once
    # (2,000,000 rows, k = 1..10, n_init=3: 480 MB of labels for 32 MB of data).
    # Padded batches are the plan of PyTorch ops (the fused kernel fits each k alone).
    runs = []
    lloyd_of_sweep = elbow_module.lloyd

    def spy(x, centroids, **kwargs):
        runs.append(centroids.shape[0])
        return lloyd_of_sweep(x, centroids, **kwargs)

    monkeypatch.setattr(elbow_module, "lloyd", spy)
    monkeypatch.setattr(elbow_module, "_CPU_GROUP_OVERHEAD", 1e18)  # one group, unless split
    X = _blobs(4, random_state=0)
    budget = 2 * 3 * X.shape[0] * elbow_module._ROW_BYTES_PER_PROBLEM  # two ks of 3 restarts
    limited = elbow(X, k=range(1, 8), n_init=3, random_state=0, memory_budget=budget)
    assert runs == [6, 6, 6, 3]
    runs.clear()
    whole = elbow(X, k=range(1, 8), n_init=3, random_state=0)
    assert runs == [21]
    assert limited.knee == whole.knee == 4
    np.testing.assert_allclose(limited.inertia, whole.inertia, rtol=1e-6)


def test_scores_keep_to_the_memory_budget(monkeypatch):
    """The scores of a sweep ran with the metrics' default budget, not elbow's."""
    from torchkmeans import metrics

    budget = 64 * 1024
    rows_seen: list[int] = []
    original = metrics._distance_block

    def spy(data, data_sq, rows, columns, metric, *rest):
        rows_seen.append(rows.stop - rows.start)
        return original(data, data_sq, rows, columns, metric, *rest)

    monkeypatch.setattr(metrics, "_distance_block", spy)
    X = make_blobs(3000, 4, centers=3, random_state=0)[0]
    result = elbow(X, k=range(1, 5), scores=("silhouette",), memory_budget=budget, random_state=0)
    assert rows_seen and max(rows_seen) * X.shape[0] * 8 <= budget
    expected = [metrics.silhouette_score(X, labels) for labels in result.labels[1:]]
    np.testing.assert_allclose(result.scores["silhouette"][1:], expected, rtol=1e-12)


def test_warns_of_ks_with_fewer_distinct_clusters_than_k():
    """As KMeans.fit does for one k: 5 distinct points give 5 clusters at most."""
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [9.0, 9.0], [3.0, 3.0]]), 10, 0)
    with pytest.warns(ConvergenceWarning, match=r"\(k=6: 5, k=7: 5\)") as caught:
        result = elbow(X, k=range(1, 8), random_state=0)
    assert caught[0].filename == __file__
    assert result.inertia[4] == pytest.approx(0.0, abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        elbow(X, k=range(1, 6), random_state=0)


@pytest.mark.filterwarnings("ignore:No knee found")
def test_repr_summarises_the_centroids_and_labels():
    # A notebook cell ending in elbow(...) shows the repr: it printed every
    # k's centroids and the (len(ks), n_samples) labels.
    X = tutorial_data()
    result = elbow(X, k=range(1, 10), random_state=2021)
    text = repr(result)
    assert text.startswith("ElbowResult(ks=(1, 2, 3, 4, 5, 6, 7, 8, 9), inertia=array([")
    assert "knee=3, scores={'inertia': array([" in text
    assert text.endswith("centroids=<9 arrays of shape (k, 2)>, labels=<shape (9, 300)>)")
    assert "array([[" not in text
    unlabelled = elbow(torch.tensor(X), k=range(1, 4), random_state=2021, compute_labels=False)
    assert repr(unlabelled).endswith("centroids=<3 arrays of shape (k, 2)>, labels=None)")


def test_strided_arrays_and_frames_are_swept_without_a_copy_first(monkeypatch):
    """As KMeans.fit: a Fortran-ordered array or a data frame's block reaches
    the sweep as a view (its fits copy it, centred), with the C-ordered
    array's results."""
    pd = pytest.importorskip("pandas")
    validation = importlib.import_module("torchkmeans._validation")
    converted = []
    original = validation.as_tensor

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        converted.append(result[0])
        return result

    monkeypatch.setattr(validation, "as_tensor", recording)
    X = _blobs(4, 0)[:600]
    expected = elbow(X, k=range(1, 7), random_state=0)
    frame = pd.DataFrame(X)
    for data, memory in [(np.asfortranarray(X), None), (frame, frame.to_numpy())]:
        converted.clear()
        result = elbow(data, k=range(1, 7), random_state=0)
        assert np.shares_memory(converted[0].numpy(), data if memory is None else memory)
        assert result.knee == expected.knee
        np.testing.assert_allclose(result.inertia, expected.inertia, rtol=1e-12)
        for labels, labels_expected in zip(result.labels, expected.labels):
            np.testing.assert_array_equal(labels, labels_expected)
    # Cosine: rows normalised along their strides had rounded differently
    # and seeded another optimum (k = 5 here: inertia 0.0241 against 0.0242).
    X, _ = make_blobs(n_samples=2000, n_features=2, centers=6, random_state=2)
    X = X.astype(np.float32) + 100
    expected = elbow(X, k=range(1, 6), random_state=0, metric="cosine")
    result = elbow(np.asfortranarray(X), k=range(1, 6), random_state=0, metric="cosine")
    np.testing.assert_allclose(result.inertia, expected.inertia, rtol=1e-6)
