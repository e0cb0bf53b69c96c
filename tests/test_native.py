"""The fused native assignment kernel (torchkmeans/functional/_native.py).

Checked against PyTorch ops and scikit-learn: labels, lowest scores, cluster
sums, changed-label counts, both layouts and dtypes, one and two threads, and
whole fits. Skipped where no C++ compiler can build it, unless
TORCHKMEANS_REQUIRE_NATIVE is set (CI sets it, so a broken build fails there).
"""

from __future__ import annotations

import importlib
import math
import os
import platform
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from conftest import on_the_cpu_paths_only
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs

from torchkmeans import KMeans
from torchkmeans.functional import _native, nearest_centroids
from torchkmeans.functional.distances import scored_by_differences
from torchkmeans.functional.lloyd import kmeans, prepare, run_lloyd

distances = importlib.import_module("torchkmeans.functional.distances")
lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")

if os.environ.get("TORCHKMEANS_REQUIRE_NATIVE"):
    assert _native.available(), "TORCHKMEANS_REQUIRE_NATIVE is set but the kernel did not build"
pytestmark = pytest.mark.skipif(not _native.available(), reason="no C++ compiler for the kernel")

LAYOUTS = {
    "columns": {"columns": True},
    "rows": {"columns": False, "dots": False, "blocks": False},
    "dots": {"columns": False, "dots": True},  # at most DOTS_MAX_K centroids
    "blocks": {"columns": False, "dots": False, "blocks": True},  # at most BLOCKS_MAX_K
}
MOST_CENTROIDS = {"dots": _native.DOTS_MAX_K, "blocks": _native.BLOCKS_MAX_K}


