"""Properties of Lloyd's algorithm, checked with hypothesis."""

from __future__ import annotations

import contextlib
import importlib
import itertools
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import copies_found_on_the_cpu, on_the_cpu_paths_only
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from torchkmeans import KMeans
from torchkmeans.functional import _native, lloyd, pairwise_distances

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, max_n=60, max_d=4, max_k=6):
    n = draw(st.integers(2, max_n))
    d = draw(st.integers(1, max_d))
    k = draw(st.integers(1, min(max_k, n)))
    values = st.floats(-100, 100, allow_nan=False, width=64).map(lambda v: round(v, 2))
    x = draw(arrays(np.float64, (n, d), elements=values))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    return x, x[rows].copy()


@SETTINGS
@given(problems())
def test_inertia_never_increases(problem):
    x, start = problem
    result = lloyd(torch.tensor(x), torch.tensor(start), max_iter=50, tol=0.0)
    history = result.inertia_history[: int(result.n_iter)].numpy()
    scale = 1e-9 * (1.0 + history[0])
    assert (np.diff(history) <= scale).all()
    assert float(result.inertia) <= history[-1] + scale
    assert np.isfinite(result.centroids.numpy()).all()


@st.composite
def tie_free_problems(draw, max_n=60, max_d=4, max_k=6):
    """Continuous data from a drawn seed: exact ties (equidistant points, which
    make "the farthest point" depend on row order) have probability zero."""
    n = draw(st.integers(2, max_n))
    d = draw(st.integers(1, max_d))
    k = draw(st.integers(1, min(max_k, n)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n, d)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return x, x[rng.choice(n, k, replace=False)].copy()


@SETTINGS
@given(tie_free_problems(), st.randoms(use_true_random=False))
def test_row_permutation_does_not_change_the_result(problem, rnd):
    x, start = problem
    perm = np.array(rnd.sample(range(len(x)), len(x)))
    a = lloyd(torch.tensor(x), torch.tensor(start))
    b = lloyd(torch.tensor(x[perm]), torch.tensor(start))
    # Exact ties between two centres may resolve differently after summation
    # reordering; compare the objective and the partition on the permuted rows.
    scale = float(np.abs(x).max())
    np.testing.assert_allclose(float(a.inertia), float(b.inertia), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        a.centroids.numpy(), b.centroids.numpy(), rtol=1e-7, atol=1e-9 * scale
    )
    np.testing.assert_array_equal(a.labels.numpy()[perm], b.labels.numpy())


@SETTINGS
@given(st.lists(tie_free_problems(max_n=40), min_size=2, max_size=4))
def test_batched_run_equals_separate_runs(batch):
    # Tie-free data: with exact ties (copies of a starting row, say) the fused
    # kernel of a lone CPU problem and the batch's matrix product break them by
    # their own rounding, and each can end in another, equally good, optimum.
    n = min(len(x) for x, _ in batch)
    d = min(x.shape[1] for x, _ in batch)
    k = min(len(c) for _, c in batch)
    xs = np.stack([x[:n, :d] for x, _ in batch])
    starts = np.stack([x[:n, :d][:k] for x, _ in batch])
    together = lloyd(torch.tensor(xs), torch.tensor(starts))
    for i in range(len(batch)):
        alone = lloyd(torch.tensor(xs[i]), torch.tensor(starts[i]))
        np.testing.assert_allclose(
            together.centroids[i].numpy(), alone.centroids.numpy(), rtol=1e-9, atol=1e-9
        )
        np.testing.assert_array_equal(together.labels[i].numpy(), alone.labels.numpy())
        assert int(together.n_iter[i]) == int(alone.n_iter)


@SETTINGS
@given(tie_free_problems(max_n=80, max_k=20), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_restarts_on_shared_data_equal_separate_runs(problem, restarts, seed):
    """Shared data takes its own path on the CPU (one-hot or per-problem sums,
    converged restarts leaving the batch, totals following moved points)."""
    x, _ = problem
    n, k = len(x), len(problem[1])
    rng = np.random.default_rng(seed)
    starts = np.stack([x[rng.choice(n, k, replace=False)] for _ in range(restarts)])
    together = lloyd(torch.tensor(x), torch.tensor(starts), tol=0.0)
    scale = float(np.abs(x).max())
    for i in range(restarts):
        alone = lloyd(torch.tensor(x), torch.tensor(starts[i]), tol=0.0)
        np.testing.assert_allclose(
            together.centroids[i].numpy(), alone.centroids.numpy(), rtol=1e-7, atol=1e-9 * scale
        )
        np.testing.assert_array_equal(together.labels[i].numpy(), alone.labels.numpy())
        assert int(together.n_iter[i]) == int(alone.n_iter)


@pytest.mark.filterwarnings("ignore::torchkmeans.ConvergenceWarning")
@SETTINGS
@given(problems(), st.integers(0, 2**31 - 1))
def test_unit_weights_equal_no_weights(problem, seed):
    x, _ = problem
    k = min(3, len(x))
    a = KMeans(n_clusters=k, random_state=seed).fit(x)
    b = KMeans(n_clusters=k, random_state=seed).fit(x, sample_weight=np.ones(len(x)))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert a.inertia_ == b.inertia_


@SETTINGS
@given(tie_free_problems(), st.data())
def test_integer_weights_equal_repeated_rows(problem, data):
    x, start = problem
    # Tie-free data: with duplicated points an emptied cluster is reseeded
    # from "the j-th farthest point", which is a different copy under
    # repetition than under weights (scikit-learn behaves the same).
    weights = np.array(data.draw(st.lists(st.integers(1, 4), min_size=len(x), max_size=len(x))))
    repeated = np.repeat(x, weights, axis=0)
    a = lloyd(
        torch.tensor(x),
        torch.tensor(start),
        sample_weight=torch.tensor(weights, dtype=torch.float64),
    )
    b = lloyd(torch.tensor(repeated), torch.tensor(start))
    np.testing.assert_allclose(float(a.inertia), float(b.inertia), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.centroids.numpy(), b.centroids.numpy(), rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(np.repeat(a.labels.numpy(), weights), b.labels.numpy())


@on_the_cpu_paths_only
@SETTINGS
@given(problems(max_n=90, max_k=8), st.integers(0, 2**32 - 1), st.booleans(), st.integers(1, 40))
@pytest.mark.parametrize("columns_up_to_k", [0, 63], ids=["rows", "columns"])
def test_warm_started_pass_equals_a_cold_one(columns_up_to_k, problem, seed, weighted, rows):
    """The single-problem CPU pass that starts from the previous labels (random
    here, and duplicated centres make exact ties) finds a nearest centre of
    every row, and the same sums, weights, distances and total as a full search,
    with its blocks scored as (m, k) rows or (k, m) columns."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    with mock.patch.object(distances_module, "_COLUMN_SCORES_MAX_K", columns_up_to_k):
        _compare_warm_and_cold_passes(problem, seed, weighted, rows)


def _compare_warm_and_cold_passes(problem, seed, weighted, rows):
    from torchkmeans.functional.lloyd import _assign_pass, prepare

    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")

    x, start = problem
    rng = np.random.default_rng(seed)
    n, k = len(x), len(start)
    centroids = np.concatenate([start, start[: rng.integers(0, k + 1)]])  # some twins
    weights = torch.tensor(rng.uniform(0.5, 2.0, n)) if weighted else None
    prep = prepare(torch.tensor(x), sample_weight=weights)
    c = torch.tensor(centroids)[None] - prep.offset
    previous = torch.tensor(rng.integers(0, len(centroids), (1, n)))
    before = previous.clone()
    results = []
    changed_rows: list[torch.Tensor] = []
    for warm in (previous, None):
        labels = torch.empty_like(previous)
        totals = torch.zeros((1, len(centroids), x.shape[1] + 1), dtype=torch.float64)
        distances = torch.empty((1, n), dtype=torch.float64)
        # The warm pass is taken from this many scores a block; here, always.
        with mock.patch.object(lloyd_module, "_WARM_START_MIN_ELEMENTS", 0):
            total = _assign_pass(
                prep,
                c,
                labels,
                rows,
                totals=totals,
                previous=warm,
                distances=distances,
                changed_rows=changed_rows if warm is not None else None,
            )
        results.append((labels, totals, distances, total))
    (warm_labels, warm_totals, warm_d, warm_total), (labels, totals, d, total) = results
    assert torch.equal(previous, before)
    # The rows the warm pass reports as changed are exactly those whose label changed.
    assert torch.equal(torch.cat(changed_rows), (warm_labels != previous)[0].nonzero().squeeze(1))
    scores = torch.cdist(prep.x[0], c[0]).square()
    chosen = scores.gather(1, warm_labels[0, :, None]).squeeze(1)
    best = scores.gather(1, labels[0, :, None]).squeeze(1)
    scale = 1e-9 * (1.0 + float(scores.max()))
    assert (best <= scores.amin(1) + scale).all()  # the cold pass finds a nearest centre
    assert (chosen <= best + scale).all()
    # Ties keep the previous label: only then may the two labels differ.
    differ = warm_labels != labels
    assert torch.equal(warm_labels[differ], previous[differ])
    if not differ.any():
        torch.testing.assert_close(warm_totals, totals, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(warm_d, d, rtol=0, atol=0)
    torch.testing.assert_close(warm_total, total, rtol=1e-12, atol=scale)
    counts = torch.zeros(len(centroids), dtype=torch.float64).index_add_(
        0, warm_labels[0], weights if weighted else torch.ones(n, dtype=torch.float64)
    )
    torch.testing.assert_close(warm_totals[0, :, -1], counts)


@SETTINGS
@given(
    problems(max_n=80, max_k=8),
    st.sampled_from(["euclidean", "cosine"]),
    st.sampled_from([None, "positive", "some zero"]),
    st.sampled_from([0.0, 1e-4]),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
)
@pytest.mark.parametrize("score_layout", ["rows", "columns"])
def test_small_problem_loop_equals_the_general_loop(
    score_layout, problem, metric, weighting, tol, max_iter, seed
):
    """The one-block CPU loop (strict convergence read from a zero shift, empty
    clusters found from a NaN update) gives the general loop's result: the same
    iterations, labels, centroids and history. Rounded data make ties, duplicate
    rows and empty clusters common; zero weights make clusters with points but
    no weight. "columns" forces the (k, n) scores and the warm-started searches
    of both loops (which keep a tied previous label) onto these small problems,
    without the scaled copy of the rows and with the final distances in blocks."""
    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")
    if score_layout == "columns":
        distances_module = importlib.import_module("torchkmeans.functional.distances")
        stack = contextlib.ExitStack()
        for module in (lloyd_module, distances_module):
            stack.enter_context(mock.patch.object(module, "_WARM_START_MIN_ELEMENTS", 1))
        # ... with the general loop's [-2c | |c|^2] instead of a copy [-2x | 1],
        # and the final distances in blocks.
        stack.enter_context(mock.patch.object(lloyd_module, "_SCALED_ROWS_MAX_ELEMENTS", 0))
        stack.enter_context(mock.patch.object(lloyd_module, "_exact_distance_rows", lambda x: 7))
    else:
        stack = contextlib.nullcontext()
    with stack:
        _compare_small_and_general_loops(problem, metric, weighting, tol, max_iter, seed)


def _compare_small_and_general_loops(problem, metric, weighting, tol, max_iter, seed):
    from torchkmeans.functional.lloyd import prepare, run_lloyd

    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")
    x, start = problem
    rng = np.random.default_rng(seed)
    weights = None
    if weighting is not None:
        weights = torch.tensor(rng.uniform(0.5, 2.0, len(x)))
        if weighting == "some zero":
            weights[torch.tensor(rng.random(len(x)) < 0.3)] = 0.0
            weights[int(rng.integers(len(x)))] = 1.0  # some weight in all
    if metric == "cosine":
        x = x + 1e-3  # no zero rows: their direction is undefined
        start = start + 1e-3
    prep = prepare(torch.tensor(x), sample_weight=weights, metric=metric)
    c = torch.tensor(start)[None]
    c = c - prep.offset if metric == "euclidean" else torch.nn.functional.normalize(c, dim=-1)
    # The PyTorch ops' small loop, not the native kernel (tested on its own).
    with mock.patch.object(_native, "prefers_native", lambda *args, **kwargs: False):
        small = run_lloyd(prep, c.clone(), max_iter=max_iter, tol=tol)
    # The general loop recomputing its sums every iteration (not following the
    # points that move, which rounds differently): the same arithmetic.
    with mock.patch.object(lloyd_module, "_FOLLOW_MAX_MOVED", -1.0):
        general = run_lloyd(prep, c.clone(), max_iter=max_iter, tol=tol, small_path=False)
    assert torch.equal(small.n_iter, general.n_iter)
    assert torch.equal(small.labels, general.labels)
    torch.testing.assert_close(small.centroids, general.centroids, rtol=0, atol=0)
    torch.testing.assert_close(small.inertia, general.inertia, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(
        small.inertia_history, general.inertia_history, rtol=1e-12, atol=1e-9, equal_nan=True
    )
    assert not small.centroids.isnan().any()


@SETTINGS
@given(
    st.integers(1, 40),
    st.integers(1, 300),
    st.integers(0, 9),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**32 - 1),
)
def test_grouped_row_minimum_equals_min(m, k, extra_columns, dtype, seed):
    """row_min's grouped search (forced here on small blocks) gives min()'s values and
    first indices, ties included, on contiguous rows and on column slices."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    generator = torch.Generator().manual_seed(seed)
    wide = torch.randn(m, k + extra_columns, generator=generator, dtype=dtype).round(decimals=1)
    for scores in (wide[:, :k].contiguous(), wide[:, extra_columns:]):
        with (
            mock.patch.object(distances_module, "_GROUPED_MIN_MIN_K", 1),
            mock.patch.object(distances_module, "_GROUPED_MIN_MIN_ELEMENTS", 1),
        ):
            values, indices = distances_module.row_min(scores)
        expected = scores.min(dim=1)
        assert torch.equal(values, expected.values)
        assert torch.equal(indices, expected.indices)


@copies_found_on_the_cpu
@SETTINGS
@given(
    st.integers(0, 120),
    st.integers(1, 6),
    st.integers(1, 40),
    st.integers(1, 3),
    st.integers(0, 2**32 - 1),
)
def test_nearest_centroids_finds_the_first_nearest_centroid(n, d, k, b, seed):
    """Labels are a nearest centroid (the first of twins) and distances exact, for one
    problem and for one x against b centroid sets, whichever scores the CPU uses
    ((k, m) columns for one problem with few centroids, augmented rows when
    k*b > d+1, addmm otherwise), in one block or in blocks of 7 rows. Centring
    the rows block by block (KMeans.predict) and leaving the distances out give
    the same labels."""
    from torchkmeans.functional import nearest_centroids

    distances_module = importlib.import_module("torchkmeans.functional.distances")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64).round(decimals=1)
    c = torch.randn(b, k, d, generator=generator, dtype=torch.float64).round(decimals=1)
    c = torch.cat([c, c[:, :1]], dim=1)  # a twin of each set's first centroid, last
    exact = torch.cdist(x, c).square()  # (b, n, k+1)
    centroids = c if b > 1 else c[0]
    offset = torch.randn(d, generator=generator, dtype=torch.float64).round(decimals=1)
    modes = [(63, 2**62), (0, 0), (0, 2**62)]  # columns, augmented rows, addmm rows
    for (columns_up_to_k, augmented_from), budget in itertools.product(modes, (None, 7)):
        memory_budget = None if budget is None else budget * b * (k + 1) * 8
        with (
            mock.patch.object(distances_module, "_COLUMN_SCORES_MAX_K", columns_up_to_k),
            mock.patch.object(distances_module, "_COLUMN_NEAREST_MIN_ELEMENTS", 0),
            mock.patch.object(distances_module, "_AUGMENTED_MIN_ELEMENTS", augmented_from),
        ):
            result = nearest_centroids(x, centroids, memory_budget=memory_budget)
            # The same rows, shifted by -offset, with their centring left to the blocks.
            shifted, no_distances = distances_module._nearest_unchecked(
                x + offset,
                centroids,
                metric="euclidean",
                offset=offset,
                exact=False,
                memory_budget=memory_budget,
            )
        labels = result.labels.reshape(b, n)
        chosen = exact.gather(2, labels.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(result.distances.reshape(b, n), chosen, rtol=1e-12, atol=1e-9)
        assert (chosen <= exact.amin(-1) + 1e-9).all()
        assert (labels < k).all()  # the twin never wins over the first centroid
        assert no_distances is None
        chosen_shifted = exact.gather(2, shifted.reshape(b, n, 1)).squeeze(-1)
        assert (chosen_shifted <= exact.amin(-1) + 1e-9).all()
        assert (shifted < k).all()


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 20),
    st.integers(1, 200),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**32 - 1),
)
def test_warm_column_minimum_keeps_a_previous_label_that_is_still_nearest(b, k, m, dtype, seed):
    """argmin_columns with previous labels: the minimum of every column; a previous
    label that attains it stays, any other column gets min()'s first index; without
    previous labels, min()'s first index everywhere (first_column_minimum for one
    problem)."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (b, k, m), generator=generator).to(dtype)  # many ties
    previous = torch.randint(0, k, (b, m), generator=generator)
    before = previous.clone()
    for layout in (scores, scores.transpose(1, 2).contiguous().transpose(1, 2)):
        with mock.patch.object(distances_module, "_WARM_START_MIN_ELEMENTS", 1):
            values, labels = distances_module.argmin_columns(layout, previous)
        expected, first = scores.min(dim=1)
        assert torch.equal(values, expected)
        kept = scores.gather(1, previous.unsqueeze(1)).squeeze(1) == expected
        assert torch.equal(labels[kept], previous[kept])
        assert torch.equal(labels[~kept], first[~kept])
        assert torch.equal(previous, before)
        # Cold (no previous labels): min()'s first indices.
        with mock.patch.object(distances_module, "_WARM_START_MIN_ELEMENTS", 1):
            values, labels = distances_module.argmin_columns(layout)
        assert torch.equal(values, expected)
        assert torch.equal(labels, first)


@SETTINGS
@given(
    st.integers(1, 20),
    st.integers(0, 300),
    st.integers(1, 12),
    st.sampled_from([1.0, -1.0]),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**32 - 1),
)
def test_adding_rows_column_by_column_equals_index_add(width, n, k, alpha, dtype, seed):
    """add_rows' column-by-column scatter (forced here on small inputs) adds the same
    rows as index_add_: the same sums into a zero target, close ones into a filled one."""
    updates_module = importlib.import_module("torchkmeans.functional.updates")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, width, generator=generator, dtype=dtype)
    index = torch.randint(0, k, (n,), generator=generator)
    filled = torch.randn(k, width, generator=generator, dtype=dtype)
    for start in (torch.zeros(k, width, dtype=dtype), filled):
        expected = start.clone().index_add_(0, index, rows, alpha=alpha)
        with (
            mock.patch.object(updates_module, "_COLUMN_SCATTER_MIN_ELEMENTS", 0),
            mock.patch.object(updates_module, "_COLUMN_SCATTER_MAX_WIDTH", 64),
        ):
            target = start.clone()
            updates_module.add_rows(target, index, rows, alpha=alpha)
        if start is filled:
            torch.testing.assert_close(target, expected)
        else:
            assert torch.equal(target, expected)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_plusplus_on_one_cpu_problem_equals_the_batched_loop(metric, weighted):
    """The host loop for one CPU problem keeps its distances as (trials, n) rows;
    the batched loop as (n, trials) columns. Same draws, same arithmetic: the
    same seeds, on real and generated data. (The native kernel's dot products
    round otherwise: test_functional checks it against this loop.)"""
    from sklearn.datasets import load_digits, load_iris

    from torchkmeans.functional import kmeans_plusplus

    init_module = importlib.import_module("torchkmeans.functional.init")
    rng = np.random.default_rng(0)
    datasets = [
        load_iris().data,
        load_digits().data,
        rng.standard_normal((3000, 2)).astype(np.float32),
        rng.standard_normal((2000, 40)).astype(np.float32),
    ]
    for data in datasets:
        x = torch.tensor(data)
        x = x - x.mean(0)
        if metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        weights = torch.tensor(rng.uniform(0.0, 2.0, len(x))).to(x.dtype) if weighted else None
        for k in (1, 3, 17):
            for seed in range(2):
                chosen = []
                for host_loop in (True, False):
                    with (
                        mock.patch.object(init_module, "_HOST_LOOP_ON_CPU", host_loop),
                        mock.patch.object(init_module, "_seed_scorer", lambda x: None),
                    ):
                        chosen.append(
                            kmeans_plusplus(
                                x,
                                k,
                                sample_weight=weights,
                                metric=metric,
                                generator=torch.Generator().manual_seed(seed),
                            )[1]
                        )
                assert torch.equal(chosen[0], chosen[1])


@SETTINGS
@given(
    st.integers(100, 1000),
    st.integers(8, 256),
    st.sampled_from([torch.float32, torch.float64]),
    st.floats(0.0, 3.0),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_pairwise_distances_hold_their_documented_precision(d, k, dtype, spread, tracked, seed):
    """Every entry of pairwise_distances (KMeans.transform squared) is within 2^-23 of
    the exact distance for float32 rows, 2^-17 for float64 ones, also for rows
    1e-6..1e-1 from a centroid 1..1000 units from the centres' mean, where the
    expansion's rounding, which grows with d, is near the distance (d=1000: float32
    entries were 5.4e-7 off, float64 ones 8e-5). With autograd the blocks take the
    path that other devices take."""
    rng = np.random.default_rng(seed)
    n = 60
    centres = rng.normal(size=(k, d)) * 10.0**spread
    noise = 10.0 ** rng.uniform(-6.0, -1.0, size=(n, 1))
    x = torch.tensor(centres[rng.integers(0, k, n)] + noise * rng.normal(size=(n, d)), dtype=dtype)
    c = torch.tensor(centres, dtype=dtype, requires_grad=tracked)
    got = pairwise_distances(x, c).detach().double()
    exact = torch.cdist(
        x.double(), c.detach().double(), compute_mode="donot_use_mm_for_euclid_dist"
    ).square()
    bound = 2.0**-23 if dtype == torch.float32 else 2.0**-17
    assert ((got - exact).abs() <= bound * exact).all()
