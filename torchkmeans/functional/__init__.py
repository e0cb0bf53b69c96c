"""Pure tensor functions: distances, updates, seeding and Lloyd iterations.

Everything here takes ``(n, d)`` or batched ``(b, n, d)`` tensors, runs on
their device, and returns tensors; no numpy, no printing.
"""

from __future__ import annotations

from .distances import (
    DEFAULT_MEMORY_BUDGET,
    Nearest,
    block_rows,
    nearest_centroids,
    pairwise_distances,
)
from .init import kmeans_plusplus, random_init
from .lloyd import KMeansResult, kmeans, lloyd
from .minibatch import MiniBatchStep, minibatch_step
from .updates import centroids_from_sums, relocate_empty_clusters, scatter_sums

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KMeansResult",
    "MiniBatchStep",
    "Nearest",
    "block_rows",
    "centroids_from_sums",
    "kmeans",
    "kmeans_plusplus",
    "lloyd",
    "minibatch_step",
    "nearest_centroids",
    "pairwise_distances",
    "random_init",
    "relocate_empty_clusters",
    "scatter_sums",
]