def reference_scores(x, centroids, offset, cosine):
    """Scores |c|^2 - 2 x.c (cosine: -x.c) of the rows less the offset, in float64."""
    rows = (x if offset is None else x - offset).double()  # centred in the data's dtype
    c64 = centroids.double()
    if cosine:
        return -rows @ c64.T
    return c64.square().sum(1) - 2.0 * rows @ c64.T


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.sampled_from([1, 2, 3, 12, 13, 16, 17, 40, 70, 129, 300]),
    k=st.sampled_from([1, 2, 3, 4, 15, 16, 17, 33, 64, 65, 100, 130, 250]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    layout=st.sampled_from([*LAYOUTS, "certain"]),
    threads=st.sampled_from([1, 2, 3]),
    weighted=st.booleans(),
    centred=st.booleans(),
    strided=st.booleans(),
    cosine=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_kernel_matches_pytorch(
    n, d, k, dtype, layout, threads, weighted, centred, strided, cosine, seed
):
    """Labels are a lowest score's index (ties within rounding), and the lowest
    scores, their weighted sum, the distances from differences, the cluster
    totals and the changed count agree with float64 PyTorch, for any layout,
    thread count, row stride, offset and metric (the row layout with certain
    labels: euclidean)."""
    k = min(k, MOST_CENTROIDS.get(layout, k))
    options = {"certain": True} if layout == "certain" else LAYOUTS[layout]
    cosine = cosine and layout != "certain"
    generator = torch.Generator().manual_seed(seed)
    wide = torch.randn(n, d + 3, generator=generator, dtype=dtype)
    x = wide[:, :d] if strided else wide[:, :d].contiguous()
    centroids = torch.randn(k, d, generator=generator, dtype=dtype)
    weights = torch.rand(n, generator=generator, dtype=dtype) + 0.5 if weighted else None
    offset = torch.randn(d, generator=generator, dtype=dtype) if centred else None
    previous = torch.randint(0, k, (n,), generator=generator)
    labels = torch.full((n,), -1, dtype=torch.int64)
    minima = torch.empty(n, dtype=dtype)
    distances = torch.empty(n, dtype=dtype)
    totals = torch.full((k, d + 1), float("nan"), dtype=torch.float64)  # overwritten
    total, changed = _native.nearest(
        x,
        centroids,
        labels,
        **options,
        cosine=cosine,
        offset=offset,
        weights=weights,
        previous=previous,
        minima=minima,
        distances=distances,
        totals=totals,
        threads=threads,
    )
    scores = reference_scores(x, centroids, offset, cosine)
    values = scores.min(1).values if n else torch.zeros(0, dtype=torch.float64)
    scale = 1e-4 if dtype == torch.float32 else 1e-10
    slack = scale * (1 + scores.abs().amax(1) if n else 0)
    assert ((labels >= 0) & (labels < k)).all()
    chosen = scores.gather(1, labels[:, None]).squeeze(1) if n else values
    assert (chosen <= values + slack).all()
    torch.testing.assert_close(
        minima.double(), values, rtol=scale, atol=float(slack.max()) if n else 0
    )
    # Distances, totals and counts of the labels the kernel chose (ties may
    # go either way).
    rows = (x if offset is None else x - offset).double()  # centred in the data's dtype
    chosen_centroids = centroids.double()[labels]
    if cosine:
        exact = 1.0 - torch.nn.functional.cosine_similarity(rows, chosen_centroids, eps=1e-300)
    else:
        exact = (rows - chosen_centroids).square().sum(1)
    torch.testing.assert_close(distances.double(), exact, rtol=scale, atol=scale)
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    expected = torch.zeros(k, d + 1, dtype=torch.float64)
    expected.index_add_(0, labels, torch.cat([rows * w[:, None], w[:, None]], 1))
    torch.testing.assert_close(totals, expected, rtol=1e-12, atol=1e-9)
    assert total == pytest.approx(float((minima.double() * w).sum()), rel=1e-9, abs=1e-6)
    assert changed == int((labels != previous).sum())


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 200),
    d=st.integers(1, 16),
    k=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 3]),
    shift=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**31),
)
def test_differences_score_exact_distances_wherever_the_rows_lie(
    n, d, k, dtype, threads, shift, seed
):
    """The column layout scoring from differences: the lowest scores are the
    distances (to their rounding), their sum is returned, and labels are a
    nearest centroid also 1e4 from the origin, where the expansion is not."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=generator, dtype=torch.float64) + shift).to(dtype)
    centroids = (torch.randn(k, d, generator=generator, dtype=torch.float64) + shift).to(dtype)
    labels = torch.full((n,), -1, dtype=torch.int64)
    minima = torch.empty(n, dtype=dtype)
    distances = torch.empty(n, dtype=dtype)
    total, _ = _native.nearest(
        x,
        centroids,
        labels,
        minima=minima,
        distances=distances,
        columns=True,
        differences=True,
        threads=threads,
    )
    table = (x.double()[:, None] - centroids.double()[None]).square().sum(-1)
    best = table.min(1).values if n else torch.zeros(0, dtype=torch.float64)
    rtol = 4 * (d + 2) * torch.finfo(dtype).eps
    chosen = table.gather(1, labels[:, None]).squeeze(1) if n else best
    assert (chosen <= best * (1 + rtol)).all()
    torch.testing.assert_close(distances.double(), chosen, rtol=rtol, atol=0)
    assert torch.equal(minima, distances)
    assert total == pytest.approx(float(minima.double().sum()), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="differences only"):
        _native.nearest(x, centroids, labels, columns=False, differences=True)


@pytest.mark.parametrize(
    "layout,d,k",
    [
        (layout, d, k)
        for layout in [*LAYOUTS, "certain"]
        for d, k in [(3, 40), (300, 200), (40, 3), (300, 4)]
        if k <= MOST_CENTROIDS.get(layout, k)  # the dots and blocks layouts take few centroids
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties_go_to_the_lowest_index(layout, dtype, d, k):
    """Duplicate centroids and points halfway between two: the first index wins,
    as torch.argmin and scikit-learn choose, in every lane position (and, with
    200 centroids of 300 features, across panels and blocks of features)."""
    centroids = torch.zeros(k, d, dtype=dtype)
    centroids[:, 0] = torch.arange(k, dtype=dtype) // 2 * 2  # pairs of duplicates
    x = torch.zeros(200, d, dtype=dtype)
    x[:, 0] = torch.arange(200, dtype=dtype) % k  # on a centroid, or halfway between
    labels = torch.empty(200, dtype=torch.int64)
    options = {"certain": True} if layout == "certain" else LAYOUTS[layout]
    _native.nearest(x, centroids, labels, **options, threads=2)
    expected = torch.cdist(x.double(), centroids.double()).argmin(1)
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_panel_and_block_of_features_is_scored(dtype):
    """The row layout scores centroids in panels of 64 floats (32 doubles), the
    last one 16-48 floats wide, and long rows in blocks of features whose
    partial scores are carried between blocks: each row near one centroid gets
    that centroid, whichever panel, lane and block decide it."""
    generator = torch.Generator().manual_seed(2)
    for d in (129, 257, 700):
        for k in (63, 64, 65, 80, 96, 112, 129, 300):
            centroids = torch.randn(k, d, generator=generator, dtype=dtype)
            picks = torch.cat([torch.arange(k), torch.randint(0, k, (77,), generator=generator)])
            x = centroids[picks] + 0.05 * torch.randn(
                len(picks), d, generator=generator, dtype=dtype
            )
            for threads in (1, 2):
                labels = torch.full((len(picks),), -1, dtype=torch.int64)
                minima = torch.empty(len(picks), dtype=dtype)
                _native.nearest(x, centroids, labels, minima=minima, columns=False, threads=threads)
                assert torch.equal(labels, picks), (d, k, threads)
                expected = reference_scores(x, centroids, None, False).min(1).values
                torch.testing.assert_close(minima.double(), expected, rtol=1e-5, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    n=st.sampled_from([1, 5, 15, 16, 17, 63, 64, 65, 130]),
    d=st.sampled_from([1, 5, 15, 16, 17, 24, 31, 32, 33, 64, 65, 129, 300]),
    k=st.integers(1, 8),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
    pad=st.sampled_from([0, 1, 16]),
    centred=st.booleans(),
    cosine=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_blocks_layout_scores_as_the_row_layout_bit_for_bit(
    n, d, k, dtype, threads, pad, centred, cosine, seed
):
    """The blocks layout sums each score in the row layout's order: the same
    lowest scores, labels, distances and totals, bit for bit, whatever the
    row stride (rows that do not start on a vector are copied to rows that
    do), the offset, the feature tail past whole blocks and the rows past
    whole groups of 16."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d + pad, generator=generator, dtype=dtype)[:, :d]
    centroids = torch.randn(k, d, generator=generator, dtype=dtype)
    offset = torch.randn(d, generator=generator, dtype=dtype) if centred else None
    results = []
    for blocks in (False, True):
        labels = torch.full((n,), -1, dtype=torch.int64)
        minima = torch.empty(n, dtype=dtype)
        distances = torch.empty(n, dtype=dtype)
        totals = torch.empty((k, d + 1), dtype=torch.float64)
        total, changed = _native.nearest(
            x,
            centroids,
            labels,
            cosine=cosine,
            offset=offset,
            minima=minima,
            distances=distances,
            totals=totals,
            previous=torch.zeros(n, dtype=torch.int64),
            columns=False,
            dots=False,
            blocks=blocks,
            threads=threads,
        )
        results.append((labels, minima, distances, totals, total, changed))
    for rows, blocks in zip(*results):
        assert torch.equal(torch.as_tensor(rows), torch.as_tensor(blocks))


def test_few_centroids_of_wide_rows_take_the_blocks_layout(monkeypatch):
    """With 64-byte vectors, float32 rows of 24 features or more against 3-8
    centroids and float64 rows of 32-128 features against 5-8 take the
    blocks layout; with 32-byte vectors any rows against 3-8 centroids; not
    with 16-byte vectors, nor 1-2 centroids (the dots layout's) or 9."""
    f32, f64 = torch.float32, torch.float64
    monkeypatch.setattr(_native, "_vector_bytes", 64)
    for d, k, dtype in [(24, 3, f32), (64, 8, f32), (1024, 5, f32), (32, 5, f64), (128, 8, f64)]:
        assert _native._blocks(d, k, dtype), (d, k, dtype)
    for d, k, dtype in [(20, 8, f32), (64, 2, f32), (64, 9, f32), (24, 8, f64), (256, 8, f64)]:
        assert not _native._blocks(d, k, dtype), (d, k, dtype)
    assert not _native._blocks(64, 4, f64)
    monkeypatch.setattr(_native, "_vector_bytes", 32)
    for d, k, dtype in [(17, 3, f32), (1024, 8, f32), (17, 3, f64), (1024, 8, f64)]:
        assert _native._blocks(d, k, dtype), (d, k, dtype)
    assert not _native._blocks(64, 2, f32) and not _native._blocks(64, 9, f64)
    monkeypatch.setattr(_native, "_vector_bytes", 16)
    assert not _native._blocks(64, 8, f32)


