"""Default fits of torchkmeans.KMeans against scikit-learn's on many kinds of data.

Usage::

    python benchmarks/bench_default_fits.py [--seeds 7] [--threads 2] [--only NAME ...]
        [--minibatch]

``bench_kmeans.py`` measures the issue's embedding shapes in depth; this script
checks the general case: real data sets shipped with scikit-learn (no download)
and generated data from 2 to 1024 features, 2 to 500 clusters, float32 and
float64. Each case runs ``KMeans(n_clusters=k, random_state=seed).fit(X)`` of
both libraries for every seed, the two taking turns (which goes first
alternates), after one warm-up fit each. Printed per case: the summed wall time
of torchkmeans over scikit-learn's (t/sk, < 1 is faster), the same per Lloyd
iteration (iteration counts depend on the seed), the mean inertia over
scikit-learn's, the mean iterations, and the median times of ``predict(X)``,
``score(X)`` and ``transform(X)`` with the same centres in both (7 calls
each, taking turns) over scikit-learn's. ``--minibatch`` compares the default ``MiniBatchKMeans`` fits
of both libraries instead (per step rather than per iteration; ``predict`` is
the same code as ``KMeans``'s and is not repeated). A script, never a test:
timings depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import _threads

_threads.pin_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.cluster import KMeans as SkKMeans  # noqa: E402
from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from torchkmeans import KMeans, MiniBatchKMeans  # noqa: E402


class Case(NamedTuple):
    name: str
    k: int
    data: Callable[[], np.ndarray]


def _blobs(n: int, d: int, centers: int, std: float = 1.0) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        X, _ = datasets.make_blobs(n, d, centers=centers, cluster_std=std, random_state=0)
        return X.astype(np.float32)

    return make


def _uniform(n: int, d: int) -> Callable[[], np.ndarray]:
    return lambda: np.random.default_rng(0).uniform(size=(n, d)).astype(np.float32)


def _gauss(n: int, d: int) -> Callable[[], np.ndarray]:
    return lambda: np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def _duplicated(n: int, d: int, distinct: int) -> Callable[[], np.ndarray]:
    """n rows that are copies of ``distinct`` points: many rows sit on their centre."""

    def make() -> np.ndarray:
        rng = np.random.default_rng(0)
        points = rng.standard_normal((distinct, d)).astype(np.float32)
        return points[rng.integers(0, distinct, n)]

    return make


CASES = (
    Case("iris", 3, lambda: datasets.load_iris().data),
    Case("wine", 3, lambda: datasets.load_wine().data),
    Case("breast_cancer", 2, lambda: datasets.load_breast_cancer().data),
    Case("diabetes", 5, lambda: datasets.load_diabetes().data),
    # The tutorials' data (float64, as make_blobs returns it): fixed costs.
    Case(
        "tutorial_300x2_k4",
        4,
        lambda: datasets.make_blobs(300, centers=4, cluster_std=0.60, random_state=0)[0],
    ),
    Case("digits_k30", 30, lambda: datasets.load_digits().data),
    Case("uniform_20000x2", 16, _uniform(20_000, 2)),
    Case("blobs_100000x2", 8, _blobs(100_000, 2, 8)),
    Case("blobs_1000000x2", 5, _blobs(1_000_000, 2, 5)),
    Case("blobs_200000x8", 32, _blobs(200_000, 8, 32, 3.0)),
    Case("blobs_200000x16", 16, _blobs(200_000, 16, 16, 3.0)),
    Case("blobs_5000x50_k500", 500, _blobs(5_000, 50, 500, 2.0)),
    Case("blobs_20000x256", 100, _blobs(20_000, 256, 100, 5.0)),
    # Few centroids of many features (the kernel's dots layout).
    Case("gauss_20000x100_k2", 2, _gauss(20_000, 100)),
    Case("blobs_50000x128_k3", 3, _blobs(50_000, 128, 3, 8.0)),
    Case("gauss_20000x512_k4", 4, _gauss(20_000, 512)),
    Case("gauss_20000x1024", 50, _gauss(20_000, 1024)),
    # Tight clusters far from the centres' mean: every row's label is a
    # suspect of the label check (certify), settled by the gaps between centres.
    Case("tight_20000x64_k8", 8, _blobs(20_000, 64, 8, 0.1)),
    Case("tight_1000x256_k8", 8, _blobs(1_000, 256, 8, 0.1)),
    Case("tight_1000x256_k64", 64, _blobs(1_000, 256, 64, 0.1)),
    # Copies of 100 points: rows on their centre, whose distances the
    # expansion blurs (measured again from differences).
    Case("dup_60000x8_k32", 32, _duplicated(60_000, 8, 100)),
    Case("dup_60000x64_k32", 32, _duplicated(60_000, 64, 100)),
)
CASES_BY_NAME = {case.name: case for case in CASES}
PREDICT_REPS = 7


def fit_seconds(estimator: Any, X: np.ndarray) -> tuple[float, float, int]:
    started = time.perf_counter()
    estimator.fit(X)
    seconds = time.perf_counter() - started
    steps = estimator.n_steps_ if hasattr(estimator, "n_steps_") else estimator.n_iter_
    return seconds, float(estimator.inertia_), int(steps)


def run_case(case: Case, seeds: int, minibatch: bool = False) -> str:
    X = np.ascontiguousarray(case.data())
    ours, theirs = (MiniBatchKMeans, SkMiniBatchKMeans) if minibatch else (KMeans, SkKMeans)
    makers = {
        "tk": lambda seed: ours(n_clusters=case.k, random_state=seed),
        "sk": lambda seed: theirs(n_clusters=case.k, random_state=seed),
    }
    for make in makers.values():
        fit_seconds(make(0), X)  # warm-up: thread pools, lazy imports
    seconds = {name: 0.0 for name in makers}
    inertia = {name: 0.0 for name in makers}
    n_iter = {name: 0 for name in makers}
    for seed in range(seeds):
        order = ("tk", "sk") if seed % 2 == 0 else ("sk", "tk")
        for name in order:
            spent, value, iterations = fit_seconds(makers[name](seed), X)
            seconds[name] += spent
            inertia[name] += value
            n_iter[name] += iterations
    per_iter = (seconds["tk"] / n_iter["tk"]) / (seconds["sk"] / n_iter["sk"])
    row = (
        f"{case.name:<20} {X.shape[0]:>8} {X.shape[1]:>5} {case.k:>4} {X.dtype.name:>8} "
        f"{seconds['tk'] / seconds['sk']:>6.2f} {per_iter:>9.2f} "
        f"{1e3 * seconds['tk'] / seeds:>9.1f} {1e3 * seconds['sk'] / seeds:>9.1f} "
        f"{inertia['tk'] / inertia['sk']:>9.4f} "
        f"{n_iter['tk'] / seeds:>6.1f} {n_iter['sk'] / seeds:>6.1f}"
    )
    if minibatch:
        return row
    # predict(X) with the same centres in both libraries, taking turns.
    fitted = {name: makers[name](0) for name in makers}
    fitted["tk"].fit(X)
    fitted["sk"].fit(X)
    fitted["sk"].cluster_centers_ = np.asarray(fitted["tk"].cluster_centers_)
    ratios = []
    for method in ("predict", "score", "transform"):
        times = {name: [] for name in makers}
        for rep in range(PREDICT_REPS):
            for name in ("tk", "sk") if rep % 2 == 0 else ("sk", "tk"):
                started = time.perf_counter()
                getattr(fitted[name], method)(X)
                times[name].append(time.perf_counter() - started)
        ratios.append(statistics.median(times["tk"]) / statistics.median(times["sk"]))
    return f"{row} {ratios[0]:>10.2f} {ratios[1]:>8.2f} {ratios[2]:>12.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=7, help="fits per library and case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(CASES_BY_NAME), help="run these cases")
    parser.add_argument(
        "--minibatch", action="store_true", help="MiniBatchKMeans of both libraries instead"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads)
    warnings.filterwarnings("ignore")  # convergence warnings of either library
    estimator = "MiniBatchKMeans" if args.minibatch else "KMeans"
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.seeds} seeds per case, "
        f"default {estimator} fits"
    )
    unit = "step" if args.minibatch else "iter"
    print(
        f"{'case':<20} {'n':>8} {'d':>5} {'k':>4} {'dtype':>8} {'t/sk':>6} {unit + ' t/sk':>9} "
        f"{'tk ms':>9} {'sk ms':>9} {'inert/sk':>9} {'tk ' + unit[:2]:>6} {'sk ' + unit[:2]:>6}"
        + ("" if args.minibatch else f" {'predict/sk':>10} {'score/sk':>8} {'transform/sk':>12}")
    )
    cases = [CASES_BY_NAME[name] for name in args.only] if args.only else list(CASES)
    for case in cases:
        print(run_case(case, args.seeds, args.minibatch), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
