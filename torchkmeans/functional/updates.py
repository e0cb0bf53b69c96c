"""Centroid updates: scatter sums and counts, division, empty clusters.

The Lloyd loop keeps the data with an extra column of ones, ``[x | 1]``, so a
single ``index_add_`` of weighted rows into ``(b*k, d+1)`` "totals" gives each
cluster's weighted sum (first d columns) and total weight (last column) at
once, for a whole batch of b problems. Empty clusters are reseeded without a
host-side branch (``torch.where``) from the points farthest from their
centroids, following scikit-learn's rule.
"""

from __future__ import annotations

import torch

from .. import _validation as v
from . import _device
from .distances import compute_dtype, unit_rows

__all__ = [
    "accumulate",
    "add_rows",
    "centroids_from_sums",
    "copies_of_heaviest",
    "relocate_empty_clusters",
    "scatter_sums",
    "with_ones_column",
]


def with_ones_column(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[x | 1]``: a copy of ``x`` with a trailing column of ones.

    Examples
    --------
    >>> with_ones_column(torch.tensor([[2.0], [3.0]]))
    tensor([[2., 1.],
            [3., 1.]])
    """
    out = torch.empty((*x.shape[:-1], x.shape[-1] + 1), dtype=dtype or x.dtype, device=x.device)
    out[..., :-1] = x
    out[..., -1] = 1.0
    return out


# Up to this many clusters, rows shared by several problems are summed by a
# one-hot matrix product (2*k flops per element) rather than index_add_ (about
# as costly as 2*24 flops per element on one core).
_ONE_HOT_MAX_K = 16


# On the CPU, index_add_ along dim 0 of rows narrower than 16 elements runs
# 3-12x slower than one 1-D scatter per column once the source holds 2^15
# elements or more (torch 2.13, measured in-process: 100,000 rows of width 3
# into 64 clusters 2.5 ms against 0.23 ms; 16,384 rows of width 9, 1.05 ms
# against 0.2 ms). From width 16 on, and below 2^15 elements, rows are faster.
_COLUMN_SCATTER_MAX_WIDTH = 15
_COLUMN_SCATTER_MIN_ELEMENTS = 1 << 15


def add_rows(
    target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, *, alpha: float = 1.0
) -> None:
    """``target.index_add_(0, index, rows, alpha=alpha)`` for 2-D ``target`` and ``rows``.

    Narrow rows on the CPU are added column by column into a transposed
    buffer (see ``_COLUMN_SCATTER_MAX_WIDTH``): each column receives its
    rows in the same order, so a zero ``target`` gets the same sums.

    Examples
    --------
    >>> target = torch.zeros(2, 2)
    >>> rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> add_rows(target, torch.tensor([1, 1, 0]), rows)
    >>> target
    tensor([[5., 6.],
            [4., 6.]])
    """
    width = rows.shape[1]
    if (
        _device.on_host(rows.device)
        and width <= _COLUMN_SCATTER_MAX_WIDTH
        and rows.numel() >= _COLUMN_SCATTER_MIN_ELEMENTS
    ):
        columns = torch.zeros((width, target.shape[0]), dtype=target.dtype, device=target.device)
        columns.index_add_(1, index, rows.T, alpha=alpha)
        target.add_(columns.T)
    else:
        target.index_add_(0, index, rows, alpha=alpha)


def _flat_labels(labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Labels of a ``(b, m)`` batch offset into ``[0, b*k)`` and flattened."""
    b = labels.shape[0]
    if b == 1:
        return labels.reshape(-1)
    offsets = torch.arange(b, device=labels.device).mul_(n_clusters).unsqueeze(1)
    return (labels + offsets).reshape(-1)


def accumulate(
    totals: torch.Tensor,
    xb: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
) -> None:
    """Add one block of ``[x | 1]`` rows into per-cluster totals, in place.

    ``totals`` is ``(b, k, d+1)`` and contiguous; ``xb`` ``(bx, m, d+1)``
    (last column ones) with bx in {1, b}; ``labels`` ``(b, m)``; ``weights``
    ``(bw, m)`` with bw in {1, b}, or None. Afterwards ``totals[..., :d]``
    holds the weighted sums and ``totals[..., d]`` the weights.
    """
    b, k, width = totals.shape
    m = labels.shape[1]
    if xb.dtype != totals.dtype:
        xb = xb.to(totals.dtype)
    if xb.shape[0] == 1 < b and _device.on_host(xb.device):
        # Rows shared by b problems (restarts, a sweep over k): one index_add_
        # per problem into its own small, cache-resident (k, d+1) totals. The
        # single flat index_add_ below would first copy the rows b times,
        # which on the CPU costs more than the scatter itself.
        shared = xb[0]
        if k <= _ONE_HOT_MAX_K:
            # Few clusters: one matrix product of the (b*k, m) one-hot labels
            # with the rows does the same work multithreaded and faster.
            onehot = torch.zeros((b, k, m), dtype=totals.dtype, device=xb.device)
            if weights is None:
                onehot.scatter_(1, labels.unsqueeze(1), 1.0)
            else:
                values = weights.to(totals.dtype).expand(b, m).unsqueeze(1)
                onehot.scatter_(1, labels.unsqueeze(1), values)
            totals.view(b * k, width).addmm_(onehot.view(b * k, m), shared)
            return
        if weights is not None and weights.shape[0] == 1:
            shared = shared * weights[0].to(totals.dtype).unsqueeze(-1)
            weights = None
        for problem in range(b):
            source = shared
            if weights is not None:
                source = shared * weights[problem].to(totals.dtype).unsqueeze(-1)
            add_rows(totals[problem], labels[problem], source)
        return
    if weights is not None:
        xb = xb * weights.to(totals.dtype).unsqueeze(-1)
    source = xb if xb.shape[0] == b else xb.expand(b, m, width)
    add_rows(totals.view(b * k, width), _flat_labels(labels, k), source.reshape(b * m, width))


def scatter_sums(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_clusters: int,
    *,
    sample_weight: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster weighted sums and weights of ``x`` under ``labels``.

    Parameters
    ----------
    x : Tensor
        ``(n, d)`` or ``(b, n, d)``.
    labels : Tensor
        int64, ``(n,)`` or ``(b, n)``, values in ``[0, n_clusters)``.
    n_clusters : int
        Number of clusters k.
    sample_weight : Tensor, optional
        ``(n,)`` or ``(b, n)``.
    dtype : torch.dtype, optional
        Accumulation dtype; float32 for half inputs, else ``x.dtype``.

    Returns
    -------
    (sums, counts)
        ``(k, d)`` and ``(k,)``, or ``(b, k, d)`` and ``(b, k)``.

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point tensor, ``labels`` not an integer
        tensor, or ``n_clusters`` not an int.
    ValueError
        If the shapes do not match, ``n_clusters`` < 1, or (for labels on the
        CPU, where the check needs no device synchronisation) a label lies
        outside ``[0, n_clusters)``: in a batch it would otherwise be added
        silently into a neighbouring problem. On an accelerator a
        device-side assertion checks the labels instead, and fails with a
        ``RuntimeError`` at the next synchronisation.

    Examples
    --------
    >>> x = torch.tensor([[0.0], [2.0], [10.0]])
    >>> scatter_sums(x, torch.tensor([0, 0, 1]), 2)
    (tensor([[ 2.],
            [10.]]), tensor([2., 1.]))
    """
    x = v.check_data(x)
    n_clusters = v.check_n_clusters(n_clusters)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"Expected labels to be an integer tensor, got {got}.")
    n = x.shape[-2]
    bx = x.shape[0] if x.ndim == 3 else 1
    # A 2-D x may be shared by any number of problems; a batch of data sets
    # needs one row of labels per data set.
    shared = bx == 1 and (labels.shape == (n,) or (labels.ndim == 2 and labels.shape[1] == n))
    if labels.shape != (bx, n) and not shared:
        expected = f"({n},)" if bx == 1 else f"({bx}, {n})"
        raise ValueError(
            f"Expected labels to be of shape {expected} (as x {tuple(x.shape)}), "
            f"got shape {tuple(labels.shape)}."
        )
    if labels.numel():
        expected = f"Expected labels in [0, n_clusters={n_clusters})"
        if _device.on_host(labels.device):
            low, high = (int(bound) for bound in torch.aminmax(labels))
            if low < 0 or high >= n_clusters:
                raise ValueError(f"{expected}, got values from {low} to {high}.")
        elif not _device.traced():
            # Reading the bounds would wait for the device: a device-side
            # assertion checks them without a synchronisation and fails at the
            # next one (a label -1 of a batch's second problem was otherwise
            # added silently into the first problem's last cluster).
            in_range = (labels >= 0) & (labels < n_clusters)
            torch._assert_async(in_range.all(), f"{expected}.")
    labels = labels.detach().long()
    sample_weight = v.check_weight_tensor(
        sample_weight, n, labels.shape[0] if labels.ndim == 2 else 1, values=False
    )
    return _scatter_sums(x, labels, n_clusters, sample_weight=sample_weight, dtype=dtype)


def _scatter_sums(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_clusters: int,
    *,
    sample_weight: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scatter_sums` on checked arguments: no host synchronisation (training loops)."""
    batched = x.ndim == 3 or labels.ndim == 2
    x3 = x if x.ndim == 3 else x.unsqueeze(0)
    labels2 = labels if labels.ndim == 2 else labels.unsqueeze(0)
    if dtype is None:
        dtype = compute_dtype(x.dtype)
    b, d = labels2.shape[0], x3.shape[-1]
    weights = None
    if sample_weight is not None:
        weights = sample_weight if sample_weight.ndim == 2 else sample_weight.unsqueeze(0)
    if b == 1 and x3.shape[0] == 1 and _device.on_host(x.device):
        # One problem on the CPU (a mini-batch step): the rows as they are and
        # a bincount, three ops where the ones column below takes eight.
        rows, flat = x3[0].to(dtype), labels2[0]
        w = None if weights is None else weights[0].to(dtype)
        sums = torch.zeros((n_clusters, d), dtype=dtype, device=x.device)
        add_rows(sums, flat, rows if w is None else rows * w.unsqueeze(-1))
        counts = torch.bincount(flat, weights=w, minlength=n_clusters).to(dtype)
        return (sums.unsqueeze(0), counts.unsqueeze(0)) if batched else (sums, counts)
    totals = torch.zeros((b, n_clusters, d + 1), dtype=dtype, device=x.device)
    accumulate(totals, with_ones_column(x3, dtype), labels2, weights)
    sums, counts = totals[..., :d].contiguous(), totals[..., d].contiguous()
    return (sums, counts) if batched else (sums[0], counts[0])


def relocate_empty_clusters(
    totals: torch.Tensor,
    x3: torch.Tensor,
    weights: torch.Tensor | None,
    labels: torch.Tensor,
    distances: torch.Tensor,
    active: torch.Tensor | None = None,
    n_rows: int | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reseed empty clusters from the points farthest from their centroids, in place.

    The j-th empty cluster of a problem takes the j-th farthest point (by
    ``distances``, the distance of each point to its own centroid); the point
    moves out of its old cluster's sum and weight, as in scikit-learn. A
    point off its centroid by rounding only is not taken: the cluster stays
    empty (every point is then on its centroid: duplicate points); when no
    point of a problem is off by more, none is taken, as scikit-learn takes
    none when the largest distance is 0. Points of weight 0 are not taken
    either: they would leave the cluster empty (cosine rows of zeros, which
    the fit weighs 0, are at distance 1, the farthest of most data). Works
    on the whole batch with ``torch.where``: no host synchronisation.

    ``totals`` ``(b, k, d+1)`` as :func:`accumulate` leaves them; ``x3``
    ``(bx, n, d+1)`` rows ``[x | 1]``; ``weights`` ``(bw, n)`` or None;
    ``labels`` and ``distances`` ``(b, n)``; ``active`` ``(b, k)`` marks the
    clusters that exist (padding clusters stay empty); ``n_rows`` is the
    number of rows the centroids were summed from, when the rows given are
    only candidates (default n). ``offset`` ``(1, 1, d)``: ``x3`` is
    ``(1, n, d)``, rows that less ``offset`` are those of ``[x | 1]`` (a fit
    without a centred copy); the few rows taken are centred here.

    Returns ``(b,)`` bool: whether an empty cluster of a problem took a point
    off its centroid. Lloyd's loops do not stop on labels that repeat in
    such an iteration: the centroids moved (copies of one point reseed two
    clusters, the first then keeps all the copies and the second is empty
    again, the labels as before; stopping there returned a centre that is
    not the mean of its points).
    """
    b, k, width = totals.shape
    n = labels.shape[1]
    empty = totals[..., -1] <= 0
    if active is not None:
        empty &= active
    rank = empty.cumsum(-1).sub_(1).clamp_(0, min(k, n) - 1)
    if weights is not None:
        distances = distances.masked_fill(weights <= 0, 0.0)
    if _device.on_host(distances.device):
        # Relocation is rare on the CPU (only when a cluster is empty): a
        # stable sort breaks ties between equally far points by their order,
        # so a problem gives the same result alone or in a batch.
        farthest = distances.sort(dim=-1, descending=True, stable=True).indices[:, : min(k, n)]
    else:
        farthest = distances.topk(min(k, n), dim=-1, sorted=True).indices
    picked = farthest.gather(-1, rank)  # (b, k) point index per cluster slot
    if offset is not None:
        rows = x3[0][picked] - offset[0]  # as a centred copy holds them
        moved = torch.cat([rows, torch.ones_like(rows[..., :1])], -1)
    elif x3.shape[0] == 1:
        moved = x3[0][picked]  # (b, k, d+1)
    else:
        moved = x3.gather(1, picked.unsqueeze(-1).expand(b, k, width))
    # A point off its centroid by rounding only (0 < D <= n eps^2 |x|^2, the
    # rounding of a mean of up to n copies of x) is not taken: its copies sit
    # at their rounded mean, which the exact copy is closer to, so it took
    # their rows and emptied that cluster in turn, every iteration up to
    # max_iter. A point exactly on its centroid is taken, as scikit-learn
    # does: the copy only ties with the centroid, and ties keep their label.
    picked_distances = distances.gather(-1, picked)
    scale = (n if n_rows is None else n_rows) * torch.finfo(x3.dtype).eps ** 2
    rounding = scale * moved[..., :-1].square().sum(-1)
    off = picked_distances > rounding
    positive = picked_distances > 0
    # Every point on its centroid (up to rounding; the farthest are among
    # those picked): nothing is relocated, as scikit-learn does when the
    # largest distance is 0. Zero-distance points moved into empty clusters
    # every iteration and the fit ran to max_iter.
    empty &= (off | ~positive) & off.any(-1, keepdim=True)
    moved = moved.to(totals.dtype)
    if weights is not None:
        moved = moved * weights.expand(b, n).gather(-1, picked).to(totals.dtype).unsqueeze(-1)
    old = _flat_labels(labels.gather(-1, picked), k)
    into = empty.unsqueeze(-1)
    taken = moved * into
    totals.view(b * k, width).index_add_(0, old, taken.reshape(b * k, width), alpha=-1)
    totals.copy_(torch.where(into, moved, totals))
    return (empty & positive).any(-1)


def centroids_from_sums(
    sums: torch.Tensor,
    counts: torch.Tensor,
    previous: torch.Tensor,
    *,
    metric: str = "euclidean",
    empty: str = "previous",
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divide sums by counts; ``empty`` says what clusters with no weight get.

    For ``metric="cosine"`` the mean is renormalised to a unit vector
    (spherical k-means). Never produces NaN.

    Parameters
    ----------
    sums, counts : Tensor
        ``(k, d)`` and ``(k,)``, or ``(b, k, d)`` and ``(b, k)``.
    previous : Tensor
        The centroids the sums were assigned to, shaped as ``sums``.
    metric : {"euclidean", "cosine"}
    empty : {"previous", "heaviest"}
        A cluster with no weight keeps its ``previous`` centroid, or
        (Lloyd's loops, scikit-learn's ``_average_centers``) takes the centroid
        of the heaviest cluster, the first on ties. scikit-learn copies that
        cluster's row before dividing it when it comes later in the order:
        an empty cluster before the heaviest gets its weighted sum
        undivided (a point in the centred frame the sums are taken in), and
        so does this one. With ``metric="cosine"`` both are the same unit
        vector: the heaviest cluster's centroid is copied.
    active : Tensor, optional
        ``(b, k)`` or ``(k,)`` bool: the clusters that exist; the others keep
        their ``previous`` centroid.

    Raises
    ------
    ValueError
        If ``metric`` is not "euclidean" or "cosine", or ``empty`` not
        "previous" or "heaviest".

    Examples
    --------
    >>> sums = torch.tensor([[4.0, 2.0], [0.0, 0.0]])
    >>> counts = torch.tensor([2.0, 0.0])
    >>> centroids_from_sums(sums, counts, torch.tensor([[9.0, 9.0], [7.0, 7.0]]))
    tensor([[2., 1.],
            [7., 7.]])
    >>> centroids_from_sums(sums, counts, torch.zeros(2, 2), empty="heaviest")
    tensor([[2., 1.],
            [2., 1.]])
    """
    v.check_metric(metric)
    if empty not in ("previous", "heaviest"):
        raise ValueError(f"Expected empty to be 'previous' or 'heaviest', got {empty!r}.")
    if _device.on_host(counts.device) and bool((counts > 0).all()):
        # Nothing to guard (a host check is free on the CPU): plain division.
        means = sums / counts.unsqueeze(-1)
        if metric == "cosine":
            means = unit_rows(means)
        return means.to(previous.dtype)
    if empty == "heaviest":
        return centroids_and_distinct(sums, counts, previous, metric=metric, active=active)[0]
    filled = counts > 0
    means = sums / torch.where(filled, counts, torch.ones_like(counts)).unsqueeze(-1)
    if metric == "cosine":
        means = unit_rows(means)
    return torch.where(filled.unsqueeze(-1), means.to(previous.dtype), previous)


def centroids_and_distinct(
    sums: torch.Tensor,
    counts: torch.Tensor,
    previous: torch.Tensor,
    *,
    metric: str = "euclidean",
    active: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``centroids_from_sums(..., empty="heaviest")`` and, ``(..., k)`` bool,
    the centroids that are no copy of an earlier one (``~copies_of_heaviest``).

    One pass for Lloyd's loops off the CPU, which mask the copies in the next
    assignment: the two share the heaviest cluster and its rows (on an
    accelerator each small operation is a kernel launch, every iteration).
    ``index`` is ``torch.arange(k)`` on the device, if the caller holds one.

    Examples
    --------
    >>> sums = torch.tensor([[4.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    >>> centroids, distinct = centroids_and_distinct(
    ...     sums, torch.tensor([2.0, 0.0, 1.0]), torch.zeros(3, 2)
    ... )
    >>> centroids
    tensor([[2., 1.],
            [2., 1.],
            [1., 1.]])
    >>> distinct.tolist()
    [True, False, True]
    """
    filled = counts > 0
    means = sums / torch.where(filled, counts, torch.ones_like(counts)).unsqueeze(-1)
    if metric == "cosine":
        means = unit_rows(means)
    means = means.to(previous.dtype)
    # Branch-free (no host read on an accelerator): every row computes its
    # replacement, the empty ones take it.
    heaviest = counts.argmax(-1, keepdim=True)  # (..., 1)
    rows = heaviest.unsqueeze(-1).expand(*heaviest.shape, sums.shape[-1])
    fallback = means.gather(-2, rows)
    if metric == "cosine":
        distinct = ~copies_of_heaviest(counts, metric, active)
    else:
        # Up to the heaviest, its sum undivided (at the heaviest itself, if
        # empty, that is its mean: a sum divided by 1).
        if index is None:
            index = torch.arange(counts.shape[-1], device=counts.device)
        upto = index <= heaviest
        undivided = sums.gather(-2, rows).to(previous.dtype)
        fallback = torch.where(upto.unsqueeze(-1), undivided, fallback)
        distinct = filled | upto  # the copies come after the heaviest
    if active is not None:
        fallback = torch.where(active.unsqueeze(-1), fallback, previous)
    return torch.where(filled.unsqueeze(-1), means, fallback), distinct


def copies_of_heaviest(
    counts: torch.Tensor, metric: str = "euclidean", active: torch.Tensor | None = None
) -> torch.Tensor:
    """``(..., k)`` bool: the centroids that ``centroids_from_sums(..., empty="heaviest")``
    gave the same rows as an earlier one, all but the first of each set of copies.

    The copies are the empty clusters that take the heaviest cluster's centroid
    (after it in the order for ``"euclidean"``, any for ``"cosine"``) and the
    heaviest itself when a copy comes first. Rows equally far from copies go
    to the first one (scikit-learn, and :func:`~torchkmeans.functional.certify.without_copies`
    on the CPU); masking the others in the next assignment does the same
    without the host read that finding copies takes off the CPU.

    Examples
    --------
    >>> copies_of_heaviest(torch.tensor([0.0, 3.0, 0.0, 1.0])).tolist()
    [False, False, True, False]
    >>> copies_of_heaviest(torch.tensor([0.0, 3.0, 0.0, 1.0]), "cosine").tolist()
    [False, True, True, False]
    """
    k = counts.shape[-1]
    index = torch.arange(k, device=counts.device)
    empty = counts <= 0
    if active is not None:
        empty &= active
    heaviest = counts.argmax(-1, keepdim=True)
    if metric != "cosine":
        return empty & (index > heaviest)  # the heaviest comes first
    members = empty | ((index == heaviest) & empty.any(-1, keepdim=True))
    first = torch.where(members, index, k).amin(-1, keepdim=True)
    return members & (index != first)