def test_no_row_is_dropped_at_group_and_tile_edges():
    """Every n around the kernels' steps of rows (tiles, 16 or 32-row groups,
    thread splits): each row gets the label of its own nearest centroid."""
    generator = torch.Generator().manual_seed(1)
    for n in [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97]:
        for d, k in [(2, 5), (40, 20), (40, 3)]:
            centroids = torch.randn(k, d, generator=generator) * 10
            picks = torch.randint(0, k, (n,), generator=generator)
            x = centroids[picks] + 0.01 * torch.randn(n, d, generator=generator)
            for threads in (1, 2):
                labels = torch.full((n,), -1, dtype=torch.int64)
                _native.nearest(x, centroids, labels, columns=d <= 12, threads=threads)
                assert torch.equal(labels, picks), (n, d, k, threads)


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [(3000, 2, 16), (2000, 10, 7), (1500, 40, 30), (800, 130, 9), (1200, 300, 70)]
)
def test_fit_through_the_kernel_equals_the_pytorch_loop(shape, dtype):
    """On data without near-ties the fused Lloyd loop takes the PyTorch loop's
    iterations: the same labels and n_iter, centroids and inertia within rounding
    (the kernel sums clusters in float64, the PyTorch loop in the data's dtype)."""
    n, d, k = shape
    X, _ = make_blobs(n_samples=n, n_features=d, centers=k, random_state=d)
    x = torch.tensor(X, dtype=dtype)
    prep = prepare(x)
    start = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]][None]
    start = start - prep.offset
    assert _native.prefers_native(prep.x[0], k)
    fused = run_lloyd(prep, start.clone(), max_iter=100)
    with mock.patch.object(_native, "prefers_native", lambda *args, **kwargs: False):
        plain = run_lloyd(prep, start.clone(), max_iter=100)
    assert torch.equal(fused.labels, plain.labels)
    assert torch.equal(fused.n_iter, plain.n_iter)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fused.centroids, plain.centroids, rtol=rtol, atol=rtol)
    torch.testing.assert_close(fused.inertia, plain.inertia, rtol=rtol, atol=0)
    iters = int(fused.n_iter)
    torch.testing.assert_close(
        fused.inertia_history[:, :iters], plain.inertia_history[:, :iters], rtol=rtol, atol=0
    )


def test_empty_clusters_are_reseeded_and_restarts_run_one_by_one():
    """Far-away initial centroids leave clusters empty: they are reseeded (no
    NaN, every cluster used), and restarts sharing the data each get the result
    they get alone."""
    X, _ = make_blobs(n_samples=500, n_features=4, centers=5, random_state=3)
    x = torch.tensor(X)
    prep = prepare(x)
    starts = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    starts[:, 1:] += 1e3  # four of five clusters start empty
    together = run_lloyd(prep, starts.clone(), max_iter=50)
    assert not together.centroids.isnan().any()
    for i in range(3):
        alone = run_lloyd(prep, starts[i : i + 1].clone(), max_iter=50)
        assert len(alone.labels[0].unique()) == 5
        assert torch.equal(alone.labels, together.labels[i : i + 1])
        torch.testing.assert_close(alone.centroids, together.centroids[i : i + 1])


