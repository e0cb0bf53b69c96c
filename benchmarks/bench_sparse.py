"""KMeans on a sparse TF-IDF-like matrix against scikit-learn's, in one run.

Usage::

    python benchmarks/bench_sparse.py [--n 20000] [--d 5000] [--density 0.01] [--k 20]
        [--repeats 3] [--threads 2] [--device cpu]

The matrix is ``scipy.sparse.random`` counts plus one topic of ``d / k`` words
per row (so that clusters exist), TF-IDF weighted and unit-normalised, float64
and float32. Printed per dtype: the minimum over ``--repeats`` of the wall time
of ``fit`` from the same initial centres (means of 5 random rows; and with each
library's own k-means++), ``predict`` and ``transform``, torchkmeans over scikit-learn
(t/sk, < 1 is faster), with both libraries' ``n_iter_`` and inertia and the
share of equal labels; then the default ``MiniBatchKMeans`` fits, ``partial_fit``
over batches of ``--batch-size`` rows from the same initial centres (the
batches stay sparse), and ``silhouette_score`` of the first ``--silhouette-n``
rows (from products of stored values, never densified whole); with
``--minibatch-only`` only the two ``MiniBatchKMeans`` lines, taken in turn
with scikit-learn's ``--repeats`` times (median ratio of the rounds), e.g.
``--n 20000 --d 50000 --density 0.001 --minibatch-only``. With
``--sweep-k 2,5,9,20`` only the float64 fits from the same initial centres
at each of those k, the two libraries' fits taken in turn ``--repeats``
times: the median ratio of each round (few clusters are where fixed and
per-stored-value costs show). With
``--dense-chunks`` also the dense-chunk baseline (the matrix read as a
memmap is: every Lloyd iteration densifies it a chunk at a time) for one fit.
A script, never a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

import _threads

_threads.pin_threads()

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.cluster import KMeans as SkKMeans  # noqa: E402
from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans  # noqa: E402
from sklearn.feature_extraction.text import TfidfTransformer  # noqa: E402
from sklearn.metrics import silhouette_score as sk_silhouette_score  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from torchkmeans import KMeans, MiniBatchKMeans  # noqa: E402
from torchkmeans._host import host_rows  # noqa: E402
from torchkmeans.functional.streaming import streamed_kmeans  # noqa: E402
from torchkmeans.metrics import silhouette_score  # noqa: E402


def tfidf_like(n: int, d: int, density: float, k: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    # Half the stored values at random, half from one topic per row.
    counts = sp.random(
        n,
        d,
        density=density / 2,
        format="csr",
        random_state=seed,
        data_rvs=lambda m: rng.poisson(2, m) + 1.0,
    )
    topics = rng.integers(0, k, n)
    per_row = max(1, int(density * d / 2))
    rows = np.repeat(np.arange(n), per_row)
    width = max(1, d // k)
    cols = (topics[rows] * width + rng.integers(0, width, rows.size)) % d
    counts = counts + sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, d))
    return TfidfTransformer().fit_transform(counts.tocsr()).tocsr()


def best_of(repeats: int, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """The minimum wall time of ``repeats`` calls of ``fn(*args)``, and its result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def interleaved(repeats: int, *fns: Callable[[], Any]) -> tuple[list[list[float]], list[Any]]:
    """Wall times of ``repeats`` rounds of calling each of ``fns`` in turn (so
    that a busy machine slows all alike), per function, and their last results."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[Any] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - start)
    return times, outs


def sweep_k(X: sp.csr_matrix, ks: list[int], repeats: int, device: str) -> None:
    """float64 fits from the same initial centres at each k, against scikit-learn's,
    interleaved: the median of each round's ratio, and each library's median time."""
    for k in ks:
        groups = np.random.default_rng(1).choice(X.shape[0], (k, 5), replace=False)
        init = np.stack([X[rows].toarray().mean(0) for rows in groups])
        (t_sk, t_us), (sk, us) = interleaved(
            repeats,
            functools.partial(SkKMeans(k, init=init, n_init=1).fit, X),
            functools.partial(KMeans(k, init=init, device=device).fit, X),
        )
        ratio = float(np.median(np.divide(t_us, t_sk)))
        labels = np.asarray(us.labels_.cpu() if hasattr(us.labels_, "cpu") else us.labels_)
        print(
            f"float64 fit, same init, k={k}: t/sk {ratio:.2f} ({np.median(t_us):.3f} s / "
            f"{np.median(t_sk):.3f} s), n_iter {us.n_iter_}/{sk.n_iter_}, inertia relative "
            f"difference {abs(us.inertia_ - sk.inertia_) / sk.inertia_:.1e}, "
            f"equal labels {np.mean(labels == sk.labels_):.4f}"
        )


def partial_fits(make: Callable[[], Any], batches: list[Any]) -> Any:
    """A new model from ``make()``, one ``partial_fit`` per batch."""
    model = make()
    for batch in batches:
        model.partial_fit(batch)
    return model


def minibatch_rounds(X64: sp.csr_matrix, groups: np.ndarray, args: argparse.Namespace) -> None:
    """The MiniBatchKMeans fit and partial_fits of each dtype against scikit-learn's,
    interleaved: the median of each round's ratio, and each library's median time."""
    k, device = args.k, args.device
    for dtype in (np.float64, np.float32):
        X = X64.astype(dtype)
        init = np.stack([X[rows].toarray().mean(0) for rows in groups])
        batches = [
            X[start : start + args.batch_size] for start in range(0, args.n, args.batch_size)
        ]
        name = np.dtype(dtype).name
        for what, ours, theirs in (
            (
                "fit",
                functools.partial(MiniBatchKMeans(k, random_state=0, device=device).fit, X),
                functools.partial(SkMiniBatchKMeans(k, random_state=0).fit, X),
            ),
            (
                f"partial_fit ({len(batches)} batches)",
                functools.partial(
                    partial_fits,
                    functools.partial(MiniBatchKMeans, k, init=init, random_state=0, device=device),
                    batches,
                ),
                functools.partial(
                    partial_fits,
                    functools.partial(SkMiniBatchKMeans, k, init=init, n_init=1, random_state=0),
                    batches,
                ),
            ),
        ):
            (t_us, t_sk), (us, sk) = interleaved(args.repeats, ours, theirs)
            ratio = float(np.median(np.divide(t_us, t_sk)))
            print(
                f"{name} MiniBatchKMeans {what}: t/sk {ratio:.2f} ({np.median(t_us):.3f} s / "
                f"{np.median(t_sk):.3f} s), inertia {us.inertia_:.6f}/{sk.inertia_:.6f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=5_000)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--silhouette-n", type=int, default=5_000)
    parser.add_argument(
        "--sweep-k", default="", help="comma-separated k: only float64 fits at each"
    )
    parser.add_argument(
        "--dense-chunks", action="store_true", help="also time the dense-chunk fit (slow)"
    )
    parser.add_argument(
        "--minibatch-only", action="store_true", help="only the MiniBatchKMeans fits, interleaved"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    X64 = tfidf_like(args.n, args.d, args.density, args.k)
    print(
        f"{args.n} x {args.d}, {X64.nnz / (args.n * args.d):.2%} stored, k={args.k}, "
        f"{args.threads} threads, device={args.device}"
    )
    # Initial centres: means of 5 random rows each. Rows of the matrix are
    # unit vectors, so rows sharing no word with any of k rows taken as
    # centres are at the same distance from all of them, a tie that the
    # rounding of |c|^2 breaks differently in each library.
    groups = np.random.default_rng(1).choice(args.n, (args.k, 5), replace=False)
    with threadpool_limits(args.threads):
        if args.sweep_k:
            sweep_k(X64, [int(k) for k in args.sweep_k.split(",")], args.repeats, args.device)
            return
        if args.minibatch_only:
            minibatch_rounds(X64, groups, args)
            return
        for dtype in (np.float64, np.float32):
            X = X64.astype(dtype)
            init = np.stack([X[rows].toarray().mean(0) for rows in groups])
            name = np.dtype(dtype).name
            t_sk, sk = best_of(args.repeats, SkKMeans(args.k, init=init, n_init=1).fit, X)
            t_us, us = best_of(args.repeats, KMeans(args.k, init=init, device=args.device).fit, X)
            labels = np.asarray(us.labels_.cpu() if hasattr(us.labels_, "cpu") else us.labels_)
            print(
                f"{name} fit, same init: t/sk {t_us / t_sk:.2f} ({t_us:.3f} s / {t_sk:.3f} s), "
                f"n_iter {us.n_iter_}/{sk.n_iter_}, inertia {us.inertia_:.6f}/{sk.inertia_:.6f}, "
                f"equal labels {np.mean(labels == sk.labels_):.4f}"
            )
            t_sk, sk = best_of(args.repeats, SkKMeans(args.k, random_state=0).fit, X)
            t_us, us = best_of(
                args.repeats, KMeans(args.k, random_state=0, device=args.device).fit, X
            )
            print(
                f"{name} fit, k-means++: t/sk {t_us / t_sk:.2f} ({t_us:.3f} s / {t_sk:.3f} s), "
                f"n_iter {us.n_iter_}/{sk.n_iter_}, inertia {us.inertia_:.6f}/{sk.inertia_:.6f}"
            )
            for method in ("predict", "transform"):
                t_sk, _ = best_of(args.repeats, getattr(sk, method), X)
                t_us, _ = best_of(args.repeats, getattr(us, method), X)
                print(f"{name} {method}: t/sk {t_us / t_sk:.2f} ({t_us:.3f} s / {t_sk:.3f} s)")
            t_sk, sk = best_of(args.repeats, SkMiniBatchKMeans(args.k, random_state=0).fit, X)
            t_us, us = best_of(
                args.repeats, MiniBatchKMeans(args.k, random_state=0, device=args.device).fit, X
            )
            print(
                f"{name} MiniBatchKMeans fit: t/sk {t_us / t_sk:.2f} ({t_us:.3f} s / "
                f"{t_sk:.3f} s), steps {us.n_steps_}/{sk.n_steps_}, "
                f"inertia {us.inertia_:.6f}/{sk.inertia_:.6f}"
            )
            batches = [
                X[start : start + args.batch_size] for start in range(0, args.n, args.batch_size)
            ]
            t_sk, sk = best_of(
                args.repeats,
                partial_fits,
                functools.partial(SkMiniBatchKMeans, args.k, init=init, n_init=1, random_state=0),
                batches,
            )
            t_us, us = best_of(
                args.repeats,
                partial_fits,
                functools.partial(
                    MiniBatchKMeans, args.k, init=init, random_state=0, device=args.device
                ),
                batches,
            )
            print(
                f"{name} MiniBatchKMeans partial_fit ({len(batches)} batches): t/sk "
                f"{t_us / t_sk:.2f} ({t_us:.3f} s / {t_sk:.3f} s), last batch inertia "
                f"{us.inertia_:.6f}/{sk.inertia_:.6f}"
            )
            head = X[: args.silhouette_n]
            labels = np.asarray(KMeans(args.k, init=init, random_state=0).fit(head).labels_)
            t_sk, s_sk = best_of(args.repeats, sk_silhouette_score, head, labels)
            t_us, s_us = best_of(args.repeats, silhouette_score, head, labels)
            print(
                f"{name} silhouette_score ({head.shape[0]} rows): t/sk {t_us / t_sk:.2f} "
                f"({t_us:.3f} s / {t_sk:.3f} s), {s_us:.9f}/{s_sk:.9f}"
            )
        if not args.dense_chunks:
            return
        # The baseline: the same fit from dense chunks, as a memmap is streamed.
        import torch

        rows, compute, _ = host_rows(X64, None)
        init = torch.from_numpy(np.stack([X64[rows].toarray().mean(0) for rows in groups]))
        start = time.perf_counter()
        chunked = streamed_kmeans(
            rows, args.k, init=init, device=torch.device(args.device), dtype=compute
        )
        t_chunks = time.perf_counter() - start
        t_us, us = best_of(1, KMeans(args.k, init=init.numpy()).fit, X64)
        print(
            f"float64 fit from dense chunks: {t_chunks:.3f} s ({int(chunked.n_iter)} iterations) "
            f"against {t_us:.3f} s from sparse products"
        )


if __name__ == "__main__":
    main()
