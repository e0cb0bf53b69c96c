"""Pairwise distances and chunked nearest-centroid search.

Squared euclidean distances use the expansion ``|x|^2 - 2 x.c + |c|^2`` through
one ``addmm`` per block of rows; the block is sized from a memory budget so the
full ``n x k`` matrix never exists. ``metric="cosine"`` works on unit vectors
and its distance is ``1 - cos(x, c)``.

Shapes: ``x`` is ``(n, d)`` or ``(b, n, d)``; ``centroids`` is ``(k, d)`` or
``(b, k, d)``. A 2-D ``x`` with 3-D centroids is one data set shared by ``b``
problems (for example ``b`` restarts).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _validation as v
from . import _device, _native
from .certify import (
    _TRUSTED_PRECISION,
    certify_nearest,
    first_copies,
    product_unit_roundoff,
    squared_frame_norms,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Nearest",
    "argmin_columns",
    "argmin_rows",
    "assign_block",
    "augmented_centroids",
    "augmented_scores",
    "block_rows",
    "cache_rows",
    "compute_dtype",
    "first_column_minimum",
    "first_copies",
    "nearest_centroids",
    "overflow_exponent",
    "overflow_exponent_of",
    "pairwise_distances",
    "row_min",
    "scale_exponent_of",
    "scored_by_columns",
    "scored_by_differences",
    "squared_norms",
    "times_power_of_two",
    "underflow_exponent",
    "underflow_exponent_of",
    "unit_rows",
    "variance_may_underflow",
    "wide_sum",
]

#: Bytes of scratch memory a distance block may take by default (256 MiB).
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024

# On the CPU a block that stays in the last-level cache is faster than one
# that fills the budget: the argmin and the centroid update then read it (and
# the rows of x) while they are hot. Measured in benchmarks/bench_kmeans.py.
_CPU_BLOCK_BYTES = 4 * 1024 * 1024
_MIN_BLOCK_ROWS = 256
# With many centroids 4 MiB is few rows, and the fixed cost of a block's
# product and ops outweighs the cache: a block has at least this many rows as
# long as it stays under _CPU_MAX_BLOCK_BYTES. (Lloyd's assignment, interleaved
# runs on 2 threads: k=1024 9-17% and k=4096 24% faster than 4 MiB blocks;
# k <= 256 unchanged.)
_CPU_MIN_BLOCK_ROWS = 2048
_CPU_MAX_BLOCK_BYTES = 16 * 1024 * 1024


class Nearest(NamedTuple):
    """Result of :func:`nearest_centroids`."""

    labels: torch.Tensor
    """Index of the nearest centroid, int64, ``(n,)`` or ``(b, n)``."""
    distances: torch.Tensor
    """Distance to it (squared euclidean, or ``1 - cos``), ``(n,)`` or ``(b, n)``."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype data of ``dtype`` is computed in: half precision in float32, else itself.

    Examples
    --------
    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def weights_without_rows_of_zeros(
    x: torch.Tensor, weights: torch.Tensor | None, n_clusters: int
) -> torch.Tensor | None:
    """Weights ``(..., n)`` of rows ``x`` ``(..., n, d)`` with the rows of zeros
    at 0, for cosine seeding and fits: such a row has no direction, and at
    distance 1 from every unit centroid (the farthest of most data) it
    seeded or reseeded centroids of zeros. None when no row is zero, or when
    some problem would keep fewer than ``n_clusters`` rows of positive
    weight (then nothing changes). One host read.
    """
    direction = (x != 0).any(-1)
    if bool(direction.all()):
        return None
    kept = direction.to(x.dtype) if weights is None else weights * direction
    if not bool(((kept > 0).sum(-1) >= n_clusters).all()):
        return None
    return kept


