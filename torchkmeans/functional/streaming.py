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
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Union

import torch

from .. import _validation as v
from . import _device, _native
from .certify import (
    certify_nearest,
    check_rows,
    moved_centroids_floor,
    suspects,
    without_copies,
)
from .collective import LOCAL, Collective, raise_rejected
from .distances import (
    block_rows,
    exact_distances,
    overflow_exponent,
    squared_norms,
    times_power_of_two,
    underflow_exponent,
    unit_rows,
    wide_sum,
)
from .init import _distances_to, kmeans_plusplus, random_init
from .lloyd import (
    KMeansResult,
    Prepared,
    _assign_pass,
    _score_offset,
    _still_running,
    _unscaled,
    _update,
)
from .updates import relocate_empty_clusters

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


def chunk_rows(
    data: HostRows, device: torch.device, chunk_bytes: int | None = None, *, work_bytes: int = 0
) -> int:
    """Rows per chunk: ``chunk_bytes`` of input (8 MiB on the CPU, 64 MiB on a
    GPU), or of ``work_bytes``, what a pass holds per row of a chunk, where
    that is more.

    Examples
    --------
    >>> rows, cpu = HostRows(None, None, 10**6, 2, 4), torch.device("cpu")
    >>> chunk_rows(rows, cpu, 8 << 20), chunk_rows(rows, cpu, 8 << 20, work_bytes=64)
    (1000000, 131072)
    """
    if chunk_bytes is None:
        chunk_bytes = _CHUNK_BYTES["cpu" if _device.on_host(device) else "other"]
    row_bytes = max(1, data.n_features * data.itemsize, work_bytes)
    return int(max(1, min(data.n_rows, chunk_bytes // row_bytes)))


def _pass_bytes(n_features: int, dtype: torch.dtype, problems: int) -> int:
    """Bytes a Lloyd pass holds per row of a chunk: the rows centred with a
    column of ones and their squared norms, and per problem the previous
    labels, the new ones' comparison, the exact distances and the centroids
    gathered for them. Chunks of 8 MiB of input rows of 2 float32 features
    (1,000,000 rows) held 19x the data at the peak of a fit of 3 restarts."""
    itemsize = torch.finfo(dtype).bits // 8
    return (n_features + 2) * itemsize + problems * (17 + (n_features + 1) * itemsize)


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
        torch.empty((rows, data.n_features), dtype=probe.dtype, device="cpu", pin_memory=True)
        for _ in range(2)
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
    n_rows: int  # over all ranks
    n_zero_rows: int = 0  # cosine rows of zeros, over all ranks
    # Cosine rows of zeros weigh 0 in the fit (see prepare_rows).
    without_zeros: bool = False


def prepare_rows(
    chunk: torch.Tensor,
    offset: torch.Tensor,
    weights: torch.Tensor | None,
    metric: str,
    without_zeros: bool = False,
) -> Prepared:
    """A chunk as :func:`~torchkmeans.functional.lloyd.prepare` would have left its rows.

    ``without_zeros`` (cosine): rows of zeros weigh 0, their weight kept in
    ``ignored``, as ``kmeans`` leaves them out of the fit.
    """
    m, d = chunk.shape
    x_aug = torch.empty((1, m, d + 1), dtype=offset.dtype, device=offset.device)
    data = x_aug[..., :d]
    x_aug[..., d] = 1.0
    if metric == "cosine":
        unit_rows(chunk.unsqueeze(0).to(offset.dtype), out=data)
        x_sq = None
    else:
        torch.sub(chunk.unsqueeze(0), offset, out=data)
        x_sq = squared_norms(data)
    w = weights.unsqueeze(0) if weights is not None else None
    ignored = None
    if without_zeros and metric == "cosine":
        given = w if w is not None else torch.ones_like(data[..., 0])
        w = given * (data != 0).any(-1)
        acc = _device.widest_float(data.device)
        ignored = given.sum(-1, dtype=acc) - w.sum(-1, dtype=acc)
    return Prepared(data, x_aug, x_sq, w, offset, offset.new_zeros(1), metric, False, ignored)


class _HostSource:
    """Rows read from the host chunk by chunk, every pass (times ``2^exponent``)."""

    def __init__(
        self,
        data: HostRows,
        device: torch.device,
        dtype: torch.dtype,
        weights: torch.Tensor | None,
        chunk_bytes: int | None,
        problems: int = 1,
    ) -> None:
        self.data, self.device, self.dtype, self.weights = data, device, dtype, weights
        self.n_rows, self.n_features = data.n_rows, data.n_features
        # Chunk bytes given: of input rows, as documented (tests count on them).
        work = 0 if chunk_bytes is not None else _pass_bytes(data.n_features, dtype, problems)
        self.rows = chunk_rows(data, device, chunk_bytes, work_bytes=work) if data.n_rows else 1
        self.exponent = 0

    def raw(self) -> Iterator[tuple[int, torch.Tensor]]:
        chunks = iter_chunks(self.data, self.device, self.dtype, self.rows)
        if not self.exponent:
            return chunks
        return ((start, times_power_of_two(chunk, self.exponent)) for start, chunk in chunks)

    def prepared(
        self, offset: torch.Tensor, metric: str, without_zeros: bool = False
    ) -> Iterator[tuple[int, Prepared]]:
        for start, chunk in self.raw():
            stop = start + chunk.shape[0]
            weights = None if self.weights is None else self.weights[start:stop]
            yield start, prepare_rows(chunk, offset, weights, metric, without_zeros)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        rows = self.data.take(index.cpu()).to(device=self.device, dtype=self.dtype)
        return times_power_of_two(rows, self.exponent)

    def scale(self, exponent: int) -> None:
        """Rows read from now on are times ``2^exponent``."""
        self.exponent = exponent


class _TensorSource:
    """Rows already on the device (a shard of a distributed fit): prepared once
    (times ``2^exponent``)."""

    def __init__(self, x: torch.Tensor, dtype: torch.dtype, weights: torch.Tensor | None) -> None:
        self.x, self.dtype, self.weights = x, dtype, weights
        self.device = x.device
        self.n_rows, self.n_features = int(x.shape[0]), int(x.shape[1])
        self.rows = max(1, self.n_rows)
        self._prepared: Prepared | None = None
        self.exponent = 0

    def raw(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self.n_rows:
            yield 0, times_power_of_two(self.x.to(self.dtype), self.exponent)

    def prepared(
        self, offset: torch.Tensor, metric: str, without_zeros: bool = False
    ) -> Iterator[tuple[int, Prepared]]:
        if not self.n_rows:
            return
        if self._prepared is None:
            x = times_power_of_two(self.x, self.exponent)
            self._prepared = prepare_rows(x, offset, self.weights, metric, without_zeros)
        yield 0, self._prepared

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return times_power_of_two(self.x[index.to(self.device)].to(self.dtype), self.exponent)

    def scale(self, exponent: int) -> None:
        """Rows read from now on are times ``2^exponent``."""
        self.exponent, self._prepared = exponent, None


_Source = Union[_HostSource, _TensorSource]


_NOT_FINITE = "Input X contains NaN or infinity; expected finite values."


def _not_finite(source: _Source) -> ValueError:
    """The error for rows of ``source`` that are not finite in the fit's dtype.

    A narrowing cast (a float64 memmap fitted in float32) overflows rows
    that are finite as stored: said so, as in memory (:func:`v.not_finite`),
    from the stored rows, read again only on this error path.
    """
    if not isinstance(source, _HostSource):
        return ValueError(_NOT_FINITE)
    stored = None
    for start in range(0, source.n_rows, source.rows):
        stored = source.data.read(start, min(source.n_rows, start + source.rows))
        if not v.all_finite(stored):
            return ValueError(_NOT_FINITE)
    if stored is None:
        return ValueError(_NOT_FINITE)
    return v.not_finite("X", torch.empty(0, dtype=source.dtype), stored)


def _statistics(
    source: _Source, metric: str, collective: Collective, dtype: torch.dtype
) -> _Statistics:
    """Mean (euclidean) and mean feature variance over all ranks, in one pass.

    Each rank sums around its own first rows (accurate far from the origin);
    the ranks' counts, means and squared deviations are merged exactly
    (Chan et al.). Rejects NaN/inf on every rank if any rank has them.
    """
    device = source.device
    acc = _device.widest_float(device)
    d = source.n_features
    total = torch.zeros(d, dtype=acc, device=device)
    total_sq = torch.zeros(d, dtype=acc, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    shift = torch.zeros(d, dtype=acc, device=device)
    zero_rows = torch.zeros(1, dtype=acc, device=device)
    first = True
    for _, chunk in source.raw():
        finite &= torch.isfinite(chunk).all()
        values = chunk.to(acc)
        if metric == "cosine":
            values = unit_rows(values)
            zero_rows += (values == 0).all(-1).sum()
        if first:
            shift, first = values.mean(0), False
        values = values - shift
        total += values.sum(0)
        total_sq += values.square().sum(0)
    n_local = source.n_rows
    mean = shift + total / max(n_local, 1)
    squares = total_sq - total.square() / max(n_local, 1)
    count = torch.tensor([float(n_local), float(not bool(finite))], dtype=acc, device=device)
    count = torch.cat([count, zero_rows])
    if collective.distributed:
        # A shard's weights may all be zero (or none: an empty shard), not all ranks'.
        weight = torch.zeros(1, dtype=acc, device=device)
        if source.weights is not None and n_local:
            weight += source.weights.sum(dtype=acc)
        # [rows, non-finite, rows of zeros, weight | mean | squares] of each rank
        gathered = collective.all_gather(torch.cat([count, weight, mean, squares]))
        counts, means, squares_r = gathered[:, 0], gathered[:, 4 : 4 + d], gathered[:, 4 + d :]
        bad = bool(gathered[:, 1].sum() > 0)
        n = float(counts.sum())
        zero_rows = gathered[:, 2].sum()
        if source.weights is not None and not bad and not bool(gathered[:, 3].sum() > 0):
            raise ValueError("Expected sample_weight to have a positive sum, got all weights zero.")
        mean = (counts[:, None] * means).sum(0) / max(n, 1.0)
        squares = (squares_r + counts[:, None] * (means - mean).square()).sum(0)
    else:
        bad, n = not bool(finite), float(n_local)
    if bad:
        raise _not_finite(source) if not bool(finite) else ValueError(_NOT_FINITE)
    variance = (squares / max(n, 1.0)).clamp_min(0.0)
    mean_variance = variance.mean().reshape(1).to(dtype)
    offset = torch.zeros((1, 1, d), dtype=dtype, device=device)
    if metric == "euclidean":
        offset = mean.to(dtype).view(1, 1, d)
    return _Statistics(offset, mean_variance, int(n), int(zero_rows.sum()))


def _sample(data: HostRows, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Sorted indices of ``size`` distinct rows drawn uniformly (all rows when size >= n)."""
    n = data.n_rows
    if size >= n:
        return torch.arange(n, device="cpu")
    # Without an n-sized permutation: draw with replacement, drop repeats,
    # top up (rarely a second round), then keep a random `size` of them.
    chosen = torch.empty(0, dtype=torch.int64, device="cpu")
    device_for_draws = generator.device if generator is not None else torch.device("cpu")
    while chosen.numel() < size:
        need = size - chosen.numel()
        draws = torch.randint(
            0, n, (need + need // 8 + 16,), generator=generator, device=device_for_draws
        ).cpu()
        chosen = torch.cat([chosen, draws]).unique()
    order = torch.randperm(chosen.numel(), generator=generator, device=device_for_draws).cpu()
    return chosen[order[:size]].sort().values


def _seed_rows(
    source: _Source,
    stats: _Statistics,
    n_clusters: int,
    metric: str,
    generator: torch.Generator | None,
) -> Prepared:
    """The rows seeding starts from: all rows in memory, a random sample of host rows.

    On shards each rank samples its share of the rows, so the union is a
    uniform sample of the whole data.
    """
    if isinstance(source, _TensorSource):
        index = torch.arange(source.n_rows, device=source.device)
    else:
        itemsize = torch.finfo(source.dtype).bits // 8
        size = init_sample_size(stats.n_rows, n_clusters, source.n_features, itemsize)
        share = min(source.n_rows, math.ceil(size * source.n_rows / max(stats.n_rows, 1)))
        index = _sample(source.data, share, generator)
    rows = source.take(index)
    weights = None if source.weights is None else source.weights[index.to(source.device)]
    sample = prepare_rows(rows, stats.offset, weights, metric, stats.without_zeros)
    if sample.weights is not None and int((sample.weights > 0).sum()) < n_clusters:
        # Too few rows with a direction drawn: seeded as without the option.
        sample = prepare_rows(rows, stats.offset, weights, metric)
    return sample


def _draw_across(
    sample: Prepared, weighted: torch.Tensor, draws: torch.Tensor, collective: Collective
) -> torch.Tensor:
    """Rows drawn with probability proportional to ``weighted`` over all ranks' rows.

    ``weighted`` ``(b, n_local)`` non-negative; ``draws`` ``(b, m)`` uniform in
    [0, 1), the same on every rank. Every rank finds which rank owns each draw
    from the ranks' totals; the owner contributes the row, the others zeros,
    and one sum gives every rank the same ``(b, m, d)`` rows.
    """
    x = sample.x[0]
    acc = draws.dtype
    local_total = weighted.sum(-1, dtype=acc)  # (b,)
    totals = collective.all_gather(local_total)  # (world, b)
    ends = totals.cumsum(0)  # (world, b)
    grand = ends[-1]
    position = draws * grand.unsqueeze(-1)  # (b, m)
    owner = torch.searchsorted(ends.T.contiguous(), position.contiguous(), right=True)
    owner.clamp_(max=collective.world_size - 1)
    mine = owner == collective.rank
    b, m = draws.shape
    points = torch.zeros((b, m, x.shape[-1]), dtype=x.dtype, device=x.device)
    if x.shape[0]:
        before = (ends - totals)[collective.rank]  # (b,)
        local_position = (position - before.unsqueeze(-1)).clamp_min_(0.0)
        cumulative = weighted.cumsum(-1, dtype=acc)
        index = torch.searchsorted(cumulative, local_position.contiguous())
        index.clamp_(max=x.shape[0] - 1)
        points = torch.where(mine.unsqueeze(-1), x[index], points)
    return collective.all_sum(points)


def kmeans_plusplus_across(
    sample: Prepared,
    n_clusters: int,
    n_problems: int,
    generator: torch.Generator | None,
    collective: Collective,
    memory_budget: int | None,
) -> torch.Tensor:
    """Greedy k-means++ over the rows of all ranks without moving them: ``(b, k, d)``.

    The same rule as :func:`~torchkmeans.functional.init.kmeans_plusplus`:
    candidates drawn with probability ``w * D(x)`` (by :func:`_draw_across`),
    the one that lowers the summed potential most is kept. ``generator`` must
    give the same draws on every rank. Two collectives per centre.
    """
    x3, x_sq = sample.x, sample.x_sq
    device, dtype = x3.device, x3.dtype
    acc = _device.widest_float(device)
    b, k = n_problems, n_clusters
    n_local = x3.shape[1]
    trials = 2 + int(math.log(k))
    w = sample.weights

    def weighted(values: torch.Tensor) -> torch.Tensor:
        if w is None:
            return values
        return values * (w if values.ndim == 2 else w.unsqueeze(-1))

    def distances_to(points: torch.Tensor) -> torch.Tensor:
        if not n_local:
            return torch.zeros((b, 0, points.shape[1]), dtype=dtype, device=device)
        return _distances_to(x3, x_sq, points, memory_budget)

    centroids = torch.empty((b, k, x3.shape[-1]), dtype=dtype, device=device)
    draws = torch.rand((b, 1), generator=generator, device=device, dtype=acc)
    ones = torch.ones((b, n_local), dtype=dtype, device=device)
    first = _draw_across(sample, weighted(ones), draws, collective)
    centroids[:, 0] = first[:, 0]
    closest = distances_to(first)[..., 0]
    rows = torch.arange(b, device=device)
    for c in range(1, k):
        draws = torch.rand((b, trials), generator=generator, device=device, dtype=acc)
        candidates = _draw_across(sample, weighted(closest), draws, collective)
        to_candidates = torch.minimum(distances_to(candidates), closest.unsqueeze(-1))
        potential = collective.all_sum(weighted(to_candidates).sum(1, dtype=acc))
        best = potential.argmin(-1)
        closest = to_candidates[rows, :, best]
        centroids[:, c] = candidates[rows, best]
    return centroids


def random_across(
    sample: Prepared,
    n_clusters: int,
    n_problems: int,
    generator: torch.Generator | None,
    collective: Collective,
) -> torch.Tensor:
    """k distinct rows of all ranks, weighted, without replacement: ``(b, k, d)``.

    Exponential keys ``log(u) / w`` (Efraimidis-Spirakis) drawn per rank; the
    k largest over all ranks win. ``generator`` must differ between ranks.
    """
    x = sample.x[0]
    b, k, d = n_problems, n_clusters, x.shape[-1]
    acc = _device.widest_float(x.device)
    n_local = x.shape[0]
    keys = torch.rand((b, n_local), generator=generator, device=x.device, dtype=acc).log_()
    if sample.weights is not None:
        keys = keys / sample.weights.to(acc)  # weight 0 -> -inf, never drawn
    keep = min(k, n_local)
    local_keys = torch.full((b, k), -math.inf, dtype=acc, device=x.device)
    local_rows = torch.zeros((b, k, d), dtype=x.dtype, device=x.device)
    if keep:
        top = keys.topk(keep, dim=-1)
        local_keys[:, :keep] = top.values
        local_rows[:, :keep] = x[top.indices]
    all_keys = collective.all_gather(local_keys).permute(1, 0, 2).reshape(b, -1)
    all_rows = collective.all_gather(local_rows).permute(1, 0, 2, 3).reshape(b, -1, d)
    winners = all_keys.topk(k, dim=-1).indices
    return all_rows.gather(1, winners.unsqueeze(-1).expand(b, k, d))


def _initial_centroids(
    init: Any,
    source: _Source,
    stats: _Statistics,
    n_clusters: int,
    n_problems: int,
    metric: str,
    generator: torch.Generator | None,
    collective: Collective,
    memory_budget: int | None,
) -> torch.Tensor:
    """``(b, k, d)`` initial centroids in prepared (centred or unit) space."""
    d, device, dtype = source.n_features, source.device, source.dtype
    if isinstance(init, str):
        if init not in ("k-means++", "random"):
            raise ValueError(
                "Expected init to be 'k-means++', 'random', an array of shape "
                f"(n_clusters, n_features) or a callable, got {init!r}."
            )
        if collective.distributed:
            return _seed_across(
                init,
                source,
                stats,
                n_clusters,
                n_problems,
                metric,
                generator,
                collective,
                memory_budget,
            )
        sample = _seed_rows(source, stats, n_clusters, metric, generator)
        weights = None if sample.weights is None else sample.weights[0]
        if init == "k-means++":
            centroids, _ = kmeans_plusplus(
                sample.x[0],
                n_clusters,
                n_problems=n_problems,
                sample_weight=weights,
                x_sq_norms=None if sample.x_sq is None else sample.x_sq[0],
                metric=metric,
                generator=generator,
                memory_budget=memory_budget,
            )
        else:
            centroids, _ = random_init(
                sample.x[0],
                n_clusters,
                n_problems=n_problems,
                sample_weight=weights,
                generator=generator,
            )
        return centroids.reshape(n_problems, n_clusters, d).contiguous()
    given = torch.as_tensor(init, device=device).to(dtype=dtype)
    if tuple(given.shape) != (n_clusters, d):
        raise ValueError(
            f"Expected init to be of shape ({n_clusters}, {d}), got shape {tuple(given.shape)}."
        )
    if collective.distributed:
        # Rank 0's array: ranks that started from others stopped at different
        # iterations, and their next collectives no longer matched.
        given = collective.broadcast(given.clone())
    if not bool(torch.isfinite(given).all()):
        raise ValueError("Input init contains NaN or infinity.")
    given = given.unsqueeze(0).expand(n_problems, n_clusters, d)
    if metric == "cosine":
        return unit_rows(given).contiguous()
    return (given - stats.offset).contiguous()


def _seed_across(
    init: str,
    source: _Source,
    stats: _Statistics,
    n_clusters: int,
    n_problems: int,
    metric: str,
    generator: torch.Generator | None,
    collective: Collective,
    memory_budget: int | None,
) -> torch.Tensor:
    """Seeding on shards: one seed from rank 0 makes the shared and per-rank streams."""
    device = source.device
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=device)
    seed = int(collective.broadcast(seed))
    own = torch.Generator(device=device).manual_seed(seed + 1 + collective.rank)
    sample = _seed_rows(source, stats, n_clusters, metric, own)
    if init == "random":
        centroids = random_across(sample, n_clusters, n_problems, own, collective)
    else:
        shared = torch.Generator(device=device).manual_seed(seed)
        centroids = kmeans_plusplus_across(
            sample, n_clusters, n_problems, shared, collective, memory_budget
        )
    return centroids.contiguous()


class _Pass(NamedTuple):
    score_total: torch.Tensor  # (b,) weighted sum of the rows' scores + offsets = inertia
    changed: torch.Tensor  # (b,) number of labels that changed (float, summable)
    # (b, k, d+1) float64 totals of the fused kernel, in place of the pass's ``totals``.
    wide: torch.Tensor | None = None


def _lloyd_pass(
    source: _Source,
    stats: _Statistics,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    metric: str,
    block: int,
    *,
    totals: torch.Tensor | None,
    warm: bool,
    distances: torch.Tensor | None = None,
    frame_norms: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
) -> _Pass:
    """One pass over the local rows: labels (in place), totals and the summed scores.

    ``warm``: the labels hold a previous assignment that warm-starts the search.
    ``distances`` ``(b, n)`` and ``frame_norms`` ``(n,)`` receive each row's
    exact distance to its centroid and its squared norm once centred.
    ``active`` ``(b, k)``: the centroids rows may take (see
    :func:`~torchkmeans.functional.certify.without_copies`).
    """
    b = centroids.shape[0]
    device = centroids.device
    acc = _device.widest_float(device)
    if (
        totals is not None
        and distances is None
        and active is None
        and metric == "euclidean"
        and isinstance(source, _HostSource)
        and _native.readable(stats.offset)
        # The offset stands for the chunks: the same dtype, device and width.
        and _native.prefers_native(
            stats.offset[0, 0].expand(source.rows, source.n_features), centroids.shape[1]
        )
    ):
        return _native_pass(source, stats, centroids, labels)
    score_total = torch.zeros(b, dtype=acc, device=device)
    changed = torch.zeros(b, dtype=acc, device=device)
    for start, prep in source.prepared(stats.offset, metric, stats.without_zeros):
        stop = start + prep.x.shape[1]
        previous = labels[:, start:stop].clone()
        chunk_labels = labels[:, start:stop]
        score_total += _assign_pass(
            prep,
            centroids,
            chunk_labels,
            block,
            totals=totals,
            previous=previous if warm else None,
            active=active,
        )
        score_total += _score_offset(prep)
        changed += (chunk_labels != previous).sum(-1)
        if distances is not None:
            distances[:, start:stop] = exact_distances(
                prep.x, centroids, chunk_labels, metric == "cosine"
            )
        if frame_norms is not None and prep.x_sq is not None:
            frame_norms[start:stop] = prep.x_sq[0]
    return _Pass(score_total, changed)


def _native_pass(
    source: _HostSource,
    stats: _Statistics,
    centroids: torch.Tensor,
    labels: torch.Tensor,
) -> _Pass:
    """:func:`_lloyd_pass` of a Lloyd iteration through the fused CPU kernel.

    The kernel centres each host chunk as it reads it (no centred copy with
    a column of ones, no squared norms, no score block) and sums the rows of
    each cluster in float64, as the in-memory fit's kernel does; the
    per-chunk float64 totals are added up and returned (``_Pass.wide``), for
    the update to divide them in float64 as the in-memory fit does. The
    score is each row's exact distance to its centroid, measured in the same
    call. Through PyTorch ops a pass over a 500,000 x 32 float32 memmap with
    k=16 took 142 ms, against 33 ms (one thread): 4.5x the in-memory fit's
    time per iteration, 1.6x now.
    """
    b, k, d = centroids.shape
    # On the CPU explicitly: under torch.set_default_device the kernel's
    # buffers were made on that device.
    acc, cpu = torch.float64, centroids.device
    offset = stats.offset[0, 0]
    wide = torch.zeros((b, k, d + 1), dtype=acc, device=cpu)
    part = torch.empty((k, d + 1), dtype=acc, device=cpu)
    score_total = torch.zeros(b, dtype=acc, device=cpu)
    changed = torch.zeros(b, dtype=acc, device=cpu)
    for start, chunk in source.raw():
        stop = start + chunk.shape[0]
        # Rows as the kernel reads them: contiguous (a Fortran-ordered memmap's are not).
        chunk = chunk.contiguous()
        weights = None if source.weights is None else source.weights[start:stop]
        measured = torch.empty(stop - start, dtype=chunk.dtype, device=cpu)
        for problem in range(b):
            previous = labels[problem, start:stop].clone()
            _, moved = _native.nearest(
                chunk,
                centroids[problem],
                labels[problem, start:stop],
                offset=offset,
                weights=weights,
                previous=previous,
                distances=measured,
                totals=part,
            )
            wide[problem] += part
            changed[problem] += moved
            per_row = measured.to(acc) if weights is None else measured.to(acc) * weights.to(acc)
            score_total[problem] += per_row.sum()
    return _Pass(score_total, changed, wide)


def _relocate(
    source: _Source,
    stats: _Statistics,
    totals: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    metric: str,
    collective: Collective,
) -> torch.Tensor:
    """Reseed empty clusters from the farthest points of all rows (one extra pass).

    Keeps, per problem, the ``min(k, n)`` farthest points (ties by rank, then
    row order, as the stable sort of the in-memory path), then applies
    :func:`relocate_empty_clusters` to those candidates, identically on every rank,
    and returns what it returns.
    """
    b, k, d = centroids.shape
    keep = min(k, stats.n_rows)
    device, dtype = centroids.device, centroids.dtype
    best_distances = torch.full((b, keep), -1.0, dtype=dtype, device=device)
    best_index = torch.zeros((b, keep), dtype=torch.int64, device=device)
    for start, prep in source.prepared(stats.offset, metric, stats.without_zeros):
        stop = start + prep.x.shape[1]
        dist = exact_distances(prep.x, centroids, labels[:, start:stop], metric == "cosine")
        if prep.weights is not None:
            # Points of weight 0 (cosine rows of zeros) reseed no cluster.
            dist = dist.masked_fill(prep.weights <= 0, -1.0)
        index = torch.arange(start, stop, device=device).expand(b, -1)
        pool_distances = torch.cat([best_distances, dist], dim=1)
        pool_index = torch.cat([best_index, index], dim=1)
        order = pool_distances.sort(dim=-1, descending=True, stable=True).indices[:, :keep]
        best_distances = pool_distances.gather(-1, order)
        best_index = pool_index.gather(-1, order)
    real = best_distances >= 0  # fewer local rows than `keep` leave padding
    safe_index = torch.where(real, best_index, torch.zeros_like(best_index))
    flat = safe_index.reshape(-1)
    unique, inverse = flat.unique(return_inverse=True)
    if source.n_rows:
        candidates = prepare_rows(source.take(unique), stats.offset, None, metric)
        x_aug = candidates.x_aug[0][inverse].view(b, keep, d + 1)
        candidate_labels = labels.gather(-1, safe_index)
    else:
        x_aug = torch.zeros((b, keep, d + 1), dtype=dtype, device=device)
        candidate_labels = torch.zeros((b, keep), dtype=torch.int64, device=device)
    weights = torch.ones((b, keep), dtype=dtype, device=device)
    if source.weights is not None and source.n_rows:
        weights = source.weights[safe_index].to(dtype)
    if collective.distributed:
        # Every rank's candidates, in rank order; the stable sort keeps that order on ties.
        packed = torch.cat(
            [
                best_distances.unsqueeze(-1),
                candidate_labels.to(dtype).unsqueeze(-1),
                weights.unsqueeze(-1),
                x_aug,
            ],
            dim=-1,
        )
        gathered = collective.all_gather(packed).permute(1, 0, 2, 3).reshape(b, -1, d + 4)
        order = gathered[..., 0].sort(dim=-1, descending=True, stable=True).indices[:, :keep]
        packed = gathered.gather(1, order.unsqueeze(-1).expand(b, keep, d + 4))
        best_distances = packed[..., 0]
        candidate_labels = packed[..., 1].round().long()
        weights = packed[..., 2]
        x_aug = packed[..., 3:]
    use_weights = source.weights is not None or collective.distributed
    return relocate_empty_clusters(
        totals,
        x_aug,
        weights if use_weights else None,
        candidate_labels,
        best_distances,
        n_rows=stats.n_rows,
    )


def check_agreement(
    collective: Collective,
    device: torch.device,
    error: Exception | None = None,
    what: str = "batch",
    **values: Any,
) -> None:
    """Ranks that disagree on the problem raise the same error instead of hanging.

    ``values``: ints, bools, dtypes or strings describing the problem
    (feature count, dtype, k...), compared across ranks in one all_gather.
    ``error``: this rank rejected its input (a ``what``: batch, shard), its
    ``values`` are then placeholders; it raises ``error``, every other rank
    says which rank did.
    """
    if not collective.distributed:
        if error is not None:
            raise error
        return

    def code(value: Any) -> int:
        if isinstance(value, (bool, int)):
            return int(value)
        return -1 - zlib.crc32(str(value).encode())  # the same in every process

    names = list(values)
    mine = torch.tensor(
        [int(error is not None), *(code(values[name]) for name in names)],
        dtype=torch.int64,
        device=device,
    )
    every = collective.all_gather(mine).cpu()
    if error is not None:
        raise error
    rejected = every[:, 0].nonzero().flatten().tolist()
    if rejected:
        raise_rejected(rejected, what)
    known = [*values.values(), torch.float16, torch.bfloat16, torch.float32, torch.float64]
    texts = {
        code(value): str(value)
        for value in [*known, "euclidean", "cosine", "k-means++", "random", "array", "callable"]
        if not isinstance(value, (bool, int))
    }
    for column, name in enumerate(names, start=1):
        seen = every[:, column].tolist()
        if len(set(seen)) > 1:
            shown = [texts.get(item, item if item >= 0 else "?") for item in seen]
            raise ValueError(f"Expected every rank to have the same {name}, got {shown} (by rank).")


def init_kind(init: Any) -> str:
    """``init`` as the ranks of a distributed fit compare it: a seeding's
    name, "array" or "callable" (the ranks' collectives differ by kind)."""
    if isinstance(init, str):
        return init
    return "callable" if callable(init) else "array"


# What every rank's fit_passes must agree on (see check_agreement).
_AGREED = (
    "n_features",
    "dtype",
    "n_clusters",
    "n_init",
    "metric",
    "sample_weight_given",
    "max_iter",
    "tol",
    # An array on some ranks and a seeding on others: different collectives.
    "init",
)


def reject_shard(collective: Collective, error: Exception) -> None:
    """On a rank whose shard (or its weights, init...) was rejected before
    :func:`fit_passes`: join that function's agreement check with ``error``,
    which this rank raises while every other rank says which rank rejected
    its shard, instead of waiting for it."""
    check_agreement(
        collective, collective.device, error, what="shard", **dict.fromkeys(_AGREED, "?")
    )


def check_sweep(
    collective: Collective,
    device: torch.device,
    ks: tuple[int, ...],
    *,
    n_features: int,
    dtype: torch.dtype,
    n_init: int,
    metric: str,
    max_iter: int,
    tol: float,
) -> None:
    """Before one :func:`fit_passes` per k of a sweep: the ranks agree on the
    sweep (its length is their number of fits, hence of collectives). Laid
    out like that function's check, so a rank in :func:`reject_shard` joins
    it."""
    check_agreement(
        collective,
        device,
        what="shard",
        # One value per name of _AGREED, in its order: the all_gather has one shape.
        n_features=n_features,
        dtype=dtype,
        k=str(list(ks)),
        n_init=n_init,
        metric=metric,
        sample_weight_given=False,
        max_iter=max_iter,
        tol=float(tol),
        init="k-means++",
    )


def _scale_exponent(
    source: _Source, stats: _Statistics, metric: str, collective: Collective
) -> int:
    """The power of two by which :func:`fit_passes` scales euclidean rows too
    small or too large for their squared distances (0: none), as
    :func:`~torchkmeans.functional.lloyd.kmeans` does; the same on every rank.
    Only data of a mean variance that small, or that large (float32 rows of
    centred norm ~1e18 and more: their squared distances overflowed, and the
    fit was refused), is read again."""
    if metric != "euclidean":
        return 0
    finfo = torch.finfo(source.dtype)
    variance = float(stats.mean_variance.max())
    # The mean squared norm (d times the variance) far below the overflow, so
    # that rows a thousand times farther than the mean stay finite too.
    large = not variance * source.n_features <= finfo.max / 1024
    if not large and variance >= finfo.tiny / finfo.eps:
        return 0
    largest = torch.zeros(1, dtype=source.dtype, device=source.device)
    for _, chunk in source.raw():
        largest = torch.maximum(largest, chunk.abs().amax())
    if collective.distributed:
        largest = collective.all_gather(largest).amax()
    if large:
        return overflow_exponent(float(largest.max()), source.dtype, source.n_features)
    return underflow_exponent(float(largest.max()), source.dtype)


def fit_passes(
    source: _Source,
    n_clusters: int,
    *,
    init: Any,
    n_init: int,
    max_iter: int,
    tol: float,
    metric: str,
    generator: torch.Generator | None,
    memory_budget: int | None,
    collective: Collective,
) -> KMeansResult:
    """Lloyd in passes over a source, the ranks' partial sums combined every iteration."""
    # max_iter and tol decide when a rank stops iterating, hence its number of collectives.
    problem = (
        source.n_features,
        source.dtype,
        n_clusters,
        n_init,
        metric,
        source.weights is not None,
        max_iter,
        float(tol),
        init_kind(init),
    )
    check_agreement(collective, source.device, what="shard", **dict(zip(_AGREED, problem)))
    stats = _statistics(source, metric, collective, source.dtype)
    if stats.n_rows < n_clusters:
        raise ValueError(f"n_samples={stats.n_rows} should be >= n_clusters={n_clusters}.")
    # As kmeans: cosine rows of zeros neither seed nor move a centroid
    # (unless fewer than n_clusters rows are left).
    without_zeros = 0 < stats.n_zero_rows <= stats.n_rows - n_clusters
    stats = stats._replace(without_zeros=without_zeros)
    exponent = _scale_exponent(source, stats, metric, collective)
    if exponent:
        # As kmeans does: the same fit, exactly, on the rows scaled by a power of two.
        source.scale(exponent)
        try:
            result = fit_passes(
                source,
                n_clusters,
                init=times_power_of_two(init, exponent) if isinstance(init, torch.Tensor) else init,
                n_init=n_init,
                max_iter=max_iter,
                tol=tol,
                metric=metric,
                generator=generator,
                memory_budget=memory_budget,
                collective=collective,
            )
        finally:
            source.scale(0)
        return _unscaled(result, exponent)
    centroids = _initial_centroids(
        init, source, stats, n_clusters, n_init, metric, generator, collective, memory_budget
    )
    b, k, d = centroids.shape
    n, device, dtype = source.n_rows, source.device, source.dtype
    block = block_rows(
        source.rows,
        b * k,
        itemsize=torch.finfo(dtype).bits // 8,
        memory_budget=memory_budget,
        device=device,
    )
    acc = _device.widest_float(device)
    tol_abs = stats.mean_variance * tol
    labels = torch.full((b, n), -1, dtype=torch.int64, device=device)
    totals = torch.empty((b, k, d + 1), dtype=dtype, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n_iter = torch.zeros(b, dtype=torch.int64, device=device)
    history = torch.full((b, max_iter), math.nan, dtype=torch.float64, device=device)
    # Copies of a centroid (repeated initial rows, or empty clusters reseeded
    # onto copies of one point) tie on every row, which a BLAS product splits
    # by rounding: the later copies are masked (without_copies), looked for
    # at the start and after each reseeding; off the CPU, where that takes a
    # host read, the copies that the update makes of the heaviest centroid
    # (centroids_and_distinct), as run_lloyd does.
    may_copy = True
    on_cpu = _device.on_host(device)
    distinct: torch.Tensor | None = None
    index = None if on_cpu else torch.arange(k, device=device)
    for iteration in range(max_iter):
        totals.zero_()
        step = _lloyd_pass(
            source,
            stats,
            centroids,
            labels,
            metric,
            block,
            totals=totals,
            warm=iteration > 0,
            active=without_copies(centroids, None) if may_copy and on_cpu else distinct,
        )
        may_copy = False
        score_total, changed = step.score_total, step.changed
        # The fused kernel's float64 sums are divided as the in-memory fit's
        # kernel divides them, then rounded to the dtype.
        summed = totals if step.wide is None else step.wide
        if collective.distributed:
            # One collective per iteration: sums, counts, scores, changed labels.
            flat = torch.cat([summed.reshape(-1).to(acc), score_total, changed])
            collective.all_sum(flat)
            summed.copy_(flat[: summed.numel()].view_as(summed))
            score_total = flat[summed.numel() : summed.numel() + b]
            changed = flat[summed.numel() + b :]
        history[:, iteration] = score_total
        unchanged = (changed == 0) & (iteration > 0)
        if bool((summed[..., d] <= 0).any()):
            unchanged &= ~_relocate(source, stats, summed, centroids, labels, metric, collective)
            may_copy = True
        updated, made = _update(summed[..., :d], summed[..., d], centroids, metric, None, index)
        updated = updated.to(dtype)
        shift = (updated - centroids).square_().sum((-1, -2))
        converged = unchanged | (shift <= tol_abs)
        running = ~done
        n_iter += running
        centroids = torch.where(running.view(b, 1, 1), updated, centroids)
        distinct = _still_running(made, distinct, running)
        done |= converged
        if bool(done.all()):
            break
    # Labels and exact inertia of the returned centroids.
    distances = torch.empty((b, n), dtype=dtype, device=device)
    frame_norms = torch.empty(n, dtype=dtype, device=device) if metric == "euclidean" else None
    _lloyd_pass(
        source,
        stats,
        centroids,
        labels,
        metric,
        block,
        totals=None,
        warm=True,
        distances=distances,
        frame_norms=frame_norms,
        active=without_copies(centroids, None) if on_cpu else distinct,
    )
    weights = source.weights

    def total(per_row: torch.Tensor) -> torch.Tensor:
        # In blocks, as the in-memory fit sums (wide_sum): the (b, n)
        # distances copied whole to float64, and again times the weights,
        # were the peak of a streamed fit's memory.
        return collective.all_sum(wide_sum(per_row, weights))

    inertia = total(distances)
    best = int(inertia.argmin()) if b > 1 else 0
    final = centroids[best] + stats.offset[0, 0] if metric == "euclidean" else centroids[best]
    if frame_norms is not None:
        # As kmeans does: the rows whose label rounding could have decided
        # (also the rounding of the offset added back) are read again, measured
        # from x and checked against the returned centroids (see certify).
        final = final.to(dtype)
        floor = moved_centroids_floor(centroids[best : best + 1], final[None], stats.offset[0])
        frame_norms = torch.maximum(frame_norms, floor[0])
        suspect_rows = suspects(frame_norms, distances[best], centred=True).nonzero().squeeze(1)
        step = check_rows(source.n_features)
        for start in range(0, suspect_rows.numel(), step):
            rows = suspect_rows[start : start + step]
            row_labels = labels[best, rows].unsqueeze(0)
            x_rows = source.take(rows).unsqueeze(0)
            row_distances = exact_distances(x_rows, final[None], row_labels, False)
            certify_nearest(
                x_rows,
                final[None],
                row_labels,
                row_distances,
                frame_squared_norms=frame_norms[rows].unsqueeze(0),
            )
            labels[best, rows] = row_labels[0]
            distances[best, rows] = row_distances[0]
        if collective.distributed or suspect_rows.numel():
            inertia[best] = total(distances[best])
    # The batch recorded every restart until the last one stopped: NaN after
    # the best run's own n_iter, as in kmeans.
    history = history[best].masked_fill(
        torch.arange(max_iter, device=device) >= n_iter[best], math.nan
    )
    return KMeansResult(final, labels[best], inertia[best], n_iter[best], history)


def streamed_kmeans(
    data: HostRows | torch.Tensor,
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
    collective: Collective = LOCAL,
) -> KMeansResult:
    """K-Means in passes over rows that stay where they are: on the host, or on other ranks.

    The same algorithm as :func:`~torchkmeans.functional.kmeans` (Lloyd,
    scikit-learn's stopping rules, farthest-point reseeding of empty
    clusters, ``n_init`` restarts as one batch). Host rows (:class:`HostRows`)
    are streamed to ``device`` chunk by chunk every iteration; a tensor is
    used in place. With a distributed ``collective`` each rank passes its own
    shard and the ranks sum their partial results once per iteration, so
    every rank ends with the same centroids (labels stay local). String inits
    seed from all rows of a tensor, or from a random sample of
    :func:`init_sample_size` host rows.

    Parameters
    ----------
    data : HostRows or Tensor
        How to read the rows, or the (local) rows themselves.
    n_clusters : int
        Number of clusters k.
    init : {"k-means++", "random"} or Tensor
        Seeding, or ``(k, d)`` initial centroids in the data's scale.
    n_init, max_iter, tol, metric, memory_budget
        As in :func:`~torchkmeans.functional.kmeans`.
    sample_weight : Tensor, optional
        ``(n,)`` weights of the (local) rows, on ``device``.
    generator : torch.Generator, optional
        Randomness for the sample and the seeding (on ``device``).
    device, dtype
        Where and in which floating dtype to compute (a tensor's own device wins).
    chunk_bytes : int, optional
        Bytes of host rows read per chunk (8 MiB on the CPU, 64 MiB else).
    collective : Collective
        How ranks combine results (:func:`torchkmeans.distributed.collective`);
        an ``init`` tensor is rank 0's.

    Returns
    -------
    KMeansResult
        Unbatched: centroids ``(k, d)`` in the data's scale, the local labels
        ``(n,)``, the total inertia, n_iter and the inertia history of the best run.

    Examples
    --------
    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
    >>> rows = HostRows(lambda a, b: x[a:b], lambda i: x[i], 4, 1, 8)
    >>> result = streamed_kmeans(rows, 2, init=torch.tensor([[0.0], [1.0]]), dtype=x.dtype,
    ...                          chunk_bytes=16)  # two rows per chunk
    >>> result.centroids.flatten().tolist(), result.labels.tolist(), float(result.inertia)
    ([0.5, 10.5], [0, 0, 1, 1], 1.0)
    """
    if isinstance(data, torch.Tensor):
        weights = None if sample_weight is None else sample_weight.to(data.device, dtype)
        source: _Source = _TensorSource(data, dtype, weights)
    else:
        device = torch.device(device)
        weights = None if sample_weight is None else sample_weight.to(device, dtype)
        problems = n_init if isinstance(init, str) else 1
        source = _HostSource(data, device, dtype, weights, chunk_bytes, problems)
    if not isinstance(init, str):
        n_init = 1
    return fit_passes(
        source,
        n_clusters,
        init=init,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        metric=metric,
        generator=generator,
        memory_budget=memory_budget,
        collective=collective,
    )