def test_clusters_of_zero_weight_are_reseeded_as_by_torch_ops():
    """A cluster whose rows all weigh 0 has a count of 0, as an empty one: the
    kernel's loop reseeds it (no NaN centroid) as the loop of PyTorch ops does,
    with the same labels, centroids and iterations."""
    X, _ = make_blobs(n_samples=300, n_features=3, centers=4, random_state=1)
    x = torch.tensor(X)
    x[:20] = x[:20] * 0.01 - 100.0  # a group of their own, weighing 0
    weights = torch.ones(300, dtype=x.dtype)
    weights[:20] = 0.0
    prep = prepare(x, sample_weight=weights)
    starts = prep.x[:, [0, 100, 200, 250]].clone()  # the first start's cluster weighs 0
    fused = run_lloyd(prep, starts.clone(), max_iter=50)
    with mock.patch.object(_native, "prefers_native", lambda *args, **kwargs: False):
        plain = run_lloyd(prep, starts.clone(), max_iter=50)
    assert not fused.centroids.isnan().any()
    assert torch.equal(fused.labels, plain.labels)
    assert torch.equal(fused.n_iter, plain.n_iter)
    torch.testing.assert_close(fused.centroids, plain.centroids, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_run_relabelled_from_differences_makes_no_pass_of_its_own_after_the_loop(dtype):
    """Narrow rows of one run are labelled against the final centroids from
    differences after the loop: the loop's own final pass (labels and
    distances from the expansion) would be thrown away, so it is not made,
    and the result is the one it gives when made, bit for bit."""
    X, _ = make_blobs(n_samples=300, centers=4, cluster_std=0.6, random_state=0)
    x = torch.tensor(X, dtype=dtype)
    real_nearest, real_run_lloyd = _native.nearest, lloyd_module.run_lloyd
    passes = []

    def counted(*args, **kwargs):
        if kwargs.get("distances") is not None and not kwargs.get("differences"):
            passes.append(1)
        return real_nearest(*args, **kwargs)

    with mock.patch.object(_native, "nearest", counted):
        result = kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    assert not passes
    with mock.patch.object(
        lloyd_module, "run_lloyd", lambda *a, **kw: real_run_lloyd(*a, **{**kw, "final_pass": True})
    ):
        with_pass = kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    for field, made in zip(result, with_pass):
        assert torch.equal(field.nan_to_num(), made.nan_to_num())


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("far", [0.0, 1e4])
@pytest.mark.parametrize("given_init", [False, True])
def test_one_run_finished_by_the_kernel_makes_one_pass_after_the_loop(dtype, far, given_init):
    """Wide rows of one run: one kernel call on the rows as given (centred as
    they are read, distances measured from them) labels the rows against the
    final centroids after the loop. The loop's own final pass and a pass of
    exact distances from PyTorch ops are not made; the labels, centroids and
    iterations are those of both passes, the inertia the float64 sum of the
    distances to the returned centroids, and the labels their nearest."""
    X, _ = make_blobs(n_samples=3000, n_features=64, centers=20, random_state=0)
    x = torch.tensor(X, dtype=dtype) + far
    k = 8
    real_nearest = _native.nearest
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real_nearest(*args, **kwargs)

    def fit():
        if given_init:
            return lloyd_module.lloyd(x, x[:k].clone(), max_iter=50)
        return kmeans(x, k, generator=torch.Generator().manual_seed(0))

    def refused(*args, **kwargs):
        raise AssertionError("a pass of exact distances from PyTorch ops")

    with mock.patch.object(_native, "nearest", counted):
        with mock.patch.object(lloyd_module, "_labelled_distances", refused):
            result = fit()
    # (Suspects that the centring's rounding leaves are measured again from
    # differences, as before: not a pass over the rows.)
    after_loop = [c for c in calls if c.get("distances") is not None and not c.get("differences")]
    assert len(after_loop) == 1 and after_loop[0].get("given") is not None
    with mock.patch.object(lloyd_module, "_finished_by_kernel", lambda *args: False):
        both = fit()
    assert torch.equal(result.labels, both.labels)
    assert torch.equal(result.centroids, both.centroids)
    assert int(result.n_iter) == int(both.n_iter)
    exact = torch.cdist(x.double(), result.centroids.double()).square()
    chosen = exact.gather(1, result.labels[:, None]).squeeze(1)
    assert (chosen <= exact.min(1).values * (1 + 1e-6) + 1e-6).all()
    expected = ((x.double() - result.centroids.double()[result.labels]) ** 2).sum()
    rtol = 1e-6 if dtype == torch.float32 else 1e-12  # float32 distances, summed in float64
    torch.testing.assert_close(result.inertia.double(), expected, rtol=rtol, atol=0.0)
    torch.testing.assert_close(both.inertia.double(), expected, rtol=rtol, atol=0.0)


def test_predict_through_the_kernel_is_exact_far_from_the_origin():
    """predict on float32 data far from the origin: the kernel scores rows less
    the training mean (removed in the kernel, step by step), so the labels are
    nearest centres by exact float64 distances, as the PyTorch ops' labels."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 20, generator=generator) + 1e4
    model = KMeans(n_clusters=50, random_state=0, max_iter=5).fit(x)
    centroids = model.cluster_centers_.double()
    fused = model.predict(x)
    with mock.patch.object(_native, "prefers_native", lambda *args, **kwargs: False):
        plain = model.predict(x)
    exact = torch.cdist(x.double(), centroids).square()
    chosen = exact.gather(1, fused[:, None]).squeeze(1)
    assert (chosen <= exact.min(1).values + 1e-2).all()
    assert (fused == plain).float().mean() > 0.999


def test_without_a_compiler_fits_fall_back_to_pytorch(tmp_path):
    """No compiler (and an empty cache): the kernel is unavailable and a fit
    still runs, with the same result on well-separated data."""
    script = textwrap.dedent(
        """
        import numpy as np
        from sklearn.datasets import make_blobs
        from torchkmeans import KMeans
        from torchkmeans.functional import _native
        X, _ = make_blobs(n_samples=2000, n_features=3, centers=4, random_state=0)
        model = KMeans(n_clusters=4, random_state=0).fit(X)
        print(_native.available(), model.n_iter_, repr(model.inertia_))
        """
    )
    results = []
    for compiler in ("/nonexistent/c++", None):
        # With a compiler, the kernel this process uses, from its cache (a
        # fresh cache compiled it again: 35-40 s of a 2-core machine).
        env = dict(os.environ)
        env.pop("TORCHKMEANS_NATIVE", None)
        if compiler is not None:
            env["CXX"] = compiler
            env["TORCHKMEANS_CACHE_DIR"] = str(tmp_path / "empty")
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        results.append(done.stdout.split())
    (missing, n_iter_a, inertia_a), (built, n_iter_b, inertia_b) = results
    assert missing == "False" and built == "True"
    assert n_iter_a == n_iter_b
    assert float(inertia_a) == pytest.approx(float(inertia_b), rel=1e-6)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 targets")
@pytest.mark.parametrize("arch", ["x86-64-v2", "x86-64-v3"])
def test_kernel_built_for_older_instruction_sets(tmp_path, arch):
    """The SSE and AVX2 builds (16 and 32-byte vectors, no gather, the generic
    reduction across lanes): the same labels as torch, ties to the lowest index,
    totals and distances, in both layouts and dtypes, on one and two threads."""
    script = textwrap.dedent(
        """
        import torch
        from torchkmeans.functional import _native
        assert _native.available() and _native._library.tk_vector_bytes() < 64
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.float64):
            for n, d, k in ((301, 3, 7), (301, 5, 40), (97, 30, 70), (200, 20, 16), (150, 37, 3)):
                x = torch.randn(n, d, generator=g, dtype=dtype)
                c = torch.randn(k, d, generator=g, dtype=dtype)
                c[1] = c[0]  # an exact tie in every row that picks either
                scores = c.double().square().sum(1) - 2 * x.double() @ c.double().T
                layouts = ((True, False, False), (False, False, False), (False, k <= 4, False),
                           (False, False, k <= 8))
                for columns, dots, blocks in layouts:
                    for threads in (1, 2):
                        labels = torch.empty(n, dtype=torch.int64)
                        distances = torch.empty(n, dtype=dtype)
                        totals = torch.empty(k, d + 1, dtype=torch.float64)
                        _native.nearest(x, c, labels, columns=columns, dots=dots, blocks=blocks,
                                      threads=threads, distances=distances, totals=totals)
                        chosen = scores.gather(1, labels[:, None]).squeeze(1)
                        assert (chosen <= scores.min(1).values + 1e-4).all()
                        assert not (labels == 1).any()  # the tie goes to 0
                        exact = (x.double() - c.double()[labels]).square().sum(1)
                        torch.testing.assert_close(distances.double(), exact, rtol=1e-4, atol=1e-4)
                        ones = torch.ones(n, 1, dtype=torch.float64)
                        expected = torch.zeros(k, d + 1, dtype=torch.float64).index_add_(
                            0, labels, torch.cat([x.double(), ones], 1))
                        torch.testing.assert_close(totals, expected)
                    # The CSR step (every value stored) at each vector width.
                    crow, col = torch.arange(0, n * d + 1, d), torch.arange(d).repeat(n)
                    norms = x.square().sum(1)
                    _native.sparse_lloyd(crow, col, x.reshape(-1), d, c, norms, labels,
                                         distances, totals=totals, threads=threads)
                    chosen = scores.gather(1, labels[:, None]).squeeze(1)
                    assert (chosen <= scores.min(1).values + 1e-4).all()
                    assert not (labels == 1).any()
                    torch.testing.assert_close(totals, torch.zeros(k, d + 1, dtype=torch.float64)
                        .index_add_(0, labels, torch.cat([x.double(), ones], 1)))
        print("ok", _native._library.tk_vector_bytes())
        """
    )
    env = dict(
        os.environ, TORCHKMEANS_NATIVE_ARCH=arch, TORCHKMEANS_CACHE_DIR=str(tmp_path / "cache")
    )
    env.pop("TORCHKMEANS_NATIVE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "16" if arch == "x86-64-v2" else "32"]


def test_disabled_by_environment(tmp_path):
    env = dict(os.environ, TORCHKMEANS_NATIVE="0")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from torchkmeans.functional import _native; print(_native.available())",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_self_test_under_a_default_device():
    """The kernel is loaded and checked on first use, which may come under
    torch.set_default_device (CUDA in a training script, meta here): the
    self-test made its tensors there and the kernel wrote through their
    pointers (a segfault)."""
    script = textwrap.dedent(
        """
        import numpy as np
        import torch
        from torchkmeans import KMeans
        from torchkmeans.functional import _native
        X = np.random.default_rng(0).normal(size=(2000, 3))
        torch.set_default_device("meta")
        model = KMeans(n_clusters=4, random_state=0).fit(X)
        print(_native.available(), model.cluster_centers_.dtype, np.isfinite(model.inertia_))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "float64", "True"]


