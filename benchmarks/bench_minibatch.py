"""MiniBatchKMeans against scikit-learn's, on the same data, the same number of steps.

Usage::

    python benchmarks/bench_minibatch.py [--n 1000000] [--d 128] [--k 1024]
        [--batch-size 1024] [--epochs 1] [--threads 2] [--seeds 1] [--memmap]

Blobs (float32) around ``k`` centres; both estimators run ``epochs * n /
batch_size`` steps (early stopping off: ``max_no_improvement=None``,
``tol=0``), k-means++ on ``3 * batch_size`` rows, and compute the labels of
all rows at the end. Printed: seconds for the fit, the final inertia of both
computed the same way (float64, exact distances to the returned centres), and
the ratios, median over ``--seeds``. ``--memmap`` fits torchkmeans from an
``np.memmap`` of the data (scikit-learn gets the array). A script, never a
test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import _threads

_threads.pin_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from torchkmeans import MiniBatchKMeans  # noqa: E402
from torchkmeans.functional import nearest_centroids  # noqa: E402


def blobs(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 2.0
    x = torch.empty(n, d)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        labels = torch.randint(0, k, (stop - start,), generator=g)
        x[start:stop] = centres[labels] + torch.randn(stop - start, d, generator=g)
    return x.numpy()


def inertia(X: np.ndarray, centres: np.ndarray) -> float:
    """Exact float64 inertia of ``X`` under ``centres``, in chunks."""
    c = torch.from_numpy(np.asarray(centres, dtype=np.float64))
    total = 0.0
    for start in range(0, X.shape[0], 65_536):
        x = torch.from_numpy(np.asarray(X[start : start + 65_536], dtype=np.float64))
        total += float(nearest_centroids(x, c).distances.sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--memmap", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    X = blobs(args.n, args.d, args.k)
    steps = args.epochs * args.n // args.batch_size
    print(
        f"MiniBatchKMeans: n={args.n:,} d={args.d} k={args.k} float32, batch_size="
        f"{args.batch_size}, {steps} steps, {args.threads} threads, torch {torch.__version__}"
    )
    common = dict(
        n_clusters=args.k,
        batch_size=args.batch_size,
        max_iter=args.epochs,
        max_no_improvement=None,
        tol=0.0,
        n_init=1,
        reassignment_ratio=0.01,
    )
    with tempfile.TemporaryDirectory() as tmp:
        source = X
        if args.memmap:
            path = os.path.join(tmp, "x.f32")
            mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
            mm[:] = X
            mm.flush()
            source = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
        rows = []
        for seed in range(args.seeds):
            start = time.perf_counter()
            ours = MiniBatchKMeans(random_state=seed, **common).fit(source)
            ours_seconds = time.perf_counter() - start
            with threadpool_limits(args.threads):
                start = time.perf_counter()
                theirs = SkMiniBatchKMeans(random_state=seed, **common).fit(X)
                theirs_seconds = time.perf_counter() - start
            ours_inertia = inertia(X, ours.cluster_centers_)
            theirs_inertia = inertia(X, theirs.cluster_centers_)
            rows.append((ours_seconds, theirs_seconds, ours_inertia, theirs_inertia))
            print(
                f"seed {seed}: torchkmeans {ours_seconds:7.2f} s ({ours.n_steps_} steps), "
                f"scikit-learn {theirs_seconds:7.2f} s ({theirs.n_steps_} steps); inertia "
                f"{ours_inertia:.6g} vs {theirs_inertia:.6g}"
            )
    time_ratio = statistics.median(r[0] / r[1] for r in rows)
    inertia_ratio = statistics.median(r[2] / r[3] for r in rows)
    print(
        f"torchkmeans / scikit-learn: time {time_ratio:.2f}x, inertia {inertia_ratio:.4f}x "
        f"(median of {len(rows)} seed(s){', torchkmeans from a memmap' if args.memmap else ''})"
    )


if __name__ == "__main__":
    main()
