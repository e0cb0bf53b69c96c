"""Benchmark the elbow sweep against loops of separate fits, on load_digits.

Usage::

    python benchmarks/bench_elbow.py [--threads 2] [--n-init 10] [--kmax 20] [--repeat 5]

In one run, on load_digits (1797 x 64, float32), k = 1..kmax, the same
``n_init`` everywhere:

1. ``torchkmeans.elbow`` (its default plan), against a scikit-learn loop
   ``[KMeans(k, n_init=n_init, random_state=0).fit(X).inertia_ for k in ks]``
   and a loop of independent ``torchkmeans.KMeans`` fits: seconds (best of
   ``--repeat``, interleaved) and the speed-up.
2. The per-k inertia of the sweep over each loop's (lower is better), and the
   largest deviation.
3. The sweep plans that were measured to pick the default: a fit per k of
   its restarts through the fused kernel, finishing only the best (the
   default where the kernel runs the fits); padded batches of all restarts
   (the plan of PyTorch ops; the kernel still runs their problems one by
   one): one batch of all ks, one batch per k, contiguous groups of ks each
   padded to its own largest k chosen by a cost model; and warm starts (k
   from the k-1 solution plus the next k-means++ seed, one lloyd call per k).

With ``--sparse`` instead: a TF-IDF-like CSR matrix (``bench_sparse.py``'s,
``--n`` x ``--d``, ``--density`` stored, float64), k = 1..kmax: the seconds
and peak memory growth (resident set, sampled) of ``torchkmeans.elbow``,
against a scikit-learn loop from the same initial centres (each k's
restarts from the first k seeds of the sweep's k-means++ runs; the per-k
inertia must agree) and scikit-learn's own loop with its k-means++.

It is a script, never a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from typing import Any, Callable

import _threads

_threads.pin_threads()

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans as SkKMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import torchkmeans  # noqa: E402

# The module: the package attribute torchkmeans.elbow is the function.
elbow_module = importlib.import_module("torchkmeans.elbow")
from torchkmeans.elbow import elbow  # noqa: E402
from torchkmeans.functional import kmeans_plusplus, lloyd  # noqa: E402
from torchkmeans.kmeans import KMeans  # noqa: E402

SEED = 0


def sklearn_loop(X: np.ndarray, ks: list[int], n_init: int) -> np.ndarray:
    return np.array([SkKMeans(k, n_init=n_init, random_state=SEED).fit(X).inertia_ for k in ks])


def torchkmeans_loop(X: np.ndarray, ks: list[int], n_init: int) -> np.ndarray:
    return np.array([KMeans(k, n_init=n_init, random_state=SEED).fit(X).inertia_ for k in ks])


def padded_sweep(X: np.ndarray, ks: list[int], n_init: int, *, overhead: float) -> np.ndarray:
    """``elbow`` in padded batches with a given per-group overhead (0: a group
    per k; huge: one group; None: the cost model's)."""
    saved = elbow_module._CPU_GROUP_OVERHEAD, elbow_module._runs_alone
    if overhead is not None:
        elbow_module._CPU_GROUP_OVERHEAD = overhead
    elbow_module._runs_alone = lambda x, k: False
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return elbow(X, k=ks, n_init=n_init, random_state=SEED).inertia
    finally:
        elbow_module._CPU_GROUP_OVERHEAD, elbow_module._runs_alone = saved


def default_sweep(X: np.ndarray, ks: list[int], n_init: int) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return elbow(X, k=ks, n_init=n_init, random_state=SEED).inertia


def warm_starts(X: np.ndarray, ks: list[int], n_init: int) -> np.ndarray:
    """k from the converged k-1 centroids plus the k-th k-means++ seed, per restart."""
    x = torch.from_numpy(X)
    generator = torch.Generator().manual_seed(SEED)
    _, indices = kmeans_plusplus(x - x.mean(0), max(ks), n_problems=n_init, generator=generator)
    seeds = x[indices]
    current = seeds[:, :1]
    out = []
    for k in range(1, max(ks) + 1):
        if k > 1:
            current = torch.cat([current, seeds[:, k - 1 : k]], 1)
        result = lloyd(x, current)
        current = result.centroids
        if k in ks:
            out.append(float(result.inertia.min()))
    return np.array(out)


def best_of(
    functions: dict[str, Callable[[], Any]], repeat: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Best wall time of each function over ``repeat`` interleaved rounds, and its result."""
    times = {name: float("inf") for name in functions}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            results[name] = function()
            times[name] = min(times[name], time.perf_counter() - start)
    return times, results


class PeakRSS:
    """Largest resident set growth (bytes) while in the block, sampled every
    5 ms from /proc/self/statm (Linux)."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def sparse_main(args: argparse.Namespace) -> None:
    import warnings

    import scipy.sparse as sp
    from bench_sparse import tfidf_like

    from torchkmeans._host import sparse_input
    from torchkmeans.functional.sparse import sparse_kmeans_plusplus

    ks = list(range(1, args.kmax + 1))
    n_init = args.n_init
    X = sp.csr_matrix(tfidf_like(args.n, args.d, args.density, args.kmax))
    print(
        f"TF-IDF-like CSR {X.shape[0]} x {X.shape[1]}, {X.nnz / np.prod(X.shape):.2%} stored, "
        f"float64, k = 1..{args.kmax}, n_init={n_init}, threads={args.threads}; "
        f"best of {args.repeat}"
    )
    rows, _ = sparse_input(X, device=None, dtype=None, metric="euclidean")
    generator = torch.Generator().manual_seed(SEED)
    seeds = sparse_kmeans_plusplus(rows, args.kmax, n_problems=n_init, generator=generator)

    def same_inits() -> np.ndarray:
        return np.array(
            [
                min(
                    SkKMeans(k, init=X[run[:k].numpy()].toarray(), n_init=1).fit(X).inertia_
                    for run in seeds
                )
                for k in ks
            ]
        )

    def sweep() -> tuple[np.ndarray, int]:
        with warnings.catch_warnings(), PeakRSS() as rss:
            warnings.simplefilter("ignore", UserWarning)
            inertia = elbow(X, k=ks, n_init=n_init, random_state=SEED).inertia
        return inertia, rss.growth

    functions: dict[str, Callable[[], Any]] = {
        "torchkmeans.elbow": sweep,
        "sklearn loop, same inits": same_inits,
        "sklearn loop, own k-means++": lambda: sklearn_loop(X, ks, n_init),
    }
    times, results = best_of(functions, args.repeat)
    inertia, growth = results["torchkmeans.elbow"]
    reference = times["sklearn loop, same inits"]
    print(f"\n{'method':30s} {'seconds':>8s} {'vs same inits':>14s}")
    for name, seconds in times.items():
        print(f"{name:30s} {seconds:8.2f} {reference / seconds:13.2f}x")
    print(
        f"elbow: peak resident growth {growth / 2**20:.0f} MiB (data {X.data.nbytes / 2**20:.0f} MiB)"
    )
    deviation = np.abs(inertia / results["sklearn loop, same inits"] - 1).max()
    print(f"per-k inertia vs the same-inits loop: max relative deviation {deviation:.2e}")
    own = inertia / results["sklearn loop, own k-means++"]
    print(
        f"per-k inertia over scikit-learn's own loop: worst {own.max():.4f}, best {own.min():.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--kmax", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-plans", action="store_true", help="skip the alternative plans")
    parser.add_argument("--sparse", action="store_true", help="a TF-IDF-like CSR matrix")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=5_000)
    parser.add_argument("--density", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads)
    if args.sparse:
        sparse_main(args)
        return

    X = np.ascontiguousarray(load_digits().data.astype(np.float32))
    ks = list(range(1, args.kmax + 1))
    n_init = args.n_init
    print(
        f"load_digits {X.shape[0]} x {X.shape[1]} float32, k = 1..{args.kmax}, n_init={n_init}, "
        f"threads={args.threads}; torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
        f"torchkmeans {torchkmeans.__version__}; best of {args.repeat}, interleaved"
    )
    # Warm up thread pools and lazy initialisation once.
    default_sweep(X, ks[:3], n_init)
    sklearn_loop(X, ks[:2], 1)

    functions: dict[str, Callable[[], Any]] = {
        "sklearn loop": lambda: sklearn_loop(X, ks, n_init),
        "torchkmeans loop": lambda: torchkmeans_loop(X, ks, n_init),
        "torchkmeans.elbow": lambda: default_sweep(X, ks, n_init),
    }
    if not args.no_plans:
        functions.update(
            {
                "plan: a fit per k (default)": lambda: default_sweep(X, ks, n_init),
                "plan: one padded batch": lambda: padded_sweep(X, ks, n_init, overhead=1e30),
                "plan: a padded batch per k": lambda: padded_sweep(X, ks, n_init, overhead=0),
                "plan: padded groups by cost": lambda: padded_sweep(X, ks, n_init, overhead=None),
                "plan: warm starts": lambda: warm_starts(X, ks, n_init),
            }
        )
    times, results = best_of(functions, args.repeat)
    reference = times["sklearn loop"]
    print(f"\n{'method':36s} {'seconds':>8s} {'vs sklearn':>11s}")
    for name, seconds in times.items():
        print(f"{name:36s} {seconds:8.3f} {reference / seconds:10.2f}x")

    sweep_inertia = np.asarray(results["torchkmeans.elbow"])
    print("\nper-k inertia of torchkmeans.elbow over each loop (lower is better)")
    print(f"{'k':>3s} {'sklearn':>9s} {'tk loop':>9s}")
    over_sklearn = sweep_inertia / results["sklearn loop"]
    over_loop = sweep_inertia / results["torchkmeans loop"]
    for k, a, b in zip(ks, over_sklearn, over_loop):
        print(f"{k:3d} {a:9.4f} {b:9.4f}")
    for name, ratio in (("sklearn loop", over_sklearn), ("torchkmeans loop", over_loop)):
        print(
            f"vs {name}: worst {ratio.max():.4f}, best {ratio.min():.4f}, "
            f"max |deviation| {np.abs(ratio - 1).max():.4f}"
        )
    if not args.no_plans:
        print("\nplans: worst per-k inertia over the sklearn loop")
        for name in functions:
            if name.startswith("plan"):
                ratio = np.asarray(results[name]) / results["sklearn loop"]
                print(f"{name:36s} {ratio.max():.4f}")


if __name__ == "__main__":
    main()
