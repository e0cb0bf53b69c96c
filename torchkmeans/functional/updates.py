"""Centroid updates: scatter sums and counts, division, empty clusters.

Sums and counts are accumulated with ``index_add_`` into flat ``(b*k, d)`` and
``(b*k,)`` buffers, so a batch of b problems is one scatter. Empty clusters
are reseeded without a host-side branch (``torch.where``) from the points
farthest from their centroids, following scikit-learn's rule.
"""

from __future__ import annotations

import torch

__all__ = ["accumulate", "centroids_from_sums", "relocate_empty_clusters", "scatter_sums"]


def _flat_labels(labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Labels of a ``(b, m)`` batch offset into ``[0, b*k)`` and flattened."""
    b = labels.shape[0]
    if b == 1:
        return labels.reshape(-1)
    offsets = torch.arange(b, device=labels.device).mul_(n_clusters).unsqueeze(1)
    return (labels + offsets).reshape(-1)


def accumulate(
    sums: torch.Tensor,
    counts: torch.Tensor,
    xb: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
) -> None:
    """Add one block of rows into per-cluster sums and counts, in place.

    ``sums`` is ``(b, k, d)``, ``counts`` ``(b, k)`` (both contiguous);
    ``xb`` is ``(bx, m, d)`` with bx in {1, b}; ``labels`` ``(b, m)``;
    ``weights`` ``(bw, m)`` with bw in {1, b}, or None.
    """
    b, k, d = sums.shape
    m = labels.shape[1]
    flat = _flat_labels(labels, k)
    if xb.dtype != sums.dtype:
        xb = xb.to(sums.dtype)
    if weights is None:
        source = xb if xb.shape[0] == b else xb.expand(b, m, d)
        sums.view(b * k, d).index_add_(0, flat, source.reshape(b * m, d))
        ones = torch.ones((), dtype=counts.dtype, device=counts.device).expand(b * m)
        counts.view(b * k).index_add_(0, flat, ones)
        return
    weights = weights.to(sums.dtype)
    source = (xb * weights.unsqueeze(-1)).expand(b, m, d)
    sums.view(b * k, d).index_add_(0, flat, source.reshape(b * m, d))
    counts.view(b * k).index_add_(0, flat, weights.expand(b, m).reshape(b * m))


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

    Examples
    --------
    >>> x = torch.tensor([[0.0], [2.0], [10.0]])
    >>> scatter_sums(x, torch.tensor([0, 0, 1]), 2)
    (tensor([[ 2.],
            [10.]]), tensor([2., 1.]))
    """
    batched = x.ndim == 3 or labels.ndim == 2
    x3 = x if x.ndim == 3 else x.unsqueeze(0)
    labels2 = labels if labels.ndim == 2 else labels.unsqueeze(0)
    if dtype is None:
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    b = labels2.shape[0]
    sums = torch.zeros((b, n_clusters, x3.shape[-1]), dtype=dtype, device=x.device)
    counts = torch.zeros((b, n_clusters), dtype=dtype, device=x.device)
    weights = None
    if sample_weight is not None:
        weights = sample_weight if sample_weight.ndim == 2 else sample_weight.unsqueeze(0)
    accumulate(sums, counts, x3, labels2, weights)
    return (sums, counts) if batched else (sums[0], counts[0])


def relocate_empty_clusters(
    sums: torch.Tensor,
    counts: torch.Tensor,
    x3: torch.Tensor,
    weights: torch.Tensor | None,
    labels: torch.Tensor,
    distances: torch.Tensor,
) -> None:
    """Reseed empty clusters from the points farthest from their centroids, in place.

    The j-th empty cluster of a problem takes the j-th farthest point (by
    ``distances``, the distance of each point to its own centroid); the point
    moves out of its old cluster's sum and count, as in scikit-learn. Works
    on the whole batch with ``torch.where``: no host synchronisation.

    ``sums`` ``(b, k, d)``, ``counts`` ``(b, k)``, ``x3`` ``(bx, n, d)``,
    ``weights`` ``(bw, n)`` or None, ``labels`` and ``distances`` ``(b, n)``.
    """
    b, k, d = sums.shape
    n = labels.shape[1]
    empty = counts <= 0
    rank = empty.long().cumsum(-1).sub_(1).clamp_(0, min(k, n) - 1)
    farthest = distances.topk(min(k, n), dim=-1, sorted=True).indices
    picked = farthest.gather(-1, rank)  # (b, k) point index per cluster slot
    if x3.shape[0] == 1:
        points = x3[0][picked]  # (b, k, d)
    else:
        points = x3.gather(1, picked.unsqueeze(-1).expand(b, k, d))
    points = points.to(sums.dtype)
    if weights is None:
        point_weights = torch.ones((b, k), dtype=sums.dtype, device=sums.device)
    else:
        point_weights = weights.expand(b, n).gather(-1, picked).to(sums.dtype)
    moved = points * point_weights.unsqueeze(-1)
    mask = empty.to(sums.dtype)
    old = _flat_labels(labels.gather(-1, picked), k)
    sums.view(b * k, d).index_add_(0, old, (moved * mask.unsqueeze(-1)).neg_().reshape(b * k, d))
    counts.view(b * k).index_add_(0, old, (point_weights * mask).neg_().reshape(b * k))
    sums.copy_(torch.where(empty.unsqueeze(-1), moved, sums))
    counts.copy_(torch.where(empty, point_weights, counts))


def centroids_from_sums(
    sums: torch.Tensor,
    counts: torch.Tensor,
    previous: torch.Tensor,
    *,
    metric: str = "euclidean",
) -> torch.Tensor:
    """Divide sums by counts; clusters with no weight keep their ``previous`` centroid.

    For ``metric="cosine"`` the mean is renormalised to a unit vector
    (spherical k-means). Never produces NaN.

    Examples
    --------
    >>> sums = torch.tensor([[4.0, 2.0], [0.0, 0.0]])
    >>> counts = torch.tensor([2.0, 0.0])
    >>> centroids_from_sums(sums, counts, torch.tensor([[9.0, 9.0], [7.0, 7.0]]))
    tensor([[2., 1.],
            [7., 7.]])
    """
    filled = counts > 0
    means = sums / torch.where(filled, counts, torch.ones_like(counts)).unsqueeze(-1)
    if metric == "cosine":
        means = torch.nn.functional.normalize(means, dim=-1)
    return torch.where(filled.unsqueeze(-1), means.to(previous.dtype), previous)
