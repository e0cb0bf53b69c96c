"""Lloyd iterations over data that stays on the host: chunk by chunk, every iteration.

For data larger than the device (or a memmap that should never be loaded
whole): each iteration reads the rows in chunks, copies a chunk to the device
while the previous one computes (pinned memory and a copy stream on CUDA, a
reader thread everywhere), and folds it into the cluster sums with the same
kernels as :func:`~torchkmeans.functional.lloyd.run_lloyd`. Only the labels
``(b, n)``, the centroids and one or two chunks live on the device.

From the same initial centroids the result equals the in-memory fit: the same
centring (by the data mean, computed in a first pass), the same convergence
rules, and empty clusters reseeded from the same farthest points (found in an
extra pass, only when a cluster is empty). k-means++ seeds from a random
sample of the rows, as faiss does, because greedy k-means++ over all n rows
would need k passes over the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

import torch

from .distances import block_rows, exact_distances, squared_norms
from .init import kmeans_plusplus, random_init
from .lloyd import KMeansResult, Prepared, _assign_pass, _score_offset
from .updates import centroids_from_sums, relocate_empty_clusters

__all__ = ["HostRows", "chunk_rows", "init_sample_size", "iter_chunks", "streamed_kmeans"]

# Bytes of input rows per chunk: large enough to amortise a copy to the
# device, small enough that two of them are a negligible share of memory.
_CHUNK_BYTES = {"cpu": 8 * 2**20, "other": 64 * 2**20}
# k-means++ runs on at most this many rows per centroid (faiss keeps 256) and
# this many bytes of sample.
_INIT_ROWS_PER_CLUSTER = 256
_INIT_MIN_ROWS = 10_000
_INIT_MAX_BYTES = 512 * 2**20


class HostRows(NamedTuple):
    """Rows that stay where they are (a host array, a memmap), read on demand.

    ``read(start, stop)`` returns rows ``start:stop`` and ``take(index)`` the
    rows at sorted int64 ``index``, both as 2-D CPU tensors of any floating
    dtype; the caller's storage is never written to.
    """

    read: Callable[[int, int], torch.Tensor]
    take: Callable[[torch.Tensor], torch.Tensor]
    n_rows: int
    n_features: int
    itemsize: int


def init_sample_size(n_rows: int, n_clusters: int, n_features: int, itemsize: int = 4) -> int:
    """Rows k-means++ seeds from in a streamed fit.

    ``256 * k`` rows (at least 10,000), at most 512 MiB of them, never more
    than ``n`` and never fewer than ``k``.

    Examples
    --------
    >>> init_sample_size(10_000_000, 1024, 128)
    262144
    >>> init_sample_size(5_000, 8, 2)
    5000
    """
    wanted = max(_INIT_MIN_ROWS, _INIT_ROWS_PER_CLUSTER * n_clusters)
    affordable = _INIT_MAX_BYTES // max(1, n_features * itemsize)
    return int(min(n_rows, max(n_clusters, min(wanted, affordable))))


def chunk_rows(data: HostRows, device: torch.device, chunk_bytes: int | None = None) -> int:
    """Rows per chunk: ``chunk_bytes`` of input (8 MiB on the CPU, 64 MiB on a GPU)."""
    if chunk_bytes is None:
        chunk_bytes = _CHUNK_BYTES["cpu" if device.type == "cpu" else "other"]
    row_bytes = max(1, data.n_features * data.itemsize)
    return int(max(1, min(data.n_rows, chunk_bytes // row_bytes)))


def iter_chunks(
    data: HostRows, device: torch.device, dtype: torch.dtype, rows: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, chunk)`` over all rows, each chunk on ``device`` in ``dtype``.

    A reader thread fetches the next chunk while the caller computes on the
    current one; on CUDA the copy runs from pinned memory on its own stream.
    """
    starts = list(range(0, data.n_rows, rows))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        if device.type == "cuda":
            yield from _cuda_chunks(data, device, dtype, rows, starts, pool)
            return

        def load(start: int) -> torch.Tensor:
            host = data.read(start, min(data.n_rows, start + rows))
            return host.to(device=device, dtype=dtype)

        pending = pool.submit(load, starts[0])
        for i, start in enumerate(starts):
            chunk = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(load, starts[i + 1])
            yield start, chunk