def test_problems_with_padding_centroids_run_with_their_active_ones():
    """A sweep over k as one padded batch (cluster masks): each problem runs
    through the kernel with its active centroids only and gets the PyTorch
    loop's result; the padding centroids stay as they were, unused."""
    X, _ = make_blobs(n_samples=3000, n_features=6, centers=6, random_state=5)
    x = torch.tensor(X)
    prep = prepare(x)
    start = prep.x[0][:6].clone().expand(3, 6, 6).clone()
    # Prefixes as the elbow sweep makes them, and any other pattern.
    active = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]]).bool()
    fused = run_lloyd(prep, start.clone(), max_iter=100, active=active)
    with mock.patch.object(_native, "prefers_native", lambda *args, **kwargs: False):
        plain = run_lloyd(prep, start.clone(), max_iter=100, active=active)
    assert torch.equal(fused.labels, plain.labels)
    assert torch.equal(fused.n_iter, plain.n_iter)
    assert active.gather(1, fused.labels).all()
    torch.testing.assert_close(fused.centroids, plain.centroids, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.inertia, plain.inertia, rtol=1e-10, atol=0)
    assert torch.equal(fused.centroids[~active], start[~active])


@on_the_cpu_paths_only
def test_which_problems_take_the_kernel():
    """Narrow rows always; up to 256 features with any number of centroids;
    wider rows while the transposed centroids stay within 32 MB, in Lloyd's
    iterations as labelling from scratch (the kernel measured faster than
    the PyTorch path up to there: 1 MB and 4 MB before); never on other
    devices or dtypes."""
    narrow, wide, wider = torch.empty(10, 8), torch.empty(10, 256), torch.empty(10, 1024)
    assert _native.prefers_native(narrow, 5000)
    assert _native.prefers_native(wide, 4096)
    assert _native.prefers_native(wider, 257)
    assert _native.prefers_native(wider, 4096)
    assert _native.prefers_native(wider, 8192)
    assert not _native.prefers_native(wider, 8193)  # 8208 padded centroids: 32.06 MB
    assert _native.prefers_native(wider, 8192, within_lloyd=False)
    assert not _native.prefers_native(wider, 8193, within_lloyd=False)
    assert not _native.prefers_native(wider.double(), 4096 + 1)
    assert _native.prefers_native(wider.double(), 4096)
    assert not _native.prefers_native(narrow.half(), 5)
    assert not _native.prefers_native(torch.empty(10, 0), 5)
    assert not _native.prefers_native(torch.empty(8, 10).T, 5)  # rows not contiguous


@on_the_cpu_paths_only
def test_which_searches_are_scored_from_differences():
    """Narrow rows at any size; wider ones while the search is small (up to
    2^20 multiply-adds), where the expansion's extra ops cost more than it."""
    assert scored_by_differences(torch.empty(1_000_000, 8), 3)
    assert scored_by_differences(torch.empty(569, 30), 2)
    assert scored_by_differences(torch.empty(1024, 64, dtype=torch.float64), 16)
    assert not scored_by_differences(torch.empty(1024, 64), 17)
    assert not scored_by_differences(torch.empty(100_000, 30), 2)
    assert not scored_by_differences(torch.empty(569, 30).half(), 2)
    # A column group scores 32 rows at once, fewer cost as much; and wide rows
    # would sum too many squared differences in float32.
    assert not scored_by_differences(torch.empty(1, 32), 2048)
    assert not scored_by_differences(torch.empty(8, 128), 512)
    assert not scored_by_differences(torch.empty(64, 1024), 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "d", "k"), [(569, 30, 2), (300, 128, 6), (100, 20, 128)])