def unit_rows(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Each row (the last dimension) of ``x`` scaled to unit euclidean norm.

    As ``torch.nn.functional.normalize(x, dim=-1)`` where that is exact, and
    at every finite scale besides: its norm overflows for float32 rows of
    norm ~2e19 (float64 ~1e154), its squares underflow below ~1e-19 (float64
    ~1e-154) and it divides by 1e-12 at the least, so such rows came back 0
    or far from unit length (and clustered as one). Rows of those norms are
    first scaled by a power of two, an exact change that leaves their
    direction as it was. Rows of zeros stay zeros (at cosine distance 1 from
    every unit vector). Half precision is computed in float32 and returned
    in its dtype. ``out`` may be ``x``.

    Examples
    --------
    >>> unit_rows(torch.tensor([[3e30, 4e30], [0.0, 0.0]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000]])
    """
    values = x.to(compute_dtype(x.dtype))
    norms = torch.linalg.vector_norm(values, dim=-1, keepdim=True)
    finfo = torch.finfo(values.dtype)
    # Below sqrt(tiny) / eps squares of the row's entries may have been lost
    # to underflow beyond its rounding; above max the sum overflowed.
    unsafe = (norms < math.sqrt(finfo.tiny) / finfo.eps) | (norms > finfo.max)
    if _device.on_host(x.device) and not _device.traced():
        # A host check is free: only the rows that need it are rescaled, and
        # before ``out`` (which may be ``x``) is written.
        rows = unsafe.squeeze(-1)
        fixed = _rescaled_unit_rows(values[rows]) if bool(rows.any()) else None
        # Rows of zeros are overwritten below, but 0 / 0 here made their
        # gradient NaN (the quantizer's cosine commitment loss, and with it
        # the encoder's weights).
        result = torch.div(values, torch.where(norms > 0, norms, 1.0), out=out)
        if fixed is not None:
            result[rows] = fixed.to(result.dtype)
    else:
        # No host synchronisation (nor a branch on data, which torch.compile
        # and torch.jit.trace cannot follow): every row goes through the
        # rescaling, by 2^0 = 1 where it is not needed (the same rounding).
        result = _rescaled_unit_rows(values, unsafe, out=out)
    return result if out is not None else result.to(x.dtype)


def underflow_exponent(magnitude: float, dtype: torch.dtype) -> int:
    """The power of two ``2^e`` that scales data whose largest entry is
    ``magnitude`` to [0.5, 1), when squared distances of such data, computed
    in ``dtype``'s compute dtype, would lose their precision to underflow
    (float32 entries below ~3e-16, float64 below ~1e-146); 0 otherwise.

    Scaling by a power of two is exact: labels and centres of the scaled
    data are those of the data, times ``2^e``.

    Examples
    --------
    >>> underflow_exponent(1e-30, torch.float32), underflow_exponent(1.0, torch.float32)
    (99, 0)
    """
    finfo = torch.finfo(compute_dtype(dtype))
    if magnitude == 0 or magnitude >= math.sqrt(finfo.tiny / finfo.eps):
        return 0
    return -math.frexp(magnitude)[1]


def overflow_exponent(magnitude: float, dtype: torch.dtype, n_features: int) -> int:
    """The power of two ``2^e`` (``e < 0``) that scales data whose largest
    entry is ``magnitude``, of ``n_features`` features, far enough below
    ``dtype``'s overflow for its squared distances and the scores
    ``|c|^2 - 2 x.c`` to be finite with room to spare (``64 d M^2 <= max``,
    which leaves centred squared norms ``<= 4 d M^2`` below ``max / 16``:
    float32 entries above ~2.3e18 for d=1, ~8e17 for d=8); 0 when they
    already are.

    Scaling by a power of two is exact: labels and centres of the scaled
    data are those of the data, times ``2^e``.

    Examples
    --------
    >>> overflow_exponent(2.0**62, torch.float32, 8), overflow_exponent(1.0, torch.float32, 8)
    (-4, 0)
    """
    limit = math.sqrt(torch.finfo(compute_dtype(dtype)).max / (64 * max(1, n_features)))
    if magnitude <= limit or not math.isfinite(magnitude):  # no scale makes inf finite
        return 0
    # 2^(E - 1) <= limit for limit = m 2^E (m in [0.5, 1)), and the scaled
    # magnitude stays below it.
    return math.frexp(limit)[1] - 1 - math.frexp(magnitude)[1]


def squared_norms_overflow(squared_norms: torch.Tensor) -> bool:
    """Whether any of the squared (frame) norms or distances of rows, of their
    dtype, is beyond ``max / 8``, twice what :func:`overflow_exponent` keeps
    scaled data below (or is not finite): then the scores of those rows may
    have overflowed. One host read."""
    limit = torch.finfo(squared_norms.dtype).max / 8
    return bool(squared_norms.numel()) and not float(squared_norms.amax()) <= limit


def variance_may_underflow(mean_variance: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether data of this mean feature variance (per problem), in ``dtype``,
    may be small enough for :func:`underflow_exponent` to scale: only then
    is its largest entry worth reading."""
    finfo = torch.finfo(dtype)
    return float(mean_variance.max()) < finfo.tiny / finfo.eps


def underflow_exponent_of(x: torch.Tensor, centroids: torch.Tensor) -> int:
    """:func:`underflow_exponent` of rows ``x`` and ``centroids`` together
    (0 unless both are that small; ``x`` is read only for small centroids)."""
    if not centroids.numel():
        return 0
    # Two reductions, one host read (a step of MiniBatchKMeans asks every
    # time): linalg.vector_norm(ord=inf) is not vectorised on the CPU, 20x
    # slower (120 us for 50 x 1000 centroids, a quarter of a 64-row step).
    c = centroids.detach()
    largest = float(torch.maximum(c.amax(), c.amin().neg()))
    if not underflow_exponent(largest, x.dtype) or not x.numel():
        return 0
    return underflow_exponent(max(largest, float(x.detach().abs().amax())), x.dtype)


def scale_exponent_of(x: torch.Tensor, centroids: torch.Tensor) -> int:
    """The power of two by which rows ``x`` and ``centroids`` are scored: that
    of :func:`underflow_exponent_of`, or of :func:`overflow_exponent` when
    the centroids are that large (``x`` is then read too); 0 for most data,
    after one host read of the centroids. Rows far larger than the centroids
    are found from their squared norms (:func:`squared_norms_overflow`)."""
    if not centroids.numel():
        return 0
    c = centroids.detach()
    largest = float(torch.maximum(c.amax(), c.amin().neg()))
    d = c.shape[-1]
    if underflow_exponent(largest, x.dtype):
        if not x.numel():
            return 0
        return underflow_exponent(max(largest, float(x.detach().abs().amax())), x.dtype)
    if overflow_exponent(largest, x.dtype, d) and x.numel():
        largest = max(largest, float(x.detach().abs().amax()))
    return overflow_exponent(largest, x.dtype, d)


def times_power_of_two(t: torch.Tensor, exponent: int) -> torch.Tensor:
    """``t * 2^exponent``, in factors that ``t``'s dtype represents (one
    factor 2^100 is infinite in float32); exact unless the result is subnormal."""
    if not exponent:
        return t
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    step = int(math.log2(torch.finfo(t.dtype).max)) - 8
    while exponent:
        part = max(-step, min(step, exponent))
        t = t * 2.0**part
        exponent -= part
    return t


def _power_of_two(exponent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``2.0 ** exponent`` in ``dtype``, for normal results (exact for
    integers; a bit cast would be too, but torch.jit.trace cannot record it)."""
    return torch.exp2(exponent.to(dtype))


def _rescaled_unit_rows(
    values: torch.Tensor, unsafe: torch.Tensor | None = None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows scaled to a largest entry in [0.5, 1) by a power of two (only the
    ``unsafe`` ones, when given), then to unit norm; rows of zeros stay zeros."""
    largest = torch.linalg.vector_norm(values.detach(), ord=math.inf, dim=-1, keepdim=True)
    exponent = torch.frexp(largest).exponent
    if unsafe is not None:
        exponent = torch.where(unsafe, exponent, 0)
    # In two factors: 2^-exponent alone is out of range for subnormal rows.
    half = torch.div(exponent, 2, rounding_mode="floor")
    dtype = values.dtype
    scaled = values * _power_of_two(-half, dtype) * _power_of_two(half - exponent, dtype)
    norms = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return torch.div(scaled, torch.where(norms > 0, norms, 1.0), out=out)


def wide_sum(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the last dimension of ``values`` (times ``weights``) in the
    widest float of the device (float64 on the CPU).

    On the CPU a cache-sized block of columns at a time: ``sum(dtype=float64)``
    first copies the whole tensor to float64 (4,000,000 float32 distances:
    32 MB more at the peak of a fit, and 5x slower than in blocks).

    Examples
    --------
    >>> wide_sum(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, 0.5]))
    tensor([2., 5.], dtype=torch.float64)
    """
    acc = _device.widest_float(values.device)
    columns = values.shape[-1]
    step = 1 << 16 if _device.on_host(values.device) else max(1, columns)
    total = None
    for start in range(0, max(1, columns), step):
        part = values[..., start : start + step].to(acc)
        if weights is not None:
            part = part * weights[..., start : start + step].to(acc)
        summed = part.sum(-1)
        total = summed if total is None else total.add_(summed)
    assert total is not None
    return total


def squared_norms(x: torch.Tensor, *, chunk_bytes: int = 1 << 19) -> torch.Tensor:
    """Squared euclidean norm of each row (the last dimension) of ``x``.

    Computed as ``(x * x).sum(-1)`` (exactly as that expression rounds on
    contiguous rows), in chunks of about ``chunk_bytes`` of rows on the CPU: the temporary stays in
    cache and is reused, where an ``x``-sized one would cost its page faults
    (10,000 x 512 float32: 14 ms whole, 2 ms in chunks).

    Examples
    --------
    >>> squared_norms(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    tensor([25.,  1.])
    """
    if x.ndim < 2:
        return (x * x).sum(-1)
    # Off the CPU the whole tensor is one launch; chunks only bound memory.
    row_elements = x.shape[-1] * x.shape[:-2].numel()
    rows = (
        cache_rows(row_elements, x.element_size(), chunk_bytes)
        if _device.on_host(x.device)
        else 1 << 16
    )
    if x.shape[-2] <= rows:
        return (x * x).sum(-1)
    out = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[-2], rows):
        part = x[..., start : start + rows, :]
        out[..., start : start + rows] = (part * part).sum(-1)
    return out


def cache_rows(row_elements: int, itemsize: int, chunk_bytes: int = 1 << 19) -> int:
    """Rows of ``row_elements`` elements each that fill about ``chunk_bytes``.

    Row-wise passes (norms, distances to a labelled centroid) over chunks of
    this size keep their temporaries in the cache; at least 256 rows, so the
    fixed cost of each tensor op stays small against its work.

    Examples
    --------
    >>> cache_rows(512, 4), cache_rows(8, 4)
    (256, 16384)
    """
    return max(256, chunk_bytes // max(1, row_elements * itemsize))


def block_rows(
    n_rows: int,
    n_columns: int,
    *,
    itemsize: int = 4,
    memory_budget: int | None = None,
    device: torch.device | None = None,
    row_elements: int = 0,
) -> int:
    """Number of rows of ``x`` whose distance block fits the memory budget.

    Parameters
    ----------
    n_rows : int
        Rows of ``x`` to cover.
    n_columns : int
        Columns of one distance block (centroids, times the batch size).
    itemsize : int
        Bytes per element of the block.
    memory_budget : int, optional
        Bytes the block may take; ``DEFAULT_MEMORY_BUDGET`` when None.
    device : torch.device, optional
        On the CPU the block is also capped to stay cache-sized.
    row_elements : int
        Elements of the other temporaries one row of the block takes (its
        difference to its centroid, in each problem): they share the budget.

    Returns
    -------
    int
        The block height, between 1 and ``n_rows``.

    Examples
    --------
    >>> block_rows(1_000_000, 1024, memory_budget=64 * 2**20, device=torch.device("cuda"))
    16384
    >>> block_rows(1_000_000, 1024)  # on the CPU, a cache-sized block
    2048
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    row_bytes = max(1, n_columns * itemsize)
    # Wide rows and few centroids: the rows' temporaries outweigh the
    # distances (d=256, k=4 on a GPU: the whole data at once, 3x its size).
    rows = budget // max(1, (n_columns + row_elements) * itemsize)
    if device is None or _device.on_host(device):
        cache_rows = max(
            _MIN_BLOCK_ROWS,
            _CPU_BLOCK_BYTES // row_bytes,
            min(_CPU_MIN_BLOCK_ROWS, _CPU_MAX_BLOCK_BYTES // row_bytes),
        )
        rows = min(rows, cache_rows)
    return int(max(1, min(n_rows, rows)))


def _as_batched(
    x: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """View ``x`` as ``(bx, n, d)`` and centroids as ``(b, k, d)``, bx in {1, b}."""
    if x.ndim not in (2, 3):
        raise ValueError(
            f"Expected x to be 2-D (n, d) or 3-D (b, n, d), got shape {tuple(x.shape)}."
        )
    if centroids.ndim not in (2, 3):
        raise ValueError(
            "Expected centroids to be 2-D (k, d) or 3-D (b, k, d), "
            f"got shape {tuple(centroids.shape)}."
        )
    batched = x.ndim == 3 or centroids.ndim == 3
    x3 = x if x.ndim == 3 else x.unsqueeze(0)
    c3 = centroids if centroids.ndim == 3 else centroids.unsqueeze(0)
    if x3.shape[0] not in (1, c3.shape[0]) and c3.shape[0] != 1:
        raise ValueError(
            f"Batch sizes of x {tuple(x.shape)} and centroids {tuple(centroids.shape)} differ."
        )
    if c3.shape[0] == 1 and x3.shape[0] > 1:
        c3 = c3.expand(x3.shape[0], -1, -1)
    if x3.shape[-1] != c3.shape[-1]:
        raise ValueError(f"x has {x3.shape[-1]} features but centroids have {c3.shape[-1]}.")
    return x3, c3, batched


@_device.full_precision
def partial_scores(
    xb: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor | None
) -> torch.Tensor:
    """Scores whose row minimum is the nearest centroid, for one block of rows.

    ``|c|^2 - 2 x.c`` (euclidean; add ``|x|^2`` to get the distance) or
    ``-x.c`` (cosine, when ``c_sq`` is None; add 1). ``xb`` is ``(bx, m, d)``,
    ``centroids`` ``(b, k, d)``; the result is a ``(b, m, k)`` view (one
    matrix product against all b*k centroids when ``bx == 1``).
    """
    b, k, d = centroids.shape
    if xb.shape[0] == 1:
        flat = centroids.reshape(b * k, d)
        if c_sq is None:
            scores = torch.mm(xb[0], flat.T).neg_()
        else:
            scores = torch.addmm(c_sq.reshape(1, b * k), xb[0], flat.T, alpha=-2.0)
        return scores.view(-1, b, k).transpose(0, 1)
    if c_sq is None:
        return torch.bmm(xb, centroids.transpose(1, 2)).neg_()
    return torch.baddbmm(c_sq.unsqueeze(1), xb, centroids.transpose(1, 2), alpha=-2.0)


def augmented_centroids(
    centroids: torch.Tensor, metric: str = "euclidean", active: torch.Tensor | None = None
) -> torch.Tensor:
    """Centroids ``(b, k, d)`` as ``(b, k, d+1)`` rows scoring ``[x | 1]`` in one product.

    ``[x | 1] . [-2c | |c|^2] = |c|^2 - 2 x.c`` (euclidean) and
    ``[x | 1] . [-c | 0] = -x.c`` (cosine): the matrix product then yields the
    scores directly, with no separate pass to add the norms. Centroids where
    ``active`` ``(b, k)`` is False get the largest float there, so no row picks them
    (problems with fewer clusters padded to a common k).

    Examples
    --------
    >>> augmented_centroids(torch.tensor([[[1.0, 2.0]]]))
    tensor([[[-2., -4.,  5.]]])
    """
    if metric == "cosine":
        last = torch.zeros_like(centroids[..., :1])
        scaled = -centroids
    else:
        last = squared_norms(centroids).unsqueeze(-1)
        scaled = centroids * -2.0
    if active is not None:
        # The largest finite value, not inf: a BLAS kernel multiplying padded
        # zeros by inf would produce NaN.
        last = torch.where(active.unsqueeze(-1), last, torch.finfo(last.dtype).max)
    return torch.cat([scaled, last], dim=-1)


@_device.full_precision
def augmented_scores(
    xb: torch.Tensor, augmented: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Scores of rows ``[x | 1]`` ``(bx, m, d+1)`` against :func:`augmented_centroids`.

    Returns a ``(b, m, k)`` view. ``out`` ``(m, b*k)``, a reused buffer for
    the one product taken when ``bx == 1``.
    """
    b, k, width = augmented.shape
    if xb.shape[0] == 1:
        scores = torch.mm(xb[0], augmented.reshape(b * k, width).T, out=out)
        return scores.view(-1, b, k).transpose(0, 1)
    return torch.bmm(xb, augmented.transpose(1, 2))


# Below this many scores in a block the warm-started search costs more small
# ops than the full argmin it saves.
_WARM_START_MIN_ELEMENTS = 1 << 15

# From this many centroids and scores, row_min searches groups of columns on
# the CPU. There, min() with indices runs several times slower than amin()
# (1.5x at k=512, 1.7x at k=1024, 3.3x at k=4096 for 2048-row blocks, measured
# in-process); for fewer centroids the group minima cost as much as they save.
_GROUPED_MIN_MIN_K = 512
_GROUPED_MIN_MIN_ELEMENTS = 1 << 17


def row_min(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.min(dim=1)`` of a 2-D ``(m, k)`` tensor: each row's minimum and its first index.

    For wide blocks on the CPU, the minimum of every group of 32 (64 from
    k=2048) consecutive columns comes from ``amin``; ``min`` with indices then
    runs over the group minima and over the columns of the first group holding
    the row's minimum only. The first group holding it holds its first
    occurrence, so ties resolve to the lowest index exactly as in ``min``.

    Examples
    --------
    >>> row_min(torch.tensor([[3.0, 1.0, 1.0], [0.0, 2.0, 0.0]]))
    (tensor([1., 0.]), tensor([1, 0]))
    """
    m, k = scores.shape
    if (
        not _device.on_host(scores.device)
        or k < _GROUPED_MIN_MIN_K
        or m * k < _GROUPED_MIN_MIN_ELEMENTS
        or scores.stride(1) != 1
    ):
        values, indices = scores.min(dim=1)
        return values, indices
    group = 32 if k < 2048 else 64
    groups, rest = divmod(k, group)
    group_minima = scores[:, : groups * group].view(m, groups, group).amin(2)
    if rest:
        tail = scores[:, groups * group :].amin(1, keepdim=True)
        group_minima = torch.cat([group_minima, tail], dim=1)
    values, first_group = group_minima.min(dim=1)
    # take() indexes the elements in row-major order: (row, column) at row * k + column.
    group_start = torch.arange(0, m * k, k, device=scores.device).add_(first_group, alpha=group)
    columns = group_start.unsqueeze(1) + torch.arange(group, device=scores.device)
    if rest:
        # The last group is short: its missing columns repeat the row's last
        # one, which comes after every real column and cannot change the first index.
        row_end = torch.arange(k - 1, m * k, k, device=scores.device)
        columns = torch.minimum(columns, row_end.unsqueeze(1))
    within = scores.take(columns).min(dim=1).indices
    return values, within.add_(first_group, alpha=group)


def argmin_rows(
    scores: torch.Tensor, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and its index over the last dimension of ``scores`` ``(..., k)``.

    ``previous`` ``(...)``, the labels of the same rows against earlier
    centroids, warm-starts the search on the CPU: there a row minimum without
    indices (``amin``) is several times faster than ``min`` with indices, and
    in Lloyd most rows keep their label. A row keeps its label when that
    centroid still attains the minimum; only the other rows are searched in
    full. Every label is a nearest centroid either way; only an exact tie
    between identical centroids may resolve to the kept label rather than the
    lowest index.
    """
    if (
        previous is None
        or not _device.on_host(scores.device)
        or scores.numel() < _WARM_START_MIN_ELEMENTS
    ):
        if scores.ndim == 2:
            return row_min(scores)
        if scores.ndim == 3 and scores.shape[0] == 1:
            values, indices = row_min(scores[0])
            return values.unsqueeze(0), indices.unsqueeze(0)
        return scores.min(dim=-1)
    values = scores.amin(dim=-1)
    k = scores.shape[-1]
    if scores.is_contiguous():
        # take() on flat offsets is several times faster than gather() here.
        rows = torch.arange(0, scores.numel(), k, device=scores.device).view(previous.shape)
        kept = scores.view(-1).take(rows.add_(previous))
    else:
        kept = scores.gather(-1, previous.unsqueeze(-1)).squeeze(-1)
    moved = (kept > values).nonzero(as_tuple=True)
    labels = previous.clone()
    if moved[0].numel():
        labels[moved] = row_min(scores[moved])[1]
    return values, labels


# Several problems with up to this many centroids: a CPU block is scored as
# (b, k, m), where the minimum over k is a reduction across contiguous rows,
# which vectorises; the (b, m, k) view of one product against all b*k
# centroids reduces short strided rows one at a time (measured 3-10x slower
# for b = 10..200, k = 10..64). For one problem, or from a few hundred
# centroids, the row layout is as fast or faster.
_COLUMN_LAYOUT_MAX_K = 128


@_device.full_precision
def assign_block(
    xb: torch.Tensor, augmented: torch.Tensor, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row of a block of ``[x | 1]`` rows ``(bx, m, d+1)``.

    ``augmented`` ``(b, k, d+1)`` are :func:`augmented_centroids`; returns the
    minimum score and its index, both ``(b, m)``. ``previous`` labels
    ``(b, m)`` warm-start the search on the CPU (see :func:`argmin_rows`).
    """
    b, k, width = augmented.shape
    # One problem takes the layout of Lloyd's warm-started passes
    # (scored_by_columns): scored alike, a first pass and the next ones break
    # near ties alike, where the two layouts round differently.
    one_in_rows = b == 1 and not scored_by_columns(k, width - 1)
    if not _device.on_host(xb.device) or one_in_rows or k > _COLUMN_LAYOUT_MAX_K:
        return argmin_rows(augmented_scores(xb, augmented), previous)
    if xb.shape[0] == 1:
        scores = torch.mm(augmented.reshape(b * k, width), xb[0].T).view(b, k, -1)
    else:
        scores = torch.bmm(augmented, xb.transpose(1, 2))
    return argmin_columns(scores, previous)


def argmin_columns(
    scores: torch.Tensor, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and its index over the middle dimension of ``scores`` ``(b, k, m)``.

    As :func:`argmin_rows` for the transposed layout: the minimum without
    indices, then a full search only where the ``previous`` label no longer
    attains it. Without previous labels, ``min`` with indices of every column.

    Examples
    --------
    >>> values, labels = argmin_columns(torch.tensor([[[3.0, 1.0], [2.0, 1.0]]]))
    >>> values.tolist(), labels.tolist()
    ([[2.0, 1.0]], [[1, 0]])
    """
    if scores.numel() < _WARM_START_MIN_ELEMENTS:
        values, indices = scores.min(dim=1)
        return values, indices
    if previous is None:
        if scores.shape[0] > 1 or not _device.on_host(scores.device):
            values, indices = scores.min(dim=1)
            return values, indices
        values = scores.amin(dim=1)
        return values, first_column_minimum(scores[0], values[0]).long().unsqueeze(0)
    b, m = scores.shape[0], scores.shape[2]
    values = scores.amin(dim=1)
    labels = previous.clone()
    if b == 1 and scores.is_contiguous():
        # take() on flat offsets is several times faster than gather() here:
        # (label, column) sits at label * m + column.
        offsets = torch.arange(m, device=scores.device).add_(previous[0], alpha=m)
        moved = (scores.view(-1).take(offsets) > values[0]).nonzero().squeeze(1)
        if moved.numel():
            # min() with indices: several times faster than argmin() on the CPU,
            # with the same first-index rule.
            found = scores[0].index_select(1, moved).min(dim=0).indices
            labels[0].index_copy_(0, moved, found)
        return values, labels
    kept = scores.gather(1, previous.unsqueeze(1)).squeeze(1)
    problem, column = (kept > values).nonzero(as_tuple=True)
    if problem.numel():
        labels[problem, column] = scores[problem, :, column].min(dim=-1).indices
    return values, labels


# Rows of at most this many features get their exact distances feature by feature.
_NARROW_ROW_MAX_D = 16


def exact_distances(
    xb: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, cosine: bool
) -> torch.Tensor:
    """Distance of each row of a block to its labelled centroid, from differences.

    The expansion used for the argmin loses digits when a point sits on its
    centroid; this recomputes only the chosen distance (``m * d`` work), so
    reported distances and inertia are as exact as ``sum((x - c)**2)``.
    ``xb`` ``(bx, m, d)``, ``centroids`` ``(b, k, d)``, ``labels`` ``(b, m)``.
    """
    b, k, d = centroids.shape
    m = labels.shape[1]
    if b == 1 and xb.shape[0] == 1 and _device.on_host(xb.device) and d <= _NARROW_ROW_MAX_D:
        # Narrow rows: the differences as (d, m) rows of features, summed down
        # the columns, vectorise; sums over rows of a few elements do not
        # (131,072 x 2: 0.7 ms against 2.2 ms; x 8: 1.1 against 2.4; x 16: 2.8
        # against 3.9).
        chosen_t = centroids[0].T.index_select(1, labels[0])  # (d, m)
        norms = (xb[0].square().sum(1), chosen_t.square().sum(0)) if cosine else None
        difference = torch.sub(xb[0].T, chosen_t, out=chosen_t)
        distances = difference.square_().sum(0)
        if norms is not None:
            distances = _cosine_from_squared(distances, *norms)
        return distances.unsqueeze(0)
    flat = labels if b == 1 else labels + torch.arange(0, b * k, k, device=labels.device)[:, None]
    # index_select of whole rows is many times faster than gather() here.
    chosen = centroids.reshape(b * k, d).index_select(0, flat.reshape(-1)).view(b, m, d)
    norms = (xb.square().sum(-1), chosen.square().sum(-1)) if cosine else None
    difference = xb - chosen
    distances = difference.mul_(difference).sum(-1)
    return distances if norms is None else _cosine_from_squared(distances, *norms)


def _cosine_from_squared(
    squared: torch.Tensor, x_sq: torch.Tensor, c_sq: torch.Tensor
) -> torch.Tensor:
    """``1 - cos`` of rows and centroids from ``|x - c|^2``, ``|x|^2`` and ``|c|^2``.

    As ``(|x - c|^2 - (|x| - |c|)^2) / (2 |x| |c|)``: for unit rows
    ``|x - c|^2 / 2``, whose error is relative, where ``1 - x.c`` keeps the
    rounding of their unit lengths (float32 rows 1e-3 from their centroid
    measured 1.4x too far). 1 where either is zeros (no direction).
    """
    x_norm, c_norm = x_sq.sqrt(), c_sq.sqrt()
    product = x_norm * c_norm  # broadcast: x may be one batch for many of c
    zero = product == 0
    # Divided by 1 where it is 0, so that no NaN reaches a gradient through where().
    distances = (squared - (x_norm - c_norm).square()) / (torch.where(zero, 1.0, product) * 2.0)
    # NaN rows stay NaN (X is checked for them from the results).
    return torch.where(zero, 1.0, distances).clamp(0.0, 2.0)


# Below this many scores per block, the buffers of the augmented product in
# nearest_centroids cost more than the pass over the block they save.
_AUGMENTED_MIN_ELEMENTS = 1 << 16


def nearest_centroids(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    metric: str = "euclidean",
    memory_budget: int | None = None,
) -> Nearest:
    """Index of, and distance to, the nearest centroid of every row of ``x``.

    Rows are processed in blocks whose distance matrix fits ``memory_budget``
    bytes, so memory stays bounded for any number of rows. Euclidean labels
    are nearest to within the precision of the distances themselves, also for
    data far from the origin: rows whose label the rounding of the fast
    expansion could have decided are checked again in float64. Half-precision
    input is computed, and its distances returned, in float32. Euclidean rows
    and centroids too small for their squared distances (float32 below
    ~3e-16), or so large that the expansion could overflow (float32 entries
    from ~1e18), are scored scaled by a power of two, exactly, and their
    distances returned in float64 (inf only beyond float64's range). The
    search is not differentiable: the inputs are detached and the distances
    carry no gradient (use :func:`pairwise_distances` for a differentiable
    loss).

    Parameters
    ----------
    x : Tensor
        ``(n, d)`` or ``(b, n, d)``, floating point. For ``metric="cosine"``
        the rows should already be unit vectors (see :func:`unit_rows`).
    centroids : Tensor
        ``(k, d)`` or ``(b, k, d)`` with k >= 1, on ``x``'s device; converted
        to ``x``'s dtype.
    metric : {"euclidean", "cosine"}
        Squared euclidean distance, or ``1 - cos`` on unit vectors.
    memory_budget : int, optional
        Bytes the distance block may take.

    Returns
    -------
    Nearest
        ``labels`` (int64) and ``distances``, ``(n,)`` or ``(b, n)``.

    Raises
    ------
    TypeError
        If ``x`` or ``centroids`` is not a floating-point tensor.
    ValueError
        If ``centroids`` is empty or does not match ``x`` in features or
        batch size, or ``metric`` is unknown.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [9.0, 9.0]])
    >>> c = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    >>> nearest_centroids(x, c)
    Nearest(labels=tensor([0, 0, 1]), distances=tensor([0., 1., 2.]))
    >>> nearest_centroids(x, torch.stack([c, c.flip(0)])).labels  # two problems
    tensor([[0, 0, 1],
            [1, 1, 0]])
    """
    x = v.check_data(x)
    centroids = v.check_centroids(centroids, x)
    v.check_memory_budget(memory_budget)
    # In x's (computed) dtype on every path (the native kernel converts them too).
    dtype = compute_dtype(x.dtype)
    x, centroids = x.to(dtype), centroids.to(dtype)
    labels, distances = _nearest(x, centroids, metric=metric, memory_budget=memory_budget)
    assert distances is not None
    return Nearest(labels, distances)


# One problem with at most this many centroids is scored as (k, m) blocks on
# the CPU: amin() over rows of fewer than 64 elements vectorises badly, except
# at 32 (20,000 rows: k=16 179 us against 23 us across 16 contiguous rows;
# k=10, 1,797 rows: 19 us against 4 us), while the minimum across k
# contiguous rows runs at memory speed.
_COLUMN_SCORES_MAX_K = 63
# ... and at most this many features in Lloyd's warm-started passes: with wider
# rows the (k, m) product runs slower than the (m, k) one by more than the
# minimum saves (in-process A/B of fits: d=64, k=20 0.82x the time; d=128,
# k=10 1.03x; d=256, k=40 1.11x).
_COLUMN_SCORES_MAX_D = 64
# Labelling from scratch (nearest_centroids, predict) takes the columns for
# at most this many features, and from this many scores a block (below, the
# buffers cost more than they save): d=16 0.64-0.88x the time, d=32 1.0-1.3x.
_COLUMN_NEAREST_MAX_D = 16
_COLUMN_NEAREST_MIN_ELEMENTS = 1 << 15
# Any rows with at most this many multiply-adds per search (n * k * d: a
# small batch, a small data set) are scored from differences too: there the
# ops around the expansion (centring, checking) cost more than the search.
# nearest_centroids, 2 threads, differences' time over the expansion's: up to
# 2^18 0.3-0.5x (569 x 30, k=2; 300 x 128, k=6; 100 x 20, k=128); 2^20-2^21
# 0.35-0.75x in float32, 0.45-1.06x in float64; 2^22 0.75-1.0x in float32,
# 0.9-1.2x in float64.
_DIFFERENCES_MAX_WORK = 1 << 20
# ... counting the rows a column group scores at once (two vectors of float32
# lanes with AVX-512): fewer rows cost as much, 1.5-2.7x the expansion's time
# for 1-16 rows at 2^20. And at most this many features: each distance is a
# float32 sum of d squared differences, whose rounding grows with d (d=128:
# labels 5e-7 and distances 9e-7 from the exact ones; d=16,384: 3.5e-6 and
# 1.2e-5, where the expansion's are certified and recomputed in float64).
_COLUMN_GROUP_ROWS = 32
_DIFFERENCES_MAX_FEATURES = 128
# Rows of at most this many features have their squared norms summed by a
# product with ones in pairwise_distances (see there).
_PRODUCT_NORMS_MAX_D = 3
# Rows of a block of pairwise_distances on the CPU, at most (see there).
_PAIRWISE_MAX_ROWS = 1 << 15
# ... and at most this many bytes of rows (their centred copy, in a buffer
# reused by every block): 4 MiB ones took 1.2-1.4x the time of transform at
# d=64-256 (20,000-200,000 rows, k=8-64).
_PAIRWISE_BLOCK_BYTES = 2 * 1024 * 1024
# Few centroids: pairwise_distances on the CPU computes each block as (k, m)
# and copies it transposed into the (n, k) output. MKL's skinny product runs
# 1.6-2.5x faster in that orientation on the AMD machine (2,048 x 64 rows,
# k=8, float64: 59 us against 144 us; numpy's OpenBLAS 62 us), and the
# minimum over k runs across contiguous rows; torch's transposed copy is
# cheap for k <= 16 and costs more than the product saves from k=64 (d < 512).
# Time of both over the (m, k) product's, 1 MiB of rows: k=4-8 0.45-0.67x
# at every d, k=2 0.7-1.1x; k=16-32 0.6-1.05x from d=32, 1.0-2.8x below.
_PAIRWISE_COLUMNS_MAX_K = 32
_PAIRWISE_COLUMNS_MIN_D = 32


def pairwise_by_columns(k: int, d: int) -> bool:
    """Whether pairwise_distances on the CPU computes its blocks as ``(k, m)`` (see above)."""
    return k <= 8 or (k <= _PAIRWISE_COLUMNS_MAX_K and d >= _PAIRWISE_COLUMNS_MIN_D)


def scored_by_columns(k: int, d: int) -> bool:
    """Whether Lloyd on one CPU problem scores its blocks as ``(k, m)`` (see above)."""
    return k <= _COLUMN_SCORES_MAX_K and d <= _COLUMN_SCORES_MAX_D


def scored_by_differences(x: torch.Tensor, k: int) -> bool:
    """Whether rows ``x`` ``(n, d)`` labelled against k centroids take the fused
    kernel's column layout scored from differences: narrow rows, where the
    expansion's rounding would most often need checking (see ``certify``) and
    differences cost little more. Their labels and distances are then exact
    wherever the rows lie: nothing to centre or check."""
    n, d = x.shape
    rows = -(-n // _COLUMN_GROUP_ROWS) * _COLUMN_GROUP_ROWS
    small = d <= _DIFFERENCES_MAX_FEATURES and rows * k * d <= _DIFFERENCES_MAX_WORK
    return (
        _device.on_host(x.device)
        and _native.prefers_native(x, k, within_lloyd=False)
        and (_native._columns(d, k) or small)
    )


def nearest_by_differences(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and exact distances of rows ``x`` ``(n, d)`` that
    :func:`scored_by_differences` accepts, in one kernel call; ``totals``
    ``(k, d+1)`` float64, when given, receive each cluster's (``weights``-
    weighted) sum of rows and sum of weights."""
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    distances = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    _native.nearest(
        x,
        centroids.contiguous(),
        labels,
        weights=weights,
        distances=distances,
        totals=totals,
        columns=True,
        differences=True,
    )
    return labels, distances


def _nearest(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    metric: str = "euclidean",
    memory_budget: int | None = None,
    exact: bool = True,
    checked: bool = True,
    precise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`nearest_centroids`: labels, and distances unless ``exact=False`` (None).

    Euclidean rows are scored centred on the centroids' mean (block by block,
    no copy of ``x``): the ``|x|^2 - 2 x.c + |c|^2`` expansion then keeps its
    precision for data far from the origin. Its labels are then checked
    against the rounding of the scores and corrected where it could have
    chosen wrongly (see ``certify``). Narrow rows on the CPU are instead
    scored from differences (:func:`scored_by_differences`).

    ``checked=False`` skips the host reads, the check of the labels and the
    tests for squared distances that underflow or overflow (the caller knows
    they do not): the steps of a loop off the CPU, whose final labels are
    checked. ``precise=False`` keeps the labels exact but not the distances
    of rows near their centre that the centring rounded (finite where the
    exact ones are): for a caller that only tests them for overflow
    (``predict``).
    """
    if metric != "euclidean":
        return _nearest_unchecked(
            x, centroids, metric=metric, memory_budget=memory_budget, offset=None, exact=exact
        )
    exponent = scale_exponent_of(x, centroids) if checked else 0
    if exponent:
        # Squared distances this small underflow (float32 rows and centroids
        # near 1e-25: every score 0, every label a tie), or this large
        # overflow (float32 near 2^62: scores inf - inf, 1,416 of 2,000
        # labels not the nearest centroid at 2^63): scored scaled by a power
        # of two, exactly; the distances come back in float64.
        return _nearest_scaled(x, centroids, exponent, memory_budget, exact, precise)
    x3, c3, _ = _as_batched(x, centroids)
    n, k = x3.shape[1], c3.shape[1]
    one = x3.shape[0] == 1 and c3.shape[0] == 1
    if one and scored_by_differences(x3[0], k):
        labels, distances = nearest_by_differences(x3[0], c3[0])
        if checked and squared_norms_overflow(distances):
            # A row far larger than the centroids: a distance of inf to
            # each was a tie.
            exponent = overflow_exponent_of(x, centroids)
            if exponent:
                return _nearest_scaled(x, centroids, exponent, memory_budget, exact, precise)
        if x.ndim == 3 or centroids.ndim == 3:
            labels, distances = labels[None], distances[None]
        return labels, distances if exact else None
    offset = c3.mean((0, 1))
    centred = centroids - offset
    if not checked:
        return _nearest_unchecked(
            x, centred, metric=metric, memory_budget=memory_budget, offset=offset, exact=exact
        )
    # Distances are measured from x and the centroids as given, not between
    # the centred rows and centroids: centring rounds both, and the distances
    # of rows near their centre far from the offset had to be measured again
    # (tight clusters, or duplicated rows each near its centre: score 3-8x
    # scikit-learn's time, nearly all of it in that second pass).
    if one and _device.on_host(x.device) and _native.prefers_native(x3[0], k, within_lloyd=False):
        minima = torch.empty(n, dtype=x.dtype, device=x.device)
        labels, distances = _nearest_native(
            x3[0], centred.reshape(c3.shape[1:]), True, offset, True, minima, given=c3[0]
        )
        if x.ndim == 3 or centroids.ndim == 3:
            labels, distances = labels[None], distances[None]
        # Scores are |c'|^2 - 2 x'.c': the squared norm of a centred row is its
        # distance less its score, without another pass over x.
        norms = minima.neg_().add_(distances.reshape(n)).clamp_min_(0.0).view(1, n)
    else:
        labels, distances = _nearest_unchecked(
            x,
            centred,
            metric=metric,
            memory_budget=memory_budget,
            offset=offset,
            exact=True,
            given=c3,
        )
        norms = squared_frame_norms(x3, offset) if n else None
    assert distances is not None
    if n and norms is not None and squared_norms_overflow(norms):
        # Rows far larger than the centroids (the centroids' scale was read
        # above): their scores may have overflowed, and certify_nearest
        # would trust distances of inf. Scored again, all rows, scaled.
        exponent = overflow_exponent_of(x, centroids)
        if exponent:
            return _nearest_scaled(x, centroids, exponent, memory_budget, exact, precise)
    if n:
        certify_nearest(
            x3,
            c3,
            labels.view(-1, n),
            distances.view(-1, n),
            frame_squared_norms=norms,
            centred=False,
            precise=precise and exact,
        )
    return labels, distances if exact else None


def overflow_exponent_of(x: torch.Tensor, centroids: torch.Tensor) -> int:
    """:func:`overflow_exponent` of rows ``x`` and ``centroids`` together (reads both)."""
    largest = max(float(x.detach().abs().amax()), float(centroids.detach().abs().amax()))
    return overflow_exponent(largest, x.dtype, x.shape[-1])


def _nearest_scaled(
    x: torch.Tensor,
    centroids: torch.Tensor,
    exponent: int,
    memory_budget: int | None,
    exact: bool,
    precise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_nearest` of ``x`` and ``centroids`` scaled by ``2^exponent``
    (exact), with the distances scaled back in the widest float."""
    labels, distances = _nearest(
        times_power_of_two(x, exponent),
        times_power_of_two(centroids, exponent),
        memory_budget=memory_budget,
        exact=exact,
        precise=precise,
    )
    if distances is not None:
        wide = _device.widest_float(distances.device)
        distances = times_power_of_two(distances.to(wide), -2 * exponent)
    return labels, distances


def _nearest_unchecked(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    metric: str,
    memory_budget: int | None,
    offset: torch.Tensor | None,
    exact: bool,
    given: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_nearest` before its labels are checked. ``centroids`` are
    ``given - offset`` when ``given`` (``(b, k, d)``): the distances are then
    measured between ``x`` and ``given``, not between the centred rows and
    centroids (see ``_native.nearest``)."""
    x3, c3, batched = _as_batched(x, centroids)
    b, k, _ = c3.shape
    n, d = x3.shape[1], x3.shape[2]
    euclidean = metric == "euclidean"
    if not euclidean and metric != "cosine":
        raise ValueError(f"Expected metric to be 'euclidean' or 'cosine', got {metric!r}.")
    # Rows of a block: centred (one copy), and each problem's differences to
    # its centroids (exact_distances: two).
    rows = block_rows(
        n,
        b * k,
        itemsize=x.element_size(),
        memory_budget=memory_budget,
        device=x.device,
        row_elements=(x3.shape[0] + 2 * b) * d,
    )
    if _device.on_host(x.device):
        # The block's rows of x are copied (centred, or into [x | 1]) and read
        # again for the distances: cache-sized too, not only the scores (fresh
        # pages for 20,000 x 1024 rows made predict 2x slower than scikit-learn's).
        row_cap = _CPU_BLOCK_BYTES // ((d + 1) * x.element_size())
        rows = max(1, min(rows, max(_MIN_BLOCK_ROWS, row_cap)))
    if (
        _device.on_host(x.device)
        and b == 1
        and x3.shape[0] == 1
        and _native.prefers_native(x3[0], k, within_lloyd=False)
    ):
        labels, distances = _nearest_native(
            x3[0], c3[0], euclidean, offset, exact, given=None if given is None else given[0]
        )
        if batched:
            return labels[None], None if distances is None else distances[None]
        return labels, distances
    # Rows tied between copies of a centroid go to the first copy, as in the
    # fused kernel: a BLAS product scores copies a rounding apart.
    copies = first_copies(c3)
    if (
        _device.on_host(x.device)
        and b == 1
        and x3.shape[0] == 1
        and k <= _COLUMN_SCORES_MAX_K
        and d <= _COLUMN_NEAREST_MAX_D
        and min(rows, n) * k >= _COLUMN_NEAREST_MIN_ELEMENTS
    ):
        labels, distances = _nearest_by_columns(
            x3[0], c3[0], euclidean, rows, offset, exact, None if given is None else given[0]
        )
        if copies is not None:
            labels = copies[0][labels]
        if batched:
            return labels[None], None if distances is None else distances[None]
        return labels, distances
    c_sq = squared_norms(c3) if euclidean else None
    labels = torch.empty((b, n), dtype=torch.int64, device=x.device)
    distances = torch.empty((b, n), dtype=x.dtype, device=x.device) if exact else None
    augmented: torch.Tensor | None = None
    if (
        euclidean
        and x3.shape[0] == 1
        and _device.on_host(x.device)
        and d + 1 < b * k
        and min(rows, n) * b * k >= _AUGMENTED_MIN_ELEMENTS
    ):
        # On the CPU addmm writes its broadcast bias (|c|^2) in a pass of its
        # own over the block, and a fresh block is allocated each time: copying
        # the rows into [x | 1] (narrower than the block) and one plain mm with
        # [-2c | |c|^2] into a reused block gives the same scores for less
        # (0.76x the time at 100,000 x 128, k=1024; 0.64x at k=4096).
        augmented = augmented_centroids(c3)
        rows_aug = torch.empty((1, min(rows, n), d + 1), dtype=x.dtype, device=x.device)
        rows_aug[..., d] = 1.0
        scores_out = torch.empty((min(rows, n), b * k), dtype=x.dtype, device=x.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        xb = x3[:, start:stop]
        if augmented is None:
            if offset is not None:
                xb = xb - offset
            scores = partial_scores(xb, c3, c_sq)
        else:
            m = stop - start
            block_aug = rows_aug[:, :m]
            if offset is None:
                block_aug[..., :d] = xb
            else:
                torch.sub(xb, offset, out=block_aug[..., :d])
                xb = block_aug[..., :d]
            scores = augmented_scores(block_aug, augmented, out=scores_out[:m])
        _, block_labels = argmin_rows(scores)
        if copies is not None:
            block_labels = copies.gather(1, block_labels)
        labels[:, start:stop] = block_labels
        if distances is not None:
            if given is None:
                distances[:, start:stop] = exact_distances(xb, c3, block_labels, not euclidean)
            else:
                distances[:, start:stop] = exact_distances(
                    x3[:, start:stop], given, block_labels, not euclidean
                )
    if not batched:
        return labels[0], None if distances is None else distances[0]
    return labels, distances


def _nearest_native(
    x: torch.Tensor,
    centroids: torch.Tensor,
    euclidean: bool,
    offset: torch.Tensor | None,
    exact: bool,
    minima: torch.Tensor | None = None,
    *,
    given: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_nearest` of one CPU problem through the fused kernel (see
    ``_native``): labels and distances in one pass over ``x`` ``(n, d)``,
    and each row's lowest score into ``minima`` when given; the distances
    are measured from ``x`` and ``given`` (the centroids before centring)
    when given."""
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    distances = torch.empty(n, dtype=x.dtype, device=x.device) if exact else None
    _native.nearest(
        x,
        centroids,
        labels,
        cosine=not euclidean,
        offset=None if offset is None else offset.reshape(-1),
        distances=distances,
        minima=minima,
        given=given,
    )
    return labels, distances


def first_column_minimum(
    scores: torch.Tensor,
    minima: torch.Tensor,
    work: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """First index of each column's minimum in ``scores`` ``(k, m)``, as floats ``(m,)``.

    ``minima`` ``(m,)`` are the column minima (``scores.amin(0)``). With ``v``
    the minimum, ``sign(s - v)`` is 0 exactly where ``s == v`` and 1
    elsewhere, so the minimum of ``index + k * sign(s - v)`` down a column is
    the first index holding ``v``: four ops that vectorise on the CPU, where
    ``min`` with indices runs 2-3x slower. ``work`` ``(k, m)`` and ``out``
    ``(m,)`` are optional buffers.

    Examples
    --------
    >>> scores = torch.tensor([[3.0, 1.0], [2.0, 1.0]])
    >>> first_column_minimum(scores, scores.amin(0))
    tensor([1., 0.])
    """
    k = scores.shape[0]
    work = torch.sub(scores, minima, out=work).sign_()
    column_index = torch.arange(k, dtype=scores.dtype, device=scores.device).unsqueeze(1)
    torch.add(column_index, work, alpha=k, out=work)
    return torch.amin(work, 0, out=out)


@_device.full_precision
def _nearest_by_columns(
    x: torch.Tensor,
    centroids: torch.Tensor,
    euclidean: bool,
    rows: int,
    offset: torch.Tensor | None,
    exact: bool,
    given: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_nearest` for one problem with few centroids on the CPU.

    Each block of rows is copied (centred) into ``[x | 1]`` and scored as
    ``(k, m)`` against the augmented centroids; the first index of each
    column's minimum comes from :func:`first_column_minimum`. ``x`` ``(n, d)``,
    ``centroids`` ``(k, d)``; the distances are measured from ``x`` and
    ``given`` ``(k, d)`` (the centroids before centring) when given.
    """
    n, d = x.shape
    k = centroids.shape[0]
    rows = max(1, min(rows, n))  # already cache-sized in the width of x by _nearest
    dtype, device = x.dtype, x.device
    augmented = augmented_centroids(centroids[None], "euclidean" if euclidean else "cosine")[0]
    rows_aug = torch.empty((rows, d + 1), dtype=dtype, device=device)
    rows_aug[:, d] = 1.0
    scores_buffer = torch.empty(rows * k, dtype=dtype, device=device)
    work_buffer = torch.empty(rows * k, dtype=dtype, device=device)
    minima = torch.empty(rows, dtype=dtype, device=device)
    first = torch.empty(rows, dtype=dtype, device=device)
    labels = torch.empty(n, dtype=torch.int64, device=device)
    distances = torch.empty(n, dtype=dtype, device=device) if exact else None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        m = stop - start
        block = rows_aug[:m]
        centred = block[:, :d]
        if offset is None:
            centred.copy_(x[start:stop])
        else:
            torch.sub(x[start:stop], offset, out=centred)
        scores = torch.mm(augmented, block.T, out=scores_buffer[: k * m].view(k, m))
        block_minima = torch.amin(scores, 0, out=minima[:m])
        work = work_buffer[: k * m].view(k, m)
        labels[start:stop] = first_column_minimum(scores, block_minima, work, first[:m])
        if distances is not None:
            measured, references = (centred, centroids) if given is None else (x[start:stop], given)
            distances[start:stop] = exact_distances(
                measured[None], references[None], labels[None, start:stop], not euclidean
            )[0]
    return labels, distances


def _exact_entries(
    out: torch.Tensor,
    suspect: torch.Tensor,
    x_norm: torch.Tensor,
    c_norm: torch.Tensor,
    c_norm_max: float | torch.Tensor,
    x: torch.Tensor,
    centroids: torch.Tensor,
    factor: float,
) -> None:
    """The entries of one problem's distances ``out`` ``(n, k)`` (contiguous)
    from :func:`pairwise_distances` on the host that the expansion's
    rounding could make inexact, computed again from differences, in place.

    ``suspect`` ``(n,)`` marks the rows whose least entry was below their
    threshold (see there), ``x_norm`` ``(n,)`` and ``c_norm`` ``(k,)`` are the
    norms of the centred rows and centroids (in the widest float),
    ``c_norm_max`` the largest of those; ``x`` ``(n, d)`` and ``centroids``
    ``(k, d)`` as given. Taken once for all the blocks, by index_select:
    block by block, advanced indexing (an integer with an index, a transposed
    block) took 3-7 ms a call for the 7,000 rows of 60,000 that sat on their
    centre (duplicated rows: transform 1.2-1.4x scikit-learn's time).
    ``out`` holds the entries rounded to its dtype: each test allows that
    rounding, so that no entry the wide ones would test is left out.
    """
    rows = suspect.nonzero().squeeze(1)
    if not rows.numel():
        return
    k = out.shape[1]
    wide = x_norm.dtype
    # Twice the rounding: the limits are rounded to out's dtype too.
    slack = 1.0 + 2 * torch.finfo(out.dtype).eps
    norms = x_norm.index_select(0, rows)
    limits = (norms + c_norm_max).square_().div_(factor / slack).to(out.dtype)
    below = out.index_select(0, rows) < limits.unsqueeze(1)
    entry = below.view(-1).nonzero().squeeze(1)
    column = entry % k
    entry = entry.div_(k, rounding_mode="floor")
    row = rows.index_select(0, entry)
    position = row * k + column
    flat = out.view(-1)
    scale = norms.index_select(0, entry).add_(c_norm.index_select(0, column)).square_()
    inexact = (scale.mul_(slack) > flat.index_select(0, position) * factor).nonzero().squeeze(1)
    if not inexact.numel():
        return
    row, column = row.index_select(0, inexact), column.index_select(0, inexact)
    position = position.index_select(0, inexact)
    centroids = centroids.to(wide)
    # The differences in cache-sized pieces of one reused buffer: fresh ones
    # were fresh pages in every call (6,000 rows of 20,000 x 64 on their
    # centres: 0.4 ms of the 0.9 these entries took, float64).
    d = x.shape[1]
    step = max(1, _PAIRWISE_BLOCK_BYTES // (d * wide.itemsize))
    count = int(row.numel())
    buffer = _device.reused("exact entries", (min(count, step), d), wide)
    taken = None
    if x.dtype != wide:
        taken = _device.reused("exact entries rows", (min(count, step), d), x.dtype)
    for first in range(0, count, step):
        last = min(count, first + step)
        difference = buffer[: last - first]
        if taken is None:
            torch.index_select(x, 0, row[first:last], out=difference)
        else:
            difference.copy_(torch.index_select(x, 0, row[first:last], out=taken[: last - first]))
        difference.sub_(centroids.index_select(0, column[first:last]))
        # One reduction, without vecdot's block of squares (see pairwise_distances).
        exact = torch.linalg.vector_norm(difference, dim=-1).square_().to(out.dtype)
        flat.index_copy_(0, position[first:last], exact)


def _cosine_entries_again(
    out: torch.Tensor, x3: torch.Tensor, c3: torch.Tensor, limit: float
) -> torch.Tensor:
    """``out`` ``(b, n, k)``, ``1 - x.c`` of ``x3`` ``(bx, n, d)`` (bx in
    {1, b}) and ``c3`` ``(b, k, d)``, with its entries below ``limit``
    measured again as ``1 - cos`` from differences (see
    :func:`pairwise_distances`), in pieces of ``_PAIRWISE_BLOCK_BYTES`` of
    float64 differences. Gathered at once, the entries' rows and centroids
    took ``(entries, d)`` each, in both dtypes: embeddings of one broad
    direction have every entry below the limit (float32, d=256: about 220
    times the size of the output)."""
    b, n, k = out.shape
    flat = (out.detach() < limit).view(-1).nonzero().squeeze(1)
    count = int(flat.numel())
    if not count:
        return out
    # One x for b problems: its (1, n, d) view stands for each of them.
    x3 = x3.expand(b, -1, -1)
    wide = _device.widest_float(x3.device)
    step = max(1, _PAIRWISE_BLOCK_BYTES // (x3.shape[-1] * wide.itemsize))
    values = []
    for first in range(0, count, step):
        entry = flat[first : first + step]
        problem, row, centroid = entry // (n * k), entry // k % n, entry % k
        rows, centres = x3[problem, row], c3[problem, centroid]
        values.append(
            _cosine_from_squared(
                (rows - centres).to(wide).square().sum(-1),
                rows.to(wide).square().sum(-1),
                centres.to(wide).square().sum(-1),
            ).to(out.dtype)
        )
    return out.reshape(-1).index_put((flat,), torch.cat(values)).view(b, n, k)


@_device.full_precision
def pairwise_distances(
    x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean"
) -> torch.Tensor:
    """Full distance matrix between rows of ``x`` and ``centroids``.

    Materialises ``(n, k)`` (or ``(b, n, k)``): use it for ``transform``-sized
    outputs, and :func:`nearest_centroids` when only the minimum is needed.
    Euclidean distances are squared, computed in float64 from float32 or half
    input (as scikit-learn's ``euclidean_distances``), on rows centred on the
    centroids' mean, in blocks of rows; entries that the expansion's rounding
    could make inexact (a row close to a centroid, both far from that mean)
    are computed again from differences: each float32 entry is within 2^-23
    (float32's eps) of the exact squared distance, each float64 one within
    2^-17, whatever the number of features. ``metric="cosine"``
    gives ``1 - x.c`` clamped to [0, 2], entries near 0 measured again as
    ``1 - cos`` from differences (each within 2.4e-4 of exact, relatively):
    rows and centroids should already be unit vectors (see
    :func:`unit_rows`), as for :func:`nearest_centroids`.
    The result has the input's (computed) dtype.

    Raises
    ------
    TypeError
        If ``x`` or ``centroids`` is not a floating-point tensor.
    ValueError
        If they are not 2-D or 3-D, have no features, differ in features
        or batch size, ``centroids`` is empty, or ``metric`` is unknown.

    Examples
    --------
    >>> pairwise_distances(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))
    tensor([[25.]])
    >>> pairwise_distances(torch.tensor([[1e4, 0.0]]), torch.tensor([[1e4 + 0.5, 0.0]]))
    tensor([[0.2500]])
    """
    # Checked as nearest_centroids checks them (integer tensors had come back
    # as truncated int64 distances); the checks' detached results are not
    # used, so that these distances stay differentiable.
    v.check_centroids(centroids, v.check_data(x))
    x3, c3, batched = _as_batched(x, centroids)
    dtype = compute_dtype(x3.dtype)
    if metric == "cosine":
        x3, c3 = x3.to(dtype), c3.to(dtype)
        out = torch.matmul(x3, c3.transpose(1, 2)).neg_().add_(1.0).clamp_(0.0, 2.0)
        # 1 - x.c keeps the rounding of the rows' unit lengths, ~(d + 4) eps:
        # entries below 2^12 times that (within 2.4e-4 of exact above it; float32
        # rows 1e-3 from a centroid measured up to 45x too far) are measured
        # again from differences, as the chosen centroid's distance is.
        limit = 4096 * (x3.shape[-1] + 4) * torch.finfo(dtype).eps
        out = _cosine_entries_again(out, x3, c3, limit)
        return out if batched else out[0]
    if metric != "euclidean":
        raise ValueError(f"Expected metric to be 'euclidean' or 'cosine', got {metric!r}.")
    wide = _device.widest_float(x3.device)
    b, k = c3.shape[0], c3.shape[1]
    n = x3.shape[1]
    on_host = _device.on_host(x3.device)
    # Without autograd the blocks are computed where they go (in ``out`` when
    # it is wide, else in one reused buffer): a fresh block per step, and its
    # copy into ``out``, cost a third of transform at k=50, d=2 (float64).
    direct = not (torch.is_grad_enabled() and (x3.requires_grad or c3.requires_grad))
    if on_host and direct:
        # Widened and centred in a buffer reused by the next call (see
        # _device.reused), as the rows' blocks below are.
        c_centred = _device.reused("pairwise centroids", tuple(c3.shape), wide).copy_(c3)
        offset = c_centred.mean(1, keepdim=True)
        c_centred.sub_(offset)
    else:
        c_wide = c3.to(wide)
        offset = c_wide.mean(1, keepdim=True)
        c_centred = c_wide - offset
    # One reduction, without vecdot's block of squares.
    c_norm = torch.linalg.vector_norm(c_centred, dim=-1)
    c_sq = c_norm.square()
    c_norm_max = c_norm.amax(-1, keepdim=True)
    # The expansion's rounding error is at most (d + 4) u (|x| + |c|)^2, u
    # the unit roundoff of the wide products, whatever order they sum in
    # (the norms' d squares, the product's d terms, three roundings more):
    # an entry is within ``precision`` of D while (|x| + |c|)^2 <= factor D.
    # A bound without d let entries through whose error grew with it (d=1000:
    # float32 entries 5.4e-7 off, float64 ones 8e-5, 11x the 2^-17 promised).
    unit = product_unit_roundoff(wide)
    precision = _TRUSTED_PRECISION
    if torch.finfo(dtype).eps > torch.finfo(wide).eps:
        # The entries are returned in ``dtype``: to its precision, not only to
        # the 2^-17 that labels are trusted to (float32 rows near the origin,
        # centres' mean at 3e3: 1.2e-5 off, 200 of float32's units). Half of
        # float32's eps, so that with its final rounding an entry is within eps.
        precision = min(precision, product_unit_roundoff(dtype))
    factor = precision / ((x3.shape[-1] + 4) * unit)
    out = _device.empty((b, n, k), dtype=dtype, device=x3.device)
    rows = block_rows(n, b * k, itemsize=8, device=x3.device)
    # Few centroids on the host: each block is computed as (k, m), where the
    # product and the minimum over centroids run faster, and copied transposed
    # into ``out`` (see _PAIRWISE_COLUMNS_MAX_K).
    columns = on_host and direct and pairwise_by_columns(k, x3.shape[-1])
    if on_host:
        # The block's rows are copied (widened, centred) and squared too:
        # cache-sized, not only the distances (20,000 x 300 rows and k=2 in
        # one block: page faults made transform 3x slower than scikit-learn's).
        row_cap = _PAIRWISE_BLOCK_BYTES // (x3.shape[0] * x3.shape[2] * 8)
        rows = max(1, min(rows, max(_MIN_BLOCK_ROWS, row_cap)))
        # Few narrow centroids make blocks of many rows, whose temporaries (the
        # rows' copy, norms, thresholds, minima) were fresh pages each time:
        # 200,000 rows, d=2, k=2 in one block took 6.6 ms, 3.4 ms in 7.
        rows = min(rows, _PAIRWISE_MAX_ROWS)
    # The blocks' scores and the rows' centred copy in buffers reused by every
    # block (and, on the host, by the next call: see _device.reused): fresh
    # ones were fresh pages each time (20,000 x 64, k=8: half of the time
    # went to the page faults of the copy and of vecdot's product).
    buffer = None
    if columns:
        buffer = _device.reused("pairwise scores", (b, k, min(n, rows)), wide)
    elif direct and dtype != wide:
        shape = (b, min(n, rows), k)
        if on_host:
            buffer = _device.reused("pairwise scores", shape, wide)
        else:
            buffer = torch.empty(shape, dtype=wide, device=x3.device)
    centred = None
    if on_host and direct:
        centred = _device.reused("pairwise rows", (b, min(n, rows), x3.shape[-1]), wide)
    # On the host without autograd, each block marks the rows whose least
    # entry is below their threshold, and their entries are tested, and
    # measured again, once for all the blocks (see _exact_entries).
    suspect = x_norms = None
    if on_host and direct:
        suspect = torch.empty((b, n), dtype=torch.bool, device=x3.device)
        # Rows centred on each problem's offset: (b, n) norms.
        x_norms = torch.empty((b, n), dtype=wide, device=x3.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        if centred is None:
            xb = x3[:, start:stop].to(wide) - offset
        else:
            # Widened by the copy, then centred in place: sub of float32 rows
            # into a float64 out= first makes a float64 copy of its own.
            xb = centred[:, : stop - start].copy_(x3[:, start:stop]).sub_(offset)
        if xb.shape[-1] <= _PRODUCT_NORMS_MAX_D:
            # The same sum, as a product with ones: torch's sum over a last
            # dimension of 2 or 3 took 2.8 ms for 200,000 rows, against 0.2 ms.
            x_sq = torch.matmul(xb * xb, xb.new_ones(xb.shape[-1]))
        else:
            # One reduction, without the block of squares that vecdot (and
            # mul, sum) writes first: that block's pages, fresh in every call
            # once the allocator had returned them, made transform of 1,000 x
            # 256 rows 2-3x scikit-learn's time (k=64-256); it is 2x faster.
            x_sq = torch.linalg.vector_norm(xb, dim=-1).square()
        if columns:
            assert buffer is not None
            # Contiguous (b, k, m) for the last, shorter block too.
            block_t = buffer.view(-1)[: b * k * (stop - start)].view(b, k, stop - start)
            torch.add(c_sq.unsqueeze(-1), x_sq.unsqueeze(1), out=block_t)
            block_t.baddbmm_(c_centred, xb.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
            block = block_t.transpose(1, 2)
        elif not direct:
            block = x_sq.unsqueeze(-1) + c_sq.unsqueeze(1)
            block.baddbmm_(xb, c_centred.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
        else:
            block = out[:, start:stop] if buffer is None else buffer[:, : stop - start]
            torch.add(x_sq.unsqueeze(-1), c_sq.unsqueeze(1), out=block)
            block.baddbmm_(xb, c_centred.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
        # An entry is inexact when D * factor < (|x| + |c|)^2. Bounding |c| by
        # the largest one gives each row one threshold, met by few rows: on the
        # host, the rows whose nearest entry is below it compare each entry
        # with it (elsewhere every entry does: one host read per block, not
        # two), and the entries below it take the exact test.
        if x_norms is None:
            threshold = (x_sq.sqrt() + c_norm_max).square_().div_(factor)
        else:
            x_norm = torch.sqrt(x_sq, out=x_norms[:, start:stop])
            threshold = (x_norm + c_norm_max).square_().div_(factor)
        if suspect is not None:
            nearest = block_t.amin(1) if columns else block.amin(-1)
            torch.lt(nearest, threshold, out=suspect[:, start:stop])
        else:
            below = block < threshold.unsqueeze(-1)
            problem, row, column = below.nonzero(as_tuple=True)
            if problem.numel():
                x_norm = x_sq[problem if x_sq.shape[0] > 1 else 0, row].sqrt_()
                scale = (x_norm + c_norm[problem, column]).square_()
                inexact = scale > block[problem, row, column] * factor
                problem, row, column = problem[inexact], row[inexact], column[inexact]
                # As many differences at a time as the block has rows: where
                # the expansion cannot hold the precision at all (float32 on
                # MPS, d > 124) every entry is measured again.
                for first in range(0, problem.numel(), stop - start):
                    last = first + stop - start
                    p, r, col = problem[first:last], row[first:last], column[first:last]
                    difference = x3[p if x3.shape[0] > 1 else 0, r + start].to(wide)
                    difference -= c3[p, col].to(wide)
                    # As _exact_entries measures them: the same entries on
                    # every path (vecdot's differed in the last bit).
                    norm = torch.linalg.vector_norm(difference, dim=-1)
                    block[p, r, col] = norm.square()
        if not (direct and buffer is None):
            out[:, start:stop] = block
    if suspect is not None and x_norms is not None:
        for problem in range(b):
            x_problem = problem if x3.shape[0] > 1 else 0
            _exact_entries(
                out[problem],
                suspect[problem],
                x_norms[problem],
                c_norm[problem],
                c_norm_max[problem],
                x3[x_problem],
                c3[problem],
                factor,
            )
    return out if batched else out[0]