def _cuda_chunks(
    data: HostRows,
    device: torch.device,
    dtype: torch.dtype,
    rows: int,
    starts: list[int],
    pool: ThreadPoolExecutor,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Double-buffered host-to-device copies: read into pinned memory (thread),
    copy with ``non_blocking`` on a side stream, compute on the current one."""
    probe = data.read(0, 1)
    pinned = [
        torch.empty((rows, data.n_features), dtype=probe.dtype, pin_memory=True) for _ in range(2)
    ]
    copied: list[Any] = [None, None]
    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)

    def load(slot: int, start: int) -> int:
        if copied[slot] is not None:
            copied[slot].synchronize()  # the buffer's previous copy has left it
        host = data.read(start, min(data.n_rows, start + rows))
        pinned[slot][: host.shape[0]].copy_(host)
        return host.shape[0]

    pending = pool.submit(load, 0, starts[0])
    for i, start in enumerate(starts):
        slot = i % 2
        m = pending.result()
        with torch.cuda.stream(copy_stream):
            chunk = pinned[slot][:m].to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(copy_stream)
        copied[slot] = event
        if i + 1 < len(starts):
            pending = pool.submit(load, 1 - slot, starts[i + 1])
        compute_stream.wait_event(event)
        chunk.record_stream(compute_stream)
        yield start, chunk.to(dtype)


class _Statistics(NamedTuple):
    offset: torch.Tensor  # (1, 1, d) mean subtracted (zeros for cosine)
    mean_variance: torch.Tensor  # (1,)


def _prepare_chunk(
    chunk: torch.Tensor, offset: torch.Tensor, weights: torch.Tensor | None, metric: str
) -> Prepared:
    """A chunk as :func:`~torchkmeans.functional.lloyd.prepare` would have left its rows."""
    m, d = chunk.shape
    x_aug = torch.empty((1, m, d + 1), dtype=chunk.dtype, device=chunk.device)
    data = x_aug[..., :d]
    x_aug[..., d] = 1.0
    if metric == "cosine":
        torch.nn.functional.normalize(chunk.unsqueeze(0), dim=-1, out=data)
        x_sq = None
    else:
        torch.sub(chunk.unsqueeze(0), offset, out=data)
        x_sq = squared_norms(data)
    w = weights.unsqueeze(0) if weights is not None else None
    return Prepared(data, x_aug, x_sq, w, offset, offset.new_zeros(1), metric, False)


def _statistics(
    data: HostRows, device: torch.device, dtype: torch.dtype, metric: str, rows: int
) -> _Statistics:
    """Mean (euclidean) and mean feature variance, in one pass; rejects NaN/inf."""
    acc = torch.float64 if device.type != "mps" else torch.float32
    d = data.n_features
    total = torch.zeros(d, dtype=acc, device=device)
    total_sq = torch.zeros(d, dtype=acc, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    shift: torch.Tensor | None = None
    for _, chunk in iter_chunks(data, device, dtype, rows):
        finite &= torch.isfinite(chunk).all()
        values = chunk.to(acc)
        if metric == "cosine":
            values = torch.nn.functional.normalize(values, dim=-1)
        if shift is None:
            # Sums around a first estimate of the mean stay accurate for data
            # far from the origin.
            shift = values.mean(0)
        values = values - shift
        total += values.sum(0)
        total_sq += values.square().sum(0)
    if not bool(finite):
        raise ValueError("Input X contains NaN or infinity; expected finite values.")
    assert shift is not None
    n = data.n_rows
    mean = shift + total / n
    variance = (total_sq / n - (total / n).square()).clamp_min(0.0)
    mean_variance = variance.mean().reshape(1).to(dtype)
    if metric == "cosine":
        return _Statistics(torch.zeros((1, 1, d), dtype=dtype, device=device), mean_variance)
    return _Statistics(mean.to(dtype).view(1, 1, d), mean_variance)


def _sample(data: HostRows, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Sorted indices of ``size`` distinct rows drawn uniformly (all rows when size >= n)."""
    n = data.n_rows
    if size >= n:
        return torch.arange(n)
    # Without an n-sized permutation: draw with replacement, drop repeats,
    # top up (rarely a second round), then keep a random `size` of them.
    chosen = torch.empty(0, dtype=torch.int64)
    device_for_draws = generator.device if generator is not None else torch.device("cpu")
    while chosen.numel() < size:
        need = size - chosen.numel()
        draws = torch.randint(
            0, n, (need + need // 8 + 16,), generator=generator, device=device_for_draws
        ).cpu()
        chosen = torch.cat([chosen, draws]).unique()
    order = torch.randperm(chosen.numel(), generator=generator, device=device_for_draws).cpu()
    return chosen[order[:size]].sort().values


def _initial_centroids(
    init: Any,
    data: HostRows,
    stats: _Statistics,
    n_clusters: int,
    n_problems: int,
    weights: torch.Tensor | None,
    metric: str,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int | None,
) -> torch.Tensor:
    """``(b, k, d)`` initial centroids in prepared (centred or unit) space."""
    d = data.n_features
    if isinstance(init, str):
        size = init_sample_size(data.n_rows, n_clusters, d, torch.finfo(dtype).bits // 8)
        index = _sample(data, size, generator)
        rows = data.take(index).to(device=device, dtype=dtype)
        sample = _prepare_chunk(
            rows, stats.offset, None if weights is None else weights[index.to(device)], metric
        )
        if init == "k-means++":
            centroids, _ = kmeans_plusplus(
                sample.x[0],
                n_clusters,
                n_problems=n_problems,
                sample_weight=None if sample.weights is None else sample.weights[0],
                x_sq_norms=None if sample.x_sq is None else sample.x_sq[0],
                metric=metric,
                generator=generator,
                memory_budget=memory_budget,
            )
        elif init == "random":
            centroids, _ = random_init(
                sample.x[0],
                n_clusters,
                n_problems=n_problems,
                sample_weight=None if sample.weights is None else sample.weights[0],
                generator=generator,
            )
        else:
            raise ValueError(
                "Expected init to be 'k-means++', 'random', an array of shape "
                f"(n_clusters, n_features) or a callable, got {init!r}."
            )
        return centroids.reshape(n_problems, n_clusters, d).contiguous()
    given = torch.as_tensor(init).to(device=device, dtype=dtype)
    if tuple(given.shape) != (n_clusters, d):
        raise ValueError(
            f"Expected init to be of shape ({n_clusters}, {d}), got shape {tuple(given.shape)}."
        )
    if not bool(torch.isfinite(given).all()):
        raise ValueError("Input init contains NaN or infinity.")
    given = given.unsqueeze(0).expand(n_problems, n_clusters, d)
    if metric == "cosine":
        return torch.nn.functional.normalize(given, dim=-1).contiguous()
    return (given - stats.offset).contiguous()


class _Pass(NamedTuple):
    score_total: torch.Tensor  # (b,) weighted sum of the rows' scores + offsets = inertia
    changed: torch.Tensor  # (b,) bool, some label differs from the previous pass


def _lloyd_pass(
    data: HostRows,
    stats: _Statistics,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    metric: str,
    rows: int,
    block: int,
    *,
    totals: torch.Tensor | None,
    warm: bool,
    distances: torch.Tensor | None = None,
) -> _Pass:
    """One pass over all chunks: labels (in place), totals and the summed scores.

    ``warm``: the labels hold a previous assignment that warm-starts the search.
    """
    b = centroids.shape[0]
    device, dtype = centroids.device, centroids.dtype
    acc = torch.float64 if device.type != "mps" else torch.float32
    score_total = torch.zeros(b, dtype=acc, device=device)
    changed = torch.zeros(b, dtype=torch.bool, device=device)
    for start, chunk in iter_chunks(data, device, dtype, rows):
        stop = start + chunk.shape[0]
        chunk_weights = None if weights is None else weights[start:stop]
        prep = _prepare_chunk(chunk, stats.offset, chunk_weights, metric)
        previous = labels[:, start:stop].clone()
        chunk_labels = labels[:, start:stop]
        score_total += _assign_pass(
            prep, centroids, chunk_labels, block, totals=totals, previous=previous if warm else None
        )
        score_total += _score_offset(prep)
        changed |= (chunk_labels != previous).any(-1)
        if distances is not None:
            distances[:, start:stop] = exact_distances(
                prep.x, centroids, chunk_labels, metric == "cosine"
            )
    return _Pass(score_total, changed)


def _relocate(
    data: HostRows,
    stats: _Statistics,
    totals: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    metric: str,
    rows: int,
) -> None:
    """Reseed empty clusters from the farthest points of all chunks (one extra pass).

    Keeps, per problem, the ``min(k, n)`` farthest points seen so far (ties
    by row order, as the stable sort of the in-memory path), then applies
    :func:`relocate_empty_clusters` to those candidates only.
    """
    b, k, _ = centroids.shape
    keep = min(k, data.n_rows)
    device, dtype = centroids.device, centroids.dtype
    best_distances = torch.empty((b, 0), dtype=dtype, device=device)
    best_index = torch.empty((b, 0), dtype=torch.int64, device=device)
    for start, chunk in iter_chunks(data, device, dtype, rows):
        stop = start + chunk.shape[0]
        prep = _prepare_chunk(chunk, stats.offset, None, metric)
        dist = exact_distances(prep.x, centroids, labels[:, start:stop], metric == "cosine")
        index = torch.arange(start, stop, device=device).expand(b, -1)
        pool_distances = torch.cat([best_distances, dist], dim=1)
        pool_index = torch.cat([best_index, index], dim=1)
        order = pool_distances.sort(dim=-1, descending=True, stable=True).indices[:, :keep]
        best_distances = pool_distances.gather(-1, order)
        best_index = pool_index.gather(-1, order)
    flat = best_index.reshape(-1)
    unique, inverse = flat.unique(return_inverse=True)
    rows_host = data.take(unique.cpu()).to(device=device, dtype=dtype)
    candidates = _prepare_chunk(rows_host, stats.offset, None, metric)
    x_aug = candidates.x_aug[0][inverse].view(b, keep, -1)
    candidate_weights = None if weights is None else weights[best_index]
    relocate_empty_clusters(
        totals, x_aug, candidate_weights, labels.gather(-1, best_index), best_distances
    )


def streamed_kmeans(
    data: HostRows,
    n_clusters: int,
    *,
    init: Any = "k-means++",
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    metric: str = "euclidean",
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    memory_budget: int | None = None,
    chunk_bytes: int | None = None,
) -> KMeansResult:
    """K-Means over rows that stay on the host, streamed to ``device`` every iteration.

    The same algorithm as :func:`~torchkmeans.functional.kmeans` (Lloyd,
    scikit-learn's stopping rules, farthest-point reseeding of empty
    clusters, ``n_init`` restarts as one batch), with device memory bounded by
    the labels and a chunk. String inits seed from a random sample of
    :func:`init_sample_size` rows.

    Parameters
    ----------
    data : HostRows
        How to read the rows.
    n_clusters : int
        Number of clusters k.
    init : {"k-means++", "random"} or Tensor
        Seeding, or ``(k, d)`` initial centroids in the data's scale.
    n_init, max_iter, tol, metric, memory_budget
        As in :func:`~torchkmeans.functional.kmeans`.
    sample_weight : Tensor, optional
        ``(n,)`` weights on ``device``.
    generator : torch.Generator, optional
        Randomness for the sample and the seeding (on ``device``).
    device, dtype
        Where and in which floating dtype to compute.
    chunk_bytes : int, optional
        Bytes of input rows read per chunk (8 MiB on the CPU, 64 MiB else).

    Returns
    -------
    KMeansResult
        Unbatched: centroids ``(k, d)`` in the data's scale, labels ``(n,)``
        on ``device``, inertia, n_iter and the inertia history of the best run.

    Examples
    --------
    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
    >>> rows = HostRows(lambda a, b: x[a:b], lambda i: x[i], 4, 1, 8)
    >>> result = streamed_kmeans(rows, 2, init=torch.tensor([[0.0], [1.0]]), dtype=x.dtype,
    ...                          chunk_bytes=16)  # two rows per chunk
    >>> result.centroids.flatten().tolist(), result.labels.tolist(), float(result.inertia)
    ([0.5, 10.5], [0, 0, 1, 1], 1.0)
    """
    device = torch.device(device)
    if data.n_rows < n_clusters:
        raise ValueError(f"n_samples={data.n_rows} should be >= n_clusters={n_clusters}.")
    if not isinstance(init, str):
        n_init = 1
    rows = chunk_rows(data, device, chunk_bytes)
    stats = _statistics(data, device, dtype, metric, rows)
    weights = None if sample_weight is None else sample_weight.to(device=device, dtype=dtype)
    centroids = _initial_centroids(
        init,
        data,
        stats,
        n_clusters,
        n_init,
        weights,
        metric,
        generator,
        device,
        dtype,
        memory_budget,
    )
    b, k, d = centroids.shape
    n = data.n_rows
    block = block_rows(
        rows,
        b * k,
        itemsize=torch.finfo(dtype).bits // 8,
        memory_budget=memory_budget,
        device=device,
    )
    tol_abs = stats.mean_variance * tol
    labels = torch.full((b, n), -1, dtype=torch.int64, device=device)
    totals = torch.empty((b, k, d + 1), dtype=dtype, device=device)
    sums, counts = totals[..., :d], totals[..., d]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n_iter = torch.zeros(b, dtype=torch.int64, device=device)
    history = torch.full((b, max_iter), math.nan, dtype=torch.float64, device=device)
    for iteration in range(max_iter):
        totals.zero_()
        step = _lloyd_pass(
            data,
            stats,
            centroids,
            labels,
            weights,
            metric,
            rows,
            block,
            totals=totals,
            warm=iteration > 0,
        )
        history[:, iteration] = step.score_total
        if bool((counts <= 0).any()):
            _relocate(data, stats, totals, centroids, labels, weights, metric, rows)
        updated = centroids_from_sums(sums, counts, centroids, metric=metric)
        shift = (updated - centroids).square_().sum((-1, -2))
        converged = (~step.changed & (iteration > 0)) | (shift <= tol_abs)
        running = ~done
        n_iter += running
        centroids = torch.where(running.view(b, 1, 1), updated, centroids)
        done |= converged
        if bool(done.all()):
            break
    # Labels and exact inertia of the returned centroids.
    distances = torch.empty((b, n), dtype=dtype, device=device)
    _lloyd_pass(
        data,
        stats,
        centroids,
        labels,
        weights,
        metric,
        rows,
        block,
        totals=None,
        warm=True,
        distances=distances,
    )
    acc = torch.float64 if device.type != "mps" else torch.float32
    per_row = distances.to(acc) if weights is None else distances.to(acc) * weights.to(acc)
    inertia = per_row.sum(-1)
    best = int(inertia.argmin()) if b > 1 else 0
    final = centroids[best] + stats.offset[0, 0] if metric == "euclidean" else centroids[best]
    return KMeansResult(final, labels[best], inertia[best], n_iter[best], history[best])
