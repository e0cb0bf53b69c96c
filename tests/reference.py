"""A naive, loop-based k-means in float64 numpy: the oracle for the kernels."""

from __future__ import annotations

import numpy as np


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and squared distances, one point at a time."""
    labels = np.empty(len(x), dtype=np.int64)
    distances = np.empty(len(x))
    for i, point in enumerate(x):
        d2 = [float(((point - c) ** 2).sum()) for c in centroids]
        labels[i] = int(np.argmin(d2))
        distances[i] = d2[labels[i]]
    return labels, distances


def lloyd(
    x: np.ndarray,
    centroids: np.ndarray,
    max_iter: int = 300,
    tol: float = 1e-4,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """scikit-learn's Lloyd loop written plainly: (centroids, labels, inertia, n_iter)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    centroids = np.array(centroids, dtype=np.float64)
    k = len(centroids)
    tol_abs = tol * np.var(x, axis=0).mean()
    mean = x.mean(axis=0)
    previous = np.full(len(x), -1)
    n_iter = 0
    for iteration in range(1, max_iter + 1):
        n_iter = iteration
        labels, distances = nearest(x, centroids)
        sums = np.zeros_like(centroids)
        counts = np.zeros(k)
        for i, label in enumerate(labels):
            sums[label] += w[i] * x[i]
            counts[label] += w[i]
        far = np.argsort(-distances, kind="stable")
        empties = [j for j in range(k) if counts[j] == 0]
        # Unlike scikit-learn, labels that repeat are no convergence when a
        # point off its centroid was just moved to an empty cluster.
        relocated = any(distances[far[rank]] > 0 for rank in range(len(empties)))
        for rank, j in enumerate(empties):
            point = far[rank]
            sums[labels[point]] -= w[point] * x[point]
            counts[labels[point]] -= w[point]
            sums[j] = w[point] * x[point]
            counts[j] = w[point]
        # A cluster left without weight takes the heaviest one's centroid; one
        # before the heaviest copies its row before it is averaged: the sum,
        # in scikit-learn's frame centred on the mean of x.
        heaviest = int(np.argmax(counts))
        new = centroids.copy()
        for j in range(k):
            if counts[j] > 0:
                new[j] = sums[j] / counts[j]
            elif j < heaviest:
                new[j] = sums[heaviest] - counts[heaviest] * mean + mean
            else:
                new[j] = sums[heaviest] / counts[heaviest]
        shift = ((new - centroids) ** 2).sum()
        centroids = new
        if (np.array_equal(labels, previous) and not relocated) or shift <= tol_abs:
            break
        previous = labels
    labels, distances = nearest(x, centroids)
    return centroids, labels, float((w * distances).sum()), n_iter
