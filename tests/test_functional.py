"""The tensor kernels against the naive reference in tests/reference.py."""

from __future__ import annotations

import importlib
from unittest import mock

import numpy as np
import pytest
import reference
import torch
from conftest import (
    assert_identical,
    blobs,
    copies_found_on_the_cpu,
    on_the_cpu_paths_only,
    tolerance,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from torchkmeans.functional import (
    _device,
    _native,
    block_rows,
    centroids_from_sums,
    kmeans,
    kmeans_plusplus,
    lloyd,
    minibatch_step,
    nearest_centroids,
    pairwise_distances,
    random_init,
    scatter_sums,
)
from torchkmeans.functional.distances import times_power_of_two


def test_nearest_centroids_matches_reference(device, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 7))
    c = rng.normal(size=(13, 7))
    labels, distances = reference.nearest(x, c)
    got = nearest_centroids(
        torch.tensor(x, dtype=dtype, device=device), torch.tensor(c, dtype=dtype, device=device)
    )
    assert got.labels.dtype == torch.int64
    np.testing.assert_array_equal(got.labels.cpu().numpy(), labels)
    np.testing.assert_allclose(got.distances.cpu().numpy(), distances, **tolerance(dtype))


@pytest.mark.parametrize("memory_budget", [64, 4096, 10**9])
def test_nearest_centroids_does_not_depend_on_the_block_size(memory_budget):
    x = torch.randn(1000, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = x[:17].clone()
    full = nearest_centroids(x, c)
    blocked = nearest_centroids(x, c, memory_budget=memory_budget)
    assert torch.equal(full.labels, blocked.labels)
    torch.testing.assert_close(full.distances, blocked.distances)


def test_distances_are_clamped_at_zero():
    x = torch.full((4, 3), 1e4)
    result = nearest_centroids(x, x[:1].clone())
    assert bool((result.distances >= 0).all())


def test_cosine_distance_is_one_minus_cos():
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), dim=-1)
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    result = nearest_centroids(x, c, metric="cosine")
    assert result.labels.tolist() == [0, 0, 1]
    torch.testing.assert_close(result.distances, torch.tensor([0.0, 1 - 2**-0.5, 1.0]))
    torch.testing.assert_close(
        pairwise_distances(x, c, metric="cosine"),
        1 - x @ c.T,
    )


def test_pairwise_cosine_distances_of_one_x_to_a_batch_of_centroids():
    """One 2-D x against b sets of centroids: the entries near 0 of the
    later problems are measured again from that x (its batch of one had
    been indexed by the problem: IndexError)."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    c = torch.stack([x[:2], x[2:4]])  # every problem holds rows of x: distances 0
    got = pairwise_distances(x, c, metric="cosine")
    assert got.shape == (2, 5, 2)
    expected = (1 - x @ c.transpose(1, 2)).clamp(0.0, 2.0)
    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)
    assert got[1, 2, 0] == 0 and got[1, 3, 1] == 0


@on_the_cpu_paths_only
def test_pairwise_cosine_distances_measure_entries_again_in_bounded_pieces(monkeypatch):
    """Embeddings of one broad direction have every cosine distance below the
    limit under which it is measured again from differences: those entries
    come in pieces of _PAIRWISE_BLOCK_BYTES (gathered at once, their rows
    and centroids took 220x the output's memory at d=256), each where it goes."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    monkeypatch.setattr(distances_module, "_PAIRWISE_BLOCK_BYTES", 5 * 40 * 8)
    sizes = []
    from_squared = distances_module._cosine_from_squared

    def counted(squared, *args):
        sizes.append(squared.numel())
        return from_squared(squared, *args)

    monkeypatch.setattr(distances_module, "_cosine_from_squared", counted)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, generator=g)
    x = torch.nn.functional.normalize(base + 0.05 * torch.randn(60, 40, generator=g), dim=-1)
    c = torch.nn.functional.normalize(base + 0.05 * torch.randn(2, 3, 40, generator=g), dim=-1)
    got = pairwise_distances(x, c, metric="cosine")
    assert sum(sizes) == got.numel() and max(sizes) <= 5
    x64, c64 = x.double(), c.double()
    norms = x64.norm(dim=-1)[None, :, None] * c64.norm(dim=-1)[:, None, :]
    cos = (x64 @ c64.transpose(1, 2)) / norms
    torch.testing.assert_close(got.double(), 1 - cos, rtol=1e-3, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_distances_over_many_blocks_match_differences(dtype):
    # Rows wide enough for several cache-sized blocks on the CPU; rows on or
    # near their centroids far from the origin, and one far-away centroid,
    # whose expansion is inexact and is measured again from differences.
    g = torch.Generator().manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(1500, 600, generator=g, dtype=torch.float64)).to(dtype)
    c = torch.cat([x[:4], x[4:5] + 1e6]).unsqueeze(0).repeat(2, 1, 1)
    c[1] += 0.5
    expected = (x.double()[None, :, None] - c.double()[:, None]).square().sum(-1)
    batched = pairwise_distances(x, c)
    assert batched.dtype == dtype
    tol = dict(rtol=1e-12, atol=0.0) if dtype == torch.float64 else dict(rtol=1e-6, atol=0.0)
    torch.testing.assert_close(batched.double(), expected, **tol)
    torch.testing.assert_close(pairwise_distances(x, c[0]), batched[0], rtol=0.0, atol=0.0)
    assert bool((batched[0, torch.arange(4), torch.arange(4)] == 0).all())


def test_float32_pairwise_distances_are_exact_to_float32_also_far_from_the_centres_mean():
    # Rows near the origin, centroids at 0 and 2e4 (their mean at 1e4): the
    # expansion on rows centred there is off by a few u64 * 4e8, up to 2^-17
    # of the distances, which were returned (not measured again) 7.7e-6 off.
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2000, 4, generator=g)
    c = torch.cat([x[:2] + 0.05, x[:2] + 2e4])
    expected = (x.double()[:, None] - c.double()[None]).square().sum(-1)
    torch.testing.assert_close(pairwise_distances(x, c).double(), expected, rtol=2.5e-7, atol=0.0)


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [4, 32, 64])
def test_entries_of_rows_on_their_centre_are_measured_again_once_for_all_blocks(
    monkeypatch, dtype, k
):
    """Duplicated rows, a fortieth of them copies of a centre far from the
    centres' mean, over many blocks (both layouts of a block): their entries
    near 0 are measured again from differences, in one pass after the last
    block (block by block, its gathers had made transform of 60,000 such rows
    1.2-1.4x scikit-learn's time), each problem's rows at once."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    calls = []
    exact_entries = distances_module._exact_entries
    monkeypatch.setattr(
        distances_module,
        "_exact_entries",
        lambda out, suspect, *rest: (
            calls.append(int(suspect.sum())) or exact_entries(out, suspect, *rest)
        ),
    )
    g = torch.Generator().manual_seed(0)
    points = 30.0 * torch.randn(40, 64, generator=g, dtype=torch.float64)
    x = points[torch.randint(40, (20_000,), generator=g)].to(dtype)
    others = 30.0 * torch.randn(k - 1, 64, generator=g, dtype=torch.float64)
    c = torch.cat([points[:1], others]).to(dtype)
    expected = (x.double()[:, None] - c.double()[None]).square().sum(-1)
    on_centre = int((expected[:, 0] == 0).sum())
    result = pairwise_distances(x, c)
    assert len(calls) == 1 and calls[0] >= on_centre > 300
    tol = dict(rtol=1e-12, atol=0.0) if dtype == torch.float64 else dict(rtol=2.5e-7, atol=0.0)
    torch.testing.assert_close(result.double(), expected, **tol)
    assert bool((result[expected[:, 0] == 0, 0] == 0).all())
    calls.clear()
    batched = pairwise_distances(x, torch.stack([c, c.flip(0)]))
    assert len(calls) == 2
    torch.testing.assert_close(batched[1].double(), expected.flip(1), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_distances_with_autograd_match_those_written_in_place(dtype):
    """Without autograd the blocks are written into the output (float64) or
    one reused buffer (float32); with it they stay differentiable, equal."""
    g = torch.Generator().manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(3000, 3, generator=g, dtype=torch.float64)).to(dtype)
    c = torch.cat([x[:40], x[40:41] + 1e3]).unsqueeze(0).repeat(2, 1, 1)
    c[1] += 0.25
    plain = pairwise_distances(x, c)
    x_grad = x.clone().requires_grad_()
    tracked = pairwise_distances(x_grad, c)
    torch.testing.assert_close(tracked.detach(), plain, rtol=0.0, atol=0.0)
    tracked.sum().backward()
    expected = (2 * (x.double()[None, :, None] - c.double()[:, None])).sum((0, 2))
    torch.testing.assert_close(x_grad.grad.double(), expected, rtol=1e-6, atol=1e-6)
    assert bool((plain[0, torch.arange(40), torch.arange(40)] == 0).all())


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_distances_measure_entries_again_in_pieces_of_one_buffer(monkeypatch, dtype):
    """On the host the entries measured again take their differences in
    cache-sized pieces of one reused buffer: every piece lands where it goes."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    # Pieces of 5 entries (and blocks of 256 rows).
    monkeypatch.setattr(distances_module, "_PAIRWISE_BLOCK_BYTES", 5 * 40 * 8)
    g = torch.Generator().manual_seed(0)
    centres = 100.0 * torch.randn(6, 40, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (300,), generator=g)
    x = (centres[labels] + 1e-5 * torch.randn(300, 40, generator=g, dtype=torch.float64)).to(dtype)
    c = centres.to(dtype)
    expected = (x.double()[:, None] - c.double()[None]).square().sum(-1)
    got = pairwise_distances(x, c).double()
    assert ((got - expected).abs() <= 2.0**-23 * expected).all()


def test_pairwise_distances_measure_every_entry_again_a_block_of_rows_at_a_time(monkeypatch):
    """Where the expansion cannot reach the precision asked (float32 blocks on
    MPS beyond 124 features), every entry is measured from differences: as
    many at a time as the block has rows, still differentiable."""
    distances_module = importlib.import_module("torchkmeans.functional.distances")
    monkeypatch.setattr(distances_module, "_TRUSTED_PRECISION", 1e-30)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g, dtype=torch.float64)
    c = torch.randn(6, 7, generator=g, dtype=torch.float64).requires_grad_()
    vector_norm = torch.linalg.vector_norm
    sizes = []

    def counted(a, *args, **kwargs):
        sizes.append(a.shape[0])
        return vector_norm(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", counted)
    got = pairwise_distances(x, c)
    expected = (x[:, None] - c.detach()[None]).square().sum(-1)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-15, atol=0.0)
    # The centroids' norms, the block's rows' norms, then the entries.
    assert sizes[2:] == [50] * 6
    got.sum().backward()
    assert c.grad is not None


