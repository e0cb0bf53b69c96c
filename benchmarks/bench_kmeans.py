"""Benchmark torchkmeans against scikit-learn and faiss on the same data.

Usage::

    python benchmarks/bench_kmeans.py [--device cpu|cuda] [--quick] [--threads N]
                                      [--iters 20] [--only NAME] [--memory]
    python benchmarks/bench_kmeans.py --sweep [--threads N] [--sweep-iters 10]
                                      [--sweep-d 16,64] [--sweep-k 8,4096] [--no-faiss]

For every shape the script prints, in one run:

1. Fixed Lloyd iterations from the same initial centroids (k rows drawn with a
   fixed seed), ``tol=0``: seconds per iteration, the iterations each library
   actually ran, and the final inertia recomputed the same way for every
   library (float64, every point to its nearest final centroid), as ratios
   against scikit-learn and faiss. Peak memory of the fit (RSS growth during
   the fit over the size of the data) is measured in a fresh child process
   per library, for the first shape, or for all shapes with ``--memory``.
2. A default full fit (k-means++, ``n_init="auto"``, ``random_state=0``) of
   ``torchkmeans.KMeans`` against ``sklearn.cluster.KMeans``.
3. Achieved GFLOP/s of one assignment step (``nearest_centroids``, 2*n*d*k
   flops) against ``torch.mm`` on the same shape.
4. Where the time of one torchkmeans Lloyd iteration goes (torch.profiler,
   aten ops grouped by the torchkmeans function that issued them).

``--sweep`` prints instead a grid over the number of features d and of
clusters k (float32, and a few float64 cells): the time of fixed Lloyd
iterations of ``torchkmeans.KMeans`` (``init=C, n_init=1, tol=0``) over
scikit-learn's ``lloyd`` and faiss's, n chosen so that one fit takes about
0.1-1 s, and flags the cells where torchkmeans is slower than faiss or above
0.8x scikit-learn.

It is a script, never a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TypeVar

import _threads

_threads.pin_threads()

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans as SkKMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

import torchkmeans  # noqa: E402
from torchkmeans.functional import (  # noqa: E402
    _native,
    block_rows,
    lloyd,
    nearest_centroids,
)
from torchkmeans.functional.lloyd import _assign_pass, prepare, run_lloyd  # noqa: E402

try:
    import faiss
except ImportError:
    faiss = None

try:
    import psutil
except ImportError:
    psutil = None

T = TypeVar("T")

LIBRARIES = ("torchkmeans", "sklearn", "faiss")
FULL_FIT_MAX_ITER = 50
WAIT_IDLE_S = 0.0  # set from --wait-idle
SEED = 0


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: where the data comes from and its size."""

    name: str
    source: str  # "blobs", "digits" or "tutorial"
    n: int
    d: int
    k: int
    quick_n: int

    @property
    def tiny(self) -> bool:
        """Milliseconds per fit: timed as the median of many runs."""
        return self.source != "blobs"


SHAPES = (
    Shape("emb384", "blobs", 200_000, 384, 256, 10_000),
    Shape("emb128", "blobs", 100_000, 128, 1024, 10_000),
    Shape("small32", "blobs", 100_000, 32, 64, 10_000),
    # Low-dimensional points, as in a notebook's scatter plot: not one of the
    # issue's shapes; the product is a small part of the work here.
    Shape("points2d", "blobs", 200_000, 2, 16, 20_000),
    Shape("digits", "digits", 1797, 64, 10, 1797),
    Shape("tutorial", "tutorial", 300, 2, 4, 300),
)
SHAPES_BY_NAME = {shape.name: shape for shape in SHAPES}


class Problem(NamedTuple):
    shape: Shape
    X: np.ndarray  # (n, d) float32, C-contiguous
    C0: np.ndarray  # (k, d) float32, k distinct rows of X


