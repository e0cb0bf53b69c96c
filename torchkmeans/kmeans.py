"""``KMeans``: the scikit-learn estimator over :func:`torchkmeans.functional.kmeans`."""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from . import _validation as v
from . import distributed
from ._base import _UNCHANGED, EstimatorProtocol
from ._host import (
    dense_when_mostly_stored,
    densified,
    host_rows,
    is_sparse,
    should_stream,
    sparse_input,
)
from .exceptions import ConvergenceWarning, not_fitted_error
from .functional.collective import LOCAL, Collective
from .functional.distances import (
    DEFAULT_MEMORY_BUDGET,
    Nearest,
    _nearest,
    compute_dtype,
    overflow_exponent_of,
    pairwise_distances,
    scale_exponent_of,
    times_power_of_two,
    unit_rows,
    wide_sum,
)
from .functional.lloyd import KMeansResult, kmeans
from .functional.sparse import (
    SparseRows,
    sparse_distances,
    sparse_kmeans,
    sparse_nearest,
    sparse_scale_exponent,
    sparse_scaled,
)
from .functional.streaming import chunk_rows, iter_chunks, reject_shard, streamed_kmeans

__all__ = ["KMeans"]


class KMeans(distributed.SharesProcessGroup, EstimatorProtocol):
    """K-Means clustering (Lloyd's algorithm) on CPU or CUDA, scikit-learn's API.

    numpy (or list, pandas) input gives numpy results; a torch tensor gives
    tensors on the device it was fitted on.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"k-means++", "random"}, array-like or callable, default="k-means++"
        Seeding: greedy k-means++, k distinct random rows, an array of shape
        ``(n_clusters, n_features)``, or ``init(X, n_clusters, generator)``
        returning one (``X`` is the input as a tensor, not normalised for
        "cosine"; the centres returned are).
    n_init : int or "auto", default="auto"
        Restarts, run together as one batch; the lowest inertia wins. "auto"
        is 1 for k-means++ and given centroids, 10 for random and a callable
        (called once per restart), as in scikit-learn.
    max_iter : int, default=300
        Maximum Lloyd iterations per run.
    tol : float, default=1e-4
        Stop when the squared centroid shift is below ``tol`` times the mean
        feature variance (labels that stop changing stop the run too).
    metric : {"euclidean", "cosine"}, default="euclidean"
        "cosine" is spherical k-means: unit-normalised data and centroids;
        inertia is then the weighted sum of ``1 - cos``. Rows of any finite
        norm are normalised exactly; rows of zeros stay zeros, at distance
        1 from every centre: they get label 0 and neither seed nor move a
        centre (while n_clusters rows have a direction).
    random_state : int, numpy RandomState/Generator, torch.Generator or None
        Seed for the initialisation; same seed and device give the same result.
        None draws one from numpy's global random state, as scikit-learn.
    device : str or torch.device, optional
        Where to compute: None is where the data is (CPU for numpy), "auto"
        picks CUDA when present.
    dtype : {"float32", "float64", ...} or torch.dtype, optional
        Compute dtype; by default the data's (float16/bfloat16 compute in float32).
    verbose : bool, default=False
        Report the inertia of each iteration after the fit (of the best run
        when there are several restarts, as the last line says): to the
        logger "torchkmeans" when it is enabled for INFO, else on stderr.
    memory_budget : int, optional
        Bytes the block of distances may take (default 256 MiB).
    process_group : "auto", None or torch.distributed ProcessGroup, default="auto"
        Under ``torchrun`` ("auto": when ``torch.distributed`` is initialised
        with several processes) each rank passes its own shard of the rows
        and all ranks get the same centroids (from rank 0's ``init`` when it
        is an array); ``inertia_`` is the total and ``labels_`` are the local
        rows'. None always fits locally. A group object is this process's
        connection, not state: ``copy.deepcopy`` and scikit-learn's
        ``clone`` share it, and a pickle stores "auto" in its place. See
        :mod:`torchkmeans.distributed`.
    copy_x : bool, default=True
        Accepted so that scikit-learn code runs unchanged: ``X`` is never
        modified either way (the CPU kernel centres the rows it reads as it
        reads them; other paths centre an internal copy).
    algorithm : {"lloyd", "elkan"}, default="lloyd"
        Accepted so that scikit-learn code runs unchanged: both run the same
        Lloyd iterations (Elkan's algorithm is an exact acceleration of
        Lloyd's and ends at the same centres).

    Notes
    -----
    A ``numpy.memmap``, or a host array or CPU tensor too large for the CUDA
    device it is fitted on, is never copied whole: every Lloyd iteration
    streams it chunk by chunk (pinned memory and a copy stream on CUDA), and
    ``predict``/``transform``/``score`` stream it the same way and return
    host arrays. Only the labels, the centroids and a chunk live on the device.
    Such a fit seeds k-means++ from a random sample of
    :func:`~torchkmeans.functional.streaming.init_sample_size` rows (as
    faiss does), since greedy k-means++ over all rows would read the data k
    times; from the same initial centroids it equals the in-memory fit.

    A sparse ``X`` (``scipy.sparse`` matrix or array of any format, torch
    sparse tensor) is not densified: Lloyd's iterations, ``predict``,
    ``transform`` and ``score`` run on its stored values
    (:mod:`torchkmeans.functional.sparse`), without centring, as
    scikit-learn does (but for the columns every row stores, which a fit
    shifts by their means where the rows lie far from the origin in them);
    ``cluster_centers_`` and ``transform`` are dense. One that stores a
    quarter of its elements or more is fitted dense where its dense form
    fits ``memory_budget`` or is no larger than the fit's copy of the
    stored values (see :meth:`fit`).
    A callable ``init`` is refused with sparse ``X``. Under
    ``torch.distributed`` a sparse shard is read as dense chunks of rows.

    Attributes
    ----------
    cluster_centers_ : array or Tensor of shape (n_clusters, n_features)
        Assigning finite values of this shape (as scikit-learn users do)
        replaces the centres that ``predict``, ``transform`` and ``score``
        use, converted to the fitted dtype and device (unit length for
        ``metric="cosine"``); ``labels_`` and ``inertia_`` stay as fitted.
    labels_ : array or Tensor of shape (n_samples,)
    inertia_ : float
        Sum of (weighted) squared distances to the closest centre
        (``1 - cos`` for ``metric="cosine"``).
    n_iter_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` in fit, when it is a data frame whose column
        names are all strings; ``predict``, ``transform`` and ``score`` then
        refuse a frame with other columns, as scikit-learn does.
    inertia_history_ : list of float
        Inertia of the assignment step of each iteration of the best run.

    Examples
    --------
    >>> import numpy as np
    >>> from torchkmeans import KMeans
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
    >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_.tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    >>> km.inertia_
    16.0
    >>> km.predict([[0, 0], [12, 3]]).tolist() == [km.labels_[0], km.labels_[3]]
    True
    """

    # What a pickle stores in place of a process_group object (see
    # distributed.SharesProcessGroup): the parameter's default.
    _pickled_group = "auto"

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Any = "k-means++",
        n_init: int | str = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        metric: str = "euclidean",
        random_state: Any = None,
        device: str | torch.device | None = None,
        dtype: Any = None,
        verbose: bool = False,
        memory_budget: int | None = None,
        process_group: Any = "auto",
        copy_x: bool = True,
        algorithm: str = "lloyd",
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.metric = metric
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.memory_budget = memory_budget
        self.process_group = process_group
        self.copy_x = copy_x
        self.algorithm = algorithm

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles from before a parameter existed get its default, so that
        # fit, get_params and repr work on them.
        defaults = inspect.signature(type(self).__init__).parameters
        for name in self._param_names():
            if name not in state and defaults[name].default is not inspect.Parameter.empty:
                state[name] = defaults[name].default
        self.__dict__.update(state)

    # The centres live in one place, ``_centers`` (a tensor on the fitted
    # device and compute dtype); ``cluster_centers_`` shows them in the
    # caller's kind, and assigning to it replaces them, so that predict,
    # transform and score always use what the attribute shows.

    @property
    def cluster_centers_(self) -> Any:
        """Cluster centres, ``(n_clusters, n_features)``, in the kind of the fitted data."""
        centers = self.__dict__.get("_centers")
        if centers is None:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute 'cluster_centers_'"
            )
        return self._kind.out(centers)

    @cluster_centers_.setter
    def cluster_centers_(self, centers: Any) -> None:
        current = self.__dict__.get("_centers")
        if current is None:
            raise not_fitted_error(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' before "
                "assigning cluster_centers_."
            )
        tensor, _ = v.as_tensor(
            centers,
            "cluster_centers_",
            device=current.device,
            dtype=current.dtype,
            shape="(n_clusters, n_features)",
        )
        if tensor.shape != current.shape:
            raise ValueError(
                f"Expected cluster_centers_ to be of shape {tuple(current.shape)}, "
                f"got shape {tuple(tensor.shape)}."
            )
        # A copy: later changes to the caller's array must not move the centres.
        tensor = tensor.clone()
        if self.metric == "cosine":
            tensor = unit_rows(tensor)
        self._centers = tensor

    def _check_params(self, n_samples: int | None) -> tuple[int, int, str]:
        n_clusters = v.check_n_clusters(self.n_clusters)
        v.check_positive_int(self.max_iter, "max_iter")
        v.check_nonnegative_float(self.tol, "tol")
        metric = v.check_metric(self.metric)
        if self.algorithm not in ("lloyd", "elkan"):
            raise ValueError(
                f"Expected algorithm to be 'lloyd' or 'elkan', got {self.algorithm!r}."
            )
        v.check_flag(self.copy_x, "copy_x")
        v.check_verbose(self.verbose)
        if self.memory_budget is not None:
            v.check_positive_int(self.memory_budget, "memory_budget")
        v.check_init(self.init)
        n_init = self._restarts(warn=True)
        if n_samples is not None and n_samples < n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}.")
        return n_clusters, n_init, metric

    def _restarts(self, warn: bool) -> int:
        """``n_init`` resolved: "auto" as scikit-learn, 1 for given centres."""
        init, n_init = self.init, self.n_init
        if n_init == "auto":
            n_init = 10 if (isinstance(init, str) and init == "random") or callable(init) else 1
        else:
            n_init = v.check_positive_int(n_init, "n_init")
        if not isinstance(init, str) and not callable(init) and n_init != 1:
            if warn:
                warnings.warn(
                    f"Explicit initial centers given; running a single init instead of "
                    f"n_init={n_init}.",
                    RuntimeWarning,
                    stacklevel=v.user_stacklevel(),
                )
            n_init = 1
        return n_init

    def _batched_restarts(self) -> int:
        """The restarts an in-memory fit runs as one batch, for ``should_stream``:
        1 where ``n_init`` is invalid (the fit then says so)."""
        try:
            return self._restarts(warn=False)
        except (TypeError, ValueError):
            return 1

    def _reset_feature_names(self, X: Any) -> None:
        """Record the column names of a data frame ``X`` in ``feature_names_in_`` (or none)."""
        names = v.feature_names(X)
        if names is None:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = names

    def _check_feature_names(self, X: Any) -> None:
        v.check_feature_names(self.__dict__.get("feature_names_in_"), X, type(self).__name__)

    def _validate_x(
        self,
        X: Any,
        *,
        reset: bool,
        allow_empty: bool = False,
        strided: bool = False,
        check_finite: bool = True,
    ) -> tuple[torch.Tensor, v.OutputKind]:
        dtype = v.resolve_dtype(self.dtype)
        X = densified(X, self.memory_budget)
        if is_sparse(X):
            # Paths that hold the data whole (a partial_fit batch): only a
            # sparse X whose dense form fits the budget.
            n, d = (int(s) for s in X.shape)
            itemsize = X.element_size() if isinstance(X, torch.Tensor) else X.dtype.itemsize
            raise ValueError(
                "Expected X to be a sparse batch whose dense form fits memory_budget="
                f"{self.memory_budget or DEFAULT_MEMORY_BUDGET} bytes, got shape {(n, d)} "
                f"({n * d * max(4, itemsize)} bytes dense); pass smaller batches or raise "
                "memory_budget."
            )
        if reset:
            x, kind = v.as_tensor(X, "X", device=self.device, dtype=dtype, strided=strided)
            if x.shape[0] == 0 and not allow_empty:
                raise ValueError(
                    f"Found array with 0 sample(s) (shape={tuple(x.shape)}) while a minimum "
                    "of 1 is required."
                )
            if x.shape[1] == 0:
                raise ValueError(
                    f"Found array with 0 feature(s) (shape={tuple(x.shape)}) while a minimum "
                    "of 1 is required."
                )
            return x, kind
        self._check_is_fitted()
        self._check_feature_names(X)
        centers = self._centers
        # Cast to the centres' dtype before the finiteness check: float64 rows
        # beyond float32's range would otherwise become infinities after it.
        # Rows pass through a half precision asked for, as in fit: predict and
        # score see the rows the fit saw.
        rounding = dtype if dtype is not None and compute_dtype(dtype) != dtype else None
        x, kind = v.as_tensor(
            X,
            "X",
            device=centers.device,
            dtype=rounding or centers.dtype,
            check_finite=check_finite or rounding is not None,
        )
        if rounding is not None:
            x = x.to(centers.dtype)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return x, kind

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Compute the clustering.

        Parameters
        ----------
        X : array-like, Tensor, numpy.memmap or sparse matrix of shape (n_samples, n_features)
            A ``scipy.sparse`` matrix or torch sparse tensor is clustered
            on its stored values; one that stores a quarter of its elements
            or more is fitted dense where its dense form fits
            ``memory_budget`` or is no larger than the fit's copy of the
            stored values (faster, and centred: see
            :func:`~torchkmeans._host.dense_when_mostly_stored`).
        y : ignored
        sample_weight : array-like or Tensor of shape (n_samples,), optional
            Non-negative weight of each sample.

        Returns
        -------
        self

        Raises
        ------
        TypeError
            If ``init`` is a callable and ``X`` is sparse, streamed or sharded.
        """
        if v.is_batch_stream(X):
            raise TypeError(
                "Expected X to be an array-like, memmap or tensor that KMeans can read once "
                f"per Lloyd iteration, got {type(X).__name__}; MiniBatchKMeans.fit and "
                "partial_fit take iterables of batches."
            )
        collective = distributed.collective(self.process_group)
        if is_sparse(X) and not collective.distributed:
            if callable(self.init) and not isinstance(self.init, str):
                raise TypeError(
                    "Expected init to be 'k-means++', 'random' or an array when X is sparse "
                    f"({type(X).__name__}), got a callable."
                )
            # Mostly stored, it is fitted dense: faster, and centred.
            X = dense_when_mostly_stored(X, self.memory_budget)
            if is_sparse(X):
                return self._fit_sparse(X, sample_weight)
        X = densified(X, self.memory_budget)
        self._reset_feature_names(X)
        if collective.distributed or should_stream(
            X, self.device, lloyd=True, problems=self._batched_restarts()
        ):
            return self._fit_passes(X, sample_weight, collective)
        # The fit copies X once, centred: strides as given (a data frame's
        # block, Fortran order) are read by that copy, not copied before it.
        x, kind = self._validate_x(X, reset=True, strided=True)
        n_clusters, n_init, metric = self._check_params(x.shape[0])
        compute = compute_dtype(x.dtype)
        weights = v.check_sample_weight(sample_weight, x.shape[0], device=x.device, dtype=compute)
        generator = v.make_generator(self.random_state, x.device)
        init = self._given_init((n_clusters, x.shape[1]), x.device, compute)
        with v.overflow_of_X(compute):
            result = kmeans(
                x,
                n_clusters,
                init=init,
                n_init=n_init,
                max_iter=self.max_iter,
                tol=self.tol,
                metric=metric,
                sample_weight=weights,
                generator=generator,
                memory_budget=self.memory_budget,
            )
        self._store(result, kind, x.shape[1])
        return self

    def _sparse_rows(
        self, X: Any, device: torch.device | None, dtype: torch.dtype | None, metric: str
    ) -> tuple[SparseRows, v.OutputKind]:
        """A sparse ``X`` as :class:`~torchkmeans.functional.sparse.SparseRows`
        on ``device`` (None: where ``X`` is), rounded through the half
        precision ``self.dtype`` asks for and computed in ``dtype`` (None:
        that of ``X``)."""
        return sparse_input(
            X,
            device=self.device if device is None else device,
            dtype=v.resolve_dtype(self.dtype),
            metric=metric,
            compute=dtype,
        )

    def _fit_sparse(self, X: Any, sample_weight: Any) -> KMeans:
        """``fit`` on a scipy.sparse matrix or torch sparse tensor: Lloyd's
        iterations on its stored values (see :mod:`torchkmeans.functional.sparse`)."""
        self._reset_feature_names(X)
        shape = tuple(int(s) for s in X.shape)
        if len(shape) == 2 and 0 in shape:
            what = "sample" if shape[0] == 0 else "feature"
            raise ValueError(
                f"Found array with 0 {what}(s) (shape={shape}) while a minimum of 1 is required."
            )
        n_clusters, n_init, metric = self._check_params(shape[0] if len(shape) == 2 else None)
        v.check_memory_budget(self.memory_budget)
        rows, kind = self._sparse_rows(X, None, None, metric)
        weights = v.check_sample_weight(
            sample_weight, rows.n_rows, device=rows.device, dtype=rows.dtype
        )
        generator = v.make_generator(self.random_state, rows.device)
        result = sparse_kmeans(
            rows,
            n_clusters,
            init=self._given_init((n_clusters, rows.n_features), rows.device, rows.dtype),
            n_init=n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            sample_weight=weights,
            generator=generator,
            memory_budget=self.memory_budget,
        )
        if not v.all_finite(result.inertia):
            # Finite rows whose squared distances overflow: every label is a tie.
            raise v.distances_overflow("X", rows.dtype)
        self._store(result, kind, rows.n_features)
        return self

    def _sparse_batch(self, X: Any) -> tuple[SparseRows, v.OutputKind]:
        """A sparse ``X`` after the fit, checked against it, on the centres'
        device and dtype (unscaled, unlike :meth:`_sparse_input`'s)."""
        self._check_is_fitted()
        self._check_feature_names(X)
        centers = self._centers
        rows, kind = self._sparse_rows(X, centers.device, centers.dtype, self.metric)
        if rows.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {rows.n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return rows, kind

    def _sparse_input(self, X: Any) -> tuple[SparseRows, v.OutputKind, torch.Tensor, int]:
        """A sparse ``X`` for ``predict``, ``transform`` and ``score``: checked
        against the fit, on the centres' device and dtype, with the centres
        (unit ones for cosine). Both are scaled by the returned power of two
        when their squared distances would underflow or overflow (see
        :func:`~torchkmeans.functional.sparse.sparse_scale_exponent`): the
        distances are those of the data times ``4^exponent``."""
        rows, kind = self._sparse_batch(X)
        centers = self._centers
        if self.metric == "cosine":
            return rows, kind, unit_rows(centers), 0
        exponent = sparse_scale_exponent(rows, centers)
        return sparse_scaled(rows, exponent), kind, times_power_of_two(centers, exponent), exponent

    def _given_init(self, shape: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Any:
        """``init`` as given, or as a tensor of ``shape`` when it is an array."""
        init = self.init
        if isinstance(init, str) or callable(init):
            return init
        tensor, _ = v.as_tensor(init, "init", device=device, dtype=dtype, shape=str(shape))
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"Expected init to be of shape {shape}, got shape {tuple(tensor.shape)}."
            )
        return tensor

    def _fit_passes(self, X: Any, sample_weight: Any, collective: Collective) -> KMeans:
        """``fit`` in passes: data streamed from the host, or a shard of a distributed fit."""
        dtype = v.resolve_dtype(self.dtype)
        shard = collective.distributed
        try:
            if should_stream(X, self.device, lloyd=True, problems=self._batched_restarts()):
                data, compute, kind = host_rows(X, dtype, allow_empty=shard)
                # A sparse tensor is computed where it is, as a dense one.
                device = v.resolve_device(self.device, kind.device or torch.device("cpu"))
                n_local, n_features = data.n_rows, data.n_features
            else:
                # Finiteness is checked in the first pass, on every rank at once.
                x, kind = v.as_tensor(X, "X", device=self.device, dtype=dtype, check_finite=False)
                compute = compute_dtype(x.dtype)
                data, device = x, x.device
                n_local, n_features = x.shape
            # On shards n_samples >= n_clusters is checked over all ranks.
            n_clusters, n_init, metric = self._check_params(None if shard else n_local)
            # On shards the weights' positive sum is checked over all ranks
            # (an empty shard, or one of zero weights, is one share of it).
            weights = v.check_sample_weight(
                sample_weight, n_local, device=device, dtype=compute, positive_sum=not shard
            )
            generator = v.make_generator(self.random_state, device)
            if callable(self.init) and not isinstance(self.init, str):
                raise TypeError(
                    "Expected init to be 'k-means++', 'random' or an array when X is streamed "
                    f"from the host or sharded over processes ({type(X).__name__}), got a "
                    "callable."
                )
            init = self._given_init((n_clusters, n_features), device, compute)
        except (TypeError, ValueError) as exc:
            if shard:
                # The other ranks are about to compare their problems: this
                # one joins with its error rather than leave them waiting.
                reject_shard(collective, exc)
            raise
        result = streamed_kmeans(
            data,
            n_clusters,
            init=init,
            n_init=n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            metric=metric,
            sample_weight=weights,
            generator=generator,
            device=device,
            dtype=compute,
            memory_budget=self.memory_budget,
            collective=collective,
        )
        if not v.all_finite(result.inertia):
            # Finite rows whose squared distances overflow: every label is a tie.
            raise v.distances_overflow("X", compute)
        if kind.is_torch and kind.device is None and not isinstance(data, torch.Tensor):
            kind = v.OutputKind(True, torch.device("cpu"))
        self._store(result, kind, n_features, collective=collective)
        return self

    def _store(
        self,
        result: KMeansResult,
        kind: v.OutputKind,
        n_features: int,
        *,
        collective: Collective = LOCAL,
    ) -> None:
        self._kind = kind
        self._centers = result.centroids
        self.labels_ = kind.out(result.labels)
        self.inertia_ = float(result.inertia)
        self.n_iter_ = int(result.n_iter)
        # Summed as |x|^2 plus the scores |c|^2 - 2 x.c: with every point on
        # its centroid (duplicates) the cancellation can round below zero.
        history = result.inertia_history[: self.n_iter_].clamp_min(0.0)
        self.inertia_history_ = history.cpu().tolist()
        self.n_features_in_ = n_features
        if self.verbose:
            self._report()
        k = self._centers.shape[0]
        sizes = torch.bincount(result.labels, minlength=k)
        if collective.distributed:
            # A shard may see fewer clusters than k among its own labels: the ranks' together.
            sizes = collective.all_sum(sizes.to(collective.device))
        n_distinct = int(sizes.count_nonzero())
        if n_distinct < k:
            warnings.warn(
                f"Number of distinct clusters ({n_distinct}) found smaller than "
                f"n_clusters ({k}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=v.user_stacklevel(),
            )

    def _report(self) -> None:
        """``verbose``: the inertia of each iteration, to the logger "torchkmeans"
        when logging is set up to show it, else on stderr (as MiniBatchKMeans
        reports), so that ``verbose=True`` is never silent."""
        import logging

        # With several restarts only the best one's iterations are listed: say
        # so, or n_init looks ignored.
        runs = self._restarts(warn=False)
        best = f" (the best of {runs} runs, whose iterations are listed)" if runs > 1 else ""
        log = logging.getLogger("torchkmeans")
        if log.isEnabledFor(logging.INFO) and log.hasHandlers():
            for i, value in enumerate(self.inertia_history_):
                log.info("Iteration %d, inertia %.6g", i, value)
            log.info("Final inertia %.6g after %d iterations%s", self.inertia_, self.n_iter_, best)
            return
        for i, value in enumerate(self.inertia_history_):
            print(f"[KMeans] iteration {i}: inertia {value:.6g}", file=sys.stderr)
        print(
            f"[KMeans] final inertia {self.inertia_:.6g} after {self.n_iter_} iterations{best}",
            file=sys.stderr,
        )

    @staticmethod
    def _unit_rows(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and centres as unit vectors, for the cosine metric."""
        return unit_rows(x), unit_rows(centers)

    def _assign_rows(
        self, x: torch.Tensor, centers: torch.Tensor, exact: bool = True, precise: bool = True
    ) -> Nearest:
        """Nearest of ``centers`` for validated rows ``x``: labels and distances.

        ``exact=False`` leaves the distances out (an empty tensor), for labels
        only; ``precise=False`` keeps exact labels and distances good only for
        a test of finiteness (see ``_nearest``).
        """
        if self.metric == "cosine":
            x, centers = self._unit_rows(x, centers)
        labels, distances = _nearest(
            x,
            centers,
            metric=self.metric,
            memory_budget=self.memory_budget,
            exact=exact,
            precise=precise,
        )
        if distances is None:
            distances = torch.empty(0, dtype=x.dtype, device=x.device)
        return Nearest(labels, distances)

    def _center_distances(self, x: torch.Tensor, rows_overflow: bool = False) -> torch.Tensor:
        """``transform``'s values for validated rows: euclidean (not squared) or ``1 - cos``.

        ``rows_overflow``: the squared distances of ``x`` overflowed; its
        largest entry is read too (the centres' alone are otherwise).
        """
        if self.metric == "cosine":
            x, centers = self._unit_rows(x, self._centers)
            return pairwise_distances(x, centers, metric="cosine")
        # Squared distances of float32 rows and centres near 1e-25 are 0 in
        # float32 (the dtype transform returns), and near 1e19 inf, where
        # their roots are finite: taken between them scaled by a power of
        # two, as the labels are, and scaled back after the root.
        if rows_overflow:
            exponent = overflow_exponent_of(x, self._centers)
        else:
            exponent = scale_exponent_of(x, self._centers)
        x, centers = times_power_of_two(x, exponent), times_power_of_two(self._centers, exponent)
        return times_power_of_two(pairwise_distances(x, centers).sqrt_(), -exponent)

    def _parts(
        self, X: Any, outputs: int = 0, finite_later: bool = False
    ) -> tuple[Iterator[tuple[int, torch.Tensor]], int, v.OutputKind, bool]:
        """Validated tensors covering ``X`` with their first row, on the centres' device.

        One tensor, or chunks of a memmap or of host data too big for the
        device (with ``outputs`` values a row of result, see ``should_stream``);
        the last flag says whether ``X`` is streamed. With ``finite_later`` one
        tensor is not checked for NaN or infinity: the caller does that from
        its results (:meth:`_refuse_infinite`).
        """
        self._check_is_fitted()
        if v.is_batch_stream(X):
            raise TypeError(
                "Expected X to be an array-like, memmap or tensor, got an iterable of batches "
                f"({type(X).__name__}); predict, transform and score take one batch at a time."
            )
        centers = self._centers
        X = densified(X, self.memory_budget)
        if not should_stream(X, centers.device, outputs=outputs):
            x, kind = self._validate_x(X, reset=False, check_finite=not finite_later)
            return iter([(0, x)]), x.shape[0], kind, False
        self._check_feature_names(X)
        rows, _, kind = host_rows(X, v.resolve_dtype(self.dtype))  # rounded as in fit
        if rows.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {rows.n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )

        def checked() -> Iterator[tuple[int, torch.Tensor]]:
            chunks = iter_chunks(
                rows, centers.device, centers.dtype, chunk_rows(rows, centers.device)
            )
            for start, chunk in chunks:
                if not v.all_finite(chunk):
                    # Read again in its own dtype: a file of finite float64
                    # rows beyond float32's range holds no NaN or infinity.
                    source = rows.read(start, start + chunk.shape[0])
                    raise v.not_finite("X", chunk, source)
                yield start, chunk

        if kind.is_torch and kind.device is None:
            kind = v.OutputKind(True, torch.device("cpu"))
        return checked(), rows.n_rows, kind, True

    def _refuse_infinite(self, X: Any) -> None:
        """Raise the error of :meth:`_validate_x` for ``X`` holding NaN or
        infinity (or values its conversion made infinite), if it does.

        Results computed from the rows of ``X`` (euclidean distances, from
        differences) are finite only where the rows are: checked there,
        ``X`` is read again only when they are not, rather than summed first
        on every call (60,000 x 64 float32 rows: 0.15 ms of a 2.4 ms predict).
        """
        self._validate_x(densified(X, self.memory_budget), reset=False)

    def _labels_and_inertia(
        self, X: Any, sample_weight: Any = None, *, inertia_needed: bool = True
    ) -> tuple[torch.Tensor, float, v.OutputKind]:
        """Nearest centre of every row of ``X``, and the (weighted) inertia, chunk by chunk.

        Labels of streamed data are gathered on the host. Without
        ``inertia_needed`` the cosine distances are not computed and the
        inertia is 0; euclidean ones are (the search computes them anyway),
        and rows whose squared distances overflow are refused, as in ``fit``.
        """
        # Mostly stored, it is searched dense, as it was fitted.
        X = dense_when_mostly_stored(X, self.memory_budget)
        if is_sparse(X):
            return self._sparse_labels_and_inertia(X, sample_weight)
        exact = inertia_needed or self.metric == "euclidean"
        # Each row's distance (from differences) is NaN or infinite where the
        # row is: with the distances computed, X is checked in their sum.
        parts, n, kind, streamed = self._parts(X, finite_later=exact)
        centers = self._centers
        weights = v.check_sample_weight(
            sample_weight, n, device=centers.device, dtype=torch.float64
        )
        # Data in memory is one part: its labels are returned as they are, not
        # copied into a second array of n int64 (and the distances are summed
        # without a float64 copy): predict on 4,000,000 x 2 float32 rows held
        # 3.5x the data, scikit-learn 1x.
        labels = None
        if streamed:
            labels = torch.empty(n, dtype=torch.int64, device="cpu")
        inertia = torch.zeros((), dtype=torch.float64, device=centers.device)
        for start, x in parts:
            # Without the inertia (predict) the distances are only tested for
            # overflow: rows near their centre are not measured again (rows of
            # duplicated data, each a rounding away from its centre: predict
            # 3.6-5.5x scikit-learn's time).
            chunk_labels, dist = self._assign_rows(
                x.to(centers.dtype), centers, exact, precise=inertia_needed
            )
            if labels is None:
                labels = chunk_labels
            else:
                labels[start : start + x.shape[0]] = chunk_labels
            if not exact:
                continue
            stop = start + x.shape[0]
            inertia += wide_sum(dist, None if weights is None else weights[start:stop]).to(
                inertia.dtype
            )
        if labels is None:  # no rows
            labels = torch.empty(0, dtype=torch.int64, device=centers.device)
        total = float(inertia)
        if not math.isfinite(total):
            if not streamed:
                self._refuse_infinite(X)
            # Finite rows whose squared distances overflow: every label is a tie.
            raise v.distances_overflow("X", centers.dtype)
        return labels, total if inertia_needed else 0.0, kind

    def _sparse_labels_and_inertia(
        self, X: Any, sample_weight: Any
    ) -> tuple[torch.Tensor, float, v.OutputKind]:
        """:meth:`_labels_and_inertia` of a sparse ``X``, from sparse products."""
        rows, kind, centers, exponent = self._sparse_input(X)
        weights = v.check_sample_weight(
            sample_weight, rows.n_rows, device=rows.device, dtype=torch.float64
        )
        labels, distances = sparse_nearest(rows, centers, self.memory_budget)
        total = float(times_power_of_two(wide_sum(distances, weights), -2 * exponent))
        if not math.isfinite(total):
            raise v.distances_overflow("X", centers.dtype)
        return labels, total, kind

    def predict(self, X: Any) -> Any:
        """Index of the closest cluster centre for each sample (a memmap is streamed).

        Weights do not change which centre is closest: as in scikit-learn
        (since 1.5), ``predict`` takes no ``sample_weight``.

        Returns
        -------
        labels : array or Tensor of shape (n_samples,)
        """
        labels, _, kind = self._labels_and_inertia(X, inertia_needed=False)
        return kind.out(labels)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """``fit(X)`` then return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X: Any) -> Any:
        """Distance of each sample to each centre (euclidean, not squared; or ``1 - cos``).

        Streamed input (a memmap) gets a host array, filled chunk by chunk.

        Returns
        -------
        distances : array or Tensor of shape (n_samples, n_clusters)
        """
        self._check_is_fitted()
        given = X
        X = dense_when_mostly_stored(X, self.memory_budget)  # as fitted
        if is_sparse(X):
            rows, kind, centers, exponent = self._sparse_input(X)
            out = sparse_distances(rows, centers, self.memory_budget)
            if self.metric == "euclidean":
                out = times_power_of_two(out.sqrt_(), -exponent)
            if not v.all_finite(out):
                raise v.distances_overflow("X", self._centers.dtype)
            return self._output_container(kind.out(out), X)
        # The n x k result is held on the device unless X is streamed.
        # Distances are NaN or infinite where the rows are: checked there.
        parts, n, kind, streamed = self._parts(X, outputs=self._centers.shape[0], finite_later=True)
        centers = self._centers
        out = None
        if streamed:
            out = torch.empty((n, centers.shape[0]), dtype=centers.dtype, device="cpu")
        for start, x in parts:
            distances = self._center_distances(x.to(centers.dtype))
            if not v.all_finite(distances):
                if not streamed:
                    self._refuse_infinite(X)
                # Rows far larger than the centres: their squared distances
                # overflowed, not (most often) the distances themselves.
                distances = self._center_distances(x.to(centers.dtype), rows_overflow=True)
                if not v.all_finite(distances):
                    raise v.distances_overflow("X", centers.dtype)
            if out is None:
                # One part: its distances are the result (copying them into
                # another n x k array cost a quarter of the time at k=50, d=2).
                out = distances
            else:
                out[start : start + x.shape[0]] = distances
        return self._output_container(kind.out(out), given)

    def set_output(self, *, transform: str | None = None) -> KMeans:
        """Output container of :meth:`transform` and :meth:`fit_transform` for array input.

        scikit-learn's API (``Pipeline.set_output`` calls it on every step):
        ``"pandas"`` or ``"polars"`` give a data frame with the columns of
        :meth:`get_feature_names_out` (and a pandas input's index);
        ``"default"`` the array; None leaves the setting as it is. Tensor
        input always gives a tensor.

        Returns
        -------
        self

        Examples
        --------
        >>> km = KMeans(n_clusters=2, random_state=0).set_output(transform="pandas")
        >>> list(km.fit_transform([[0.0], [1.0], [9.0]]).columns)
        ['kmeans0', 'kmeans1']
        """
        if transform is None:
            return self
        if transform not in ("default", "pandas", "polars"):
            raise ValueError(
                f"Expected transform to be 'default', 'pandas', 'polars' or None, "
                f"got {transform!r}."
            )
        # scikit-learn's attribute: its clone() copies it to the clone.
        config = dict(getattr(self, "_sklearn_output_config", {}))
        config["transform"] = transform
        self._sklearn_output_config = config
        return self

    def set_fit_request(self, *, sample_weight: bool | str | None = _UNCHANGED) -> KMeans:
        """Whether scikit-learn's routers pass ``sample_weight`` to :meth:`fit`.

        scikit-learn's metadata routing (``sklearn.set_config(
        enable_metadata_routing=True)``; scikit-learn is imported on the
        call): True passes it when given, False never does, None (the
        default) makes a router given one raise, and a string passes the
        metadata of that name. The request holds for ``fit_predict`` and
        ``fit_transform`` too, and survives ``clone`` and pickling.

        Returns
        -------
        self

        Raises
        ------
        RuntimeError
            When metadata routing is not enabled, as scikit-learn's.

        Examples
        --------
        >>> import sklearn
        >>> with sklearn.config_context(enable_metadata_routing=True):
        ...     km = KMeans(n_clusters=2).set_fit_request(sample_weight=True)
        >>> km.get_metadata_routing().fit.requests
        {'sample_weight': True}
        """
        return self._set_requests("fit", sample_weight=sample_weight)

    def set_score_request(self, *, sample_weight: bool | str | None = _UNCHANGED) -> KMeans:
        """Whether scikit-learn's routers pass ``sample_weight`` to :meth:`score`.

        As :meth:`set_fit_request`, for the scoring of ``cross_validate`` and
        ``GridSearchCV`` (the default scoring calls :meth:`score`).

        Returns
        -------
        self

        Examples
        --------
        >>> import sklearn
        >>> with sklearn.config_context(enable_metadata_routing=True):
        ...     km = KMeans(n_clusters=2).set_score_request(sample_weight=False)
        >>> km.get_metadata_routing().score.requests
        {'sample_weight': False}
        """
        return self._set_requests("score", sample_weight=sample_weight)

    def _output_container(self, out: Any, X: Any) -> Any:
        """``out`` (an array) as the data frame that :meth:`set_output` asked for.

        Without a setting of its own, the estimator follows scikit-learn's
        global ``set_config(transform_output=...)`` when scikit-learn is
        imported, as scikit-learn's estimators do.
        """
        container = getattr(self, "_sklearn_output_config", {}).get("transform")
        if container is None:
            sklearn = sys.modules.get("sklearn")
            get_config = getattr(sklearn, "get_config", None)
            container = get_config().get("transform_output", "default") if get_config else None
        if container in (None, "default") or not isinstance(out, np.ndarray):
            return out
        columns = [str(name) for name in self.get_feature_names_out()]
        if container == "polars":
            import polars

            return polars.DataFrame(out, schema=columns, orient="row")
        import pandas

        index = X.index if isinstance(X, pandas.DataFrame) else None
        return pandas.DataFrame(out, columns=columns, index=index)

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the columns of :meth:`transform`, as scikit-learn gives them.

        Parameters
        ----------
        input_features : array-like of str, optional
            Checked against ``feature_names_in_`` (or ``n_features_in_``)
            when given; the output names do not depend on them.

        Returns
        -------
        ndarray of str objects, shape (n_clusters,)
            ``"kmeans0"``, ``"kmeans1"``, ... (the class name in lower case).

        Examples
        --------
        >>> KMeans(n_clusters=2, random_state=0).fit([[0.0], [1.0], [9.0]]).get_feature_names_out()
        array(['kmeans0', 'kmeans1'], dtype=object)
        """
        self._check_is_fitted()
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            fitted = getattr(self, "feature_names_in_", None)
            if fitted is not None and not np.array_equal(given, fitted):
                raise ValueError("input_features is not equal to feature_names_in_")
            if fitted is None and given.shape != (self.n_features_in_,):
                raise ValueError(
                    f"input_features should have length equal to number of features "
                    f"({self.n_features_in_}), got {len(given)}"
                )
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self._centers.shape[0])], dtype=object)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the inertia of ``X`` under the fitted centres."""
        return -self._labels_and_inertia(X, sample_weight)[1]