def test_small_wide_searches_match_the_expansion_and_the_naive_loop(n, d, k, dtype):
    generator = torch.Generator().manual_seed(n + d + k)
    x = torch.randn(n, d, generator=generator, dtype=dtype) * 3 + 100
    centroids = x[torch.randperm(n, generator=generator)[:k]] + 0.1
    small = nearest_centroids(x, centroids)
    with mock.patch.object(distances, "_DIFFERENCES_MAX_WORK", 0):
        expanded = nearest_centroids(x, centroids)
    table = ((x.double()[:, None] - centroids.double()[None]) ** 2).sum(-1)
    assert torch.equal(small.labels, table.argmin(1))
    assert torch.equal(small.labels, expanded.labels)
    torch.testing.assert_close(small.distances, table.min(1).values.to(dtype))
    torch.testing.assert_close(small.distances, expanded.distances)


def test_inputs_in_another_dtype_are_converted_and_bad_outputs_refused():
    """Centroids, offset and weights in another dtype than x are converted (the
    kernel reads raw pointers); an output of the wrong dtype or layout raises."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 20, generator=generator)
    centroids = torch.randn(7, 20, generator=generator, dtype=torch.float64)
    labels = torch.empty(50, dtype=torch.int64)
    _native.nearest(x, centroids, labels, offset=torch.zeros(20, dtype=torch.float64))
    assert torch.equal(labels, torch.cdist(x.double(), centroids).argmin(1))
    with pytest.raises(ValueError, match=r"labels to be a contiguous torch\.int64"):
        _native.nearest(x, centroids, torch.empty(50, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"distances to be a contiguous torch\.float32"):
        _native.nearest(x, centroids, labels, distances=torch.empty(100)[::2])


def test_tensors_off_the_cpu_are_refused_not_written_through():
    """The kernel reads and writes raw pointers: a tensor elsewhere (made on
    torch's default device by mistake; meta here, CUDA in a training script)
    crashed the process."""
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.empty(50, dtype=torch.int64)
    meta = {"device": "meta"}
    with pytest.raises(
        ValueError, match=r"Expected labels to be a contiguous torch\.int64 tensor on the CPU\."
    ):
        _native.nearest(x, x[:4], torch.empty(50, dtype=torch.int64, **meta))
    with pytest.raises(
        ValueError, match=r"Expected totals to be a contiguous torch\.float64 tensor on the CPU\."
    ):
        _native.nearest(x, x[:4], labels, totals=torch.empty(4, 4, dtype=torch.float64, **meta))
    with pytest.raises(ValueError, match=r"Expected centroids on the CPU, got a tensor on meta\."):
        _native.nearest(x, x[:4].to("meta"), labels)
    with pytest.raises(ValueError, match=r"Expected x on the CPU, got a tensor on meta\."):
        _native.nearest(x.to("meta"), x[:4], labels)
    with pytest.raises(ValueError, match=r"Expected previous on the CPU, got a tensor on meta\."):
        _native.nearest(x, x[:4], labels, previous=labels.to("meta"))


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads /proc/cpuinfo")
def test_column_groups_are_gathered_only_where_gathers_are_fast():
    """AVX-512 gathers are microcoded on AMD's CPUs, slower there than copying
    the rows (the column layout took 1.4-3.5x as long): only Intel's use them.
    AMD's load rows that fill most of a vector whole and transpose them in
    registers instead (float32 d=9-16, float64 d=8: 0.45-0.75x the copy's time)."""
    with open("/proc/cpuinfo") as info:
        lines = info.read().splitlines()
    flags = next((line.split() for line in lines if line.startswith("flags")), [])
    amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in lines)
    avx512 = "avx512f" in flags and _native._library.tk_vector_bytes() == 64
    rows = _native._library.tk_column_rows
    for d in range(1, 17):
        if avx512 and not amd:
            expected = (1, 1)
        elif avx512:
            expected = (2 if d > 8 else 0, 2 if 4 < d <= 8 else 0)
        else:
            expected = (0, 0)
        assert (rows(d, 0), rows(d, 1)) == expected, d


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through libc")
def test_column_groups_read_nothing_past_the_last_row():
    """Rows of every width the column layout takes, the last one ending where
    readable memory does (an unreadable page follows): whole groups of rows
    are loaded a vector per row or gathered, never past the data; the labels
    and distances are torch's."""
    script = textwrap.dedent(
        """
        import ctypes, mmap
        import torch
        from torchkmeans.functional import _native
        assert _native.available()
        page = mmap.PAGESIZE
        memory = mmap.mmap(-1, 2 * page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.mprotect(ctypes.c_void_p(address + page), ctypes.c_size_t(page), 0) == 0
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.float64):
            size = torch.finfo(dtype).bits // 8
            for d in range(1, 17):
                n = min(64, page // (d * size))
                x = torch.frombuffer(memory, dtype=dtype, count=n * d, offset=page - n * d * size)
                x = x.view(n, d)
                x.copy_(torch.randn(n, d, generator=g, dtype=dtype))
                c = torch.randn(5, d, generator=g, dtype=dtype)
                expected = torch.cdist(x.double(), c.double()).square()
                for differences in (False, True):
                    labels = torch.empty(n, dtype=torch.int64)
                    distances = torch.empty(n, dtype=dtype)
                    _native.nearest(x, c, labels, distances=distances, columns=True,
                                    differences=differences, threads=1)
                    assert torch.equal(labels, expected.argmin(1)), (dtype, d)
                    torch.testing.assert_close(
                        distances.double(), expected.min(1).values, rtol=1e-5, atol=1e-6
                    )
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("d", "k"), [(5, 3), (12, 40), (64, 3), (64, 40)])
def test_distances_of_centred_rows_are_measured_from_the_centroids_as_given(dtype, d, k):
    # Rows near centres far from the offset the search centres them on:
    # centring rounds rows and centroids by u |x'|, more than such a
    # distance. With the centroids as given, the distances are those of the
    # rows themselves, in every layout.
    generator = torch.Generator().manual_seed(0)
    centres = 1e3 * torch.randn(k, d, generator=generator, dtype=dtype)
    spread = 1e-3 if dtype == torch.float32 else 1e-12
    x = centres.repeat(50, 1) + spread * torch.randn(50 * k, d, generator=generator, dtype=dtype)
    offset = centres.mean(0)
    labels = torch.empty(50 * k, dtype=torch.int64)
    measured = torch.empty(50 * k, dtype=dtype)
    _native.nearest(x, centres - offset, labels, offset=offset, distances=measured, given=centres)
    assert torch.equal(labels, torch.arange(k).repeat(50))
    exact = (x.double() - centres[labels].double()).square().sum(1)
    torch.testing.assert_close(measured.double(), exact, rtol=1e-5, atol=0.0)
    centred = torch.empty_like(measured)
    _native.nearest(x, centres - offset, labels, offset=offset, distances=centred)
    assert ((centred.double() - exact).abs() / exact).max() > 1e-3


def _tight_blobs_far_from_the_mean(dtype, d, k, seed=0):
    """600 rows of 4 tight blobs far from the centroids' mean, each blob shared
    by near-copies of its centre (k of them in all): the expansion's scores
    round by more than the gaps between a row's nearest centroids."""
    generator = torch.Generator().manual_seed(seed)
    scale = 20.0 if dtype == torch.float32 else 2e7
    blobs = scale * torch.randn(4, d, generator=generator, dtype=torch.float64)
    centroids = blobs[torch.arange(k) % 4] + 0.03 * torch.randn(
        k, d, generator=generator, dtype=torch.float64
    )
    picks = torch.randint(0, 4, (600,), generator=generator)
    x = blobs[picks] + 0.1 * torch.randn(600, d, generator=generator, dtype=torch.float64)
    return x.to(dtype), centroids.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("d", "k"), [(64, 32), (33, 17), (128, 300), (700, 20)])
def test_certain_labels_are_the_nearest_centroid_where_the_scores_round_wrongly(dtype, d, k):
    """certain=True: each label is the nearest centroid (from differences)
    where the row layout's own labels are not, in one panel of centroids
    and one block of features, across panels (k=300) and across blocks
    (d=700), on one and two threads; distances and minima as without it."""
    x, centroids = _tight_blobs_far_from_the_mean(dtype, d, k)
    offset = centroids.mean(0)
    exact = (x.double()[:, None] - centroids.double()[None]).square().sum(-1)
    nearest = exact.argmin(1)
    plain = torch.empty(600, dtype=torch.int64)
    _native.nearest(x, centroids - offset, plain, offset=offset, columns=False, dots=False)
    assert (plain != nearest).sum() > 10  # the scores alone choose wrongly
    for threads in (1, 2):
        labels = torch.full((600,), -1, dtype=torch.int64)
        measured = torch.empty(600, dtype=dtype)
        minima = torch.empty(600, dtype=dtype)
        _native.nearest(
            x,
            centroids - offset,
            labels,
            offset=offset,
            distances=measured,
            minima=minima,
            given=centroids,
            certain=True,
            threads=threads,
        )
        assert torch.equal(labels, nearest), threads
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(measured.double(), exact.min(1).values, rtol=4 * eps, atol=0.0)
        lowest = torch.empty(600, dtype=dtype)
        _native.nearest(x, centroids - offset, plain, offset=offset, minima=lowest, columns=False)
        assert torch.equal(minima, lowest)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 150),
    d=st.sampled_from([17, 40, 129, 300]),
    k=st.sampled_from([5, 17, 64, 130]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    shift=st.sampled_from([0.0, 1e3, 1e5]),
    spread=st.sampled_from([1e-3, 1e-1, 1.0]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31),
)
def test_certain_labels_are_a_nearest_centroid_wherever_the_rows_lie(
    n, d, k, dtype, shift, spread, threads, seed
):
    """Rows and centroids far from the origin (no offset: the scores' frame
    is the data's), the centroids near-copies of each other: each certain
    label is a nearest centroid up to the rounding of distances from
    differences."""
    generator = torch.Generator().manual_seed(seed)
    centre = shift + torch.randn(d, generator=generator, dtype=torch.float64)
    centroids = centre + spread * torch.randn(k, d, generator=generator, dtype=torch.float64)
    x = centre + spread * torch.randn(n, d, generator=generator, dtype=torch.float64)
    x, centroids = x.to(dtype), centroids.to(dtype)
    labels = torch.full((n,), -1, dtype=torch.int64)
    _native.nearest(x, centroids, labels, certain=True, threads=threads)
    table = (x.double()[:, None] - centroids.double()[None]).square().sum(-1)
    chosen = table.gather(1, labels[:, None]).squeeze(1)
    rtol = 4 * (d + 2) * torch.finfo(dtype).eps
    assert (chosen <= table.min(1).values * (1 + rtol)).all()


