"""``MiniBatchKMeans``: scikit-learn's estimator over :func:`~torchkmeans.functional.minibatch.minibatch_step`."""  # noqa: E501

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from . import _validation as v
from . import distributed
from ._base import _UNCHANGED
from ._host import dense_when_mostly_stored, host_rows, is_sparse, should_stream
from .exceptions import ConvergenceWarning
from .functional import _device
from .functional.collective import LOCAL, Collective
from .functional.distances import (
    block_rows,
    compute_dtype,
    scale_exponent_of,
    times_power_of_two,
    unit_rows,
    weights_without_rows_of_zeros,
    wide_sum,
)
from .functional.init import _sample_from_cumulative, kmeans_plusplus, random_init
from .functional.minibatch import (
    _batch_by_differences,
    _minibatch_step,
    certain_nearest,
    join_rejected_step,
    minibatch_step,
)
from .functional.sparse import (
    SparseRows,
    _initial_centroids,
    sparse_minibatch_step,
    sparse_nearest,
    sparse_needs_no_scale,
    sparse_scale_exponent,
    sparse_scaled,
    sparse_weights_without_rows_of_zeros,
)
from .functional.streaming import (
    check_agreement,
    chunk_rows,
    init_kind,
    iter_chunks,
    kmeans_plusplus_across,
    prepare_rows,
    random_across,
)
from .kmeans import KMeans

__all__ = ["MiniBatchKMeans"]


_PRIVATE_STATE = (
    "_kind",
    "_centers",
    "_counts",
    "_generator_state",
    "_generator_device",
    "_n_since_last_reassign",
    "_batch_size",
)


def _first(batch: Any) -> Any:
    """The data of one yielded batch: DataLoaders may yield ``(x, y)`` tuples/lists."""
    if isinstance(batch, (tuple, list)) and batch:
        head = batch[0]
        # Any 2-D array-like: a tensor, an array, a data frame (pandas, polars).
        shape = getattr(head, "shape", None)
        if shape is not None and len(shape) == 2:
            return head
    return batch


def _is_empty(batch: Any) -> bool:
    """Whether a yielded batch holds no rows (a 2-D array-like of shape ``(0, d)``)."""
    shape = getattr(batch, "shape", None)
    return shape is not None and len(shape) == 2 and int(shape[0]) == 0


def _batches_in_step(batches: Iterable[Any], collective: Collective) -> Iterator[Any]:
    """The batches of one rank, until every rank's are exhausted: each step
    is a collective of every rank, so a rank out of batches joins the others'
    steps with empty ones (its last batch's first 0 rows).

    One more small collective per step: whether any rank still has a batch.
    """
    exhausted = object()
    iterator = iter(batches)
    empty = None
    while True:
        x = _first(next(iterator, exhausted))
        flags = torch.tensor(
            [float(x is not exhausted), float(x is exhausted and empty is None)],
            device=collective.device,
        )
        more, without = collective.all_sum(flags).tolist()
        if not more:
            return
        if without:
            # A rank with no batch at all has no empty one of the others' shape.
            raise ValueError(
                "Expected X to yield at least one batch on every rank, "
                f"got none on {int(without)} of {collective.world_size} ranks."
            )
        if x is exhausted:
            x = empty
        else:
            # Rows as lists have no (0, d) slice: [] is 1-D, which no step accepts.
            shape = getattr(x, "shape", None)
            empty = x[:0] if shape is not None and len(shape) == 2 else np.asarray(x)[:0]
        yield x


def _refuse_weights_with_stream(sample_weight: Any) -> None:
    if sample_weight is not None:
        raise ValueError(
            "Expected sample_weight=None when X is an iterable of batches, got "
            "weights; pass them batch by batch to partial_fit."
        )


class _Source:
    """Random and sequential access to the rows of an array, a tensor or a memmap.

    Data that :func:`~torchkmeans._host.should_stream` (a memmap, or host
    data too big for the GPU) is never converted as a whole: only the rows
    asked for are read (sorted, so the reads run forward through the file),
    converted and copied to the device.
    """

    def __init__(self, estimator: MiniBatchKMeans, X: Any) -> None:
        # A mostly stored sparse X is stepped dense, as KMeans fits it.
        X = dense_when_mostly_stored(X, estimator.memory_budget)
        # Rows of a sparse matrix are read in any order, their values
        # checked once when it is read (read_sparse).
        self.sparse = is_sparse(X)
        self.sparse_rows: SparseRows | None = None
        self.X = X
        self.streamed = should_stream(X, estimator.device)
        if self.streamed:
            self.rows, self.dtype, self.kind = host_rows(X, v.resolve_dtype(estimator.dtype))
            # A sparse tensor is computed where it is, as a dense one.
            data_device = self.kind.device or torch.device("cpu")
            if self.kind.is_torch and self.kind.device is None:
                self.kind = v.OutputKind(True, torch.device("cpu"))
            self.device = v.resolve_device(estimator.device, data_device)
            self.shape = (self.rows.n_rows, self.rows.n_features)
            if self.sparse:
                # The steps' batches stay sparse (functional.sparse).
                self.sparse_rows, _ = estimator._sparse_rows(
                    X, self.device, self.compute, estimator.metric
                )
        else:
            self.x, self.kind = estimator._validate_x(X, reset=True)
            self.device, self.dtype = self.x.device, self.x.dtype
            self.shape = (int(self.x.shape[0]), int(self.x.shape[1]))

    @property
    def compute(self) -> torch.dtype:
        """Half-precision data is computed (and its centres kept) in float32."""
        return compute_dtype(self.dtype)

    @staticmethod
    def _checked(rows: torch.Tensor) -> torch.Tensor:
        if not v.all_finite(rows):
            raise ValueError("Input X contains NaN or infinity; expected finite values.")
        return rows

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index``, in that order: a memmap is read in file order, then
        put back in ``index``'s order, so streamed and in-memory fits are the same."""
        if not self.streamed:
            rows = self.x.index_select(0, index)
            return rows if rows.dtype == self.compute else rows.to(self.compute)
        if self.sparse:
            return self.rows.take(index.cpu()).to(device=self.device, dtype=self.compute)
        in_file_order = index.cpu().sort()
        rows = self.rows.take(in_file_order.values)
        rows = self._checked(rows.to(device=self.device, dtype=self.compute))
        out = torch.empty_like(rows)
        out[in_file_order.indices.to(self.device)] = rows
        return out

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        if not self.streamed:
            yield 0, self.x
            return
        rows = chunk_rows(self.rows, self.device)
        for start, chunk in iter_chunks(self.rows, self.device, self.compute, rows):
            yield start, self._checked(chunk)


