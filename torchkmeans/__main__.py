"""``python -m torchkmeans``: fit the classic 300-point example and print the result."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from .kmeans import KMeans


def tutorial_data(seed: int = 2021) -> np.ndarray:
    """The classic tutorial's data: 300 points, X1 integers 0..3, X2 uniform 0..10.

    Examples
    --------
    >>> X = tutorial_data()
    >>> X.shape, set(X[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}
    ((300, 2), True)
    """
    rng = np.random.RandomState(seed)
    x1 = rng.randint(0, 4, size=[300, 1])
    x2 = rng.uniform(0, 10, size=[300, 1])
    return np.append(x1, x2, axis=1).astype(np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchkmeans`` command."""
    parser = argparse.ArgumentParser(
        prog="torchkmeans",
        description="Fit K-Means (k=4, k-means++) on the classic 300-point example "
        "and print the centroids, inertia and iterations.",
    )
    parser.add_argument("--n-clusters", "-k", type=int, default=4, help="number of clusters (4)")
    parser.add_argument("--seed", type=int, default=2021, help="random_state (2021)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: cpu)")
    args = parser.parse_args(argv)
    X = tutorial_data()
    start = time.perf_counter()
    try:
        km = KMeans(
            n_clusters=args.n_clusters,
            init="k-means++",
            max_iter=300,
            random_state=args.seed,
            device=args.device,
        ).fit(X)
    except (ValueError, TypeError) as exc:
        parser.exit(2, f"torchkmeans: error: {exc}\n")
    elapsed = time.perf_counter() - start
    np.set_printoptions(precision=4, suppress=True)
    print(
        f"KMeans(n_clusters={args.n_clusters}) on the 300-point tutorial data "
        f"({X.shape[0]} x {X.shape[1]})"
    )
    print("cluster_centers_:")
    print(km.cluster_centers_)
    sizes = np.bincount(km.labels_, minlength=args.n_clusters)
    print(f"cluster sizes:    {sizes.tolist()}")
    print(f"inertia_:         {km.inertia_:.4f}")
    print(f"n_iter_:          {km.n_iter_}")
    print(f"time:             {elapsed * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