def test_certain_labels_only_in_the_row_layout_of_euclidean_scores():
    x, centroids = torch.randn(10, 20), torch.randn(5, 20)
    labels = torch.empty(10, dtype=torch.int64)
    for wrong in (
        {"cosine": True},
        {"columns": True},
        {"dots": True},
        {"blocks": True},
        {"differences": True},
    ):
        with pytest.raises(ValueError, match="certain labels only"):
            _native.nearest(x, centroids, labels, certain=True, **wrong)


def _csr_of(x):
    """The CSR components (crow, col, values) of the nonzero entries of x (n, d)."""
    stored = x != 0
    crow = torch.zeros(x.shape[0] + 1, dtype=torch.int64)
    crow[1:] = stored.sum(1).cumsum(0)
    return crow, stored.nonzero()[:, 1], x[stored]


def _sparse_step(crow, col, values, centroids, norms, weights, threads):
    """sparse_lloyd's labels, distances, totals (NaN before the call) and sum
    of distances for CSR rows of centroids.shape[1] features."""
    n, (k, d) = crow.numel() - 1, centroids.shape
    labels = torch.empty(n, dtype=torch.int64)
    found = torch.empty(n, dtype=values.dtype)
    totals = torch.full((k, d + 1), math.nan, dtype=torch.float64)
    total = _native.sparse_lloyd(
        crow, col, values, d, centroids, norms, labels, found,
        weights=weights, totals=totals, threads=threads,
    )  # fmt: skip
    return labels, found, totals, total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 64, 70])
