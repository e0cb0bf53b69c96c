"""KMeans on data streamed from the host: memmaps (and, on a GPU, host arrays too big for it)."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits, make_blobs
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from torchkmeans import KMeans, elbow, lloyd
from torchkmeans import _host as host
from torchkmeans.functional import streaming
from torchkmeans.functional.streaming import HostRows, init_sample_size, iter_chunks


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of ~1,000 rows, so the test data spans many of them."""
    monkeypatch.setitem(streaming._CHUNK_BYTES, "cpu", 8 * 8 * 1000)
    monkeypatch.setitem(streaming._CHUNK_BYTES, "other", 8 * 8 * 1000)


def as_memmap(tmp_path, X, name="x.dat"):
    path = tmp_path / name
    mm = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def blobs8():
    X, _ = make_blobs(n_samples=12_000, n_features=8, centers=6, random_state=0)
    return X


def test_should_stream_only_memmaps_on_the_cpu(tmp_path, blobs8):
    assert host.should_stream(as_memmap(tmp_path, blobs8), None)
    assert host.should_stream(as_memmap(tmp_path, blobs8, "y.dat"), "cpu")
    assert not host.should_stream(blobs8, None)
    assert not host.should_stream(torch.from_numpy(blobs8), "cpu")
    assert not host.should_stream([[0.0, 1.0]], None)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_memmap_fit_equals_in_memory_fit_from_the_same_centroids(
    tmp_path, blobs8, small_chunks, metric
):
    init = blobs8[:6].copy()
    streamed = KMeans(6, init=init, metric=metric).fit(as_memmap(tmp_path, blobs8))
    in_memory = KMeans(6, init=init, metric=metric).fit(blobs8)
    assert type(streamed.labels_) is np.ndarray and type(streamed.cluster_centers_) is np.ndarray
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-10)
    assert streamed.n_iter_ == in_memory.n_iter_
    assert streamed.inertia_ == pytest.approx(in_memory.inertia_, rel=1e-12)
    np.testing.assert_allclose(streamed.inertia_history_, in_memory.inertia_history_, rtol=1e-10)


def _weighted_digits_fit_equals_in_memory(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """Jittered weighted digits fitted from a memmap and in memory from the
    same centres: the same result. Returns the rows and the weights."""
    X = load_digits().data + np.random.default_rng(1).uniform(-0.01, 0.01, size=(1797, 64))
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=len(X))
    init = X[::180][:10].copy()
    streamed = KMeans(10, init=init).fit(as_memmap(tmp_path, X), sample_weight=weights)
    in_memory = KMeans(10, init=init).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-9)
    assert streamed.n_iter_ == in_memory.n_iter_
    assert streamed.inertia_ == pytest.approx(in_memory.inertia_, rel=1e-12)
    return X, weights