class MiniBatchKMeans(KMeans):
    """Mini-batch K-Means (Sculley 2010) with scikit-learn's semantics, on CPU or CUDA.

    Each step draws ``batch_size`` random rows, assigns them to the nearest
    centres and moves each centre towards the running weighted mean of what
    it absorbed. Data may be an array, a tensor, a ``numpy.memmap`` (only the
    rows of each step are read) or an iterable of batches (a DataLoader, a
    generator of arrays or tensors): ``fit(iterable)`` resets the model and
    calls :meth:`partial_fit` once per yielded batch, in order.

    numpy (or list, pandas, memmap) input gives numpy results; a torch tensor
    gives tensors on the device it was fitted on.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"k-means++", "random"}, array-like or callable, default="k-means++"
        Seeding on a random subsample of ``init_size`` rows; a callable is
        called as ``init(X_subsample, n_clusters, generator)`` (unit rows
        for "cosine", unlike :class:`KMeans`, whose callable gets X as given).
    max_iter : int, default=100
        Passes over the data: ``fit`` runs ``(max_iter * n_samples) // batch_size``
        steps unless it stops early.
    batch_size : int, default=1024
        Rows per step (capped at ``n_samples``).
    verbose : bool, default=False
        Show progress with tqdm when it is installed, else a line on stderr
        every few steps with the smoothed batch inertia, and a line on stderr
        saying at which step and why ``fit`` stopped early; over an iterable of
        batches (``fit`` or ``partial_fit``), at steps 1, 2, 4, 8, ... with
        the last batch's mean inertia when ``compute_labels`` gives it.
    compute_labels : bool, default=True
        Compute ``labels_`` and ``inertia_`` on the whole data after ``fit``
        (on the batch after ``partial_fit``).
    random_state : int, numpy RandomState/Generator, torch.Generator or None
        Seed for the subsamples, the seeding, the batches and the reseeding
        (None: from numpy's global random state, as scikit-learn).
    tol : float, default=0.0
        Stop when the squared centre shift of a step is below ``tol`` times
        the mean feature variance of the data (0 disables).
    max_no_improvement : int or None, default=10
        Stop after this many steps without improvement of the exponentially
        weighted average of the batch inertia (None disables).
    init_size : int, optional
        Rows for the seeding and for the validation subsample that picks the
        best of ``n_init`` seedings; default ``3 * batch_size`` (at least
        ``3 * n_clusters``), at most ``n_samples``.
    n_init : int or "auto", default="auto"
        Seedings tried; "auto" is 1 for k-means++ and given centres, 3 for
        random and a callable, as in scikit-learn.
    reassignment_ratio : float, default=0.01
        Centres whose accumulated weight falls below this fraction of the
        heaviest are moved to random rows of the batch, every ``10 *
        n_clusters`` samples and at any step with an empty centre once
        ``10 * n_clusters`` of weight has been seen (scikit-learn: from the
        first step, which with many clusters reseeds centres no batch has
        reached yet).
    device : str or torch.device, optional
        None is where the data is (CPU for numpy), "auto" picks CUDA when present.
    dtype : {"float32", "float64", ...} or torch.dtype, optional
        Compute dtype; by default the data's.
    metric : {"euclidean", "cosine"}, default="euclidean"
        "cosine" is spherical mini-batch k-means on unit-normalised rows
        (as :class:`KMeans`: any finite norm; rows of zeros stay zeros, at
        distance 1 from every centre, and seed no centre).
    memory_budget : int, optional
        Bytes the block of distances may take (default 256 MiB).
    process_group : "auto", None or torch.distributed ProcessGroup, default="auto"
        Under ``torchrun``, :meth:`partial_fit` (and ``fit`` on an iterable of
        batches) takes each rank's own batch and every rank keeps the same
        centres (from rank 0's ``init`` when it is an array or a callable):
        batch sums and weights are summed over the ranks at each step. Over
        iterables, a rank whose batches run out takes part in the other
        ranks' remaining steps with empty ones. ``fit`` on a whole array is
        local only (pass None, or call ``partial_fit`` on shards). Copies
        and clones share a group object; a pickle stores "auto" in its
        place. See :mod:`torchkmeans.distributed`.

    Attributes
    ----------
    cluster_centers_ : array or Tensor of shape (n_clusters, n_features)
        Assignable, as in :class:`~torchkmeans.KMeans`: ``predict``,
        ``transform``, ``score`` and the next ``partial_fit`` step use the
        assigned centres (``counts_`` stay as they are).
    labels_ : array or Tensor of shape (n_samples,)
        With ``compute_labels``; after ``partial_fit`` or ``fit(iterable)``,
        the labels of the last batch.
    inertia_ : float
        With ``compute_labels`` the inertia of the data (of the last batch for
        ``partial_fit``), else the smoothed batch inertia scaled to the data.
    counts_ : array or Tensor of shape (n_clusters,)
        Accumulated weight absorbed by each centre (after reseeding).
    n_iter_ : int
        Passes over the data (``ceil(n_steps_ * batch_size / n_samples)``; 1 for
        an iterable).
    n_steps_ : int
        Mini-batch steps done.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of a data frame ``X`` (all strings), as in
        :class:`~torchkmeans.KMeans`; later ``partial_fit`` batches are checked too.

    Examples
    --------
    >>> import numpy as np
    >>> from torchkmeans.minibatch import MiniBatchKMeans
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
    >>> km = MiniBatchKMeans(n_clusters=2, batch_size=6, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_.round().tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    >>> km.predict([[0, 0], [12, 3]]).tolist() == [km.labels_[0], km.labels_[3]]
    True
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Any = "k-means++",
        max_iter: int = 100,
        batch_size: int = 1024,
        verbose: bool = False,
        compute_labels: bool = True,
        random_state: Any = None,
        tol: float = 0.0,
        max_no_improvement: int | None = 10,
        init_size: int | None = None,
        n_init: int | str = "auto",
        reassignment_ratio: float = 0.01,
        device: str | torch.device | None = None,
        dtype: Any = None,
        metric: str = "euclidean",
        memory_budget: int | None = None,
        process_group: Any = "auto",
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.verbose = verbose
        self.compute_labels = compute_labels
        self.random_state = random_state
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init = n_init
        self.reassignment_ratio = reassignment_ratio
        self.device = device
        self.dtype = dtype
        self.metric = metric
        self.memory_budget = memory_budget
        self.process_group = process_group

    # ------------------------------------------------------------------ checks

    def _check_minibatch_params(self, n_samples: int) -> dict[str, Any]:
        n_clusters = v.check_n_clusters(self.n_clusters)
        v.check_positive_int(self.max_iter, "max_iter")
        batch_size = v.check_positive_int(self.batch_size, "batch_size")
        v.check_nonnegative_float(self.tol, "tol")
        v.check_nonnegative_float(self.reassignment_ratio, "reassignment_ratio")
        v.check_flag(self.compute_labels, "compute_labels")
        v.check_verbose(self.verbose)
        if self.max_no_improvement is not None:
            v.check_positive_int(self.max_no_improvement, "max_no_improvement", minimum=0)
        if self.memory_budget is not None:
            v.check_positive_int(self.memory_budget, "memory_budget")
        metric = v.check_metric(self.metric)
        init = self.init
        v.check_init(init)
        if self.n_init == "auto":
            n_init = 3 if (isinstance(init, str) and init == "random") or callable(init) else 1
        else:
            n_init = v.check_positive_int(self.n_init, "n_init")
        if not isinstance(init, str) and not callable(init) and n_init != 1:
            warnings.warn(
                f"Explicit initial centers given; running a single init instead of "
                f"n_init={n_init}.",
                RuntimeWarning,
                stacklevel=v.user_stacklevel(),
            )
            n_init = 1
        if n_samples < n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}.")
        batch_size = min(batch_size, n_samples)
        if self.init_size is None:
            init_size = 3 * batch_size
            if init_size < n_clusters:
                init_size = 3 * n_clusters
        else:
            init_size = v.check_positive_int(self.init_size, "init_size")
            if init_size < n_clusters:
                warnings.warn(
                    f"init_size={init_size} should be >= n_clusters={n_clusters}; "
                    "using 3 * n_clusters.",
                    RuntimeWarning,
                    stacklevel=v.user_stacklevel(),
                )
                init_size = 3 * n_clusters
        return {
            "n_clusters": n_clusters,
            "n_init": n_init,
            "metric": metric,
            "batch_size": batch_size,
            "init_size": min(init_size, n_samples),
        }

    # ------------------------------------------------------------------ helpers

    def _reset(self) -> None:
        # Only fitted state: attributes set by others (scikit-learn's callback
        # context, say) stay.
        params = set(self._param_names())
        for name in list(vars(self)):
            fitted = name.endswith("_") and not name.startswith("__")
            if name not in params and (fitted or name in _PRIVATE_STATE):
                # From the instance's dict: ``cluster_centers_`` of an estimator
                # pickled before it became a property sits there, under the property.
                del self.__dict__[name]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            return unit_rows(x)
        return x

    def _seed(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None,
        n_clusters: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Initial centres from the (already subsampled) rows ``x``."""
        init = self.init
        if self.metric == "cosine":
            # Rows of zeros (no direction) seed no centre, as in KMeans.
            kept = weights_without_rows_of_zeros(x, weights, n_clusters)
            if kept is not None:
                weights = kept
        if isinstance(init, str) and init == "k-means++":
            # kmeans_plusplus scores euclidean rows centred on their mean.
            _, indices = kmeans_plusplus(
                x,
                n_clusters,
                sample_weight=weights,
                metric=self.metric,
                generator=generator,
                memory_budget=self.memory_budget,
            )
            centers = x[indices]
        elif isinstance(init, str):
            centers, _ = random_init(x, n_clusters, sample_weight=weights, generator=generator)
        else:
            given = init(x, n_clusters, generator) if callable(init) else init
            expected = (n_clusters, x.shape[1])
            centers, _ = v.as_tensor(
                given, "init", device=x.device, dtype=x.dtype, shape=str(expected)
            )
            if tuple(centers.shape) != expected:
                raise ValueError(
                    f"Expected init to be of shape ({n_clusters}, {x.shape[1]}), "
                    f"got shape {tuple(centers.shape)}."
                )
            centers = self._prepare(centers.clone())
        return centers

    def _seed_sparse(
        self,
        rows: SparseRows,
        weights: torch.Tensor | None,
        n_clusters: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """:meth:`_seed` of sparse rows (a string ``init``): only the chosen
        rows are densified."""
        if self.metric == "cosine":
            kept = sparse_weights_without_rows_of_zeros(rows, weights, n_clusters)
            if kept is not None:
                weights = kept
        return _initial_centroids(
            rows, self.init, n_clusters, weights, generator, self.memory_budget
        )

    def _seed_across(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None,
        n_clusters: int,
        generator: torch.Generator,
        collective: Collective,
    ) -> torch.Tensor:
        """Initial centres from every rank's first batch (see :mod:`torchkmeans.distributed`)."""
        init = self.init
        if not isinstance(init, str):
            # Rank 0's array (or callable's centres): another rank's, say the
            # first rows of its shard, kept its centres that no row reached.
            # One rank's bad array (shape, NaN) is every rank's error: raised
            # alone, it left the others waiting in the broadcast.
            centers, error = None, None
            try:
                centers = self._seed(x, weights, n_clusters, generator)
            except (TypeError, ValueError) as exc:
                error = exc
            check_agreement(collective, x.device, error, what="init")
            assert centers is not None
            return collective.broadcast(centers.contiguous())
        offset = torch.zeros((1, 1, x.shape[1]), dtype=x.dtype, device=x.device)
        if init == "k-means++" and self.metric == "euclidean":
            # k-means++ scores rows centred on the mean of all ranks' rows, as
            # the local seeding and kmeans() do: for float32 data far from the
            # origin (1e5 + noise) the expansion's rounding otherwise swamps
            # the distances and seeds fall about at random. Random seeds stay
            # the rows themselves.
            wide = _device.widest_float(x.device)
            total = torch.cat([x.sum(0, dtype=wide), x.new_full((1,), x.shape[0], dtype=wide)])
            total = collective.all_sum(total)
            offset = (total[:-1] / total[-1]).to(x.dtype).view(offset.shape)
        rows = prepare_rows(x, offset, weights, self.metric)  # unit rows for cosine
        # One seed drawn on rank 0 makes the shared (k-means++) and per-rank (random) streams.
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=x.device)
        seed = int(collective.broadcast(seed))
        if init == "random":
            own = torch.Generator(device=x.device).manual_seed(seed + 1 + collective.rank)
            centers = random_across(rows, n_clusters, 1, own, collective)
        else:
            shared = torch.Generator(device=x.device).manual_seed(seed)
            centers = kmeans_plusplus_across(
                rows, n_clusters, 1, shared, collective, self.memory_budget
            )
        return centers[0] + offset[0]

    def _labels_of_chunks(
        self,
        parts: Iterator[tuple[int, torch.Tensor]],
        n: int,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        """Nearest centre of every row, and the (weighted) inertia, chunk by chunk.

        The labels go into one preallocated tensor: chunk temporaries are freed
        and reused, so memory stays at one chunk's worth. Half-precision rows
        are converted to the centres' dtype a block at a time (a float32 copy
        of the whole data would double its memory).
        """
        centers = self._centers
        labels = torch.empty(n, dtype=torch.int64, device=centers.device)
        inertia = torch.zeros((), dtype=torch.float64, device=centers.device)
        for start, chunk in parts:
            rows = max(1, chunk.shape[0])
            if chunk.dtype != centers.dtype:
                rows = block_rows(
                    rows, chunk.shape[1], memory_budget=self.memory_budget, device=chunk.device
                )
            for offset in range(0, chunk.shape[0], rows):
                x = chunk[offset : offset + rows].to(centers.dtype)
                first = start + offset
                block_labels, dist = self._assign_rows(x, centers)
                dist = dist.double()
                if weights is not None:
                    dist = dist * weights[first : first + x.shape[0]].double()
                inertia += dist.sum()
                labels[first : first + x.shape[0]] = block_labels
        return labels, float(inertia)

    def _labels_of_sparse(
        self, X: Any, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """:meth:`_labels_of_chunks` of a sparse ``X``, from sparse products."""
        rows, _, centers, exponent = self._sparse_input(X)
        labels, distances = sparse_nearest(rows, centers, self.memory_budget)
        return labels, float(times_power_of_two(wide_sum(distances, weights), -2 * exponent))

    def _store_state(
        self,
        centers: torch.Tensor,
        counts: torch.Tensor,
        generator: torch.Generator,
        kind: v.OutputKind,
    ) -> None:
        self._kind = kind
        self._centers = centers
        self._counts = counts
        # A generator's state, not the generator, so the estimator pickles.
        self._generator_state = generator.get_state()
        self._generator_device = centers.device
        self.counts_ = kind.out(counts)

    def _restore_generator(self) -> torch.Generator:
        generator = torch.Generator(device=self._generator_device)
        generator.set_state(self._generator_state)
        return generator

    def _should_reassign(self, counts: torch.Tensor, on_host: bool = True) -> bool | torch.Tensor:
        """scikit-learn's rule: every ``10 * n_clusters`` samples, or when a centre
        is empty once ``10 * n_clusters`` of weight has been seen.

        With ``on_host=False`` the empty-centre test stays on the device (a
        bool tensor, no synchronisation); it then does not restart the count.
        """
        k = counts.shape[0]
        self._n_since_last_reassign += self._batch_size
        if self._n_since_last_reassign >= 10 * k:
            self._n_since_last_reassign = 0
            return True
        # scikit-learn reseeds empty centres from the first step on. With k
        # above a tenth of the batch, a centre no row of the first batches
        # reached (the k-means++ seed of a cluster they missed) is not yet
        # known to be empty: reseeded onto a row of a cluster that has a
        # centre, it left its own cluster to a centre between clusters, which
        # grew heavy enough to set the reassignment threshold (a ratio of the
        # heaviest weight) above most centres' weights, and half the batch's
        # worth of centres moved at every reassignment after (k=1024 of
        # 1,024-row batches: inertia 2x scikit-learn's, which falls into the
        # same state on some seeds). Before 10 * k of weight (the periodic
        # rule's period), the first periodic reassignment decides.
        if not on_host:
            return (counts == 0).any() & (counts.sum() + self._batch_size >= 10 * k)
        # Read at once: most steps have no empty centre, and need no sum
        # (weights are not negative: the lightest is 0 where one is empty).
        if float(counts.amin()) == 0 and bool(counts.sum() + self._batch_size >= 10 * k):
            self._n_since_last_reassign = 0
            return True
        return False

    def _warn_distinct(self, labels: torch.Tensor) -> None:
        n_distinct = int(torch.bincount(labels, minlength=1).count_nonzero())
        if n_distinct < self._centers.shape[0]:
            warnings.warn(
                f"Number of distinct clusters ({n_distinct}) found smaller than "
                f"n_clusters ({self._centers.shape[0]}): some centres are the nearest to no "
                "point (duplicate points in X, or too few steps to move every centre).",
                ConvergenceWarning,
                stacklevel=v.user_stacklevel(),
            )

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MiniBatchKMeans:
        """Compute the clustering from random mini-batches of ``X``.

        Parameters
        ----------
        X : array-like, Tensor, numpy.memmap, sparse matrix or iterable of batches
            ``(n_samples, n_features)``; an iterable (DataLoader, generator)
            yields batches of that shape, or tuples whose first element is one.
            A sparse matrix or tensor is densified whole when its dense form
            fits ``memory_budget`` and at least a quarter of it is stored;
            otherwise the steps run on the stored values of their batches
            (:func:`~torchkmeans.functional.sparse.sparse_minibatch_step`)
            and seed from them: only the chosen centres are densified (the
            ``init_size`` rows with an array or callable ``init``).
        y : ignored
        sample_weight : array-like or Tensor of shape (n_samples,), optional
            Batches are drawn with probability proportional to it. Not
            accepted with an iterable (use :meth:`partial_fit`).

        Returns
        -------
        self
        """
        if v.is_batch_stream(X):
            _refuse_weights_with_stream(sample_weight)
            self._reset()
            self._steps_over(X)
            if not hasattr(self, "cluster_centers_"):
                raise ValueError("Expected X to yield at least one batch, got none.")
            self.n_iter_ = 1
            return self

        if distributed.collective(self.process_group).distributed:
            raise ValueError(
                "Expected an iterable of batches for MiniBatchKMeans.fit under torch.distributed "
                "(each rank passes its own), got a whole array; use partial_fit on each rank's "
                "batches, or process_group=None for a local fit."
            )
        source = _Source(self, X)
        n, d = source.shape
        params = self._check_minibatch_params(n)
        k, batch_size = params["n_clusters"], params["batch_size"]
        device, acc = source.device, source.compute
        weights = v.check_sample_weight(sample_weight, n, device=device, dtype=acc)
        # Equal weights draw the batches and seed as no weights (scikit-learn's
        # unit weights = no weights): a weighted draw takes other random numbers.
        # They still scale inertia_.
        drawn = weights
        if weights is not None and bool(weights.amin() == weights.amax()):
            drawn = None
        generator = v.make_generator(self.random_state, device)
        self._reset()
        self._reset_feature_names(X)
        self._batch_size = batch_size
        tol = self._scaled_tol(source) if self.tol > 0 else 0.0

        init_size = params["init_size"]
        # Drawn whatever n_init (the same random stream for the seeding and
        # the steps), but scored only to choose between seedings: with one,
        # the validation rows' labels took a tenth of a small fit's time.
        valid = torch.randint(0, n, (init_size,), generator=generator, device=device)
        choose = params["n_init"] > 1
        if choose:
            valid = valid.sort().values
        # A sparse X seeds from its stored values: init_size dense rows of
        # 70,000 features took 13 GB and 42 s, the steps 0.3 GB.
        seed_rows = source.sparse_rows if isinstance(self.init, str) else None
        seed_exponent = 0
        if seed_rows is None:
            x_valid = self._prepare(source.take(valid)) if choose else None
        else:
            # Seeded scaled by a power of two where squared distances would
            # under- or overflow (float32 values near 1e-25 or 1e19), as the
            # dense seeding and the steps are; the centres are scaled back.
            seed_exponent = sparse_scale_exponent(seed_rows)
            seed_rows = sparse_scaled(seed_rows, seed_exponent)
            valid_rows = seed_rows.subset(valid) if choose else None
        w_valid = None if drawn is None or not choose else drawn[valid]
        best, best_inertia = None, math.inf
        for _ in range(params["n_init"]):
            if init_size < n:
                index = torch.randint(0, n, (init_size,), generator=generator, device=device)
                index = index.sort().values
            else:
                # Every row, as scikit-learn seeds: n draws with replacement
                # hold only about 63% of the rows, fewer than k distinct ones
                # for k near n, and k-means++ then seeds duplicate centres.
                index = torch.arange(n, device=device)
            w_init = None if drawn is None else drawn[index]
            if seed_rows is None:
                centers = self._seed(self._prepare(source.take(index)), w_init, k, generator)
            else:
                centers = self._seed_sparse(seed_rows.subset(index), w_init, k, generator)
            if choose:
                if seed_rows is None:
                    _, dist = self._assign_rows(x_valid, centers)
                else:
                    _, dist = sparse_nearest(valid_rows, centers, self.memory_budget)
                dist = dist.to(acc)
                inertia = float((dist if w_valid is None else dist * w_valid).sum())
            else:
                inertia = best_inertia
            if seed_rows is not None:
                centers = times_power_of_two(centers, -seed_exponent)
            if best is None or inertia < best_inertia:
                best, best_inertia = centers, inertia
        centers = best
        counts = torch.zeros(k, dtype=acc, device=device)
        self._n_since_last_reassign = 0

        n_steps = (self.max_iter * n) // batch_size
        stopper = _EarlyStopping(self, n_steps, n, batch_size, tol)
        every = _steps_between_checks(device)
        # Steps since the last host read: (centres, counts, inertia, shift).
        window: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # float64 where the device has it (not MPS).
        wide = _device.widest_float(device)
        no_shift = torch.zeros((), dtype=wide, device=device)  # tol=0: never read as a stop
        if drawn is not None:
            cumulative = drawn.cumsum(0, dtype=wide)
        # Asked once: the centres stay within the rows' scale. Rows too small
        # for their squared distances are scored scaled by each step; rows so
        # large that they overflow (float32 near 1e19: refused, though their
        # inertia is finite in float64) are stepped scaled by a power of two
        # here, an exact change, their centres too until the end. Sparse
        # batches are scored from their stored values, not centred and never
        # scaled by the step: rows too small for their squared distances
        # (float32 near 1e-25: every label a tie) are stepped scaled too.
        scaled = self.metric == "euclidean"
        exponent = scale_exponent_of(centers, centers) if scaled else 0
        differences = exponent <= 0
        sparse_rows = source.sparse_rows
        if sparse_rows is not None:
            scale = exponent
            sparse_rows = sparse_scaled(sparse_rows, scale)
        else:
            scale = min(exponent, 0)
        centers = times_power_of_two(centers, scale)
        step_index = 0
        by_differences = None
        for step_index in range(n_steps):
            if drawn is None:
                index = torch.randint(0, n, (batch_size,), generator=generator, device=device)
            else:
                index = _weighted_draws(cumulative, batch_size, generator)
            # The parameters, the centres and every row were checked above.
            if sparse_rows is not None:
                step = sparse_minibatch_step(
                    sparse_rows.subset(index),
                    centers,
                    counts,
                    random_reassign=self._should_reassign(counts, on_host=every == 1),
                    reassignment_ratio=self.reassignment_ratio,
                    generator=generator,
                    memory_budget=self.memory_budget,
                )
            else:
                x = times_power_of_two(self._prepare(source.take(index)), scale)
                if by_differences is None:  # the same for every batch
                    by_differences = _batch_by_differences(x, centers, self.metric, differences)
                step = _minibatch_step(
                    x,
                    centers,
                    counts,
                    sample_weight=None,
                    random_reassign=self._should_reassign(counts, on_host=every == 1),
                    reassignment_ratio=self.reassignment_ratio,
                    generator=generator,
                    metric=self.metric,
                    memory_budget=self.memory_budget,
                    collective=LOCAL,
                    differences=differences,
                    by_differences=by_differences,
                )
            # In the widest float: squared shifts of float32 centres near 1e-25
            # underflow to 0 in float32, which stopped the fit at its second step.
            shift = (step.centroids - centers).to(wide).square().sum() if tol > 0 else no_shift
            centers, counts = step.centroids, step.weight_sums
            window.append(
                (
                    centers,
                    counts,
                    times_power_of_two(step.inertia, -2 * scale),  # in wide
                    times_power_of_two(shift, -2 * scale),
                )
            )
            if len(window) < every and step_index < n_steps - 1:
                continue
            # One host read for the whole window, replayed step by step; a
            # stop inside it rolls back to that step's centres. (One step on
            # the CPU: two scalar reads, cheaper than stacking.)
            if len(window) == 1:
                stats = [(float(window[0][2]), float(window[0][3]) if tol > 0 else 0.0)]
            else:
                pairs = [torch.stack([entry[2].double(), entry[3].double()]) for entry in window]
                stats = torch.stack(pairs).tolist()
            if not all(math.isfinite(inertia) for inertia, _ in stats):
                # Finite rows whose squared distances overflow: every label is
                # a tie (without compute_labels nothing else would notice).
                self._reset()
                raise v.distances_overflow("X", acc)
            first = step_index - len(window) + 1
            stopped = next(
                (
                    i
                    for i, (inertia, moved) in enumerate(stats)
                    if stopper.update(first + i, inertia, moved)
                ),
                None,
            )
            if stopped is not None:
                centers, counts = window[stopped][0], window[stopped][1]
                step_index = first + stopped
                break
            window.clear()
        stopper.close()
        centers = times_power_of_two(centers, -scale)

        self._store_state(centers, counts, generator, source.kind)
        self.n_features_in_ = d
        self.n_steps_ = step_index + 1
        self.n_iter_ = math.ceil(self.n_steps_ * batch_size / n)
        if self.compute_labels and source.sparse and source.streamed:
            # From the stored values, as KMeans predicts: not densified a chunk at a time.
            labels, self.inertia_ = self._labels_of_sparse(source.X, weights)
        elif self.compute_labels:
            labels, self.inertia_ = self._labels_of_chunks(source.chunks(), n, weights)
        if self.compute_labels:
            if not math.isfinite(self.inertia_):
                # Finite rows whose squared distances overflow: every label is a tie.
                self._reset()
                raise v.distances_overflow("X", source.compute)
            self.labels_ = source.kind.out(labels)
            self._warn_distinct(labels)
        else:
            total = float(n if weights is None else weights.double().sum())
            self.inertia_ = stopper.smoothed * total
        return self

    def _scaled_tol(self, source: _Source) -> float:
        """``tol`` times the mean feature variance, streamed over the data.

        Of the rows the steps see: unit rows for cosine (as :class:`KMeans`),
        so the threshold does not depend on the scale of the data.
        """
        shift = total = sq = None
        for _, chunk in source.chunks():
            # Blocks of rows: float64 copies of the whole data would double
            # or quadruple its memory.
            rows = block_rows(
                chunk.shape[0], chunk.shape[1], itemsize=8, memory_budget=self.memory_budget
            )
            for block in chunk.split(rows):
                c = self._prepare(block.double())
                if shift is None:
                    # Sums about the first block's mean: E[x^2] - E[x]^2 about
                    # the origin cancels for data far from it.
                    shift = c.mean(0)
                    total = torch.zeros_like(shift)
                    sq = torch.zeros_like(shift)
                c = c - shift  # a new tensor: double() of float64 rows is the data itself
                total += c.sum(0)
                sq += c.square_().sum(0)
        n = source.shape[0]
        mean = total / n
        variance = (sq / n - mean * mean).clamp_(min=0)
        return float(variance.mean()) * float(self.tol)

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MiniBatchKMeans:
        """One mini-batch step on ``X`` (the first call also seeds the centres).

        An iterable of batches gives one step per yielded batch. Counts, the
        random state and the reseeding schedule persist across calls.

        Parameters
        ----------
        X : array-like, Tensor, sparse matrix or iterable of batches of shape (n, n_features)
            A DataLoader's ``(x, y)`` batch (a tuple or list whose first item
            is 2-D) stands for ``x``, as in an iterable. A sparse batch
            (``scipy.sparse``, torch sparse tensor) is stepped on its stored
            values as ``fit`` steps them, and the first one seeds from them
            (only the chosen centres are densified; the ``init_size`` rows
            for a callable ``init``), unless at least a quarter of it is
            stored and its dense form fits ``memory_budget``: it is then
            densified. Under ``torch.distributed`` a sparse batch is
            densified, and refused when its dense form exceeds ``memory_budget``.
        y : ignored
        sample_weight : array-like or Tensor of shape (n,), optional
            Not accepted with an iterable.

        Returns
        -------
        self
        """
        if v.is_batch_stream(X):
            _refuse_weights_with_stream(sample_weight)
            self._steps_over(X)
            return self
        # `for batch in loader: partial_fit(batch)` over a TensorDataset
        # raised "got shape (1, 128, 4)" ([x]) or an inhomogeneous-array error.
        return self._partial_fit_batch(_first(X), sample_weight)

    def set_partial_fit_request(
        self, *, sample_weight: bool | str | None = _UNCHANGED
    ) -> MiniBatchKMeans:
        """Whether scikit-learn's routers pass ``sample_weight`` to :meth:`partial_fit`.

        As :meth:`~torchkmeans.KMeans.set_fit_request`, for ``partial_fit``.

        Returns
        -------
        self

        Examples
        --------
        >>> import sklearn
        >>> with sklearn.config_context(enable_metadata_routing=True):
        ...     mbk = MiniBatchKMeans(n_clusters=2).set_partial_fit_request(sample_weight=True)
        >>> mbk.get_metadata_routing().partial_fit.requests
        {'sample_weight': True}
        """
        return self._set_requests("partial_fit", sample_weight=sample_weight)

    def _steps_over(self, batches: Iterable[Any]) -> None:
        """One step per yielded batch. Empty batches before the first step are
        skipped in a local fit: there is nothing to seed the centres from yet
        (later ones are steps that move nothing; on shards every rank takes
        part in every step, so a rank's empty batch is a step from the start)."""
        collective = distributed.collective(self.process_group)
        local = not collective.distributed
        progress = _BatchProgress(batches) if self.verbose else None
        try:
            for x in map(_first, batches) if local else _batches_in_step(batches, collective):
                if local and _is_empty(x) and not hasattr(self, "cluster_centers_"):
                    continue
                self._partial_fit_batch(x, None)
                if progress is not None:
                    # The batch inertia is a float already with compute_labels;
                    # without, reading the step's would wait for the device. On
                    # shards it is the ranks' total, for rows this rank does not count.
                    mean = None
                    if self.compute_labels and local:
                        mean = self.inertia_ / max(1, int(self.labels_.shape[0]))
                    progress.update(mean)
        finally:
            if progress is not None:
                progress.close()

    def _partial_fit_batch(self, X: Any, sample_weight: Any) -> MiniBatchKMeans:
        first = not hasattr(self, "cluster_centers_")
        collective = distributed.collective(self.process_group)
        if is_sparse(X) and not collective.distributed:
            # The rule of fit: densely stored batches that fit the budget are
            # stepped dense, the others on their stored values.
            X = dense_when_mostly_stored(X, self.memory_budget)
            if is_sparse(X):
                return self._partial_fit_sparse(X, sample_weight)
        if first:
            # On shards a rank's batch may be empty (checked over all ranks below).
            try:
                x, kind = self._validate_x(X, reset=True, allow_empty=collective.distributed)
                acc = compute_dtype(x.dtype)
                # On shards the weights' sum is checked over all ranks below.
                weights = v.check_sample_weight(
                    sample_weight,
                    x.shape[0],
                    device=x.device,
                    dtype=acc,
                    positive_sum=not collective.distributed,
                )
            except (TypeError, ValueError) as exc:
                # A rank that rejects its batch still takes part in the check
                # below, so that the other ranks raise instead of waiting.
                check_agreement(
                    collective,
                    collective.device,
                    exc,
                    n_features=-1,
                    dtype="?",
                    n_clusters=-1,
                    metric="?",
                    compute_labels=False,
                    batch_size=-1,
                    reassignment_ratio="?",
                    init="?",
                )
                raise  # pragma: no cover - check_agreement raised exc
            self._reset_feature_names(X)
            n = x.shape[0]
            n_total, total_weight = n, 1.0
            if collective.distributed:
                # Checks and the batch size hold for the ranks' batches together.
                check_agreement(
                    collective,
                    x.device,
                    n_features=x.shape[1],
                    dtype=x.dtype,
                    n_clusters=self.n_clusters,
                    metric=self.metric,
                    compute_labels=bool(self.compute_labels),
                    # They decide when a step reseeds, which takes two more collectives.
                    batch_size=self.batch_size,
                    reassignment_ratio=self.reassignment_ratio,
                    # An array on some ranks and a seeding on others: different collectives.
                    init=init_kind(self.init),
                )
                wide = _device.widest_float(x.device)
                share = torch.full((2,), float(n), dtype=wide, device=x.device)
                if weights is not None:
                    share[1] = weights.sum(dtype=wide)
                summed = collective.all_sum(share).tolist()
                n_total, total_weight = int(summed[0]), summed[1]
            params = self._check_minibatch_params(n_total)
            if not total_weight > 0:
                raise ValueError(
                    "Expected sample_weight to have a positive sum, got all weights zero."
                )
            k = params["n_clusters"]
            generator = v.make_generator(self.random_state, x.device)
            x = x.to(acc)
            self._batch_size = params["batch_size"]
            self._n_since_last_reassign = 0
            self.n_steps_ = 0
            self.n_features_in_ = x.shape[1]
            init_x, init_w = x, weights
            if params["init_size"] < n:
                size = (params["init_size"],)
                index = torch.randint(0, n, size, generator=generator, device=x.device)
                init_x = x[index]
                init_w = None if weights is None else weights[index]
            if collective.distributed:
                centers = self._seed_across(self._prepare(init_x), init_w, k, generator, collective)
            else:
                centers = self._seed(self._prepare(init_x), init_w, k, generator)
            counts = torch.zeros(k, dtype=acc, device=x.device)
        else:
            centers, counts = self._centers, self._counts
            try:
                x, kind = self._validate_x(X, reset=False)
                v.check_positive_int(self.batch_size, "batch_size")
                v.check_nonnegative_float(self.reassignment_ratio, "reassignment_ratio")
                # A rank's share of a step may weigh nothing (an empty batch).
                weights = v.check_sample_weight(
                    sample_weight,
                    x.shape[0],
                    device=x.device,
                    dtype=counts.dtype,
                    positive_sum=not collective.distributed,
                )
            except (TypeError, ValueError):
                # The other ranks are in the step's collective: join it with a
                # flag, so that they raise too rather than wait for this rank.
                join_rejected_step(centers, counts, collective)
                raise
            generator = self._restore_generator()
        x = self._prepare(x)
        since_reassign = self._n_since_last_reassign
        # Centres so large that squared distances overflow (float32 near
        # 1e19): the step is taken scaled by a power of two, an exact change,
        # as fit takes its steps. From the centres alone, the same on every rank.
        scale = min(scale_exponent_of(centers, centers), 0) if self.metric == "euclidean" else 0
        try:
            step = minibatch_step(
                times_power_of_two(x, scale),
                times_power_of_two(centers, scale),
                counts,
                sample_weight=weights,
                random_reassign=self._should_reassign(counts),
                reassignment_ratio=self.reassignment_ratio,
                generator=generator,
                metric=self.metric,
                memory_budget=self.memory_budget,
                collective=collective,
            )
            if scale:
                step = step._replace(
                    centroids=times_power_of_two(step.centroids, -scale),
                    inertia=times_power_of_two(step.inertia, -2 * scale),
                )
            # The batch inertia is summed over the ranks: all refuse together.
            if not v.all_finite(step.inertia):
                # Finite rows whose squared distances overflow: every label is a tie.
                raise v.distances_overflow("X", compute_dtype(x.dtype))
        except ValueError:
            # No step was taken (another rank's batch was rejected, or this
            # batch overflows): the reseeding schedule stays where it is, in
            # step with the other ranks', and a first call leaves no model.
            self._n_since_last_reassign = since_reassign
            if first:
                self._reset()
            raise
        self._store_state(step.centroids, step.weight_sums, generator, kind)
        self.n_steps_ += 1
        if self.compute_labels:
            # The batch's labels under the new centres: in one kernel call
            # where it applies, its labels certain (certain_nearest).
            found = None if self.metric == "cosine" else certain_nearest(x, step.centroids)
            labels, dist = self._assign_rows(x, step.centroids) if found is None else found
            dist = dist.double()
            if weights is not None:
                dist = dist * weights.double()
            self.labels_ = kind.out(labels)
            inertia = dist.sum().reshape(1)
            if collective.distributed:
                # The inertia of the ranks' batches together, as one process
                # fitting their concatenation reports (labels stay local).
                inertia = collective.all_sum(inertia.to(collective.device))
            self.inertia_ = float(inertia)
        return self

    def _partial_fit_sparse(self, X: Any, sample_weight: Any) -> MiniBatchKMeans:
        """:meth:`_partial_fit_batch` of a sparse batch: stepped on its stored
        values (:func:`~torchkmeans.functional.sparse.sparse_minibatch_step`),
        the first call seeded from them as ``fit`` seeds (only the chosen
        centres are densified; the ``init_size`` rows for a callable ``init``)."""
        first = not hasattr(self, "cluster_centers_")
        if first:
            shape = tuple(int(s) for s in X.shape)
            if len(shape) == 2 and 0 in shape:
                what = "sample" if shape[0] == 0 else "feature"
                raise ValueError(
                    f"Found array with 0 {what}(s) (shape={shape}) while a minimum of 1 "
                    "is required."
                )
            metric = v.check_metric(self.metric)
            rows, kind = self._sparse_rows(X, None, None, metric)
            weights = v.check_sample_weight(
                sample_weight, rows.n_rows, device=rows.device, dtype=rows.dtype
            )
            params = self._check_minibatch_params(rows.n_rows)
            self._reset_feature_names(X)
            k, n = params["n_clusters"], rows.n_rows
            generator = v.make_generator(self.random_state, rows.device)
            self._batch_size = params["batch_size"]
            self._n_since_last_reassign = 0
            self.n_steps_ = 0
            self.n_features_in_ = rows.n_features
            index = torch.arange(n, device=rows.device)
            if params["init_size"] < n:
                size = (params["init_size"],)
                index = torch.randint(0, n, size, generator=generator, device=rows.device)
            init_w = None if weights is None else weights[index]
            centers = self._seed_sparse_batch(rows, index, init_w, k, generator)
            counts = torch.zeros(k, dtype=rows.dtype, device=rows.device)
        else:
            centers, counts = self._centers, self._counts
            rows, kind = self._sparse_batch(X)
            v.check_positive_int(self.batch_size, "batch_size")
            v.check_nonnegative_float(self.reassignment_ratio, "reassignment_ratio")
            weights = v.check_sample_weight(
                sample_weight, rows.n_rows, device=rows.device, dtype=counts.dtype
            )
            generator = self._restore_generator()
        since_reassign = self._n_since_last_reassign
        try:
            # Squared distances that would under- or overflow (float32 near
            # 1e-25 or 1e19): the step is taken scaled by a power of two, exactly.
            exponent = sparse_scale_exponent(rows, centers)
            # The step's centres are weighted means of the old ones and the
            # rows, or rows: their largest entry lies between the rows' and
            # the old centres'. Where neither end needs a scale, neither do
            # they, and the labels below take none without reading all k x d
            # values again (k=20, d=50,000: 0.2-0.3 ms of a 7 ms call).
            unscaled = exponent == 0 and sparse_needs_no_scale(rows)
            step = sparse_minibatch_step(
                sparse_scaled(rows, exponent),
                times_power_of_two(centers, exponent),
                counts,
                sample_weight=weights,
                random_reassign=self._should_reassign(counts),
                reassignment_ratio=self.reassignment_ratio,
                generator=generator,
                memory_budget=self.memory_budget,
            )
            if not v.all_finite(step.inertia):
                raise v.distances_overflow("X", rows.dtype)
        except ValueError:
            self._n_since_last_reassign = since_reassign
            if first:
                self._reset()
            raise
        centers = times_power_of_two(step.centroids, -exponent)
        self._store_state(centers, step.weight_sums, generator, kind)
        self.n_steps_ += 1
        if self.compute_labels:
            if self.metric == "cosine":
                centers = unit_rows(centers)
            exponent = 0 if unscaled else sparse_scale_exponent(rows, centers)
            labels, distances = sparse_nearest(
                sparse_scaled(rows, exponent),
                times_power_of_two(centers, exponent),
                self.memory_budget,
            )
            self.labels_ = kind.out(labels)
            self.inertia_ = float(times_power_of_two(wide_sum(distances, weights), -2 * exponent))
        return self

    def _seed_sparse_batch(
        self,
        rows: SparseRows,
        index: torch.Tensor,
        weights: torch.Tensor | None,
        n_clusters: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Initial centres from the rows ``index`` of a sparse batch (``weights``
        their weights), as :meth:`_seed` seeds from the same rows dense."""
        init = self.init
        if isinstance(init, str):
            # Seeded scaled by a power of two where squared distances would
            # under- or overflow, as fit seeds; the centres are scaled back.
            exponent = sparse_scale_exponent(rows)
            scaled = sparse_scaled(rows, exponent).subset(index)
            centers = self._seed_sparse(scaled, weights, n_clusters, generator)
            return times_power_of_two(centers, -exponent)
        if callable(init):
            # A callable takes an array: the init_size rows are densified.
            dense = rows.take(index)
            return self._seed(dense, weights, n_clusters, generator)
        given = self._given_init((n_clusters, rows.n_features), rows.device, rows.dtype)
        return self._prepare(given.clone())

    # ------------------------------------------------------------------ inference

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """``fit(X)`` then the labels of ``X`` (``labels_``, or ``predict`` without them)."""
        if v.is_batch_stream(X):
            raise TypeError(
                "Expected X to be an array-like or tensor for fit_predict, got an iterable "
                "of batches; call fit, then predict on each batch."
            )
        self.fit(X, sample_weight=sample_weight)
        return self.labels_ if self.compute_labels else self.predict(X)

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """``fit(X)`` then ``transform(X)``: ``X`` is read twice, so not an iterable."""
        if v.is_batch_stream(X):
            raise TypeError(
                "Expected X to be an array-like or tensor for fit_transform, got an iterable "
                "of batches; call fit, then transform on each batch."
            )
        return super().fit_transform(X, sample_weight=sample_weight)


def _weighted_draws(
    cumulative: torch.Tensor, size: int, generator: torch.Generator
) -> torch.Tensor:
    """``size`` rows drawn with replacement, with probability proportional to
    their weight, from the cumulative weights: ``torch.multinomial`` refuses
    more than 2**24 rows."""
    draws = torch.rand(size, generator=generator, device=cumulative.device, dtype=cumulative.dtype)
    # In (0, total]: a row of weight zero is never drawn.
    return _sample_from_cumulative(cumulative, draws.neg_().add_(1).mul_(cumulative[-1]))


def _steps_between_checks(device: torch.device) -> int:
    """Steps between host reads of the early-stopping statistics: every step on
    the CPU, where a read costs nothing; every 10 elsewhere, where each read
    waits for the device."""
    return 1 if _device.on_host(device) else 10


class _BatchProgress:
    """``verbose`` over an iterable of batches: a tqdm bar (of the number of
    batches when the iterable has a length) when tqdm is installed, else a
    line on stderr at steps 1, 2, 4, 8, ... and at the end, with the mean
    batch inertia when ``compute_labels`` gives it."""

    def __init__(self, batches: Iterable[Any]) -> None:
        try:
            self.total: int | None = len(batches)  # type: ignore[arg-type]
        except (TypeError, NotImplementedError):  # a generator, an IterableDataset's loader
            self.total = None
        self.steps = 0
        self.last: float | None = None
        self.bar: Any = None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=self.total, desc="MiniBatchKMeans", leave=False)

    def _line(self, text: str) -> None:
        if self.last is not None:
            text += f": mean batch inertia {self.last:.6g}"
        print(f"[MiniBatchKMeans] {text}", file=sys.stderr)

    def update(self, mean_inertia: float | None) -> None:
        self.steps += 1
        self.last = mean_inertia
        if self.bar is not None:
            self.bar.update(1)
            if mean_inertia is not None:
                self.bar.set_postfix(batch_inertia=f"{mean_inertia:.6g}", refresh=False)
        elif not self.steps & (self.steps - 1):
            self._line(f"step {self.steps}" + (f"/{self.total}" if self.total else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(f"{self.steps} steps")


class _EarlyStopping:
    """scikit-learn's ``_mini_batch_convergence``, plus the progress display."""

    def __init__(
        self, estimator: MiniBatchKMeans, n_steps: int, n_samples: int, batch_size: int, tol: float
    ) -> None:
        self.max_no_improvement = estimator.max_no_improvement
        self.n_steps, self.batch_size, self.tol = n_steps, batch_size, tol
        self.alpha = min(batch_size * 2.0 / (n_samples + 1), 1.0)
        self.ewa: float | None = None
        self.first: float = 0.0
        self.ewa_min: float | None = None
        self.no_improvement = 0
        self.bar: Any = None
        self.every = max(1, n_steps // 20)
        self.verbose = bool(estimator.verbose)
        self.stop_message: str | None = None
        if self.verbose:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=n_steps, desc="MiniBatchKMeans", leave=False)

    def _report(self, step: int, mean_inertia: float, force: bool = False) -> None:
        if not self.verbose:
            return
        smoothed = mean_inertia if self.ewa is None else self.ewa
        if self.bar is not None:
            self.bar.update(1)
            if force or step % self.every == 0:
                self.bar.set_postfix(ewa_inertia=f"{smoothed:.6g}")
        elif force or step == 1 or step % self.every == 0 or step == self.n_steps:
            print(
                f"[MiniBatchKMeans] step {step}/{self.n_steps}: mean batch inertia "
                f"{mean_inertia:.6g}, ewa inertia {smoothed:.6g}",
                file=sys.stderr,
            )

    def update(self, step_index: int, batch_inertia: float, shift: float) -> bool:
        mean_inertia = batch_inertia / self.batch_size
        step = step_index + 1
        if step == 1:
            # The first batch measures the seeding, not the optimisation.
            self.first = mean_inertia
            self._report(step, mean_inertia)
            return False
        if self.ewa is None:
            self.ewa = mean_inertia
        else:
            self.ewa = self.ewa * (1 - self.alpha) + mean_inertia * self.alpha
        if self.tol > 0.0 and shift <= self.tol:
            self._report(step, mean_inertia, force=True)
            self._stopped(step, "centre shift below tol")
            return True
        if self.ewa_min is None or self.ewa < self.ewa_min:
            self.no_improvement = 0
            self.ewa_min = self.ewa
        else:
            self.no_improvement += 1
        stop = (
            self.max_no_improvement is not None and self.no_improvement >= self.max_no_improvement
        )
        self._report(step, mean_inertia, force=stop)
        if stop:
            self._stopped(step, f"no improvement of the ewa inertia in {self.no_improvement} steps")
        return stop

    def _stopped(self, step: int, reason: str) -> None:
        # As scikit-learn's "Converged (...) at step": the bar (leave=False)
        # is cleared at the end, and the last line did not say why it was the last.
        if self.verbose:
            self.stop_message = (
                f"[MiniBatchKMeans] converged at step {step}/{self.n_steps}: {reason}"
            )

    @property
    def smoothed(self) -> float:
        """The smoothed mean batch inertia; after a single step, that step's."""
        return self.first if self.ewa is None else self.ewa

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.stop_message is not None:
            print(self.stop_message, file=sys.stderr)
