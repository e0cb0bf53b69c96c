"""Lloyd iterations on sparse rows (CSR): scikit-learn's sparse algorithm on torch tensors.

A TF-IDF or bag-of-words matrix is mostly zeros: the scores ``x.c`` of a
block of rows are one sparse-dense product (``torch.sparse.mm``, MKL or
cuSPARSE), the cluster sums one scatter of the stored values, and the work
of an iteration is proportional to the number of stored values, not to
``n * d``. As scikit-learn does for sparse input, the rows are not centred
(centring would fill in the zeros): distances are the expansion
``|x|^2 - 2 x.c + |c|^2``. The rules of the dense loops are kept: the same
convergence tests (labels unchanged, or a squared centre shift at most
``tol`` times the mean feature variance), empty clusters reseeded from the
farthest points (:func:`~torchkmeans.functional.updates.relocate_empty_clusters`),
a final assignment so that the labels are those of the returned centres,
and for ``metric="cosine"`` unit rows whose rows of zeros neither seed nor
move a centre.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import _validation as v
from . import _device, _native
from .certify import (
    _TRUSTED_PRECISION,
    _fingerprint_weights,
    fingerprint_terms,
    first_equal_prints,
    suspects,
    trust_factor,
)
from .collective import LOCAL
from .distances import (
    DEFAULT_MEMORY_BUDGET,
    Nearest,
    _nearest,
    compute_dtype,
    overflow_exponent,
    pairwise_distances,
    times_power_of_two,
    underflow_exponent,
    unit_rows,
    weights_without_rows_of_zeros,
)
from .init import _sample_from_cumulative, greedy_choice, random_init
from .lloyd import KMeansResult
from .minibatch import MiniBatchStep, _apply_step
from .updates import centroids_from_sums, relocate_empty_clusters

__all__ = [
    "SparseRows",
    "sparse_distances",
    "sparse_kmeans",
    "sparse_kmeans_plusplus",
    "sparse_minibatch_step",
    "sparse_nearest",
    "sparse_needs_no_scale",
    "sparse_rows",
    "sparse_scale_exponent",
    "sparse_scaled",
]


class SparseRows(NamedTuple):
    """Rows in CSR form on one device, ready for the iterations (see :func:`sparse_rows`)."""

    crow: torch.Tensor  # (n + 1,) int64: row i holds stored values crow[i]:crow[i+1]
    col: torch.Tensor  # (nnz,) int64 column of each stored value
    values: torch.Tensor  # (nnz,) stored values, in the compute dtype (unit rows for cosine)
    # (nnz,) int64 row of each stored value, or None: taken from crow when
    # asked for (see row_of). The fused kernel reads crow: a fit on the CPU
    # needs no such index, an 8 MB array for a million stored values.
    row_index: torch.Tensor | None
    sq_norms: torch.Tensor  # (n,) squared norm of each row
    n_features: int
    metric: str
    # (nnz,) int32 copy of col, or None: what the fused kernel reads where a
    # fit set it (see _single), 12 bytes per stored float64 value, not 16.
    narrow_col: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return int(self.crow.shape[0]) - 1

    @property
    def row_of(self) -> torch.Tensor:
        """``(nnz,)`` int64 row of each stored value (built again at every
        read when not stored: see :meth:`with_row_of`)."""
        return self.row_index if self.row_index is not None else _row_of(self.crow)

    def with_row_of(self) -> SparseRows:
        """These rows with the row of each stored value stored, for work
        that reads it more than once."""
        return self if self.row_index is not None else self._replace(row_index=_row_of(self.crow))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def block(self, start: int, stop: int, bounds: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows ``start:stop`` as a torch sparse CSR tensor (views of the stored
        values); ``bounds`` ``(crow[start], crow[stop])`` when known (else read)."""
        lo, hi = bounds if bounds is not None else (int(self.crow[start]), int(self.crow[stop]))
        # int32 indices where they fit: MKL takes no others, and converted
        # those of int64 blocks in every product (1% stored TF-IDF, 20,000 x
        # 5,000, k=2: 1.1 ms a product against 0.6 ms).
        index = _index_dtype(max(hi - lo, self.n_features))
        with warnings.catch_warnings():
            # "Sparse CSR tensor support is in beta state": products work.
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                (self.crow[start : stop + 1] - lo).to(index),
                self.col[lo:hi].to(index),
                self.values[lo:hi],
                size=(stop - start, self.n_features),
                device=self.device,
            )

    def subset(self, index: torch.Tensor) -> SparseRows:
        """Rows ``index`` ``(m,)`` (repeats allowed), in that order, as :class:`SparseRows`."""
        index = index.to(self.device)
        crow, positions = _gathered_positions(self.crow, index)
        # index_select: indexing by a tensor took 3x as long (1,024 rows
        # of 1% stored TF-IDF, 5,000 features: a third of a mini-batch step).
        return SparseRows(
            crow,
            self.col.index_select(0, positions),
            self.values.index_select(0, positions),
            None,
            self.sq_norms.index_select(0, index),
            self.n_features,
            self.metric,
        )

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` ``(m,)`` as a dense ``(m, d)`` tensor, in that order."""
        return dense_rows(self.crow, self.col, self.values, self.n_features, index)

    def sums(self, labels: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
        """``(k, d)`` sums of the rows labelled ``labels`` ``(n,)``, their stored
        ``values`` (or those values weighted) in one scatter, in the dtype of ``values``."""
        d = self.n_features
        sums = torch.zeros(k * d, dtype=values.dtype, device=self.device)
        # index_select and in-place arithmetic: labels[row_of] * d + col made
        # three nnz-sized temporaries by slower kernels (1% stored TF-IDF,
        # 20,000 x 5,000: 7.5 ms against 2.4 ms, most of an iteration at k=2).
        index = labels.index_select(0, self.row_of).mul_(d).add_(self.col)
        sums.index_add_(0, index, values)
        return sums.view(k, d)


def _index_dtype(largest: int) -> torch.dtype:
    """int32 for the indices of a sparse tensor when ``largest`` (its number of
    stored values or of columns) fits, else int64."""
    return torch.int32 if largest < 2**31 - 1 else torch.int64


def _row_of(crow: torch.Tensor) -> torch.Tensor:
    """``(nnz,)`` int64 row of each stored value of CSR rows ``crow`` ``(n + 1,)``."""
    n = int(crow.shape[0]) - 1
    return torch.repeat_interleave(torch.arange(n, device=crow.device), crow.diff())


def _row_sq_norms(crow: torch.Tensor, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(n,)`` squared norm of each of the CSR rows ``crow`` of stored
    ``values``, summed in ``dtype``, each row's squares in order (as one
    scatter by row adds them: the same sums)."""
    squares = values.to(dtype).square()
    if crow.device.type in ("cpu", "cuda"):
        # From the row bounds, no row index (1% stored TF-IDF, 20,000 x
        # 5,000: 0.75 ms against 2.1 ms for index_add_).
        return torch.segment_reduce(squares, "sum", offsets=crow)
    sums = torch.zeros(int(crow.shape[0]) - 1, dtype=dtype, device=crow.device)
    return sums.index_add_(0, _row_of(crow), squares)


def _gathered_positions(
    crow: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``index`` ``(m,)`` of CSR rows ``crow``: their own ``crow``
    ``(m + 1,)`` and the position of each of their stored values among the
    stored values of all rows."""
    begins = crow.index_select(0, index)
    lengths = crow.index_select(0, index + 1) - begins
    m = int(index.numel())
    new_crow = torch.zeros(m + 1, dtype=torch.int64, device=crow.device)
    torch.cumsum(lengths, 0, out=new_crow[1:])
    # Each stored value's shift from its place among the gathered ones.
    shifts = torch.repeat_interleave(begins - new_crow[:-1], lengths)
    return new_crow, shifts.add_(torch.arange(shifts.numel(), device=crow.device))


def dense_rows(
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    n_features: int,
    index: torch.Tensor,
) -> torch.Tensor:
    """Rows ``index`` ``(m,)`` of the CSR components as a dense ``(m, n_features)`` tensor.

    Examples
    --------
    >>> dense_rows(torch.tensor([0, 1, 3]), torch.tensor([1, 0, 1]),
    ...            torch.tensor([2.0, 3.0, 4.0]), 2, torch.tensor([1, 0])).tolist()
    [[3.0, 4.0], [0.0, 2.0]]
    """
    index = index.to(crow.device)
    gathered_crow, positions = _gathered_positions(crow, index)
    row_of = _row_of(gathered_crow)
    out = torch.zeros((int(index.numel()), n_features), dtype=values.dtype, device=values.device)
    out.view(-1)[row_of * n_features + col[positions]] = values[positions]
    return out


def sparse_rows(
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    n_features: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    metric: str = "euclidean",
) -> SparseRows:
    """CSR components (without duplicate entries) as :class:`SparseRows` on ``device``.

    ``values`` are converted to ``dtype`` (a new tensor: the caller's are
    never written to); for ``metric="cosine"`` each row is scaled to unit norm.

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1, 3]), torch.tensor([1, 0, 1]),
    ...                    torch.tensor([2.0, 3.0, 4.0]), 2, device=torch.device("cpu"),
    ...                    dtype=torch.float64)
    >>> rows.take(torch.tensor([1, 0])).tolist(), rows.sq_norms.tolist()
    ([[3.0, 4.0], [0.0, 2.0]], [4.0, 25.0])
    """
    crow = crow.to(device=device, dtype=torch.int64)
    col = col.to(device=device, dtype=torch.int64)
    values = values.to(device=device, dtype=dtype, copy=True)
    n = int(crow.shape[0]) - 1
    row_of = None  # euclidean rows: built when asked for (SparseRows.row_of)
    acc = _device.widest_float(device)
    if metric == "cosine":
        row_of = _row_of(crow)
        # Scaled by the largest magnitude of each row first, as unit_rows
        # does: squares of values near 1e-160 or 1e160 leave float64.
        tiny = torch.finfo(values.dtype).tiny
        largest = torch.zeros(n, dtype=values.dtype, device=device)
        largest.scatter_reduce_(0, row_of, values.abs(), "amax")
        values = values / largest.clamp_min(tiny)[row_of]
        sq_norms = _row_sq_norms(crow, values, acc)
        values = values / sq_norms.sqrt().to(values.dtype).clamp_min(tiny)[row_of]
        sq_norms = (sq_norms > 0).to(acc)  # unit rows, and rows of zeros
    else:
        sq_norms = _row_sq_norms(crow, values, acc)
    return SparseRows(crow, col, values, row_of, sq_norms.to(dtype), n_features, metric)


def sparse_scale_exponent(rows: SparseRows, centroids: torch.Tensor | None = None) -> int:
    """The power of two ``2^e`` by which euclidean ``rows`` (and ``centroids``)
    are scored: squared distances of float32 values near 1e-25 underflow
    (inertia 0, every label a tie) and near 1e19 overflow, as in the dense
    search (:func:`~torchkmeans.functional.distances.scale_exponent_of`);
    0 for most data and for cosine rows (unit vectors). One host read.

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1e-30]), 1,
    ...                    device=torch.device("cpu"), dtype=torch.float32)
    >>> sparse_scale_exponent(rows), sparse_scale_exponent(rows, torch.tensor([[1.0]]))
    (99, 0)
    """
    if rows.metric != "euclidean":
        return 0
    largest = 0.0
    # From the extremes: |values| was a temporary of all the stored values,
    # and |centroids| one of all the centres (8 MB at k=20, d=50,000: read
    # twice per sparse partial_fit, a tenth of its time).
    for tensor in (rows.values, centroids):
        if tensor is not None and tensor.numel():
            with torch.no_grad():
                low, high = torch.aminmax(tensor)
            largest = max(largest, abs(float(low)), abs(float(high)))
    exponent = underflow_exponent(largest, rows.dtype)
    return exponent or overflow_exponent(largest, rows.dtype, rows.n_features)


def sparse_needs_no_scale(rows: SparseRows) -> bool:
    """Whether ``rows`` hold a nonzero value and need no scale of their own
    (:func:`sparse_scale_exponent` 0; cosine rows never do): then neither do
    weighted means of them and of centroids that need none together with
    them, whose largest entry lies between the rows' and the centroids'.

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1e-30]), 1,
    ...                    device=torch.device("cpu"), dtype=torch.float32)
    >>> sparse_needs_no_scale(rows), sparse_needs_no_scale(sparse_scaled(rows, 99))
    (False, True)
    """
    if rows.metric != "euclidean":
        return True
    return sparse_scale_exponent(rows) == 0 and bool(rows.values.any())


def sparse_scaled(rows: SparseRows, exponent: int) -> SparseRows:
    """Euclidean ``rows`` times ``2^exponent`` (exact unless subnormal), their
    squared norms taken again from the scaled values (scaled, those of
    float32 values near 1e-25 would stay 0).

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1e-30]), 1,
    ...                    device=torch.device("cpu"), dtype=torch.float32)
    >>> float(rows.sq_norms[0]), float(sparse_scaled(rows, 99).sq_norms[0]) > 0.1
    (0.0, True)
    """
    if not exponent or rows.metric != "euclidean":
        return rows
    values = times_power_of_two(rows.values, exponent)
    sq_norms = _row_sq_norms(rows.crow, values, _device.widest_float(values.device))
    return rows._replace(values=values, sq_norms=sq_norms.to(values.dtype))


def _two_sum_error(a: torch.Tensor, b: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """The exact rounding error of ``total = a + b`` (Knuth's TwoSum): 0
    where the sum is exact."""
    b_part = total - a
    return (a - (total - b_part)).add_(b - b_part)


def _frame_shift(rows: SparseRows) -> torch.Tensor | None:
    """``(d,)`` means of the columns every euclidean row stores (0 on the
    others), where subtracting them removes at least
    ``_SHIFT_MIN_REMOVED`` of the rows' squared norms; else None.

    The expansion ``|x|^2 - 2 x.c + |c|^2`` cancels for rows far from the
    origin: a column stored in every row far from 0 (a year among one-hot
    columns) made every row a suspect, measured again from its stored
    columns in every iteration (:func:`_distances_by_support`). Shifted by
    those means, as dense rows are centred, the rows store the same
    columns and the expansion labels them (200,000 x 1,001 float32, k=20,
    2 threads: 10 iterations from the same centres 0.14 s against 4.0 s,
    scikit-learn 0.21 s; the default fit 0.22 s against 16.5 s,
    scikit-learn 0.78-0.88 s)."""
    n, d = rows.n_rows, rows.n_features
    if rows.metric != "euclidean" or not n or not rows.values.numel():
        return None
    full = torch.bincount(rows.col, minlength=d) == n  # no duplicates: each row once
    acc = _device.widest_float(rows.device)
    values = rows.values.to(acc)
    sums = torch.zeros(d, dtype=acc, device=rows.device).index_add_(0, rows.col, values)
    means = torch.where(full, sums / n, 0.0)
    removed = means.square().sum() * n  # sum |x|^2 less sum |x - means|^2
    if not bool(removed >= _SHIFT_MIN_REMOVED * rows.sq_norms.to(acc).sum()):
        return None
    return means.to(rows.dtype)


# The share of the rows' squared norms a frame shift must remove (see _frame_shift).
_SHIFT_MIN_REMOVED = 0.75


def _shifted(rows: SparseRows, shift: torch.Tensor) -> tuple[SparseRows, bool]:
    """``rows`` less ``shift`` ``(d,)`` (:func:`_frame_shift`) on the columns
    they store, with their squared norms, and whether every difference is
    exact (the rows then are the given ones, moved)."""
    moved = shift.index_select(0, rows.col)
    values = rows.values - moved
    exact = not bool(_two_sum_error(rows.values, moved.neg_(), values).any())
    sq_norms = _row_sq_norms(rows.crow, values, _device.widest_float(values.device))
    return rows._replace(values=values, sq_norms=sq_norms.to(values.dtype)), exact


def _unshifted(
    result: KMeansResult,
    rows: SparseRows,
    shifted: SparseRows,
    exact: bool,
    shift: torch.Tensor,
    weights: torch.Tensor,
    memory_budget: int | None,
) -> KMeansResult:
    """A fit of ``shifted`` rows (:func:`_shifted`) as one of ``rows``: its
    centres plus ``shift``, labelled the nearest of those. Where the
    shifted rows are exact and the returned centres less the shift too, the
    distances are those of the shifted frame: the labels stand where those
    centres are the fit's, else the shifted rows are labelled against them;
    otherwise the rows themselves are (see :func:`sparse_nearest`)."""
    centroids = result.centroids + shift
    back = centroids - shift
    if exact and not bool(_two_sum_error(centroids, -shift, back).any()):
        if torch.equal(back, result.centroids):
            return result._replace(centroids=centroids)
        labels, distances = sparse_nearest(shifted, back, memory_budget)
    else:
        labels, distances = sparse_nearest(rows, centroids, memory_budget)
    inertia = (distances.to(weights.dtype) * weights).sum()
    return result._replace(centroids=centroids, labels=labels, inertia=inertia)


def _block_rows(rows: SparseRows, columns: int, memory_budget: int | None) -> int:
    """Rows per block so that a block's ``(m, columns)`` scores (and their
    distances) take at most ``memory_budget`` bytes."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    itemsize = torch.finfo(rows.dtype).bits // 8
    return max(1, min(max(rows.n_rows, 1), budget // max(1, 3 * columns * itemsize)))


@_device.full_precision
def _block_distances(
    rows: SparseRows,
    start: int,
    stop: int,
    centroids: torch.Tensor,
    c_sq: torch.Tensor | None,
    block: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(stop - start, k)`` distances of rows ``start:stop`` (``block``, their
    CSR tensor, when built) to ``centroids``: squared euclidean (clamped at 0)
    or ``1 - cos`` (clamped to [0, 2])."""
    if block is None:
        block = rows.block(start, stop)
    scores = torch.sparse.mm(block, centroids.T)
    return _from_scores(scores, rows.metric, c_sq, rows.sq_norms[start:stop, None])


def _from_scores(
    scores: torch.Tensor, metric: str, c_sq: torch.Tensor | None, x_sq: torch.Tensor
) -> torch.Tensor:
    """Products ``x.c`` as distances, in place: squared euclidean
    ``|x|^2 + |c|^2 - 2 x.c`` clamped at 0 from the squared norms ``c_sq``
    and ``x_sq`` (broadcast against ``scores``), or ``1 - x.c`` clamped to [0, 2]."""
    if metric == "cosine":
        return scores.neg_().add_(1.0).clamp_(0.0, 2.0)
    assert c_sq is not None
    return scores.mul_(-2.0).add_(c_sq).add_(x_sq).clamp_min_(0.0)


def _squared_norms(centroids: torch.Tensor) -> torch.Tensor:
    return centroids.square().sum(-1)


def sparse_nearest(
    rows: SparseRows, centroids: torch.Tensor, memory_budget: int | None = None
) -> Nearest:
    """Nearest of ``centroids`` ``(k, d)`` for each row: labels ``(n,)`` and
    distances ``(n,)`` (squared euclidean or ``1 - cos``), in blocks of rows.

    The first centroid wins ties, as in the dense search.
    """
    k = int(centroids.shape[0])
    fused = _fused(rows, k, memory_budget, totals=False)
    blocks = [] if fused else _row_blocks(rows, _block_rows(rows, k, memory_budget))
    return _checked_nearest(rows, centroids, blocks, memory_budget)


def _checked_nearest(
    rows: SparseRows,
    centroids: torch.Tensor,
    blocks: _Blocks,
    memory_budget: int | None,
    weights: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
) -> Nearest:
    """:func:`sparse_nearest` over known ``blocks`` of rows (none: by the
    fused kernel, see :func:`_fused`, which also writes ``totals`` when
    given). ``totals`` are set to NaN when a row is labelled again otherwise:
    the caller's sums are then to be taken from the labels."""
    labels, distances = _scored(rows, centroids, blocks, weights, totals)
    if rows.metric == "euclidean" and rows.n_rows:
        # The expansion cancels for rows far from the origin for their
        # distance (float32 rows near 1e4, 1e-2 apart: 2,602 of 3,000 labels
        # not the nearest centre): those it cannot label (see
        # certify.suspects) are labelled again from distances that do not
        # cancel (_distances_by_support); float32 rows first from the
        # expansion in float64 (_rescored_wide). Most suspects of a
        # mini-batch step are rows equal to a centre reseeded onto them.
        again = suspects(rows.sq_norms, distances, centred=True).nonzero().squeeze(1)
        k = int(centroids.shape[0])
        if again.numel() >= _WIDE_MIN_SUSPECTS and _wide_kernel(rows, k):
            again = _rescored_wide(rows, centroids, again, labels, distances, totals, memory_budget)
        # Parts the dense search also takes, should it search one.
        dense_parts = _parts(again, _block_rows(rows, rows.n_features, memory_budget))
        parts = [p for dense in dense_parts for p in _support_parts(rows, dense, k, memory_budget)]
        centres = centroids.to(rows.dtype)
        c_sq = _wide_squared_norms(centres) if parts else None
        for part in parts:
            assert c_sq is not None
            found = _distances_by_support(rows.subset(part), centres, c_sq)
            if found is None:
                part_labels, dense_distances = _nearest(
                    rows.take(part), centres, memory_budget=memory_budget
                )
                assert dense_distances is not None
                part_distances = dense_distances
            else:
                part_distances, part_labels = torch.min(found, dim=1)
            if totals is not None and not torch.equal(labels[part], part_labels):
                totals.fill_(math.nan)
            labels.index_copy_(0, part, part_labels)
            distances.index_copy_(0, part, part_distances.to(distances.dtype))
    return Nearest(labels, distances)


# Suspects from which _checked_nearest scores float32 rows again in float64:
# fewer are mostly rows equal to a centre reseeded onto them, suspects in
# any precision.
_WIDE_MIN_SUSPECTS = 32


def _wide_kernel(rows: SparseRows, k: int) -> bool:
    """Whether :func:`_rescored_wide` may score float32 ``rows`` again."""
    return rows.dtype == torch.float32 and _fused(rows, k, None, totals=False)


def _rescored_wide(
    rows: SparseRows,
    centroids: torch.Tensor,
    index: torch.Tensor,
    labels: torch.Tensor,
    distances: torch.Tensor,
    totals: torch.Tensor | None,
    memory_budget: int | None,
) -> torch.Tensor:
    """The suspects ``index`` ``(m,)`` of float32 ``rows`` labelled again by
    the fused kernel in float64 (their values, squared norms and the
    centroids widened exactly), in place in ``labels`` and ``distances``;
    returns those still suspect there. The expansion's rounding in float64
    is 2^-29 of float32's: rows far from the origin for their distance, a
    float32 expansion's suspects, are labelled there at a scatter's cost,
    not measured again from their stored columns (years 1950-2019 among
    1,000 one-hot columns, 200,000 rows, float32, k=20, 2 threads: 60% of
    the rows suspects of the fit's shifted rows, all of the given ones;
    ``predict`` 27-35 ms against 137-142 ms, scikit-learn's 10 ms;
    ``MiniBatchKMeans`` fit 0.49-0.53 s against 0.90-0.98 s,
    scikit-learn's 1.0-1.4 s).
    ``totals`` are set to NaN when a label changes (see
    :func:`_checked_nearest`). In parts of ``memory_budget``."""
    wide_centroids = centroids.to(torch.float64)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    still = []
    for part in _stored_parts(rows, index, budget // _WIDENED_BYTES):
        picked = _widened(rows, part)
        part_labels = torch.empty(picked.n_rows, dtype=torch.int64, device=rows.device)
        part_distances = torch.empty(picked.n_rows, dtype=torch.float64, device=rows.device)
        _native.sparse_lloyd(
            picked.crow,
            picked.col,
            picked.values,
            rows.n_features,
            wide_centroids,
            picked.sq_norms,
            part_labels,
            part_distances,
        )
        if totals is not None and not torch.equal(labels[part], part_labels):
            totals.fill_(math.nan)
        labels.index_copy_(0, part, part_labels)
        distances.index_copy_(0, part, part_distances.to(distances.dtype))
        still.append(part[suspects(picked.sq_norms, part_distances, centred=True)])
    return torch.cat(still) if still else index


# Bytes per stored value of a part of rows _widened copies: its float64
# value (and squares), column and position.
_WIDENED_BYTES = 32


def _widened(rows: SparseRows, index: torch.Tensor) -> SparseRows:
    """The rows ``index`` ``(m,)`` with their values and squared norms in
    float64 (the values widened exactly)."""
    picked = rows.subset(index)
    values = picked.values.to(torch.float64)
    return picked._replace(
        values=values, sq_norms=_row_sq_norms(picked.crow, values, torch.float64)
    )


_Blocks = list[tuple[int, int, torch.Tensor]]

# Values of the widened squares of centres taken at a time by
# _wide_squared_norms and _squares_off_rows (1 MB of float64).
_SQUARES_BLOCK = 1 << 17
# Pairs of a row and a centre whose squares _distances_by_support sums off
# the row's columns, per row, beyond which it leaves the rows to the dense
# search: a row equal to a centre (reseeded onto it) is one such pair.
_SUPPORT_MAX_PAIRS_PER_ROW = 2
# The share of their columns rows may store for _distances_by_support: its
# work on each stored value is a dense product's on each column.
_SUPPORT_MAX_STORED_SHARE = 0.25


@_device.full_precision
def _wide_squared_norms(centroids: torch.Tensor) -> torch.Tensor:
    """``(k,)`` squared norms of ``centroids`` ``(k, d)`` in the widest float,
    the squares of float32 centres exact, a block of columns at a time."""
    k, d = int(centroids.shape[0]), int(centroids.shape[1])
    wide = _device.widest_float(centroids.device)
    out = torch.zeros(k, dtype=wide, device=centroids.device)
    step = max(1, _SQUARES_BLOCK // max(1, k))
    for start in range(0, d, step):
        stop = min(d, start + step)
        out += centroids[:, start:stop].to(wide, copy=True).square_().sum(1)
    return out


@_device.full_precision
def _distances_by_support(
    rows: SparseRows, centroids: torch.Tensor, c_sq: torch.Tensor
) -> torch.Tensor | None:
    """Squared distances ``(m, k)`` of a few sparse rows to dense
    ``centroids`` ``(k, d)`` (``c_sq`` their :func:`_wide_squared_norms`)
    that do not cancel, whatever the rows' distance from the origin, in the
    widest float: a row equal to a centre is at distance 0.

    On the columns a row stores, the squares of the differences; on the
    others, the centre's squares: ``|c|^2`` less its squares on the row's
    columns. That difference cancels only where the centre lies almost
    within the row's columns (a centre reseeded onto the row): for those
    pairs, told by the difference's rounding bound, the centre's squares
    are summed over the other columns instead (:func:`_squares_off_rows`),
    a sum of non-negative terms. Every distance is then known to
    ``_TRUSTED_PRECISION``: the labels of a minimum are certain. Work: the
    rows' stored values times k, the ``k * d`` of ``c_sq``, and ``d`` per
    such pair (the dense search of the rows densified was ``m * k * d``:
    19 rows against 20 centres of 50,000 features, float32, 14.3 ms against
    3.8 ms, measured in one process).

    None, for the dense search, where the rows store more than
    ``_SUPPORT_MAX_STORED_SHARE`` of their columns, or such pairs are more
    than ``_SUPPORT_MAX_PAIRS_PER_ROW`` per row (rows far from the origin
    and from every centre): 20,000 float32 rows near 1e4, all 100 columns
    stored, k=10: a fit in 3.8 s against 1.6 s."""
    m, k, d = rows.n_rows, int(centroids.shape[0]), rows.n_features
    if rows.values.numel() > _SUPPORT_MAX_STORED_SHARE * m * d:
        return None
    wide = c_sq.dtype
    row = rows.row_of
    at_columns = centroids.index_select(1, rows.col).to(wide)
    differences = rows.values.to(wide) - at_columns
    on_columns = torch.zeros((k, m), dtype=wide, device=rows.device)
    on_columns.index_add_(1, row, differences.square_())
    inside = torch.zeros((k, m), dtype=wide, device=rows.device)
    inside.index_add_(1, row, at_columns.square_())
    outside = inside.neg_().add_(c_sq.unsqueeze(1))
    # |c|^2 and its squares on the columns are each summed with an error of
    # at most (d + 1) u |c|^2 (u the unit roundoff), their difference one u more.
    bound = c_sq * ((2 * d + 4) * torch.finfo(wide).eps / 2)
    distances = outside.clamp_min(0.0).add_(on_columns)
    unsure = (distances < bound.unsqueeze(1) * (2 / _TRUSTED_PRECISION)).nonzero()
    if unsure.shape[0] > _SUPPORT_MAX_PAIRS_PER_ROW * m:
        return None
    if unsure.numel():
        centre, of_row = unsure.unbind(1)
        exact = _squares_off_rows(rows, centroids, of_row, centre, wide)
        distances.index_put_((centre, of_row), exact.add_(on_columns[centre, of_row]))
    return distances.T


def _squares_off_rows(
    rows: SparseRows,
    centroids: torch.Tensor,
    row: torch.Tensor,
    centre: torch.Tensor,
    wide: torch.dtype,
) -> torch.Tensor:
    """``(p,)`` sums, in ``wide``, of the squares of ``centroids[centre]``
    over the columns ``rows[row]`` does not store (``row``, ``centre``
    ``(p,)``), a few pairs at a time: each centre's squares with the row's
    columns zeroed, summed (non-negative terms)."""
    p, d = int(row.numel()), rows.n_features
    out = torch.empty(p, dtype=wide, device=rows.device)
    step = max(1, _SQUARES_BLOCK // max(1, d))
    for start in range(0, p, step):
        stop = min(p, start + step)
        block = centroids.index_select(0, centre[start:stop]).to(wide).square_()
        crow, positions = _gathered_positions(rows.crow, row[start:stop])
        stored = _row_of(crow).mul_(d).add_(rows.col.index_select(0, positions))
        block.view(-1).index_fill_(0, stored, 0.0)
        torch.sum(block, 1, out=out[start:stop])
    return out


def _support_parts(
    rows: SparseRows, index: torch.Tensor, k: int, memory_budget: int | None
) -> tuple[torch.Tensor, ...]:
    """The rows ``index`` in parts for :func:`_distances_by_support` against
    ``k`` centres: its three ``(k, stored values)`` temporaries of a part
    (with one longest row past it) take at most ``memory_budget`` bytes."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    return _stored_parts(rows, index, budget // (3 * 8 * max(1, k)))


def _stored_parts(rows: SparseRows, index: torch.Tensor, per_part: int) -> tuple[torch.Tensor, ...]:
    """The rows ``index`` in parts of ``per_part`` stored values, each part's
    last row ending past them; none when empty."""
    if not index.numel():
        return ()
    per_part = max(1, per_part)
    ends = (rows.crow.index_select(0, index + 1) - rows.crow.index_select(0, index)).cumsum(0)
    part_of = torch.div(ends - 1, per_part, rounding_mode="floor")
    return index.split(torch.unique_consecutive(part_of, return_counts=True)[1].tolist())


def _parts(index: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """``index`` in parts of ``size``; none when empty (``split`` gives one
    empty part, which ran a dense search of no rows every iteration: 10% of
    a TF-IDF fit's time)."""
    return index.split(size) if index.numel() else ()


def _row_blocks(rows: SparseRows, step: int) -> _Blocks:
    """Blocks of ``step`` rows: ``(start, stop, block)``, ``block`` their CSR
    tensor (:meth:`SparseRows.block`), built once for a fit: their stored
    values' bounds are read in one host read, not twice per block and
    iteration, and their indices converted once, not in every product."""
    n = rows.n_rows
    starts = [*range(0, n, step), n]
    bounds = rows.crow[starts].tolist() if n else []
    return [
        (starts[i], starts[i + 1], rows.block(starts[i], starts[i + 1], (bounds[i], bounds[i + 1])))
        for i in range(len(starts) - 1)
    ]


def _scored(
    rows: SparseRows,
    centroids: torch.Tensor,
    blocks: _Blocks,
    weights: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
) -> Nearest:
    """Labels and distances of the expansion, in ``blocks`` of rows
    (unchecked); without blocks, by the fused kernel in one pass over the
    stored values, which also writes the cluster ``totals`` ``(k, d + 1)`` of
    the rows times ``weights`` when given (see :func:`_fused`)."""
    n = rows.n_rows
    labels = torch.empty(n, dtype=torch.int64, device=rows.device)
    distances = torch.empty(n, dtype=rows.dtype, device=rows.device)
    if not blocks and n:
        euclidean = rows.metric == "euclidean"
        _native.sparse_lloyd(
            rows.crow,
            rows.col if rows.narrow_col is None else rows.narrow_col,
            rows.values,
            rows.n_features,
            centroids,
            rows.sq_norms if euclidean else None,
            labels,
            distances,
            weights=weights,
            totals=totals,
        )
        return Nearest(labels, distances)
    c_sq = _squared_norms(centroids) if rows.metric == "euclidean" else None
    for start, stop, block in blocks:
        scores = _block_distances(rows, start, stop, centroids, c_sq, block)
        torch.min(scores, dim=1, out=(distances[start:stop], labels[start:stop]))
    return Nearest(labels, distances)


class _Deferred(NamedTuple):
    """What the iterations of a fit off the CPU know without a host read:
    the blocks of rows, the longest row, and how many suspects (see
    :func:`sparse_nearest`) an iteration labels again (``capacity``)."""

    blocks: _Blocks
    longest: int
    capacity: int
    dense_rows: int


def _nearest_deferred(
    rows: SparseRows, centroids: torch.Tensor, deferred: _Deferred, memory_budget: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sparse_nearest` without a host read: labels, distances and the
    number of suspects ``()``. The first ``deferred.capacity`` suspects are
    labelled again (the others keep the expansion's labels: the caller,
    finding more suspects than that, runs the iterations again with room
    for them)."""
    labels, distances = _scored(rows, centroids, deferred.blocks)
    count = torch.zeros((), dtype=torch.int64, device=rows.device)
    if rows.metric != "euclidean" or not rows.n_rows:
        return labels, distances, count
    suspect = suspects(rows.sq_norms, distances, centred=True)
    count = suspect.sum()
    if not deferred.capacity:
        return labels, distances, count
    n, capacity = rows.n_rows, deferred.capacity
    # The first suspects' indices, in order, padded with n (torch.nonzero_static
    # without its torch >= 2.5 on CUDA); slot `capacity` takes the others.
    position = suspect.cumsum(0) - 1
    slot = torch.where(suspect & (position < capacity), position, capacity)
    found = torch.full((capacity + 1,), n, dtype=torch.int64, device=rows.device)
    found = found.scatter_(0, slot, torch.arange(n, device=rows.device))[:capacity]
    labels_out = torch.cat([labels, labels.new_zeros(1)])
    distances_out = torch.cat([distances, distances.new_zeros(1)])
    for part in found.split(deferred.dense_rows):
        dense = _padded_take(rows, part.clamp(max=n - 1), deferred.longest)
        part_labels, part_distances = _nearest(
            dense, centroids.to(rows.dtype), memory_budget=memory_budget, checked=False
        )
        assert part_distances is not None
        labels_out.index_copy_(0, part, part_labels)
        distances_out.index_copy_(0, part, part_distances.to(distances.dtype))
    return labels_out[:n], distances_out[:n], count


def _padded_take(rows: SparseRows, index: torch.Tensor, longest: int) -> torch.Tensor:
    """:meth:`SparseRows.take` without a host read: each row's stored values
    read as ``longest`` slots (the length of the longest row), the slots
    past a row's end written to a spare entry. ``(m, d)``."""
    m, d = int(index.numel()), rows.n_features
    out = torch.zeros(m * d + 1, dtype=rows.dtype, device=rows.device)
    stored = int(rows.values.numel())
    if longest and stored:
        begins = rows.crow[index]
        lengths = rows.crow[index + 1] - begins
        slots = torch.arange(longest, device=rows.device)
        positions = (begins.unsqueeze(1) + slots).clamp_(max=stored - 1)
        targets = torch.arange(m, device=rows.device).unsqueeze(1) * d + rows.col[positions]
        targets = torch.where(slots < lengths.unsqueeze(1), targets, m * d)
        out.scatter_(0, targets.reshape(-1), rows.values[positions].reshape(-1))
    return out[: m * d].view(m, d)