@pytest.mark.parametrize("cosine", [False, True])
def test_sparse_lloyd_step_matches_pytorch(dtype, k, cosine):
    """One pass over CSR rows (sparse_lloyd): every vector width and panel of
    centroids, one and two threads, with and without weights: the labels of
    the lowest |c|^2 - 2 x.c (cosine: 1 - x.c), ties to the lowest index,
    distances, the weighted cluster totals and the weighted sum of distances."""
    g = torch.Generator().manual_seed(k)
    n, d = 301, 40
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x *= torch.rand(n, d, generator=g, dtype=dtype) < 0.3
    x[5] = 0  # a row with nothing stored
    centroids = torch.randn(k, d, generator=g, dtype=dtype)
    if cosine:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
        centroids = centroids / centroids.norm(dim=1, keepdim=True)
    if k > 1:
        centroids[1] = centroids[0]  # an exact tie in every row that picks either
    x64, c64 = x.double(), centroids.double()
    if cosine:
        scores = (1 - x64 @ c64.T).clamp(0, 2)
    else:
        scores = c64.square().sum(1) - 2 * x64 @ c64.T
    crow, col, values = _csr_of(x)
    norms = None if cosine else x.square().sum(1)
    for threads in (1, 2):
        for weights in (None, torch.rand(n, generator=g, dtype=torch.float64)):
            labels, found, totals, total = _sparse_step(
                crow, col, values, centroids, norms, weights, threads
            )
            tolerance = 1e-4 if dtype == torch.float32 else 1e-12
            chosen = scores.gather(1, labels[:, None]).squeeze(1)
            assert (chosen <= scores.min(1).values + tolerance).all()
            assert not (labels == 1).any()  # the tie goes to 0
            if cosine:
                expected = scores.gather(1, labels[:, None]).squeeze(1)
            else:
                expected = (x64 - c64[labels]).square().sum(1)
            torch.testing.assert_close(found.double(), expected, rtol=tolerance, atol=tolerance)
            w = torch.ones(n, dtype=torch.float64) if weights is None else weights
            sums = torch.zeros(k, d + 1, dtype=torch.float64).index_add_(
                0, labels, torch.cat([x64, torch.ones(n, 1, dtype=torch.float64)], 1) * w[:, None]
            )
            torch.testing.assert_close(totals, sums)
            assert total == pytest.approx(float((found.double() * w).sum()), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_sparse_lloyd_gives_the_same_bits_on_any_thread_count(dtype, weighted):
    """A mini-batch of many features (totals outweigh the stored values):
    the threads transpose blocks of the centroids' columns apart and add
    the rows of their own clusters; labels, distances, totals and the sum of
    distances are those of one thread, bit for bit, and the totals the
    float64 sums of each cluster's rows."""
    g = torch.Generator().manual_seed(7)
    n, d, k = 64, 9_000, 11
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x *= torch.rand(n, d, generator=g, dtype=dtype) < 0.01
    centroids = x[:k].clone() + 0.01 * torch.randn(k, d, generator=g, dtype=dtype)
    crow, col, values = _csr_of(x)
    norms = x.square().sum(1)
    weights = torch.rand(n, generator=g, dtype=torch.float64) if weighted else None
    runs = []
    for threads in (1, 2, 3):
        runs.append(_sparse_step(crow, col, values, centroids, norms, weights, threads))
    for labels, found, totals, total in runs[1:]:
        assert torch.equal(labels, runs[0][0])
        assert torch.equal(found, runs[0][1])
        assert torch.equal(totals, runs[0][2])
        assert total == runs[0][3]
    labels, found, totals, _ = runs[0]
    table = (x.double()[:, None] - centroids.double()[None]).square().sum(-1)
    assert torch.equal(labels, table.argmin(1))
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights
    rows = torch.cat([x.double(), torch.ones(n, 1, dtype=torch.float64)], 1) * w[:, None]
    expected = torch.zeros(k, d + 1, dtype=torch.float64).index_add_(0, labels, rows)
    torch.testing.assert_close(totals, expected, rtol=1e-12, atol=1e-12)


def test_sparse_lloyd_refuses_bad_outputs_and_tensors_off_the_cpu():
    crow, col, values = _csr_of(torch.eye(3))
    centroids = torch.eye(3)[:2]
    labels, found = torch.empty(3, dtype=torch.int64), torch.empty(3)
    with pytest.raises(ValueError, match=r"Expected totals to be a contiguous torch.float64"):
        _native.sparse_lloyd(
            crow, col, values, 3, centroids, None, labels, found, totals=torch.empty(2, 4)
        )
    with pytest.raises(ValueError, match=r"Expected centroids of shape \(k, 3\), got \(2, 2\)"):
        _native.sparse_lloyd(crow, col, values, 3, centroids[:, :2], None, labels, found)
    with pytest.raises(ValueError, match=r"Expected values on the CPU, got a tensor on meta"):
        _native.sparse_lloyd(crow, col, values.to("meta"), 3, centroids, None, labels, found)


@on_the_cpu_paths_only
def test_the_seed_scores_refuse_tensors_without_memory_of_their_own():
    # torch.func's wrappers have no data pointer: k-means++ must take
    # PyTorch's ops for them, as the labelling does, and the kernel otherwise.
    from torchkmeans.functional.init import _seed_scorer

    x = torch.randn(2_000, 128)
    inside = []

    def total(rows):
        inside.append(_seed_scorer(rows))
        return rows.sum()

    torch.func.grad(total)(x)
    assert inside == [None]
    assert _seed_scorer(x) is not None
    assert _native.seed_scores(torch.float16) is None
    assert _native.vector_bytes() in (16, 32, 64)