def test_memmap_fit_on_digits_equals_in_memory_with_weights(tmp_path, small_chunks, torch_ops_only):
    # Exact equality with the in-memory fit's PyTorch ops, which sum clusters
    # in float32 like the streamed chunks (the native kernel sums in float64,
    # and rounding near tol may then stop an iteration earlier or later).
    # Jittered: the digits' integer pixels put rows at exactly equal distances
    # from two centres, which a BLAS product's rounding decides, and an
    # AVX-512 one rounds a block of 100 rows and one of 1,797 differently.
    _weighted_digits_fit_equals_in_memory(tmp_path)


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_float32_memmap_iterations_sum_in_float64_like_in_memory(tmp_path, monkeypatch, scale):
    """On the CPU the streamed iterations go through the fused kernel, chunk by
    chunk: float64 sums divided in float64, as the in-memory fit's kernel.
    Through PyTorch ops the float32 sums left float32 centres up to 7 ulps
    (breast cancer) and 64 ulps (blobs far from the origin) off the
    in-memory fit's, and each pass took about 4x as long."""
    from sklearn.datasets import load_breast_cancer

    from torchkmeans.functional import _native

    if not _native.available() or not _native.prefers_native(torch.zeros(1, 30), 5):
        pytest.skip("the fused kernel is not built here, or not preferred")
    calls = []
    nearest = _native.nearest

    def spy(*args, **kwargs):
        calls.append(kwargs.get("offset") is not None)
        return nearest(*args, **kwargs)

    monkeypatch.setattr(_native, "nearest", spy)
    monkeypatch.setitem(streaming._CHUNK_BYTES, "cpu", 4 * 30 * 100)  # 100-row chunks
    X = load_breast_cancer().data
    if scale != 1.0:
        X, _ = make_blobs([3000, 500, 40], n_features=30, random_state=3)
        X = X * scale + 5 * scale
    X = X.astype(np.float32)
    init = X[[0, 50, 100, 200, 300]]
    streamed = KMeans(5, init=init, tol=0).fit(as_memmap(tmp_path, X))
    assert any(calls)  # chunks read centred by the kernel: the streamed passes
    in_memory = KMeans(5, init=init, tol=0).fit(X)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    assert streamed.n_iter_ == in_memory.n_iter_
    np.testing.assert_array_max_ulp(streamed.cluster_centers_, in_memory.cluster_centers_, 4)
    d2 = ((X.astype(np.float64)[:, None] - streamed.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(streamed.labels_, d2.argmin(1))
    assert streamed.inertia_ == pytest.approx(d2.min(1).sum(), rel=1e-6)


def test_memmap_fit_on_digits_with_weights_and_restarts_through_the_kernel(tmp_path, small_chunks):
    """The fused kernel's streamed passes with weights and several restarts at
    once, in float64: the in-memory fit's result."""
    X, weights = _weighted_digits_fit_equals_in_memory(tmp_path)
    mm = as_memmap(tmp_path, X, "y.dat")
    restarts = KMeans(10, n_init=3, random_state=0).fit(mm, sample_weight=weights)
    d2 = ((X[:, None] - restarts.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(restarts.labels_, d2.argmin(1))
    assert restarts.inertia_ == pytest.approx((d2.min(1) * weights).sum(), rel=1e-10)
    best = KMeans(10, n_init=3, random_state=0).fit(X, sample_weight=weights).inertia_
    assert restarts.inertia_ <= 1.01 * best


def test_empty_clusters_are_reseeded_like_in_memory(tmp_path, blobs8, small_chunks):
    # Two identical initial centres: the second gets no point in the first
    # assignment and must be reseeded from the farthest point, found across chunks.
    init = np.vstack([blobs8[:5], blobs8[:1]])
    mm = as_memmap(tmp_path, blobs8)
    streamed = KMeans(6, init=init).fit(mm)
    in_memory = KMeans(6, init=init).fit(blobs8)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    assert len(np.unique(streamed.labels_)) == 6
    assert not np.isnan(streamed.cluster_centers_).any()


def test_labels_that_repeat_while_a_cluster_is_reseeded_are_no_convergence(tmp_path):
    # tests/test_functional.py has the story: the copies of 27 reseed two
    # empty clusters; stopping when the labels first repeat left inertia 2.
    X = np.array([[15.0], [15.0], [24.0], [24.0], [27.0], [27.0]])
    init = np.array([[15.0], [15.0], [15.0]])
    in_memory = KMeans(3, init=init).fit(X)
    streamed = KMeans(3, init=init).fit(as_memmap(tmp_path, X))
    for km in (streamed, in_memory):
        np.testing.assert_allclose(km.cluster_centers_.ravel(), [15.0, 27.0, 24.0])
        assert km.inertia_ == 0.0


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_streamed_seeding_from_a_sample_is_as_good_as_in_memory(tmp_path, small_chunks, init):
    X, _ = make_blobs(n_samples=30_000, n_features=16, centers=12, random_state=3)
    mm = as_memmap(tmp_path, X)
    for seed in range(3):
        streamed = KMeans(12, init=init, n_init=3, random_state=seed).fit(mm)
        in_memory = KMeans(12, init=init, n_init=3, random_state=seed).fit(X)
        if init == "k-means++":  # random seeding is at the mercy of the draw either way
            assert streamed.inertia_ <= 1.01 * in_memory.inertia_
        # labels are the nearest of the returned centres, inertia their sum
        d2 = ((X[:, None, :] - streamed.cluster_centers_[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(streamed.labels_, d2.argmin(1))
        assert streamed.inertia_ == pytest.approx(d2.min(1).sum(), rel=1e-10)


def test_same_seed_same_streamed_result(tmp_path, blobs8, small_chunks):
    mm = as_memmap(tmp_path, blobs8)
    a = KMeans(6, random_state=7, n_init=2).fit(mm)
    b = KMeans(6, random_state=7, n_init=2).fit(mm)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    c = KMeans(6, random_state=8, n_init=2).fit(mm)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


def test_predict_transform_score_stream_a_memmap(tmp_path, blobs8, small_chunks):
    mm = as_memmap(tmp_path, blobs8.astype(np.float32))
    km = KMeans(6, random_state=0).fit(blobs8.astype(np.float32))
    labels = km.predict(mm)
    assert type(labels) is np.ndarray and labels.shape == (len(blobs8),)
    np.testing.assert_array_equal(labels, km.predict(blobs8.astype(np.float32)))
    distances = km.transform(mm)
    assert type(distances) is np.ndarray and distances.shape == (len(blobs8), 6)
    np.testing.assert_allclose(distances, km.transform(blobs8.astype(np.float32)), rtol=1e-5)
    assert km.score(mm) == pytest.approx(km.score(blobs8.astype(np.float32)), rel=1e-6)
    with pytest.raises(ValueError, match=r"X has 3 features, but KMeans is expecting 8"):
        km.predict(as_memmap(tmp_path, blobs8[:, :3].copy(), "narrow.dat"))


def test_the_memmap_is_never_written(tmp_path, blobs8, small_chunks):
    path = tmp_path / "rw.dat"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=blobs8.shape)
    mm[:] = blobs8
    before = digest(mm)
    km = KMeans(6, random_state=0, n_init=2).fit(mm)
    km.predict(mm)
    km.transform(mm)
    assert digest(mm) == before


def test_streamed_bad_input_is_refused(tmp_path, blobs8):
    bad = blobs8[:100].copy()
    bad[57, 3] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity"):
        KMeans(3).fit(as_memmap(tmp_path, bad, "nan.dat"))
    mm = as_memmap(tmp_path, blobs8[:100].copy(), "ok.dat")
    with pytest.raises(TypeError, match=r"Expected init to be 'k-means\+\+', 'random' or an"):
        KMeans(3, init=lambda X, k, g: X[:k]).fit(mm)
    with pytest.raises(ValueError, match=r"Expected init to be of shape \(3, 8\), got shape"):
        KMeans(3, init=np.zeros((3, 2))).fit(mm)
    with pytest.raises(ValueError, match=r"n_samples=100 should be >= n_clusters=101"):
        KMeans(101).fit(mm)
    flat = np.memmap(tmp_path / "flat.dat", dtype=np.float64, mode="w+", shape=(10,))
    with pytest.raises(ValueError, match=r"Expected X to be 2-D of shape"):
        KMeans(3).fit(flat)
    fitted = KMeans(3, random_state=0).fit(blobs8[:100])
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity"):
        fitted.predict(as_memmap(tmp_path, bad, "nan2.dat"))


def test_streamed_kmeans_over_a_tensor_equals_lloyd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 5, generator=g, dtype=torch.float64) * 3 + 100.0
    init = x[:7].clone()
    rows = HostRows(lambda a, b: x[a:b], lambda i: x[i], x.shape[0], x.shape[1], 8)
    got = streaming.streamed_kmeans(rows, 7, init=init, dtype=torch.float64, chunk_bytes=4096)
    expected = lloyd(x, init)
    assert torch.equal(got.labels, expected.labels)
    torch.testing.assert_close(got.centroids, expected.centroids, rtol=0, atol=1e-10)
    assert int(got.n_iter) == int(expected.n_iter)


def test_streamed_history_is_nan_after_the_best_runs_n_iter():
    """Restarts run as one batch and record until the last one stops; the best
    run's history ends at its own n_iter."""
    x = torch.rand(1500, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    stopped_early = 0
    for seed in range(4):
        result = streaming.streamed_kmeans(
            x,
            8,
            init="random",
            n_init=4,
            tol=0.0,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(seed),
        )
        n = int(result.n_iter)
        assert bool(torch.isfinite(result.inertia_history[:n]).all())
        assert bool(torch.isnan(result.inertia_history[n:]).all())
        stopped_early += n < 33  # 33: the longest of these restarts
    assert stopped_early  # some best run stopped before others in its batch


def test_iter_chunks_covers_every_row_in_order():
    x = torch.arange(103 * 2, dtype=torch.float64).view(103, 2)
    rows = HostRows(lambda a, b: x[a:b], lambda i: x[i], 103, 2, 8)
    seen = list(iter_chunks(rows, torch.device("cpu"), torch.float32, 10))
    assert [start for start, _ in seen] == list(range(0, 103, 10))
    assert all(chunk.dtype == torch.float32 for _, chunk in seen)
    torch.testing.assert_close(torch.cat([c for _, c in seen]), x.float())


def test_sample_draws_distinct_sorted_rows():
    rows = HostRows(None, None, 1_000_000, 4, 4)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    index = streaming._sample(rows, 20_000, g)
    assert index.numel() == 20_000 and index.unique().numel() == 20_000
    assert bool((index[1:] > index[:-1]).all()) and 0 <= int(index[0]) and int(index[-1]) < 10**6
    assert torch.equal(streaming._sample(HostRows(None, None, 50, 4, 4), 80, g), torch.arange(50))


def test_init_sample_size_is_bounded():
    assert init_sample_size(10**8, 1024, 128) == 256 * 1024
    assert init_sample_size(10**8, 8, 64) == 10_000
    assert init_sample_size(10**8, 4096, 1024) == 512 * 2**20 // (1024 * 4)
    assert init_sample_size(300, 4, 2) == 300


_SMALL = {"random_state": 0, "memory_budget": 2**16}


class LiveBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among those the ops made."""

    def __init__(self):
        super().__init__()
        self.live = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() and storage.data_ptr() not in self.live:
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out


@pytest.mark.parametrize("d", [2, 8, 32])
def test_host_data_is_streamed_when_the_gpu_could_not_hold_the_fit(accelerator_paths, d):
    # Only a copy of X had been counted against half the free memory: float32
    # fits needing up to 2x (d=2) or 1.3x (d=8) the free memory ran out of it
    # on the GPU instead of streaming (predict, at d=2, 1.3x).
    def peaks(n):
        X = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
        km = KMeans(8, max_iter=2, random_state=0, memory_budget=2**16)
        with LiveBytes() as fit:
            km.fit(torch.from_numpy(X).clone())  # with the copy that the GPU holds
        with LiveBytes() as predict:
            km.predict(torch.from_numpy(X).clone())
        return np.array([fit.peak, predict.peak])

    # Bytes per row, beyond the blocks of fixed size (65,536 rows at most):
    # what fills a GPU.
    fit_row, predict_row = (peaks(160_000) - peaks(80_000)) / 80_000
    n = 10**9  # an array of that shape, without the memory
    X = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (n, d), (0, 0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(host.v, "resolve_device", lambda device, default: torch.device(device))
        for need, lloyd in ((fit_row * n, True), (predict_row * n, False)):
            for free, streamed in ((0.95 * need, True), (2.0 * need, False)):
                patch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 10**13))
                assert host.should_stream(X, "cuda", lloyd=lloyd) == streamed, (lloyd, free / n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "module, run",
    [
        ("torchkmeans.kmeans", lambda X: KMeans(8, init="random", max_iter=2, **_SMALL).fit(X)),
        ("torchkmeans.kmeans", lambda X: KMeans(8, n_init=4, max_iter=2, **_SMALL).fit(X)),
        ("torchkmeans.elbow", lambda X: elbow(X, k=range(1, 4), max_iter=2, **_SMALL)),
    ],
)
def test_host_data_is_streamed_when_the_gpu_could_not_hold_the_restarts(
    accelerator_paths, monkeypatch, module, run, dtype
):
    # Restarts run as one batch, each with its own labels and distances: a
    # fit of 10 random starts (d=2) held 264 bytes a row in float32, of
    # which one problem's 56 were counted, and ran out of GPU memory
    # instead of streaming from 4x less free memory than it needed.
    asked = []

    def spy(X, device, **kwargs):
        asked.append(kwargs)
        return False

    monkeypatch.setattr(sys.modules[module], "should_stream", spy)

    def peak(n):
        X = np.random.default_rng(0).standard_normal((n, 2)).astype(dtype)
        with LiveBytes() as live:
            run(torch.from_numpy(X))
        return live.peak

    row_bytes = (peak(160_000) - peak(80_000)) / 80_000
    n = 10**9
    X = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), (n, 2), (0, 0))
    monkeypatch.setattr(host.v, "resolve_device", lambda device, default: torch.device(device))
    for free, streamed in ((0.95 * row_bytes * n, True), (2.0 * row_bytes * n, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 10**13))
        assert host.should_stream(X, "cuda", **asked[-1]) == streamed, (asked[-1], row_bytes)


@pytest.mark.parametrize("d, k", [(4, 64), (16, 256)])
def test_host_data_is_streamed_when_the_gpu_could_not_hold_its_transform(
    accelerator_paths, monkeypatch, d, k
):
    # transform's result is n x k: counted as predict's copy, labels and
    # distances (40 bytes a row at d=4), 64 centres' distances (272) ran out
    # of GPU memory instead of being written chunk by chunk to the host.
    import torchkmeans.functional.distances as distances

    monkeypatch.setattr(distances, "DEFAULT_MEMORY_BUDGET", 2**16)  # blocks of fixed size
    km = KMeans(k, max_iter=2, **_SMALL).fit(np.random.default_rng(1).standard_normal((2000, d)))
    asked = []

    def spy(X, device, **kwargs):
        asked.append(kwargs)
        return False

    monkeypatch.setattr(sys.modules["torchkmeans.kmeans"], "should_stream", spy)

    def peak(n):
        X = torch.from_numpy(np.random.default_rng(0).standard_normal((n, d)))
        with LiveBytes() as live:
            km.transform(X)
        return live.peak

    row_bytes = (peak(160_000) - peak(80_000)) / 80_000
    n = 10**9
    X = np.lib.stride_tricks.as_strided(np.zeros(1), (n, d), (0, 0))
    monkeypatch.setattr(host.v, "resolve_device", lambda device, default: torch.device(device))
    for free, streamed in ((0.95 * row_bytes * n, True), (2.0 * row_bytes * n, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 10**13))
        assert host.should_stream(X, "cuda", **asked[-1]) == streamed, (asked[-1], row_bytes)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_data_too_big_for_the_gpu_is_streamed(monkeypatch, blobs8, small_chunks):
    monkeypatch.setattr(host, "_DEVICE_SHARE", 0.0)  # any host array is "too big"
    assert host.should_stream(blobs8, "cuda")
    init = blobs8[:6].copy()
    streamed = KMeans(6, init=init, device="cuda").fit(blobs8)
    monkeypatch.setattr(host, "_DEVICE_SHARE", 10.0**9)
    in_memory = KMeans(6, init=init, device="cuda").fit(blobs8)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-9)
    tensor = torch.from_numpy(blobs8)
    monkeypatch.setattr(host, "_DEVICE_SHARE", 0.0)
    fitted = KMeans(6, init=init, device="cuda").fit(tensor)
    assert fitted.labels_.device.type == "cpu"
    assert torch.equal(fitted.predict(tensor), torch.from_numpy(streamed.labels_))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_minibatch_reads_host_data_too_big_for_the_gpu_batch_by_batch(monkeypatch, blobs8):
    from torchkmeans import MiniBatchKMeans

    monkeypatch.setattr(host, "_DEVICE_SHARE", 0.0)
    streamed = MiniBatchKMeans(6, batch_size=256, random_state=0, device="cuda").fit(blobs8)
    monkeypatch.setattr(host, "_DEVICE_SHARE", 10.0**9)
    in_memory = MiniBatchKMeans(6, batch_size=256, random_state=0, device="cuda").fit(blobs8)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(8, 400),
    d=st.integers(1, 6),
    k=st.integers(1, 8),
    rows_per_chunk=st.integers(1, 64),
    metric=st.sampled_from(["euclidean", "cosine"]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_streamed_equals_in_memory_for_any_chunking(
    n, d, k, rows_per_chunk, metric, weighted, seed
):
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 10.0
    init = x[torch.randperm(n, generator=g)[:k]].clone()
    weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    rows = HostRows(lambda a, b: x[a:b], lambda i: x[i], n, d, 8)
    got = streaming.streamed_kmeans(
        rows,
        k,
        init=init,
        metric=metric,
        sample_weight=weights,
        dtype=torch.float64,
        chunk_bytes=rows_per_chunk * d * 8,
    )
    expected = lloyd(x, init, metric=metric, sample_weight=weights)
    assert int(got.n_iter) == int(expected.n_iter)
    assert torch.equal(got.labels, expected.labels)
    torch.testing.assert_close(got.centroids, expected.centroids, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.inertia, expected.inertia, rtol=1e-9, atol=1e-9)


def test_streamed_fit_labels_are_nearest_on_heavy_tailed_data(tmp_path, small_chunks):
    # Lognormal values in float32: most rows sit near 0, thousands of units
    # from the data's mean, where the centred scores round the wrong way; the
    # streamed fit reads those rows again and checks them as kmeans does.
    X = np.random.RandomState(0).lognormal(0.0, 2.5, size=(4000, 1)).astype(np.float32)
    init = X[np.random.RandomState(1).choice(4000, 50, replace=False)]
    streamed = KMeans(50, init=init).fit(as_memmap(tmp_path, X))
    table = ((X.astype(np.float64)[:, None] - streamed.cluster_centers_[None]) ** 2)[..., 0]
    chosen = table[np.arange(len(X)), streamed.labels_]
    assert np.all(chosen <= table.min(1) * (1 + 2e-6))
    np.testing.assert_allclose(streamed.inertia_, table.min(1).sum(), rtol=1e-5)


@pytest.mark.parametrize("init", ["k-means++", "random", "given"])
def test_cosine_rows_of_zeros_seed_no_centroid_when_streamed(tmp_path, small_chunks, init):
    # Rows of zeros (distance 1 from every centre) were drawn as seeds and
    # taken by relocation: centroids of zeros, 1 to 3 of 8 per fit.
    rng = np.random.default_rng(7)
    axes = np.abs(rng.normal(size=(8, 16)))
    X = np.abs(np.repeat(axes, 250, axis=0) + rng.normal(scale=0.3, size=(2000, 16)))
    X = np.concatenate([X, np.zeros((1500, 16))])[rng.permutation(3500)].astype(np.float32)
    weights = rng.uniform(0.5, 2.0, len(X))
    start = X[np.flatnonzero(X.any(1))[[0, 0, 1, 2, 3, 4, 5, 6]]]
    params = {"init": start} if init == "given" else {"init": init, "n_init": 1}
    for seed in range(3):
        km = KMeans(8, metric="cosine", random_state=seed, **params)
        streamed = km.fit(as_memmap(tmp_path, X), sample_weight=weights)
        np.testing.assert_allclose(
            np.linalg.norm(streamed.cluster_centers_, axis=1), 1.0, rtol=1e-5
        )
        if init == "given":
            in_memory = KMeans(8, metric="cosine", init=start).fit(X, sample_weight=weights)
            np.testing.assert_allclose(
                streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-5
            )
            assert streamed.inertia_ == pytest.approx(in_memory.inertia_, rel=1e-5)
            np.testing.assert_allclose(
                streamed.inertia_history_, in_memory.inertia_history_, rtol=1e-5
            )


def test_a_memmap_beyond_the_fit_dtype_is_said_to_be_so(tmp_path):
    # float64 rows beyond float32's range, fitted from a memmap in float32:
    # the fit and the elbow said the file (which holds none) contained NaN
    # or infinity; in memory they say the rows are beyond float32's range.
    X = load_digits().data[:300].copy()
    X[100, 2] = 1e39
    np.save(tmp_path / "beyond.npy", X)
    stored = np.load(tmp_path / "beyond.npy", mmap_mode="r")
    match = r"Input X holds values beyond the range of float32 \(converted from float64\)"
    with pytest.raises(ValueError, match=match):
        KMeans(n_clusters=3, dtype="float32", random_state=0).fit(stored)
    with pytest.raises(ValueError, match=match):
        elbow(stored, k=range(1, 3), dtype="float32", random_state=0)
    X[100, 2] = np.nan
    np.save(tmp_path / "nan.npy", X)
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
        KMeans(n_clusters=3, dtype="float32").fit(np.load(tmp_path / "nan.npy", mmap_mode="r"))