@pytest.mark.parametrize("d", [1, 2, 3])
def test_pairwise_distances_of_narrow_rows_sum_norms_by_a_product(monkeypatch, d):
    """torch's sum over a last dimension of 2 or 3 is 10x slower than a
    product with ones: narrow rows' squared norms take the product, exactly."""
    calls = []
    vecdot = torch.linalg.vecdot
    monkeypatch.setattr(torch.linalg, "vecdot", lambda a, b: calls.append(a.shape) or vecdot(a, b))
    x = torch.randn(5000, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = x[:4].clone()
    got = pairwise_distances(x, c)
    assert all(shape[-2] <= 4 for shape in calls), calls
    expected = (x[:, None] - c[None]).square().sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert bool((got[torch.arange(4), torch.arange(4)] == 0).all())


@on_the_cpu_paths_only
def test_pairwise_distances_to_few_narrow_centroids_take_bounded_blocks(monkeypatch):
    """Two 2-D centroids fit 100,000 rows in a cache-sized distance block, but
    the rows' own temporaries were fresh pages: blocks are bounded in rows."""
    rows = []
    baddbmm_ = torch.Tensor.baddbmm_
    monkeypatch.setattr(
        torch.Tensor,
        "baddbmm_",
        lambda t, *a, **k: rows.append(t.numel() // 2) or baddbmm_(t, *a, **k),
    )
    x = torch.randn(100_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = pairwise_distances(x, x[:2])
    assert len(rows) > 1 and max(rows) <= 1 << 15
    torch.testing.assert_close(got, (x[:, None] - x[None, :2]).square().sum(-1))


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n", "d", "k"), [(9001, 64, 8), (40_001, 2, 3), (2001, 300, 32), (901, 600, 1)]
)
def test_pairwise_distances_to_few_centroids_are_computed_as_columns(monkeypatch, dtype, n, d, k):
    """Few centroids on the CPU: each block is a (k, m) product (MKL's skinny
    (m, k) one took 1.6-2.5x its time on AMD), copied transposed into the
    (n, k) output; over several blocks, a shorter last one, a batch and
    strided rows, equal to the distances from differences."""
    shapes = []
    baddbmm_ = torch.Tensor.baddbmm_
    monkeypatch.setattr(
        torch.Tensor,
        "baddbmm_",
        lambda t, *a, **kw: shapes.append(t.shape) or baddbmm_(t, *a, **kw),
    )
    g = torch.Generator().manual_seed(0)
    wide = 1e3 + torch.randn(2, n, d + 1, generator=g, dtype=torch.float64)
    x = wide[0, :, 1:].to(dtype)
    c = torch.stack([x[:k], x[k : 2 * k] + 0.5])
    expected = (x.double()[None, :, None] - c.double()[:, None]).square().sum(-1)
    got = pairwise_distances(x, c)
    assert len(shapes) > 1 and all(s[:2] == (2, k) for s in shapes), shapes
    assert sum(s[2] for s in shapes) == x.shape[0]
    tol = dict(rtol=1e-9, atol=0.0) if dtype == torch.float64 else dict(rtol=2.5e-7, atol=0.0)
    torch.testing.assert_close(got.double(), expected, **tol)
    assert got.is_contiguous() and got.dtype == dtype
    assert bool((got[0, torch.arange(k), torch.arange(k)] == 0).all())
    torch.testing.assert_close(pairwise_distances(x, c[1]), got[1], rtol=0.0, atol=0.0)


def test_large_host_outputs_ask_for_huge_pages(monkeypatch):
    """transform's n x k distances are backed by huge pages where Linux gives
    them, as numpy's arrays are (4 KiB page faults had been half its time)."""
    from torchkmeans.functional import _device

    calls = []
    monkeypatch.setattr(_device, "_madvise", lambda *args: calls.append(args) or 0)
    x = torch.randn(20_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = pairwise_distances(x, x[:64])
    assert len(calls) == 1
    start, length, advice = calls[0]
    assert advice == _device._MADV_HUGEPAGE
    assert start % _device._HUGE_PAGE == 0 and length % _device._HUGE_PAGE == 0 and length > 0
    assert out.data_ptr() <= start and start + length <= out.data_ptr() + out.numel() * 8
    calls.clear()
    pairwise_distances(x[:100], x[:64])  # small: left to the allocator
    assert not calls


def _allocated_bytes(fn) -> int:
    """Bytes of host memory that ``fn()`` allocates (freed or not), by torch's profiler."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as profile:
        fn()
    return sum(max(0, event.self_cpu_memory_usage) for event in profile.key_averages())


@on_the_cpu_paths_only
@pytest.mark.parametrize("k", [8, 64, 256])
def test_pairwise_distances_allocate_little_but_their_output_from_the_second_call(k):
    """transform of 1,000 x 256 float32 rows had taken 2-3x scikit-learn's time
    (k=64-256): its float64 temporaries (the rows' centred copy, their squares,
    the scores, the centroids') were allocated in every call, and faulted in
    page by page each time the C allocator had handed them back to Linux.
    They are kept for the next call; it allocates the output and vectors."""
    g = torch.Generator().manual_seed(0)
    x = 3.0 + torch.randn(1000, 256, generator=g)
    c = 5.0 * torch.randn(k, 256, generator=g)
    first = pairwise_distances(x, c)
    allocated = _allocated_bytes(lambda: pairwise_distances(x, c))
    output = first.numel() * first.element_size()
    assert allocated <= output + 64 * 1024, (allocated, output)
    expected = (x.double()[:, None] - c.double()[None]).square().sum(-1)
    torch.testing.assert_close(pairwise_distances(x, c).double(), expected, rtol=2.5e-7, atol=0.0)
    # Another shape in the same buffers, and the first again: nothing stale.
    pairwise_distances(x[:10, :7], c[:3, :7])
    assert torch.equal(pairwise_distances(x, c), first)


def test_reused_buffers_are_kept_per_thread_and_outside_inference_mode():
    """_device.reused: the same memory for the next call of a site on a thread,
    another thread's own, a fresh tensor beyond the cap; first asked for in
    inference mode, it is still written outside it."""
    import threading

    with torch.inference_mode():
        first = _device.reused("test site", (4, 8), torch.float64).fill_(1.0)
    again = _device.reused("test site", (2, 3), torch.float32)
    again.fill_(2.0)  # outside inference mode: a normal tensor
    assert again.data_ptr() == first.data_ptr()
    other = []
    thread = threading.Thread(
        target=lambda: other.append(_device.reused("test site", (4, 8), torch.float64).data_ptr())
    )
    thread.start()
    thread.join()
    assert other[0] != first.data_ptr()
    cap = _device._REUSED_MAX_BYTES
    large = _device.reused("test site", (cap // 8 + 1,), torch.float64)
    assert large.data_ptr() != first.data_ptr()
    assert _device.reused("test site", (4, 8), torch.float64).data_ptr() == first.data_ptr()


def test_pairwise_distances_with_autograd_keep_their_gradients_over_later_calls():
    """Autograd records the centred centroids: they are never a reused buffer
    that a later call would write over before the backward pass."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, dtype=torch.float64, generator=g)
    c = torch.randn(4, 6, dtype=torch.float64, generator=g).requires_grad_()
    tracked = pairwise_distances(x, c)
    pairwise_distances(x + 100.0, c.detach() * 3.0)  # a later call, without autograd
    tracked.sum().backward()
    expected = 2.0 * (c.detach()[:, None] - x[None]).sum(1)
    torch.testing.assert_close(c.grad, expected)


def test_block_rows_respects_the_budget():
    rows = block_rows(10**6, 1024, itemsize=4, memory_budget=2**20, device=torch.device("cuda"))
    assert rows * 1024 * 4 <= 2**20
    assert block_rows(10, 1024, memory_budget=10**9) == 10
    assert block_rows(10**6, 10**9, memory_budget=1) == 1


def test_scatter_sums_with_weights():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    sums, counts = scatter_sums(
        x, torch.tensor([1, 1, 0]), 3, sample_weight=torch.tensor([1.0, 2.0, 0.5])
    )
    torch.testing.assert_close(sums, torch.tensor([[2.5, 3.0], [7.0, 10.0], [0.0, 0.0]]))
    torch.testing.assert_close(counts, torch.tensor([0.5, 3.0, 0.0]))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.integers(1, 20),
    k=st.integers(1, 12),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_scatter_sums_of_one_problem_match_the_batched_path_and_numpy(n, d, k, weighted, seed):
    # One problem on the CPU takes its own path (index_add_ and bincount);
    # the same problem twice in a batch takes the general one.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    w = torch.rand(n, generator=g, dtype=torch.float64) if weighted else None
    sums, counts = scatter_sums(x, labels, k, sample_weight=w)
    batch_w = None if w is None else torch.stack([w, w])
    batch_sums, batch_counts = scatter_sums(
        torch.stack([x, x]), torch.stack([labels, labels]), k, sample_weight=batch_w
    )
    torch.testing.assert_close(sums, batch_sums[1])
    torch.testing.assert_close(counts, batch_counts[1])
    weights = np.ones(n) if w is None else w.numpy()
    expected = np.zeros((k, d))
    np.add.at(expected, labels.numpy(), x.numpy() * weights[:, None])
    np.testing.assert_allclose(sums.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(counts.numpy(), np.bincount(labels.numpy(), weights, k), rtol=1e-12)
    assert sums.dtype == counts.dtype == torch.float64


@on_the_cpu_paths_only
def test_batched_scatter_sums_equal_separate_problems_and_refuse_foreign_labels():
    x = torch.arange(6.0).reshape(2, 3, 1)
    labels = torch.tensor([[0, 1, 1], [1, 0, 0]])
    sums, counts = scatter_sums(x, labels, 2)
    for problem in range(2):
        alone = scatter_sums(x[problem], labels[problem], 2)
        torch.testing.assert_close(sums[problem], alone[0])
        torch.testing.assert_close(counts[problem], alone[1])
    # Flattened with an offset of k per problem, label -1 of the second
    # problem was added into the first problem's last cluster, silently.
    with pytest.raises(ValueError, match=r"Expected labels in \[0, n_clusters=2\), got values"):
        scatter_sums(x, torch.tensor([[0, 0, 0], [-1, 0, 0]]), 2)
    with pytest.raises(ValueError, match=r"from 0 to 2\."):
        scatter_sums(x, torch.tensor([[0, 0, 2], [0, 0, 0]]), 2)


def test_foreign_labels_of_a_batch_fail_a_device_assertion_on_the_accelerator(
    accelerator_paths,
):
    # Off the host the bounds are not read (a synchronisation): label -1 of the
    # second problem was added silently into the first problem's last cluster.
    x = torch.arange(6.0).reshape(2, 3, 1)
    with pytest.raises(RuntimeError, match=r"Expected labels in \[0, n_clusters=2\)"):
        scatter_sums(x, torch.tensor([[0, 0, 0], [-1, 0, 0]]), 2)
    _, counts = scatter_sums(x, torch.tensor([[0, 1, 1], [1, 0, 0]]), 2)
    assert counts.tolist() == [[1.0, 2.0], [2.0, 1.0]]


def test_half_precision_sums_accumulate_in_float32():
    x = torch.full((4096, 1), 1.0, dtype=torch.float16)
    sums, counts = scatter_sums(x, torch.zeros(4096, dtype=torch.int64), 1)
    assert sums.dtype == torch.float32
    assert float(sums[0, 0]) == 4096.0 and float(counts[0]) == 4096.0


def test_centroids_from_sums_never_gives_nan():
    sums = torch.zeros(2, 3)
    out = centroids_from_sums(sums, torch.zeros(2), torch.ones(2, 3))
    assert torch.equal(out, torch.ones(2, 3))


@pytest.mark.parametrize("host", [True, False], ids=["cpu", "accelerator"])
def test_empty_clusters_take_the_heaviest_centroid_as_sklearn(host, monkeypatch):
    """scikit-learn's _average_centers: an empty cluster takes the heaviest
    cluster's centroid, the first on ties, copied before that cluster is
    averaged when it comes later (its sum undivided); spherical k-means
    copies the unit centroid. Padding clusters of a batch keep theirs."""
    from torchkmeans.functional import _device
    from torchkmeans.functional.updates import copies_of_heaviest

    monkeypatch.setattr(_device, "on_host", lambda device: host)
    sums = torch.tensor([[[0.0, 0.0], [6.0, 3.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]])
    counts = torch.tensor([[0.0, 3.0, 0.0, 3.0, 0.0]])
    previous = torch.full((1, 5, 2), 9.0)
    out = centroids_from_sums(sums, counts, previous, empty="heaviest")
    expected = [[6.0, 3.0], [2.0, 1.0], [2.0, 1.0], [2.0 / 3, 2.0 / 3], [2.0, 1.0]]
    torch.testing.assert_close(out[0], torch.tensor(expected))
    cosine = centroids_from_sums(sums, counts, previous, metric="cosine", empty="heaviest")
    assert torch.equal(cosine[0, [0, 2, 4]], cosine[0, [1, 1, 1]])
    active = torch.tensor([[True, True, True, True, False]])
    out = centroids_from_sums(sums, counts, previous, empty="heaviest", active=active)
    assert torch.equal(out[0, 4], previous[0, 4])
    # The rows of copies go to the first: the others are masked off the CPU.
    assert copies_of_heaviest(counts).tolist() == [[False, False, True, False, True]]
    assert copies_of_heaviest(counts, "cosine").tolist() == [[False, True, True, False, True]]
    assert copies_of_heaviest(counts, active=active).tolist() == [
        [False, False, True, False, False]
    ]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_one_pass_gives_the_heaviest_update_and_its_copies(metric):
    """Lloyd's loops off the CPU take the update and the copies it made in
    one pass (centroids_and_distinct): the same as the two functions."""
    from torchkmeans.functional.updates import centroids_and_distinct, copies_of_heaviest

    generator = torch.Generator().manual_seed(0)
    sums = torch.randn(40, 6, 3, generator=generator, dtype=torch.float64)
    counts = torch.randint(0, 3, (40, 6), generator=generator).double()
    counts[0] = 0.0  # every cluster empty
    sums[counts == 0] = 0.0
    previous = torch.randn(40, 6, 3, generator=generator, dtype=torch.float64)
    for active in (None, torch.rand(40, 6, generator=generator) < 0.8):
        centroids, distinct = centroids_and_distinct(
            sums, counts, previous, metric=metric, active=active
        )
        expected = centroids_from_sums(
            sums, counts, previous, metric=metric, empty="heaviest", active=active
        )
        assert torch.equal(centroids, expected)
        mask = torch.ones_like(distinct) if active is None else active
        copies = copies_of_heaviest(counts, metric, active)
        assert torch.equal(distinct & mask, ~copies & mask)


def test_a_lloyd_iteration_off_the_cpu_dispatches_few_operations(accelerator_paths):
    """Each operation is a kernel launch on a GPU, which small fits pay per
    iteration. The empty-cluster update and the mask of the copies it made
    found the heaviest cluster twice: 117 operations an iteration (95
    before that rule), the fits on the tutorial data 15-20% slower (no
    timing here: the count)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    from torchkmeans.cli import tutorial_data

    x = torch.tensor(tutorial_data())
    counted = []
    for max_iter in (2, 6):
        with Count() as count:
            result = lloyd(x, x[[0, 5, 9, 20]], max_iter=max_iter, tol=0.0)
        assert int(result.n_iter) == max_iter
        counted.append(count.n)
    assert (counted[1] - counted[0]) / 4 <= 108


@pytest.mark.parametrize("weighted", [False, True])
def test_lloyd_matches_reference_exactly(weighted):
    x = blobs(n=300, d=4, k=5, seed=3)
    rng = np.random.default_rng(3)
    start = x[rng.choice(len(x), 5, replace=False)]
    w = rng.uniform(0.1, 3.0, size=len(x)) if weighted else None
    c_ref, l_ref, inertia_ref, n_ref = reference.lloyd(x, start, sample_weight=w)
    got = lloyd(
        torch.tensor(x),
        torch.tensor(start),
        sample_weight=None if w is None else torch.tensor(w),
    )
    np.testing.assert_allclose(got.centroids.numpy(), c_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(got.labels.numpy(), l_ref)
    assert float(got.inertia) == pytest.approx(inertia_ref, rel=1e-10)
    assert int(got.n_iter) == n_ref


def test_empty_clusters_are_reseeded_like_the_reference():
    # Two centroids start far from every point: both clusters are empty after
    # the first assignment and take the two farthest points.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [30.0]])
    start = np.array([[0.0], [100.0], [200.0]])
    c_ref, l_ref, _, n_ref = reference.lloyd(x, start)
    got = lloyd(torch.tensor(x), torch.tensor(start))
    assert not torch.isnan(got.centroids).any()
    np.testing.assert_allclose(got.centroids.numpy(), c_ref)
    np.testing.assert_array_equal(got.labels.numpy(), l_ref)
    assert int(got.n_iter) == n_ref


def test_batched_lloyd_equals_separate_runs(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 200, 4, generator=gen, dtype=dtype)
    starts = torch.stack([xi[:6] for xi in x]).clone()
    batched = lloyd(x, starts)
    for i in range(3):
        single = lloyd(x[i], starts[i])
        torch.testing.assert_close(batched.centroids[i], single.centroids, **tolerance(dtype))
        assert torch.equal(batched.labels[i], single.labels)
        assert int(batched.n_iter[i]) == int(single.n_iter)


def test_restarts_on_shared_data_equal_separate_runs():
    x = torch.tensor(blobs(n=400, d=3, k=6, seed=2))
    starts = torch.stack([x[i * 7 : i * 7 + 6] for i in range(4)]).clone()
    batched = lloyd(x, starts)
    for i in range(4):
        single = lloyd(x, starts[i])
        torch.testing.assert_close(batched.centroids[i], single.centroids)
        assert int(batched.n_iter[i]) == int(single.n_iter)


@pytest.mark.parametrize("k", [5, 24, 150], ids=["one-hot-sums", "index-add-sums", "row-layout"])
@pytest.mark.parametrize("weighted", [False, True])
def test_shared_data_restarts_leave_the_batch_and_follow_moved_points_exactly(
    monkeypatch, k, weighted
):
    """Restarts on shared data: converged ones leave the batch, and the totals
    follow only the points that change cluster (refreshed in full every few
    iterations and after a relocation). Each restart equals its separate run."""
    lloyd_module = __import__("importlib").import_module("torchkmeans.functional.lloyd")
    gen = torch.Generator().manual_seed(5)
    # Uniform data: restarts need many (and different numbers of) iterations.
    x = torch.rand(1500, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(1500, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    starts = torch.stack([x[torch.randperm(1500, generator=gen)[:k]] for _ in range(4)])
    starts[1, -2:] += 50.0  # two clusters start empty in one restart: relocation
    batched = lloyd(x, starts, sample_weight=w, tol=0.0)
    assert int(batched.n_iter.max()) > lloyd_module._REFRESH_EVERY
    assert len(set(batched.n_iter.tolist())) > 1
    monkeypatch.setattr(lloyd_module, "_REFRESH_EVERY", 1)  # full sums every iteration
    recomputed = lloyd(x, starts, sample_weight=w, tol=0.0)
    torch.testing.assert_close(batched.centroids, recomputed.centroids, rtol=1e-12, atol=1e-12)
    assert torch.equal(batched.labels, recomputed.labels)
    for i in range(4):
        single = lloyd(x, starts[i], sample_weight=w, tol=0.0)
        torch.testing.assert_close(batched.centroids[i], single.centroids, rtol=1e-10, atol=1e-10)
        assert torch.equal(batched.labels[i], single.labels)
        assert int(batched.n_iter[i]) == int(single.n_iter)
        torch.testing.assert_close(batched.inertia[i], single.inertia, rtol=1e-12, atol=0)
        # A restart that left the batch records no inertia after its last iteration.
        assert torch.isnan(batched.inertia_history[i, int(single.n_iter) :]).all()


@on_the_cpu_paths_only
@pytest.mark.parametrize("shape", [(300, 2), (70_000, 3), (3, 9_000, 17), (20_000, 385)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_prepare_in_blocks_on_the_host_equals_the_ops_on_the_copy(monkeypatch, shape, dtype):
    """On the CPU, prepare centres x into its copy and takes the squared norms
    block by block, from one read of x for the mean: the same values, bit
    for bit, and the same layout as the copy centred op by op (the
    accelerator's path), weights included."""
    from torchkmeans.functional.lloyd import prepare

    generator = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=generator) * 5 + 3).to(dtype)
    w = torch.rand(shape[-2], generator=generator)
    blocks = prepare(x, sample_weight=w)
    monkeypatch.setattr(_device, "on_host", lambda device: False)
    ops = prepare(x, sample_weight=w)
    for field in ("x", "x_aug", "x_sq", "weights", "offset", "mean_variance"):
        assert torch.equal(getattr(blocks, field), getattr(ops, field)), field
        assert getattr(blocks, field).stride() == getattr(ops, field).stride(), field


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init", ["k-means++", "random", "array", "callable"])
@pytest.mark.parametrize(
    ("d", "k", "shift", "weighted"), [(64, 8, 0.0, False), (130, 40, 1e4, True), (50, 3, 3.0, True)]
)
def test_a_fit_without_the_centred_copy_equals_one_with_it(
    monkeypatch, dtype, init, d, k, shift, weighted
):
    """Rows the fused kernel fits are centred as it reads them, k-means++
    candidates too: no copy of the data, and the same seeds, iterations,
    centroids, labels and inertia, bit for bit, as a fit on the centred copy
    (rows far from the origin and weighted rows included)."""
    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")
    generator = torch.Generator().manual_seed(d + k)
    centres = torch.randn(k, d, generator=generator, dtype=torch.float64) * 3
    picks = torch.randint(0, k, (6000,), generator=generator)
    x = centres[picks] + torch.randn(6000, d, generator=generator, dtype=torch.float64) + shift
    x = x.to(dtype)
    w = torch.rand(6000, generator=generator, dtype=dtype) + 0.5 if weighted else None
    starts = {
        "array": x[:k].clone(),
        "callable": lambda rows, n_clusters, g: rows[-n_clusters:].clone(),
    }.get(init, init)
    n_init = 3 if init == "random" else 1
    prepared = []
    real_prepare = lloyd_module.prepare

    def spy(*args, **kwargs):
        prep = real_prepare(*args, **kwargs)
        prepared.append(prep)
        return prep

    monkeypatch.setattr(lloyd_module, "prepare", spy)
    fits = []
    for copy in (False, True):
        if copy:
            monkeypatch.setattr(lloyd_module, "_centres_on_read", lambda *args: False)
        fits.append(
            kmeans(
                x,
                k,
                init=starts,
                n_init=n_init,
                sample_weight=w,
                max_iter=40,
                generator=torch.Generator().manual_seed(1),
            )
        )
    read, copied = prepared
    assert read.centred_on_read and read.x.data_ptr() == x.data_ptr() and read.x_aug.numel() == 0
    assert not copied.centred_on_read
    for field in ("offset", "x_sq", "mean_variance"):
        assert torch.equal(getattr(read, field), getattr(copied, field)), field
    for field, got, expected in zip(fits[0]._fields, *fits):
        assert torch.equal(got.isnan(), expected.isnan()), field
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), field


@on_the_cpu_paths_only
def test_an_empty_cluster_of_a_fit_without_the_copy_is_reseeded_as_with_it(monkeypatch):
    """A start whose centroid no row is nearest: the fit reseeds it from rows
    it centres as it takes them, still without a copy of the data, and ends
    as a fit on the centred copy does."""
    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5000, 64, generator=generator)
    w = torch.rand(5000, generator=generator) + 0.5
    start = x[:6].clone()
    start[5] = 1e3  # far from every row: empty after the first pass
    copies = []
    real_copied = lloyd_module._copied
    monkeypatch.setattr(
        lloyd_module,
        "_copied",
        lambda prep: copies.append(prep.centred_on_read) or real_copied(prep),
    )
    fits = []
    for copy in (False, True):
        if copy:
            monkeypatch.setattr(lloyd_module, "_centres_on_read", lambda *args: False)
        fits.append(kmeans(x, 6, init=start, sample_weight=w, max_iter=30))
    assert True not in copies  # no copy made for the reseeding
    read, copied = fits
    assert (torch.bincount(read.labels, minlength=6) > 0).all()
    for field, got, expected in zip(read._fields, read, copied):
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), field


@on_the_cpu_paths_only
def test_only_rows_the_kernel_fits_skip_the_copy():
    """No copy: euclidean, contiguous float32/float64 rows on the CPU that
    the kernel fits outside its column layout, k-means++ where the kernel
    seeds them. Otherwise (cosine, half precision, rows of a wider tensor,
    narrow rows, float32 rows of 20 features seeded by k-means++) the copy."""
    lloyd_module = importlib.import_module("torchkmeans.functional.lloyd")
    read = lloyd_module._centres_on_read
    x = torch.randn(2000, 64)
    if not _native.available():
        assert not read(x, 8, "euclidean", "k-means++")
        return
    assert read(x, 8, "euclidean", "k-means++") and read(x.double(), 8, "euclidean", "random")
    assert read(x, 8, "euclidean", "random", 10) and not read(x, 8, "euclidean", "k-means++", 3)
    assert not read(x[:, :20], 8, "euclidean", "random")  # rows not contiguous
    assert not read(x, 8, "cosine", "random")
    assert not read(x.half(), 8, "euclidean", "random")
    assert not read(x[:, :1].contiguous(), 8, "euclidean", "random")
    assert not read(x[:, :4].contiguous(), 8, "euclidean", "random")  # the column layout's
    assert not read(x[:, :20].contiguous(), 8, "euclidean", "k-means++")  # seeded by PyTorch ops
    with pytest.raises(ValueError, match="centred_on_read only"):
        lloyd_module.prepare(x, metric="cosine", centred_on_read=True)  # would normalise x itself


@pytest.mark.parametrize("seed", range(4))
def test_one_problem_warm_pass_equals_comparing_all_labels(monkeypatch, seed):
    """One problem on the CPU: the rows the warm pass reports as changed decide the
    followed sums and strict convergence, exactly as comparing all labels does."""
    from torchkmeans.functional.lloyd import prepare, run_lloyd

    lloyd_module = __import__("importlib").import_module("torchkmeans.functional.lloyd")
    x = torch.tensor(blobs(n=4000, d=3, k=12, seed=seed, spread=2.0))
    prep = prepare(x)
    start = prep.x[:, torch.randperm(4000, generator=torch.Generator().manual_seed(seed))[:12]]
    warm = run_lloyd(prep, start.clone(), tol=0.0, small_path=False)
    monkeypatch.setattr(lloyd_module, "_WARM_START_MIN_ELEMENTS", 2**62)  # no warm pass
    compared = run_lloyd(prep, start.clone(), tol=0.0, small_path=False)
    assert int(compared.n_iter) > 5
    assert torch.equal(warm.n_iter, compared.n_iter)
    assert torch.equal(warm.labels, compared.labels)
    torch.testing.assert_close(warm.centroids, compared.centroids, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(warm.inertia_history, compared.inertia_history, equal_nan=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_one_problem_following_moved_points_equals_full_sums(monkeypatch, weighted):
    """The general loop on one problem also follows the moved points once few move."""
    from torchkmeans.functional.lloyd import prepare, run_lloyd

    lloyd_module = __import__("importlib").import_module("torchkmeans.functional.lloyd")
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3000, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(3000, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    prep = prepare(x, sample_weight=w)
    start = prep.x[:, :40].clone()
    start[0, -3:] += 30.0  # empty clusters: relocation resets the followed sums
    monkeypatch.setattr(lloyd_module, "_FOLLOW_MAX_MOVED", 1.0)  # follow whenever possible
    followed = run_lloyd(prep, start, tol=0.0, small_path=False)
    monkeypatch.setattr(lloyd_module, "_REFRESH_EVERY", 1)  # full sums every iteration
    full = run_lloyd(prep, start, tol=0.0, small_path=False)
    assert int(full.n_iter) > 16
    assert torch.equal(followed.n_iter, full.n_iter)
    assert torch.equal(followed.labels, full.labels)
    torch.testing.assert_close(followed.centroids, full.centroids, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(followed.inertia, full.inertia, rtol=1e-12, atol=0)


def test_kmeans_keeps_the_best_restart():
    x = torch.tensor(blobs(n=500, d=2, k=8, seed=5))
    one = [
        kmeans(x, 8, n_init=1, generator=torch.Generator().manual_seed(s)).inertia for s in range(5)
    ]
    best = kmeans(x, 8, n_init=10, generator=torch.Generator().manual_seed(0)).inertia
    assert float(best) <= max(float(i) for i in one)


def test_kmeans_takes_a_numpy_int_n_init_like_its_other_counts():
    # n_clusters, max_iter and the estimators' n_init take numpy ints (a
    # sweep's grid); n_init=np.int64(3) was refused with "n_init=np.int64(3)
    # should be 'auto' or an int >= 1."
    x = torch.tensor(blobs(n=200, d=2, k=4, seed=2))
    given = kmeans(x, 4, n_init=np.int64(3), generator=torch.Generator().manual_seed(0))
    plain = kmeans(x, 4, n_init=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(given.labels, plain.labels) and torch.equal(given.inertia, plain.inertia)
    with pytest.raises(ValueError, match=r"n_init=2\.0 should be 'auto' or an int >= 1\."):
        kmeans(x, 4, n_init=2.0)


def test_kmeans_plusplus_picks_distinct_far_apart_points():
    x = torch.tensor(blobs(n=400, d=2, k=4, seed=1, spread=50.0))
    centroids, indices = kmeans_plusplus(x, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(centroids, x[indices])
    assert len(set(indices.tolist())) == 4
    gaps = torch.cdist(centroids, centroids) + torch.eye(4) * 1e9
    assert float(gaps.min()) > 20.0  # one seed per well-separated blob


@pytest.mark.parametrize("n_problems", [None, 2])
def test_kmeans_plusplus_scores_half_precision_in_float32(n_problems):
    # Rows of norm ~ 800: their squared norms overflow float16 (max 65504),
    # which had made every distance inf or NaN and repeated row 0 as a seed.
    x = torch.tensor(blobs(n=400, d=2, k=4, seed=1, spread=500.0)).half()
    seeds = [
        kmeans_plusplus(data, 4, n_problems=n_problems, generator=torch.Generator().manual_seed(0))
        for data in (x, x.float())
    ]
    (centroids, indices), (_, expected) = seeds
    assert centroids.dtype == torch.float16
    assert torch.equal(indices, expected)
    assert len(set(indices.reshape(-1, 4)[0].tolist())) == 4


@pytest.mark.parametrize("accelerator", [False, True], ids=["host", "accelerator"])
@pytest.mark.parametrize("n_problems", [None, 3])
def test_kmeans_plusplus_seeds_float32_data_far_from_the_origin(request, accelerator, n_problems):
    # 1e5 + well-separated blobs: scored uncentred, the expansion's float32
    # rounding (~1e3) swamped the distances (~1e2) and seeds merged blobs.
    if accelerator:
        request.getfixturevalue("accelerator_paths")
    data = blobs(n=400, d=2, k=4, seed=1, spread=20.0)
    centres = np.random.default_rng(1).normal(scale=20.0, size=(4, 2))  # blobs' own
    labels = ((data[:, None] - centres) ** 2).sum(-1).argmin(1)
    x = torch.tensor(1e5 + data, dtype=torch.float32)
    for seed in range(5):
        centroids, indices = kmeans_plusplus(
            x, 4, n_problems=n_problems, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(centroids, x[indices])  # the caller's coordinates
        for problem in indices.reshape(-1, 4):
            assert len(set(labels[problem.numpy()].tolist())) == 4


def test_kmeans_plusplus_respects_zero_weights():
    x = torch.arange(20.0).reshape(10, 2)
    w = torch.zeros(10)
    w[[2, 7]] = 1.0
    _, indices = kmeans_plusplus(x, 2, sample_weight=w, generator=torch.Generator().manual_seed(0))
    assert sorted(indices.tolist()) == [2, 7]


def _native_seed_scorer(x):
    init_module = importlib.import_module("torchkmeans.functional.init")
    if init_module._native.seed_scores(x.dtype) is None:
        pytest.skip("the native kernel is not built here")
    scorer = init_module._seed_scorer(x)
    if scorer is None:
        pytest.skip("rows this narrow take PyTorch's ops on this machine")
    return scorer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    "n, d, m, threads",
    [(1, 3, 1, 1), (7, 2, 3, 1), (1001, 17, 10, 2), (3000, 1024, 7, 2), (150, 4, 8, 1)],
)
@pytest.mark.parametrize("centred", [False, True])
def test_kmeans_plusplus_native_scores_are_the_distances_and_potentials(
    dtype, metric, weighted, n, d, m, threads, centred
):
    # One pass per k-means++ step: the candidates' distances lowered to the
    # closest so far, and their (weighted) sums; candidates of many features
    # are scored a few at a time against several rows (the wide groups).
    # With an offset (euclidean): those of the rows less the offset, centred
    # as the kernel reads them (the candidates too).
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator, dtype=dtype)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    offset = None
    rows = x
    if centred and metric == "euclidean":
        offset = torch.randn(d, generator=generator, dtype=dtype) * 3
        x = x + offset
        rows = x - offset
    x_sq = (rows * rows).sum(1)
    index = torch.randint(0, n, (m,), generator=generator)
    closest = torch.rand(n, generator=generator, dtype=dtype) * 2 * d
    weights = torch.rand(n, generator=generator, dtype=dtype) if weighted else None
    to_candidates = torch.cdist(rows[index].double(), rows.double()) ** 2
    if metric == "cosine":
        to_candidates = 1 - x[index].double() @ x.double().T
    expected = torch.minimum(to_candidates, closest.double())
    potentials_expected = (expected * (1 if weights is None else weights.double())).sum(1)
    out = torch.full((m, n + 3), -1.0, dtype=dtype)
    potentials = torch.empty(m, dtype=torch.float64)
    init_module = importlib.import_module("torchkmeans.functional.init")
    scorer = init_module._native.seed_scores(dtype)
    if scorer is None:
        pytest.skip("the native kernel is not built here")
    scorer(
        x.data_ptr(),
        x.stride(0),
        n,
        d,
        None if offset is None else offset.data_ptr(),
        x_sq.data_ptr(),
        index.data_ptr(),
        m,
        closest.data_ptr(),
        None if weights is None else weights.data_ptr(),
        int(metric == "cosine"),
        threads,
        out.data_ptr(),
        n + 3,
        potentials.data_ptr(),
    )
    atol = 1e-4 * d if dtype == torch.float32 else 1e-10 * d
    torch.testing.assert_close(out[:, :n].double(), expected, rtol=1e-5, atol=atol)
    assert (out[:, n:] == -1.0).all()  # nothing written past each candidate's n rows
    torch.testing.assert_close(potentials, potentials_expected, rtol=1e-5, atol=atol * n)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n, d", [(1000, 3), (2000, 40), (70000, 24)])
@pytest.mark.parametrize("drawn_at_once", [4096, 3])
def test_kmeans_plusplus_with_the_native_kernel_seeds_as_the_pytorch_ops(
    monkeypatch, metric, weighted, n, d, drawn_at_once
):
    # The kernel only reorders the sums of the dot products: on data without
    # near ties the same draws choose the same seeds (d=3: the chosen one's
    # distances computed again; 70,000 rows: beyond one chunk of the loop;
    # the native loop's draws of 3 steps at a time: the same stream).
    init_module = importlib.import_module("torchkmeans.functional.init")
    monkeypatch.setattr(init_module, "_STEPS_DRAWN_AT_ONCE", drawn_at_once)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    _native_seed_scorer(x)
    weights = torch.rand(n, generator=generator, dtype=torch.float64) if weighted else None
    for k in (1, 5, 40):
        chosen = []
        for scorer in (init_module._seed_scorer, lambda x: None):
            with mock.patch.object(init_module, "_seed_scorer", scorer):
                chosen.append(
                    kmeans_plusplus(
                        x,
                        k,
                        sample_weight=weights,
                        metric=metric,
                        generator=torch.Generator().manual_seed(k),
                    )[1]
                )
        assert torch.equal(chosen[0], chosen[1])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_kmeans_plusplus_of_several_cpu_problems_seeds_as_the_batched_loop(
    monkeypatch, metric, weighted, shared
):
    # Restarts (n_problems) and data sets (3-D x) on the CPU run the native
    # loop one problem at a time, with the batched loop's draws (taken in two
    # generator calls, not one per step).
    init_module = importlib.import_module("torchkmeans.functional.init")
    # More steps than the single loop draws at once: the problems' own draws
    # are all there, none taken twice.
    monkeypatch.setattr(init_module, "_STEPS_DRAWN_AT_ONCE", 3)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2000, 12, generator=generator, dtype=torch.float64)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=-1)
    _native_seed_scorer(x[0])
    weights = torch.rand(3, 2000, generator=generator, dtype=torch.float64) if weighted else None
    if shared:
        x, weights = x[0], None if weights is None else weights[0]
    for k in (1, 4, 30):
        seeded = []
        calls = []
        for scorer in (init_module._seed_scorer, lambda x: None):
            with (
                mock.patch.object(init_module, "_seed_scorer", scorer),
                mock.patch.object(torch, "rand", wraps=torch.rand) as rand,
            ):
                seeded.append(
                    kmeans_plusplus(
                        x,
                        k,
                        n_problems=3 if shared else None,
                        sample_weight=weights,
                        metric=metric,
                        generator=torch.Generator().manual_seed(k),
                    )
                )
            calls.append(rand.call_count)
        assert calls == [2, k]
        (centroids, indices), (expected_centroids, expected) = seeded
        assert indices.shape == (3, k)
        assert torch.equal(indices, expected)
        assert torch.equal(centroids, expected_centroids)


@pytest.mark.parametrize("n_problems", [None, 3])
def test_kmeans_plusplus_native_loop_ignores_global_torch_defaults(
    torch_defaults_changed, n_problems
):
    # Its buffers and draws, made without device=, had landed on the default
    # device ("meta" here, "cuda" in a training script) and failed.
    x = torch.randn(3000, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _native_seed_scorer(x)
    expected = kmeans_plusplus(
        x, 6, n_problems=n_problems, generator=torch.Generator().manual_seed(0)
    )[1]
    with torch_defaults_changed():
        got = kmeans_plusplus(
            x, 6, n_problems=n_problems, generator=torch.Generator(device="cpu").manual_seed(0)
        )[1]
    assert got.device.type == "cpu"
    assert torch.equal(got, expected)


@on_the_cpu_paths_only
def test_kmeans_plusplus_leaves_many_narrow_rows_to_the_pytorch_ops():
    # The kernel's lanes hold features: 200,000 rows of 2 float32 features
    # seeded 3x slower by it than by PyTorch's ops, 32 features 1.2x; few
    # rows, or wide ones, take it.
    init_module = importlib.import_module("torchkmeans.functional.init")
    if init_module._native.seed_scores(torch.float32) is None:
        pytest.skip("the native kernel is not built here")
    assert init_module._seed_scorer(torch.zeros(5000, 2)) is None
    assert init_module._seed_scorer(torch.zeros(500, 2)) is not None
    assert init_module._seed_scorer(torch.zeros(5000, 256)) is not None
    if init_module._native.vector_bytes() == 64:
        # 10,000 x 32 float32, k=64: 1.2x PyTorch's time; float64 0.65x.
        assert init_module._seed_scorer(torch.zeros(5000, 32)) is None
        assert init_module._seed_scorer(torch.zeros(5000, 32, dtype=torch.float64)) is not None


def test_kmeans_plusplus_on_one_cpu_problem_draws_its_random_numbers_at_once():
    # A generator call per step was a fixed cost of every step (k=3 on iris:
    # a tenth of the seeding); the native loop draws all the steps' at once.
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _native_seed_scorer(x)
    with mock.patch.object(torch, "rand", wraps=torch.rand) as rand:
        kmeans_plusplus(x, 40, generator=torch.Generator().manual_seed(0))
    assert rand.call_count == 1


def test_random_init_is_without_replacement_and_weighted():
    x = torch.arange(12.0).reshape(6, 2)
    _, indices = random_init(x, 6, generator=torch.Generator().manual_seed(0))
    assert sorted(indices.tolist()) == list(range(6))
    w = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    _, indices = random_init(x, 2, sample_weight=w, generator=torch.Generator().manual_seed(0))
    assert sorted(indices.tolist()) == [2, 3]


def test_cosine_kmeans_returns_unit_centroids():
    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    x = directions.repeat_interleave(50, 0) * torch.rand(150, 1, generator=gen).add(0.5)
    x = x + 0.01 * torch.randn(150, 8, generator=gen)
    result = kmeans(x, 3, metric="cosine", n_init=5, generator=gen)
    torch.testing.assert_close(result.centroids.norm(dim=-1), torch.ones(3))
    assert result.labels.reshape(3, 50).unique(dim=1).shape[1] == 1  # each direction one cluster
    # noise of 0.01 per coordinate costs about 4e-4 per point; one wrong
    # cluster would cost about 1 per point.
    assert float(result.inertia) < 1.0


@pytest.mark.parametrize("paths", ["host", "accelerator"])
@pytest.mark.parametrize(
    "dtype, exponents",
    [(torch.float32, (70, 100, -70, -100, -140)), (torch.float64, (520, 1000, -520, -1060))],
    ids=["float32", "float64"],
)
def test_unit_rows_at_extreme_norms(request, paths, dtype, exponents):
    # torch.nn.functional.normalize returned 0 for float32 rows of norm
    # ~1e21 (|x|^2 overflows) and rows of norm 1e-12 * ~1e-13 for rows of
    # norm ~1e-25 (squares underflow, norm clamped at 1e-12); float64 alike
    # beyond 1e154 and below 1e-12.
    from torchkmeans.functional.distances import unit_rows

    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = unit_rows(x)
    assert torch.equal(expected, torch.nn.functional.normalize(x, dim=-1))
    for exponent in exponents[:-1]:
        # Scaling by a power of two is exact: the unit rows must be the same bits.
        assert torch.equal(unit_rows(x * 2.0**exponent), expected), exponent
    # Subnormal rows have lost bits of their own, not their direction.
    torch.testing.assert_close(unit_rows(x * 2.0 ** exponents[-1]), expected, rtol=0, atol=1e-2)
    zero = torch.zeros(2, 6, dtype=dtype)
    assert torch.equal(unit_rows(zero), zero)
    x[1] *= 2.0 ** exponents[0]
    unit_rows(x, out=x)
    assert torch.equal(x, expected)


def test_cosine_kmeans_is_invariant_to_extreme_row_norms():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=gen)
    expected = kmeans(x, 3, metric="cosine", generator=torch.Generator().manual_seed(1))
    for scale in (2.0**70, 2.0**-90):
        result = kmeans(x * scale, 3, metric="cosine", generator=torch.Generator().manual_seed(1))
        assert torch.equal(result.labels, expected.labels)
        torch.testing.assert_close(result.centroids, expected.centroids)
        assert float(result.inertia) == pytest.approx(float(expected.inertia), rel=1e-6)


@pytest.mark.parametrize("paths", ["host", "accelerator"])
@pytest.mark.parametrize("d", [2, 8, 64])
@pytest.mark.parametrize(
    "dtype, exponents",
    [(torch.float32, (60, 62, 64, 120)), (torch.float64, (500, 520, 1010))],
    ids=["float32", "float64"],
)
def test_nearest_centroids_of_rows_whose_squared_distances_overflow(
    request, paths, d, dtype, exponents
):
    # float32 rows near 2^62: scores |c|^2 - 2 x.c overflowed (inf - inf),
    # distances of inf were trusted by the check: at 2^64, d=8, 2,966 of
    # 3,000 labels were not the nearest centroid on the CPU paths (2,841 on
    # the accelerator's), and near float32's max every distance was NaN.
    # Scaled by a power of two, an exact change, every result must be the
    # unit-scale one scaled alike (distances in float64, inf only where the
    # true value is beyond it).
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    x = torch.randn(3000, d, generator=torch.Generator().manual_seed(0), dtype=dtype)
    c = x[:20] * 0.9
    expected = nearest_centroids(x, c)
    for exponent in exponents:
        far = nearest_centroids(x * 2.0**exponent, c * 2.0**exponent)
        assert torch.equal(far.labels, expected.labels), exponent
        assert not far.distances.isnan().any()
        torch.testing.assert_close(
            far.distances.double(),
            times_power_of_two(expected.distances.double(), 2 * exponent),
            rtol=1e-6,
            atol=0.0,
        )
    # A few rows far beyond the centroids: only those rows' scores overflow.
    exponent = exponents[1]
    rows = x.clone()
    rows[::100] *= 2.0**exponent
    centroids = c * 2.0 ** (exponent - 20)
    near = nearest_centroids(rows, centroids)
    half = exponent // 2
    exact = torch.cdist(
        times_power_of_two(rows.double(), -half),
        times_power_of_two(centroids.double(), -half),
        compute_mode="donot_use_mm_for_euclid_dist",
    ).square()
    # Nearest to within the precision of the distances (README).
    chosen = exact.gather(1, near.labels[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, exact.amin(1), rtol=1e-6, atol=0.0)
    assert (near.labels == exact.argmin(1)).double().mean() > 0.99
    torch.testing.assert_close(
        near.distances.double(), times_power_of_two(chosen, 2 * half), rtol=1e-6, atol=0.0
    )


@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_float32_rows_near_1e_minus_30_are_clustered_as_at_unit_scale(request, paths):
    # Their squared distances underflow float32: labels were ties (seeds and
    # labels at random) and the inertia 0. Scaled by 2^-100, an exact
    # change, every result must be the unit-scale one scaled alike.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    x = torch.from_numpy(blobs(n=200, d=3, k=4).astype(np.float32))
    tiny = x * 2.0**-100
    expected = kmeans(x, 4, generator=torch.Generator().manual_seed(0))
    result = kmeans(tiny, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.labels, expected.labels)
    assert torch.equal(result.centroids, expected.centroids * 2.0**-100)
    assert float(result.inertia) == pytest.approx(float(expected.inertia) * 2.0**-200, rel=1e-6)
    start = expected.centroids + 0.5
    refined = lloyd(tiny, start * 2.0**-100)
    assert torch.equal(refined.centroids, lloyd(x, start).centroids * 2.0**-100)
    nearest = nearest_centroids(tiny, result.centroids)
    assert torch.equal(nearest.labels, expected.labels)
    torch.testing.assert_close(
        nearest.distances * 2.0**200, nearest_centroids(x, expected.centroids).distances.double()
    )
    _, indices = kmeans_plusplus(tiny, 4, generator=torch.Generator().manual_seed(1))
    _, unit_indices = kmeans_plusplus(x, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(indices, unit_indices)


def test_kmeans_rejects_bad_arguments():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=8"):
        kmeans(x, 8)
    with pytest.raises(ValueError, match="n_clusters=0 should be >= 1"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="Expected x to be 2-D"):
        kmeans(torch.randn(5), 2)
    with pytest.raises(ValueError, match="Expected metric to be 'euclidean' or 'cosine'"):
        kmeans(x, 2, metric="manhattan")
    with pytest.raises(ValueError, match=r"Expected init to be of shape \(2, 2\)"):
        kmeans(x, 2, init=torch.zeros(3, 2))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_padded_problems_with_a_cluster_mask_equal_separate_runs(metric):
    x = torch.tensor(blobs(n=600, d=3, k=6, seed=11))
    ks = [1, 2, 4, 6]
    start = x[torch.randperm(600, generator=torch.Generator().manual_seed(0))[:6]].clone()
    padded = start.expand(len(ks), 6, 3).clone()
    mask = torch.arange(6) < torch.tensor(ks)[:, None]
    swept = lloyd(x, padded, cluster_mask=mask, metric=metric)
    for i, k in enumerate(ks):
        alone = lloyd(x, start[:k], metric=metric)
        torch.testing.assert_close(swept.centroids[i, :k], alone.centroids)
        assert torch.equal(swept.labels[i], alone.labels)
        assert int(swept.n_iter[i]) == int(alone.n_iter)
        torch.testing.assert_close(swept.inertia[i], alone.inertia)
        assert int(swept.labels[i].max()) < k


@pytest.mark.parametrize(
    ("metric", "weighted", "far_start"),
    [
        ("euclidean", False, False),
        ("euclidean", True, False),
        ("cosine", False, False),
        ("euclidean", False, True),
    ],
)
def test_small_problem_loop_equals_the_general_loop(metric, weighted, far_start):
    from torchkmeans.functional.lloyd import prepare, run_lloyd

    x = torch.tensor(blobs(n=300, d=3, k=5, seed=4))
    w = torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    prep = prepare(x, sample_weight=w if weighted else None, metric=metric)
    start = prep.x[:, :5].clone()
    if far_start:  # clusters start empty: exercises relocation in both loops
        start[0, 3:] += 1e3
    small = run_lloyd(prep, start)
    general = run_lloyd(prep, start, small_path=False)
    torch.testing.assert_close(small.centroids, general.centroids)
    assert torch.equal(small.labels, general.labels)
    assert torch.equal(small.n_iter, general.n_iter)
    torch.testing.assert_close(small.inertia, general.inertia)
    torch.testing.assert_close(small.inertia_history, general.inertia_history, equal_nan=True)


def test_relocation_after_the_first_iteration_uses_the_current_centroids():
    # Six points at 0 and one at 1, three centres at 0: two clusters empty at
    # the first iteration, one again at the second (two centres coincide).
    # The second relocation must measure distances to the current centroids.
    x = torch.zeros(7, 1, dtype=torch.float64)
    x[6] = 1.0
    start = torch.zeros(3, 1, dtype=torch.float64)
    alone = lloyd(x, start)
    in_batch = lloyd(torch.stack([x, x]), torch.stack([start, start]))
    c_ref, l_ref, _, n_ref = reference.lloyd(x.numpy(), start.numpy())
    for result in (alone, in_batch):
        centroids = result.centroids if result.centroids.ndim == 2 else result.centroids[0]
        labels = result.labels if result.labels.ndim == 1 else result.labels[0]
        np.testing.assert_allclose(centroids.numpy(), c_ref, atol=1e-12)
        np.testing.assert_array_equal(labels.numpy(), l_ref)
        assert int(result.n_iter.flatten()[0]) == n_ref == 2


# Three points, each twice, and three centres on the first: the copies of
# 27 reseed both empty clusters, then all join the first of them and leave
# the other empty again. At the third iteration the labels repeat those of
# the second while that cluster takes a copy of 24 (off its centroid 25.5):
# stopping there returned a centre 26 that is not the mean of its points,
# and inertia 2 where two more iterations reach 0.
REPEATED_LABELS_X = np.array([[15.0], [15.0], [24.0], [24.0], [27.0], [27.0]])
REPEATED_LABELS_START = np.array([[15.0], [15.0], [15.0]])


@pytest.mark.parametrize("path", ["fused kernel", "PyTorch ops", "general", "batch", "accelerator"])
def test_labels_that_repeat_while_a_cluster_is_reseeded_are_no_convergence(path, monkeypatch):
    if path != "fused kernel":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    if path == "accelerator":
        monkeypatch.setattr(_device, "on_host", lambda device: False)
    x, start = torch.tensor(REPEATED_LABELS_X), torch.tensor(REPEATED_LABELS_START)
    if path == "batch":
        result = lloyd(torch.stack([x, x]), torch.stack([start, start]))
        result = type(result)(*(field[1] for field in result))
    elif path == "general":
        from torchkmeans.functional.lloyd import prepare, run_lloyd

        prep = prepare(x)
        result = run_lloyd(prep, start[None] - prep.offset, small_path=False)
        result = type(result)(*(field[0] for field in result))
        result = result._replace(centroids=result.centroids + prep.offset[0])
    else:
        result = lloyd(x, start)
    c_ref, l_ref, inertia_ref, n_ref = reference.lloyd(REPEATED_LABELS_X, REPEATED_LABELS_START)
    assert inertia_ref == 0.0
    np.testing.assert_allclose(result.centroids.numpy(), c_ref, atol=1e-12)
    np.testing.assert_array_equal(result.labels.numpy(), l_ref)
    assert float(result.inertia) == pytest.approx(0.0, abs=1e-12)
    assert int(result.n_iter) == n_ref


@copies_found_on_the_cpu
@pytest.mark.parametrize("seed", [0, 2])
def test_rows_of_copies_reseeded_in_the_last_iteration_go_to_the_first_copy(seed, monkeypatch):
    """max_iter reached right after empty clusters were reseeded onto copies
    of one point: the final labels of the small loop gave the copies' rows
    to the first copy only by the BLAS product's rounding, which split them."""
    monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    rng = np.random.default_rng(seed)
    k = 17
    points = np.repeat(rng.normal(size=(k, 3)) * 5, rng.integers(2, 6, size=k), axis=0)
    x = np.vstack([points, rng.normal(size=(20, 3))])
    start = np.repeat(x[:1], k, axis=0)
    result = lloyd(torch.tensor(x), torch.tensor(start), max_iter=1)
    centroids, labels = result.centroids.numpy(), result.labels.numpy()
    first = np.array([np.flatnonzero((centroids == row).all(1))[0] for row in centroids])
    assert (first != np.arange(k)).any()  # copies were reseeded
    np.testing.assert_array_equal(first[labels], labels)
    _, l_ref, inertia_ref, _ = reference.lloyd(x, start, max_iter=1)
    np.testing.assert_array_equal(labels, l_ref)
    assert float(result.inertia) == pytest.approx(inertia_ref, rel=1e-12)


@pytest.mark.parametrize(
    ("metric", "weighted", "n_problems"),
    [("euclidean", False, 1), ("euclidean", True, 3), ("cosine", False, 2)],
)
def test_accelerator_path_equals_the_cpu_path(device, metric, weighted, n_problems):
    """The branch-free path a GPU runs (relocation by topk every iteration,
    where-based freezing, host checks every 10 iterations), run on the device
    (on the CPU: forced), against the CPU's own path."""
    from torchkmeans.functional.lloyd import prepare, run_lloyd

    x = torch.tensor(blobs(n=500, d=4, k=6, seed=8))
    w = torch.rand(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    prep = prepare(x, sample_weight=w if weighted else None, metric=metric)
    gen = torch.Generator().manual_seed(2)
    starts = torch.stack(
        [prep.x[0, torch.randperm(500, generator=gen)[:6]] for _ in range(n_problems)]
    )
    starts[:, 4:] += 1e3  # two clusters start empty: relocation in both paths
    host = run_lloyd(prep, starts)
    on_device = prepare(
        x.to(device), sample_weight=w.to(device) if weighted else None, metric=metric
    )
    device_like = run_lloyd(
        on_device,
        starts.to(device),
        host_checks=False if device == "cpu" else None,
        check_every=10,
    )
    assert device_like.centroids.device.type == device
    torch.testing.assert_close(device_like.centroids.cpu(), host.centroids)
    assert torch.equal(device_like.labels.cpu(), host.labels)
    assert torch.equal(device_like.n_iter.cpu(), host.n_iter)
    torch.testing.assert_close(device_like.inertia.cpu(), host.inertia)


# ---------------------------------------------------------------- argument checks

_X = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
_C = _X[:3].clone()


def _with_nan() -> torch.Tensor:
    x = _X.clone()
    x[5, 1] = float("nan")
    return x


def _with_inf() -> torch.Tensor:
    x = _X.clone()
    x[7, 0] = float("-inf")
    return x


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: kmeans(_with_nan(), 3), ValueError, r"Input x contains NaN or infinity"),
        (
            lambda: kmeans(_with_inf(), 3, metric="cosine"),
            ValueError,
            r"Input x contains NaN or infinity",
        ),
        (
            lambda: kmeans(_X, 3, sample_weight=-torch.ones(100)),
            ValueError,
            r"Expected sample_weight to be non-negative, got negative values\.",
        ),
        (
            lambda: kmeans(_X, 3, sample_weight=torch.ones(99)),
            ValueError,
            r"Expected sample_weight to be of shape \(100,\), got shape \(99,\)\.",
        ),
        (
            lambda: kmeans(_X, 3, sample_weight=torch.full((100,), float("inf"))),
            ValueError,
            r"Input sample_weight contains NaN or infinity",
        ),
        (
            lambda: kmeans(_X, 3, sample_weight=torch.zeros(100)),
            ValueError,
            r"Expected sample_weight to have a positive sum, got all weights zero\.",
        ),
        (
            lambda: kmeans(torch.stack([_X, _X]), 3, sample_weight=torch.ones(3, 100)),
            ValueError,
            r"Expected sample_weight to be of shape \(100,\) or \(2, 100\), got shape "
            r"\(3, 100\)\.",
        ),
        (
            lambda: kmeans(
                torch.stack([_X, _X]),
                3,
                sample_weight=torch.stack([torch.ones(100), torch.zeros(100)]),
            ),
            ValueError,
            r"Expected sample_weight to have a positive sum for every problem, got all weights "
            r"zero in problem 1\.",
        ),
        (
            lambda: kmeans(_X, 3, sample_weight=[1.0] * 100),
            TypeError,
            r"Expected sample_weight to be a torch.Tensor or None, got list\.",
        ),
        (lambda: kmeans(_X, 3, max_iter=-1), ValueError, r"max_iter=-1 should be >= 1\."),
        (lambda: kmeans(_X, 3, max_iter=2.5), TypeError, r"Expected max_iter to be an int"),
        (
            lambda: kmeans(_X, 3, tol=float("nan")),
            ValueError,
            r"tol=nan should be a finite number >= 0\.",
        ),
        (lambda: kmeans(_X, 3, tol=-1.0), ValueError, r"tol=-1.0 should be a finite number >= 0"),
        (lambda: kmeans(_X, 3, check_every=0), ValueError, r"check_every=0 should be >= 1\."),
        (lambda: kmeans(_X, 2.5), TypeError, r"Expected n_clusters to be an int, got 2.5\."),
        (
            lambda: kmeans(torch.randint(0, 9, (100, 3)), 3),
            TypeError,
            r"Expected x to be a floating-point tensor, got dtype torch.int64 \(x\.float\(\) "
            r"converts it\)\.",
        ),
        (
            lambda: kmeans(_X.numpy(), 3),
            TypeError,
            r"Expected x to be a torch.Tensor, got ndarray \(torch\.as_tensor converts it; "
            r"the KMeans estimator takes arrays as they are\)\.",
        ),
        (
            lambda: kmeans(torch.stack([_X, _X]), 3, init=torch.randn(3, 3, 4)),
            ValueError,
            r"Expected init to be of shape \(3, 4\) or \(2, 3, 4\), got shape \(3, 3, 4\)\.",
        ),
        (
            lambda: kmeans(_X, 3, init=lambda x, k, g: torch.randn(2, k, 4), n_init=1),
            ValueError,
            r"Expected init to be of shape \(3, 4\) or \(1, 3, 4\), got shape \(2, 3, 4\)\.",
        ),
        (
            lambda: kmeans(_X, 3, init=lambda x, k, g: torch.randn(2, k, 4)),
            ValueError,
            r"Expected init to return shape \(3, 4\) for each of the 10 restarts, got shape "
            r"\(2, 3, 4\)\.",
        ),
        (
            # A callable init that forgets to return had failed in torch.as_tensor
            # ("Could not infer dtype of NoneType"); complex init lost its imaginary part.
            lambda: kmeans(_X, 3, init=lambda x, k, g: None, n_init=1),
            TypeError,
            r"Expected init to be an array of shape \(n_clusters, n_features\), or a callable "
            r"returning one, got NoneType",
        ),
        (
            lambda: kmeans(_X, 3, init=torch.zeros(3, 4, dtype=torch.complex64)),
            ValueError,
            r"Complex data not supported; init has dtype torch.complex64\.",
        ),
        (
            lambda: kmeans_plusplus(_X, 3, metric="l1"),
            ValueError,
            r"Expected metric to be 'euclidean' or 'cosine', got 'l1'\.",
        ),
        (
            lambda: kmeans_plusplus(_X, 2.5),
            TypeError,
            r"Expected n_clusters to be an int, got 2.5\.",
        ),
        (lambda: kmeans_plusplus(_X, 0), ValueError, r"n_clusters=0 should be >= 1\."),
        (
            lambda: kmeans_plusplus(_X, 3, n_local_trials=0),
            ValueError,
            r"n_local_trials=0 should be >= 1\.",
        ),
        (
            lambda: kmeans_plusplus(_X, 3, x_sq_norms=torch.ones(99)),
            ValueError,
            r"Expected x_sq_norms to be of shape \(100,\), got shape \(99,\)\.",
        ),
        (
            lambda: kmeans_plusplus(_X, 3, sample_weight=torch.ones(3)),
            ValueError,
            r"Expected sample_weight to be of shape \(100,\), got shape \(3,\)\.",
        ),
        (
            lambda: random_init(torch.randn(10), 2),
            ValueError,
            r"Expected x to be 2-D \(n, d\) or 3-D \(b, n, d\), got shape \(10,\)\.",
        ),
        (lambda: random_init(_X, 2.5), TypeError, r"Expected n_clusters to be an int"),
        (
            lambda: random_init(_X, 3, sample_weight=-torch.ones(100)),
            ValueError,
            r"Expected sample_weight to be non-negative",
        ),
        (
            lambda: scatter_sums(_X, torch.zeros(100, dtype=torch.int64), 2.5),
            TypeError,
            r"Expected n_clusters to be an int, got 2.5\.",
        ),
        (
            lambda: scatter_sums(_X, torch.zeros(100), 2),
            TypeError,
            r"Expected labels to be an integer tensor, got torch.float32\.",
        ),
        (
            lambda: scatter_sums(_X, torch.zeros(99, dtype=torch.int64), 2),
            ValueError,
            r"Expected labels to be of shape \(100,\) \(as x \(100, 4\)\), got shape \(99,\)\.",
        ),
        (
            lambda: scatter_sums(_X.expand(2, 100, 4), torch.zeros(100, dtype=torch.int64), 2),
            ValueError,
            r"Expected labels to be of shape \(2, 100\) \(as x \(2, 100, 4\)\), got shape",
        ),
        # Read on the host only; an accelerator asserts on the device instead.
        pytest.param(
            lambda: scatter_sums(_X, torch.full((100,), 3), 2),
            ValueError,
            r"Expected labels in \[0, n_clusters=2\), got values from 3 to 3\.",
            marks=on_the_cpu_paths_only,
        ),
        (
            lambda: scatter_sums(
                _X, torch.zeros(100, dtype=torch.int64), 2, sample_weight=torch.ones(3)
            ),
            ValueError,
            r"Expected sample_weight to be of shape \(100,\), got shape \(3,\)\.",
        ),
        (
            lambda: centroids_from_sums(
                torch.ones(2, 2), torch.ones(2), torch.zeros(2, 2), metric="l1"
            ),
            ValueError,
            r"Expected metric to be 'euclidean' or 'cosine', got 'l1'\.",
        ),
        (
            lambda: centroids_from_sums(
                torch.ones(2, 2), torch.ones(2), torch.zeros(2, 2), empty="nearest"
            ),
            ValueError,
            r"Expected empty to be 'previous' or 'heaviest', got 'nearest'\.",
        ),
        (
            lambda: nearest_centroids(_X, torch.randn(0, 4)),
            ValueError,
            r"Expected centroids to hold at least one centroid, got shape \(0, 4\)\.",
        ),
        (
            lambda: nearest_centroids(_X, torch.randn(3, 5)),
            ValueError,
            r"Expected centroids to have 4 features \(as x\), got shape \(3, 5\)\.",
        ),
        (
            lambda: nearest_centroids(_X, torch.randn(3)),
            ValueError,
            r"Expected centroids to be 2-D \(k, d\) or 3-D \(b, k, d\), got shape \(3,\)\.",
        ),
        (
            lambda: lloyd(torch.randn(10), _C),
            ValueError,
            r"Expected x to be 2-D \(n, d\) or 3-D \(b, n, d\), got shape \(10,\)\.",
        ),
        (
            lambda: lloyd(torch.randn(2, 10, 4), torch.randn(3, 3, 4)),
            ValueError,
            r"Expected centroids to have batch size 1 or 2 \(as x\), got shape \(3, 3, 4\)\.",
        ),
        (
            lambda: lloyd(
                _X, torch.stack([_C, _C]), cluster_mask=torch.ones(3, 3, dtype=torch.bool)
            ),
            ValueError,
            r"Expected cluster_mask to be of shape \(2, 3\) or \(3,\), got shape \(3, 3\)\.",
        ),
        (
            lambda: lloyd(_X, _C, cluster_mask=torch.ones(4, dtype=torch.bool)),
            ValueError,
            r"Expected cluster_mask to be of shape \(1, 3\) or \(3,\), got shape \(4,\)\.",
        ),
        (
            lambda: lloyd(_with_nan(), _C),
            ValueError,
            r"Input x contains NaN or infinity",
        ),
        (
            lambda: lloyd(_X, torch.full((3, 4), float("nan"))),
            ValueError,
            r"Input centroids contains NaN or infinity",
        ),
        (lambda: lloyd(_X, _C, max_iter=0), ValueError, r"max_iter=0 should be >= 1\."),
        (lambda: lloyd(_X, _C, tol=float("inf")), ValueError, r"tol=inf should be a finite"),
        (
            lambda: minibatch_step(_X, _C, torch.zeros(5)),
            ValueError,
            r"Expected weight_sums to be of shape \(3,\), got shape \(5,\)\.",
        ),
        (
            lambda: minibatch_step(_X, torch.stack([_C, _C]), torch.zeros(3, 3)),
            ValueError,
            r"Expected weight_sums to be of shape \(3,\) or \(2, 3\), got shape \(3, 3\)\.",
        ),
        (
            lambda: minibatch_step(_X, torch.randn(3, 5), torch.zeros(3)),
            ValueError,
            r"Expected centroids to have 4 features \(as x\), got shape \(3, 5\)\.",
        ),
        (
            lambda: minibatch_step(_X, _C, torch.zeros(3), sample_weight=torch.ones(7)),
            ValueError,
            r"Expected sample_weight to be of shape \(100,\), got shape \(7,\)\.",
        ),
        (
            lambda: kmeans(_X[:, :0], 3),
            ValueError,
            r"Expected x to have at least one feature, got shape \(100, 0\)\.",
        ),
        (
            lambda: lloyd(_X[:, :0], _C[:, :0]),
            ValueError,
            r"Expected x to have at least one feature, got shape \(100, 0\)\.",
        ),
        (
            lambda: nearest_centroids(_X[:, :0], _C[:, :0]),
            ValueError,
            r"Expected x to have at least one feature, got shape \(100, 0\)\.",
        ),
        (
            lambda: minibatch_step(_X[:, :0], _C[:, :0], torch.zeros(3)),
            ValueError,
            r"Expected x to have at least one feature, got shape \(100, 0\)\.",
        ),
        (
            lambda: kmeans_plusplus(_X[:, :0], 3),
            ValueError,
            r"Expected x to have at least one feature, got shape \(100, 0\)\.",
        ),
        (
            lambda: lloyd(_X[:0], _C),
            ValueError,
            r"Expected x to hold at least one row, got shape \(0, 4\)\.",
        ),
        (
            lambda: pairwise_distances(_X.numpy(), _C),
            TypeError,
            r"Expected x to be a torch.Tensor, got ndarray \(torch\.as_tensor converts it; "
            r"the KMeans estimator takes arrays as they are\)\.",
        ),
        (
            lambda: pairwise_distances(_X, _C.tolist()),
            TypeError,
            r"Expected centroids to be a torch.Tensor, got list \(torch\.as_tensor converts",
        ),
        # Integer tensors had given int64 distances, truncated from the
        # expansion's float64 (344 of 1,400 wrong for integers up to 1,000).
        (
            lambda: pairwise_distances(_X.long(), _C.long()),
            TypeError,
            r"Expected x to be a floating-point tensor, got dtype torch\.int64 \(x\.float\(\)",
        ),
        (
            lambda: pairwise_distances(_X, _C.bool()),
            TypeError,
            r"Expected centroids to be a floating-point tensor, got dtype torch\.bool "
            r"\(centroids\.float\(\) converts it\)\.",
        ),
        (
            lambda: pairwise_distances(_X, _C[:0]),
            ValueError,
            r"Expected centroids to hold at least one centroid, got shape \(0, 4\)\.",
        ),
        (
            lambda: pairwise_distances(_X, torch.randn(3, 5)),
            ValueError,
            r"Expected centroids to have 4 features \(as x\), got shape \(3, 5\)\.",
        ),
    ],
)
def test_functional_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda budget: kmeans(_X, 3, memory_budget=budget),
        lambda budget: lloyd(_X, _C, memory_budget=budget),
        lambda budget: kmeans_plusplus(_X, 3, memory_budget=budget),
        lambda budget: minibatch_step(_X, _C, torch.zeros(3), memory_budget=budget),
        lambda budget: nearest_centroids(_X, _C, memory_budget=budget),
    ],
    ids=["kmeans", "lloyd", "kmeans_plusplus", "minibatch_step", "nearest_centroids"],
)
def test_functional_memory_budget_is_checked(call):
    # As the estimators do: some paths never size a block, and took any value.
    with pytest.raises(ValueError, match=r"memory_budget=-1 should be >= 1\."):
        call(-1)
    with pytest.raises(TypeError, match=r"Expected memory_budget to be an int, got '1MB'\."):
        call("1MB")


@pytest.mark.parametrize("paths", ["host", "accelerator"])
@pytest.mark.parametrize(
    "dtype, exponent", [(torch.float32, 64), (torch.float64, 500)], ids=["float32", "float64"]
)
def test_data_whose_squared_distances_overflow_is_clustered_as_at_unit_scale(
    request, paths, dtype, exponent
):
    # float32 rows near 1e19 (float64 near 1e150): their squared distances
    # overflow, and the fit was refused (float32) where the inertia is finite
    # in float64. Scaled by a power of two, an exact change, every result
    # must be the unit-scale one scaled alike.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    x = torch.tensor(blobs(n=200, d=4, k=3, seed=0), dtype=dtype)
    far = x * 2.0**exponent
    expected = kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    result = kmeans(far, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.labels, expected.labels)
    assert torch.equal(result.centroids, expected.centroids * 2.0**exponent)
    scale = 2.0 ** (2 * exponent)
    assert float(result.inertia) == pytest.approx(float(expected.inertia) * scale, rel=1e-6)
    start = expected.centroids + 0.5
    refined = lloyd(far, start * 2.0**exponent)
    assert torch.equal(refined.centroids, lloyd(x, start).centroids * 2.0**exponent)


@pytest.mark.parametrize("paths", ["host", "accelerator"])
@pytest.mark.parametrize("exponent", [66, -100])
def test_kmeans_plusplus_seeds_float32_rows_at_extreme_scales_as_at_unit_scale(
    request, paths, exponent
):
    # Squared distances of float32 rows near 1e20 are inf (near 1e-30, 0):
    # the seeds fell at random. Scaled by a power of two they are exact.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    _, expected = kmeans_plusplus(x, 8, generator=torch.Generator().manual_seed(1))
    centroids, indices = kmeans_plusplus(
        x * 2.0**exponent, 8, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(indices, expected)
    assert torch.equal(centroids, x[expected] * 2.0**exponent)


def test_squared_distances_beyond_float64_are_refused():
    # The fit's inertia is not finite in float64: refused, naming the data
    # (each distance finite, their sum not: it had blamed sample_weight,
    # which was not given).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=gen, dtype=torch.float64) * 1e153
    with pytest.raises(ValueError, match=r"rows of x overflow float64; .* rescale it\."):
        lloyd(x, x[:16].clone())
    with pytest.raises(ValueError, match=r"rows of x overflow float64; .* rescale it\."):
        kmeans(x, 16, generator=torch.Generator().manual_seed(0))
    # Each distance finite, their sum not (rows of 3 features, relabelled
    # from differences): the same error without weights.
    narrow = torch.from_numpy(np.random.RandomState(0).randn(1000, 3) * 1e153)
    with pytest.raises(ValueError, match=r"rows of x overflow float64; .* rescale it\."):
        kmeans(narrow, 3, generator=torch.Generator().manual_seed(0))
    weights = torch.full((2000,), 1e10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weighted by sample_weight overflows"):
        kmeans(x / 1e4, 16, sample_weight=weights, generator=gen)


def test_kmeans_accepts_large_finite_values():
    """The NaN screen reads the mean variance first; one that overflows is
    checked element by element, so large finite data is not refused as NaN.
    Its squares overflow float32 (the fit had returned NaN centroids, every
    label 0 and an infinite inertia, then refused it): fitted scaled."""
    x = torch.tensor([[3e38, 0.0], [3e38, 1.0], [-3e38, 0.0], [-3e38, 1.0]])
    for data in (x, x.double()):
        result = kmeans(data, 2, generator=torch.Generator().manual_seed(0))
        assert sorted(result.labels.tolist()) == [0, 0, 1, 1]
        assert result.labels[0] == result.labels[1] != result.labels[2]
        assert float(result.inertia) == 1.0


@pytest.mark.parametrize("path", ["native", "torch"])
def test_functional_entry_points_ignore_requires_grad(monkeypatch, path):
    """Clustering is not differentiable: inputs that require grad are detached,
    on the native kernel's path and on PyTorch's, and give the same results."""
    from torchkmeans.functional import _native

    if path == "torch":
        monkeypatch.setattr(_native, "prefers_native", lambda *a, **k: False)
    x = _X.clone().requires_grad_()
    c = _C.clone().requires_grad_()
    w = torch.ones(100, requires_grad=True)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    calls = {
        "kmeans": (lambda x, c, w: kmeans(x, 3, sample_weight=w, generator=gen())),
        "kmeans_init": (lambda x, c, w: kmeans(x, 3, init=c)),
        "lloyd": (lambda x, c, w: lloyd(x, c, sample_weight=w)),
        "kmeans_plusplus": (
            lambda x, c, w: kmeans_plusplus(x, 3, sample_weight=w, generator=gen())
        ),
        "random_init": (lambda x, c, w: random_init(x, 3, sample_weight=w, generator=gen())),
        "nearest_centroids": (lambda x, c, w: nearest_centroids(x, c)),
        "nearest_bfloat16": (lambda x, c, w: nearest_centroids(x.bfloat16(), c.bfloat16())),
        "minibatch_step": (lambda x, c, w: minibatch_step(x, c, torch.zeros(3), sample_weight=w)),
    }
    for name, call in calls.items():
        got = call(x, c, w)
        expected = call(x.detach(), c.detach(), w.detach())
        for i, (value, reference_value) in enumerate(zip(got, expected)):
            assert not value.requires_grad, (name, i)
            torch.testing.assert_close(value, reference_value, equal_nan=True)


def test_batched_history_is_nan_after_each_problems_own_n_iter(device):
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = x.to(device)
    # Fixed initial centres: a CUDA generator draws other seeds than the CPU's,
    # and 5 of 60 seeds stopped both problems at the same iteration.
    result = kmeans(torch.stack([x, x.flip(0)]), 5, init=torch.stack([x[:5], x[-5:]]))
    assert len(set(result.n_iter.tolist())) > 1  # problems stop at different iterations
    for i in range(2):
        n = int(result.n_iter[i])
        history = result.inertia_history[i]
        assert bool(torch.isfinite(history[:n]).all())
        assert bool(torch.isnan(history[n:]).all())
        # The last recorded inertia is that of the last assignment of this problem.
        assert float(history[n - 1]) >= float(result.inertia[i]) - 1e-9


def test_single_problem_history_is_nan_after_n_iter(device):
    """Off the CPU one problem runs on to the next convergence check (every 10
    iterations); its history still ends at its n_iter."""
    x = torch.tensor(blobs(n=400, d=3, k=4, seed=3)).to(device)
    result = lloyd(x, x[:4].clone(), check_every=10)
    n = int(result.n_iter)
    assert n % 10 != 0  # stopped between two checks
    assert bool(torch.isfinite(result.inertia_history[:n]).all())
    assert bool(torch.isnan(result.inertia_history[n:]).all())


def test_kmeans_of_one_data_set_runs_batched_starts_as_restarts():
    """A 2-D x with (b, k, d) starts: b restarts, the lowest inertia kept, as
    lloyd from each start alone."""
    x = torch.tensor(blobs(n=300, d=3, k=5, seed=2))
    starts = torch.stack(
        [x[torch.randperm(300, generator=torch.Generator().manual_seed(s))[:5]] for s in range(4)]
    )
    result = kmeans(x, 5, init=starts)
    alone = [lloyd(x, start) for start in starts]
    best = min(alone, key=lambda r: float(r.inertia))
    assert result.centroids.shape == (5, 3) and result.labels.shape == (300,)
    torch.testing.assert_close(result.centroids, best.centroids)
    assert torch.equal(result.labels, best.labels)
    torch.testing.assert_close(result.inertia, best.inertia)


@pytest.mark.parametrize("path", ["native", "torch"])
def test_nearest_centroids_converts_centroids_to_the_dtype_of_x(monkeypatch, path):
    from torchkmeans.functional import _native

    if path == "torch":
        monkeypatch.setattr(_native, "prefers_native", lambda *a, **k: False)
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(3))
    c = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = nearest_centroids(x, c)
    expected = nearest_centroids(x, c.float())
    assert got.distances.dtype == torch.float32
    assert torch.equal(got.labels, expected.labels)
    torch.testing.assert_close(got.distances, expected.distances)


def test_weights_are_checked_in_the_dtype_they_are_computed_in():
    """Weights are cast to x's compute dtype, as KMeans casts them: float32
    weights whose float32 sum overflows fit float64 data (they had been refused),
    and float64 weights beyond float32 are blamed on float32 data, not x."""
    x = torch.tensor(blobs(n=60, d=3, k=3, seed=0))
    w = torch.full((60,), 3e37, dtype=torch.float32)
    g = torch.Generator
    got = kmeans(x, 3, sample_weight=w, generator=g().manual_seed(0))
    expected = kmeans(x, 3, sample_weight=w.double(), generator=g().manual_seed(0))
    assert torch.equal(got.labels, expected.labels)
    assert torch.isfinite(lloyd(x, x[:3], sample_weight=w).inertia)
    assert kmeans_plusplus(x, 3, sample_weight=w, generator=g().manual_seed(0))[0].isfinite().all()
    random_init(x, 3, sample_weight=w, generator=g().manual_seed(0))
    with pytest.raises(ValueError, match=r"Input sample_weight contains NaN or infinity"):
        lloyd(x.float(), x[:3].float(), sample_weight=torch.full((60,), 1e39, dtype=torch.float64))


@pytest.mark.parametrize("n_problems", [None, 3], ids=["one problem", "restarts"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_kmeans_plusplus_scores_candidates_in_blocks_within_the_budget(
    n_problems, metric, weighted, monkeypatch
):
    """The candidates' distances were held for all rows at once, (trials, n)
    and their float64 sums (4,000,000 x 2 float32: 15x the data at the peak):
    beyond the budget they are scored in blocks of rows, with the same seeds."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 5, generator=g, dtype=torch.float64)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    w = torch.rand(6000, generator=g, dtype=torch.float64) if weighted else None
    init = importlib.import_module("torchkmeans.functional.init")
    blocks = []
    block_rows_of = init._candidate_block_rows
    monkeypatch.setattr(
        init,
        "_candidate_block_rows",
        lambda *args: blocks.append(block_rows_of(*args)) or blocks[-1],
    )
    seeded = {}
    for budget in (None, 40_000):
        seeded[budget] = kmeans_plusplus(
            x,
            12,
            n_problems=n_problems,
            sample_weight=w,
            metric=metric,
            generator=torch.Generator().manual_seed(1),
            memory_budget=budget,
        )
    assert blocks[0] == 6000 and blocks[1] < 6000
    torch.testing.assert_close(seeded[None][1], seeded[40_000][1], rtol=0, atol=0)


@pytest.mark.parametrize("seeding", [kmeans_plusplus, random_init])
def test_n_problems_that_disagree_with_a_3d_x_are_refused(seeding):
    # kmeans_plusplus(x of 2 data sets, n_problems=3) seeded 2 problems silently.
    x = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"n_problems to match the 2 data sets of a 3-D x"):
        seeding(x, 4, n_problems=3, generator=torch.Generator().manual_seed(0))
    centroids, indices = seeding(x, 4, n_problems=2, generator=torch.Generator().manual_seed(0))
    assert centroids.shape == (2, 4, 3) and indices.shape == (2, 4)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_the_functional_api_and_metrics_ignore_an_autocast_region(paths, autocast_dtype, request):
    # Inside a model's torch.autocast region every function gives what it
    # gives outside, in the same dtypes: no product of the distances runs in
    # half precision (rows far from the origin, where it would decide labels).
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    from torchkmeans import metrics

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 16, generator=generator) * 3 + 50
    x += torch.randint(0, 4, (1500, 1), generator=generator) * 20.0
    centroids = x[:12].clone()
    labels = nearest_centroids(x, centroids).labels

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(1)

    def results(data: torch.Tensor) -> list:
        c = centroids.to(data.dtype)
        return [
            nearest_centroids(data, c),
            pairwise_distances(data, c),
            pairwise_distances(data, c, metric="cosine"),
            kmeans_plusplus(data, 8, generator=seeded()),
            random_init(data, 8, generator=seeded()),
            lloyd(data, c),
            lloyd(data, c, metric="cosine"),
            kmeans(data.reshape(3, 500, 16), 6, generator=seeded()),
            minibatch_step(data[:256], c.clone(), torch.zeros(12)),
            scatter_sums(data, labels, 12),
            metrics.silhouette_score(data, labels),
            metrics.calinski_harabasz_score(data, labels),
            metrics.davies_bouldin_score(data, labels),
            metrics.inertia(data, labels, c),
        ]

    def tensors(value) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (tuple, list)):
            return [t for item in value for t in tensors(item)]
        return [torch.tensor(float(value), dtype=torch.float64)]

    for dtype in (torch.float32, torch.bfloat16):
        data = x.to(dtype)
        expected = results(data)
        with torch.autocast("cpu", dtype=autocast_dtype):
            got = results(data)
        for index, (value, outside) in enumerate(zip(got, expected)):
            for a, b in zip(tensors(value), tensors(outside)):
                assert a.dtype == b.dtype, (dtype, index)
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("paths", ["host", "PyTorch ops", "accelerator"])
def test_the_functional_api_ignores_the_global_torch_defaults(
    paths, dtype, request, torch_defaults_changed
):
    # CPU tensors stay on the CPU and give what they give without the
    # defaults: the CPU paths made their buffers, draws and results on the
    # default device (a fit failed with "Tensor on device meta is not on the
    # expected device cpu"; a CUDA default would have been the same).
    if paths != "host":
        request.getfixturevalue("accelerator_paths" if paths == "accelerator" else "torch_ops_only")
    x = torch.from_numpy(blobs(n=2000, d=3, k=6)).to(dtype)
    weights = torch.linspace(0.5, 2.0, 2000, dtype=dtype, device="cpu")
    centroids = x[:6].clone()
    labels = nearest_centroids(x, centroids).labels
    counts = torch.zeros(6, dtype=dtype, device="cpu")
    # One heavy cluster: the step reseeds the light ones (random draws).
    heavy = torch.ones(6, dtype=dtype, device="cpu").index_fill_(0, torch.tensor([0]), 1e6)

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(1)

    def results() -> list:
        return [
            nearest_centroids(x, centroids),
            nearest_centroids(x.reshape(2, 1000, 3), centroids.expand(2, 6, 3)),
            pairwise_distances(x, centroids),
            kmeans_plusplus(x, 6, generator=seeded()),
            kmeans_plusplus(x, 6, sample_weight=weights, generator=seeded()),
            random_init(x, 6, generator=seeded()),
            lloyd(x, centroids),
            lloyd(x, centroids, sample_weight=weights),
            lloyd(x, centroids, metric="cosine"),
            kmeans(x, 6, generator=seeded()),
            kmeans(x, 6, init=lambda data, k, g: centroids.numpy(), generator=seeded()),
            kmeans(x.reshape(2, 1000, 3), 6, generator=seeded()),
            minibatch_step(x[:256], centroids.clone(), counts.clone()),
            minibatch_step(
                x[:256], centroids.clone(), heavy.clone(), random_reassign=True, generator=seeded()
            ),
            scatter_sums(x, labels, 6),
        ]

    expected = results()
    with torch_defaults_changed():
        got = results()
    assert_identical(got, expected)
