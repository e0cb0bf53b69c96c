"""Cluster-quality scores on the device, with or without reference labels.

Each score matches the scikit-learn function of the same name (float64 input
agrees to about 1e-12 relative). Everything runs on the data's device and in
blocks of rows: the silhouette needs, for every point, its mean distance to
each cluster, which is computed one block of rows at a time as
``(m, n)`` distances reduced to ``(m, k)`` per-cluster sums, so no
``n x n`` matrix is ever allocated and memory is set by ``memory_budget``.
Float32 data is computed in float64 (distances, cluster sums and means), as
scikit-learn's ``euclidean_distances`` upcasts float32: the expansion
``|x|^2 - 2 x.y + |y|^2`` in float32 loses the distances between neighbours
once the data lie far from their mean (centring on the mean does not help).

Labels may be one labelling ``(n_samples,)``, which gives a Python float, or
a batch ``(batch, n_samples)`` of labellings of the same data (for example
one per k of a sweep), which gives an array of shape ``(batch,)`` (a tensor
for tensor input) with NaN where the score is undefined. The silhouette of a
batch shares the distance blocks between all labellings.

Labellings are also scored against reference labels, as scikit-learn's
``adjusted_rand_score``, ``rand_score``, ``mutual_info_score``,
``normalized_mutual_info_score``, ``adjusted_mutual_info_score``,
``homogeneity_score``, ``completeness_score``, ``v_measure_score`` and
``homogeneity_completeness_v_measure`` (its digits demo's table): from the
nonzero cells of the contingency table only, one labelling or a batch.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from . import _validation as v
from ._host import is_sparse, read_sparse
from .functional import _device
from .functional.distances import (
    block_rows,
    nearest_centroids,
    squared_norms,
    times_power_of_two,
    unit_rows,
)
from .functional.sparse import SparseRows, sparse_rows, sparse_scaled

__all__ = [
    "adjusted_mutual_info_score",
    "adjusted_rand_score",
    "calinski_harabasz_score",
    "completeness_score",
    "davies_bouldin_score",
    "homogeneity_completeness_v_measure",
    "homogeneity_score",
    "inertia",
    "mutual_info_score",
    "normalized_mutual_info_score",
    "rand_score",
    "silhouette_samples",
    "silhouette_score",
    "v_measure_score",
]

_SILHOUETTE_METRICS = (
    "euclidean",
    "sqeuclidean",
    "cosine",
    "manhattan",
    "precomputed",
    # scikit-learn's other names of the same distances.
    "l2",
    "cityblock",
    "l1",
)
_METRIC_ALIASES = {"l2": "euclidean", "cityblock": "manhattan", "l1": "manhattan"}
# Per-cluster sums of a distance block are one matrix product against a
# one-hot (n, clusters) matrix while that matrix is small; past this many
# clusters the product costs more than index_add_ of the block's columns.
_ONE_HOT_MAX_COLUMNS = 256
# On the CPU index_add_ of a tile costs one pass per labelling, which is worth
# about this many columns of the product, and the product's first columns
# cost as much as one pass; past that the product is the slower (silhouette
# of 20,000 x 16 float64, one thread: one labelling of k = 128, 3.2 s by
# product and 1.2 s by index_add_, equal near k = 4; a sweep k = 1..10:
# 2.1 s by product, 4.9 s by index_add_).
_CPU_COLUMNS_PER_LABELLING = 24
# On the CPU a block of distances to all n samples outgrows the cache for any
# sizeable n, and its elementwise passes and reduction then run from memory;
# tiles of this many distances (2 MiB in float64) stay in L2. Silhouette of
# 20,000 x 64 in float64, one thread: 256 x 20,000 blocks 5.4-6.2 s, 256 x
# 1,024 tiles 2.7-2.9 s (tiles of 128K to 1M distances within 10%).
_CPU_TILE_ELEMENTS = 256 * 1024
# Silhouette of a sparse X: see _sparse_products.
_SPARSE_PRODUCTS_SHARE = 0.1
# Rows of a group transposed once for the products of sparse euclidean
# silhouettes: see _sparse_gram_pairs (5,000 x 5,000 TF-IDF at 1%, one thread,
# all pairs against each pair once: 0.145 s for 256 columns, 0.117 s, 512
# 0.098 s, 1,024 0.091 s).
_GRAM_GROUP = 1024
# Labels spanning at most this many values per sample (and row) are encoded
# by a table of the values (_encode_by_table) rather than a sort.
_TABLE_LABELS = 4


class _Labels(NamedTuple):
    """Labellings encoded as 0..k_i-1 per row."""

    codes: torch.Tensor  # (b, n) int64
    counts: torch.Tensor  # (b, K) cluster sizes in the compute dtype, 0 beyond k_i
    n_clusters: torch.Tensor  # (b,) int64
    batched: bool

    @property
    def width(self) -> int:
        return self.counts.shape[1]


def _as_data(X: Any, device: str | torch.device | None) -> tuple[torch.Tensor, v.OutputKind]:
    x, kind = v.as_tensor(X, "X", device=device)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"Expected X to hold at least one sample and feature, got shape {tuple(x.shape)}."
        )
    return x, kind


def _label_tensor(
    labels: Any, n_samples: int, device: torch.device, *, indices: bool = False
) -> tuple[torch.Tensor, bool]:
    """Labels as an int64 tensor ``(b, n)`` on ``device``, and whether they were batched.

    Floats that are not integers of int64 are numbered in sorted order, as
    scikit-learn encodes any labels (0.5 and 1.5 had been refused; the cast of
    1e19, 2e19 and 3e19 overflowed into one cluster), unless they must be
    ``indices`` (into centres), which they cannot be. A column vector
    ``(n_samples, 1)`` (a one-column frame) is one labelling, with
    scikit-learn's warning: it had been refused as a batch of the wrong width.
    """
    shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else np.shape(labels)
    if n_samples > 1 and shape == (n_samples, 1):
        warnings.warn(
            "A column-vector labels was passed when a 1d array was expected. Please change "
            "the shape of labels to (n_samples,), for example using ravel().",
            UserWarning,
            stacklevel=3,
        )
        labels = labels[:, 0] if isinstance(labels, torch.Tensor) else np.asarray(labels)[:, 0]
    if isinstance(labels, torch.Tensor):
        tensor = labels.detach()
        if tensor.is_floating_point():
            _check_float_labels(bool(tensor.isfinite().all()), indices)
            integral = tensor == tensor.round()
            if tensor.numel() and not bool(
                (integral & (tensor >= -(2.0**63)) & (tensor < 2.0**63)).all()
            ):
                _check_categories(bool(integral.all()), indices)
                tensor = torch.unique(tensor, return_inverse=True)[1].view(tensor.shape)
        elif tensor.is_complex():
            raise TypeError(f"Expected labels to hold integers, got dtype {tensor.dtype}.")
        tensor = tensor.to(device=device, dtype=torch.int64)
    else:
        array = np.asarray(labels)
        if array.dtype.kind == "f":
            _check_float_labels(bool(np.all(np.isfinite(array))), indices)
            integral = array == np.round(array)
            if array.size and not bool(
                np.all(integral & (array >= -(2.0**63)) & (array < 2.0**63))
            ):
                _check_categories(bool(np.all(integral)), indices)
                array = np.unique(array, return_inverse=True)[1].reshape(array.shape)
            array = array.astype(np.int64)
        elif array.dtype.kind == "c":
            # As complex tensors: np.unique would have numbered them as categories.
            raise TypeError(f"Expected labels to hold integers, got dtype {array.dtype}.")
        elif array.dtype.kind not in "biu":
            # Strings or objects: encode each labelling, as scikit-learn does.
            rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
            try:
                codes = np.stack([np.unique(row, return_inverse=True)[1].ravel() for row in rows])
            except TypeError:
                # Objects that cannot be sorted: ['a', 1, None] gave numpy's
                # "'<' not supported between instances of 'int' and 'str'".
                kinds = sorted({type(value).__name__ for value in array.ravel().tolist()})
                raise TypeError(
                    "Expected labels to be integers or strings of one kind, got a mix of "
                    f"{', '.join(kinds)}."
                ) from None
            array = codes.reshape(array.shape)
        tensor = torch.as_tensor(array.astype(np.int64), device=device)
    if tensor.ndim not in (1, 2) or tensor.shape[-1] != n_samples:
        raise ValueError(
            f"Expected labels to be of shape ({n_samples},) or (batch, {n_samples}), "
            f"got shape {tuple(tensor.shape)}."
        )
    batched = tensor.ndim == 2
    if batched and tensor.shape[0] == 0:
        # An empty batch failed in torch's max() with a message about reductions.
        raise ValueError(
            f"Expected labels to hold at least one labelling, got shape {tuple(tensor.shape)}."
        )
    return (tensor if batched else tensor.unsqueeze(0)), batched


def _check_float_labels(finite: bool, indices: bool) -> None:
    if not finite:
        raise TypeError(
            "Expected labels to hold integers, got non-integral or non-finite floats."
            if indices
            else "Expected labels to hold integers or finite floats, got NaN or infinity."
        )


def _check_categories(integral: bool, indices: bool) -> None:
    """Floats that are not int64 integers are categories, except as ``indices``."""
    if indices and not integral:
        raise TypeError("Expected labels to hold integers, got non-integral or non-finite floats.")
    if indices:
        raise ValueError("Expected labels to be indices into centers, got values outside int64.")


def _encode(labels: torch.Tensor, batched: bool, dtype: torch.dtype) -> _Labels:
    """Codes 0..k_i-1 in sorted label order per row, cluster sizes and k per row."""
    b = labels.shape[0]
    if labels.numel():
        low, high = (int(v) for v in labels.aminmax())
        span = high - low + 1  # a Python int: any int64 labels
        if b * span <= _TABLE_LABELS * labels.numel() + 1024:
            return _encode_by_table(labels - low, span, batched, dtype)
    # Each row sorted on its own: shifting the labels to 0 and offsetting the
    # rows into one range of keys overflowed int64 once the labels of the
    # batch spanned more than 2**63 / b, and scikit-learn takes any labels.
    ordered, order = labels.sort(dim=1)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ranks = new.cumsum(1) - 1  # (b, n) code of each sorted label
    codes = torch.empty_like(ranks).scatter_(1, order, ranks)
    n_clusters = ranks[:, -1] + 1
    width = int(n_clusters.max())
    flat = codes + torch.arange(b, device=labels.device).unsqueeze(1) * width
    counts = torch.bincount(flat.reshape(-1), minlength=b * width).view(b, width).to(dtype)
    return _Labels(codes, counts, n_clusters, batched)


def _encode_by_table(
    shifted: torch.Tensor, span: int, batched: bool, dtype: torch.dtype
) -> _Labels:
    """:func:`_encode` of labels in ``[0, span)``: the sizes of every value
    by one bincount, the codes from their running count of present values,
    no sort (cluster labels 0..k-1 of 200,000 samples: 12 ms to 1 ms)."""
    b, device = shifted.shape[0], shifted.device
    rows = torch.arange(b, device=device).unsqueeze(1)
    sizes = torch.bincount((shifted + rows * span).reshape(-1), minlength=b * span)
    present = sizes.view(b, span) > 0
    ranks = present.cumsum(1) - 1  # (b, span) code of each value
    codes = ranks.gather(1, shifted)
    n_clusters = ranks[:, -1] + 1
    width = int(n_clusters.max())
    cells = (ranks + rows * width)[present]
    counts = torch.zeros(b * width, dtype=dtype, device=device)
    counts.index_add_(0, cells, sizes[present.reshape(-1)].to(dtype))
    return _Labels(codes, counts.view(b, width), n_clusters, batched)


def _valid(encoded: _Labels, n_samples: int) -> torch.Tensor:
    """Rows with 2 <= k <= n_samples - 1 (where the scores are defined); raise if not batched."""
    valid = (encoded.n_clusters >= 2) & (encoded.n_clusters <= n_samples - 1)
    if not encoded.batched and not bool(valid[0]):
        raise ValueError(
            f"Number of labels is {int(encoded.n_clusters[0])}. Valid values are 2 to "
            "n_samples - 1 (inclusive)"
        )
    return valid


def _result(values: torch.Tensor, valid: torch.Tensor, encoded: _Labels, kind: v.OutputKind) -> Any:
    values = values.to(torch.float64)
    values = torch.where(valid, values, torch.full_like(values, float("nan")))
    if encoded.batched:
        return kind.out(values)
    return float(values[0])


def _check_memory_budget(memory_budget: Any) -> int | None:
    if memory_budget is None:
        return None
    return v.check_positive_int(memory_budget, "memory_budget")


# ----------------------------------------------------------------- silhouette


class _Pairs(NamedTuple):
    """Distances between the samples, a block at a time, in the widest float."""

    n: int
    device: torch.device
    # Floats of the widest dtype a block of rows holds besides its distances
    # and sums, per row (the dense rows of a sparse X).
    width: int
    # Samples per tile of columns at most (None: no bound).
    tile: int | None
    # Once per block of rows: what its tiles of distances are taken from.
    open: Callable[[slice], Any]
    # (opened rows, rows, columns) -> (m, c) distances, 0 from a sample to
    # itself; None where ``sums`` gives the whole of the per-cluster sums.
    block: Callable[[Any, slice, slice], torch.Tensor] | None
    # Per-cluster sums without (or besides) tiles of distances, see _Sums.
    sums: Callable[[torch.Tensor, int], _Sums] | None = None


class _Sums(NamedTuple):
    """Per-cluster sums of distances of a block of rows that need no ``(m, n)``
    tile of them, from ``(flat, columns)``: the column of every sample in the
    sums ``(b, n)`` and their number."""

    # Whether the tiles of _Pairs.block make the rest of the sums.
    tiles: bool
    # (rows, sums (m, columns)): adds the block's sums in place; called once
    # per block of rows, in order (a block may hold sums of later rows).
    add: Callable[[slice, torch.Tensor], None]


def _dense_pairs(x: torch.Tensor, metric: str) -> _Pairs:
    """:class:`_Pairs` of the rows of a dense ``x``."""
    n = x.shape[0]
    # Float32 clusters of spread 1 at 1e4 from the mean: |x|^2 - 2 x.y + |y|^2
    # in float32 is off by ~10 for a squared distance of ~2 (silhouette 0.865
    # for 0.845), so the blocks are computed in float64 as scikit-learn does.
    dtype = _device.widest_float(x.device)
    direction = None
    if metric == "cosine":
        # 1 - u.v loses every digit of rows of nearly one direction (float64
        # rows 1e8 + noise of 1e-2: silhouette 0.005 for 0.78). For unit rows
        # it is |u - v|^2 / 2, taken as the euclidean distances are, from the
        # centred unit rows; rows of zeros (no direction) stay at 1 from all.
        units = unit_rows(x.to(dtype))
        data = units - units.mean(0)
        data_sq = squared_norms(data).mul_(0.5)
        direction = (units != 0).any(1)
        direction = None if bool(direction.all()) else direction.to(dtype)
    elif metric in ("manhattan", "precomputed"):
        data = x.to(dtype)
        data_sq = None
    else:
        # Centring keeps |x|^2 - 2 x.y + |y|^2 accurate for data far from the origin.
        data = x - x.mean(0, dtype=dtype)
        data_sq = squared_norms(data)
        if n and not float(data_sq.amax()) <= torch.finfo(dtype).max / 8:
            # float64 rows near 1e155: their squared distances overflow (every
            # silhouette was 0). Scaling by a power of two, an exact change,
            # leaves the silhouette as it is.
            data = times_power_of_two(data, -math.frexp(float(data.abs().amax()))[1])
            data_sq = squared_norms(data)

    def block(_: Any, rows: slice, columns: slice) -> torch.Tensor:
        return _distance_block(data, data_sq, rows, columns, metric, direction)

    if metric in ("sqeuclidean", "cosine"):
        sums = _dense_linear_sums(data, metric, direction)
        return _Pairs(n, x.device, 0, None, lambda rows: None, None, sums)
    return _Pairs(n, x.device, 0, None, lambda rows: None, block)


def _dense_linear_sums(
    data: torch.Tensor, metric: str, direction: torch.Tensor | None
) -> Callable[[torch.Tensor, int], _Sums]:
    """Per-cluster sums of squared euclidean distances of centred rows
    ``data`` (cosine: half those of centred unit rows, 1 to and from rows of
    zeros, where ``direction`` is 0), from the cluster means: over the rows y
    of a cluster C, ``sum |x - y|^2 = |C| |x - m_C|^2 + sum |y - m_C|^2``,
    exact, with the differences to the means taken as differences. A block
    of rows takes ``(m, columns)`` distances to the means, not ``(m, n)`` to
    every row (20,000 x 64 float64, cosine, one thread: 4.5 s)."""
    n, d = data.shape
    device, dtype = data.device, data.dtype
    has = None if direction is None else direction > 0

    def sums(flat: torch.Tensor, columns: int) -> _Sums:
        # Zero rows (cosine) count in no mean; they are at 1 from every row.
        weights = torch.ones(n, dtype=dtype, device=device) if has is None else direction
        assert weights is not None
        sizes = torch.zeros(columns, dtype=dtype, device=device)
        totals = torch.zeros((columns, d), dtype=dtype, device=device)
        rows = max(1, min(n, _CPU_TILE_ELEMENTS // max(1, d)))
        for labelling in flat:
            sizes.index_add_(0, labelling, weights)
        for start in range(0, n, rows):
            block = data[start : start + rows] * weights[start : start + rows].unsqueeze(1)
            for labelling in flat:
                totals.index_add_(0, labelling[start : start + rows], block)
        means = totals / sizes.clamp_min(1.0).unsqueeze(1)
        scatter = torch.zeros(columns, dtype=dtype, device=device)
        for start in range(0, n, rows):
            block = data[start : start + rows]
            for labelling in flat:
                own = labelling[start : start + rows]
                squared = (block - means.index_select(0, own)).square_().sum(1)
                scatter.index_add_(0, own, squared * weights[start : start + rows])
        zeros = None
        if has is not None:
            zeros = torch.zeros(columns, dtype=dtype, device=device)
            for labelling in flat:
                zeros.index_add_(0, labelling, 1.0 - weights)

        @_device.full_precision
        def add(selected: slice, out: torch.Tensor) -> None:
            block = data[selected]
            to_means = torch.cdist(block, means, compute_mode="donot_use_mm_for_euclid_dist")
            part = to_means.square_().mul_(sizes).add_(scatter)
            if metric == "cosine":
                part.mul_(0.5)
            if zeros is not None and has is not None:
                # From a row with a direction: 1 to each row of zeros. From a
                # row of zeros: 1 to every other row.
                everyone = (sizes + zeros).expand_as(part)
                part = torch.where(has[selected].unsqueeze(1), part + zeros, everyone)
                own = flat[:, selected].T  # (m, b)
                itself = (~has[selected]).to(dtype).neg_().unsqueeze(1).expand(own.shape)
                part.scatter_add_(1, own, itself)
            out += part

        return _Sums(False, add)

    return sums


def _sparse_pairs(rows: SparseRows, metric: str, memory_budget: int | None) -> _Pairs:
    """:class:`_Pairs` of sparse ``rows`` (in the widest float; unit rows for
    cosine), as scikit-learn measures a CSR ``X``: not centred (that would
    fill in the zeros). Cosine and squared euclidean distances are linear in
    the products ``x.y``, and their sums per cluster come from products with
    each cluster's sum of rows (:func:`_sparse_linear_sums`). Euclidean ones
    come from the products of a block of rows with all rows, stored values
    only (:func:`_sparse_gram_pairs`), or with many stored values from dense
    blocks of rows. Manhattan distances come from the stored values rows
    share (:func:`_sparse_manhattan`), or with many stored values from dense
    blocks and tiles of rows; ``"precomputed"`` rows are distances, missing
    ones 0."""
    n, d = rows.n_rows, rows.n_features
    if metric in ("euclidean", "sqeuclidean") and n:
        largest = float(rows.sq_norms.amax())
        if not largest <= torch.finfo(rows.dtype).max / 8:
            # As for dense rows: squared distances that overflow, scaled exactly.
            exponent = -math.frexp(float(rows.values.abs().amax()))[1]
            rows = sparse_scaled(rows, exponent)

    def dense(selected: slice) -> torch.Tensor:
        index = torch.arange(selected.start, selected.stop, device=rows.device)
        return rows.take(index)

    by_sparse = _sparse_products(rows)
    budget = 64 * 2**20 if memory_budget is None else memory_budget
    if metric in ("cosine", "sqeuclidean"):
        sums = _sparse_linear_sums(rows, metric, budget)
        return _Pairs(n, rows.device, 0, None, lambda rows: None, None, sums)
    if metric == "euclidean" and by_sparse:
        return _sparse_gram_pairs(rows, budget)
    whole = metric == "precomputed" or (metric == "manhattan" and by_sparse)
    if metric == "manhattan" and by_sparse:
        manhattan = _sparse_manhattan(rows, budget)

    def opened(selected: slice) -> torch.Tensor:
        if metric == "manhattan" and by_sparse:
            return manhattan(selected)
        if metric in ("manhattan", "precomputed"):
            return dense(selected)
        # (d, m): the right operand of the products, laid out once per block.
        return dense(selected).T.contiguous()

    @_device.full_precision
    def block(opened_rows: torch.Tensor, selected: slice, columns: slice) -> torch.Tensor:
        if whole:
            distances = opened_rows[:, columns].clone()
        elif metric == "manhattan":
            distances = torch.cdist(opened_rows, dense(columns), p=1.0)
        else:
            scores = torch.sparse.mm(rows.block(columns.start, columns.stop), opened_rows).T
            distances = scores.mul_(-2.0)
            distances.add_(rows.sq_norms[columns].unsqueeze(0))
            distances.add_(rows.sq_norms[selected].unsqueeze(1)).clamp_min_(0.0)
        distances.diagonal(selected.start - columns.start).zero_()
        if metric == "euclidean":
            distances.sqrt_()
        return distances

    # The dense rows of a block, or its manhattan distances to all rows.
    width = n if whole else d
    tile = None
    if metric == "manhattan" and not by_sparse:
        # A tile of dense rows besides the block's.
        tile = max(1, budget // max(1, 2 * d * rows.values.element_size()))
    return _Pairs(n, rows.device, width, tile, opened, block)


def _sparse_linear_sums(
    rows: SparseRows, metric: str, budget: int
) -> Callable[[torch.Tensor, int], _Sums]:
    """Per-cluster sums of distances linear in the products ``x.y``: cosine
    ``1 - x.y`` of unit rows, squared euclidean ``|x|^2 + |y|^2 - 2 x.y``.
    Over the rows y of a cluster C they are ``|C| - x.S_C`` and ``|C| |x|^2 +
    A_C - 2 x.S_C``, with ``S_C`` the sum of the rows of C and ``A_C`` of their
    squared norms: a block of rows takes one product with the ``(d, columns)``
    sums, not one with all n rows, which filled an ``(m, n)`` block (5,000 x
    5,000 TF-IDF at 1%, cosine: 0.33 s, scikit-learn 0.24 s). Each pair's
    term is what scikit-learn sums to rounding (it clips 1 - x.y to [0, 2]
    and |x|^2 + |y|^2 - 2 x.y at 0: a few ulps); a row's distance to itself,
    0 in scikit-learn, is ``1 - |x|^2`` here (1 for a row of zeros) for
    cosine, and is taken out. The sums ``S`` take ``budget`` bytes at most,
    in groups of columns."""
    n, d, device, dtype = rows.n_rows, rows.n_features, rows.device, rows.dtype
    norms = rows.sq_norms

    def sums(flat: torch.Tensor, columns: int) -> _Sums:
        b = flat.shape[0]
        sizes = torch.bincount(flat.reshape(-1), minlength=columns).to(dtype)
        norm_sums = torch.zeros(columns, dtype=dtype, device=device)
        norm_sums.index_add_(0, flat.reshape(-1), norms.expand(b, n).reshape(-1))
        group = max(1, min(columns, budget // max(1, 8 * d)))

        def totals(first: int, last: int) -> torch.Tensor:
            """``(d, last - first)`` sums of the rows of clusters ``first:last``."""
            width = last - first
            out = torch.zeros(d * width, dtype=dtype, device=device)
            for labelling in flat:
                column = labelling.index_select(0, rows.row_of).sub_(first)
                index = rows.col * width + column
                if width < columns:
                    inside = (column >= 0) & (column < width)
                    out.index_add_(0, index[inside], rows.values[inside])
                else:
                    out.index_add_(0, index, rows.values)
            return out.view(d, width)

        whole = totals(0, columns) if group == columns else None

        @_device.full_precision
        def add(selected: slice, out: torch.Tensor) -> None:
            block = rows.block(selected.start, selected.stop)
            for first in range(0, columns, group):
                last = min(columns, first + group)
                products = torch.sparse.mm(block, totals(first, last) if whole is None else whole)
                if metric == "cosine":
                    part = products.neg_().add_(sizes[first:last])
                else:
                    part = torch.addcmul(
                        norm_sums[first:last], norms[selected].unsqueeze(1), sizes[first:last]
                    ).sub_(products, alpha=2.0)
                out[:, first:last] += part
            if metric == "cosine":
                own = flat[:, selected].T  # (m, b)
                itself = norms[selected].sub(1.0).unsqueeze(1).expand(own.shape)
                out.scatter_add_(1, own, itself)
            out.clamp_min_(0.0)

        return _Sums(False, add)

    return sums


def _sparse_gram_pairs(rows: SparseRows, budget: int) -> _Pairs:
    """:class:`_Pairs` of euclidean distances of sparse ``rows`` with few
    stored values, from the products of stored values only.

    Most pairs share no feature: their distance ``sqrt(|x|^2 + |y|^2)``
    depends on the norms alone. The per-cluster sums are those of
    ``sqrt(|x|^2 + |y|^2)``, plus, for the pairs whose sparse product ``x.y``
    is stored, ``sqrt(|x|^2 + |y|^2 - 2 x.y) - sqrt(|x|^2 + |y|^2)``, added
    by cluster. The former is the product of a few terms of each row with
    sums over each cluster (:func:`_apart_sums`: TF-IDF rows are unit
    vectors), or with norms of all sizes the sum of tiles of ``(m, n)``
    roots. The latter is taken once per pair (the product is symmetric) from
    products of a block of rows with groups of later rows, each group
    transposed once, where the ``(n, columns)`` sums fit ``budget``; else
    from the product of a block with all rows. The product had been
    densified with all its distances (5,000 x 5,000 TF-IDF at 1%, one
    thread: 2.6-3x scikit-learn's time, now 1.2-1.4x; the sparse product
    alone takes about 0.6x, against scikit-learn's compiled loop).
    """
    n, device, dtype = rows.n_rows, rows.device, rows.dtype
    norms = rows.sq_norms
    # Columns of a product: larger groups cost more per stored product, and
    # each group's transpose holds n_features + 1 row pointers.
    group = max(_GRAM_GROUP, -(-n * (rows.n_features + 1) * 8 // max(1, budget)))
    transposed: list[torch.Tensor] = []

    def transpose(first: int) -> torch.Tensor:
        """Rows ``first:first + group`` transposed, ``(d, group)``, laid out once."""
        while len(transposed) <= first // group:
            start = len(transposed) * group
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
                block = rows.block(start, min(n, start + group))
                transposed.append(block.t().to_sparse_csr())
        return transposed[first // group]

    @_device.full_precision
    def apart(_: Any, selected: slice, columns: slice) -> torch.Tensor:
        """Distances of rows that share no feature, ``(m, c)``, 0 from a row to itself."""
        distances = norms[selected].unsqueeze(1).add(norms[columns]).sqrt_()
        distances.diagonal(selected.start - columns.start).zero_()
        return distances

    def correction(
        first: torch.Tensor, second: torch.Tensor, products: torch.Tensor
    ) -> torch.Tensor:
        """Distance less that of rows sharing no feature, per stored product."""
        # |x|^2 + |y|^2 - 2 x.y clipped at 0, as scikit-learn's euclidean_distances.
        squared = norms.index_select(0, first).add_(norms.index_select(0, second))
        out = torch.add(squared, products, alpha=-2.0).clamp_min_(0.0).sqrt_()
        return out.sub_(squared.sqrt_())

    def sums(flat: torch.Tensor, columns: int) -> _Sums:
        # Per block (m, q) weights and their product with (q, columns) counts,
        # against (m, n) roots and their reduction by cluster.
        apart_sums = _apart_sums(norms, flat, columns, 6 * n // (columns + 8))
        few = apart_sums is not None
        # Each pair's correction goes to both rows' sums, those of later rows
        # kept here until their block.
        symmetric = n * columns * 8 <= budget
        pending = torch.zeros(n * columns if symmetric else 0, dtype=dtype, device=device)

        def add_pairs(
            first: torch.Tensor, second: torch.Tensor, products: torch.Tensor, overlap: bool
        ) -> None:
            change = correction(first, second, products)
            if overlap:
                # Each pair once, from its earlier row; never a row with itself.
                change.masked_fill_(second <= first, 0.0)
            for labelling in flat:
                key = labelling.index_select(0, second).add_(first * columns)
                pending.index_add_(0, key, change)
                key = labelling.index_select(0, first).add_(second * columns)
                pending.index_add_(0, key, change)

        @_device.full_precision
        def add(selected: slice, out: torch.Tensor) -> None:
            start, stop = selected.start, selected.stop
            if few:
                assert apart_sums is not None
                weights, counts = apart_sums
                out.addmm_(weights(norms[selected]), counts)
                own = flat[:, selected].T  # (m, b)
                itself = norms[selected].mul(2.0).sqrt_().neg_().unsqueeze(1).expand(own.shape)
                out.scatter_add_(1, own, itself)
            block = rows.block(start, stop)
            rows_of_block = torch.arange(start, stop, device=device)
            for first in range(start - start % group if symmetric else 0, n, group):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    product = torch.sparse.mm(block, transpose(first))
                lengths = product.crow_indices().diff()
                size = product.col_indices().numel()
                one = torch.repeat_interleave(rows_of_block, lengths, output_size=size)
                other = product.col_indices().to(torch.int64).add_(first)
                products = product.values()
                if not symmetric:
                    change = correction(one, other, products)
                    # scikit-learn zeroes a row's distance to itself (rounding leaves ~1e-8).
                    change.masked_fill_(other == one, 0.0)
                    key = one.sub_(start).mul_(columns)
                    for labelling in flat:
                        target = out.view(-1)
                        target.index_add_(0, labelling.index_select(0, other).add_(key), change)
                    continue
                add_pairs(one, other, products, first < stop)
            if symmetric:
                out += pending[start * columns : stop * columns].view(stop - start, columns)

        return _Sums(not few, add)

    # The product's stored values, their columns and four temporaries per pair.
    return _Pairs(n, device, 6 * min(n, group), None, lambda rows: None, apart, sums)


def _apart_sums(
    norms: torch.Tensor, flat: torch.Tensor, columns: int, most: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor] | None:
    """Weights ``(m, q)`` of the squared norms ``a`` of m rows, and counts
    ``(q, columns)``, whose product is ``sum over y in C of sqrt(a + |y|^2)``
    for every cluster C (column of ``flat``, ``(b, n)``), to rounding; None
    where that takes more than ``most`` terms.

    With a few distinct squared norms v (unit rows in float64), the weights
    are ``sqrt(a + v)`` and the counts those of v in each cluster. Nonzero
    norms within 1/16 of a middle value v0 (unit rows in float32, rounded in
    each row's last bits: one value each) take the binomial series of
    ``sqrt(s + e) = sqrt(s) * sum_p binom(1/2, p) (e / s)^p``, s = a + v0, e
    = |y|^2 - v0, to the power where it is exact: the weights are
    ``sqrt(s) binom(1/2, p) s^-p`` and the counts the sums of e^p over each
    cluster; rows of zeros are one more term, ``sqrt(a)`` times their number.
    """
    dtype, device = norms.dtype, norms.device
    values, by_value = torch.unique(norms, return_inverse=True)
    nonzero = norms > 0
    band = norms[nonzero]
    series = None
    if band.numel():
        low, high = float(band.amin()), float(band.amax())
        middle = (low + high) / 2
        spread = (high - low) / 2 / middle
        if spread <= 1 / 16:
            # |e / s| <= spread: the terms past the power p fall below 2^-60.
            powers = 1 if spread == 0 else max(1, math.ceil(-60 * math.log(2) / math.log(spread)))
            series = (middle, powers)
    if series is None or values.numel() <= series[1] + 1:
        if values.numel() > most:
            return None
        counts = torch.zeros(values.numel() * columns, dtype=dtype, device=device)
        for labelling in flat:
            counts.index_add_(0, by_value * columns + labelling, torch.ones_like(norms))

        def roots(a: torch.Tensor) -> torch.Tensor:
            return a.unsqueeze(1).add(values).sqrt_()

        return roots, counts.view(-1, columns)
    middle, powers = series
    if powers + 1 > most:
        return None
    coefficients = [1.0]
    for p in range(1, powers):
        coefficients.append(coefficients[-1] * (0.5 - (p - 1)) / p)
    coefficient = torch.tensor(coefficients, dtype=dtype, device=device)
    excess = torch.where(nonzero, norms - middle, 0.0)
    terms = excess.unsqueeze(1).pow(torch.arange(powers, device=device, dtype=dtype))
    terms = torch.cat([terms * nonzero.unsqueeze(1), (~nonzero).to(dtype).unsqueeze(1)], 1)
    counts = torch.zeros((columns, powers + 1), dtype=dtype, device=device)
    for labelling in flat:
        counts.index_add_(0, labelling, terms)

    def weights(a: torch.Tensor) -> torch.Tensor:
        s = a + middle
        scale = s.reciprocal().unsqueeze(1).pow(torch.arange(powers, device=device, dtype=dtype))
        out = scale.mul_(coefficient).mul_(s.sqrt().unsqueeze(1))
        return torch.cat([out, a.sqrt().unsqueeze(1)], 1)

    return weights, counts.T.contiguous()


def _sparse_manhattan(rows: SparseRows, budget: int) -> Callable[[slice], torch.Tensor]:
    """Manhattan distances ``(m, n)`` of a block of sparse ``rows`` to all of
    them, from the stored values that share a feature: ``|x - y|_1 = |x|_1 +
    |y|_1 - sum over shared j of (|x_j| + |y_j| - |x_j - y_j|)``, pairs of
    stored values taken a bounded number at a time. Dense blocks and tiles
    took n^2 d operations (2,000 x 50,000 at 0.1%: 181 s, scikit-learn 2.3 s)."""
    n, d, device = rows.n_rows, rows.n_features, rows.device
    order = torch.argsort(rows.col, stable=True)
    row_by_column, value_by_column = rows.row_of[order], rows.values[order]
    starts = torch.zeros(d + 1, dtype=torch.int64, device=device)
    torch.cumsum(torch.bincount(rows.col, minlength=d), 0, out=starts[1:])
    norms = torch.zeros(n, dtype=rows.dtype, device=device)
    norms.index_add_(0, rows.row_of, rows.values.abs())
    # Pairs at a time: about 6 numbers of 8 bytes each.
    limit = max(1, budget // 48)

    def distances(selected: slice) -> torch.Tensor:
        start, stop = selected.start, selected.stop
        lo, hi = int(rows.crow[start]), int(rows.crow[stop])
        columns, values = rows.col[lo:hi], rows.values[lo:hi]
        local = rows.row_of[lo:hi] - start
        counts = starts[columns + 1] - starts[columns]
        ends = counts.cumsum(0)
        out = norms[start:stop].unsqueeze(1) + norms.unsqueeze(0)
        flat = out.view(-1)
        first, total = 0, hi - lo
        while first < total:
            before = int(ends[first - 1]) if first else 0
            last = int(torch.searchsorted(ends, before + limit, right=True))
            last = min(total, max(last, first + 1))
            part = counts[first:last]
            entry = torch.repeat_interleave(torch.arange(first, last, device=device), part)
            offsets = starts[columns[first:last]] - (part.cumsum(0) - part)
            position = torch.arange(entry.numel(), device=device) + offsets[entry - first]
            a, b = values[entry], value_by_column[position]
            shared = a.abs() + b.abs() - (a - b).abs()
            flat.index_add_(0, local[entry] * n + row_by_column[position], shared, alpha=-1)
            first = last
        return out.clamp_min_(0.0)

    return distances


def _sparse_products(rows: SparseRows) -> bool:
    """Whether the euclidean and manhattan distances of a sparse silhouette
    come from stored values alone (products of both operands sparse, shared
    features): below this share of stored values they cost less than against
    dense rows (CPU, one thread, products of 500 rows against 5,000: 1%
    stored 0.17 s against 0.43 s, 5% 0.50 s against 1.50 s, 20% 1.0 s
    against 0.6 s)."""
    elements = rows.n_rows * rows.n_features
    return rows.values.numel() < _SPARSE_PRODUCTS_SHARE * elements


def _silhouette(
    pairs: _Pairs, dtype: torch.dtype, encoded: _Labels, memory_budget: int | None
) -> torch.Tensor:
    """Silhouette of every sample under every labelling, ``(b, n)`` in ``dtype``."""
    n, device = pairs.n, pairs.device
    wide = _device.widest_float(device)
    counts = encoded.counts.to(wide)
    b, width = counts.shape
    # One column of sums per cluster of each labelling, not b * width: the
    # reduction is a product as costly as the distances, and padding every
    # labelling of a sweep to the largest k widens it (k = 2..10: 90 for 54).
    first_column = encoded.n_clusters.cumsum(0) - encoded.n_clusters
    columns = int(encoded.n_clusters.sum())
    flat = encoded.codes + first_column.unsqueeze(1)  # (b, n) column of each sample
    slots = torch.arange(width, device=device)
    # Column of cluster c of labelling i in the sums, or a zero column past them.
    padded = torch.where(
        slots < encoded.n_clusters.unsqueeze(1), first_column.unsqueeze(1) + slots, columns
    )
    extra = None if pairs.sums is None else pairs.sums(flat, columns)
    tiles = pairs.block is not None and (extra is None or extra.tiles)
    one_hot = None
    if tiles and _sums_by_product(columns, b, device):
        one_hot = torch.zeros((n, columns), dtype=wide, device=device)
        one_hot.scatter_(1, flat.T, 1.0)
    itemsize = torch.finfo(wide).bits // 8
    rows = block_rows(
        n,
        (n if tiles else 0) + columns + pairs.width,
        itemsize=itemsize,
        memory_budget=memory_budget,
        device=device,
    )
    tile = n if not _device.on_host(device) else max(1, min(n, _CPU_TILE_ELEMENTS // rows))
    if pairs.tile is not None:
        tile = min(tile, pairs.tile)
    out = torch.empty((b, n), dtype=dtype, device=device)
    infinity = torch.tensor(float("inf"), dtype=wide, device=device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sums = torch.zeros((stop - start, columns), dtype=wide, device=device)
        if tiles:
            assert pairs.block is not None
            opened = pairs.open(slice(start, stop))
            for first in range(0, n, tile):
                last = min(n, first + tile)
                distances = pairs.block(opened, slice(start, stop), slice(first, last))
                if one_hot is not None:
                    sums.addmm_(distances, one_hot[first:last])
                else:
                    for row in range(b):
                        sums.index_add_(1, flat[row, first:last], distances)
                del distances
            del opened
        if extra is not None:
            extra.add(slice(start, stop), sums)
        sums = torch.nn.functional.pad(sums, (0, 1))[:, padded].transpose(0, 1)  # (b, m, width)
        own = encoded.codes[:, start:stop].unsqueeze(-1)
        own_size = counts.gather(1, own[..., 0])
        # Singletons give 0 / 0 = NaN here, and a silhouette of 0 below.
        intra = sums.gather(2, own)[..., 0] / (own_size - 1)
        means = torch.where(counts.unsqueeze(1) > 0, sums / counts.unsqueeze(1), infinity)
        inter = means.scatter(2, own, float("inf")).amin(-1)
        values = (inter - intra) / torch.maximum(intra, inter)
        out[:, start:stop] = torch.nan_to_num(values, nan=0.0)
    return out


def _sums_by_product(columns: int, labellings: int, device: torch.device) -> bool:
    """Whether the per-cluster sums of the silhouette are a product with a one-hot matrix."""
    if columns > _ONE_HOT_MAX_COLUMNS:
        return False
    if not _device.on_host(device):
        return True
    return columns <= _CPU_COLUMNS_PER_LABELLING * (labellings - 1) + 4


@_device.full_precision
def _distance_block(
    data: torch.Tensor,
    data_sq: torch.Tensor | None,
    rows: slice,
    columns: slice,
    metric: str,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances ``(m, c)`` from samples ``rows`` to samples ``columns``; 0 from one to itself.

    For ``metric="cosine"``, ``data`` are centred unit rows and ``data_sq``
    half their squared norms: ``1 - u.v`` is ``|u - v|^2 / 2`` for unit rows,
    plus ``1 - (direction_u + direction_v) / 2`` where ``direction`` (1 for a
    row with a direction, 0 for a row of zeros) is given.
    """
    block, other = data[rows], data[columns]
    if metric == "precomputed":
        distances = data[rows, columns].clone()
    elif metric == "manhattan":
        distances = torch.cdist(block, other, p=1.0)
    elif metric == "cosine":
        distances = torch.addmm(data_sq[columns].unsqueeze(0), block, other.T, alpha=-1.0)
        distances.add_(data_sq[rows].unsqueeze(1))
        if direction is not None:
            distances.add_(direction[rows].unsqueeze(1) + direction[columns], alpha=-0.5).add_(1.0)
        distances.clamp_(0.0, 2.0)
    else:
        distances = torch.addmm(data_sq[columns].unsqueeze(0), block, other.T, alpha=-2.0)
        distances.add_(data_sq[rows].unsqueeze(1)).clamp_min_(0.0)
    # Rounding leaves a small positive self-distance; scikit-learn zeroes it too.
    distances.diagonal(rows.start - columns.start).zero_()
    if metric == "euclidean":
        distances.sqrt_()
    return distances


def _check_silhouette_metric(metric: Any) -> str:
    if not isinstance(metric, str) or metric not in _SILHOUETTE_METRICS:
        raise ValueError(
            f"Expected metric to be one of {', '.join(map(repr, _SILHOUETTE_METRICS))}, "
            f"got {metric!r}."
        )
    return _METRIC_ALIASES.get(metric, metric)


def _check_precomputed(x: torch.Tensor) -> None:
    """A precomputed distance matrix is square with a zero diagonal (to
    scikit-learn's tolerance, 100 eps of a float dtype)."""
    if x.shape[0] != x.shape[1]:
        raise ValueError(
            "Expected X to be a square distance matrix of shape (n_samples, n_samples) with "
            f"metric='precomputed', got shape {tuple(x.shape)}."
        )
    diagonal = x.diagonal()
    tolerance = 100 * torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0
    if bool((diagonal.abs() > tolerance).any()):
        raise ValueError(
            "The precomputed distance matrix contains non-zero elements on the diagonal. "
            "Use np.fill_diagonal(X, 0)."
        )


class _Samples(NamedTuple):
    """The input of the silhouette: dense rows, or sparse ones (in the widest
    float, unit rows for cosine), and the kind and dtype of the result."""

    dense: torch.Tensor | None
    sparse: SparseRows | None
    kind: v.OutputKind
    dtype: torch.dtype

    @property
    def n(self) -> int:
        if self.dense is not None:
            return int(self.dense.shape[0])
        assert self.sparse is not None
        return self.sparse.n_rows

    @property
    def device(self) -> torch.device:
        if self.dense is not None:
            return self.dense.device
        assert self.sparse is not None
        return self.sparse.device

    def subset(self, indices: torch.Tensor, metric: str) -> _Samples:
        """Samples ``indices``; for ``"precomputed"`` their distances to each other."""
        if self.dense is not None:
            x = self.dense[indices]
            return self._replace(dense=x[:, indices] if metric == "precomputed" else x)
        assert self.sparse is not None
        rows = self.sparse.subset(indices)
        if metric == "precomputed":
            rows = _sparse_columns(rows, indices)
        return self._replace(sparse=rows)

    def pairs(self, metric: str, memory_budget: int | None) -> _Pairs:
        if self.dense is not None:
            return _dense_pairs(self.dense, metric)
        assert self.sparse is not None
        return _sparse_pairs(self.sparse, metric, memory_budget)


def _silhouette_input(X: Any, metric: str, device: str | torch.device | None) -> _Samples:
    """``X`` for the silhouette, checked; a sparse ``X`` stays sparse (scikit-learn takes CSR)."""
    if not is_sparse(X):
        x, kind = _as_data(X, device)
        if metric == "precomputed":
            _check_precomputed(x)
        return _Samples(x, None, kind, x.dtype)
    csr = read_sparse(X, to_cpu=False)
    if csr.n_rows == 0 or csr.n_features == 0:
        raise ValueError(
            "Expected X to hold at least one sample and feature, got shape "
            f"{(csr.n_rows, csr.n_features)}."
        )
    dtype = csr.values.dtype
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    if metric == "precomputed":
        _check_sparse_precomputed(csr.crow, csr.col, csr.values, (csr.n_rows, csr.n_features))
    target = v.resolve_device(device, csr.values.device)
    rows = sparse_rows(
        csr.crow,
        csr.col,
        csr.values,
        csr.n_features,
        device=target,
        dtype=_device.widest_float(target),
        metric="cosine" if metric == "cosine" else "euclidean",
    ).with_row_of()
    return _Samples(None, rows, csr.kind, dtype)


def _check_sparse_precomputed(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> None:
    """:func:`_check_precomputed` of a sparse matrix (missing entries are 0)."""
    if shape[0] != shape[1]:
        raise ValueError(
            "Expected X to be a square distance matrix of shape (n_samples, n_samples) with "
            f"metric='precomputed', got shape {shape}."
        )
    row_of = torch.repeat_interleave(torch.arange(shape[0], device=crow.device), crow.diff())
    diagonal = values[col == row_of]
    if bool((diagonal.abs() > 100 * torch.finfo(values.dtype).eps).any()):
        raise ValueError(
            "The precomputed distance matrix contains non-zero elements on the diagonal. "
            "Use np.fill_diagonal(X, 0)."
        )


def _sparse_columns(rows: SparseRows, indices: torch.Tensor) -> SparseRows:
    """Columns ``indices`` (distinct) of sparse ``rows``, in that order."""
    where = torch.full((rows.n_features,), -1, dtype=torch.int64, device=rows.device)
    where[indices] = torch.arange(int(indices.numel()), device=rows.device)
    col = where[rows.col]
    kept = col >= 0
    row_of = rows.row_of[kept]
    crow = torch.zeros(rows.n_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(row_of, minlength=rows.n_rows), 0, out=crow[1:])
    values = rows.values[kept]
    sq_norms = torch.zeros_like(rows.sq_norms).index_add_(0, row_of, values.square())
    return SparseRows(crow, col[kept], values, row_of, sq_norms, int(indices.numel()), rows.metric)


def silhouette_samples(
    X: Any,
    labels: Any,
    *,
    metric: str = "euclidean",
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """Silhouette coefficient of every sample, as ``sklearn.metrics.silhouette_samples``.

    ``s = (b - a) / max(a, b)`` with ``a`` the mean distance to the other
    members of the sample's cluster and ``b`` the mean distance to the
    members of the nearest other cluster; 0 for a sample alone in its cluster.
    Exact: every pairwise distance is computed, one block of rows at a time,
    in float64 for float32 ``X`` (the samples keep the dtype of ``X``); for
    ``"sqeuclidean"`` and ``"cosine"`` their sums over a cluster come from its
    mean, ``sum |x - y|^2 = |C| |x - m_C|^2 + sum |y - m_C|^2``, at the cost
    of distances to the means.

    Parameters
    ----------
    X : array-like, Tensor or sparse matrix of shape (n_samples, n_features)
        A ``scipy.sparse`` matrix (any format) or torch sparse tensor is
        measured as scikit-learn measures CSR: not centred, from the stored
        values (euclidean: the products of pairs of rows that share a
        feature, each pair once, the others from their norms; cosine and
        sqeuclidean: products with the sum of each cluster's rows; manhattan:
        the features rows share); euclidean and manhattan with a tenth or
        more stored, against dense blocks of rows. ``"precomputed"`` is
        densified a block of rows at a time (missing entries are distances
        of 0). Never densified whole.
    labels : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster label of every sample (any integers, or strings for numpy);
        a 2-D array holds several labellings of the same data.
    metric : {"euclidean", "sqeuclidean", "cosine", "manhattan", "precomputed"}, default="euclidean"
        Distance between samples (``"cosine"`` is ``1 - cos``; ``"l2"``,
        ``"l1"`` and ``"cityblock"`` are accepted as in scikit-learn). With
        ``"precomputed"``, ``X`` is the ``(n_samples, n_samples)`` matrix of
        distances, with a zero diagonal.
    memory_budget : int, optional
        Bytes a block of distances may take (default 256 MiB, less on the CPU).
    device : str or torch.device, optional
        Where to compute: None is where the data is.

    Returns
    -------
    array or Tensor of shape (n_samples,) or (batch, n_samples)
        numpy for numpy input, a tensor on the device for tensor input.

    Raises
    ------
    ValueError
        If the number of distinct labels of a single labelling is not
        between 2 and n_samples - 1, or shapes do not match.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [10.0], [12.0]])
    >>> silhouette_samples(X, [0, 0, 1, 1]).round(4).tolist()
    [0.9091, 0.9, 0.7895, 0.8261]
    """
    metric = _check_silhouette_metric(metric)
    memory_budget = _check_memory_budget(memory_budget)
    data = _silhouette_input(X, metric, device)
    tensor, batched = _label_tensor(labels, data.n, data.device)
    encoded = _encode(tensor, batched, data.dtype)
    valid = _valid(encoded, data.n)
    samples = _silhouette(data.pairs(metric, memory_budget), data.dtype, encoded, memory_budget)
    samples = torch.where(valid.unsqueeze(1), samples, torch.full_like(samples, float("nan")))
    return data.kind.out(samples if batched else samples[0])


def silhouette_score(
    X: Any,
    labels: Any,
    *,
    metric: str = "euclidean",
    sample_size: int | None = None,
    random_state: Any = None,
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """Mean silhouette coefficient, as ``sklearn.metrics.silhouette_score``.

    Parameters
    ----------
    X : array-like, Tensor or sparse matrix of shape (n_samples, n_features)
        Sparse as in :func:`silhouette_samples`.
    labels : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
    metric : {"euclidean", "sqeuclidean", "cosine", "manhattan", "precomputed"}, default="euclidean"
        As in :func:`silhouette_samples`.
    sample_size : int, optional
        Score a random subset of this many samples (the same subset for
        every labelling of a batch). With an int or numpy ``random_state``
        the subset is the one scikit-learn draws for the same seed; a size
        past n_samples scores every sample, as scikit-learn does.
    random_state : int, numpy RandomState/Generator, torch.Generator or None
        Seed of the subset (used only with ``sample_size``).
    memory_budget : int, optional
        Bytes a block of distances may take.
    device : str or torch.device, optional
        Where to compute: None is where the data is.

    Returns
    -------
    float, or array or Tensor of shape (batch,)
        A float for one labelling; for a batch, one score per labelling,
        NaN where fewer than 2 or more than n_samples - 1 clusters exist.

    Raises
    ------
    ValueError
        If a single labelling has fewer than 2 or more than n_samples - 1
        distinct labels, or ``sample_size`` is not a positive int.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [10.0], [12.0]])
    >>> round(silhouette_score(X, [0, 0, 1, 1]), 6)
    0.856163
    """
    metric = _check_silhouette_metric(metric)
    memory_budget = _check_memory_budget(memory_budget)
    data = _silhouette_input(X, metric, device)
    tensor, batched = _label_tensor(labels, data.n, data.device)
    if sample_size is not None:
        n = data.n
        sample_size = v.check_positive_int(sample_size, "sample_size")
        # Past n_samples: every sample, as scikit-learn's permutation(n)[:size].
        indices = _subset(n, min(sample_size, n), random_state, data.device)
        data, tensor = data.subset(indices, metric), tensor[:, indices]
    encoded = _encode(tensor, batched, data.dtype)
    valid = _valid(encoded, data.n)
    samples = _silhouette(data.pairs(metric, memory_budget), data.dtype, encoded, memory_budget)
    return _result(samples.mean(-1, dtype=torch.float64), valid, encoded, data.kind)


def _subset(n: int, size: int, random_state: Any, device: torch.device) -> torch.Tensor:
    """``size`` distinct indices: scikit-learn's ``permutation(n)[:size]`` for numpy seeds."""
    if isinstance(random_state, torch.Generator):
        permutation = torch.randperm(n, generator=random_state, device=random_state.device)
        return permutation[:size].to(device)
    if random_state is None:
        rng: Any = np.random.mtrand._rand
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        rng = np.random.RandomState(int(random_state))
    elif isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        rng = random_state
    else:
        raise TypeError(
            "Expected random_state to be None, an int, a numpy RandomState/Generator "
            f"or a torch.Generator, got {random_state!r}."
        )
    return torch.as_tensor(rng.permutation(n)[:size], device=device)


# ------------------------------------------------- scores from cluster means


class _Dispersion(NamedTuple):
    centroids: torch.Tensor  # (b, K, d) float64 cluster means (0 beyond k_i)
    squared: torch.Tensor  # (b,) sum of squared distances to the own centroid
    distance_sums: torch.Tensor  # (b, K) sum of (not squared) distances per cluster


def _rows(n: int, b: int, d: int, memory_budget: int | None) -> int:
    """Rows of a block whose ``b`` labellings' float64 differences to the
    centres (three temporaries of ``(b, rows, d)``) fit ``memory_budget``."""
    budget = 64 * 2**20 if memory_budget is None else memory_budget
    return max(1, min(n, budget // max(1, b * d * 8 * 3)))


def _dispersion(x: torch.Tensor, encoded: _Labels, memory_budget: int | None) -> _Dispersion:
    """Cluster means and distances to them, in float64, in blocks of rows."""
    n, d = x.shape
    b, width = encoded.counts.shape
    acc = _device.widest_float(x.device)
    flat = encoded.codes + torch.arange(b, device=x.device).unsqueeze(1) * width
    rows = _rows(n, b, d, memory_budget)
    sums = torch.zeros((b * width, d), dtype=acc, device=x.device)
    for start in range(0, n, rows):
        block = x[start : start + rows].to(acc)
        for row in range(b):
            sums.index_add_(0, flat[row, start : start + rows], block)
    counts = encoded.counts.to(acc)
    centroids = (sums.view(b, width, d) / counts.clamp_min(1).unsqueeze(-1)).view(b * width, d)
    squared = torch.zeros(b, dtype=acc, device=x.device)
    distance_sums = torch.zeros(b * width, dtype=acc, device=x.device)
    for start in range(0, n, rows):
        block = x[start : start + rows].to(acc)
        index = flat[:, start : start + rows]
        difference = block.unsqueeze(0) - centroids.index_select(0, index.reshape(-1)).view(
            b, -1, d
        )
        point_squared = difference.square_().sum(-1)  # (b, m)
        squared += point_squared.sum(-1)
        distance_sums.index_add_(0, index.reshape(-1), point_squared.sqrt_().reshape(-1))
    return _Dispersion(centroids.view(b, width, d), squared, distance_sums.view(b, width))


def _cluster_statistics(
    X: Any, labels: Any, memory_budget: int | None, device: str | torch.device | None
) -> tuple[torch.Tensor, v.OutputKind, _Labels, torch.Tensor, Any]:
    """Data, output kind, encoded labels, validity and per-cluster dispersion.

    The shared first steps of the centroid-based scores (Calinski-Harabasz,
    Davies-Bouldin).
    """
    memory_budget = _check_memory_budget(memory_budget)
    x, kind = _as_data(X, device)
    tensor, batched = _label_tensor(labels, x.shape[0], x.device)
    encoded = _encode(tensor, batched, torch.float64)
    valid = _valid(encoded, x.shape[0])
    return x, kind, encoded, valid, _dispersion(x, encoded, memory_budget)


def calinski_harabasz_score(
    X: Any,
    labels: Any,
    *,
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """Calinski-Harabasz index (variance ratio), as ``sklearn.metrics.calinski_harabasz_score``.

    ``[B / (k - 1)] / [W / (n - k)]`` with B the between-cluster and W the
    within-cluster sum of squares; higher is better; 1.0 when W is 0.

    Parameters
    ----------
    X : array-like or Tensor of shape (n_samples, n_features)
    labels : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
    memory_budget : int, optional
        Bytes a block of rows may take.
    device : str or torch.device, optional
        Where to compute: None is where the data is.

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Raises
    ------
    ValueError
        If a single labelling has fewer than 2 or more than n_samples - 1
        distinct labels.
    TypeError
        If ``X`` is sparse (scikit-learn takes dense ``X`` only here).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [10.0], [12.0]])
    >>> round(calinski_harabasz_score(X, [0, 0, 1, 1]), 6)
    88.2
    """
    x, kind, encoded, valid, dispersion = _cluster_statistics(X, labels, memory_budget, device)
    score = _scale_invariant(_calinski_harabasz, x, encoded, valid, dispersion, memory_budget)
    return _result(score, valid, encoded, kind)


def _calinski_harabasz(x: torch.Tensor, encoded: _Labels, dispersion: _Dispersion) -> torch.Tensor:
    counts = encoded.counts.to(dispersion.centroids.dtype)
    # The mean of the data from the cluster sums: x.to(float64).mean(0) held
    # a float64 copy of all rows whatever memory_budget (2x float32 data).
    n = x.shape[0]
    mean = (counts.unsqueeze(-1) * dispersion.centroids).sum(1, keepdim=True) / n  # (b, 1, d)
    between = (counts * (dispersion.centroids - mean).square().sum(-1)).sum(-1)
    within = dispersion.squared
    k = encoded.n_clusters.to(mean.dtype)
    score = between * (n - k) / (within * (k - 1))
    return torch.where(within == 0, torch.ones_like(score), score)


def _scale_invariant(
    score_of: Any,
    x: torch.Tensor,
    encoded: _Labels,
    valid: torch.Tensor,
    dispersion: _Dispersion,
    memory_budget: int | None,
) -> torch.Tensor:
    """``score_of(x, encoded, dispersion)``, a score that a power of two
    scaling ``x`` leaves as it is: taken again from ``x`` scaled (exactly)
    when the squares of float64 rows overflowed it (near 1e152: inf or NaN).
    One host read."""
    score = score_of(x, encoded, dispersion)
    if bool(torch.where(valid, score, 0.0).isfinite().all()):
        return score
    # Largest entry into [0.5, 1): sums over the rows of squares stay finite.
    largest = float(x.abs().amax())
    if not 0 < largest < math.inf:
        return score
    acc = _device.widest_float(x.device)
    x = times_power_of_two(x.to(acc), -math.frexp(largest)[1])
    return score_of(x, encoded, _dispersion(x, encoded, memory_budget))


def davies_bouldin_score(
    X: Any,
    labels: Any,
    *,
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """Davies-Bouldin index, as ``sklearn.metrics.davies_bouldin_score``.

    The mean over clusters of the largest ``(s_i + s_j) / d(c_i, c_j)``, with
    ``s_i`` the mean distance of cluster i's points to its centroid; lower is
    better, 0 is the minimum.

    Parameters
    ----------
    X : array-like or Tensor of shape (n_samples, n_features)
    labels : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
    memory_budget : int, optional
        Bytes a block of rows may take.
    device : str or torch.device, optional
        Where to compute: None is where the data is.

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Raises
    ------
    ValueError
        If a single labelling has fewer than 2 or more than n_samples - 1
        distinct labels.
    TypeError
        If ``X`` is sparse (scikit-learn takes dense ``X`` only here).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [10.0], [12.0]])
    >>> round(davies_bouldin_score(X, [0, 0, 1, 1]), 6)
    0.142857
    """
    x, kind, encoded, valid, dispersion = _cluster_statistics(X, labels, memory_budget, device)
    score = _scale_invariant(_davies_bouldin, x, encoded, valid, dispersion, memory_budget)
    return _result(score, valid, encoded, kind)


def _davies_bouldin(_: torch.Tensor, encoded: _Labels, dispersion: _Dispersion) -> torch.Tensor:
    counts = encoded.counts.to(dispersion.squared.dtype)
    real = counts > 0  # (b, K): clusters that exist in each labelling
    spread = dispersion.distance_sums / counts.clamp_min(1)
    centroids = dispersion.centroids
    # Differences one pair at a time (exact, as the broadcast was): the
    # broadcast held b * k * k * d float64 (2 GB for k = 1000, d = 128).
    between = torch.cdist(centroids, centroids, compute_mode="donot_use_mm_for_euclid_dist")
    pair = real.unsqueeze(2) & real.unsqueeze(1)
    # scikit-learn returns 0 when all spreads or all centroid distances are
    # zero (np.allclose to 0, atol 1e-8), and skips coincident centroids.
    tiny = 1e-8
    degenerate = ((spread.abs() <= tiny) | ~real).all(-1) | ((between <= tiny) | ~pair).all(-1).all(
        -1
    )
    infinity = torch.tensor(float("inf"), dtype=between.dtype, device=between.device)
    between = torch.where(between == 0, infinity, between)
    ratio = (spread.unsqueeze(2) + spread.unsqueeze(1)) / between
    ratio = torch.where(pair, ratio, -infinity)
    worst = ratio.amax(-1)
    score = torch.where(real, worst, torch.zeros_like(worst)).sum(-1) / real.sum(-1)
    return torch.where(degenerate, torch.zeros_like(score), score)


def inertia(
    X: Any,
    labels: Any = None,
    centers: Any = None,
    *,
    sample_weight: Any = None,
    memory_budget: int | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """Sum of squared euclidean distances of the samples to their cluster centre.

    With ``centers`` only, every sample goes to its nearest centre (as
    ``KMeans.inertia_``); with ``labels`` only, the centres are the cluster
    means (the within-cluster sum of squares); with both, sample i goes to
    ``centers[labels[i]]``.

    Parameters
    ----------
    X : array-like or Tensor of shape (n_samples, n_features)
    labels : array-like or Tensor of shape (n_samples,) or (batch, n_samples), optional
        With ``centers``: indices into them; without: any cluster labels.
    centers : array-like or Tensor of shape (k, n_features) or (batch, k, n_features), optional
    sample_weight : array-like or Tensor of shape (n_samples,), optional
    memory_budget : int, optional
        Bytes a block of distances may take.
    device : str or torch.device, optional
        Where to compute: None is where the data is.

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Raises
    ------
    ValueError
        If neither ``labels`` nor ``centers`` is given, shapes do not match,
        or a label is not an index into ``centers``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [10.0], [12.0]])
    >>> inertia(X, centers=[[0.5], [11.0]])
    2.5
    >>> inertia(X, labels=[0, 0, 1, 1])
    2.5
    """
    memory_budget = _check_memory_budget(memory_budget)
    if labels is None and centers is None:
        raise ValueError("Expected labels or centers (or both), got neither.")
    x, kind = _as_data(X, device)
    n, d = x.shape
    acc = _device.widest_float(x.device)
    weights = v.check_sample_weight(sample_weight, n, device=x.device, dtype=acc)
    centres = None
    if centers is not None:
        ndim = centers.ndim if isinstance(centers, torch.Tensor) else np.ndim(centers)
        centres, _ = v.as_tensor(centers, "centers", device=x.device, ndim=ndim)
        if centres.ndim not in (2, 3) or centres.shape[-1] != d or 0 in centres.shape[:-1]:
            raise ValueError(
                f"Expected centers to be of shape (k, {d}) or (batch, k, {d}) with k >= 1, "
                f"got shape {tuple(centres.shape)}."
            )
    if labels is None and centres is not None:
        batched = centres.ndim == 3
        # Shifted in the wider dtype before any rounding to the data's:
        # float64 centres of float32 data at 1e6 were rounded to float32
        # first, 0.2% off the inertia those centres give with labels.
        wide = torch.promote_types(centres.dtype, x.dtype)
        c3 = centres.to(wide) if batched else centres.to(wide).unsqueeze(0)
        offset = c3.mean((0, 1)).to(x.dtype)
        c3 = (c3 - offset.to(wide)).to(x.dtype)
        distances = nearest_centroids(x - offset, c3, memory_budget=memory_budget)
        per_point = distances.distances.to(acc)  # (b, n)
    else:
        tensor, label_batched = _label_tensor(labels, n, x.device, indices=centres is not None)
        if centres is None:
            encoded = _encode(tensor, label_batched, acc)
            if weights is not None:
                return _weighted_within(x, encoded, weights, kind, memory_budget)
            dispersion = _dispersion(x, encoded, memory_budget)
            value = dispersion.squared
            return kind.out(value) if label_batched else float(value[0])
        batched = label_batched or centres.ndim == 3
        c3 = centres.to(acc) if centres.ndim == 3 else centres.to(acc).unsqueeze(0)
        k = c3.shape[1]
        if bool(((tensor < 0) | (tensor >= k)).any()):
            raise ValueError(f"Expected labels to be indices into centers, in [0, {k}).")
        b = max(tensor.shape[0], c3.shape[0])
        if tensor.shape[0] not in (1, b) or c3.shape[0] not in (1, b):
            raise ValueError(
                f"Expected labels and centers with the same batch size (or one of them "
                f"unbatched), got {tensor.shape[0]} labellings and {c3.shape[0]} sets of centers."
            )
        tensor, c3 = tensor.expand(b, n), c3.expand(b, k, d)
        # In blocks of rows: the centres of all n rows at once, in float64,
        # took 4x the float32 data for one labelling (16x for four).
        per_point = torch.empty((b, n), dtype=acc, device=x.device)
        rows = _rows(n, b, d, memory_budget)
        for start in range(0, n, rows):
            index = tensor[:, start : start + rows]
            chosen = c3.gather(1, index.unsqueeze(-1).expand(*index.shape, d))
            difference = x[start : start + rows].to(acc).unsqueeze(0) - chosen
            per_point[:, start : start + rows] = difference.square_().sum(-1)
    if weights is not None:
        per_point = per_point * weights
    value = per_point.sum(-1, dtype=acc)
    return kind.out(value) if batched else float(value[0])


def _weighted_within(
    x: torch.Tensor,
    encoded: _Labels,
    weights: torch.Tensor,
    kind: v.OutputKind,
    memory_budget: int | None,
) -> Any:
    """Weighted within-cluster sum of squares around the weighted cluster means,
    in blocks of rows as :func:`_dispersion`."""
    n, d = x.shape
    b, width = encoded.counts.shape
    acc = weights.dtype
    flat = encoded.codes + torch.arange(b, device=x.device).unsqueeze(1) * width
    rows = _rows(n, b, d, memory_budget)
    totals = torch.zeros((b * width, d), dtype=acc, device=x.device)
    mass = torch.zeros(b * width, dtype=acc, device=x.device)
    for start in range(0, n, rows):
        block_weights = weights[start : start + rows]
        weighted = x[start : start + rows].to(acc) * block_weights.unsqueeze(1)
        for row in range(b):
            totals.index_add_(0, flat[row, start : start + rows], weighted)
            mass.index_add_(0, flat[row, start : start + rows], block_weights)
    centroids = totals / mass.clamp_min(torch.finfo(acc).tiny).unsqueeze(1)
    value = torch.zeros(b, dtype=acc, device=x.device)
    for start in range(0, n, rows):
        index = flat[:, start : start + rows]
        difference = x[start : start + rows].to(acc).unsqueeze(0) - centroids.index_select(
            0, index.reshape(-1)
        ).view(b, -1, d)
        value += (difference.square_().sum(-1) * weights[start : start + rows]).sum(-1)
    return kind.out(value) if encoded.batched else float(value[0])


# ------------------------------------------- comparisons with reference labels

# Terms of the expected mutual information evaluated at once (float64, a few
# tensors of this many elements: 32 MiB each).
_EMI_TERMS = 1 << 22
# Counts n_ij whose probability bound is below exp(-_EMI_TAIL) are left out.
_EMI_TAIL = 70.0
_AVERAGES = ("arithmetic", "geometric", "max", "min")


class _Comparison(NamedTuple):
    """Two labellings of the same samples, per labelling of a batch, in float64."""

    n: int
    true_counts: torch.Tensor  # (b, Kt) class sizes, 0 beyond k
    pred_counts: torch.Tensor  # (b, Kp) cluster sizes, 0 beyond k
    classes: torch.Tensor  # (b,) int64
    clusters: torch.Tensor  # (b,) int64
    mutual_info: torch.Tensor  # (b,) as sklearn.metrics.mutual_info_score
    squares: torch.Tensor  # (b,) int64 sum of the squared contingency counts
    identical: torch.Tensor  # (b,) bool: one partition twice (one cell per class and cluster)
    batched: bool
    kind: v.OutputKind

    def entropy(self, counts: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Entropy of each labelling from its cluster sizes (scikit-learn's
        ``_entropy``: 1.0 for no samples, 0.0 for one cluster)."""
        if self.n == 0:
            return torch.ones(counts.shape[0], dtype=torch.float64, device=counts.device)
        log_n = math.log(self.n)
        terms = torch.where(counts > 0, counts / self.n * (counts.log() - log_n), 0.0)
        return torch.where(k > 1, -terms.sum(1), 0.0)

    def out(self, values: torch.Tensor | list[float]) -> Any:
        if isinstance(values, list):
            values = torch.tensor(values, dtype=torch.float64, device=self.classes.device)
        return self.kind.out(values) if self.batched else float(values[0])


def _labels_shape(labels: Any) -> tuple[int, ...]:
    if isinstance(labels, torch.Tensor):
        return tuple(labels.shape)
    return tuple(np.shape(labels))


def _named_labels(labels: Any, n: int, device: torch.device, name: str) -> torch.Tensor:
    """:func:`_label_tensor`, its errors naming which of the two labellings is wrong."""
    try:
        return _label_tensor(labels, n, device)[0]
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("Expected labels ", f"Expected {name} ", 1)) from None


def _compare(labels_true: Any, labels_pred: Any) -> _Comparison:
    """The contingency statistics of ``labels_pred`` against ``labels_true``:
    only its nonzero cells are formed (one sort of the pairs of codes), so
    labellings of many clusters take memory in n, not in classes x clusters."""
    shapes = _labels_shape(labels_true), _labels_shape(labels_pred)
    batch = [s[0] for s in shapes if len(s) == 2]
    if (
        any(len(s) not in (1, 2) for s in shapes)
        or shapes[0][-1] != shapes[1][-1]
        or (len(batch) == 2 and batch[0] != batch[1])
    ):
        raise ValueError(
            "Expected labels_true and labels_pred of shape (n_samples,) or (batch, "
            f"n_samples) with the same n_samples and batch, got shapes {shapes[0]} and "
            f"{shapes[1]}."
        )
    tensors = [x for x in (labels_pred, labels_true) if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    kind = v.OutputKind(bool(tensors), device if tensors else None)
    n, b, batched = shapes[1][-1], max(batch, default=1), bool(batch)
    if n == 0:
        zeros = torch.zeros((b, 1), dtype=torch.float64, device=device)
        none = torch.zeros(b, dtype=torch.int64, device=device)
        same = torch.ones(b, dtype=torch.bool, device=device)
        return _Comparison(0, zeros, zeros, none, none, zeros[:, 0], none, same, batched, kind)
    true = _encode(_named_labels(labels_true, n, device, "labels_true"), batched, torch.float64)
    pred = _encode(_named_labels(labels_pred, n, device, "labels_pred"), batched, torch.float64)
    width_true, width_pred = true.width, pred.width
    rows = torch.arange(b, device=device).unsqueeze(1)
    keys = (rows * width_true + true.codes) * width_pred + pred.codes
    if b * width_true * width_pred <= _TABLE_LABELS * keys.numel() + 1024:
        # A table of every cell costs less than sorting the pairs.
        table = torch.bincount(keys.reshape(-1), minlength=b * width_true * width_pred)
        cells = table.nonzero().squeeze(1)
        sizes = table[cells]
    else:
        cells, sizes = torch.unique(keys.reshape(-1), return_counts=True)
    row = cells // (width_true * width_pred)
    i = cells // width_pred % width_true
    j = cells % width_pred
    true_counts = true.counts.expand(b, -1)
    pred_counts = pred.counts.expand(b, -1)
    classes, clusters = true.n_clusters.expand(b), pred.n_clusters.expand(b)
    # scikit-learn's mutual_info_score, term by term (its zeroing of terms
    # below eps included), so that the scores derived from it agree to rounding.
    nij = sizes.to(torch.float64)
    share = nij / n
    outer = true_counts[row, i] * pred_counts[row, j]
    terms = share * (nij.log() - math.log(n)) + share * (2 * math.log(n) - outer.log())
    terms = torch.where(terms.abs() < torch.finfo(torch.float64).eps, 0.0, terms)
    cells_per_row = torch.bincount(row, minlength=b)
    mutual_info = _row_sums(terms, cells_per_row)
    mutual_info = torch.where((classes > 1) & (clusters > 1), mutual_info.clamp_min(0.0), 0.0)
    squares = torch.zeros(b, dtype=torch.int64, device=device)
    squares.index_add_(0, row, sizes.square())
    identical = (cells_per_row == classes) & (classes == clusters)
    return _Comparison(
        n,
        true_counts,
        pred_counts,
        classes,
        clusters,
        mutual_info,
        squares,
        identical,
        batched,
        kind,
    )


def _row_sums(values: torch.Tensor, per_row: torch.Tensor) -> torch.Tensor:
    """Sums of ``values`` laid out row after row, ``per_row[i]`` of row i,
    each summed pairwise: ``index_add_`` adds one after another, and the
    mutual information of 1,000 singletons twice came out 1.7e-14 above the
    entropy (AMI 1.21 instead of 1.0; 1.2e-12 off for 200,000)."""
    b = per_row.shape[0]
    if b == 1:
        return values.sum().reshape(1)
    row = torch.repeat_interleave(torch.arange(b, device=values.device), per_row)
    place = torch.arange(len(values), device=values.device) - (per_row.cumsum(0) - per_row)[row]
    padded = torch.zeros((b, int(per_row.max())), dtype=values.dtype, device=values.device)
    padded[row, place] = values
    return padded.sum(1)


def _check_average(average_method: Any) -> str:
    if average_method not in _AVERAGES:
        raise ValueError(
            f"Expected average_method to be one of {', '.join(map(repr, _AVERAGES))}, "
            f"got {average_method!r}."
        )
    return str(average_method)


def _average(u: torch.Tensor, w: torch.Tensor, method: str) -> torch.Tensor:
    if method == "min":
        return torch.minimum(u, w)
    if method == "max":
        return torch.maximum(u, w)
    if method == "geometric":
        return (u * w).sqrt()
    return (u + w) / 2


def _expected_mutual_info(true_counts: torch.Tensor, pred_counts: torch.Tensor, n: int) -> float:
    """scikit-learn's ``expected_mutual_information`` of one labelling: the
    mean mutual information of random labellings of the same cluster sizes.

    The sum over classes i, clusters j and counts n_ij depends on the sizes
    a_i and b_j only: each pair of distinct sizes is evaluated once, weighted
    by how many pairs have it, and the terms of all pairs are laid end to end
    in chunks of ``_EMI_TERMS``.
    """
    device = true_counts.device
    a, a_times = torch.unique(true_counts[true_counts > 0], return_counts=True)
    b, b_times = torch.unique(pred_counts[pred_counts > 0], return_counts=True)
    # Every pair (a, b) of distinct sizes: a repeated along b.
    a, b = a.repeat_interleave(len(b)), b.repeat(len(a))
    times = (a_times.repeat_interleave(len(b_times)) * b_times.repeat(len(a_times))).double()
    start = (a + b - n).clamp_min(1)
    stop = torch.minimum(a, b)
    # n_ij is hypergeometric, of mean a b / N: farther than t from it, where
    # Bernstein's bound (which holds without replacement, Hoeffding 1963)
    # puts the mass below exp(-_EMI_TAIL), the terms are below float64's
    # rounding of the sum (a window of ~160 of 2,000 counts for 100 clusters
    # of 2,000 samples: 2.1 s to 0.3 s, scikit-learn 1.5 s).
    mean = a * b / n
    t = _EMI_TAIL / 3 + (_EMI_TAIL**2 / 9 + 2 * _EMI_TAIL * mean).sqrt()
    start = torch.maximum(start, (mean - t).floor())
    lengths = (torch.minimum(stop, (mean + t).ceil()) - start + 1).clamp_min(0).long()
    ends = lengths.cumsum(0)
    # Per pair: log a! b! (N-a)! (N-b)! / N!, and log(a b).
    fixed = (
        (torch.lgamma(a + 1) + torch.lgamma(b + 1) + torch.lgamma(n - a + 1))
        + torch.lgamma(n - b + 1)
        - math.lgamma(n + 1)
    )
    log_ab = a.log() + b.log()
    # Chunks of whole pairs, each cut where about _EMI_TERMS terms are done.
    terms = max(int(ends[-1]), _EMI_TERMS)
    marks = torch.arange(_EMI_TERMS, terms, _EMI_TERMS, device=device)
    cuts = sorted(set(torch.searchsorted(ends, marks, right=True).tolist()) | {len(a)})
    total = torch.zeros((), dtype=torch.float64, device=device)
    first = 0
    for last in cuts:
        if last == first:
            continue
        chunk = lengths[first:last]
        pair = torch.repeat_interleave(torch.arange(first, last, device=device), chunk)
        before = (chunk.cumsum(0) - chunk).repeat_interleave(chunk)
        nij = start[pair] + (torch.arange(len(pair), device=device) - before)
        ai, bj = a[pair], b[pair]
        log_p = fixed[pair] - (
            torch.lgamma(nij + 1)
            + torch.lgamma(ai - nij + 1)
            + torch.lgamma(bj - nij + 1)
            + torch.lgamma(n - ai - bj + nij + 1)
        )
        term = nij / n * (math.log(n) + nij.log() - log_ab[pair]) * log_p.exp()
        total += (term * times[pair]).sum()
        first = last
    return float(total)


def _pairs(c: _Comparison) -> list[tuple[int, int, int, int]]:
    """scikit-learn's ``pair_confusion_matrix`` per labelling, as exact
    Python ints ``(tn, fp, fn, tp)`` (their products overflow int64)."""
    true_squares = c.true_counts.long().square().sum(1)
    pred_squares = c.pred_counts.long().square().sum(1)
    tp = c.squares - c.n
    fp = pred_squares - c.squares
    fn = true_squares - c.squares
    tn = c.n * c.n - fp - fn - c.squares
    return list(zip(*(t.tolist() for t in (tn, fp, fn, tp))))


def adjusted_rand_score(labels_true: Any, labels_pred: Any) -> Any:
    """Rand index adjusted for chance, as ``sklearn.metrics.adjusted_rand_score``.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).

    Returns
    -------
    float, or array or Tensor of shape (batch,)
        1.0 for identical partitions (up to a permutation of the labels),
        about 0.0 for random ones; a Tensor when either input is one.

    Raises
    ------
    ValueError
        If the labellings differ in n_samples or batch, or are not 1-D or 2-D.

    Examples
    --------
    >>> adjusted_rand_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> round(adjusted_rand_score([0, 0, 1, 2], [0, 0, 1, 1]), 6)
    0.571429
    """
    values = []
    for tn, fp, fn, tp in _pairs(c := _compare(labels_true, labels_pred)):
        if fn == 0 and fp == 0:
            values.append(1.0)
        else:
            values.append(
                2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
            )
    return c.out(values)


def rand_score(labels_true: Any, labels_pred: Any) -> Any:
    """Share of pairs of samples on which the labellings agree, as ``sklearn.metrics.rand_score``.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Examples
    --------
    >>> round(rand_score([0, 0, 1, 2], [0, 0, 1, 1]), 6)
    0.833333
    """
    values = []
    for tn, fp, fn, tp in _pairs(c := _compare(labels_true, labels_pred)):
        agree, pairs = tn + tp, tn + fp + fn + tp
        values.append(1.0 if agree == pairs or pairs == 0 else agree / pairs)
    return c.out(values)


def mutual_info_score(labels_true: Any, labels_pred: Any) -> Any:
    """Mutual information of two labellings (natural log), as ``sklearn.metrics.mutual_info_score``.

    Only the nonzero cells of the contingency table are formed.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).

    Returns
    -------
    float, or array or Tensor of shape (batch,)
        0.0 when either labelling has one cluster (or no samples).

    Examples
    --------
    >>> round(mutual_info_score([0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 1]), 6)
    0.056633
    """
    c = _compare(labels_true, labels_pred)
    return c.out(c.mutual_info)


def homogeneity_completeness_v_measure(
    labels_true: Any, labels_pred: Any, *, beta: float = 1.0
) -> tuple[Any, Any, Any]:
    """Homogeneity, completeness and V-measure at once, as scikit-learn's function of that name.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).
    beta : float, default=1.0
        Weight of homogeneity against completeness in the V-measure.

    Returns
    -------
    (homogeneity, completeness, v_measure) : floats, or arrays or Tensors of shape (batch,)

    Raises
    ------
    ValueError
        If ``beta`` is negative, or the labellings differ in shape.

    Examples
    --------
    >>> h, c, v = homogeneity_completeness_v_measure([0, 0, 1, 1], [0, 0, 1, 2])
    >>> round(h, 6), round(c, 6), round(v, 6)
    (1.0, 0.666667, 0.8)
    """
    beta = v.check_nonnegative_float(beta, "beta")
    c = _compare(labels_true, labels_pred)
    entropy_true = c.entropy(c.true_counts, c.classes)
    entropy_pred = c.entropy(c.pred_counts, c.clusters)
    one = torch.ones_like(c.mutual_info)
    homogeneity = torch.where(entropy_true != 0, c.mutual_info / entropy_true, one)
    completeness = torch.where(entropy_pred != 0, c.mutual_info / entropy_pred, one)
    v_measure = torch.where(
        homogeneity + completeness == 0,
        0.0,
        (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness),
    )
    if c.n == 0:
        homogeneity = completeness = v_measure = one
    return c.out(homogeneity), c.out(completeness), c.out(v_measure)


def homogeneity_score(labels_true: Any, labels_pred: Any) -> Any:
    """Whether each cluster holds one class only, as ``sklearn.metrics.homogeneity_score``.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Examples
    --------
    >>> round(homogeneity_score([0, 0, 1, 1], [0, 0, 1, 2]), 6)
    1.0
    """
    return homogeneity_completeness_v_measure(labels_true, labels_pred)[0]


def completeness_score(labels_true: Any, labels_pred: Any) -> Any:
    """Whether each class lies in one cluster, as ``sklearn.metrics.completeness_score``.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Examples
    --------
    >>> round(completeness_score([0, 0, 1, 2], [0, 0, 1, 1]), 6)
    1.0
    """
    return homogeneity_completeness_v_measure(labels_true, labels_pred)[1]


def v_measure_score(labels_true: Any, labels_pred: Any, *, beta: float = 1.0) -> Any:
    """Harmonic mean of homogeneity and completeness, as ``sklearn.metrics.v_measure_score``.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).
    beta : float, default=1.0
        Weight of homogeneity against completeness.

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Examples
    --------
    >>> round(v_measure_score([0, 0, 1, 1], [0, 0, 1, 2]), 6)
    0.8
    """
    return homogeneity_completeness_v_measure(labels_true, labels_pred, beta=beta)[2]


def normalized_mutual_info_score(
    labels_true: Any, labels_pred: Any, *, average_method: str = "arithmetic"
) -> Any:
    """Mutual information over a mean of the entropies, as scikit-learn's function of that name.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).
    average_method : {"arithmetic", "geometric", "max", "min"}, default="arithmetic"
        Mean of the two entropies that normalises.

    Returns
    -------
    float, or array or Tensor of shape (batch,)

    Raises
    ------
    ValueError
        If ``average_method`` is not one of those, or the labellings differ in shape.

    Examples
    --------
    >>> normalized_mutual_info_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> normalized_mutual_info_score([0, 0, 0, 0], [0, 1, 2, 3])
    0.0
    """
    method = _check_average(average_method)
    c = _compare(labels_true, labels_pred)
    normalizer = _average(
        c.entropy(c.true_counts, c.classes), c.entropy(c.pred_counts, c.clusters), method
    )
    value = torch.where(c.mutual_info == 0, 0.0, c.mutual_info / normalizer)
    # One cluster in both (or no samples): the same partition.
    value = torch.where((c.classes == c.clusters) & (c.classes <= 1), 1.0, value)
    return c.out(value)


def adjusted_mutual_info_score(
    labels_true: Any, labels_pred: Any, *, average_method: str = "arithmetic"
) -> Any:
    """Mutual information adjusted for chance, as ``sklearn.metrics.adjusted_mutual_info_score``.

    The expected mutual information sums over pairs of distinct class and
    cluster sizes (not over every class and cluster), on the labels' device.

    Parameters
    ----------
    labels_true : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Reference labels (classes), of any kind scikit-learn takes.
    labels_pred : array-like or Tensor of shape (n_samples,) or (batch, n_samples)
        Cluster labels to score; either argument may be a batch of
        labellings, each row scored against the other's row (or its one
        labelling).
    average_method : {"arithmetic", "geometric", "max", "min"}, default="arithmetic"
        Mean of the two entropies that normalises.

    Returns
    -------
    float, or array or Tensor of shape (batch,)
        1.0 for identical partitions, about 0.0 for random ones.

    Raises
    ------
    ValueError
        If ``average_method`` is not one of those, or the labellings differ in shape.

    Examples
    --------
    >>> adjusted_mutual_info_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> round(adjusted_mutual_info_score([0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 2]), 6)
    0.502361
    """
    method = _check_average(average_method)
    c = _compare(labels_true, labels_pred)
    normalizer = _average(
        c.entropy(c.true_counts, c.classes), c.entropy(c.pred_counts, c.clusters), method
    ).tolist()
    eps = float(np.finfo(np.float64).eps)
    values = []
    rows = zip(
        c.identical.tolist(),
        c.classes.tolist(),
        c.clusters.tolist(),
        c.mutual_info.tolist(),
        normalizer,
    )
    for row, (same, classes, clusters, mutual_info, norm) in enumerate(rows):
        if same:
            # One partition twice (one cluster each, or none, included): the
            # mutual information is both entropies, and AMI 1.0 exactly, not
            # the ratio of two rounding errors where the expectation equals
            # them too (1,000 singletons twice: 1.21 before).
            values.append(1.0)
        elif classes == 1 or clusters == 1:
            values.append(0.0)
        else:
            emi = _expected_mutual_info(c.true_counts[row], c.pred_counts[row], c.n)
            # Kept away from zero with its sign, as scikit-learn: equal
            # expectation and maximum (a perfect match) is not 0 / 0.
            below = norm - emi
            below = min(below, -eps) if below < 0 else max(below, eps)
            above = mutual_info - emi
            above = min(above, -eps) if above < 0 else max(above, eps)
            values.append(above / below)
    return c.out(values)
