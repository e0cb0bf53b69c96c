"""MiniBatchKMeans against scikit-learn's, on the same data, the same number of steps.

Usage::

    python benchmarks/bench_minibatch.py [--n 1000000] [--d 128] [--k 1024]
        [--batch-size 1024] [--epochs 1] [--threads 2] [--seeds 1] [--memmap]
        [--defaults] [--same-init] [--partial-fit 0] [--predict]
        [--blobs B] [--cluster-std 1.0] [--scale 2.0]

Blobs (float32) around ``k`` centres (``--blobs`` others: fewer than ``k``
blobs, each shared by several centres; ``--cluster-std`` their spread,
``--scale`` that of their centres); both estimators run ``epochs * n /
batch_size`` steps (early stopping off: ``max_no_improvement=None``,
``tol=0``), k-means++ on ``3 * batch_size`` rows, and compute the labels of
all rows at the end. Printed: seconds for the fit, the final inertia of both
computed the same way (float64, exact distances to the returned centres), and
the ratios, median over ``--seeds``. ``--memmap`` fits torchkmeans from an
``np.memmap`` of the data (scikit-learn gets the array). ``--defaults`` keeps
both libraries' defaults instead (``max_iter=100``, early stopping after 10
steps without improvement; ``--epochs`` ignored), ``--same-init`` starts both
from the same ``k`` random rows. ``--partial-fit B`` also times ``B`` calls of
``partial_fit`` on consecutive batches of ``batch_size`` rows (seeded on the
first, with the labels of each batch; past the end of the data from its start
again), best of 3, ``--predict`` ``predict`` of all rows
with the fitted centres of each (best of 3). A script, never a test: timings depend on
the machine.
"""

from __future__ import annotations

import argparse
import math
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


def blobs(
    n: int, d: int, k: int, seed: int = 0, std: float = 1.0, scale: float = 2.0
) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * scale
    x = torch.empty(n, d)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        labels = torch.randint(0, k, (stop - start,), generator=g)
        x[start:stop] = centres[labels] + torch.randn(stop - start, d, generator=g) * std
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
    parser.add_argument("--defaults", action="store_true")
    parser.add_argument("--same-init", action="store_true")
    parser.add_argument("--partial-fit", type=int, default=0)
    parser.add_argument("--predict", action="store_true")
    parser.add_argument("--blobs", type=int, default=None, help="blobs (default: k)")
    parser.add_argument("--cluster-std", type=float, default=1.0)
    parser.add_argument("--scale", type=float, default=2.0, help="spread of the blobs' centres")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    X = blobs(args.n, args.d, args.blobs or args.k, std=args.cluster_std, scale=args.scale)
    steps = args.epochs * args.n // args.batch_size
    print(
        f"MiniBatchKMeans: n={args.n:,} d={args.d} k={args.k} float32 "
        f"({args.blobs or args.k} blobs, std {args.cluster_std}, scale {args.scale}), batch_size="
        f"{args.batch_size}, "
        + ("default early stopping" if args.defaults else f"{steps} steps")
        + f", {args.threads} threads, torch {torch.__version__}"
    )
    common = dict(n_clusters=args.k, batch_size=args.batch_size, n_init=1)
    if not args.defaults:
        common.update(
            max_iter=args.epochs, max_no_improvement=None, tol=0.0, reassignment_ratio=0.01
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
            params = dict(common, random_state=seed)
            if args.same_init:
                rng = np.random.default_rng(seed)
                params["init"] = X[np.sort(rng.choice(args.n, args.k, replace=False))]
            start = time.perf_counter()
            ours = MiniBatchKMeans(**params).fit(source)
            ours_seconds = time.perf_counter() - start
            with threadpool_limits(args.threads):
                start = time.perf_counter()
                theirs = SkMiniBatchKMeans(**params).fit(X)
                theirs_seconds = time.perf_counter() - start
            ours_inertia = inertia(X, ours.cluster_centers_)
            theirs_inertia = inertia(X, theirs.cluster_centers_)
            rows.append((ours_seconds, theirs_seconds, ours_inertia, theirs_inertia))
            print(
                f"seed {seed}: torchkmeans {ours_seconds:7.2f} s ({ours.n_steps_} steps), "
                f"scikit-learn {theirs_seconds:7.2f} s ({theirs.n_steps_} steps); inertia "
                f"{ours_inertia:.6g} vs {theirs_inertia:.6g}"
            )
            if args.partial_fit:
                # Consecutive batches, from the start again past the end (passes
                # over the data); best of 3, the libraries taking turns.
                per_pass = max(1, args.n // args.batch_size)
                times = [math.inf, math.inf]
                for _ in range(3):
                    for which, make in enumerate((MiniBatchKMeans, SkMiniBatchKMeans)):
                        model = make(**params)
                        with threadpool_limits(args.threads):
                            start = time.perf_counter()
                            for b in range(args.partial_fit):
                                stop = (b % per_pass + 1) * args.batch_size
                                model.partial_fit(X[stop - args.batch_size : stop])
                            times[which] = min(times[which], time.perf_counter() - start)
                print(
                    f"  partial_fit x {args.partial_fit}: torchkmeans {times[0]:.3f} s, "
                    f"scikit-learn {times[1]:.3f} s ({times[0] / times[1]:.2f}x)"
                )
            if args.predict:
                times = []
                for model in (ours, theirs):
                    best = math.inf
                    with threadpool_limits(args.threads):
                        for _ in range(3):  # the first call of each pays page faults
                            start = time.perf_counter()
                            model.predict(X)
                            best = min(best, time.perf_counter() - start)
                    times.append(best)
                print(
                    f"  predict of {args.n:,} rows: torchkmeans {times[0]:.3f} s, "
                    f"scikit-learn {times[1]:.3f} s ({times[0] / times[1]:.2f}x)"
                )
    time_ratio = statistics.median(r[0] / r[1] for r in rows)
    inertia_ratio = statistics.median(r[2] / r[3] for r in rows)
    print(
        f"torchkmeans / scikit-learn: time {time_ratio:.2f}x, inertia {inertia_ratio:.4f}x "
        f"(median of {len(rows)} seed(s){', torchkmeans from a memmap' if args.memmap else ''})"
    )


if __name__ == "__main__":
    main()
