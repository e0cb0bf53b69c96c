"""Lloyd iterations and the ``kmeans`` entry point.

One iteration is a single pass over ``x`` in blocks of rows: distances,
argmin, and the scatter of each block into the cluster sums while the block
is still in cache. A batch of b problems (restarts, data sets) runs in the
same kernels; a problem that has converged is frozen with ``torch.where``, so
the host only looks at the stopping flags every ``check_every`` iterations
and the result is the same as checking after every one. On the CPU, problems
that share their data (restarts, a sweep over k) leave the batch once they
have converged, and their cluster sums follow only the points that change
cluster between full recomputations.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Union

import torch

from .. import _validation as v
from . import _device, _native
from .certify import certify_nearest, moved_centroids_floor, without_copies
from .distances import (
    _WARM_START_MIN_ELEMENTS,
    argmin_columns,
    argmin_rows,
    assign_block,
    augmented_centroids,
    block_rows,
    cache_rows,
    compute_dtype,
    exact_distances,
    first_copies,
    nearest_by_differences,
    overflow_exponent,
    row_min,
    scored_by_columns,
    scored_by_differences,
    squared_norms,
    times_power_of_two,
    underflow_exponent,
    unit_rows,
    weights_without_rows_of_zeros,
    wide_sum,
)
from .init import _seed_scorer, _seeds_less_offset, kmeans_plusplus, random_init
from .updates import (
    accumulate,
    add_rows,
    centroids_and_distinct,
    centroids_from_sums,
    relocate_empty_clusters,
)

__all__ = ["KMeansResult", "kmeans", "lloyd", "prepare"]

InitArg = Union[str, torch.Tensor, Callable[..., Any]]


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans` and :func:`lloyd`.

    For batched input every field has a leading batch dimension.
    """

    centroids: torch.Tensor
    """``(k, d)`` final centroids, in the input's scale (not centred)."""
    labels: torch.Tensor
    """``(n,)`` int64 index of the nearest centroid of each row."""
    inertia: torch.Tensor
    """Scalar: weighted sum of distances of the rows to their centroid."""
    n_iter: torch.Tensor
    """Scalar int64: Lloyd iterations run."""
    inertia_history: torch.Tensor
    """``(max_iter,)`` inertia of the assignment step of each iteration (NaN after ``n_iter``)."""


class Prepared(NamedTuple):
    """Data made ready for the iterations (see :func:`prepare`)."""

    x: torch.Tensor  # (bx, n, d), centred (euclidean) or unit rows (cosine); a view of x_aug
    x_aug: torch.Tensor  # (bx, n, d+1) contiguous rows [x | 1]
    x_sq: torch.Tensor | None  # (bx, n) squared norms, euclidean only
    weights: torch.Tensor | None  # (bw, n) or None
    offset: torch.Tensor  # (bx, 1, d) mean that was subtracted (zeros for cosine)
    mean_variance: torch.Tensor  # (bx,) mean feature variance, for tol
    metric: str
    batched: bool
    # (bw,) float64 weight of the cosine rows of zeros that the fit leaves
    # out (see _without_rows_of_zeros), added back to the inertia; or None.
    ignored: torch.Tensor | None = None
    # True: no centred copy was made. x is then the rows as given, (1, n, d)
    # on the CPU, that the fused kernel centres (less offset) as it reads
    # them, bit for bit as the copy would hold them; x_aug is empty, (1, 0,
    # d + 1). Only the kernel's paths read x so (see _centres_on_read);
    # anything else takes _copied(prep) first.
    centred_on_read: bool = False


