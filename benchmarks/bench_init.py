"""k-means++ seeding of torchkmeans against scikit-learn's ``kmeans_plusplus``.

Usage::

    python benchmarks/bench_init.py [--quick] [--seeds 20] [--threads 1] [--only NAME ...]
        [--dtype float32 float64]

Each case seeds k centres on the same data with
``torchkmeans.functional.kmeans_plusplus`` and ``sklearn.cluster.kmeans_plusplus``
(both with ``n_local_trials = 2 + int(ln k)``), one seed after another, the two
libraries taking turns (which goes first alternates), after one warm-up call
each. Printed per case and dtype: the median seconds of each library and their
ratio (t/sk, < 1 is faster), and the mean inertia of the chosen centres over
the seeds, ours over scikit-learn's (k-means++ is random: it should stay
near 1). Large cases run fewer seeds (``Case.max_seeds``). ``--quick`` runs
the small cases only. A script, never a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import _threads

_threads.pin_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from torchkmeans.functional import kmeans_plusplus  # noqa: E402


class Case(NamedTuple):
    name: str
    k: int
    data: Callable[[], np.ndarray]
    max_seeds: int = 1000
    quick: bool = True


def _blobs(n: int, d: int, centers: int, std: float = 1.0) -> Callable[[], np.ndarray]:
    return lambda: datasets.make_blobs(n, d, centers=centers, cluster_std=std, random_state=0)[0]


CASES = (
    Case("iris", 3, lambda: datasets.load_iris().data),
    Case("digits", 10, lambda: datasets.load_digits().data),
    Case("blobs_300x2", 4, _blobs(300, 2, 4, 0.6)),
    Case("blobs_10000x32", 64, _blobs(10_000, 32, 64, 2.0)),
    Case("blobs_100000x128", 1024, _blobs(100_000, 128, 1024, 5.0), max_seeds=3, quick=False),
    Case("blobs_100000x1024", 256, _blobs(100_000, 1024, 256, 10.0), max_seeds=3, quick=False),
)
CASES_BY_NAME = {case.name: case for case in CASES}


def inertia(x: torch.Tensor, centres: torch.Tensor) -> float:
    """Sum of squared distances from the rows to their nearest centre, in float64."""
    x = x.double()
    centres = centres.double()
    mean = x.mean(0)
    x = x - mean
    centres = centres - mean
    c_sq = (centres * centres).sum(1)
    total = 0.0
    for start in range(0, x.shape[0], 4096):
        block = x[start : start + 4096]
        scores = torch.addmm(c_sq, block, centres.T, alpha=-2.0)
        total += float((scores.amin(1) + (block * block).sum(1)).clamp_min(0.0).sum())
    return total


def run_case(case: Case, dtype: np.dtype, seeds: int) -> str:
    X = np.ascontiguousarray(case.data(), dtype=dtype)
    x = torch.from_numpy(X)
    trials = 2 + int(math.log(case.k))
    seeds = min(seeds, case.max_seeds)

    def ours(seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        return kmeans_plusplus(x, case.k, n_local_trials=trials, generator=generator)[0].numpy()

    def theirs(seed: int) -> np.ndarray:
        return sk_kmeans_plusplus(X, case.k, n_local_trials=trials, random_state=seed)[0]

    runs = {"tk": ours, "sk": theirs}
    for run in runs.values():
        run(0)  # warm-up: thread pools, lazy imports, the native kernel
    times: dict[str, list[float]] = {name: [] for name in runs}
    inertias: dict[str, list[float]] = {name: [] for name in runs}
    for seed in range(seeds):
        for name in ("tk", "sk") if seed % 2 == 0 else ("sk", "tk"):
            started = time.perf_counter()
            centres = runs[name](seed)
            times[name].append(time.perf_counter() - started)
            inertias[name].append(inertia(x, torch.from_numpy(np.asarray(centres))))
    tk, sk = statistics.median(times["tk"]), statistics.median(times["sk"])
    ratio = statistics.mean(inertias["tk"]) / statistics.mean(inertias["sk"])
    return (
        f"{case.name:<18} {X.shape[0]:>7} {X.shape[1]:>5} {case.k:>5} {X.dtype.name:>8} "
        f"{seeds:>5} {1e3 * tk:>10.3f} {1e3 * sk:>10.3f} {tk / sk:>6.2f} {ratio:>9.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="calls per library and case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    parser.add_argument("--only", nargs="+", choices=list(CASES_BY_NAME), help="run these cases")
    parser.add_argument(
        "--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, k-means++ against scikit-learn")
    print(
        f"{'case':<18} {'n':>7} {'d':>5} {'k':>5} {'dtype':>8} {'seeds':>5} "
        f"{'tk ms':>10} {'sk ms':>10} {'t/sk':>6} {'inert/sk':>9}"
    )
    if args.only:
        cases = [CASES_BY_NAME[name] for name in args.only]
    else:
        cases = [case for case in CASES if case.quick or not args.quick]
    for case in cases:
        for dtype in args.dtype:
            print(run_case(case, np.dtype(dtype), args.seeds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