def sparse_distances(
    rows: SparseRows, centroids: torch.Tensor, memory_budget: int | None = None
) -> torch.Tensor:
    """``(n, k)`` distances of every row to every centroid (as :func:`sparse_nearest`)."""
    n, k = rows.n_rows, int(centroids.shape[0])
    out = torch.empty((n, k), dtype=rows.dtype, device=rows.device)
    c_sq = _squared_norms(centroids) if rows.metric == "euclidean" else None
    step = _block_rows(rows, k, memory_budget)
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = _block_distances(rows, start, stop, centroids, c_sq)
    if rows.metric == "euclidean" and n:
        assert c_sq is not None
        centres = centroids.to(rows.dtype)
        wide_c_sq: list[torch.Tensor] = []  # computed for the first rows measured again

        def exact(part: torch.Tensor) -> torch.Tensor:
            if not wide_c_sq:
                wide_c_sq.append(_wide_squared_norms(centres))
            return _by_support_or(
                rows,
                part,
                centres,
                wide_c_sq[0],
                memory_budget,
                lambda piece: pairwise_distances(rows.take(piece), centres),
            )

        _measure_again(rows, out, c_sq, exact, memory_budget, lambda: centroids)
    return out


def _measure_again(
    rows: SparseRows,
    out: torch.Tensor,
    c_sq: torch.Tensor,
    exact: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int | None,
    centres: Callable[[], torch.Tensor] | None = None,
) -> None:
    """The rows of euclidean distances ``out`` ``(n, k)`` from the expansion
    that its rounding may make inexact (``D * factor < (|x| + |c|)^2``,
    bounding ``|c|`` by the largest of the centres' ``c_sq``), measured again
    in place by ``exact``, a function of row indices ``(m,)`` giving their
    ``(m, k)`` distances (from differences), in blocks of rows. Float32
    rows are first scored again in float64 (:func:`_widened_again`) where
    ``centres`` gives the dense ``(k, d)`` centres (made only then)."""
    k = int(c_sq.shape[0])
    again = _untrusted(rows.sq_norms, out, c_sq).nonzero().squeeze(1)
    if (
        centres is not None
        and again.numel() >= _WIDE_MIN_SUSPECTS
        and out.dtype == torch.float32
        and _device.on_host(rows.device)
    ):
        again = _widened_again(rows, out, centres(), again, memory_budget)
    for part in _parts(again, _block_rows(rows, rows.n_features + k, memory_budget)):
        out.index_copy_(0, part, exact(part).to(out.dtype))


