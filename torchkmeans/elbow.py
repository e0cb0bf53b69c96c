"""Choosing k: a sweep of K-Means over k on the device, and knee detection.

:func:`elbow` fits every k of a sweep with ``n_init`` k-means++ restarts.
Where the fused CPU kernel runs Lloyd's iterations (it takes a batch's
problems one at a time), each k of two or more restarts is one
:func:`~torchkmeans.functional.kmeans` fit of its restarts; otherwise the
``len(ks) * n_init`` problems share the data in padded batches: their
centroids are padded to the largest k of the batch and a cluster mask hides
the padding (see :func:`torchkmeans.functional.lloyd`).
One greedy k-means++ run to the largest k seeds every k: greedy k-means++
is sequential, so its first k centres are a k-means++ seeding for k.
:func:`find_knee` then picks the knee of the inertia curve with Kneedle.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import _host, distributed
from . import _validation as v
from ._host import densified, host_rows, is_sparse, should_stream, sparse_input
from .exceptions import ConvergenceWarning
from .functional import _device, _native
from .functional.collective import Collective
from .functional.distances import (
    DEFAULT_MEMORY_BUDGET,
    nearest_centroids,
    unit_rows,
    weights_without_rows_of_zeros,
)
from .functional.init import kmeans_plusplus
from .functional.lloyd import kmeans, lloyd
from .functional.sparse import (
    SparseRows,
    sparse_kmeans,
    sparse_kmeans_plusplus,
    sparse_weights_without_rows_of_zeros,
)
from .functional.streaming import HostRows, check_sweep, reject_shard, streamed_kmeans

__all__ = ["SCORES", "ElbowResult", "elbow", "find_knee"]

#: Scores :func:`elbow` can compute per k (``"inertia"`` is always computed).
SCORES = ("inertia", "silhouette", "calinski_harabasz", "davies_bouldin")

_CURVES = ("log", "raw")
# On a log curve, values at most this fraction of the largest count as a
# perfect fit (see _floor_perfect_fits): float32 centres of data far from the
# origin leave residues up to about 1e-7 of the total.
_PERFECT_FIT = 1e-6

# Every group of ks padded to its own largest k is one batched Lloyd run, and
# each of its iterations pays a fixed cost in small tensor ops. On the CPU,
# with PyTorch ops, that cost is worth about this many multiply-adds of
# centroid scoring (measured with benchmarks/bench_elbow.py and on 20,000 x 32
# blobs: 2 groups for load_digits, k = 1..20, 4 for the blobs, 1 for the
# 300-point tutorial data; one group per k was up to 1.5x slower). On a GPU one
# group is best. The ks the fused kernel fits with restarts are not batched
# (see _sweep).
_CPU_GROUP_OVERHEAD = 100_000_000


@dataclass
class ElbowResult:
    """Result of :func:`elbow`.

    Attributes
    ----------
    ks : tuple of int
        The numbers of clusters swept, increasing.
    inertia : array or Tensor of shape (len(ks),)
        Lowest inertia over the restarts, per k.
    knee : int or None
        The k at the knee of the inertia curve (see :func:`find_knee`), or
        None when the curve has none.
    scores : dict of str to array or Tensor of shape (len(ks),)
        The requested scores per k (NaN where a score is undefined, such as
        the silhouette for k = 1).
    centroids : list of array or Tensor
        ``centroids[i]`` of shape ``(ks[i], n_features)``: the best fit for ``ks[i]``.
    labels : array or Tensor of shape (len(ks), n_samples), or None
        Nearest centroid of every sample, per k (None with ``compute_labels=False``).
    """

    ks: tuple[int, ...]
    inertia: Any
    knee: int | None
    scores: dict[str, Any] = field(default_factory=dict)
    centroids: list[Any] = field(default_factory=list)
    labels: Any = None

    def __repr__(self) -> str:
        # The centroids of every k and the (len(ks), n_samples) labels would
        # fill a notebook cell that shows the result: their shapes stand in.
        features = {c.shape[-1] for c in self.centroids}
        centroids = f"<{len(self.centroids)} arrays"
        centroids += f" of shape (k, {features.pop()})>" if len(features) == 1 else ">"
        labels = None if self.labels is None else f"<shape {tuple(self.labels.shape)}>"
        return (
            f"ElbowResult(ks={self.ks!r}, inertia={self.inertia!r}, knee={self.knee!r}, "
            f"scores={self.scores!r}, centroids={centroids}, labels={labels})"
        )

    def plot(self, ax: Any = None) -> Any:
        """Plot inertia against k, knee marked (:func:`~torchkmeans.plotting.plot_elbow`).

        Returns
        -------
        matplotlib.axes.Axes
        """
        from .plotting import plot_elbow

        return plot_elbow(self, ax=ax)


def find_knee(
    ks: Sequence[float] | np.ndarray | torch.Tensor,
    values: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    curve: str = "log",
    sensitivity: float = 1.0,
) -> int | None:
    """The knee of a decreasing convex curve such as inertia against k (Kneedle).

    Kneedle (Satopaa, Albrecht, Irwin and Raghavan, 2011) scales both axes
    to [0, 1], turns the decreasing convex curve ``y(k)`` into the
    difference curve ``(1 - y) - k`` and scans its local maxima: a maximum
    is a knee once the difference curve falls below it by ``sensitivity``
    times the mean step between consecutive (scaled) ks before the next
    maximum. Of the knees found this way (offline Kneedle finds them all)
    the most pronounced one, with the largest difference, is returned: the
    first one, which the ``kneed`` package returns, can be a ripple at small
    k in front of the real corner (it is at k = 2 or 3 on log inertia of 16
    blobs).

    ``curve="log"`` (the default) runs Kneedle on ``log(values)``. Inertia
    falls by a roughly constant factor per added cluster while clusters are
    being separated and by much less after, so in log scale the true number
    of clusters is the corner of the curve; on raw inertia the first few
    large drops dominate the scaled curve and Kneedle answers too small a k
    when there are many clusters (7 for 10 or 16 well separated blobs in
    the tests). ``curve="raw"`` is plain Kneedle on the values as given.

    Parameters
    ----------
    ks : sequence of numbers
        Increasing x values (numbers of clusters), at least 3.
    values : sequence of numbers
        The curve at ``ks``, decreasing overall (>= 0 for ``curve="log"``;
        values at most 1e-6 of the largest, a perfect fit, count as one more
        step of the curve's mean decay).
    curve : {"log", "raw"}, default="log"
        Which curve Kneedle runs on.
    sensitivity : float, default=1.0
        Kneedle's S: larger values need a more pronounced knee.

    Returns
    -------
    int or None
        The k at the knee, or None (with a ``UserWarning``) when there is none.

    Raises
    ------
    ValueError
        If ``ks`` and ``values`` differ in length, have fewer than 3 points,
        are not finite, if ``ks`` is not increasing, if ``curve`` is unknown,
        or if ``values`` are negative with ``curve="log"``.

    Examples
    --------
    >>> find_knee([1, 2, 3, 4, 5, 6], [100.0, 10.0, 1.0, 0.9, 0.8, 0.7])
    3
    >>> find_knee([1, 2, 3, 4, 5, 6], [100.0, 10.0, 1.0, 0.9, 0.8, 0.7], curve="raw")
    2
    """
    x = _as_float_array(ks, "ks")
    y = _as_float_array(values, "values")
    if x.shape != y.shape:
        raise ValueError(
            f"Expected ks and values of the same length, got {x.shape[0]} and {y.shape[0]}."
        )
    if x.shape[0] < 3:
        raise ValueError(f"Expected at least 3 points to find a knee, got {x.shape[0]}.")
    if not bool(np.all(np.diff(x) > 0)):
        raise ValueError(f"Expected ks to be strictly increasing, got {x.tolist()}.")
    if curve not in _CURVES:
        raise ValueError(f"Expected curve to be 'log' or 'raw', got {curve!r}.")
    sensitivity = v.check_nonnegative_float(sensitivity, "sensitivity")
    if curve == "log":
        if bool(np.any(y < 0)):
            raise ValueError("Expected values >= 0 for curve='log', got negative values.")
        y = np.log(_floor_perfect_fits(y))
    span_x, span_y = x[-1] - x[0], float(y.max() - y.min())
    if span_y == 0:
        warnings.warn("No knee found: the curve is flat.", UserWarning, stacklevel=2)
        return None
    x_n = (x - x[0]) / span_x
    y_n = (y - y.min()) / span_y
    difference = (1.0 - y_n) - x_n
    threshold_step = sensitivity * float(np.mean(np.diff(x_n)))
    # A maximum may be a plateau of equal values (its last point, as kneed
    # reports it): y = 1/k on k = 1..20 ties at 4 and 5, and no knee was found.
    maxima = []
    for i in range(1, len(difference) - 1):
        if difference[i] <= difference[i + 1]:
            continue
        start = i
        while start > 0 and difference[start - 1] == difference[i]:
            start -= 1
        if start > 0 and difference[start - 1] < difference[i]:
            maxima.append(i)
    knees = []
    for position, peak in enumerate(maxima):
        stop = maxima[position + 1] if position + 1 < len(maxima) else len(difference)
        threshold = difference[peak] - threshold_step
        if bool(np.any(difference[peak + 1 : stop] < threshold)):
            knees.append(peak)
    if knees:
        best = max(knees, key=lambda peak: difference[peak])
        return int(x[best]) if float(x[best]).is_integer() else float(x[best])  # type: ignore[return-value]
    warnings.warn(
        "No knee found: the curve has no point of maximum curvature that stands out "
        f"(curve={curve!r}, sensitivity={sensitivity}); try a wider range of k or a "
        "lower sensitivity.",
        UserWarning,
        stacklevel=2,
    )
    return None


def _floor_perfect_fits(values: np.ndarray) -> np.ndarray:
    """Positive values for a log curve: those at most 1e-6 of the largest, a
    perfect fit (as many clusters as distinct points: 0, or the rounding
    residue of the centres) or a curve already flat there, become one more
    step of the curve's mean decay, all alike.

    In log scale a fall to 0, or to its residue (1e-12 to 1e-30 of the
    largest value), would dwarf the curve's real corner, and Kneedle would
    find none (three groups of three distinct points: no knee, where 3 is).
    A flat tail keeps a corner where the tail starts.
    """
    top = float(values.max())
    if top <= 0:
        return np.ones_like(values)  # all 0: flat
    tiny = values <= top * _PERFECT_FIT
    if not bool(tiny.any()):
        return values
    regular = values[~tiny]  # holds the largest value
    low = float(regular.min())
    if low < top:
        floor = low * (low / top) ** (1.0 / (regular.size - 1))
    else:  # no decay to continue (one value, or a plateau): a fall of 1e-6
        floor = top * _PERFECT_FIT
    return np.where(tiny, floor, values)


def _as_float_array(data: Any, name: str) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().double().numpy()
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Expected {name} to be a sequence of numbers, got {data!r}.") from exc
    if array.ndim != 1:
        raise ValueError(f"Expected {name} to be 1-D, got shape {array.shape}.")
    if not bool(np.all(np.isfinite(array))):
        raise ValueError(f"Input {name} contains NaN or infinity; expected finite values.")
    return array


def _check_ks(k: Any, n_samples: int | None) -> tuple[int, ...]:
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        if k < 1:
            raise ValueError(f"Expected k to be >= 1 (the sweep 1..k), got {k}.")
        ks: tuple[Any, ...] = tuple(range(1, int(k) + 1))
    elif isinstance(k, torch.Tensor):
        ks = tuple(k.tolist())
    elif isinstance(k, Iterable):
        ks = tuple(k)
    else:
        raise TypeError(f"Expected k to be an int or a sequence of ints, got {k!r}.")
    if not ks:
        raise ValueError(f"Expected k to be a non-empty sequence of ints, got {k!r}.")
    if not all(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in ks
    ):
        raise TypeError(f"Expected k to be a non-empty sequence of ints, got {k!r}.")
    ks = tuple(int(value) for value in ks)
    if ks[0] < 1 or any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"Expected k to be strictly increasing ints >= 1, got {list(ks)}.")
    if n_samples is not None and ks[-1] > n_samples:
        raise ValueError(f"n_samples={n_samples} should be >= the largest k={ks[-1]}.")
    return ks


def _check_scores(scores: Any) -> tuple[str, ...]:
    if isinstance(scores, str):
        scores = (scores,)
    try:
        names = tuple(scores)
    except TypeError as exc:
        raise TypeError(f"Expected scores to be a sequence of names, got {scores!r}.") from exc
    for name in names:
        if name not in SCORES:
            raise ValueError(f"Expected scores to be names from {SCORES}, got {name!r}.")
    return names


def _groups(ks: tuple[int, ...], row_cost: int, overhead: float) -> list[list[int]]:
    """Split the positions of ``ks`` into contiguous groups of least estimated cost.

    A group is padded to its own largest k and costs ``len * max k *
    row_cost + overhead`` (``row_cost``: the work of scoring one centroid of
    one problem, n*(d+1)*n_init); found exactly by dynamic programming.

    Examples
    --------
    >>> _groups((1, 2, 3, 10), row_cost=1, overhead=0)
    [[0], [1], [2], [3]]
    >>> _groups((1, 2, 3, 10), row_cost=1, overhead=100)
    [[0, 1, 2, 3]]
    """
    n = len(ks)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j positions
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        for start in range(stop):
            cost = best[start] + (stop - start) * ks[stop - 1] * row_cost + overhead
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    groups: list[list[int]] = []
    stop = n
    while stop:
        groups.append(list(range(cut[stop], stop)))
        stop = cut[stop]
    return groups[::-1]


# Bytes a Lloyd run keeps per row and problem besides its blocks: the labels
# and the previous labels (int64), the rows' distances to their centroids and
# the final ones (up to float64).
_ROW_BYTES_PER_PROBLEM = 32


def _within_budget(
    groups: list[list[int]], n_init: int, n_rows: int, memory_budget: int | None
) -> list[list[int]]:
    """``groups`` of positions of ks split so that each Lloyd run's per-row state
    (labels, distances: ``_ROW_BYTES_PER_PROBLEM`` bytes per row and problem)
    fits ``memory_budget`` (``DEFAULT_MEMORY_BUDGET`` when None); a k's
    ``n_init`` restarts stay together.

    Every k of a sweep is ``n_init`` problems: one batch of all of them held
    the labels of every restart of every k at once (2,000,000 rows, k = 1..10,
    n_init=3: 480 MB of labels for 32 MB of data).

    Examples
    --------
    >>> _within_budget([[0, 1, 2, 3]], n_init=2, n_rows=1000, memory_budget=130_000)
    [[0, 1], [2, 3]]
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    per_k = n_init * max(1, n_rows) * _ROW_BYTES_PER_PROBLEM
    most = max(1, budget // per_k)
    return [group[start : start + most] for group in groups for start in range(0, len(group), most)]


class _Progress:
    """Progress over k: tqdm when it is installed, else one stderr line per k."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc="elbow", unit="k")

    def phase(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(message)
        else:
            print(f"elbow: {message}", file=sys.stderr, flush=True)

    def done(self, k: int, inertia: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"elbow: k={k} converged, inertia {inertia:.6g}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sweep(
    x: torch.Tensor,
    ks: tuple[int, ...],
    *,
    n_init: int,
    max_iter: int,
    tol: float,
    metric: str,
    generator: torch.Generator,
    memory_budget: int | None,
    progress: _Progress,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best inertia ``(L,)`` and centroids ``(L, K, d)`` per k, over ``n_init`` restarts."""
    d = x.shape[1]
    n_ks, k_max = len(ks), ks[-1]
    progress.phase(f"seeding k-means++ to k={k_max} ({n_init} restarts)")
    # Seeds are drawn on unit rows for cosine (kmeans_plusplus centres
    # euclidean rows itself, as kmeans() does).
    # Normalised as contiguous rows whatever x's strides (a Fortran-ordered
    # array, a data frame's block): norms summed down strided rows differ
    # in their last bits, and seed otherwise.
    seeding_x = unit_rows(x.contiguous()) if metric == "cosine" else x
    # Cosine rows of zeros (no direction) seed no centroid, as in kmeans().
    seeding_weights = None
    if metric == "cosine":
        seeding_weights = weights_without_rows_of_zeros(seeding_x, None, k_max)
    _, indices = kmeans_plusplus(
        seeding_x,
        k_max,
        n_problems=n_init,
        sample_weight=seeding_weights,
        metric=metric,
        generator=generator,
        memory_budget=memory_budget,
    )
    del seeding_x
    seeds = x[indices]  # (n_init, k_max, d)
    best_inertia = torch.empty(n_ks, dtype=torch.float64, device=x.device)
    best_centroids = torch.zeros((n_ks, k_max, d), dtype=x.dtype, device=x.device)
    progress.phase("Lloyd iterations")
    # The fused kernel runs the problems of a batch one by one, each on its
    # own k: a fit per k iterates as fast, and kmeans() finishes only its best
    # restart (labels and exact distances of one problem, not n_init), at the
    # price of preparing the data (centring, norms) once per k, not once per
    # batch: a few passes over the data either way, so fits per k win from
    # two restarts on. Measured on one thread against the padded groups of
    # _groups: load_digits, k = 1..20, 10 restarts 1.3x faster; 20,000 x 64
    # and 100,000 x 16, k = 1..20, 3 restarts 1.2-1.3x; 4,000,000 x 2,
    # k = 1..10, 3 restarts 2x; 200,000 x 128, k = 1..16 1.04x; 2 restarts
    # 0.93-1.15x; 1 restart (nothing to save) 0.85-0.9x.
    alone = [n_init > 1 and _runs_alone(x, k) for k in ks]
    for position in (position for position, solo in enumerate(alone) if solo):
        k = ks[position]
        result = kmeans(
            x,
            k,
            init=seeds[:, :k],
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            memory_budget=memory_budget,
        )
        best_inertia[position] = result.inertia.to(torch.float64)
        best_centroids[position, :k] = result.centroids.to(x.dtype)
        del result  # its labels, before the next fit allocates its own
        progress.done(k, float(best_inertia[position]))
    batched = [position for position, solo in enumerate(alone) if not solo]
    for run in _contiguous_runs(batched):
        _sweep_batched(
            x,
            ks,
            run,
            seeds,
            best_inertia,
            best_centroids,
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            memory_budget=memory_budget,
            progress=progress,
        )
    return best_inertia, best_centroids


def _runs_alone(x: torch.Tensor, k: int) -> bool:
    """Whether Lloyd's iterations of k clusters on ``x`` run through the fused
    CPU kernel, which takes the problems of a batch one at a time."""
    return _device.on_host(x.device) and _native.prefers_native(x, k)


def _contiguous_runs(positions: list[int]) -> list[list[int]]:
    """``positions`` (increasing) split where they skip.

    Examples
    --------
    >>> _contiguous_runs([0, 1, 3, 4, 6])
    [[0, 1], [3, 4], [6]]
    """
    runs: list[list[int]] = []
    for position in positions:
        if runs and runs[-1][-1] == position - 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    return runs


def _sweep_batched(
    x: torch.Tensor,
    ks: tuple[int, ...],
    positions: list[int],
    seeds: torch.Tensor,
    best_inertia: torch.Tensor,
    best_centroids: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    metric: str,
    memory_budget: int | None,
    progress: _Progress,
) -> None:
    """The ks at contiguous ``positions`` fitted as padded batches of all their
    restarts (PyTorch ops: on the CPU contiguous groups of ks chosen by
    :func:`_groups`, elsewhere one group), within the memory budget; the best
    restart of each k written into ``best_inertia`` and ``best_centroids``."""
    n_init, d = seeds.shape[0], x.shape[1]
    sub_ks = tuple(ks[position] for position in positions)
    n_ks, k_max = len(sub_ks), sub_ks[-1]
    n_problems = n_ks * n_init
    # contiguous(): with n_init == 1 the reshape is a stride-0 view, one buffer for every k.
    centroids = (
        seeds[:, :k_max].unsqueeze(0).expand(n_ks, n_init, k_max, d).reshape(n_problems, k_max, d)
    ).contiguous()
    inertia = torch.empty(n_problems, dtype=torch.float64, device=x.device)
    k_of_problem = torch.tensor(sub_ks, device=x.device).repeat_interleave(n_init)
    if _device.on_host(x.device):
        groups = _groups(sub_ks, x.shape[0] * (d + 1) * n_init, _CPU_GROUP_OVERHEAD)
    else:
        groups = [list(range(n_ks))]
    groups = _within_budget(groups, n_init, x.shape[0], memory_budget)
    for group in groups:
        k_group = sub_ks[group[-1]]
        members = slice(group[0] * n_init, (group[-1] + 1) * n_init)
        # A group of one k needs no mask: its problems are then plain fits,
        # which take the single-problem paths on the CPU when n_init == 1.
        mask = None
        if len(group) > 1:
            mask = torch.arange(k_group, device=x.device) < k_of_problem[members, None]
        # One batched run per group: problems that converge leave the batch
        # inside lloyd (on the CPU) or are frozen (elsewhere).
        result = lloyd(
            x,
            centroids[members, :k_group],
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            memory_budget=memory_budget,
            cluster_mask=mask,
        )
        centroids[members, :k_group] = result.centroids.to(centroids.dtype)
        inertia[members] = result.inertia.to(torch.float64)
        del result  # its labels, before the next group's run allocates its own
        if progress.enabled:
            for position in group:
                best = float(inertia[position * n_init : (position + 1) * n_init].min())
                progress.done(sub_ks[position], best)
    best = inertia.view(n_ks, n_init).argmin(1)
    chosen = torch.arange(n_ks, device=x.device) * n_init + best
    best_inertia[positions[0] : positions[-1] + 1] = inertia[chosen]
    best_centroids[positions[0] : positions[-1] + 1, :k_max] = centroids[chosen]


def elbow(
    X: Any,
    k: int | Iterable[int] = range(1, 11),
    *,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
    random_state: Any = None,
    metric: str = "euclidean",
    scores: Sequence[str] = ("inertia",),
    compute_labels: bool = True,
    curve: str = "log",
    sensitivity: float = 1.0,
    device: str | torch.device | None = None,
    dtype: Any = None,
    memory_budget: int | None = None,
    verbose: bool = False,
    process_group: Any = "auto",
) -> ElbowResult:
    """Fit K-Means for every k of a sweep on the device, and find the knee of the inertia.

    Every fit is seeded by one greedy k-means++ run to the largest k per
    restart. On the CPU, where the fused kernel runs Lloyd's iterations
    (rows of up to 256 features, and more with few centroids), each k of
    ``n_init >= 2`` is one fit of its restarts, which finishes only the
    best one. Otherwise the ``len(k) * n_init`` fits run as padded batches:
    on an accelerator one batch; on the CPU contiguous groups of ks, each
    padded to its own largest k, as many as save more padding than each
    batched run's fixed cost (with PyTorch ops, in rounds of 10 iterations
    that drop converged fits). Each fit runs Lloyd's
    iterations exactly as :class:`~torchkmeans.KMeans` does; per k the
    restart with the lowest inertia is kept, on the device, and results
    cross to the host once. (A fit that meets the tolerance exactly at the
    end of a CPU round cannot be told from one still moving and runs on
    until it stops again: its inertia is then slightly lower, never higher,
    than that of the same fit run alone.)

    A ``numpy.memmap``, or a host array or CPU tensor too large for the CUDA
    device, is never loaded whole: as :class:`~torchkmeans.KMeans` does, each
    k is then fitted in passes over the rows, read chunk by chunk
    (:func:`~torchkmeans.functional.streaming.streamed_kmeans`, seeded from
    a sample of the rows), and only ``"inertia"`` is scored. The labels,
    ``len(k) * n_samples`` int64, are kept on the host: 80 bytes a row for
    ten ks, more than rows of up to 20 float32 features take;
    ``compute_labels=False`` keeps none.

    A sparse ``X`` (``scipy.sparse``, torch sparse tensor) is swept on its
    stored values (one mostly stored is swept dense, as
    :class:`~torchkmeans.KMeans` fits it): the same k-means++ seeds (the first k of
    one greedy run to the largest k per restart, drawn as for its dense
    form), then each k is one fit of its restarts as
    :class:`~torchkmeans.KMeans` fits sparse data
    (:func:`~torchkmeans.functional.sparse.sparse_kmeans`). Scores other
    than ``"inertia"`` take its dense form, where that fits ``memory_budget``.

    Parameters
    ----------
    X : array-like, memmap, sparse matrix or Tensor of shape (n_samples, n_features)
    k : int or iterable of int, default=range(1, 11)
        Numbers of clusters to try, strictly increasing; an int ``k`` means ``1..k``.
    n_init : int, default=3
        k-means++ restarts per k.
    max_iter : int, default=300
        Maximum Lloyd iterations per fit.
    tol : float, default=1e-4
        Relative tolerance on the centroid shift, as in :class:`~torchkmeans.KMeans`.
    random_state : int, numpy RandomState/Generator, torch.Generator or None
        Seed of the k-means++ seeding (None: from numpy's global random state).
    metric : {"euclidean", "cosine"}, default="euclidean"
        "cosine" is spherical k-means; the silhouette then uses cosine
        distances too (the other scores are euclidean by definition).
    scores : sequence of str, default=("inertia",)
        Scores to compute per k on the best fit: any of ``"inertia"``,
        ``"silhouette"``, ``"calinski_harabasz"``, ``"davies_bouldin"``
        (see :mod:`torchkmeans.metrics`). Only ``"inertia"`` on streamed
        or sharded ``X``, and on sparse ``X`` whose dense form exceeds
        ``memory_budget``.
    compute_labels : bool, default=True
        Return the labels of every k (``len(k) * n_samples`` int64); False
        leaves ``labels`` None and keeps only one fit's at a time.
    curve : {"log", "raw"}, default="log"
        Knee detection on log inertia or on raw inertia; see :func:`find_knee`.
    sensitivity : float, default=1.0
        Kneedle's sensitivity S.
    device : str or torch.device, optional
        Where to compute: None is where the data is, "auto" picks CUDA when present.
    dtype : {"float32", "float64", ...} or torch.dtype, optional
        Compute dtype; by default the data's (half precision computes in float32).
    memory_budget : int, optional
        Bytes a block of distances may take (256 MiB when None), and the
        per-row state of each padded batch of fits may take (labels and
        distances, 32 bytes a row per restart): the ks are fitted in as
        many batches as that needs, each k's ``n_init`` restarts together.
    verbose : bool, default=False
        Show progress: a tqdm bar over k when tqdm is installed, else a line
        on stderr per k. The ks of a padded batch run together, so a k is
        reported when its last restart has converged (the bar moves in bursts
        at the ends of rounds), after a line for the seeding; scores are one
        more phase.
    process_group : "auto", None or torch.distributed ProcessGroup, default="auto"
        Under ``torchrun`` each rank passes its shard of ``X`` and every rank
        gets the same inertia, centroids and knee (one distributed fit per k,
        see :mod:`torchkmeans.distributed`; ``labels`` are the local rows').
        Only the "inertia" score is available on shards. None: a local sweep.

    Returns
    -------
    ElbowResult
        numpy arrays for numpy (or list, pandas) input, tensors on the
        device for tensor input.

    Raises
    ------
    ValueError
        If ``k`` is < 1, empty, not strictly increasing or exceeds the number
        of samples, a score name is unknown or needs every pair of rows of
        streamed or sharded ``X``, or any other argument is out of range.
    TypeError
        If ``k`` or ``n_init`` is not made of ints, or ``X`` is an iterable of
        batches (a generator, a DataLoader).

    Warns
    -----
    ConvergenceWarning
        Naming the ks whose labels use fewer distinct clusters than k
        (duplicate points), as ``KMeans.fit`` does; checked in memory when
        labels are computed.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    >>> X = np.repeat(centres, 50, axis=0) + rng.normal(scale=0.5, size=(200, 2))
    >>> result = elbow(X, k=range(1, 9), random_state=0)
    >>> result.knee
    4
    >>> result.inertia.shape, result.centroids[3].shape
    ((8,), (4, 2))
    """
    if v.is_batch_stream(X):
        raise TypeError(
            "Expected X to be an array-like, memmap, sparse matrix or tensor that elbow can "
            f"read once per Lloyd iteration, got {type(X).__name__}; fit a memmap of the data "
            "(np.memmap), or MiniBatchKMeans per k, to sweep data that arrives in batches."
        )
    collective = distributed.collective(process_group)
    shard = collective.distributed
    try:
        # A memmap, or host data too big for the GPU, is read in passes, never loaded whole.
        # Each k's n_init restarts run as one batch at least (see _within_budget).
        restarts = int(n_init) if isinstance(n_init, numbers.Integral) and n_init >= 1 else 1
        # A sparse X is swept on its stored values (as KMeans fits it); a
        # sparse shard whose dense form fits memory_budget as that array, a
        # larger one in passes of dense chunks.
        if not shard:
            X = _host.dense_when_mostly_stored(X, memory_budget)  # as KMeans fits it
        sparse_x = is_sparse(X) and not shard
        if not sparse_x:
            X = densified(X, memory_budget)
        # A shard too: KMeans streams a memmap shard, where elbow's sweep
        # had held about nine times its size.
        streamed = not sparse_x and should_stream(X, device, lloyd=True, problems=restarts)
        x: torch.Tensor | HostRows | SparseRows
        if sparse_x:
            v.check_metric(metric)
            x, kind = sparse_input(X, device=device, dtype=v.resolve_dtype(dtype), metric=metric)
            if x.n_rows == 0 or x.n_features == 0:
                raise ValueError(
                    "Expected X to hold at least one sample and feature, got shape "
                    f"{(x.n_rows, x.n_features)}."
                )
            compute, x_device = x.dtype, x.device
            n_samples, n_features = x.n_rows, x.n_features
        elif streamed:
            x, compute, kind = host_rows(X, v.resolve_dtype(dtype), allow_empty=shard)
            x_device = v.resolve_device(device, torch.device("cpu"))
            n_samples, n_features = x.n_rows, x.n_features
            if kind.is_torch:  # a CPU tensor streamed to a GPU: results on the CPU
                kind = v.OutputKind(True, torch.device("cpu"))
        else:
            # On shards, finiteness and n_samples >= k are checked over all ranks at once.
            # The fits copy x, centred: strides as given (a data frame's block,
            # Fortran order) are read by that copy, not copied before it.
            x, kind = v.as_tensor(
                X,
                "X",
                device=device,
                dtype=v.resolve_dtype(dtype),
                check_finite=not shard,
                strided=not shard,
            )
            if (x.shape[0] == 0 and not shard) or x.shape[1] == 0:
                raise ValueError(
                    "Expected X to hold at least one sample and feature, got shape "
                    f"{tuple(x.shape)}."
                )
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            compute, x_device = x.dtype, x.device
            n_samples, n_features = x.shape
        ks = _check_ks(k, None if shard else n_samples)
        n_init = v.check_positive_int(n_init, "n_init")
        max_iter = v.check_positive_int(max_iter, "max_iter")
        tol = v.check_nonnegative_float(tol, "tol")
        metric = v.check_metric(metric)
        names = _check_scores(scores)
        compute_labels = v.check_flag(compute_labels, "compute_labels")
        if (shard or streamed) and names != ("inertia",):
            where = "sharded over processes" if shard else f"streamed ({type(X).__name__})"
            raise ValueError(
                f"Expected scores=('inertia',) when X is {where}, got {names}; the other "
                "scores need every pair of rows (score a sample of the rows with "
                "torchkmeans.metrics instead)."
            )
        dense_x = None
        if sparse_x and names != ("inertia",):
            # The other scores take dense rows: the dense form, where it fits.
            dense_x = densified(X, memory_budget)
            if is_sparse(dense_x):
                budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
                raise ValueError(
                    f"Expected scores=('inertia',) when X is sparse ({type(X).__name__}) and "
                    f"its dense form exceeds memory_budget={budget} bytes, got {names}; the "
                    "other scores need dense rows (score a sample of the rows with "
                    "torchkmeans.metrics instead)."
                )
        if curve not in _CURVES:
            raise ValueError(f"Expected curve to be 'log' or 'raw', got {curve!r}.")
        v.check_nonnegative_float(sensitivity, "sensitivity")
        verbose = bool(v.check_verbose(verbose))
        if memory_budget is not None:
            v.check_positive_int(memory_budget, "memory_budget")
        generator = v.make_generator(random_state, x_device)
    except (TypeError, ValueError) as exc:
        if shard:
            # The other ranks are about to compare their sweeps: this one
            # joins with its error rather than leave them waiting.
            reject_shard(collective, exc)
        raise
    if shard:
        # The length of the sweep is every rank's number of fits (and collectives).
        check_sweep(
            collective,
            x_device,
            ks,
            n_features=n_features,
            dtype=compute,
            n_init=n_init,
            metric=metric,
            max_iter=max_iter,
            tol=tol,
        )

    progress = _Progress(verbose, len(ks))
    fits: dict[str, Any] = dict(
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        metric=metric,
        generator=generator,
        memory_budget=memory_budget,
        progress=progress,
    )
    try:
        if isinstance(x, SparseRows):
            extra = [name for name in names if name != "inertia"]
            inertia, padded, labels = _sweep_sparse(
                x, ks, compute_labels=compute_labels or bool(extra), **fits
            )
            if labels is not None:
                _warn_fewer_clusters(ks, labels)
            computed = {}
            if extra:
                progress.phase("scores: " + ", ".join(extra))
                dense, _ = v.as_tensor(dense_x, "X", device=x_device, dtype=compute)
            for name in names:
                computed[name] = (
                    inertia
                    if name == "inertia"
                    else _score(name, dense, labels, metric, memory_budget)
                )
            return _result(
                ks,
                inertia,
                padded,
                labels if compute_labels else None,
                computed,
                kind,
                curve,
                sensitivity,
            )
        if shard or streamed:
            inertia, padded, labels = _sweep_passes(
                x,
                ks,
                collective=collective,
                device=x_device,
                dtype=compute,
                compute_labels=compute_labels,
                **fits,
            )
            return _result(
                ks, inertia, padded, labels, {"inertia": inertia}, kind, curve, sensitivity
            )
        assert isinstance(x, torch.Tensor)
        with v.overflow_of_X(compute):
            inertia, padded = _sweep(x, ks, **fits)
        extra = [name for name in names if name != "inertia"]
        labels = _labels(x, padded, ks, metric, memory_budget) if compute_labels or extra else None
        if labels is not None:
            _warn_fewer_clusters(ks, labels)
        computed: dict[str, torch.Tensor] = {}
        if extra:
            progress.phase("scores: " + ", ".join(extra))
        for name in names:
            computed[name] = (
                inertia if name == "inertia" else _score(name, x, labels, metric, memory_budget)
            )
    finally:
        progress.close()

    return _result(
        ks, inertia, padded, labels if compute_labels else None, computed, kind, curve, sensitivity
    )


def _result(
    ks: tuple[int, ...],
    inertia: torch.Tensor,
    padded: torch.Tensor,
    labels: torch.Tensor | None,
    computed: dict[str, torch.Tensor],
    kind: v.OutputKind,
    curve: str,
    sensitivity: float,
) -> ElbowResult:
    """The knee of the inertia, and the results in the caller's kind."""
    inertia_host = inertia.cpu()
    knee = None
    if len(ks) >= 3:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            knee = find_knee(ks, inertia_host, curve=curve, sensitivity=sensitivity)
        for warning in caught:
            # Shown at the caller of elbow, like the warning below, not inside this module.
            warnings.warn(warning.message, warning.category, stacklevel=3)
    else:
        warnings.warn(
            f"No knee found: at least 3 values of k are needed, got {len(ks)}.",
            UserWarning,
            stacklevel=3,
        )
    out_dtype = padded.dtype
    return ElbowResult(
        ks=ks,
        inertia=kind.out(inertia if kind.is_torch else inertia_host),
        knee=knee,
        scores={name: kind.out(value) for name, value in computed.items()},
        centroids=[kind.out(padded[i, :kk].to(out_dtype)) for i, kk in enumerate(ks)],
        labels=None if labels is None else kind.out(labels),
    )


def _sweep_passes(
    data: torch.Tensor | HostRows,
    ks: tuple[int, ...],
    *,
    n_init: int,
    max_iter: int,
    tol: float,
    metric: str,
    generator: torch.Generator,
    memory_budget: int | None,
    collective: Collective,
    device: torch.device,
    dtype: torch.dtype,
    progress: _Progress,
    compute_labels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One fit in passes per k: inertia ``(L,)``, centroids ``(L, K, d)``, labels ``(L, n)``.

    ``data`` is a shard of a distributed sweep (the labels are its rows'), or
    host rows streamed to ``device`` chunk by chunk (the labels stay on the
    host, as the data does). Each k is a :func:`streamed_kmeans` fit, seeded
    on its own: every padded k of one batch would need the data read once
    per iteration all the same, and a fit per k stops at its own convergence.
    Without ``compute_labels`` no labels are kept (None).
    """
    if isinstance(data, torch.Tensor):
        (n, d), label_device = data.shape, data.device
    else:
        n, d, label_device = data.n_rows, data.n_features, torch.device("cpu")
    inertia = torch.empty(len(ks), dtype=torch.float64, device=device)
    padded = torch.zeros((len(ks), ks[-1], d), dtype=dtype, device=device)
    labels = (
        torch.empty((len(ks), n), dtype=torch.int64, device=label_device)
        if compute_labels
        else None
    )
    for i, k in enumerate(ks):
        result = streamed_kmeans(
            data,
            k,
            init="k-means++",
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            metric=metric,
            generator=generator,
            device=device,
            dtype=dtype,
            memory_budget=memory_budget,
            collective=collective,
        )
        if not v.all_finite(result.inertia):
            # Finite rows whose squared distances overflow: every label is a tie.
            raise v.distances_overflow("X", dtype)
        inertia[i] = result.inertia
        padded[i, :k] = result.centroids
        if labels is not None:
            labels[i] = result.labels
        progress.done(k, float(result.inertia))
        # Its labels view all n_init restarts' (n_init * n int64): not held
        # through the next k's fit.
        del result
    return inertia, padded, labels


def _sweep_sparse(
    rows: SparseRows,
    ks: tuple[int, ...],
    *,
    n_init: int,
    max_iter: int,
    tol: float,
    metric: str,
    generator: torch.Generator,
    memory_budget: int | None,
    progress: _Progress,
    compute_labels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One fit per k on sparse rows: inertia ``(L,)``, centroids ``(L, K, d)``,
    labels ``(L, n)`` (None without ``compute_labels``).

    As the dense sweep: one greedy k-means++ run to the largest k per
    restart (the same draws, :func:`sparse_kmeans_plusplus`), whose first k
    seeds start each k's restarts; each k is one
    :func:`~torchkmeans.functional.sparse.sparse_kmeans` fit of its
    restarts, on the stored values: nothing is densified but the seeds.
    """
    n, d = rows.n_rows, rows.n_features
    k_max = ks[-1]
    progress.phase(f"seeding k-means++ to k={k_max} ({n_init} restarts)")
    # Cosine rows of zeros (no direction) seed no centroid, as in the dense sweep.
    seeding_weights = None
    if metric == "cosine":
        seeding_weights = sparse_weights_without_rows_of_zeros(rows, None, k_max)
    index = sparse_kmeans_plusplus(
        rows,
        k_max,
        n_problems=n_init,
        sample_weight=seeding_weights,
        generator=generator,
        memory_budget=memory_budget,
    )
    seeds = rows.take(index.reshape(-1)).view(n_init, k_max, d)
    inertia = torch.empty(len(ks), dtype=torch.float64, device=rows.device)
    padded = torch.zeros((len(ks), k_max, d), dtype=rows.dtype, device=rows.device)
    labels = (
        torch.empty((len(ks), n), dtype=torch.int64, device=rows.device) if compute_labels else None
    )
    progress.phase("Lloyd iterations")
    for i, k in enumerate(ks):
        result = sparse_kmeans(
            rows,
            k,
            init=seeds[:, :k],
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            generator=generator,
            memory_budget=memory_budget,
        )
        if not v.all_finite(result.inertia):
            # Finite rows whose squared distances overflow: every label is a tie.
            raise v.distances_overflow("X", rows.dtype)
        inertia[i] = result.inertia
        padded[i, :k] = result.centroids
        if labels is not None:
            labels[i] = result.labels
        progress.done(k, float(result.inertia))
        del result
    return inertia, padded, labels


def _labels(
    x: torch.Tensor,
    centroids: torch.Tensor,
    ks: tuple[int, ...],
    metric: str,
    memory_budget: int | None,
) -> torch.Tensor:
    """Nearest of the first ``ks[i]`` centroids ``(L, K, d)`` for every row, ``(L, n)``.

    Recomputed from the kept centroids rather than stored for every restart:
    Lloyd's labels of all ``len(ks) * n_init`` fits would take that many times n.
    """
    if metric == "cosine":
        data, centres = unit_rows(x.contiguous()), unit_rows(centroids)
    else:
        data, centres = x, centroids
    labels = torch.empty((len(ks), x.shape[0]), dtype=torch.int64, device=x.device)
    for i, k in enumerate(ks):
        labels[i] = nearest_centroids(
            data, centres[i, :k].contiguous(), metric=metric, memory_budget=memory_budget
        ).labels
    return labels


def _warn_fewer_clusters(ks: tuple[int, ...], labels: torch.Tensor) -> None:
    """Warn, as ``KMeans.fit`` does for one k, of the ks whose labels ``(L, n)``
    use fewer distinct clusters than k (duplicate points): their inertia
    stops falling there, which is no knee."""
    # Counted a k at a time: the labels shifted by k's offset were a copy of
    # all of them (4,000,000 rows, k = 1..10: 320 MB beside 32 MB of data).
    distinct = torch.stack(
        [torch.bincount(row, minlength=ks[-1]).count_nonzero() for row in labels]
    ).tolist()
    fewer = [(k, found) for k, found in zip(ks, distinct) if found < k]
    if fewer:
        listed = ", ".join(f"k={k}: {found}" for k, found in fewer)
        warnings.warn(
            f"Number of distinct clusters found smaller than k ({listed}). "
            "Possibly due to duplicate points in X.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _score(
    name: str, x: torch.Tensor, labels: torch.Tensor, metric: str, memory_budget: int | None
) -> torch.Tensor:
    from . import metrics

    functions: dict[str, Callable[..., Any]] = {
        "silhouette": lambda: metrics.silhouette_score(
            x, labels, metric=metric, memory_budget=memory_budget
        ),
        "calinski_harabasz": lambda: metrics.calinski_harabasz_score(
            x, labels, memory_budget=memory_budget
        ),
        "davies_bouldin": lambda: metrics.davies_bouldin_score(
            x, labels, memory_budget=memory_budget
        ),
    }
    return functions[name]().to(torch.float64)
