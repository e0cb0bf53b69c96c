"""Memory stays bounded: no n x k block is ever allocated."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torchkmeans.functional import block_rows, kmeans, lloyd, nearest_centroids, random_init
from torchkmeans.functional import distances as distances_module

lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")


def test_block_plan_for_a_million_points_never_holds_n_by_k():
    n, k = 1_000_000, 1024
    for device in (torch.device("cpu"), torch.device("cuda")):
        rows = block_rows(n, k, itemsize=4, device=device)
        assert rows < n
        assert rows * k * 4 <= distances_module.DEFAULT_MEMORY_BUDGET


def test_blocks_seen_by_the_matrix_product_are_bounded(monkeypatch, torch_ops_only):
    """Instrument the kernel: record the shape of every distance block.
    (The fused native kernel holds no block at all: one row tile in registers.)"""
    shapes = []
    original = distances_module.partial_scores

    def spy(xb, centroids, c_sq):
        out = original(xb, centroids, c_sq)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(distances_module, "partial_scores", spy)
    x = torch.randn(20_000, 8)
    budget = 64 * 1024
    nearest_centroids(x, x[:64].clone(), memory_budget=budget)
    assert len(shapes) > 1
    for shape in shapes:
        assert shape[0] * shape[1] * shape[2] * 4 <= budget
        assert shape[0] < 20_000


@pytest.mark.slow
def test_million_points_1024_clusters_rss_stays_far_below_n_by_k():
    # n x k float32 would be 4 GB; the data is 128 MB. Run in a fresh process
    # so that the peak resident set belongs to this fit alone.
    script = textwrap.dedent(
        """
        import resource, torch
        from torchkmeans.functional import lloyd
        torch.manual_seed(0)
        x = torch.randn(1_000_000, 32)
        start = x[:1024].clone()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = lloyd(x, start, max_iter=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert int(result.n_iter) == 1 and result.labels.shape == (1_000_000,)
        print((peak - base) * 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.strip().splitlines()[-1])
    data_bytes = 1_000_000 * 32 * 4
    n_by_k_bytes = 1_000_000 * 1024 * 4
    # centred copy of x + labels/distances/buffers, a small multiple of the data
    assert growth < 3 * data_bytes, growth
    assert growth < n_by_k_bytes / 10, growth


def test_lloyd_one_iteration_runs_with_a_tiny_budget():
    x = torch.randn(5000, 4)
    a = lloyd(x, x[:50].clone(), max_iter=3, memory_budget=1024)
    b = lloyd(x, x[:50].clone(), max_iter=3)
    assert torch.equal(a.labels, b.labels)


@pytest.fixture
def distance_block_widths(monkeypatch):
    """Elements of each block of exact distances (its temporaries' size), as
    the search and Lloyd's passes compute them."""
    widths = []
    original = distances_module.exact_distances

    def spy(xb, centroids, labels, cosine):
        widths.append(labels.numel() * centroids.shape[-1])
        return original(xb, centroids, labels, cosine)

    monkeypatch.setattr(distances_module, "exact_distances", spy)
    monkeypatch.setattr(lloyd_module, "exact_distances", spy)
    return widths


def test_rows_temporaries_share_the_budget_with_the_distances(
    distance_block_widths, accelerator_paths
):
    # Wide rows, few centroids: blocks had been sized from their k distances
    # alone, while each row's difference to its centroid (two temporaries of
    # d elements) is what fills memory: 64 KiB allowed, 4 MiB taken per block
    # (d=256, k=4, 250,000 rows on a GPU: 3x the data beyond its copy).
    x = torch.randn(20_000, 64, generator=torch.Generator().manual_seed(0))
    budget = 64 * 1024
    prep = lloyd_module.prepare(x)
    lloyd_module.run_lloyd(prep, prep.x[:, :2].clone(), max_iter=2, memory_budget=budget)
    nearest_centroids(x, x[:2].clone(), memory_budget=budget)
    assert len(distance_block_widths) > 20
    assert max(distance_block_widths) * 2 * 4 <= budget


def test_final_distances_share_the_budget_too(distance_block_widths, accelerator_paths):
    # The final distances of a fit (each row to its returned centre) ran in
    # 8,192-row blocks off the CPU whatever the budget: three temporaries of
    # restarts x rows x d elements (1 GB for 10 restarts of 1,024 features).
    x = torch.randn(20_000, 64, generator=torch.Generator().manual_seed(0))
    budget = 64 * 1024
    result = lloyd_module.lloyd(x, x[:2].clone(), max_iter=2, memory_budget=budget)
    assert len(distance_block_widths) > 20
    assert max(distance_block_widths) * 2 * 4 <= budget  # as the blocks of the iterations
    expected = torch.cdist(x.double(), result.centroids.double()).square().min(1)
    torch.testing.assert_close(result.labels, expected.indices)
    assert float(result.inertia) == pytest.approx(float(expected.values.sum()), rel=1e-5)


def _growth_in_fresh_process(body: str) -> float:
    """Peak RSS growth of ``body`` (which prints nothing) over the bytes of its
    ``x``, in a fresh process. A fixed mmap threshold keeps glibc from holding
    freed blocks, so the peak is that of the live tensors."""
    script = textwrap.dedent(
        """
        import torch
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        torch.set_num_threads(1)
        x = torch.randn(1_000_000, 2, generator=torch.Generator().manual_seed(0))
        from torchkmeans.functional import kmeans, kmeans_plusplus
        kmeans_plusplus(x[:1000], 8, generator=torch.Generator().manual_seed(0))
        kmeans(x[:2000], 3, init="random", n_init=2, generator=torch.Generator().manual_seed(0))
        open("/proc/self/clear_refs", "w").write("5")
        base = status("VmRSS")
        """
    )
    script += textwrap.dedent(body)
    script += 'print((status("VmHWM") - base) / x.nbytes)\n'
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("init", ["k-means++", "given"])
def test_a_fit_through_the_kernel_holds_no_copy_of_the_data(init):
    # 200,000 x 64 float32 (51 MB), k=8: the kernel centres the rows as it
    # reads them, k-means++ candidates too; a centred copy was 1.02x the data
    # (scikit-learn's fit: 3x).
    script = textwrap.dedent(
        f"""
        import torch
        from torchkmeans.functional import _native, kmeans, lloyd
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        x = torch.randn(200_000, 64, generator=torch.Generator().manual_seed(0))
        if not _native.available():
            print("no kernel")
            raise SystemExit
        kmeans(x[:3000], 8, generator=torch.Generator().manual_seed(0))
        open("/proc/self/clear_refs", "w").write("5")
        base = status("VmRSS")
        if {init!r} == "given":
            result = lloyd(x, x[:8].clone(), max_iter=5)
        else:
            result = kmeans(x, 8, max_iter=5, generator=torch.Generator().manual_seed(0))
        assert result.labels.shape == (200_000,)
        print((status("VmHWM") - base) / x.nbytes)
        """
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no kernel":
        pytest.skip("the native kernel is not built here")
    growth = float(out.stdout.strip().splitlines()[-1])
    # Per row: two label buffers (16 bytes), the squared norms, the distances
    # and the final labels (about 20 more) against 256 bytes of data.
    assert growth < 0.4, growth


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_kmeans_plusplus_on_narrow_rows_holds_the_candidates_block_once():
    # 4,000,000 x 2 float32, k=8: the (4, n) block of the candidates'
    # distances was copied whole to float64 for its sums, and the chosen row
    # (a view) kept the previous round's block alive: 9.5x the data at the
    # peak (13.6x weighted), against 6x for scikit-learn's whole fit.
    growth = _growth_in_fresh_process(
        "kmeans_plusplus(x, 8, generator=torch.Generator().manual_seed(0))\n"
    )
    # The block itself is 2x the data; centred rows, their norms, the
    # distances to the closest centre and their float64 cumulative sum 3x.
    assert growth < 7, growth
    weighted = _growth_in_fresh_process(
        "w = torch.rand(1_000_000)\n"
        "kmeans_plusplus(x, 8, sample_weight=w, generator=torch.Generator().manual_seed(0))\n"
    )
    assert weighted < 8, weighted  # and the weights, and the weighted distances


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_random_restarts_hold_the_labels_of_the_best_one_only():
    # KMeans(init="random") runs 10 restarts: each one's labels were kept
    # until the last, then concatenated (twice 10 x n int64), beside the
    # float64 keys of all 10 seedings at once: 30x the data of 4,000,000 x 2
    # float32 rows, 5.5x for scikit-learn.
    growth = _growth_in_fresh_process(
        """
        result = kmeans(x, 8, init="random", n_init=10, generator=torch.Generator().manual_seed(0))
        assert result.labels.shape == (1_000_000,)
        """
    )
    # centred rows with their norms 2x, the two label buffers of the running
    # restart and the best one's 3x, distances and their sums 1x
    assert growth < 8, growth


def test_random_init_draws_the_same_keys_a_few_problems_at_a_time(monkeypatch):
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
    w = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    init_module = importlib.import_module("torchkmeans.functional.init")
    drawn = {}
    for at_once in (1 << 16, 2000, 1):
        monkeypatch.setattr(init_module, "_KEYS_AT_ONCE", at_once)
        drawn[at_once] = [
            random_init(x, 5, n_problems=5, sample_weight=weights, generator=g)[1]
            for weights in (None, w)
            for g in [torch.Generator().manual_seed(2)]
        ]
    for at_once in (2000, 1):
        for got, expected in zip(drawn[at_once], drawn[1 << 16]):
            assert torch.equal(got, expected)


def test_restarts_through_the_kernel_keep_the_lowest_inertia():
    # Only the best restart is kept as they run: the same result as running
    # each start alone and keeping the lowest inertia (the first of equals).
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
    starts = random_init(x, 6, n_problems=6, generator=torch.Generator().manual_seed(1))[0]
    best = kmeans(x, 6, init=starts)
    alone = [lloyd(x, start) for start in starts]
    expected = min(alone, key=lambda result: float(result.inertia))
    torch.testing.assert_close(best.centroids, expected.centroids, rtol=0, atol=0)
    assert torch.equal(best.labels, expected.labels)
    batch = lloyd(x, starts)
    assert batch.labels.shape == (6, 3000)
    for i, result in enumerate(alone):
        assert torch.equal(batch.labels[i], result.labels)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_kmeans_plusplus_for_several_problems_on_narrow_rows_stays_near_the_data():
    # elbow seeds its 3 restarts at once: the (3, n, 4) candidates' distances
    # (6x the data of 2 float32 features), their minimum with the closest
    # distances (6x) and that copied to float64 (12x) were all held at once,
    # 24x the data; blocked within a budget, the blocks were held twice (a
    # list, then concatenated) and the chosen one's distances kept a round.
    # Then the 3 problems' float64 cumulative sums (3x) were taken at once,
    # and each round's closest distances (1.5x) made beside the last: 9x.
    growth = _growth_in_fresh_process(
        "kmeans_plusplus(x, 9, n_problems=3, generator=torch.Generator().manual_seed(0))\n"
    )
    # centred rows and norms 1.5x, 3 problems' closest distances 1.5x, one
    # problem's float64 cumulative sums 1x, blocks of candidates within the
    # data 1x, the chosen one's distances 1.5x
    assert growth < 7, growth
    blocked = _growth_in_fresh_process(
        "kmeans_plusplus(x, 9, n_problems=3, memory_budget=2**24,"
        " generator=torch.Generator().manual_seed(0))\n"
    )
    assert blocked < 7, blocked


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_predict_holds_one_set_of_labels():
    # predict copied the labels of data in memory into a second n int64
    # array, and summed the distances through a float64 copy: 3.5x the data
    # of 4,000,000 x 2 float32 rows, 1x for scikit-learn.
    growth = _growth_in_fresh_process(
        """
        from torchkmeans import KMeans
        model = KMeans(8, n_init=1, max_iter=2, random_state=0).fit(x[:5000])
        assert model.predict(x).shape == (1_000_000,)
        """
    )
    assert growth < 2.5, growth  # int64 labels 1x, float32 distances 0.5x


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_elbow_on_narrow_rows_holds_its_labels_once():
    # The labels of k = 1..10 (int64) are 10x the data of 2 float32 features:
    # counting each k's distinct clusters shifted all of them into a copy
    # (20x at the peak), and padded batches held every restart's labels and
    # distances (11.4x without labels; scikit-learn's loop: 10.7x per fit).
    growth = _growth_in_fresh_process(
        """
        import warnings
        from torchkmeans import elbow
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = elbow(x, k=range(1, 11), n_init=3, random_state=0)
        assert result.labels.shape == (10, 1_000_000)
        """
    )
    # the labels 10x, one k's nearest centroids (labels, distances) 1.5x
    assert growth < 12.5, growth
    # Without labels the seeding is the peak (see the test above): 11.4x
    # with padded batches and 9x once they were gone.
    quiet = _growth_in_fresh_process(
        """
        import warnings
        from torchkmeans import elbow
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            elbow(x, k=range(1, 11), n_init=3, random_state=0, compute_labels=False)
        """
    )
    assert quiet < 7, quiet


def test_wide_sum_matches_a_float64_sum_in_any_number_of_blocks():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(3, 200_000, generator=g)
    weights = torch.rand(200_000, generator=g, dtype=torch.float64)
    expected = values.sum(-1, dtype=torch.float64)
    torch.testing.assert_close(distances_module.wide_sum(values), expected, rtol=1e-12, atol=0)
    weighted = (values.double() * weights).sum(-1)
    got = distances_module.wide_sum(values, weights)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, weighted, rtol=1e-12, atol=0)
    assert distances_module.wide_sum(values[:, :0]).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_streamed_chunks_are_sized_by_what_a_pass_holds_per_row(tmp_path):
    # A weighted fit of 3 restarts on a 1,000,000 x 2 float32 memmap: chunks
    # of 8 MiB of input rows were the whole data, and a pass held its
    # centred copy, and per restart previous labels, distances and gathered
    # centroids of every row at once: 19x the data at the peak.
    path = tmp_path / "x.f32"
    growth = _growth_in_fresh_process(
        f"""
        import numpy as np
        from torchkmeans import KMeans
        mm = np.memmap({str(path)!r}, dtype=np.float32, mode="w+", shape=tuple(x.shape))
        mm[:] = x.numpy()
        mm.flush()
        del mm
        mm = np.memmap({str(path)!r}, dtype=np.float32, mode="r", shape=tuple(x.shape))
        w = np.random.default_rng(0).uniform(0.5, 2.0, len(x)).astype(np.float32)
        np.asarray(mm).sum()  # the file's pages, read in before the measure
        # what a first streamed fit loads once (the kernel, the reader thread)
        KMeans(8, n_init=3, random_state=0, max_iter=5).fit(mm[:5000], sample_weight=w[:5000])
        open("/proc/self/clear_refs", "w").write("5")
        base = status("VmRSS")
        km = KMeans(8, n_init=3, random_state=0, max_iter=5).fit(mm, sample_weight=w)
        """
    )
    # labels of the 3 restarts 3x, their final distances and the rows'
    # norms 2x, chunks' temporaries about 2x (7x measured)
    assert growth < 10, growth