def _untrusted(x_sq: torch.Tensor, out: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """``(m,)`` bool: the rows of distances ``out`` ``(m, k)`` that the
    expansion's rounding may make inexact, ``D * factor < (|x| + |c|)^2``
    (``x_sq`` the rows' squared norms, ``|c|`` bounded by the largest of the
    centres' ``c_sq``)."""
    factor = trust_factor(out.dtype, out.device)
    reach = x_sq.to(c_sq.dtype).sqrt() + c_sq.amax().sqrt()
    return out.amin(1) * factor < reach.square()


def _widened_again(
    rows: SparseRows,
    out: torch.Tensor,
    centres: torch.Tensor,
    index: torch.Tensor,
    memory_budget: int | None,
) -> torch.Tensor:
    """The rows ``index`` ``(m,)`` of float32 distances ``out`` ``(n, k)``
    that :func:`_measure_again` would measure, from the expansion in
    float64 (their values, squared norms and ``centres`` ``(k, d)`` widened
    exactly), in place; returns those it cannot trust there either. As
    :func:`_rescored_wide` labels, for every distance (the data there:
    ``transform`` 0.09 s against 0.17-0.18 s, scikit-learn's 0.13 s; the
    default fit, most of it k-means++'s distances to its candidates,
    0.48-0.51 s against 1.2 s, scikit-learn's 1.9 s). In parts of
    ``memory_budget``."""
    wide_centres = centres.to(torch.float64)
    c_sq = _squared_norms(wide_centres)
    k = int(centres.shape[0])
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    still = []
    # Parts of (m, k) float64 distances (and their scores) within the budget.
    for piece in _parts(index, max(1, budget // (16 * max(1, k)))):
        for part in _stored_parts(rows, piece, budget // _WIDENED_BYTES):
            picked = _widened(rows, part)
            distances = _block_distances(picked, 0, picked.n_rows, wide_centres, c_sq)
            doubtful = _untrusted(picked.sq_norms, distances, c_sq)
            trusted = ~doubtful
            out.index_copy_(0, part[trusted], distances[trusted].to(out.dtype))
            still.append(part[doubtful])
    return torch.cat(still) if still else index


def _distances_between(a: SparseRows, b: SparseRows) -> torch.Tensor:
    """Squared distances ``(m_a, m_b)`` between two sets of sparse rows from
    their differences, in the widest float: on each column either stores,
    the square of the difference. A sum of non-negative terms cancels
    nothing, whatever the rows' distance from the origin: a row equal to
    another is at distance 0. Work and memory: each set's stored values
    times the other's rows (each set densified over the columns they store,
    not all: rows of 50,000 features were fresh pages in every call)."""
    wide = _device.widest_float(a.device)
    columns, compact = torch.unique(torch.cat([a.col, b.col]), return_inverse=True)
    a_col, b_col = compact[: a.col.numel()], compact[a.col.numel() :]
    a_row, b_row = a.row_of, b.row_of

    def densified(rows: SparseRows, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((rows.n_rows, columns.numel()), dtype=wide, device=rows.device)
        return out.index_put_((row, col), rows.values.to(wide))

    # a's nonzero values against b's in their columns; then b's values in
    # the columns where a holds 0 (stored or not), so that no column counts twice.
    nonzero = (a.values != 0).nonzero().squeeze(1)
    differences = a.values.index_select(0, nonzero).to(wide)
    differences = differences - densified(b, b_row, b_col)[:, a_col.index_select(0, nonzero)]
    total = torch.zeros((b.n_rows, a.n_rows), dtype=wide, device=a.device)
    total.index_add_(1, a_row.index_select(0, nonzero), differences.square_())
    outside = (densified(a, a_row, a_col)[:, b_col] == 0).to(wide)
    return total.T.index_add_(1, b_row, outside.mul_(b.values.to(wide).square()))


# Elements of rows densified over the columns they and a few others store
# up to which _distances_to_few measures them from the differences.
_BETWEEN_MAX_ELEMENTS = 1 << 17


def _distances_to_few(a: SparseRows, b: SparseRows, memory_budget: int | None) -> torch.Tensor:
    """:func:`_distances_between` ``(m_a, m_b)`` of many rows ``a`` and a few
    ``b`` (k-means++ candidates), to the trusted precision: by
    :func:`_distances_by_support` against ``b`` densified over the columns
    either stores, in parts of ``memory_budget``, where it takes them; else
    from the differences. Each row of ``a`` is then its stored values
    times ``m_b`` (from the differences it was also ``a`` densified over
    those columns: float32 rows far from the origin, all of them measured
    again, 20,000 x 1,001 at 1% stored, k=8: k-means++ 0.6 s of a 0.7 s fit,
    now 0.08 s; scikit-learn's whole fit 0.05 s). Where ``a`` densified so
    would take at most ``_BETWEEN_MAX_ELEMENTS`` (a round's candidates' own
    rows, the usual suspects), from the differences: the dozens of small
    ops above cost more (0.32 ms against 0.15-0.25 ms a call; 3,072 x
    50,000 at 0.1% stored, k=100: k-means++ 0.09-0.12 s against 0.07-0.08 s)."""
    if a.n_rows * (a.values.numel() + b.values.numel()) <= _BETWEEN_MAX_ELEMENTS:
        return _distances_between(a, b)
    columns, compact = torch.unique(torch.cat([a.col, b.col]), return_inverse=True)
    width = int(columns.numel())
    a_compact = a._replace(col=compact[: a.col.numel()], n_features=width, narrow_col=None)
    centres = torch.zeros((b.n_rows, width), dtype=b.dtype, device=b.device)
    centres.index_put_((b.row_of, compact[a.col.numel() :]), b.values)
    return _by_support_or(
        a_compact,
        torch.arange(a.n_rows, device=a.device),
        centres,
        _wide_squared_norms(centres),
        memory_budget,
        lambda piece: _distances_between(a.subset(piece), b),
    )


def _by_support_or(
    rows: SparseRows,
    index: torch.Tensor,
    centres: torch.Tensor,
    c_sq: torch.Tensor,
    memory_budget: int | None,
    otherwise: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Squared distances ``(m, k)``, in the widest float, of the rows
    ``index`` ``(m,)`` to dense ``centres`` (``c_sq`` their
    :func:`_wide_squared_norms`): by :func:`_distances_by_support`, in its
    parts (:func:`_support_parts`), each part it leaves measured by
    ``otherwise`` (a function of its row indices)."""
    k = int(centres.shape[0])
    pieces = []
    for piece in _support_parts(rows, index, k, memory_budget):
        found = _distances_by_support(rows.subset(piece), centres, c_sq)
        pieces.append((otherwise(piece) if found is None else found).to(c_sq.dtype))
    if not pieces:
        return torch.zeros((int(index.numel()), k), dtype=c_sq.dtype, device=rows.device)
    return torch.cat(pieces)


def _to_rows(
    rows: SparseRows, memory_budget: int | None, rounds: int, trials: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of row indices ``(m,)``: the ``(m, n)`` distances of those
    rows to every row (as :func:`sparse_distances` of them densified), for
    ``rounds`` calls of at most ``trials`` rows each (k-means++).

    The scores are a sparse-dense product of all the rows with those rows
    densified, which reads every stored value; or, on the CPU where the
    rows' transpose fits ``memory_budget`` and the calls are many, a
    sparse-sparse product of those rows with the transpose, built once
    (scikit-learn's ``X[candidates] @ X.T``, which transposes in every call),
    whose work is each of their stored values times its column's rows: the
    ``trials * density`` of the stored values (:func:`_met_share`, the
    density where columns are alike), at about twice the cost of each.
    The transpose costs about ``_TRANSPOSE_ROUNDS`` calls of the product.
    Greedy k-means++, float64, 2 threads, time of the product and of the
    transpose over scikit-learn's: 3,072 rows of 50,000 features at
    0.1% stored, k=2-6: 0.9-1.0x and 0.9-1.4x, k=20-100: 1.0-1.6x and
    0.7-1.1x; 20,000 x 5,000 at 1%, k=2: 1.0x and 2.6x, k=10-100:
    0.35-0.43x and 0.26-0.34x; 100,000 x 20,000 at 0.1%, k=30-100:
    0.36-0.39x and 0.14-0.22x; 20,000 x 1,000 at 10%: 0.26-0.55x and
    0.34-2.0x (the transpose is never chosen there). Rows
    measured again (see :func:`_measure_again`) are measured from their
    stored values (:func:`_distances_to_few`).
    """
    nnz, n, d = int(rows.values.numel()), rows.n_rows, rows.n_features
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    itemsize = torch.finfo(rows.dtype).bits // 8
    transposed = None
    index_dtype = _index_dtype(max(nnz, n, d))
    if (
        _device.on_host(rows.device)
        and rounds * (1.0 - 2.0 * trials * _met_share(rows)) >= _TRANSPOSE_ROUNDS
        # The transpose's values and indices, and its sort's permutation.
        and nnz * (itemsize + 16) <= budget
    ):
        transposed = _transposed(rows, rows.dtype, index_dtype)
    # The product's dense operand, the rows as (d, m) columns (a transposed
    # view was copied in every product: 50,000 features, 0.27 of 0.4 ms), in
    # one buffer whose written entries are zeroed again after each call
    # (fresh pages in every call took 0.2 ms: 50,000 features, 6 rows), and
    # the blocks of rows built once (their bounds read, their indices
    # converted: see _row_blocks).
    if transposed is None:
        buffer = torch.zeros(d * trials, dtype=rows.dtype, device=rows.device)
        blocks = _row_blocks(rows, _block_rows(rows, trials, memory_budget))

    @_device.full_precision
    def distances(index: torch.Tensor) -> torch.Tensor:
        picked = rows.subset(index)
        m = int(index.numel())
        if transposed is None:
            assert m <= trials
            written = picked.col * m + picked.row_of
            columns = buffer[: d * m].index_put_((written,), picked.values).view(d, m)
            out = torch.empty((m, n), dtype=rows.dtype, device=rows.device)
            for start, stop, block in blocks:
                out[:, start:stop] = torch.sparse.mm(block, columns).T
            buffer.index_fill_(0, written, 0.0)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
                block = torch.sparse_csr_tensor(
                    picked.crow.to(index_dtype),
                    picked.col.to(index_dtype),
                    picked.values,
                    size=(m, d),
                    device=rows.device,
                )
            out = torch.sparse.mm(block, transposed).to_dense()
        out = _from_scores(out, rows.metric, picked.sq_norms[:, None], rows.sq_norms)
        if rows.metric == "euclidean":
            _measure_again(
                rows,
                out.T,
                picked.sq_norms,
                lambda part: _distances_to_few(rows.subset(part), picked, memory_budget),
                memory_budget,
                lambda: picked.take(torch.arange(m, device=rows.device)),
            )
        return out

    return distances


def _met_share(rows: SparseRows) -> float:
    """The mean share of the rows that a stored value of a random row meets
    in the rows' transpose (its column's stored values over ``n``): the
    density where columns are stored alike, more where some are stored in
    most rows: a column stored in every row made each sparse-sparse
    product dense, and frequent words make them denser (Zipf TF-IDF,
    20,000 x 5,000, k=20: k-means++ by the product 0.030 s, by the
    transpose the mean density chose 0.071-0.086 s)."""
    n, nnz = rows.n_rows, int(rows.values.numel())
    counts = torch.bincount(rows.col, minlength=rows.n_features).to(torch.float64)
    return float(counts.square().sum()) / max(1, n * nnz)


# Calls of _to_rows's sparse-dense product that its transpose costs (see there).
_TRANSPOSE_ROUNDS = 16


def sparse_kmeans_plusplus(
    rows: SparseRows,
    n_clusters: int,
    *,
    n_problems: int = 1,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Greedy k-means++ on sparse rows: the indices ``(n_problems, n_clusters)``
    of the seeds of ``n_problems`` runs.

    The draws of the dense seeding
    (:func:`~torchkmeans.functional.init.kmeans_plusplus` with the same
    ``n_problems``: one for every run, then ``2 + log(k)`` candidates for
    every run per centre), with the distances of the candidates to all rows
    from sparse products, one run at a time. Greedy k-means++ is sequential:
    the first k seeds of a run are a seeding for k (:func:`~torchkmeans.elbow`).

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 0, 1, 1]),
    ...                    torch.tensor([1.0, 1.5, 4.0, 5.0]), 2,
    ...                    device=torch.device("cpu"), dtype=torch.float64)
    >>> index = sparse_kmeans_plusplus(rows, 2, n_problems=3,
    ...                                generator=torch.Generator().manual_seed(0))
    >>> index.shape, [sorted(set(i // 2 for i in run)) for run in index.tolist()]
    (torch.Size([3, 2]), [[0, 1], [0, 1], [0, 1]])
    """
    n, device = rows.n_rows, rows.device
    weights = sample_weight
    acc = _device.widest_float(device)
    trials = 2 + int(math.log(n_clusters))
    draws = torch.rand((n_problems, 1), generator=generator, dtype=acc, device=device)
    chosen: list[list[int]] = []
    closest: list[torch.Tensor] = []
    weighted: list[torch.Tensor] = []
    potential: list[torch.Tensor] = []
    cumulative = None if weights is None else weights.cumsum(0, dtype=acc)
    to_rows = _to_rows(rows, memory_budget, n_problems * n_clusters, trials)
    for draw in draws:
        if cumulative is None:
            first = min(int(draw * n), n - 1)
        else:
            first = int(_sample_from_cumulative(cumulative, draw * cumulative[-1]))
        chosen.append([first])
        to_first = to_rows(torch.tensor([first], device=device))[0]
        closest.append(to_first)
        weighted.append(to_first if weights is None else to_first * weights)
        potential.append(weighted[-1].sum(dtype=acc))
    for _ in range(1, n_clusters):
        draws = torch.rand((n_problems, trials), generator=generator, dtype=acc, device=device)
        for run in range(n_problems):
            cumsum = weighted[run].cumsum(0, dtype=acc)
            candidates = _sample_from_cumulative(cumsum, draws[run].mul_(potential[run]))
            best, closest[run], candidate_potential = greedy_choice(
                to_rows(candidates), closest[run], weights, acc
            )
            potential[run] = candidate_potential[best]
            weighted[run] = closest[run] if weights is None else closest[run] * weights
            chosen[run].append(int(candidates[best]))
    return torch.tensor(chosen, dtype=torch.int64, device=device)


def _kmeans_plusplus(
    rows: SparseRows,
    n_clusters: int,
    weights: torch.Tensor | None,
    generator: torch.Generator | None,
    memory_budget: int | None,
) -> torch.Tensor:
    """Greedy k-means++ indices ``(k,)`` of one run (:func:`sparse_kmeans_plusplus`)."""
    return sparse_kmeans_plusplus(
        rows, n_clusters, sample_weight=weights, generator=generator, memory_budget=memory_budget
    )[0]


def _initial_centroids(
    rows: SparseRows,
    init: Any,
    n_clusters: int,
    weights: torch.Tensor | None,
    generator: torch.Generator | None,
    memory_budget: int | None,
) -> torch.Tensor:
    if isinstance(init, str):
        if init == "k-means++":
            index = _kmeans_plusplus(rows, n_clusters, weights, generator, memory_budget)
        elif init == "random":
            # Only the indices are drawn: one column stands for the rows.
            stand_in = torch.zeros((rows.n_rows, 1), dtype=rows.dtype, device=rows.device)
            _, index = random_init(stand_in, n_clusters, sample_weight=weights, generator=generator)
        else:
            raise ValueError(
                "Expected init to be 'k-means++', 'random', an array of shape "
                f"(n_clusters, n_features) or a callable, got {init!r}."
            )
        return rows.take(index.reshape(-1))
    given = init.to(device=rows.device, dtype=rows.dtype)
    if tuple(given.shape) != (n_clusters, rows.n_features):
        raise ValueError(
            f"Expected init to be of shape ({n_clusters}, {rows.n_features}), "
            f"got shape {tuple(given.shape)}."
        )
    if not bool(torch.isfinite(given).all()):
        raise ValueError("Input init contains NaN or infinity.")
    return unit_rows(given) if rows.metric == "cosine" else given.clone()


def sparse_weights_without_rows_of_zeros(
    rows: SparseRows, weights: torch.Tensor | None, n_clusters: int
) -> torch.Tensor | None:
    """:func:`~torchkmeans.functional.distances.weights_without_rows_of_zeros`
    of sparse rows, told apart by their squared norms (no row densified)."""
    direction = (rows.sq_norms > 0).to(rows.dtype).unsqueeze(-1)
    return weights_without_rows_of_zeros(direction, weights, n_clusters)


# The most clusters for which the fused kernel labels rows on the CPU and
# sums them (_native.sparse_lloyd); the sparse products otherwise. The
# kernel reads the stored values once where the products read them twice,
# and its dots alone run at the product's speed or faster (1% stored
# TF-IDF, 20,000 x 5,000, one thread: k=2 0.7 ms against 0.6 ms, k=9 1.5
# against 1.5, k=20 2.2 against 3.1, k=50 9.5 against 17): fits from the
# same init took 0.4-0.6 of the products' time at k=2-300 (d=5,000 and
# d=100,000 at 0.1% stored), so it takes every k; a test sets this to 0.
_FUSED_MAX_CLUSTERS = 1 << 30


def _fused(rows: SparseRows, k: int, memory_budget: int | None, *, totals: bool) -> bool:
    """Whether the rows' labels (and with ``totals`` their cluster sums) are
    taken by the fused CSR kernel, one pass over the stored values
    (:func:`~torchkmeans.functional._native.sparse_lloyd`): on the CPU where
    it is built, for at most ``_FUSED_MAX_CLUSTERS`` clusters, and for sums
    only where a thread's ``(k, d + 1)`` float64 totals fit ``memory_budget``.
    A kernel built without OpenMP runs on one thread: only where PyTorch's
    products would too."""
    if not _device.on_host(rows.device) or rows.dtype not in (torch.float32, torch.float64):
        return False
    if not rows.n_rows or k > _FUSED_MAX_CLUSTERS:
        return False
    if totals:
        budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
        if torch.get_num_threads() * k * (rows.n_features + 1) * 8 > budget:
            return False
    return _native.available() and (torch.get_num_threads() == 1 or _native.parallel())


# The most clusters whose sums are a product (see sparse_kmeans): its cost
# grows with k, the scatter's does not (the same matrix: equal near k=12).
_PRODUCT_SUMS_UP_TO = 10


def _transposed(
    rows: SparseRows, dtype: torch.dtype, index: torch.dtype | None = None
) -> torch.Tensor:
    """The rows' transpose ``(d, n)`` as a CSR tensor of values in ``dtype``,
    each column's rows in increasing order (a stable sort of the columns),
    its indices of ``index`` (by default the narrowest that holds them)."""
    n, d = rows.n_rows, rows.n_features
    # Narrow columns sort faster (a million: 12 ms as int64, 6 as int32, 3.5
    # as int16), and index_select gathers in a third of the time of indexing.
    narrow = torch.int16 if d <= 2**15 else _index_dtype(d)
    order = torch.sort(rows.col.to(narrow), stable=True).indices
    if index is None:
        index = _index_dtype(max(int(rows.col.numel()), n))
    crow = torch.zeros(d + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows.col, minlength=d), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return torch.sparse_csr_tensor(
            crow.to(index),
            rows.row_of.index_select(0, order).to(index),
            rows.values.index_select(0, order).to(dtype),
            size=(d, n),
            device=rows.device,
        )


def _mean_variance(rows: SparseRows) -> torch.Tensor:
    """Mean over the features of their variance over the rows (unweighted), as
    scikit-learn's tolerance of sparse data."""
    acc = _device.widest_float(rows.device)
    n, d = rows.n_rows, rows.n_features
    values = rows.values.to(acc)
    sums = torch.zeros(d, dtype=acc, device=rows.device).index_add_(0, rows.col, values)
    squares = torch.zeros(d, dtype=acc, device=rows.device).index_add_(0, rows.col, values.square())
    means = sums / n
    return (squares / n - means.square()).clamp_min(0.0).mean()


def _update(
    rows: SparseRows,
    weighted_values: torch.Tensor | None,
    weights: torch.Tensor,
    labels: torch.Tensor,
    distances: torch.Tensor,
    centroids: torch.Tensor,
    deferred: _Deferred | None,
    transposed: torch.Tensor | None = None,
    fused_totals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New centroids from the labels (empty clusters reseeded), and whether a
    reseeded cluster took a point off its centroid ``()``. With ``deferred``
    (off the CPU) the reseeding runs every time, with ``torch.where``, and
    reads nothing on the host; otherwise only when a cluster is empty. The
    sums are ``fused_totals`` ``(k, d + 1)`` (sums and weights) when given, from
    the fused kernel (see :func:`_fused`), one product of ``transposed``
    (:func:`_transposed`) when given, else one scatter of ``weighted_values``
    (the stored values times their row's weight when None)."""
    k, d = centroids.shape
    if fused_totals is not None:
        totals = fused_totals.unsqueeze(0)
    else:
        if transposed is None:
            if weighted_values is None:
                weighted_values = rows.values.to(weights.dtype) * weights[rows.row_of]
            sums = rows.sums(labels, weighted_values, k)
        else:
            one_hot = weights.new_zeros((rows.n_rows, k)).scatter_(
                1, labels.unsqueeze(1), weights.unsqueeze(1)
            )
            sums = torch.sparse.mm(transposed, one_hot).T
        # [sums | weights], the layout relocate_empty_clusters works on.
        totals = torch.cat([sums.unsqueeze(0), sums.new_zeros((1, k, 1))], dim=-1)
        totals[0, :, d].index_add_(0, labels, weights)
    moved = torch.zeros((), dtype=torch.bool, device=rows.device)
    if deferred is not None or bool((totals[0, :, d] <= 0).any()):
        n = rows.n_rows
        candidates = min(k, n)
        if _device.on_host(distances.device):
            # Ties between equally far points go to the first, as in the dense loop.
            order = distances.sort(descending=True, stable=True).indices[:candidates]
        else:
            order = distances.topk(candidates, sorted=True).indices
        if deferred is None:
            points = rows.take(order)
        else:
            points = _padded_take(rows, order, deferred.longest)
        x3 = torch.cat([points, points.new_ones((candidates, 1))], dim=1).unsqueeze(0)
        moved = relocate_empty_clusters(
            totals,
            x3,
            weights[order].unsqueeze(0),
            labels[order].unsqueeze(0),
            distances[order].unsqueeze(0),
            n_rows=n,
        )[0]
    new = centroids_from_sums(
        totals[0, :, :d], totals[0, :, d], centroids, metric=rows.metric, empty="heaviest"
    )
    return new.to(centroids.dtype), moved


def _single(
    rows: SparseRows,
    centroids: torch.Tensor,
    weights: torch.Tensor,
    weighted_values: torch.Tensor | None,
    max_iter: int,
    tol_abs: float,
    memory_budget: int | None,
    check_every: int,
    transposed: torch.Tensor | None = None,
) -> KMeansResult:
    """Lloyd's iterations of one run from ``centroids``, scikit-learn's loop:
    stop when the labels repeat or the squared centre shift is at most ``tol_abs``.

    As in the dense loop (:func:`~torchkmeans.functional.lloyd.run_lloyd`),
    the run keeps its state on the device: once converged, its centroids are
    frozen with ``torch.where`` and the host reads whether it has, every
    ``check_every`` iterations; the result is that of a check after every
    one. Off the CPU nothing else is read in the loop: the rows that the
    expansion cannot label (see :func:`sparse_nearest`) are labelled again
    up to a capacity, and the iterations since the last read run again,
    with room for all of them, when there were more (they are few: rows
    near their centre far from the origin).
    """
    acc = weights.dtype
    device = rows.device
    k, d = int(centroids.shape[0]), rows.n_features
    fused = _fused(rows, k, memory_budget, totals=True)
    blocks = [] if fused else _row_blocks(rows, _block_rows(rows, k, memory_budget))
    if fused and d < 2**31 and rows.narrow_col is None:
        # The kernel reads int32 columns, converted once for the run: every
        # pass reads 12 bytes per stored float64 value instead of 16 (1%
        # stored TF-IDF, 20,000 x 5,000, k=2: a pass is mostly that read).
        rows = rows._replace(narrow_col=rows.col.to(torch.int32))
    deferred = None
    if not _device.on_host(device):
        longest = int(rows.crow.diff().amax()) if rows.n_rows else 0
        dense_rows = _block_rows(rows, rows.n_features, memory_budget)
        deferred = _Deferred(blocks, longest, 0, dense_rows)
    history = torch.full((max_iter,), math.nan, dtype=acc, device=device)
    done = torch.zeros((), dtype=torch.bool, device=device)
    n_iter = torch.zeros((), dtype=torch.int64, device=device)
    most = torch.zeros((), dtype=torch.int64, device=device)
    previous: torch.Tensor | None = None
    # The state at the last host read, to run the iterations since again.
    saved = (0, centroids, previous, done, n_iter)
    # The centroids the last labels were checked against (off the CPU: none,
    # the deferred search may leave suspects unchecked).
    scored: torch.Tensor | None = None
    i = 0
    while i < max_iter:
        totals = None
        scored = centroids if deferred is None else None
        if fused:
            totals = torch.empty((k, d + 1), dtype=torch.float64, device=device)  # zeroed by it
            labels, distances = _checked_nearest(
                rows, centroids, blocks, memory_budget, weights, totals
            )
            if rows.n_rows and bool(totals[0, 0].isnan()):
                totals = None  # a row labelled again: sums from the labels
        elif deferred is None:
            labels, distances = _checked_nearest(rows, centroids, blocks, memory_budget)
        else:
            labels, distances, count = _nearest_deferred(rows, centroids, deferred, memory_budget)
            most = torch.maximum(most, count)
        running = ~done
        history[i] = torch.where(running, (distances.to(acc) * weights).sum(), history[i])
        new, moved = _update(
            rows,
            weighted_values,
            weights,
            labels,
            distances,
            centroids,
            deferred,
            transposed,
            totals,
        )
        converged = (new - centroids).to(acc).square().sum() <= tol_abs
        if previous is not None:
            converged |= ~moved & (labels == previous).all()
        n_iter = n_iter + running
        centroids = torch.where(running, new, centroids)
        done = done | converged
        previous = labels
        i += 1
        if i % check_every and i < max_iter:
            continue
        if deferred is not None:
            finished, needed = torch.stack([done.to(torch.int64), most]).tolist()
            if needed > deferred.capacity:
                # More suspects than were labelled again: the same
                # iterations, with room for every one.
                deferred = deferred._replace(capacity=1 << (needed - 1).bit_length())
                i, centroids, previous, done, n_iter = saved
                history[i:] = math.nan
                continue
        else:
            finished = bool(done)
        if finished:
            break
        saved = (i, centroids, previous, done, n_iter)
    # The labels of the returned centres (their nearest), and their inertia:
    # those of the last iteration where its centres are the returned ones (a
    # run that stopped with its labels unchanged: the same labels gave the
    # same sums), as scikit-learn skips its last assignment then (a pass
    # over the stored values, a third of a fit of 2 iterations).
    if scored is None or not torch.equal(scored, centroids):
        labels, distances = _checked_nearest(rows, centroids, blocks, memory_budget)
    inertia = (distances.to(acc) * weights).sum()
    return KMeansResult(centroids, labels, inertia, n_iter, history)


def sparse_kmeans(
    rows: SparseRows,
    n_clusters: int,
    *,
    init: Any = "k-means++",
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | None = None,
    check_every: int | None = None,
) -> KMeansResult:
    """K-Means on sparse rows: ``n_init`` runs of Lloyd's iterations, the lowest inertia wins.

    Euclidean rows far from the origin in the columns every row stores are
    fitted shifted by those columns' means (the rows store the same
    columns), the centres shifted back and the labels checked against them
    (see :func:`_frame_shift`).

    Parameters
    ----------
    rows : SparseRows
        From :func:`sparse_rows` (unit rows for ``metric="cosine"``).
    n_clusters : int
    init : {"k-means++", "random"} or Tensor
        Seeding, or ``(n_clusters, n_features)`` initial centroids of every
        run, or ``(n_init, n_clusters, n_features)``: those of each run.
    n_init, max_iter : int
    tol : float
        Relative to the mean feature variance of the rows.
    sample_weight : Tensor, optional
        ``(n,)`` non-negative weights (checked by the caller).
    generator : torch.Generator, optional
    memory_budget : int, optional
        Bytes a block of scores may take.
    check_every : int, optional
        Iterations between host reads of the convergence test (default: 1 on
        the CPU, where a read costs nothing, 10 elsewhere); the result is the
        same.

    Returns
    -------
    KMeansResult
        Centroids ``(k, d)`` dense; the inertia is the weighted sum of the
        rows' distances to their centroid (cosine rows of zeros count 1).

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 0, 1, 1]),
    ...                    torch.tensor([1.0, 1.5, 4.0, 5.0]), 2,
    ...                    device=torch.device("cpu"), dtype=torch.float64)
    >>> result = sparse_kmeans(rows, 2, init=torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    >>> result.centroids.tolist(), result.labels.tolist(), float(result.inertia)
    ([[1.25, 0.0], [0.0, 4.5]], [0, 0, 1, 1], 0.625)
    """
    # Values whose squared distances underflow or overflow (float32 near
    # 1e-25 or 1e19) are fitted scaled by a power of two, exactly, as dense
    # data is; the centres and inertia are scaled back.
    exponent = sparse_scale_exponent(rows, init if isinstance(init, torch.Tensor) else None)
    if exponent:
        rows = sparse_scaled(rows, exponent)
        if isinstance(init, torch.Tensor):
            init = times_power_of_two(init, exponent)
    # Rows far from the origin in columns they all store are fitted shifted
    # by those columns' means (see _frame_shift), the centres shifted back.
    unshifted, shift, exact = rows, _frame_shift(rows), False
    if shift is not None:
        rows, exact = _shifted(rows, shift)
        if isinstance(init, torch.Tensor) and init.shape[-1:] == shift.shape:
            init = init.to(rows.dtype) - shift  # others are refused as they are
    acc = _device.widest_float(rows.device)
    n = rows.n_rows
    weights = (
        torch.ones(n, dtype=acc, device=rows.device)
        if sample_weight is None
        else sample_weight.to(device=rows.device, dtype=acc)
    )
    ignored = torch.zeros((), dtype=acc, device=rows.device)
    seed_weights = sample_weight
    if rows.metric == "cosine":
        # Rows of zeros have no direction: they neither seed nor move a centre.
        kept = sparse_weights_without_rows_of_zeros(rows, sample_weight, n_clusters)
        if kept is not None:
            kept = kept.to(acc)
            ignored = (weights - kept).sum()
            weights = seed_weights = kept
    # For few clusters the sums are one product of the transposed rows and
    # the (n, k) weighted one-hot labels, k multiply-adds per stored value
    # against a scatter's index arithmetic (1% stored TF-IDF, 20,000 x 5,000,
    # k=2: 0.6 ms an iteration against 2.3 ms), and the same sums: each in
    # the order of the rows, as the scatter adds them. Only where the one-hot
    # labels fit memory_budget: they are made whole.
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    one_hot_bytes = rows.n_rows * n_clusters * torch.finfo(acc).bits // 8
    product_sums = n_clusters <= _PRODUCT_SUMS_UP_TO and one_hot_bytes <= budget
    # The fused kernel sums the stored values as it labels them: neither.
    fused = _fused(rows, n_clusters, memory_budget, totals=True)
    if not fused:
        rows = rows.with_row_of()  # read by the sums of every iteration
    transposed = _transposed(rows, acc) if product_sums and not fused else None
    # The product weighs the one-hot labels: no weighted copy of the values.
    weighted_values = (
        None if transposed is not None or fused else rows.values.to(acc) * weights[rows.row_of]
    )
    tol_abs = float(_mean_variance(rows)) * tol
    if check_every is None:
        check_every = 1 if _device.on_host(rows.device) else 10
    v.check_positive_int(check_every, "check_every")
    if isinstance(init, torch.Tensor) and init.ndim == 3 and init.shape[0] != n_init:
        raise ValueError(
            f"Expected init of {init.ndim} dimensions to hold the centroids of "
            f"n_init={n_init} runs, got shape {tuple(init.shape)}."
        )
    best: KMeansResult | None = None
    for run in range(n_init):
        start = init[run] if isinstance(init, torch.Tensor) and init.ndim == 3 else init
        centroids = _initial_centroids(
            rows, start, n_clusters, seed_weights, generator, memory_budget
        )
        result = _single(
            rows,
            centroids,
            weights,
            weighted_values,
            max_iter,
            tol_abs,
            memory_budget,
            check_every,
            transposed,
        )
        if best is None or float(result.inertia) < float(best.inertia):
            best = result
    assert best is not None
    if shift is not None:
        best = _unshifted(best, unshifted, rows, exact, shift, weights, memory_budget)
    return best._replace(
        centroids=times_power_of_two(best.centroids, -exponent),
        inertia=times_power_of_two(best.inertia, -2 * exponent) + ignored,
        inertia_history=times_power_of_two(best.inertia_history, -2 * exponent) + ignored,
    )


def _kmeans_of_sparse_tensor(
    x: torch.Tensor,
    n_clusters: int,
    *,
    init: Any,
    n_init: int | str,
    max_iter: int,
    tol: float,
    metric: str,
    sample_weight: torch.Tensor | None,
    generator: torch.Generator | None,
    memory_budget: int | None,
    check_every: int | None,
) -> KMeansResult:
    """:func:`~torchkmeans.functional.kmeans` of a torch sparse tensor ``x``
    ``(n, d)`` (COO, CSR, CSC...): :func:`sparse_kmeans` on its stored values,
    on its device, computed in its dtype (half precision in float32)."""
    if x.ndim != 2 or x.dense_dim() != 0:
        raise ValueError(
            "Expected a sparse x to be 2-D (n, d) without dense dimensions, got shape "
            f"{tuple(x.shape)} with {x.dense_dim()} dense dimension(s)."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"Expected x to be a floating-point tensor, got dtype {x.dtype} "
            "(x.float() converts it)."
        )
    n, d = (int(size) for size in x.shape)
    if d == 0:
        raise ValueError(f"Expected x to have at least one feature, got shape {(n, d)}.")
    n_clusters = v.check_n_clusters(n_clusters)
    if n < n_clusters:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")
    v.check_metric(metric)
    if callable(init) and not isinstance(init, (str, torch.Tensor)):
        raise TypeError(
            "Expected init to be 'k-means++', 'random' or a tensor when x is sparse, "
            "got a callable."
        )
    if n_init == "auto":
        n_init = 10 if isinstance(init, str) and init == "random" else 1
    if isinstance(n_init, bool) or not isinstance(n_init, numbers.Integral) or n_init < 1:
        raise ValueError(f"n_init={n_init!r} should be 'auto' or an int >= 1.")
    n_init = int(n_init)
    if isinstance(init, torch.Tensor):
        # Given starts: one run, or one restart per set of centroids, as for dense x.
        n_init = max(1, int(init.shape[0])) if init.ndim == 3 else 1
    v.check_positive_int(max_iter, "max_iter")
    v.check_nonnegative_float(tol, "tol")
    v.check_memory_budget(memory_budget)
    tensor = x.detach()
    if tensor.layout == torch.sparse_coo:
        tensor = tensor.coalesce()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        tensor = tensor.to_sparse_csr()
    values = tensor.values()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("Input x contains NaN or infinity.")
    compute = compute_dtype(values.dtype)
    weights = v.check_weight_tensor(sample_weight, n, dtype=compute)
    rows = sparse_rows(
        tensor.crow_indices(),
        tensor.col_indices(),
        values,
        d,
        device=values.device,
        dtype=compute,
        metric=metric,
    )
    result = sparse_kmeans(
        rows,
        n_clusters,
        init=init,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        sample_weight=None if weights is None else weights.reshape(n),
        generator=generator,
        memory_budget=memory_budget,
        check_every=check_every,
    )
    if not v.all_finite(result.inertia):
        # Finite rows whose squared distances overflow: every label is a tie.
        raise v.distances_overflow("x", compute)
    return result


def sparse_minibatch_step(
    batch: SparseRows,
    centroids: torch.Tensor,
    weight_sums: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
    random_reassign: bool | torch.Tensor = False,
    reassignment_ratio: float = 0.01,
    generator: torch.Generator | None = None,
    memory_budget: int | None = None,
) -> MiniBatchStep:
    """One mini-batch step on sparse rows: the rule of
    :func:`~torchkmeans.functional.minibatch.minibatch_step`, with the
    assignment from sparse products and the sums from one scatter of the
    stored values (times ``sample_weight`` ``(n,)``, checked by the caller,
    when given), or on the CPU both in one pass of the fused kernel (see
    :func:`_fused`); only reseeded centroids densify rows.

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 0]),
    ...                    torch.tensor([2.0, 10.0]), 2, device=torch.device("cpu"),
    ...                    dtype=torch.float32)
    >>> step = sparse_minibatch_step(rows, torch.tensor([[0.0, 0.0], [10.0, 0.0]]),
    ...                              torch.tensor([1.0, 0.0]))
    >>> step.centroids, step.weight_sums, step.labels
    (tensor([[ 0.0000,  0.6667],
            [10.0000,  0.0000]]), tensor([3., 1.]), tensor([0, 0, 1]))
    """
    k, d = int(centroids.shape[0]), int(centroids.shape[1])
    wide = _device.widest_float(batch.device)
    weights = None if sample_weight is None else sample_weight.to(batch.device, wide)
    totals = None
    if _fused(batch, k, memory_budget, totals=True):
        # Labels, sums and counts in one pass over the stored values.
        totals = torch.empty((k, d + 1), dtype=torch.float64, device=batch.device)  # zeroed by it
        labels, distances = _checked_nearest(
            batch, centroids.to(batch.dtype), [], memory_budget, weights, totals
        )
        if bool(totals[0, 0].isnan()):
            totals = None  # a row labelled again: sums from the labels
    else:
        labels, distances = sparse_nearest(batch, centroids.to(batch.dtype), memory_budget)
    if totals is not None:
        sums, counts = totals[:, :d].to(wide), totals[:, d].to(wide)
    else:
        batch = batch.with_row_of()
        values = batch.values.to(wide)
        if weights is None:
            row_weights = torch.ones(batch.n_rows, dtype=wide, device=batch.device)
        else:
            row_weights = weights
            values = values * weights[batch.row_of]
        sums = batch.sums(labels, values, k)
        counts = torch.zeros(k, dtype=wide, device=batch.device)
        counts.index_add_(0, labels, row_weights)

    def rows_at(picked: torch.Tensor) -> torch.Tensor:
        return batch.take(picked.reshape(-1)).view(*picked.shape, d)

    def repeated_at(picked: torch.Tensor, centres: torch.Tensor) -> torch.Tensor | None:
        return _repeated_sparse_rows(batch, picked, centres)

    return _apply_step(
        labels,
        distances,
        sums,
        counts,
        centroids,
        weight_sums,
        centroids.dtype,
        weight_sums.dtype,
        acc=centroids.dtype,
        weights=weights,
        rows_at=rows_at,
        repeated_at=repeated_at,
        zero_rows=batch.sq_norms == 0 if batch.metric == "cosine" else None,
        random_reassign=random_reassign,
        reassignment_ratio=reassignment_ratio,
        generator=generator,
        metric=batch.metric,
        collective=LOCAL,
    )


def _repeated_sparse_rows(
    rows: SparseRows, picked: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor | None:
    """Which of the rows ``picked`` ``(m,)`` equal a centroid ``(k, d)`` or an
    earlier picked row, ``(m,)`` bool, compared in the centroids' dtype; None
    when none does, or off the CPU: the
    :func:`~torchkmeans.functional.minibatch._repeated_rows` of their dense
    rows, from their stored values. Densified and fingerprinted with the
    centroids, 20 rows of 50,000 float64 features took 11-23 ms, most of a
    sparse mini-batch step.

    A centroid equals a row where it holds the row's values on the row's
    stored columns (a gather of k values per stored value) and no other
    nonzero (counted only for the centroids that pass). Rows are compared by
    fingerprint, the sum over their stored values of the dense rows'
    (:func:`~torchkmeans.functional.certify.first_copies`: zeros add
    nothing), those of equal fingerprints then densified and compared whole.

    Examples
    --------
    >>> rows = sparse_rows(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1]),
    ...                    torch.tensor([2.0, 3.0, 2.0]), 2, device=torch.device("cpu"),
    ...                    dtype=torch.float32)
    >>> _repeated_sparse_rows(rows, torch.tensor([0, 1, 2]),
    ...                       torch.tensor([[3.0, 0.0], [1.0, 1.0]])).tolist()
    [False, True, True]
    """
    m = int(picked.numel())
    if not m or not _device.on_host(rows.device):
        return None
    k, d = int(centroids.shape[0]), rows.n_features
    part = rows.subset(picked).with_row_of()
    values = part.values.to(centroids.dtype) + 0.0  # -0.0 as 0.0
    # Rows equal to a centroid: equal values on their stored columns...
    differing = torch.zeros((k, m), dtype=torch.int64, device=rows.device)
    differing.index_add_(1, part.row_of, (centroids[:, part.col] != values).to(torch.int64))
    repeated = torch.zeros(m, dtype=torch.bool, device=rows.device)
    matched = differing == 0
    centres = matched.any(1).nonzero().squeeze(1)
    if centres.numel():
        # ... and as many nonzeros (rows of zeros match every centroid).
        nonzeros = torch.zeros(m, dtype=torch.int64, device=rows.device)
        nonzeros.index_add_(0, part.row_of, (values != 0).to(torch.int64))
        centre_nonzeros = (centroids.index_select(0, centres) != 0).sum(1)
        same = matched.index_select(0, centres) & (centre_nonzeros[:, None] == nonzeros[None])
        repeated |= same.any(0)
    # Rows equal to an earlier row, found by fingerprint as first_copies finds them.
    weights = _fingerprint_weights(d).index_select(1, part.col)
    fingerprint = torch.zeros(m, dtype=torch.int64, device=rows.device)
    fingerprint.index_add_(0, part.row_of, fingerprint_terms(values, weights))
    first = first_equal_prints(fingerprint.unsqueeze(0))
    if first is not None:
        first = first[0]
        later = (first != torch.arange(m, device=rows.device)).nonzero().squeeze(1)
        dense = part.take(torch.cat([later, first.index_select(0, later)])).to(centroids.dtype)
        equal = (dense[: later.numel()] == dense[later.numel() :]).all(1)
        repeated[later] |= equal
    return repeated if bool(repeated.any()) else None