def prepare(
    x: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
    metric: str = "euclidean",
    centred_on_read: bool = False,
) -> Prepared:
    """Centre (euclidean) or normalise (cosine) ``x`` once for all iterations.

    Half-precision data is computed in float32. Centring follows scikit-learn:
    it keeps the expansion ``|x|^2 - 2 x.c + |c|^2`` accurate for data far
    from the origin. ``x`` itself is never written to. ``centred_on_read``
    (rows the fused kernel reads as they are, see :func:`_centres_on_read`):
    no centred copy, the same offset and squared norms (see
    :attr:`Prepared.centred_on_read`).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"Expected metric to be 'euclidean' or 'cosine', got {metric!r}.")
    if centred_on_read and metric != "euclidean":
        # Cosine rows are normalised into the copy: without one, x itself.
        raise ValueError("Expected centred_on_read only with metric='euclidean'.")
    batched = x.ndim == 3
    x3 = x if batched else x.unsqueeze(0)
    dtype = compute_dtype(x.dtype)
    n, d = x3.shape[1], x3.shape[2]
    # One copy of the data, [x | 1]: centred or normalised in place below.
    # The ones column lets one matrix product give the scores and one scatter
    # give both the sums and the counts.
    # Not asked for huge pages (_device.empty): on a VM that hands freed
    # memory back to its host they made a fit after a pause of a few seconds
    # 1.5-2x slower (the host backs each huge page again), though 20% faster
    # in fits back to back.
    if centred_on_read:
        offset, x_sq = _centred_into(None, x3)
        x_aug, data = x3.new_empty((1, 0, d + 1)), x3
    else:
        x_aug = torch.empty((x3.shape[0], n, d + 1), dtype=dtype, device=x.device)
        data = x_aug[..., :d]
    if metric == "cosine":
        data.copy_(x3)
        x_aug[..., d] = 1.0
        unit_rows(data, out=data)
        offset = torch.zeros((x3.shape[0], 1, d), dtype=dtype, device=x.device)
        x_sq = None
        # mean feature variance = E|x|^2 / d - mean_j(E[x_j]^2)
        column_means = data.mean(dim=1)
        mean_variance = squared_norms(data).sum(-1) / (n * d) - column_means.square().mean(-1)
    else:
        if not centred_on_read:
            offset, x_sq = _centred_into(x_aug, x3)
        # Centred data: the mean feature variance is the mean squared norm / d.
        # (No x-sized temporary, unlike data.var().) Summed in float64, as
        # the inertia is: float32 rows whose squares fit can overflow a float32
        # sum, and an infinite tol would stop the fit after one iteration.
        acc = _device.widest_float(x.device)
        mean_variance = (x_sq.sum(-1, dtype=acc) / (n * d)).to(dtype)
    mean_variance = mean_variance.clamp_min(0.0)
    weights = None
    if sample_weight is not None:
        weights = sample_weight.reshape(-1, x3.shape[1]).to(dtype)
    return Prepared(
        data,
        x_aug,
        x_sq,
        weights,
        offset,
        mean_variance,
        metric,
        batched,
        centred_on_read=centred_on_read,
    )


def _centres_on_read(
    x: torch.Tensor, n_clusters: int, metric: str, init: InitArg, n_init: int = 1
) -> bool:
    """Whether :func:`kmeans` and :func:`lloyd` fit ``x`` ``(n, d)`` without a
    centred copy (``prepare(centred_on_read=True)``): euclidean rows whose
    Lloyd iterations the fused kernel runs (contiguous float32 or float64
    rows of several features on the CPU), centring each chunk of rows as it
    reads them, and k-means++ seeded by the kernel too where it is the init
    (see :func:`~torchkmeans.functional.init._seeds_less_offset`; one run:
    ``n_init`` k-means++ restarts are seeded together, on the copy). The copy
    cost a fit as much as several iterations where they are cheap: 524,288
    x 64 float32, k = 8, two threads, 44 ms of a 140 ms fit, 38 of them the
    first touch of its fresh memory; and it held 1.02x the data. Narrow rows
    (the kernel's column layout) keep the copy: centring them cost each
    Lloyd pass 1.26x its time at d = 2 (1.01-1.07x at d = 17-64).
    """
    if metric != "euclidean" or x.ndim != 2 or x.dtype not in (torch.float32, torch.float64):
        return False
    if not (_device.on_host(x.device) and x.is_contiguous() and x.shape[1] > 1):
        return False
    if _native._columns(x.shape[1], n_clusters) or not _native.prefers_native(x, n_clusters):
        return False
    if isinstance(init, str) and init == "k-means++":
        return n_init == 1 and _seed_scorer(x) is not None
    return True


def _copied(prep: Prepared) -> Prepared:
    """``prep`` with its centred copy made (itself when it has one): for the
    paths other than the fused kernel's, and the rare steps of that path
    which read centred rows (reseeding empty clusters, data near overflow)."""
    if not prep.centred_on_read:
        return prep
    x3 = prep.x
    bx, n, d = x3.shape
    x_aug = torch.empty((bx, n, d + 1), dtype=x3.dtype, device=x3.device)
    _centred_into(x_aug, x3)  # the same offset and squared norms, bit for bit
    return prep._replace(x=x_aug[..., :d], x_aug=x_aug, centred_on_read=False)


def _centred_into(
    x_aug: torch.Tensor | None, x3: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``x_aug`` ``(bx, n, d+1)`` with the rows of ``x3`` ``(bx, n, d)``
    less their mean, then 1; return the mean ``(bx, 1, d)`` and the centred
    rows' squared norms ``(bx, n)``. Without ``x_aug`` (contiguous rows of
    several features on the CPU) only the mean and norms, each block centred
    into a reused buffer.

    On the CPU (contiguous rows of several features), the values of
    ``copy_``, ``mean``, ``sub_`` and :func:`squared_norms` on the copy, bit
    for bit, in one read of ``x`` for the mean and one pass of cache-sized
    blocks for the rest: those ops had read and written the copy five times
    over (524,288 x 64 float32: 80 of a 10-iteration fit's 320 ms
    on one thread).
    """
    bx, n, d = x3.shape
    dtype = compute_dtype(x3.dtype)
    # (One feature: the mean of contiguous x sums in another order than the
    # copy's, whose rows are two elements apart. Off the CPU one op each.)
    if not (_device.on_host(x3.device) and x3.is_contiguous() and d > 1):
        assert x_aug is not None
        data = x_aug[..., :d]
        data.copy_(x3)
        x_aug[..., d] = 1.0
        offset = data.mean(dim=1, keepdim=True)
        data.sub_(offset)
        return offset, squared_norms(data)
    offset = x3.mean(dim=1, keepdim=True, dtype=dtype)
    x_sq = torch.empty((bx, n), dtype=dtype, device=x3.device)
    rows = cache_rows(bx * (d + 1), torch.finfo(dtype).bits // 8)
    squares = torch.empty((bx, min(rows, n), d), dtype=dtype, device=x3.device)
    centred = None if x_aug is not None else torch.empty_like(squares)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        if x_aug is None:
            assert centred is not None
            block = centred[:, : stop - start]
        else:
            block = x_aug[:, start:stop, :d]
            x_aug[:, start:stop, d] = 1.0
        torch.sub(x3[:, start:stop], offset, out=block)
        part = squares[:, : stop - start]
        torch.mul(block, block, out=part)
        torch.sum(part, -1, out=x_sq[:, start:stop])
    return offset, x_sq


def _without_rows_of_zeros(prep: Prepared, n_clusters: int) -> Prepared:
    """Cosine rows of zeros weighed 0 in the fit: they have no direction.

    Each is at distance 1 from every unit centroid, the largest distance of
    most data: as seeds and as the farthest points that reseed empty
    clusters they made centroids of zeros, which kept the rows of zeros
    (ties go to the first centroid) and no others (30% empty rows: up to 3
    of 20 centroids zero). They neither seed nor move a centroid now, still
    get a label and count 1 each in the inertia (``ignored``). Unchanged
    when a problem has fewer than ``n_clusters`` rows of positive weight
    left. One host read per fit.
    """
    if prep.metric != "cosine":
        return prep
    kept = weights_without_rows_of_zeros(prep.x, prep.weights, n_clusters)
    if kept is None:
        return prep
    weights = prep.weights if prep.weights is not None else torch.ones_like(kept)
    acc = _device.widest_float(prep.x.device)
    ignored = (weights - kept).sum(-1, dtype=acc)
    return prep._replace(weights=kept, ignored=ignored)


def _assign_pass(
    prep: Prepared,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    rows: int,
    *,
    totals: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    distances: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
    changed_rows: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """One pass over the rows in blocks: labels, and optionally totals and distances.

    Returns the weighted sum of the minimum scores per problem ``(b,)``
    (float64); adding :func:`_score_offset` gives the inertia of the
    assignment. ``previous`` labels warm-start the search (CPU). ``totals``
    ``(b, k, d+1)`` receive the weighted sums and weights of the clusters;
    ``distances`` each point's exact distance to its centroid.
    ``changed_rows``: when the pass is :func:`_assign_pass_warm`, it appends
    the indices of the rows whose label differs from ``previous`` (the list
    stays empty otherwise).
    """
    x_aug, weights = prep.x_aug, prep.weights
    augmented = augmented_centroids(centroids, prep.metric, active)
    if (
        previous is not None
        and _device.on_host(x_aug.device)
        and augmented.shape[0] == 1
        and min(rows, x_aug.shape[1]) * augmented.shape[1] >= _WARM_START_MIN_ELEMENTS
    ):
        return _assign_pass_warm(
            prep,
            centroids,
            augmented[0],
            labels[0],
            rows,
            previous[0],
            totals=totals,
            distances=distances,
            changed_rows=changed_rows,
        )
    acc = _device.widest_float(x_aug.device)
    total = torch.zeros(centroids.shape[0], dtype=acc, device=x_aug.device)
    n = x_aug.shape[1]
    # Rows shared by several problems are scattered once per problem on the
    # CPU (see accumulate): in spans of many blocks, so that the number of
    # calls stays small while the span is still in cache.
    span = rows
    if totals is not None and x_aug.shape[0] == 1 < centroids.shape[0]:
        if _device.on_host(x_aug.device):
            span = max(rows, _SHARED_SCATTER_BYTES // (x_aug.shape[2] * x_aug.element_size()))
    pending = 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        xb = x_aug[:, start:stop]
        block_weights = weights[:, start:stop] if weights is not None else None
        values, block_labels = assign_block(
            xb, augmented, previous[:, start:stop] if previous is not None else None
        )
        labels[:, start:stop] = block_labels
        if block_weights is None:
            total += values.sum(-1, dtype=acc)
        else:
            total += (values * block_weights).sum(-1, dtype=acc)
        if distances is not None:
            distances[:, start:stop] = exact_distances(
                prep.x[:, start:stop], centroids, block_labels, prep.metric == "cosine"
            )
        if totals is not None and (stop - pending >= span or stop == n):
            accumulate(
                totals,
                x_aug[:, pending:stop],
                labels[:, pending:stop],
                weights[:, pending:stop] if weights is not None else None,
            )
            pending = stop
    return total


@_device.full_precision
def _assign_pass_warm(
    prep: Prepared,
    centroids: torch.Tensor,
    augmented: torch.Tensor,
    labels: torch.Tensor,
    rows: int,
    previous: torch.Tensor,
    *,
    totals: torch.Tensor | None,
    distances: torch.Tensor | None,
    changed_rows: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`_assign_pass` for one problem on the CPU, warm-started from ``previous``.

    The same search as :func:`argmin_rows` (:func:`argmin_columns` for fewer
    than 64 centroids, scored as ``(k, m)``), with every buffer allocated once
    per pass and a handful of ops per block: the product into a reused score
    block, its minimum per row straight into the minimum of all rows, the
    score of each row's previous centroid, and a full search only of the rows
    whose previous centroid no longer attains the minimum: exactly the rows
    whose label changes, appended to ``changed_rows`` when given. ``labels``
    and ``previous`` are ``(n,)``, ``augmented`` ``(k, d+1)``.
    """
    x_aug, weights = prep.x_aug, prep.weights
    n, k = x_aug.shape[1], augmented.shape[0]
    rows = min(rows, n)
    device, dtype = x_aug.device, x_aug.dtype
    # Few centroids: each block scored as (k, m) (see scored_by_columns),
    # where (label, row) sits at label * m + row.
    columns = scored_by_columns(k, augmented.shape[1] - 1)
    augmented_t = augmented.T
    scores_buffer = torch.empty(rows * k, dtype=dtype, device=device)
    minima = torch.empty(n, dtype=dtype, device=device)
    if columns:
        row_offsets = torch.arange(rows, device=device)
    else:
        row_offsets = torch.arange(0, rows * k, k, device=device)
    flat_index = torch.empty(rows, dtype=torch.int64, device=device)
    kept = torch.empty(rows, dtype=dtype, device=device)
    moved_mask = torch.empty(rows, dtype=torch.bool, device=device)
    if labels.data_ptr() != previous.data_ptr():
        labels.copy_(previous)
    x_rows = x_aug[0]
    buffers = (row_offsets, flat_index, kept, moved_mask)
    full_block = scores_buffer.view(k, rows) if columns else scores_buffer.view(rows, k)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        m = stop - start
        # Whole buffers for every block but a shorter last one: each slice is an op.
        if m == rows:
            offsets, index, kept_m, moved_m = buffers
            scores_out = full_block
        else:
            offsets, index, kept_m, moved_m = (buffer[:m] for buffer in buffers)
            scores_out = scores_buffer[: m * k].view((k, m) if columns else (m, k))
        block_previous = previous[start:stop]
        if columns:
            scores = torch.mm(augmented, x_rows[start:stop].T, out=scores_out)
            block_minima = torch.amin(scores, 0, out=minima[start:stop])
            torch.add(offsets, block_previous, alpha=m, out=index)
        else:
            scores = torch.mm(x_rows[start:stop], augmented_t, out=scores_out)
            block_minima = torch.amin(scores, 1, out=minima[start:stop])
            torch.add(offsets, block_previous, out=index)
        torch.take(scores, index, out=kept_m)
        moved = torch.gt(kept_m, block_minima, out=moved_m).nonzero().squeeze(1)
        if changed_rows is not None:
            changed_rows.append(moved + start)
        if moved.numel():
            # min() rather than argmin(), several times faster on the CPU,
            # with the same first-index tie rule.
            if columns:
                found = scores.index_select(1, moved).min(dim=0).indices
            else:
                found = row_min(scores.index_select(0, moved))[1]
            labels[start:stop].index_copy_(0, moved, found)
        if distances is not None:
            distances[:, start:stop] = exact_distances(
                prep.x[:, start:stop], centroids, labels[None, start:stop], prep.metric == "cosine"
            )
        if totals is not None:
            accumulate(
                totals,
                x_aug[:, start:stop],
                labels[None, start:stop],
                weights[:, start:stop] if weights is not None else None,
            )
    acc = _device.widest_float(device)
    if weights is None:
        return minima.sum(dtype=acc).reshape(1)
    return (minima * weights[0]).sum(dtype=acc).reshape(1)


# Rows shared by several problems are scattered in spans of about this many
# bytes of [x | 1] rows (one call per problem per span, see accumulate).
_SHARED_SCATTER_BYTES = 4 * 1024 * 1024
# Incrementally updated totals are recomputed from scratch this often, so
# rounding in float32 sums cannot build up over a long fit.
_REFRESH_EVERY = 16
# ... and whenever more than this share of the rows changed cluster in the
# last iteration: moving them costs more than one scatter of all rows.
_FOLLOW_MAX_MOVED = 0.1


def _move_points(
    totals: torch.Tensor,
    prep: Prepared,
    changed: torch.Tensor,
    labels: torch.Tensor,
    previous: torch.Tensor,
) -> None:
    """Move the rows whose label ``changed`` ``(b, n)`` between clusters' totals.

    For data shared by the b problems (``prep.x_aug`` ``(1, n, d+1)``) and
    totals ``(b, k, d+1)`` that hold the sums of the ``previous`` labels.
    """
    problem, row = changed.nonzero(as_tuple=True)
    _move_rows(totals, prep, problem, row, labels[problem, row], previous[problem, row])


def _move_rows(
    totals: torch.Tensor,
    prep: Prepared,
    problem: torch.Tensor | None,
    row: torch.Tensor,
    to: torch.Tensor,
    origin: torch.Tensor,
) -> None:
    """Move rows ``row`` of problems ``problem`` (None: one problem) from the
    clusters ``origin`` to the clusters ``to`` in the totals (see :func:`_move_points`)."""
    b, k, width = totals.shape
    if not row.numel():
        return
    moved = prep.x_aug[0].index_select(0, row)
    if prep.weights is not None:
        moved = moved * prep.weights[0].index_select(0, row).unsqueeze(-1)
    moved = moved.to(totals.dtype)
    if problem is not None:
        base = problem * k
        to, origin = base + to, base + origin
    flat = totals.view(b * k, width)
    add_rows(flat, to, moved)
    add_rows(flat, origin, moved, alpha=-1)


def _score_offset(prep: Prepared) -> torch.Tensor:
    """What turns summed minimum scores into inertia: the weighted sum of |x|^2
    (euclidean; scores are |c|^2 - 2x.c) or of 1 (cosine; scores are -x.c)."""
    base = prep.x_sq if prep.x_sq is not None else torch.ones_like(prep.x[..., 0])
    if prep.weights is None:
        offset = wide_sum(base)
    else:
        offset = wide_sum(base * prep.weights)
    return offset if prep.ignored is None else offset + prep.ignored.to(offset.dtype)


def _weighted_total(distances: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return wide_sum(distances, weights)


def _point_distances(
    prep: Prepared, centroids: torch.Tensor, labels: torch.Tensor, rows: int
) -> torch.Tensor:
    """Exact distance of every prepared point to its labelled centroid, ``(b, n)``."""
    offset = prep.offset if prep.centred_on_read else None
    return _labelled_distances(
        prep.x, centroids, labels, rows, cosine=prep.x_sq is None, offset=offset
    )


def _row_contiguous_shape(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(n, d)``, or where its rows' features are not adjacent (a
    Fortran-ordered array, a data frame's block) a view of the same shape
    and dtype whose are, for the fused kernel's choice of rows: blocks of
    ``x`` are copied for it (see :func:`_nearest_by_differences_in_rows`)."""
    if x.stride(-1) == 1 or x.shape[0] == 0:
        return x
    return x[:1].contiguous().expand(x.shape)


def _nearest_by_differences_in_rows(
    x: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_by_differences` of rows ``x`` ``(n, d)`` of any strides:
    rows whose features are not adjacent are copied a cache-sized block at a
    time, not whole (the fit's centred copy already holds them). The kernel
    refuses them whole: they would take PyTorch's ops and the label check
    instead (fits of data frames up to 1.3x the time of C-ordered arrays,
    inertia different in its last bits)."""
    if x.stride(-1) == 1:
        return nearest_by_differences(x, centroids)
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    distances = torch.empty(n, dtype=x.dtype, device=x.device)
    rows = cache_rows(x.shape[1], x.element_size(), chunk_bytes=1 << 22)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        labels[start:stop], distances[start:stop] = nearest_by_differences(
            x[start:stop].contiguous(), centroids
        )
    return labels, distances


def _labelled_distances(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    rows: int,
    cosine: bool,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance of each row of ``x`` ``(bx, n, d)`` (less ``offset``
    ``(bx, 1, d)``, centred a block at a time) to its labelled centroid
    ``(b, k, d)``, from differences in the centroids' dtype, ``rows`` at a time."""
    n = x.shape[1]
    out = torch.empty(labels.shape, dtype=centroids.dtype, device=centroids.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # Summed along contiguous rows whatever x's strides: distances summed
        # down strided rows had differed in their last bits from those of
        # the same data in C order.
        block = x[:, start:stop]
        if offset is not None:
            block = block - offset  # as a centred copy holds them
        block = block.to(centroids.dtype).contiguous()
        out[:, start:stop] = exact_distances(block, centroids, labels[:, start:stop], cosine)
    return out


# Row minima the small loop holds before summing them (elements).
_PENDING_MINIMA = 1 << 20


# The small loop copies data of up to this many elements [x | 1] as [-2x | 1]:
# one op less per iteration. Copying larger data costs more than the
# iterations save (100,000 x 65 float32: 8 ms, about a millisecond of page
# faults per 3 MB, against a few microseconds per iteration).
_SCALED_ROWS_MAX_ELEMENTS = 1 << 16


def _exact_distance_rows(
    x: torch.Tensor, problems: int = 1, memory_budget: int | None = None
) -> int:
    """Rows of ``x`` ``(bx, n, d)`` whose exact distances to the centroids of
    ``problems`` problems are computed at a time.

    On the CPU a few hundred KB, so that the three row-sized temporaries stay
    in cache (10,000 x 512 float32: 17 ms in blocks of 8,192 rows, 7 ms in
    blocks of 256; 20,000 x 1,024: 111 against 34 ms); off it, large blocks
    whose temporaries (each row's centroid, difference and square, in every
    problem) fit the memory budget: a fixed 8,192 rows had taken 1 GB of them
    for 10 restarts of 1,024 features.
    """
    if _device.on_host(x.device):
        return cache_rows(x.shape[0] * x.shape[-1], x.element_size())
    return block_rows(
        x.shape[-2],
        0,
        itemsize=8 if x.dtype == torch.float64 else 4,  # computed in float32 or float64
        memory_budget=memory_budget,
        device=x.device,
        row_elements=3 * max(problems, x.shape[0]) * x.shape[-1],
    )


@_device.full_precision
def _run_lloyd_small(
    prep: Prepared, centroids: torch.Tensor, *, max_iter: int, tol_abs: float, rows: int
) -> KMeansResult:
    """:func:`run_lloyd` for one problem whose rows fit in one block, on the CPU.

    Small fits are bound by the fixed cost of each tensor op, not by
    arithmetic: this loop uses the same kernels as the general one and gives
    the same result with about eight tensor ops per iteration (no block loop,
    no batch bookkeeping, convergence decided with Python scalars, empty
    clusters found from the NaN that their 0 / 0 update gives).
    """
    x_aug, x = prep.x_aug[0], prep.x[0]
    weights = prep.weights
    source = x_aug if weights is None else x_aug * weights[0].unsqueeze(-1)
    k, d = centroids.shape[1], centroids.shape[2]
    cosine = prep.metric == "cosine"
    # Two buffers of rows [c | |c|^2] take turns holding the centroids and
    # their update, which the division writes straight into. Euclidean scores
    # |c|^2 - 2 x.c of small data come from one plain mm of a copy [-2x | 1]
    # with [c | |c|^2]: the same products and sums as [x | 1] . [-2c | |c|^2]
    # in the general loop (scaling by 2 is exact), without scaling the
    # centroids every iteration. Larger data are not copied (see
    # _SCALED_ROWS_MAX_ELEMENTS) and take the general loop's [-2c | |c|^2].
    buffers = torch.empty((2, k, d + 1), dtype=x.dtype, device=x.device)
    buffers[0, :, :d] = centroids[0]
    # Each buffer's centroids, norms, transpose and itself, viewed once:
    # slicing is an op too. slots[turn] holds the current centroids.
    slots = [(buffer[:, :d], buffer[:, d], buffer.T, buffer) for buffer in buffers]
    turn = 0
    scaled_rows = None
    if not cosine and x_aug.numel() <= _SCALED_ROWS_MAX_ELEMENTS:
        scaled_rows = x_aug.clone()
        scaled_rows[:, :d].mul_(-2.0)
    # One buffer and its views for all iterations: slicing is an op too.
    totals = torch.empty((k, d + 1), dtype=x.dtype, device=x.device)
    sums, counts = totals[:, :d], totals[:, d:]
    n = x.shape[0]
    # Few centroids: scores as (k, n), minimum across contiguous rows (see
    # scored_by_columns); tiny fits keep (n, k) and min() with indices.
    columns = scored_by_columns(k, d) and n * k >= _WARM_START_MIN_ELEMENTS
    rows_t = (x_aug if scaled_rows is None else scaled_rows).T
    # The score block too: a fresh block of a megabyte or more comes back
    # from the allocator as new pages, which made the product up to 8x slower
    # (20,000 x 3 rows, k=16: 330 us against 40 us in later iterations).
    scores_buffer = torch.empty((k, n) if columns else (n, k), dtype=x.dtype, device=x.device)

    def assign(previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        centroid, norms, transposed, centroid_rows = slots[turn]
        if scaled_rows is None:
            centroid_rows = augmented_centroids(centroid, prep.metric)
            transposed = centroid_rows.T
        else:
            torch.linalg.vecdot(centroid, centroid, out=norms)
        if not columns:
            rows = x_aug if scaled_rows is None else scaled_rows
            return argmin_rows(torch.mm(rows, transposed, out=scores_buffer), previous)
        scores = torch.mm(centroid_rows, rows_t, out=scores_buffer).unsqueeze(0)
        values, labels = argmin_columns(scores, None if previous is None else previous[None])
        return values[0], labels[0]

    # Each iteration's row minima, summed into the history a few iterations at a
    # time (one op for many; at most _PENDING_MINIMA elements held).
    pending: list[torch.Tensor] = []
    summed: list[torch.Tensor] = []

    def flush() -> None:
        stacked = torch.stack(pending)
        if weights is not None:
            stacked = stacked * weights
        summed.append(stacked.sum(-1, dtype=torch.float64))
        pending.clear()

    labels: torch.Tensor | None = None
    shift = float("inf")
    n_iter = 0
    # Copies of a centroid (repeated initial rows, or empty clusters reseeded
    # onto copies of one point) tie on every row, which a BLAS product splits
    # by rounding: the rows go to the first copy (first_copies), looked for
    # at the start and after each reseeding.
    may_copy = True

    def to_first_copies(labels: torch.Tensor) -> torch.Tensor:
        copies = first_copies(slots[turn][0].unsqueeze(0))
        return labels if copies is None else copies[0][labels]

    while n_iter < max_iter:
        n_iter += 1
        previous = labels
        values, labels = assign(previous)
        if may_copy:
            labels = to_first_copies(labels)
            may_copy = False
        pending.append(values)
        if len(pending) * values.numel() >= _PENDING_MINIMA:
            flush()
        add_rows(totals.zero_(), labels, source)
        centroid, updated = slots[turn][0], slots[1 - turn][0]
        torch.div(sums, counts, out=updated)
        if cosine:
            unit_rows(updated, out=updated)
        # scikit-learn also measures the shift through a norm, then squares it.
        shift = float(torch.dist(updated, centroid)) ** 2
        relocated = False
        if shift != shift and float(counts.min()) <= 0:  # NaN: 0 / 0 of an empty cluster
            distances = _point_distances(prep, centroid.unsqueeze(0), labels.unsqueeze(0), rows)
            relocated = bool(
                relocate_empty_clusters(
                    totals.unsqueeze(0), prep.x_aug, weights, labels.unsqueeze(0), distances
                )
            )
            updated.copy_(
                centroids_from_sums(
                    sums, totals[:, d], centroid, metric=prep.metric, empty="heaviest"
                )
            )
            shift = float(torch.dist(updated, centroid)) ** 2
            may_copy = True
        strict = not relocated and previous is not None and torch.equal(labels, previous)
        turn = 1 - turn
        if strict or shift <= tol_abs:
            break
    if pending:
        flush()
    # Final labels against the final centroids: the last ones, unless the
    # centroids moved after they were assigned.
    if labels is None or shift != 0.0:
        _, labels = assign(labels)
        if may_copy:  # reseeded onto copies in the last iteration
            labels = to_first_copies(labels)
    final_centroids = slots[turn][0].unsqueeze(0).contiguous()
    # In blocks: the differences of all rows at once are two temporaries the
    # size of the data, each paid for in fresh pages.
    distances = _point_distances(
        prep, final_centroids, labels.unsqueeze(0), _exact_distance_rows(prep.x)
    )
    history = torch.full((1, max_iter), float("nan"), dtype=torch.float64, device=x.device)
    offset = _score_offset(prep)
    if summed:
        history[0, :n_iter] = (summed[0] if len(summed) == 1 else torch.cat(summed)).add_(offset)
    return KMeansResult(
        final_centroids,
        labels.unsqueeze(0),
        _weighted_total(distances, weights),
        torch.full((1,), n_iter, dtype=torch.int64, device=x.device),
        history,
    )


def _run_lloyd_native(
    prep: Prepared,
    centroids: torch.Tensor,
    *,
    max_iter: int,
    tol_abs: float,
    final_pass: bool = True,
) -> KMeansResult:
    """:func:`run_lloyd` for one CPU problem through the fused kernel (see ``_native``).

    One kernel call per iteration labels every row and sums the rows of each
    cluster in float64 while the row is in registers: no score block, no
    separate argmin or scatter. The same iterations, convergence test,
    relocation as :func:`_run_lloyd_small`, and a final pass that relabels
    and measures each row's exact distance in the same kernel call. Without
    ``final_pass`` (a caller that labels the rows against the final centroids
    itself) the labels are the last iteration's and the inertia NaN.
    """
    x = prep.x[0]
    # Rows as given (no centred copy): the kernel centres them as it reads them.
    offset = prep.offset[0, 0] if prep.centred_on_read else None
    weights = prep.weights[0].contiguous() if prep.weights is not None else None
    k, d = centroids.shape[1], centroids.shape[2]
    n = x.shape[0]
    cosine = prep.metric == "cosine"
    current = centroids[0].contiguous()
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    previous = torch.empty(n, dtype=torch.int64, device=x.device)
    totals = torch.empty((k, d + 1), dtype=torch.float64, device=x.device)
    sums, counts = totals[:, :d], totals[:, d:]
    scores: list[float] = []
    while len(scores) < max_iter:
        score, changed = _native.nearest(
            x,
            current,
            labels,
            cosine=cosine,
            offset=offset,
            weights=weights,
            previous=previous if scores else None,
            totals=totals,
        )
        scores.append(score)
        relocated = False
        updated = torch.div(sums, counts)
        if updated.dtype != current.dtype:
            updated = updated.to(current.dtype)
        if cosine:
            updated = unit_rows(updated)
        # scikit-learn also measures the shift through a norm, then squares it.
        shift = float(torch.dist(updated, current)) ** 2
        # An empty cluster (count 0, sums 0) divides 0 by 0: its NaN makes the
        # shift NaN, so only then are the counts read (a host read per
        # iteration otherwise, the cost of a small fit's iteration).
        if shift != shift and float(counts.min()) <= 0:
            distances = _point_distances(
                prep, current.unsqueeze(0), labels.unsqueeze(0), _exact_distance_rows(prep.x)
            )
            relocated = bool(
                relocate_empty_clusters(
                    totals.unsqueeze(0),
                    prep.x if prep.centred_on_read else prep.x_aug,
                    prep.weights,
                    labels.unsqueeze(0),
                    distances,
                    offset=prep.offset if prep.centred_on_read else None,
                )
            )
            updated = centroids_from_sums(
                sums, counts[:, 0], current, metric=prep.metric, empty="heaviest"
            )
            shift = float(torch.dist(updated, current)) ** 2
        strict = not relocated and len(scores) > 1 and changed == 0
        current = updated
        labels, previous = previous, labels
        if strict or shift <= tol_abs:
            break
    # Final labels against the final centroids, and each row's exact distance
    # to its centroid, in one more pass (the labels are the last ones when the
    # centroids did not move after them: the same kernel gives the same).
    labels = previous
    if final_pass:
        distances = torch.empty((1, n), dtype=x.dtype, device=x.device)
        _native.nearest(x, current, labels, cosine=cosine, offset=offset, distances=distances[0])
        inertia = _weighted_total(distances, prep.weights)
    else:
        inertia = torch.full((1,), math.nan, dtype=_device.widest_float(x.device), device=x.device)
    final_centroids = current.unsqueeze(0)
    n_iter = len(scores)
    history = torch.full((1, max_iter), float("nan"), dtype=torch.float64, device=x.device)
    history[0, :n_iter] = torch.tensor(scores, dtype=torch.float64, device=x.device)
    history[0, :n_iter] += _score_offset(prep)
    return KMeansResult(
        final_centroids,
        labels.unsqueeze(0),
        inertia,
        torch.full((1,), n_iter, dtype=torch.int64, device=x.device),
        history,
    )


def run_lloyd(
    prep: Prepared,
    centroids: torch.Tensor,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    memory_budget: int | None = None,
    check_every: int | None = None,
    small_path: bool = True,
    active: torch.Tensor | None = None,
    host_checks: bool | None = None,
    best_only: bool = False,
    final_pass: bool = True,
) -> KMeansResult:
    """Lloyd iterations on prepared data from centroids ``(b, k, d)`` in prepared space.

    Returns batched results ``(b, ...)`` with centroids still in prepared
    space; :func:`lloyd` and :func:`kmeans` add the offset back. ``active``
    ``(b, k)`` bool runs problems with fewer clusters than k in one batch:
    inactive centroids are never assigned, reseeded or moved.
    ``host_checks`` (default: on the CPU) lets the host read scalars freely;
    False runs the accelerator path (no data-dependent host branches), which
    tests use to exercise it without a GPU. ``best_only`` (restarts whose
    lowest inertia alone is wanted) lets the fused kernel's path return the
    first problem of the lowest inertia alone, ``(1, ...)``. ``final_pass``
    False (one problem, whose caller labels the rows against the final
    centroids itself, as :func:`_finish` does from differences) lets that
    path skip its pass over the rows after the last iteration: the labels
    are then the last iteration's and the inertia NaN.
    """
    on_cpu = _device.on_host(prep.x.device) if host_checks is None else host_checks
    through_kernel = (
        on_cpu
        and small_path
        and prep.x.shape[0] == 1
        and (prep.weights is None or prep.weights.shape[0] == 1)
        and _native.prefers_native(prep.x[0], centroids.shape[1])
    )
    if not through_kernel:
        prep = _copied(prep)
    x3 = prep.x
    b, k, d = centroids.shape
    n = x3.shape[1]
    device = x3.device
    dtype = x3.dtype
    centroids = centroids.to(dtype).contiguous().clone()
    if check_every is None:
        check_every = 1 if _device.on_host(device) else 10
    tol_abs = (prep.mean_variance * tol).to(dtype)  # (bx,)

    def rows_for(problems: int) -> int:
        # Off the CPU each problem's rows of a block have their differences
        # to the centroids taken (exact_distances: two temporaries) and are
        # copied for the scatter; on the CPU blocks are cache-sized.
        return block_rows(
            n,
            problems * k,
            itemsize=x3.element_size(),
            memory_budget=memory_budget,
            device=device,
            row_elements=0 if _device.on_host(device) else 2 * problems * (d + 1),
        )

    rows = rows_for(b)
    if through_kernel:
        # One problem at a time through the fused kernel: restarts and a sweep
        # over k sharing the data run one after another, each with the whole
        # machine; a problem with inactive (padding) centroids runs with its
        # active ones only.
        # Each problem's labels go straight into the batch's: kept in a list
        # and concatenated, they were held twice (elbow over k = 1..9 of
        # 4,000,000 x 2 float32 rows: 20x the data); and restarts of which
        # only the best is wanted keep no other labels at all (n_init=10:
        # 30x the data).
        results: list[KMeansResult] = []
        labels = (
            None if b == 1 or best_only else torch.empty((b, n), dtype=torch.int64, device=device)
        )
        for i in range(b):
            start = centroids[i : i + 1]
            kept = None if active is None else active[i].nonzero().squeeze(1)
            if kept is not None:
                start = start[:, kept]
            result = _run_lloyd_native(
                prep,
                start,
                max_iter=max_iter,
                tol_abs=float(tol_abs.max()),
                final_pass=final_pass or b > 1,
            )
            if kept is not None:
                padded = centroids[i : i + 1].clone()
                padded[:, kept] = result.centroids
                result = result._replace(centroids=padded, labels=kept[result.labels])
            if best_only:
                if not results or bool(result.inertia < results[0].inertia):
                    results = [result]
                continue
            if labels is not None:
                labels[i] = result.labels[0]
                result = result._replace(labels=labels[i : i + 1])
            results.append(result)
        if len(results) == 1:
            return results[0]
        return KMeansResult(
            *(
                labels if name == "labels" else torch.cat(field)
                for name, field in zip(KMeansResult._fields, zip(*results))
            )
        )
    if on_cpu and b == 1 and rows >= n and small_path and active is None:
        return _run_lloyd_small(
            prep, centroids, max_iter=max_iter, tol_abs=float(tol_abs.max()), rows=rows
        )
    labels = torch.full((b, n), -1, dtype=torch.int64, device=device)
    previous_labels = torch.full((b, n), -1, dtype=torch.int64, device=device)
    totals = torch.empty((b, k, d + 1), dtype=dtype, device=device)
    sums, counts = totals[..., :d], totals[..., d]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n_iter = torch.zeros(b, dtype=torch.int64, device=device)
    history = torch.full((b, max_iter), float("nan"), dtype=torch.float64, device=device)
    offset = _score_offset(prep)
    # On the CPU a host-side check costs nothing, while each extra small op
    # costs microseconds: there, point distances are computed only when a
    # cluster is empty (for relocation), and a single problem keeps its
    # bookkeeping in Python scalars. On a GPU everything stays on the device.
    single = on_cpu and b == 1
    tol_value = float(tol_abs.max()) if single else 0.0
    distances = None if on_cpu else torch.empty((b, n), dtype=dtype, device=device)
    # Problems sharing the data (restarts, a sweep over k) converge after very
    # different numbers of iterations. On the CPU the converged ones leave the
    # working batch instead of being recomputed and frozen; ``kept`` maps the
    # working batch to the full one (``None`` while nothing has left).
    shared = prep.x_aug.shape[0] == 1 and (prep.weights is None or prep.weights.shape[0] == 1)
    can_follow = on_cpu and shared
    can_compact = can_follow and not single
    kept: torch.Tensor | None = None
    full: list[torch.Tensor] = []  # centroids, n_iter, history, previous labels of all b
    fresh = False
    full_active = active
    moved_share = 1.0  # of the rows that changed cluster in the last iteration
    # Copies of a centroid (repeated initial rows, or empty clusters reseeded
    # onto copies of one point) tie on every row, which a BLAS product splits
    # by rounding: the later copies are masked (without_copies), looked for
    # at the start and after each reseeding, on the CPU. Elsewhere finding
    # them takes a host read: the copies that the update makes of the
    # heaviest centroid are masked (centroids_and_distinct), known without one.
    may_copy = on_cpu
    distinct: torch.Tensor | None = None
    index = None if on_cpu else torch.arange(k, device=device)

    for iteration in range(max_iter):
        # Shared rows on the CPU: after a full scatter, the totals follow the
        # few points that change cluster (most keep theirs, once the first
        # iterations are over), refreshed in full every _REFRESH_EVERY
        # iterations and after any relocation.
        incremental = (
            can_follow
            and fresh
            and iteration % _REFRESH_EVERY != 0
            and moved_share <= _FOLLOW_MAX_MOVED
        )
        if not incremental:
            totals.zero_()
        changed_rows: list[torch.Tensor] = []
        total = _assign_pass(
            prep,
            centroids,
            labels,
            rows,
            totals=None if incremental else totals,
            previous=previous_labels if iteration > 0 else None,
            distances=distances,
            active=without_copies(centroids, active) if may_copy else _both(active, distinct),
            changed_rows=changed_rows if single else None,
        )
        may_copy = False
        history[:, iteration] = total + offset
        changed = None
        if changed_rows:
            # One problem, warm pass: the rows that changed cluster are known,
            # no comparison of all labels is needed.
            row = torch.cat(changed_rows)
            if incremental:
                _move_rows(totals, prep, None, row, labels[0, row], previous_labels[0, row])
            moved_share = row.numel() / n
        elif can_follow and iteration > 0:
            changed = labels != previous_labels
            if incremental:
                _move_points(totals, prep, changed, labels, previous_labels)
            moved_share = float(changed.sum()) / changed.numel()
        fresh = can_follow
        relocated = None
        if not on_cpu:
            relocated = relocate_empty_clusters(
                totals, prep.x_aug, prep.weights, labels, distances, active
            )
        elif bool((((counts <= 0) & active) if active is not None else (counts <= 0)).any()):
            point_distances = _point_distances(prep, centroids, labels, rows)
            relocated = relocate_empty_clusters(
                totals, prep.x_aug, prep.weights, labels, point_distances, active
            )
            fresh = False
            may_copy = True
        updated, made = _update(sums, counts, centroids, prep.metric, active, index)
        if single:
            n_iter += 1
            # One problem shares its data with itself: from the second
            # iteration on, moved_share counts the rows that changed cluster.
            strict = iteration > 0 and moved_share == 0.0
            strict = strict and (relocated is None or not bool(relocated.any()))
            shift = float((updated - centroids).square_().sum())
            centroids = updated
            labels, previous_labels = previous_labels, labels
            if strict or shift <= tol_value:
                break
            continue
        shift = (updated - centroids).square_().sum((-1, -2))
        unchanged = ~changed.any(-1) if changed is not None else (labels == previous_labels).all(-1)
        if relocated is not None:
            unchanged &= ~relocated
        converged = unchanged | (shift <= tol_abs)
        running = ~done
        n_iter += running
        centroids = torch.where(running.view(b, 1, 1), updated, centroids)
        distinct = _still_running(made, distinct, running)
        done |= converged
        labels, previous_labels = previous_labels, labels
        if (iteration + 1) % check_every == 0 and bool(done.all()):
            break
        if can_compact and bool(done.any()):
            working = (centroids, n_iter, history, previous_labels)
            if kept is None:
                kept = torch.arange(b, device=device)
                full = [value.clone() for value in working]
            finished, running = done.nonzero().squeeze(1), (~done).nonzero().squeeze(1)
            for stored, value in zip(full, working):
                stored[kept[finished]] = value[finished]
            kept = kept[running]
            centroids, n_iter, history = centroids[running], n_iter[running], history[running]
            labels, previous_labels = labels[running], previous_labels[running]
            done = done[running]
            if active is not None:
                active = active[running]
            totals = totals[running].contiguous()
            sums, counts = totals[..., :d], totals[..., d]
            b = centroids.shape[0]
            rows = rows_for(b)

    if kept is not None:
        for stored, value in zip(full, (centroids, n_iter, history, previous_labels)):
            stored[kept] = value
        centroids, n_iter, history, previous_labels = full
        labels = torch.empty_like(previous_labels)
        active = full_active
        b = centroids.shape[0]
        rows = rows_for(b)

    # The last assignment used the centroids before the last update; one more
    # pass makes the labels (and inertia) those of the returned centroids, with
    # distances computed exactly from differences.
    final_distances = torch.empty((b, n), dtype=dtype, device=device)
    _assign_pass(
        prep,
        centroids,
        labels,
        rows,
        previous=previous_labels,
        distances=final_distances,
        active=without_copies(centroids, active) if on_cpu else _both(active, distinct),
    )
    inertia = _weighted_total(final_distances, prep.weights)
    return KMeansResult(centroids, labels, inertia, n_iter, history)


def _update(
    sums: torch.Tensor,
    counts: torch.Tensor,
    centroids: torch.Tensor,
    metric: str,
    active: torch.Tensor | None,
    index: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lloyd's update, a cluster left empty taking the heaviest cluster's centre
    (as scikit-learn), and off the CPU (``index``, ``arange(k)`` on the device,
    given) the mask of the centroids that are no copy of an earlier one; None
    on the CPU, where ``without_copies`` finds copies after each reseeding."""
    if index is None:
        return centroids_from_sums(
            sums, counts, centroids, metric=metric, empty="heaviest", active=active
        ), None
    return centroids_and_distinct(
        sums, counts, centroids, metric=metric, active=active, index=index
    )


def _still_running(
    made: torch.Tensor | None, kept: torch.Tensor | None, running: torch.Tensor
) -> torch.Tensor | None:
    """``(b, k)`` masks: ``made`` for the problems still running, ``kept`` for the others."""
    if made is None or kept is None:
        return made
    return torch.where(running.unsqueeze(-1), made, kept)


def _both(active: torch.Tensor | None, distinct: torch.Tensor | None) -> torch.Tensor | None:
    """``active`` ``(b, k)`` (None: every centroid) and ``distinct``, if any."""
    if distinct is None:
        return active
    return distinct if active is None else active & distinct


def _resolve_init(
    init: InitArg,
    prep: Prepared,
    x: torch.Tensor,
    n_clusters: int,
    n_problems: int,
    generator: torch.Generator | None,
    memory_budget: int | None,
) -> torch.Tensor:
    """Initial centroids ``(b, k, d)`` in prepared space."""
    x3 = prep.x
    b = n_problems
    shared = x3.shape[0] == 1 and b > 1
    if prep.centred_on_read and isinstance(init, str) and init in ("k-means++", "random"):
        # Rows of x less the offset: as the centred copy holds them.
        if init == "k-means++" and b == 1:
            assert prep.x_sq is not None
            seeds = _seeds_less_offset(
                x3[0],
                prep.offset[0, 0],
                prep.x_sq[0],
                None if prep.weights is None else prep.weights[0],
                n_clusters,
                generator,
                memory_budget,
            )
            if seeds is not None:
                return seeds.unsqueeze(0)
        elif init == "random":
            centroids, _ = random_init(
                x3[0],
                n_clusters,
                n_problems=b,
                sample_weight=None if prep.weights is None else prep.weights[0],
                generator=generator,
            )
            return centroids - prep.offset
        prep = _copied(prep)
        x3 = prep.x
    if isinstance(init, str):
        if init == "k-means++":
            centroids, _ = kmeans_plusplus(
                x3 if not shared else x3[0],
                n_clusters,
                n_problems=b if shared else None,
                sample_weight=prep.weights
                if not shared or prep.weights is None
                else prep.weights[0],
                x_sq_norms=prep.x_sq if not shared or prep.x_sq is None else prep.x_sq[0],
                metric=prep.metric,
                generator=generator,
                memory_budget=memory_budget,
            )
        elif init == "random":
            centroids, _ = random_init(
                x3 if not shared else x3[0],
                n_clusters,
                n_problems=b if shared else None,
                sample_weight=prep.weights
                if not shared or prep.weights is None
                else prep.weights[0],
                generator=generator,
            )
        else:
            raise ValueError(
                "Expected init to be 'k-means++', 'random', an array of shape "
                f"(n_clusters, n_features) or a callable, got {init!r}."
            )
        return centroids.reshape(b, n_clusters, -1)
    expected = (n_clusters, x3.shape[-1])
    if callable(init) and not isinstance(init, torch.Tensor):
        if shared:
            # One call per restart, as scikit-learn does: one call expanded
            # to b restarts ran b copies of the same problem.
            starts = [_init_tensor(init(x, n_clusters, generator), x3.device) for _ in range(b)]
            for start in starts:
                if tuple(start.shape) != expected:
                    raise ValueError(
                        f"Expected init to return shape {expected} for each of the {b} "
                        f"restarts, got shape {tuple(start.shape)}."
                    )
            given = torch.stack([start.to(device=x3.device, dtype=x3.dtype) for start in starts])
        else:
            given = init(x, n_clusters, generator)
    else:
        given = init
    given = _init_tensor(given, x3.device).detach().to(device=x3.device, dtype=x3.dtype)
    if (
        given.shape[-2:] != expected
        or given.ndim not in (2, 3)
        or (given.ndim == 3 and given.shape[0] not in (1, b))
    ):
        raise ValueError(
            f"Expected init to be of shape {expected} or {(b, *expected)}, "
            f"got shape {tuple(given.shape)}."
        )
    if not bool(torch.isfinite(given).all()):
        raise ValueError("Input init contains NaN or infinity.")
    given = given.reshape(-1, *expected).expand(b, *expected)
    if prep.metric == "cosine":
        return unit_rows(given)
    return given - prep.offset


def _init_tensor(given: Any, device: torch.device) -> torch.Tensor:
    """Given centroids (``init`` or what a callable ``init`` returned) as a real
    tensor: a tensor as it is, anything else on ``device`` (the data's, not
    PyTorch's default device)."""
    try:
        tensor = given if isinstance(given, torch.Tensor) else torch.as_tensor(given, device=device)
    except (RuntimeError, TypeError, ValueError) as exc:
        # None, strings, object arrays: torch's own message names no argument.
        raise TypeError(
            "Expected init to be an array of shape (n_clusters, n_features), or a callable "
            f"returning one, got {type(given).__name__} ({exc})."
        ) from exc
    if tensor.is_complex():
        # Casting would silently drop the imaginary part.
        raise ValueError(f"Complex data not supported; init has dtype {tensor.dtype}.")
    return tensor


def lloyd(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    metric: str = "euclidean",
    memory_budget: int | None = None,
    check_every: int | None = None,
    cluster_mask: torch.Tensor | None = None,
) -> KMeansResult:
    """Lloyd's algorithm from given initial centroids.

    Stops when the labels no longer change, when the squared centroid shift
    is at most ``tol`` times the mean feature variance, or after ``max_iter``
    iterations, exactly as scikit-learn's ``KMeans(algorithm="lloyd")``.
    Clustering is not differentiable: the inputs are detached and the results
    carry no gradient.

    Parameters
    ----------
    x : Tensor
        ``(n, d)`` or ``(b, n, d)`` floating data.
    centroids : Tensor
        Initial centroids ``(k, d)``, or ``(b, k, d)`` for b problems (a 2-D
        ``x`` is then shared by all of them).
    sample_weight : Tensor, optional
        ``(n,)`` or ``(b, n)`` non-negative weights.
    max_iter : int
        Maximum number of iterations.
    tol : float
        Relative tolerance on the centroid shift.
    metric : {"euclidean", "cosine"}
        ``"cosine"`` runs spherical k-means.
    memory_budget : int, optional
        Bytes the distance block may take (default 256 MiB; smaller on CPU).
    check_every : int, optional
        Iterations between host-side convergence checks (1 on CPU, 10 on CUDA).
    cluster_mask : Tensor, optional
        ``(b, k)`` bool: problems with fewer clusters padded to a common k
        (for example a sweep over k). Masked centroids are never assigned,
        reseeded or moved; their rows in the result are the initial ones.

    Returns
    -------
    KMeansResult

    Raises
    ------
    TypeError
        If ``x`` or ``centroids`` is not a floating-point tensor, or
        ``max_iter`` or ``check_every`` is not an int.
    ValueError
        If ``x`` has no rows or no features, the shapes of ``x``,
        ``centroids``, ``sample_weight`` or ``cluster_mask`` do not match,
        if ``x``, ``centroids`` or ``sample_weight`` hold NaN or infinity,
        if weights are negative, if the inertia of finite ``x`` overflows
        float64 (``x`` near 1e153), or if ``max_iter``, ``tol`` or
        ``check_every`` are out of range.

    Examples
    --------
    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
    >>> result = lloyd(x, torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    >>> result.centroids.flatten().tolist(), result.labels.tolist(), float(result.inertia)
    ([0.5, 10.5], [0, 0, 1, 1], 1.0)
    """
    x = v.check_data(x)
    if x.shape[-2] == 0:
        raise ValueError(f"Expected x to hold at least one row, got shape {tuple(x.shape)}.")
    centroids = v.check_centroids(centroids, x)
    v.check_positive_int(max_iter, "max_iter")
    v.check_memory_budget(memory_budget)
    v.check_nonnegative_float(tol, "tol")
    if check_every is not None:
        v.check_positive_int(check_every, "check_every")
    b = max(x.shape[0] if x.ndim == 3 else 1, centroids.shape[0] if centroids.ndim == 3 else 1)
    k = centroids.shape[-2]
    sample_weight = v.check_weight_tensor(
        sample_weight, x.shape[-2], b, dtype=compute_dtype(x.dtype)
    )
    if cluster_mask is not None and tuple(cluster_mask.shape) not in ((k,), (1, k), (b, k)):
        raise ValueError(
            f"Expected cluster_mask to be of shape ({b}, {k}) or ({k},), "
            f"got shape {tuple(cluster_mask.shape)}."
        )
    if not v.all_finite(centroids):
        raise ValueError("Input centroids contains NaN or infinity; expected finite values.")
    centred_on_read = _centres_on_read(x, k, metric, centroids)
    prep = prepare(x, sample_weight=sample_weight, metric=metric, centred_on_read=centred_on_read)
    prep = _check_finite_data(prep, x)
    exponent = _scale_exponent(prep, x, centroids)
    if exponent:
        scaled = lloyd(
            times_power_of_two(x.to(prep.x.dtype), exponent),
            times_power_of_two(centroids, exponent),
            sample_weight=sample_weight,
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            memory_budget=memory_budget,
            check_every=check_every,
            cluster_mask=cluster_mask,
        )
        return _unscaled_checked(scaled, exponent, x, sample_weight)
    c3 = centroids if centroids.ndim == 3 else centroids.unsqueeze(0)
    prep = _without_rows_of_zeros(prep, c3.shape[1])
    init = _resolve_init(c3, prep, x, c3.shape[1], b, None, memory_budget)
    active = None
    if cluster_mask is not None:
        active = cluster_mask.to(device=prep.x.device, dtype=torch.bool).expand(b, c3.shape[1])
        if not bool(active.any(-1).all()):
            raise ValueError("Expected cluster_mask to keep at least one cluster per problem.")
    result = run_lloyd(
        prep,
        init,
        max_iter=max_iter,
        tol=tol,
        memory_budget=memory_budget,
        check_every=check_every,
        active=active,
        final_pass=not (
            x.ndim == 2
            and init.shape[0] == 1
            and active is None
            and _relabelled_in_finish(x, prep, init.shape[1])
        ),
    )
    return _finish(
        result,
        prep,
        x,
        batched=x.ndim == 3 or centroids.ndim == 3,
        active=active,
        memory_budget=memory_budget,
    )


def _check_finite_data(prep: Prepared, x: torch.Tensor) -> Prepared:
    """Refuse NaN or infinity in ``x``, reading ``x`` again only when in doubt.

    The mean feature variance of :func:`prepare` sums every element of the
    prepared ``x``: NaN or infinity anywhere makes it non-finite. Only then
    (overflow of large finite values can do it too) is ``x`` checked element by
    element. One sum read as a Python float: a quarter of the cost of
    ``isfinite(...).all()``, which small fits would notice.

    Finite rows whose centred squared norms overflow (float32 rows of norm
    ~2e19 among closer ones) made the variance, hence tol, infinite: every
    fit stopped after one iteration. It is then summed again from the rows
    in the accumulation dtype, block by block.
    """
    if math.isfinite(float(prep.mean_variance.sum())):
        return prep
    if not v.all_finite(x):
        raise ValueError("Input x contains NaN or infinity; expected finite values.")
    if prep.metric != "euclidean":
        return prep
    prep = _copied(prep)
    acc = _device.widest_float(prep.x.device)
    bx, n, d = prep.x.shape
    total = torch.zeros(bx, dtype=acc, device=prep.x.device)
    rows = block_rows(n, d, itemsize=torch.finfo(acc).bits // 8, device=prep.x.device)
    for block in prep.x.split(rows, dim=1):
        total += block.to(acc).square().sum((1, 2))
    mean_variance = (total / (n * d)).clamp_max(torch.finfo(prep.x.dtype).max)
    return prep._replace(mean_variance=mean_variance.to(prep.x.dtype))


def check_distances_fit(
    inertia: torch.Tensor,
    x: torch.Tensor,
    distances: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> None:
    """Refuse finite data whose squared distances overflow their dtype.

    float32 rows of norm ~1e19 are finite, but their squared distances are
    not: every score is then infinite, labels are ties (wrong), and the
    inertia is inf. ``inertia`` sums the ``distances`` of the returned
    labels, times ``weights`` when given: finite distances with an infinite
    sum blame the weights, and without weights the data (float64 rows near
    1e153, each distance finite, their sum not: it had blamed a
    sample_weight that was never given).
    """
    if v.all_finite(inertia):
        return
    if weights is not None and distances is not None and v.all_finite(distances):
        raise ValueError(_WEIGHTED_SUM_OVERFLOWS)
    raise v.distances_overflow("x", compute_dtype(x.dtype))


_WEIGHTED_SUM_OVERFLOWS = (
    "The sum of the squared distances weighted by sample_weight overflows; expected "
    "weights whose products with the distances sum to a finite value: rescale them."
)


def _relabelled_from_differences(x3: torch.Tensor, problems: int, k: int) -> bool:
    """Whether :func:`_finish` labels the rows of ``x3`` ``(bx, n, d)`` against
    the final euclidean centroids ``(problems, k, d)`` (all active) from
    differences, in the data's scale: their labels and distances from the
    Lloyd iterations are then replaced, not read."""
    return (
        x3.shape[0] == problems == 1
        and x3.dtype == compute_dtype(x3.dtype)
        and scored_by_differences(_row_contiguous_shape(x3[0]), k)
    )


def _relabelled_in_finish(x: torch.Tensor, prep: Prepared, k: int) -> bool:
    """Whether :func:`_finish` labels the rows of one problem ``x`` ``(n, d)``
    against its final euclidean centroids itself (``k`` of them, all
    active): the iterations need no final pass of their own."""
    x3 = x.unsqueeze(0)
    return prep.metric == "euclidean" and (
        _relabelled_from_differences(x3, 1, k) or _finished_by_kernel(x3, prep, 1, k)
    )


def _finished_by_kernel(x3: torch.Tensor, prep: Prepared, problems: int, k: int) -> bool:
    """Whether :func:`_finish` labels the rows of ``x3`` ``(bx, n, d)`` against
    the final euclidean centroids ``(problems, k, d)`` (all active) by one
    call of the fused kernel on ``x3`` itself: the rows centred as they are
    read (as ``prep.x`` was: the same labels), the distances measured from
    the rows as given. It replaces both the iterations' final pass and a
    pass of exact distances (524,288 x 64 float32, k = 8: 11 and 22 ms).
    Where the iterations ran through the kernel (one problem on the CPU)."""
    return (
        x3.shape[0] == problems == 1
        and x3.dtype == prep.x.dtype
        and _native.prefers_native(prep.x[0], k)
        and _native.prefers_native(x3[0], k)
    )


def _finish(
    result: KMeansResult,
    prep: Prepared,
    x: torch.Tensor,
    batched: bool,
    active: torch.Tensor | None = None,
    memory_budget: int | None = None,
) -> KMeansResult:
    """Centroids back in the input's scale; euclidean labels checked against them.

    The labels were scored on centred rows, rounded once by the centring: each
    row's distance to its returned centroid is measured again from ``x``
    itself, labels that rounding could have chosen wrongly are corrected
    (``certify``), and the inertia is the sum of those distances. Drops the
    batch dimension unless ``batched``.

    The history is NaN from each problem's own ``n_iter`` on: a batch keeps
    iterating (and recording) until its last problem stops, and masking once
    here costs no host synchronisation inside the loop. Off the CPU a single
    problem too runs on to the next convergence check; on the CPU it stops at
    once, and small fits skip the few ops of the mask.
    """
    out_dtype = compute_dtype(x.dtype)
    if prep.metric == "euclidean":
        centroids = (result.centroids + prep.offset).to(out_dtype)
        x3 = x if x.ndim == 3 else x.unsqueeze(0)
        labels = result.labels
        if active is None and _relabelled_from_differences(
            x3, centroids.shape[0], centroids.shape[1]
        ):
            # Narrow rows: relabelled from differences by the kernel, exact
            # wherever the rows lie, in one pass: nothing to check.
            labels, distances = _nearest_by_differences_in_rows(x3[0], centroids[0])
            labels, distances = labels[None], distances[None]
            result = result._replace(labels=labels)
        else:
            if active is None and _finished_by_kernel(x3, prep, *centroids.shape[:2]):
                labels = torch.empty((1, x3.shape[1]), dtype=torch.int64, device=x3.device)
                distances = torch.empty((1, x3.shape[1]), dtype=x3.dtype, device=x3.device)
                _native.nearest(
                    x3[0],
                    result.centroids[0],
                    labels[0],
                    offset=prep.offset[0, 0],
                    distances=distances[0],
                    given=centroids[0],
                )
                result = result._replace(labels=labels)
            else:
                rows = _exact_distance_rows(x3, centroids.shape[0], memory_budget)
                distances = _labelled_distances(x3, centroids, labels, rows, False)
            # The labels were scored against the centroids before the offset
            # was added back and rounded: rows that rounding could mislabel
            # are suspects too.
            assert prep.x_sq is not None
            floor = moved_centroids_floor(result.centroids, centroids, prep.offset)
            frame = torch.maximum(prep.x_sq, floor)
            # Centroids lie within the rows' hull: scores |c|^2 - 2 x.c reach
            # 3 max |x|^2. Beyond the dtype they overflowed (float32 rows of
            # norm ~1.5e19): any label may be wrong, every row is a suspect.
            overflowed = prep.x_sq.amax(-1, keepdim=True) > torch.finfo(frame.dtype).max / 3
            certify_nearest(
                x3,
                centroids,
                labels,
                distances,
                frame_squared_norms=frame.masked_fill(overflowed, math.inf),
                active=active,
            )
        inertia = _weighted_total(distances, prep.weights)
        check_distances_fit(inertia, x, distances, prep.weights)
        result = result._replace(centroids=centroids, inertia=inertia.to(result.inertia.dtype))
    else:
        result = result._replace(centroids=result.centroids.to(out_dtype))
    if prep.ignored is not None:
        # Cosine rows of zeros, left out of the fit, each at distance 1 (the
        # history has them from _score_offset).
        result = result._replace(inertia=result.inertia + prep.ignored.to(result.inertia.dtype))
    history = result.inertia_history
    if history.shape[0] > 1 or not _device.on_host(history.device):
        steps = torch.arange(history.shape[-1], device=history.device)
        history = history.masked_fill(steps >= result.n_iter.unsqueeze(-1), float("nan"))
        result = result._replace(inertia_history=history)
    if batched:
        return result
    return KMeansResult(*(field[0] for field in result))


def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    *,
    init: InitArg = "k-means++",
    n_init: int | str = "auto",
    max_iter: int = 300,
    tol: float = 1e-4,
    metric: str = "euclidean",
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | None = None,
    check_every: int | None = None,
) -> KMeansResult:
    """K-Means clustering of a tensor: initialisation, restarts and Lloyd iterations.

    The ``n_init`` restarts run as one batch in the same kernels; the one
    with the lowest inertia is returned. Clustering is not differentiable:
    the inputs are detached and the results carry no gradient. Euclidean
    data too small for its squared distances (float32 entries all below
    ~3e-16, float64 ~1e-146), or so large that they overflow (centred
    float32 rows from ~1e18), is clustered scaled by a power of two, which
    is exact, and the results scaled back (as :func:`lloyd` does).

    Parameters
    ----------
    x : Tensor
        ``(n, d)``, or ``(b, n, d)`` for b independent problems; floating point.
        A torch sparse ``(n, d)`` tensor (COO, CSR, CSC...) is clustered on its
        stored values, never densified
        (:func:`~torchkmeans.functional.sparse.sparse_kmeans`: scikit-learn's
        sparse algorithm, no centring; ``init`` not a callable).
    n_clusters : int
        Number of clusters k.
    init : {"k-means++", "random"}, Tensor or callable
        Seeding method; a tensor ``(k, d)`` of initial centroids, or
        ``(b, k, d)``: one set per problem of a 3-D ``x``, or for a 2-D ``x``
        b starts run as restarts (the lowest inertia is kept); or
        ``init(x, n_clusters, generator)`` returning ``(k, d)`` (or
        ``(b, k, d)`` for a 3-D ``x``), called once per restart for a 2-D ``x``.
    n_init : int or "auto"
        Restarts; "auto" is 1 for k-means++ and given centroids, 10 for
        random and a callable (as in scikit-learn).
    max_iter, tol, metric, memory_budget, check_every
        As in :func:`lloyd`.
    sample_weight : Tensor, optional
        ``(n,)`` or ``(b, n)`` non-negative weights.
    generator : torch.Generator, optional
        Source of randomness on ``x``'s device.

    Returns
    -------
    KMeansResult

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point tensor, or ``n_clusters``,
        ``max_iter`` or ``check_every`` is not an int.
    ValueError
        If ``x`` or ``sample_weight`` hold NaN or infinity, weights are
        negative or of the wrong shape, ``x`` has fewer rows than
        ``n_clusters``, the inertia of finite ``x`` overflows float64 (``x``
        near 1e153), or an argument is out of range.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    >>> result = kmeans(x, 2, generator=g)
    >>> sorted(result.centroids.tolist())
    [[0.0, 0.5], [10.0, 10.5]]
    >>> float(result.inertia)
    1.0
    """
    if isinstance(x, torch.Tensor) and x.layout != torch.strided:
        # Imported here: the sparse loop builds on this module.
        from .sparse import _kmeans_of_sparse_tensor

        return _kmeans_of_sparse_tensor(
            x,
            n_clusters,
            init=init,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            sample_weight=sample_weight,
            generator=generator,
            memory_budget=memory_budget,
            check_every=check_every,
        )
    x = v.check_data(x)
    n = x.shape[-2]
    n_clusters = v.check_n_clusters(n_clusters)
    if n < n_clusters:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")
    if n_init == "auto":
        n_init = 10 if (isinstance(init, str) and init == "random") or callable(init) else 1
    if isinstance(n_init, bool) or not isinstance(n_init, numbers.Integral) or n_init < 1:
        raise ValueError(f"n_init={n_init!r} should be 'auto' or an int >= 1.")
    n_init = int(n_init)
    v.check_positive_int(max_iter, "max_iter")
    v.check_nonnegative_float(tol, "tol")
    if check_every is not None:
        v.check_positive_int(check_every, "check_every")
    v.check_memory_budget(memory_budget)
    sample_weight = v.check_weight_tensor(
        sample_weight, n, x.shape[0] if x.ndim == 3 else 1, dtype=compute_dtype(x.dtype)
    )
    if not isinstance(init, str) and not callable(init):
        # Given starts: one run, or for one data set, one restart per set of centroids.
        shared_starts = isinstance(init, torch.Tensor) and init.ndim == 3 and x.ndim == 2
        n_init = max(1, init.shape[0]) if shared_starts else 1
    centred_on_read = _centres_on_read(x, n_clusters, metric, init, n_init)
    prep = prepare(x, sample_weight=sample_weight, metric=metric, centred_on_read=centred_on_read)
    prep = _check_finite_data(prep, x)
    exponent = _scale_exponent(prep, x)
    if exponent:
        scaled = kmeans(
            times_power_of_two(x.to(prep.x.dtype), exponent),
            n_clusters,
            init=_scaled_init(init, x, exponent),
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            sample_weight=sample_weight,
            generator=generator,
            memory_budget=memory_budget,
            check_every=check_every,
        )
        return _unscaled_checked(scaled, exponent, x, sample_weight)
    prep = _without_rows_of_zeros(prep, n_clusters)
    # One run whose labels _finish takes again (from differences, or by the
    # kernel from x itself): the iterations' own final pass over the rows
    # would be thrown away.
    relabelled = x.ndim == 2 and n_init == 1 and _relabelled_in_finish(x, prep, n_clusters)

    def run(n_problems: int, best_only: bool = False) -> KMeansResult:
        start = _resolve_init(init, prep, x, n_clusters, n_problems, generator, memory_budget)
        return run_lloyd(
            prep,
            start,
            max_iter=max_iter,
            tol=tol,
            memory_budget=memory_budget,
            check_every=check_every,
            best_only=best_only,
            final_pass=not relabelled,
        )

    if x.ndim == 3:
        # b data sets: restarts run one after another, each batched over b.
        best = run(prep.x.shape[0])
        for _ in range(n_init - 1):
            best = _keep_better(best, run(prep.x.shape[0]))
        return _finish(best, prep, x, batched=True, memory_budget=memory_budget)
    result = run(n_init, best_only=True)
    if n_init > 1:
        winner = int(result.inertia.argmin())
        result = KMeansResult(*(field[winner : winner + 1] for field in result))
    return _finish(result, prep, x, batched=False, memory_budget=memory_budget)


def _scale_exponent(prep: Prepared, x: torch.Tensor, centroids: torch.Tensor | None = None) -> int:
    """The power of two by which :func:`kmeans` and :func:`lloyd` scale
    euclidean data too small or too large for its squared distances (0: none).

    float32 rows near 1e-25 have squared distances of 1e-50, 0 in float32:
    every score was 0, labels were ties (7% of them the nearest centre) and
    the inertia 0. float32 rows of centred norm ~2e19 have squared distances
    of inf: the fit was refused. Scaled by a power of two, an exact change,
    the same fit is exact. One host read of the mean variance and of the
    largest centred squared norm (and given ``centroids``' largest entry
    about the data's mean), which :func:`prepare` computed anyway; only
    data beyond either bound is read again.
    """
    if prep.metric != "euclidean":
        return 0
    assert prep.x_sq is not None
    d = prep.x.shape[-1]
    norms = [prep.mean_variance.max(), prep.x_sq.amax()]
    if centroids is not None and centroids.numel():
        c3 = centroids if centroids.ndim == 3 else centroids.unsqueeze(0)
        entry = (c3.to(prep.x.dtype) - prep.offset).abs().amax()
        norms.append(entry.square() * (4 * d))
    variance, *largest = torch.stack(norms).tolist()
    finfo = torch.finfo(prep.x.dtype)
    # The sum of the squares behind the mean variance overflowed (it is
    # clamped to max: float64 rows each of squared norm below max / 8, 569
    # of them): tol was then max, and fits stopped after a few iterations.
    summed_overflow = not variance < finfo.max
    if summed_overflow or not all(value <= finfo.max / 8 for value in largest):
        # The centred rows' entries, at most twice x's where the centring
        # itself overflowed.
        entry = float(_copied(prep).x.abs().amax())
        if not math.isfinite(entry):
            entry = 2 * float(x.detach().abs().amax())
        if centroids is not None:
            entry = max(entry, 2 * float(centroids.detach().abs().amax()))
        # Room for the sum over all rows too, where it overflowed.
        terms = d * prep.x.shape[-2] if summed_overflow else d
        return overflow_exponent(entry, x.dtype, terms)
    if variance >= finfo.tiny / finfo.eps:
        return 0
    return underflow_exponent(float(x.detach().abs().amax()), x.dtype)


def _unscaled_checked(
    result: KMeansResult, exponent: int, x: torch.Tensor, sample_weight: torch.Tensor | None
) -> KMeansResult:
    """:func:`_unscaled`, refusing an inertia that is not finite in the data's scale."""
    result = _unscaled(result, exponent)
    if exponent < 0 and not v.all_finite(result.inertia):
        # The scaled fit's distances were finite; in the data's scale their
        # sum is not (float64 rows near 1e153).
        if sample_weight is not None:
            raise ValueError(_WEIGHTED_SUM_OVERFLOWS)
        raise v.distances_overflow("x", compute_dtype(x.dtype))
    return result


def _scaled_init(init: InitArg, x: torch.Tensor, exponent: int) -> InitArg:
    """``init`` for the data ``x`` scaled by ``2^exponent``."""
    if isinstance(init, torch.Tensor):
        return times_power_of_two(init, exponent)
    if callable(init):
        given = init

        def scaled(_: torch.Tensor, n_clusters: int, generator: Any) -> torch.Tensor:
            centroids = given(x, n_clusters, generator)
            return times_power_of_two(torch.as_tensor(centroids, device=x.device), exponent)

        return scaled
    return init


def _unscaled(result: KMeansResult, exponent: int) -> KMeansResult:
    """The result of data scaled by ``2^exponent``, in the data's scale."""
    return result._replace(
        centroids=times_power_of_two(result.centroids, -exponent),
        inertia=times_power_of_two(result.inertia, -2 * exponent),
        inertia_history=times_power_of_two(result.inertia_history, -2 * exponent),
    )


def _keep_better(best: KMeansResult, other: KMeansResult) -> KMeansResult:
    """Per problem, the result with the lower inertia."""
    better = other.inertia < best.inertia
    fields = []
    for kept, new in zip(best, other):
        mask = better.view(-1, *([1] * (kept.ndim - 1)))
        fields.append(torch.where(mask, new, kept))
    return KMeansResult(*fields)