def make_blobs32(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Gaussian mixture in float32: k centres around a common offset, unit noise.

    The offset keeps the data off the origin, as real embeddings are, so the
    centring every library does matters.
    """
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(d, dtype=np.float32) * 3.0
    centres = rng.standard_normal((k, d), dtype=np.float32) * 1.5 + offset
    sizes = rng.dirichlet(np.full(k, 5.0))
    labels = rng.choice(k, size=n, p=sizes)
    X = centres[labels]
    X += rng.standard_normal((n, d), dtype=np.float32)
    return X


def tutorial_data() -> np.ndarray:
    """The 300-point, 2-feature data set of the K-Means tutorial."""
    rs = np.random.RandomState(2021)
    x1 = rs.randint(0, 4, (300, 1))
    x2 = rs.uniform(0, 10, (300, 1))
    return np.hstack([x1, x2]).astype(np.float32)


def make_problem(shape: Shape, quick: bool) -> Problem:
    if shape.source == "blobs":
        n = shape.quick_n if quick else shape.n
        X = make_blobs32(n, shape.d, shape.k, seed=SEED)
    elif shape.source == "digits":
        X = load_digits().data.astype(np.float32)
    else:
        X = tutorial_data()
    X = np.ascontiguousarray(X)
    rows = np.random.default_rng(SEED + 1).choice(X.shape[0], size=shape.k, replace=False)
    return Problem(shape, X, np.ascontiguousarray(X[np.sort(rows)]))


def inertia64(X: np.ndarray, centroids: np.ndarray, block: int = 16384) -> float:
    """Sum of squared distances of every row to its nearest centroid, in float64.

    Every library's centroids go through this one function, so the inertias
    compare centroids, not each library's own bookkeeping.
    """
    x = torch.from_numpy(X)
    c = torch.as_tensor(np.asarray(centroids), dtype=torch.float64)
    mean = x.mean(0, dtype=torch.float64)
    c = c - mean
    c_sq = (c * c).sum(1)
    total = 0.0
    for start in range(0, x.shape[0], block):
        xb = x[start : start + block].to(torch.float64) - mean
        d2 = torch.addmm(c_sq.unsqueeze(0), xb, c.T, alpha=-2.0)
        d2 += (xb * xb).sum(1, keepdim=True)
        total += float(d2.min(1).values.clamp_min_(0.0).sum())
    return total


# ------------------------------------------------------------------ environment


def configure_threads(threads: int) -> None:
    """One thread count for torch, BLAS/OpenMP (threadpoolctl) and faiss."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def faiss_has_gpu() -> bool:
    return faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def print_machine(args: argparse.Namespace, device: torch.device) -> None:
    pools = sorted(
        {f"{p['internal_api']} {p.get('version') or ''}".strip() for p in threadpool_info()}
    )
    print(f"CPU      : {cpu_model()} ({os.cpu_count()} logical CPUs)")
    if device.type == "cuda":
        print(f"GPU      : {torch.cuda.get_device_name(device)}")
    print(
        f"threads  : {args.threads} (torch.get_num_threads()={torch.get_num_threads()}; pools: {', '.join(pools)})"
    )
    print(
        f"versions : python {platform.python_version()}, torch {torch.__version__}, "
        f"torchkmeans {torchkmeans.__version__}, scikit-learn {sklearn.__version__}, "
        f"faiss {getattr(faiss, '__version__', 'not installed')}, numpy {np.__version__}"
    )
    mode = "quick" if args.quick else "full"
    print(f"run      : {mode}, device={device}, iters={args.iters}, float32, seed={SEED}")
    print_load("load     : before")


def print_load(prefix: str) -> None:
    """Load average: timings of a shared machine are only as good as it is idle."""
    if not hasattr(os, "getloadavg"):
        return
    one, five, _ = os.getloadavg()
    warning = "  WARNING: the machine is busy" if max(one, five) > 0.5 else ""
    print(f"{prefix} 1-min {one:.2f}, 5-min {five:.2f}{warning}")


class CpuClock(NamedTuple):
    """CPU seconds used by the whole machine and by this process (and its children)."""

    machine: float
    own: float

    @classmethod
    def now(cls) -> CpuClock | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, _steal = fields
        machine = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
        own = sum(
            usage.ru_utime + usage.ru_stime
            for usage in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        return cls(machine, own)


def foreign_share(start: CpuClock | None, wall: float) -> tuple[float, float] | None:
    """CPU-seconds other processes used since ``start``, and their share of the machine."""
    end = CpuClock.now()
    if start is None or end is None or wall <= 0:
        return None
    foreign = max(0.0, (end.machine - start.machine) - (end.own - start.own))
    return foreign, min(1.0, foreign / (wall * (os.cpu_count() or 1)))


def print_foreign_cpu(start: CpuClock | None, wall: float) -> None:
    """How much CPU other processes took while the benchmark ran (contamination)."""
    used = foreign_share(start, wall)
    if used is None:
        return
    foreign, share = used
    warning = "  WARNING: timings are contaminated" if share > 0.05 else ""
    print(
        f"other processes used {foreign:.1f} CPU-s during the run ({100 * share:.1f}% of the machine){warning}"
    )


def wait_until_idle(timeout_s: float, threshold: float = 0.1) -> None:
    """Wait (at most ``timeout_s``) until other processes use < ``threshold`` of the machine.

    With 2 cores, one busy foreign thread stalls every OpenMP barrier of a
    2-thread run: a shared machine gives timings that are several times off.
    """
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        clock = CpuClock.now()
        time.sleep(0.5)
        used = foreign_share(clock, 0.5)
        if used is None or used[1] < threshold:
            return
    progress(f"machine still busy after waiting {timeout_s:.0f} s; timing anyway")


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- timing


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class Timing(NamedTuple):
    seconds: float  # median over the repetitions
    reps: int
    result: Any  # of the last repetition
    busy: float | None  # share of the machine other processes used meanwhile


def measure(
    fn: Callable[[], T],
    *,
    sync: Callable[[], None],
    budget_s: float,
    min_reps: int = 1,
    max_reps: int = 50,
) -> Timing:
    """Median wall time of ``fn`` over repetitions: at least ``min_reps``, then
    until ``budget_s`` is spent or ``max_reps`` runs.
    """
    if WAIT_IDLE_S > 0:
        wait_until_idle(WAIT_IDLE_S)
    times: list[float] = []
    clock = CpuClock.now()
    began = time.perf_counter()
    while True:
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= max_reps:
            break
        if len(times) >= min_reps and time.perf_counter() - began >= budget_s:
            break
    used = foreign_share(clock, time.perf_counter() - began)
    return Timing(statistics.median(times), len(times), result, None if used is None else used[1])


def measure_together(
    fns: dict[str, Callable[[], Any]],
    *,
    sync: Callable[[], None],
    budget_s: float,
    min_rounds: int = 3,
    max_rounds: int = 50,
    warm_up: bool = True,
) -> tuple[dict[str, Timing], float | None]:
    """Median wall time of each function, run in turn round after round.

    Interleaving gives every function the same share of the machine's
    slow and fast moments, so their ratios hold even when other guests on the
    host come and go, which timing one function after the other does not.
    Returns each one's timing (with its last result) and the share of the
    machine other processes used meanwhile.
    """
    if WAIT_IDLE_S > 0:
        wait_until_idle(WAIT_IDLE_S)
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    clock = CpuClock.now()
    began = time.perf_counter()
    if warm_up:
        for fn in fns.values():
            fn()
    for round_index in range(max_rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            results[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        if round_index + 1 >= min_rounds and time.perf_counter() - began >= budget_s:
            break
    used = foreign_share(clock, time.perf_counter() - began)
    busy = None if used is None else used[1]
    timings = {
        name: Timing(statistics.median(values), len(values), results[name], busy)
        for name, values in times.items()
    }
    return timings, busy


class Fit(NamedTuple):
    """Final centroids (numpy, input scale) and the iterations a library ran."""

    centroids: np.ndarray
    n_iter: int


def fixed_iteration_runner(
    library: str, problem: Problem, iters: int, device: torch.device
) -> Callable[[int], Fit]:
    """A function running ``iters`` Lloyd iterations of ``library`` from ``problem.C0``."""
    X, C0 = problem.X, problem.C0
    d = X.shape[1]
    k = C0.shape[0]
    if library == "torchkmeans":
        x = torch.from_numpy(X).to(device)
        c0 = torch.from_numpy(C0).to(device)

        def run_torchkmeans(max_iter: int) -> Fit:
            result = lloyd(x, c0, max_iter=max_iter, tol=0.0)
            return Fit(result.centroids.cpu().numpy(), int(result.n_iter))

        return run_torchkmeans
    if library == "sklearn":

        def run_sklearn(max_iter: int) -> Fit:
            km = SkKMeans(
                n_clusters=k, init=C0, n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd"
            )
            km.fit(X)
            return Fit(km.cluster_centers_, int(km.n_iter_))

        return run_sklearn
    if library == "faiss":
        use_gpu = device.type == "cuda"

        def run_faiss(max_iter: int) -> Fit:
            km = faiss.Kmeans(
                d,
                k,
                niter=max_iter,
                seed=1234,
                spherical=False,
                verbose=False,
                gpu=use_gpu,
                max_points_per_centroid=10**9,
                min_points_per_centroid=1,
            )
            km.train(X, init_centroids=C0)
            return Fit(km.centroids, len(km.obj))

        return run_faiss
    raise ValueError(f"Expected library to be one of {LIBRARIES}, got {library!r}.")


def libraries_for(device: torch.device) -> list[str]:
    libs = ["torchkmeans", "sklearn"]
    if faiss is not None and (device.type == "cpu" or faiss_has_gpu()):
        libs.append("faiss")
    return libs


# ---------------------------------------------------------------------- memory


def current_rss() -> int:
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """High-water mark of this process's RSS.

    ``VmHWM`` where /proc exists: ``ru_maxrss`` also counts the parent's RSS
    inherited across fork and exec, so a child of a large parent would
    report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def memory_child(spec: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: one fixed-iteration fit, print its peak memory as JSON."""
    shape_name, library = spec.split(":")
    device = torch.device(args.device)
    problem = make_problem(SHAPES_BY_NAME[shape_name], args.quick)
    k = problem.shape.k
    warm_rows = min(problem.X.shape[0], max(2048, 4 * k))
    warm = Problem(problem.shape, np.ascontiguousarray(problem.X[:warm_rows]), problem.C0)
    fixed_iteration_runner(library, warm, 1, device)(1)  # thread pools, lazy buffers
    run = fixed_iteration_runner(library, problem, args.iters, device)
    gpu = device.type == "cuda" and library == "torchkmeans"
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset = reset_peak_rss()
        before = current_rss() if reset else peak_rss()
    run(args.iters)
    if gpu:
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = max(peak_rss(), current_rss())
    growth = max(0, peak - before)
    print(
        json.dumps(
            {
                "growth": growth,
                "data": problem.X.nbytes,
                "ratio": growth / problem.X.nbytes,
                "gpu": gpu,
            }
        )
    )


def measure_memory(shape: Shape, library: str, args: argparse.Namespace) -> float | None:
    """Peak memory growth / data bytes of one fit, from a child process."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child-memory",
        f"{shape.name}:{library}",
        "--threads",
        str(args.threads),
        "--iters",
        str(args.iters),
        "--device",
        args.device,
    ]
    if args.quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        progress(
            f"memory child {shape.name}:{library} failed (rc={done.returncode}): {done.stderr.strip()[-500:]}"
        )
        return None
    return float(json.loads(lines[-1])["ratio"])


# -------------------------------------------------------------------- sections


@dataclass
class Row:
    shape: str
    library: str
    seconds: float
    reps: int
    n_iter: int
    inertia: float
    busy: float | None
    memory: float | None = None


def bench_fixed(
    problem: Problem, args: argparse.Namespace, device: torch.device, measure_mem: bool
) -> list[Row]:
    sync = synchronizer(device)
    budget = 0.5 if args.quick else 3.0
    libraries = libraries_for(device)
    runs: dict[str, Callable[[], Fit]] = {}
    for library in libraries:
        run = fixed_iteration_runner(library, problem, args.iters, device)
        run(1)
        runs[library] = functools.partial(run, args.iters)
    # The libraries take turns, so that a slow spell of the shared machine
    # falls on all of them rather than on whichever ran then.
    progress(f"{problem.shape.name}: {', '.join(libraries)} in turn, {args.iters} fixed iterations")
    timings, _ = measure_together(
        runs,
        sync=sync,
        budget_s=len(runs) * budget,
        min_rounds=5 if problem.shape.tiny else 2,
        warm_up=False,
    )
    rows = []
    for library in libraries:
        timing = timings[library]
        memory = measure_memory(problem.shape, library, args) if measure_mem else None
        fit = timing.result
        rows.append(
            Row(
                problem.shape.name,
                library,
                timing.seconds,
                timing.reps,
                fit.n_iter,
                inertia64(problem.X, fit.centroids),
                timing.busy,
                memory,
            )
        )
    return rows


# Tiny fits take milliseconds and their iteration count depends on the seed
# (k-means++ draws differ between libraries), so one seed decides nothing:
# both libraries are timed over the same seeds and averaged.
TINY_SEEDS = 100


def bench_full_fit(problem: Problem, args: argparse.Namespace, device: torch.device) -> list[Row]:
    shape = problem.shape
    sync = synchronizer(device)
    max_iter = FULL_FIT_MAX_ITER if shape.source == "blobs" else 300
    x_tk: Any = problem.X if device.type == "cpu" else torch.from_numpy(problem.X).to(device)
    seeds = range(TINY_SEEDS if shape.tiny else 1)

    def fit_torchkmeans(seed: int) -> Fit:
        km = torchkmeans.KMeans(n_clusters=shape.k, random_state=seed, max_iter=max_iter).fit(x_tk)
        return Fit(torch.as_tensor(km.cluster_centers_).cpu().numpy(), int(km.n_iter_))

    def fit_sklearn(seed: int) -> Fit:
        km = SkKMeans(n_clusters=shape.k, random_state=seed, max_iter=max_iter).fit(problem.X)
        return Fit(km.cluster_centers_, int(km.n_iter_))

    fits = {"torchkmeans": fit_torchkmeans, "sklearn": fit_sklearn}
    seconds: dict[str, list[float]] = {library: [] for library in fits}
    reps = dict.fromkeys(fits, 0)
    n_iters: dict[str, list[int]] = {library: [] for library in fits}
    inertias: dict[str, list[float]] = {library: [] for library in fits}
    busy: list[float] = []
    progress(f"{shape.name}: torchkmeans and sklearn in turn, default full fit")
    for seed in seeds:
        # Both libraries on the same seed take turns (see measure_together).
        fns = {library: functools.partial(fit_fn, seed) for library, fit_fn in fits.items()}
        if shape.tiny:
            timings, used = measure_together(
                fns, sync=sync, budget_s=2 * (0.02 if args.quick else 0.05), min_rounds=5
            )
        else:
            timings, used = measure_together(
                fns, sync=sync, budget_s=0.0, min_rounds=1, warm_up=False
            )
        for library, timing in timings.items():
            seconds[library].append(timing.seconds)
            reps[library] += timing.reps
            n_iters[library].append(timing.result.n_iter)
            inertias[library].append(inertia64(problem.X, timing.result.centroids))
        if used is not None:
            busy.append(used)
    return [
        Row(
            shape.name,
            library,
            statistics.fmean(seconds[library]),
            reps[library],
            round(statistics.fmean(n_iters[library])),
            statistics.fmean(inertias[library]),
            statistics.fmean(busy) if busy else None,
        )
        for library in fits
    ]


@dataclass
class Flops:
    shape: str
    n: int
    d: int
    k: int
    block: int
    assign: float
    lloyd_assign: float
    mm_full: float | None
    mm_blocked: float
    busy: float | None
    fused_step: float | None = None  # GF/s of the fused kernel's labels and sums, if it runs


def bench_flops(problem: Problem, args: argparse.Namespace, device: torch.device) -> Flops:
    """Assignment step against a plain matrix product of the same size."""
    shape = problem.shape
    progress(f"{shape.name}: assignment GFLOP/s")
    sync = synchronizer(device)
    budget = 0.3 if args.quick else 2.0
    x = torch.from_numpy(problem.X).to(device)
    mean = x.mean(0)
    x = x - mean
    c = torch.from_numpy(problem.C0).to(device) - mean
    n, d = x.shape
    k = c.shape[0]
    flops = 2.0 * n * d * k
    ct = c.T

    def assign() -> None:
        nearest_centroids(x, c)

    def full_mm() -> None:
        torch.mm(x, ct)

    rows = block_rows(n, k, itemsize=x.element_size(), device=x.device)
    out = torch.empty((rows, k), dtype=x.dtype, device=device)

    def blocked_mm() -> None:
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            torch.mm(x[start:stop], ct, out=out[: stop - start])

    # The assignment step as Lloyd runs it: one product of [x | 1] rows with
    # [-2c | |c|^2], and the argmin warm-started from the previous iteration's
    # labels (state after a few iterations from the benchmark's start).
    prep = prepare(torch.from_numpy(problem.X).to(device))
    start = torch.from_numpy(problem.C0).to(device)[None] - prep.offset
    before = run_lloyd(prep, start, max_iter=2, tol=0.0)
    after = run_lloyd(prep, start, max_iter=3, tol=0.0)
    lloyd_rows = block_rows(n, k, itemsize=x.element_size(), device=x.device)
    labels_out = torch.empty_like(before.labels)

    def lloyd_assign() -> None:
        _assign_pass(prep, after.centroids, labels_out, lloyd_rows, previous=before.labels)

    fns: dict[str, Callable[[], None]] = {}
    fused = _native.prefers_native(prep.x[0], k)
    if fused:
        # Lloyd runs this shape through the fused kernel: the assignment is its
        # labels; the fused step also sums each cluster's rows in the same pass.
        totals = torch.empty((k, d + 1), dtype=torch.float64)
        centroids = after.centroids[0].contiguous()

        def lloyd_assign() -> None:
            _native.nearest(prep.x[0], centroids, labels_out[0], previous=before.labels[0])

        def fused_step() -> None:
            _native.nearest(
                prep.x[0], centroids, labels_out[0], previous=before.labels[0], totals=totals
            )

        fns["step"] = fused_step

    fns.update({"assign": assign, "lloyd": lloyd_assign, "blocked": blocked_mm})
    if n * k * x.element_size() <= 2 * 2**30:
        fns["full"] = full_mm
    timings, busy = measure_together(
        fns, sync=sync, budget_s=len(fns) * budget, min_rounds=20 if shape.tiny else 3
    )
    gflops = {name: flops / timing.seconds / 1e9 for name, timing in timings.items()}
    return Flops(
        shape.name,
        n,
        d,
        k,
        rows,
        gflops["assign"],
        gflops["lloyd"],
        gflops.get("full"),
        gflops["blocked"],
        busy,
        gflops.get("step"),
    )


PHASES = (
    "fused",
    "matmul",
    "argmin",
    "labels/dist",
    "scatter",
    "relocate",
    "update",
    "bookkeep",
    "prepare",
    "python",
)
_MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul"}
_ARGMIN_OPS = {"aten::min", "aten::argmin", "aten::amin", "aten::max"}
_SCATTER_OPS = {"aten::index_add_", "aten::scatter_add_", "aten::index_add"}
_ASSIGN_FUNCS = {
    "_assign_pass",
    "_assign_pass_warm",
    "argmin_rows",
    "augmented_centroids",
    "augmented_scores",
    "exact_distances",
    "nearest_centroids",
    "partial_scores",
}


def _phase(op: str, functions: list[str]) -> str:
    """Phase of one aten op, from the torchkmeans functions on its call stack."""
    called_from = set(functions)
    if "prepare" in called_from:
        return "prepare"
    if "relocate_empty_clusters" in called_from or op == "aten::topk":
        return "relocate"
    if op in _MATMUL_OPS and called_from & {
        "partial_scores",
        "augmented_scores",
        "_assign_pass_warm",
        "_run_lloyd_small",
    }:
        return "matmul"
    if op in _ARGMIN_OPS and called_from & _ASSIGN_FUNCS:
        return "argmin"
    if op in _SCATTER_OPS or called_from & {"accumulate", "scatter_sums"}:
        return "scatter"
    if "centroids_from_sums" in called_from or (
        op in {"aten::div", "aten::normalize"} and "_run_lloyd_small" in called_from
    ):
        return "update"
    if called_from & _ASSIGN_FUNCS:
        return "labels/dist"
    return "bookkeep"


def _torchkmeans_stack(event: Any) -> list[str]:
    """Names of the torchkmeans Python functions enclosing a profiler event."""
    functions = []
    frame = event.cpu_parent
    while frame is not None:
        if "torchkmeans" in frame.name:
            functions.append(frame.name.rsplit(": ", 1)[-1])
        frame = frame.cpu_parent
    return functions


@dataclass
class Phases:
    shape: str
    n_iter: int
    wall: float  # seconds of the unprofiled call
    seconds: dict[str, float]  # per phase, whole call


def profile_lloyd(
    problem: Problem, args: argparse.Namespace, device: torch.device, wall: float
) -> Phases:
    """Self time of every aten op in one ``lloyd`` call, grouped by phase.

    ``python`` is the wall time of the unprofiled call minus the op time: the
    interpreter and dispatch overhead between ops.
    """
    from torch.profiler import ProfilerActivity, profile

    progress(f"{problem.shape.name}: profiling torchkmeans lloyd")
    x = torch.from_numpy(problem.X).to(device)
    c0 = torch.from_numpy(problem.C0).to(device)
    lloyd(x, c0, max_iter=1, tol=0.0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # torch.profiler's Python stacks come back with corrupt names when a
    # ctypes call runs an OpenMP region (torch 2.13): shapes the fused kernel
    # runs are profiled without stacks, and their other ops count as bookkeep.
    fused = _native.prefers_native(x, c0.shape[0])
    with profile(activities=activities, with_stack=not fused) as prof:
        result = lloyd(x, c0, max_iter=args.iters, tol=0.0)
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name == "torchkmeans::fused_assign":  # the native kernel (no aten ops inside)
            seconds["fused"] += event.self_cpu_time_total / 1e6
            continue
        if not event.name.startswith("aten::"):
            continue
        # self_device_time_total was self_cuda_time_total in older torch.
        self_us = (
            getattr(event, "self_device_time_total", None)
            or getattr(event, "self_cuda_time_total", 0)
            if device.type == "cuda"
            else event.self_cpu_time_total
        )
        seconds[_phase(event.name, _torchkmeans_stack(event))] += self_us / 1e6
    seconds["python"] = max(0.0, wall - sum(seconds.values())) if device.type == "cpu" else 0.0
    return Phases(problem.shape.name, int(result.n_iter), wall, dict(seconds))


# ------------------------------------------------------------------------ sweep

SWEEP_D = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
SWEEP_K = (2, 8, 64, 512, 4096)
# Cells also timed in float64 (faiss computes in float32 only: no faiss column).
SWEEP_FLOAT64 = ((8, 8), (16, 4096), (64, 64), (256, 512), (1024, 8))
# Multiply-adds of one assignment (n * d * k) a sweep cell aims at, and the
# most it may take: n is at least 2k rows, so the widest rows with the most
# centroids would take minutes per fit (they are skipped).
SWEEP_WORK = 1e9
SWEEP_MAX_WORK = 5e9
SWEEP_MAX_ROWS = 1_000_000
SWEEP_MAX_ELEMENTS = 2**25  # 128 MiB of float32 rows
SWEEP_SLOWER_THAN_SKLEARN = 0.8
# Blobs of every cell's data: with as many blobs as clusters, few clusters
# converge in 2-4 iterations, where a fit's fixed costs weigh on the time
# per iteration; more blobs than clusters keep the iterations going.
SWEEP_BLOBS = 256


def sweep_rows(d: int, k: int) -> int | None:
    """n for a sweep cell of d features and k clusters, or None (too slow to time)."""
    n = int(SWEEP_WORK / (d * k))
    n = min(n, SWEEP_MAX_ROWS, SWEEP_MAX_ELEMENTS // d)
    n = max(n, 2 * k, 1000)
    return None if n * d * k > SWEEP_MAX_WORK else n


class SweepCell(NamedTuple):
    d: int
    k: int
    n: int
    dtype: str
    seconds: dict[str, float]  # per library, median of one fit over the iterations it ran
    inertia: dict[str, float]  # per library, recomputed in float64
    n_iter: dict[str, int]  # per library
    busy: float | None


def sweep_runners(
    X: np.ndarray, C0: np.ndarray, iters: int, libraries: list[str]
) -> dict[str, Callable[[], Fit]]:
    """Fixed-iteration fits of each library from C0, as a user calls them; each
    returns its final centroids and the iterations it ran."""
    d = X.shape[1]
    k = C0.shape[0]
    runners: dict[str, Callable[[], Fit]] = {}
    if "torchkmeans" in libraries:

        def run_torchkmeans() -> Fit:
            fit = torchkmeans.KMeans(k, init=C0, n_init=1, max_iter=iters, tol=0.0).fit(X)
            return Fit(fit.cluster_centers_, int(fit.n_iter_))

        runners["torchkmeans"] = run_torchkmeans
    if "sklearn" in libraries:

        def run_sklearn() -> Fit:
            fit = SkKMeans(k, init=C0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
            fit.fit(X)
            return Fit(fit.cluster_centers_, int(fit.n_iter_))

        runners["sklearn"] = run_sklearn
    if "faiss" in libraries and X.dtype == np.float32:

        def run_faiss() -> Fit:
            km = faiss.Kmeans(
                d, k, niter=iters, max_points_per_centroid=10**9, min_points_per_centroid=1
            )
            km.train(X, init_centroids=C0)
            return Fit(km.centroids, len(km.obj))

        runners["faiss"] = run_faiss
    return runners


def sweep_cell(d: int, k: int, dtype: np.dtype, args: argparse.Namespace) -> SweepCell | None:
    n = sweep_rows(d, k)
    if n is None:
        return None
    X = make_blobs32(n, d, SWEEP_BLOBS, seed=SEED).astype(dtype, copy=False)
    rows = np.random.default_rng(SEED + 1).choice(n, size=k, replace=False)
    C0 = np.ascontiguousarray(X[np.sort(rows)])
    libraries = ["torchkmeans", "sklearn"] + ([] if args.no_faiss or faiss is None else ["faiss"])
    runners = sweep_runners(X, C0, args.sweep_iters, libraries)
    progress(f"sweep d={d} k={k} n={n} {np.dtype(dtype).name}: {', '.join(runners)} in turn")
    # Five rounds at least: the machine's speed drifts by up to 2x within
    # minutes, and the median of three rounds of the largest cells (a fit of
    # 1,000,000 rows takes a few tenths of a second) had followed it.
    timings, busy = measure_together(
        runners, sync=lambda: None, budget_s=len(runners) * 0.6, min_rounds=5
    )
    return SweepCell(
        d,
        k,
        n,
        np.dtype(dtype).name,
        {name: timing.seconds / max(timing.result.n_iter, 1) for name, timing in timings.items()},
        {
            name: inertia64(X.astype(np.float32), timing.result.centroids)
            for name, timing in timings.items()
        },
        {name: timing.result.n_iter for name, timing in timings.items()},
        busy,
    )


def _numbers(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return default if not text else tuple(int(value) for value in text.split(","))


def run_sweep(args: argparse.Namespace) -> None:
    ds = _numbers(args.sweep_d, SWEEP_D)
    ks = _numbers(args.sweep_k, SWEEP_K)
    grid: list[tuple[int, int, Any]] = [(d, k, np.float32) for d in ds for k in ks]
    if not (args.sweep_d or args.sweep_k):
        grid += [(d, k, np.float64) for d, k in SWEEP_FLOAT64]
    cells = [cell for d, k, dtype in grid if (cell := sweep_cell(d, k, dtype, args)) is not None]
    skipped = [(d, k) for d, k, _ in grid if sweep_rows(d, k) is None]
    _print_header(
        f"Sweep: KMeans(k, init=C, n_init=1, max_iter={args.sweep_iters}, tol=0).fit(X)",
        f"""
        ms/it = median wall time of one fit, the libraries timed in turn round after round,
        over the iterations it ran (iters: torchkmeans/sklearn/faiss; the first two stop early
        where no label changes); t/sk, t/faiss = torchkmeans' ms/it over scikit-learn's
        (algorithm="lloyd") and faiss's (< 1 is faster); inert/sk = torchkmeans' inertia over
        scikit-learn's, both recomputed in float64 from the final centroids; weak = slower
        than faiss, or t/sk above {SWEEP_SLOWER_THAN_SKLEARN}. Data: make_blobs32 with
        {SWEEP_BLOBS} blobs.
        """,
        f"{'d':>5} {'k':>5} {'n':>8} {'dtype':<7} {'tk ms/it':>8} {'sk ms/it':>8} {'fa ms/it':>8} "
        f"{'iters':>8} "
        f"{'t/sk':>6} {'t/faiss':>7} {'inert/sk':>9} {'busy':>5} weak",
    )
    for cell in cells:
        tk = cell.seconds["torchkmeans"]
        sk = cell.seconds.get("sklearn")
        fa = cell.seconds.get("faiss")
        weak = (fa is not None and tk > fa) or (
            sk is not None and tk > SWEEP_SLOWER_THAN_SKLEARN * sk
        )
        print(
            f"{cell.d:>5} {cell.k:>5} {cell.n:>8} {cell.dtype:<7} {1e3 * tk:>8.3f} "
            f"{'-' if sk is None else f'{1e3 * sk:.3f}':>8} "
            f"{'-' if fa is None else f'{1e3 * fa:.3f}':>8} "
            f"{'/'.join(str(value) for value in cell.n_iter.values()):>8} "
            f"{_ratio(tk, sk):>6} {_ratio(tk, fa):>7} "
            f"{_ratio(cell.inertia['torchkmeans'], cell.inertia.get('sklearn')):>9} "
            f"{_busy(cell.busy):>5} {'*' if weak else ''}"
        )
    float32 = {(cell.d, cell.k): cell for cell in cells if cell.dtype == "float32"}
    for title, reference in (("t/sk", "sklearn"), ("t/faiss", "faiss")):
        if not any(reference in cell.seconds for cell in float32.values()):
            continue
        print(f"\n{title}, float32 (rows d, columns k)")
        print(f"{'d':>5} " + " ".join(f"{k:>7}" for k in ks))
        for d in ds:
            values = []
            for k in ks:
                cell = float32.get((d, k))
                value = None if cell is None else cell.seconds.get(reference)
                values.append(_ratio(cell.seconds["torchkmeans"], value) if cell else "-")
            print(f"{d:>5} " + " ".join(f"{value:>7}" for value in values))
    if skipped:
        print(f"\nskipped (over {SWEEP_MAX_WORK:.0e} multiply-adds per iteration): {skipped}")


# ---------------------------------------------------------------------- tables


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0:
        return "-"
    return f"{value / reference:.3f}"


def _busy(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def _by_shape(rows: list[Row]) -> dict[str, dict[str, Row]]:
    grouped: dict[str, dict[str, Row]] = defaultdict(dict)
    for row in rows:
        grouped[row.shape][row.library] = row
    return grouped


def _print_header(title: str, notes: str, header: str, busy: bool = True) -> None:
    print(f"\n== {title} ==")
    print(textwrap.dedent(notes).strip())
    if busy:
        print(BUSY_NOTE)
    print(header)
    print("-" * len(header))


BUSY_NOTE = "busy = share of the machine other processes used during the measurement."


def print_fixed_table(rows: list[Row], iters: int) -> None:
    _print_header(
        f"Fixed Lloyd iterations: same initial centroids, max_iter={iters}, tol=0",
        """
        s/iter = median wall time of one fit / n_iter it ran, the libraries timed in turn round
        after round (torchkmeans and sklearn also centre
        the data and relabel at the end, faiss does neither); inertia recomputed in float64 from
        each library's final centroids; mem/data = (peak RSS during the fit - RSS before) / bytes
        of X, in a fresh process per library; t/sk, t/faiss = s/iter of the row / s/iter of
        sklearn, faiss on the same shape (< 1 is faster).
        """,
        f"{'shape':<9} {'library':<12} {'s/iter':>10} {'total s':>9} {'reps':>4} "
        f"{'n_iter':>6} {'inertia':>14} {'inert/sk':>9} {'mem/data':>8} {'t/sk':>7} "
        f"{'t/faiss':>7} {'busy':>5}",
    )
    for shape, libs in _by_shape(rows).items():
        sk = libs.get("sklearn")
        fa = libs.get("faiss")
        sk_iter = sk.seconds / max(sk.n_iter, 1) if sk else None
        fa_iter = fa.seconds / max(fa.n_iter, 1) if fa else None
        for row in libs.values():
            per_iter = row.seconds / max(row.n_iter, 1)
            mem = "-" if row.memory is None else f"{row.memory:.2f}"
            print(
                f"{shape:<9} {row.library:<12} {per_iter:>10.5f} {row.seconds:>9.4f} "
                f"{row.reps:>4} {row.n_iter:>6} {row.inertia:>14.7g} "
                f"{_ratio(row.inertia, sk.inertia if sk else None):>9} {mem:>8} "
                f"{_ratio(per_iter, sk_iter):>7} {_ratio(per_iter, fa_iter):>7} "
                f"{_busy(row.busy):>5}"
            )


def print_full_fit_table(rows: list[Row]) -> None:
    _print_header(
        "Default full fit: KMeans(n_clusters=k, random_state=seed).fit(X), k-means++, n_init='auto'",
        f"""
        max_iter capped at {FULL_FIT_MAX_ITER} for both libraries on the synthetic shapes
        (emb384, emb128, small32; seed 0), 300 otherwise; digits and tutorial: the mean
        over seeds 0..{TINY_SEEDS - 1} of the median time per seed (the two libraries
        taking turns on each seed), and the mean n_iter and inertia (iteration counts
        depend on the seed); inertia recomputed in float64 from the final centroids.
        """,
        f"{'shape':<9} {'library':<12} {'seconds':>10} {'reps':>4} {'n_iter':>6} "
        f"{'inertia':>14} {'inert/sk':>9} {'t/sk':>7} {'busy':>5}",
    )
    for shape, libs in _by_shape(rows).items():
        sk = libs.get("sklearn")
        for row in libs.values():
            print(
                f"{shape:<9} {row.library:<12} {row.seconds:>10.4f} {row.reps:>4} "
                f"{row.n_iter:>6} {row.inertia:>14.7g} "
                f"{_ratio(row.inertia, sk.inertia if sk else None):>9} "
                f"{_ratio(row.seconds, sk.seconds if sk else None):>7} {_busy(row.busy):>5}"
            )


def print_flops_table(results: list[Flops]) -> None:
    _print_header(
        "Assignment step vs torch.mm, 2*n*d*k flops",
        """
        cold = nearest_centroids(x - mean, c): labels and exact distances from scratch;
        lloyd = the assignment inside a Lloyd iteration, as the fit runs it (labels only): one
        product of [x | 1] with [-2c | |c|^2] and the argmin warm-started from the previous
        labels, or (shapes marked *) the fused native kernel's labels; step = that kernel's
        whole Lloyd pass, labels and each cluster's sums of rows in one pass (* only);
        mm full = one (n, k) product; mm block = the same row blocks, written into one
        reused buffer; /mm = GFLOP/s over the faster product (acceptance: >= 0.80 on emb384, emb128, small32).
        All are timed in turn, round after round (median of each).
        """,
        f"{'shape':<9} {'n':>8} {'d':>5} {'k':>5} {'block':>6} {'cold GF/s':>9} "
        f"{'lloyd GF/s':>10} {'mm full':>8} {'mm block':>8} {'cold/mm':>7} "
        f"{'lloyd/mm':>8} {'step/mm':>7} {'busy':>5}",
    )
    for r in results:
        best = max(r.mm_blocked, r.mm_full or 0.0)
        full = "-" if r.mm_full is None else f"{r.mm_full:.1f}"
        step = "-" if r.fused_step is None else f"{r.fused_step / best:.3f}"
        print(
            f"{r.shape + ('*' if r.fused_step else ''):<9} {r.n:>8} {r.d:>5} {r.k:>5} "
            f"{r.block:>6} {r.assign:>9.1f} {r.lloyd_assign:>10.1f} {full:>8} "
            f"{r.mm_blocked:>8.1f} {r.assign / best:>7.3f} {r.lloyd_assign / best:>8.3f} "
            f"{step:>7} {_busy(r.busy):>5}"
        )


def print_phase_table(results: list[Phases], device: torch.device) -> None:
    unit = "device" if device.type == "cuda" else "CPU"
    _print_header(
        f"Where a torchkmeans lloyd() call spends its time (torch.profiler, self {unit} time)",
        """
        percent of the whole call; fused = the native kernel (scores, argmin, labels and
        cluster sums in one pass over the rows, see torchkmeans/functional/_native.py);
        matmul = addmm of the distance blocks, argmin = min over
        k, labels/dist = writing labels and distances, scatter = index_add_ of sums and
        counts, relocate = empty-cluster reseeding, update = sums / counts, bookkeep =
        convergence test and history, prepare = centring, norms, variance (once), python =
        unprofiled wall time - op time. The final relabelling pass counts in
        matmul/argmin/labels (fused shapes: every op but the kernel in bookkeep, see code).
        """,
        f"{'shape':<9} {'ms/iter':>8} " + " ".join(f"{p:>11}" for p in PHASES),
        busy=False,
    )
    for r in results:
        total = max(r.wall, sum(r.seconds.values()))
        cells = " ".join(f"{100 * r.seconds.get(p, 0.0) / total:>10.1f}%" for p in PHASES)
        print(f"{r.shape:<9} {1e3 * r.wall / max(r.n_iter, 1):>8.3f} {cells}")


# ------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small n, finishes in about a minute")
    parser.add_argument(
        "--threads", type=int, default=2, help="threads for every library (default 2)"
    )
    parser.add_argument("--iters", type=int, default=20, help="fixed Lloyd iterations (default 20)")
    parser.add_argument(
        "--only", choices=[shape.name for shape in SHAPES], help="run a single shape"
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak memory for every shape, not only the first"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timing, wait up to S seconds for other processes to go idle",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="a grid of d x k against sklearn and faiss instead"
    )
    parser.add_argument(
        "--sweep-iters", type=int, default=10, help="fixed Lloyd iterations of a sweep cell"
    )
    parser.add_argument("--sweep-d", metavar="D,D,...", help="the sweep's feature counts")
    parser.add_argument("--sweep-k", metavar="K,K,...", help="the sweep's cluster counts")
    parser.add_argument("--no-faiss", action="store_true", help="leave faiss out of the sweep")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "--device cuda was requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); nothing was run.",
            file=sys.stderr,
        )
        return 2
    warnings.filterwarnings("ignore", category=SkConvergenceWarning)
    warnings.filterwarnings("ignore", category=torchkmeans.ConvergenceWarning)
    configure_threads(args.threads)
    global WAIT_IDLE_S
    WAIT_IDLE_S = args.wait_idle
    if args.child_memory:
        memory_child(args.child_memory, args)
        return 0

    device = torch.device(args.device)
    print_machine(args, device)
    if args.sweep:
        if device.type != "cpu":
            print("--sweep runs on the CPU only; nothing was run.", file=sys.stderr)
            return 2
        began = time.perf_counter()
        clock = CpuClock.now()
        run_sweep(args)
        print_foreign_cpu(clock, time.perf_counter() - began)
        return 0
    if faiss is None:
        print("faiss    : not importable, faiss columns skipped")
    elif device.type == "cuda" and not faiss_has_gpu():
        print("faiss    : no GPU support in this build, faiss columns skipped")

    shapes = [SHAPES_BY_NAME[args.only]] if args.only else list(SHAPES)
    fixed: list[Row] = []
    full: list[Row] = []
    flops: list[Flops] = []
    phases: list[Phases] = []
    began = time.perf_counter()
    clock = CpuClock.now()
    interrupted = False
    try:
        for index, shape in enumerate(shapes):
            problem = make_problem(shape, args.quick)
            shape_rows = bench_fixed(problem, args, device, measure_mem=args.memory or index == 0)
            fixed.extend(shape_rows)
            full.extend(bench_full_fit(problem, args, device))
            flops.append(bench_flops(problem, args, device))
            tk = next(row for row in shape_rows if row.library == "torchkmeans")
            phases.append(profile_lloyd(problem, args, device, tk.seconds))
    except KeyboardInterrupt:
        # Stopped at its limit (benchmarks/gpu_check.sh sends SIGINT): what was
        # measured is still printed, where the tables had been lost with it.
        interrupted = True
        measured = len(_by_shape(fixed))
        print(f"\ninterrupted after {measured} of {len(shapes)} shapes: their tables follow")

    print_fixed_table(fixed, args.iters)
    print_full_fit_table(full)
    print_flops_table(flops)
    print_phase_table(phases, device)
    wall = time.perf_counter() - began
    print(f"\ntotal benchmark time: {wall:.1f} s")
    print_foreign_cpu(clock, wall)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
