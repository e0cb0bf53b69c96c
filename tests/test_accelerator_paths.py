"""The code paths a GPU takes, run on CPU tensors (fixture ``accelerator_paths``).

On an accelerator the library defers its host checks (convergence read every
few iterations, empty clusters repaired with ``torch.where``), never calls
the native CPU kernel, sizes blocks from the memory budget alone and sweeps
every k in one group. CI has no GPU: these tests hold those paths to the same
promises as the CPU's, and to the CPU's results.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_digits, load_wine, make_blobs
from sklearn.metrics import silhouette_score as sk_silhouette
from sklearn.preprocessing import StandardScaler
from torch.overrides import TorchFunctionMode

import torchkmeans._host as host_module
from torchkmeans import KMeans, MiniBatchKMeans, VectorQuantizer, elbow, metrics
from torchkmeans.functional import _device, kmeans_plusplus, lloyd, streaming
from torchkmeans.functional import sparse as sparse_functional


def nearest_and_inertia(X, centres, weights=None):
    """Brute force in float64: (labels, inertia)."""
    d = ((X[:, None, :].astype(np.float64) - centres[None].astype(np.float64)) ** 2).sum(-1)
    w = np.ones(len(X)) if weights is None else weights
    return d.argmin(1), float((d.min(1) * w).sum())


def assert_promises(km, X, weights=None):
    labels, inertia = nearest_and_inertia(X, km.cluster_centers_, weights)
    assert np.isfinite(km.cluster_centers_).all()
    # The margin of a tie between two centres is below float32's resolution.
    d = ((X[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    chosen = d[np.arange(len(X)), km.labels_]
    np.testing.assert_allclose(chosen, d.min(1), rtol=1e-5, atol=1e-6)
    assert (km.labels_ == labels).mean() > 0.999
    assert km.inertia_ == pytest.approx(inertia, rel=1e-5)


class HostReads(TorchFunctionMode):
    """Counts the calls that wait for a GPU: reads of values on the host,
    and ops whose output size depends on values (nonzero, boolean masks...)."""

    READS = frozenset(
        ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
    )
    SIZED = frozenset(
        ("nonzero", "argwhere", "bincount", "unique", "masked_select", "repeat_interleave")
    )

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        masked = name in ("__getitem__", "__setitem__") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        )
        if name in self.READS or name in self.SIZED or masked:
            self.calls.append(name)
        return func(*args, **kwargs)


def digits32():
    return load_digits().data.astype(np.float32)


def wine64():
    return StandardScaler().fit_transform(load_wine().data)


def test_the_fixture_switches_the_paths(accelerator_paths):
    assert not _device.on_host(torch.device("cpu"))


@pytest.mark.parametrize("data", [digits32, wine64], ids=["digits-float32", "wine-float64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_kmeans_from_given_centroids_equals_the_host_paths(data, weighted, monkeypatch):
    X = data()
    k = 10 if X.shape[1] == 64 else 3
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(X)) if weighted else None
    init = X[np.random.default_rng(1).choice(len(X), k, replace=False)]
    host = KMeans(k, init=init, tol=0.0).fit(X, sample_weight=weights)
    monkeypatch.setattr(_device, "on_host", lambda device: False)
    accelerator = KMeans(k, init=init, tol=0.0).fit(X, sample_weight=weights)
    assert_promises(accelerator, X, weights)
    # tol=0 stops where the labels stop changing: convergence read every 10
    # iterations still ends on the same fixed point.
    np.testing.assert_array_equal(accelerator.labels_, host.labels_)
    np.testing.assert_allclose(accelerator.cluster_centers_, host.cluster_centers_, atol=1e-4)
    assert accelerator.n_iter_ == host.n_iter_
    reference = SKKMeans(k, init=init, n_init=1, tol=0.0).fit(X, sample_weight=weights)
    assert accelerator.inertia_ == pytest.approx(reference.inertia_, rel=1e-4)


def test_default_kmeans_matches_sklearn(accelerator_paths):
    X, _ = make_blobs(3000, 8, centers=7, cluster_std=2.0, random_state=3)
    ours = KMeans(7, random_state=0).fit(X)
    theirs = SKKMeans(7, n_init=1, random_state=0).fit(X)
    assert_promises(ours, X)
    assert ours.inertia_ <= theirs.inertia_ * 1.01
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)


def test_empty_clusters_are_reseeded_without_nan(accelerator_paths):
    X, _ = make_blobs(600, 3, centers=5, random_state=0)
    init = np.vstack([X[:3], X[:1], X[:1]])  # twins: two clusters start empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(5, init=init).fit(X)
    assert_promises(km, X)
    assert len(np.unique(km.labels_)) == 5


@pytest.mark.parametrize("n_init", [1, 4])
def test_kmeans_plusplus_restarts_are_batched_and_sound(accelerator_paths, n_init):
    X = digits32()
    km = KMeans(10, n_init=n_init, random_state=0).fit(X)
    assert_promises(km, X)
    theirs = SKKMeans(10, n_init=n_init, random_state=0).fit(X)
    assert km.inertia_ <= theirs.inertia_ * 1.02


def test_half_precision_seeding(accelerator_paths):
    x = torch.from_numpy(digits32() * 20).half()
    centroids, index = kmeans_plusplus(x, 10, generator=torch.Generator().manual_seed(0))
    assert centroids.dtype == torch.float16
    assert len(set(index.tolist())) == 10


def test_minibatch_fit_and_partial_fit(accelerator_paths):
    X, _ = make_blobs(4000, 5, centers=6, random_state=2)
    km = MiniBatchKMeans(6, batch_size=256, random_state=0).fit(X)
    assert_promises(km, X)
    # Early stopping read every 10 steps still stops before max_iter epochs.
    assert km.n_steps_ < 100 * len(X) // 256
    reference = SKKMeans(6, n_init=1, random_state=0).fit(X)
    assert km.inertia_ <= reference.inertia_ * 1.05
    streamed = MiniBatchKMeans(6, random_state=0, init=km.cluster_centers_)
    for start in range(0, len(X), 500):
        streamed.partial_fit(X[start : start + 500])
    assert np.isfinite(streamed.cluster_centers_).all()
    assert streamed.inertia_ <= reference.inertia_ / len(X) * 500 * 1.5


def test_elbow_sweeps_every_k_in_one_group(accelerator_paths):
    X, _ = make_blobs(800, 4, centers=4, cluster_std=0.8, random_state=5)
    result = elbow(X, k=range(1, 8), n_init=2, random_state=0)
    assert result.knee == 4
    assert np.all(np.diff(result.inertia) <= 1e-9 * result.inertia[0])
    for k, centres, labels in zip(result.ks, result.centroids, result.labels):
        nearest, inertia = nearest_and_inertia(X, centres)
        np.testing.assert_array_equal(labels, nearest)
        assert result.inertia[k - 1] == pytest.approx(inertia, rel=1e-9)


def test_memmap_fit_streams_in_accelerator_chunks(accelerator_paths, tmp_path, monkeypatch):
    monkeypatch.setitem(streaming._CHUNK_BYTES, "other", 8 * 8 * 500)
    X, _ = make_blobs(5000, 8, centers=6, random_state=0)
    path = tmp_path / "x.dat"
    mm = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    streamed = KMeans(6, init=X[:6]).fit(np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape))
    in_memory = KMeans(6, init=X[:6]).fit(X)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, atol=1e-9)


def test_silhouette_equals_sklearn(accelerator_paths):
    X = wine64()
    labels = KMeans(3, random_state=0).fit_predict(X)
    assert metrics.silhouette_score(X, labels) == pytest.approx(sk_silhouette(X, labels), 1e-9)


def test_vector_quantizer_training_steps(accelerator_paths):
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8, dead_code_threshold=0.1)
    for _ in range(5):
        x = torch.randn(64, 8) * 3
        out = vq(x)
        d = torch.cdist(x.double(), vq.codebook[0].double())
        assert torch.isfinite(vq.codebook).all() and torch.isfinite(out.loss)
    # The last codes were chosen before the last update: check them in eval.
    out = vq.eval()(x)
    d = torch.cdist(x.double(), vq.codebook[0].double())
    chosen = d.gather(1, out.codes.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(chosen, d.min(1).values, rtol=1e-5, atol=1e-5)


def test_lloyd_labels_are_nearest_when_the_expansion_overflows(accelerator_paths):
    # float32 rows of centred norm ~1.8e19: |c|^2 - 2 x.c overflows for some
    # centres, and (distance x trust) for far rows, which were then trusted:
    # stopped at max_iter, 3 to 6 of 180 labels were not the nearest returned
    # centre (one 2x, another 12x farther than it).
    rng = np.random.default_rng(0)
    offsets = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    X = np.concatenate([rng.normal(size=(60, 3)) + c for c in offsets]).astype(np.float32)
    x = torch.tensor(X * np.float32(2e18))
    for max_iter in (1, 2, 3):
        result = lloyd(x, x[[0, 70, 71]].clone(), max_iter=max_iter, tol=0.0)
        labels, inertia = nearest_and_inertia(x.numpy(), result.centroids.numpy())
        np.testing.assert_array_equal(result.labels.numpy(), labels)
        assert float(result.inertia) == pytest.approx(inertia, rel=1e-5)


def test_vector_quantizer_training_step_reads_nothing_on_the_host(accelerator_paths):
    # The CPU path (nearest_centroids' check, a bincount) had been taken by
    # every CPU tensor here: two host reads per step, and the GPU path untested.
    torch.manual_seed(0)
    for options in ({}, {"heads": 2}, {"metric": "cosine"}):
        vq = VectorQuantizer(32, 8, dead_code_threshold=0.1, **options)
        width = 8 * vq.heads
        vq(torch.randn(256, width))  # k-means initialisation: reads the host once
        with HostReads() as reads:
            for _ in range(3):
                vq(torch.randn(256, width, requires_grad=True) * 3).loss.backward()
        assert reads.calls == [], options


def test_minibatch_fit_reads_the_host_every_10_steps(accelerator_paths):
    # Each step had read the host twice (the underflow test and the check of
    # the labels in nearest_centroids): 2 reads a step, not 1 per 10 steps.
    X = np.random.default_rng(0).normal(size=(4000, 16)).astype(np.float32)
    counts = []
    for max_iter in (2, 6):
        km = MiniBatchKMeans(8, batch_size=200, max_iter=max_iter, max_no_improvement=None)
        with HostReads() as reads:
            km.fit(X)
        counts.append((km.n_steps_, len(reads.calls)))
    (steps, calls), (more_steps, more_calls) = counts
    assert more_steps - steps == 80
    assert more_calls - calls <= 80 // 10 + 1
    assert_promises(km, X)


def test_lloyd_reads_the_host_every_10_iterations(accelerator_paths):
    X = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    counts = []
    for max_iter in (10, 40):
        with HostReads() as reads:
            km = KMeans(40, init=X[:40], max_iter=max_iter, tol=0.0).fit(X)
        assert km.n_iter_ == max_iter
        counts.append(len(reads.calls))
    assert counts[1] - counts[0] <= 3


def test_pairwise_distances_reads_the_host_once_per_block(accelerator_paths):
    # Rows near a centre far from the centres' mean are computed again from
    # differences: found with one nonzero per block (two had been taken, the
    # rows first, then their entries: a host read the CPU's path wants).
    from torchkmeans.functional import pairwise_distances

    gen = torch.Generator().manual_seed(0)
    centroids = torch.cat([torch.zeros(1, 20), 1e4 + torch.randn(7, 20, generator=gen)])
    x = centroids[1] + 1e-3 * torch.randn(2000, 20, generator=gen)
    with HostReads() as reads:
        distances = pairwise_distances(x, centroids)
    assert reads.calls.count("nonzero") == 1
    exact = ((x.double()[:, None] - centroids.double()[None]) ** 2).sum(-1)
    torch.testing.assert_close(distances.double(), exact, rtol=4e-7, atol=0.0)


def test_a_public_minibatch_step_reads_nothing_on_the_host(accelerator_paths):
    # Its test for squared distances that underflow read the largest
    # centroid entry every call: a host synchronisation in a training loop.
    from torchkmeans.functional import minibatch_step

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen)
    centroids, weight_sums = x[:8].clone(), torch.zeros(8)
    with HostReads() as reads:
        for start in range(0, 512, 128):
            step = minibatch_step(x[start : start + 128], centroids, weight_sums)
            centroids, weight_sums = step.centroids, step.weight_sums
    assert reads.calls == []
    assert torch.isfinite(centroids).all() and float(weight_sums.sum()) == 512


class _GeneratorOn(torch.Generator):
    """A CPU generator that reports the device it was asked for: what
    ``torch.Generator(device="cuda")`` gives, on a machine without CUDA."""

    def __new__(cls, device="cpu"):
        generator = super().__new__(cls)
        generator.claimed = torch.device(device)
        return generator

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self):
        return self.claimed


def test_a_torch_generator_of_another_device_seeds_one_on_the_data_device(monkeypatch):
    # KMeans(random_state=torch.Generator()).fit(cuda_tensor) had handed the
    # CPU generator to k-means++ on CUDA: "Expected a 'cuda' device type for
    # generator but found 'cpu'" (MiniBatchKMeans, elbow and streamed fits too).
    from torchkmeans import _validation as v

    monkeypatch.setattr(torch, "Generator", _GeneratorOn)
    made = v.make_generator(torch.Generator("cpu").manual_seed(0), torch.device("cuda"))
    assert made.device.type == "cuda"
    again = v.make_generator(torch.Generator("cpu").manual_seed(0), torch.device("cuda"))
    assert torch.equal(made.get_state(), again.get_state())  # same seed, same draws
    other = v.make_generator(torch.Generator("cpu").manual_seed(1), torch.device("cuda"))
    assert not torch.equal(made.get_state(), other.get_state())
    own = torch.Generator("cuda")
    assert v.make_generator(own, torch.device("cuda", 0)) is own
    cpu = torch.Generator("cpu")
    assert v.make_generator(cpu, torch.device("cpu")) is cpu


def test_sparse_lloyd_reads_the_host_every_10_iterations(accelerator_paths, monkeypatch):
    # The sparse loop read the host about six times an iteration: the shift,
    # the labels compared, the empty-cluster test, the suspects' nonzero and
    # two bounds of each block of rows (36 iterations: 275 reads).
    sparse = pytest.importorskip("scipy.sparse")
    # 30% stored: fitted on its stored values, not dense (dense_when_mostly_stored).
    monkeypatch.setattr(host_module, "DENSIFIED_SHARE", math.inf)
    X = sparse.random(2000, 30, density=0.3, random_state=0, format="csr")
    init = X[:30].toarray()
    counts = []
    for max_iter in (10, 30):
        with HostReads() as reads:
            km = KMeans(30, init=init, max_iter=max_iter, tol=0.0).fit(X)
        assert km.n_iter_ == max_iter
        counts.append(len(reads.calls))
    assert counts[1] - counts[0] <= 20 // 10 + 1


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("case", ["empty-cluster", "far-from-the-origin"])
def test_sparse_fit_equals_the_host_paths_and_scikit_learn(case, monkeypatch):
    # Off the CPU the loop reads the host every 10 iterations, reseeds with
    # torch.where and labels again a fixed number of suspects (rows the
    # expansion cannot label, many far from the origin), running the
    # iterations since the last read again when there were more: the same fit.
    sparse = pytest.importorskip("scipy.sparse")
    # Fitted on the stored values, however many (see dense_when_mostly_stored).
    monkeypatch.setattr(host_module, "DENSIFIED_SHARE", math.inf)
    rng = np.random.default_rng(0)
    if case == "empty-cluster":
        X = sparse.random(1500, 80, density=0.05, random_state=0, format="csr")
        init = X[rng.choice(1500, 8, replace=False)].toarray()
        init[3] = 100.0  # far from every row: empty after the first assignment
    else:
        centres = 1e4 + rng.normal(size=(8, 4)) * 0.01
        dense = centres[rng.integers(0, 8, 3000)] + rng.normal(size=(3000, 4)) * 0.003
        dense[:, 0] = 0
        X = sparse.csr_matrix(dense.astype(np.float32))
        # Unshifted (see _frame_shift): the suspects the loop labels again.
        monkeypatch.setattr(sparse_functional, "_frame_shift", lambda rows: None)
        init = dense[rng.choice(3000, 8, replace=False)].astype(np.float32)
    w = rng.uniform(0.5, 2.0, X.shape[0])
    host = KMeans(8, init=init).fit(X, sample_weight=w)  # the fused CSR kernel
    # The host's sparse products, which the accelerators' loop shares, to the
    # last bit (the kernel adds the sums in its own order).
    monkeypatch.setattr(sparse_functional, "_fused", lambda *args, **kwargs: False)
    products = KMeans(8, init=init).fit(X, sample_weight=w)
    np.testing.assert_array_equal(products.labels_, host.labels_)
    np.testing.assert_allclose(
        products.cluster_centers_, host.cluster_centers_, rtol=1e-6, atol=1e-12
    )
    assert products.n_iter_ == host.n_iter_
    monkeypatch.setattr(_device, "on_host", lambda device: False)
    for layout in (X, X.tocsc()):
        with HostReads() as reads:
            accelerator = KMeans(8, init=init).fit(layout, sample_weight=w)
        np.testing.assert_array_equal(accelerator.labels_, products.labels_)
        np.testing.assert_array_equal(accelerator.cluster_centers_, products.cluster_centers_)
        assert accelerator.inertia_ == products.inertia_
        assert accelerator.n_iter_ == products.n_iter_
        assert reads.calls.count("nonzero") <= 2  # the final labels' check
    if case == "empty-cluster":
        theirs = SKKMeans(8, init=init, n_init=1).fit(X, sample_weight=w)
        np.testing.assert_array_equal(host.labels_, theirs.labels_)
        np.testing.assert_allclose(host.cluster_centers_, theirs.cluster_centers_, atol=1e-12)
        assert host.inertia_ == pytest.approx(theirs.inertia_, rel=1e-12)
        assert host.n_iter_ == theirs.n_iter_
