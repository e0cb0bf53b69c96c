"""Host data that estimators stream instead of loading: memmaps, and arrays too big for the GPU."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from . import _validation as v
from .functional.distances import DEFAULT_MEMORY_BUDGET, compute_dtype
from .functional.sparse import SparseRows, _row_of, dense_rows, sparse_rows
from .functional.streaming import HostRows

__all__ = [
    "DENSIFIED_SHARE",
    "dense_when_mostly_stored",
    "densified",
    "host_rows",
    "is_sparse",
    "read_sparse",
    "should_stream",
    "stored_share",
]

# A host array is streamed to a GPU when the tensors an in-memory computation
# on it holds (see should_stream) would take more than this share of the
# device's free memory: the rest is left to the blocks of distances (sized by
# memory_budget), the allocator's rounding and the caller's own tensors.
_DEVICE_SHARE = 0.8


def _check_shape(shape: tuple[int, ...], name: str, allow_empty: bool = False) -> None:
    if len(shape) != 2:
        raise ValueError(
            f"Expected {name} to be 2-D of shape (n_samples, n_features), got shape {shape}."
        )
    if (shape[0] == 0 and not allow_empty) or shape[1] == 0:
        what = "sample" if shape[0] == 0 else "feature"
        raise ValueError(
            f"Found array with 0 {what}(s) (shape={shape}) while a minimum of 1 is required."
        )


def _compute_dtype(X: Any, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a fit on ``X`` computes in: as :func:`~torchkmeans._validation.as_tensor`."""
    probe = X[:1] if isinstance(X, torch.Tensor) else np.asarray(X[:1])
    tensor = v.as_tensor(probe, "X", device="cpu", dtype=dtype, check_finite=False)[0]
    return compute_dtype(tensor.dtype)


def should_stream(
    X: Any,
    device: str | torch.device | None,
    *,
    lloyd: bool = False,
    problems: int = 1,
    outputs: int = 0,
) -> bool:
    """Whether a fit on ``X`` streams it from the host instead of copying it whole.

    Always for a ``numpy.memmap`` and a sparse matrix or tensor (see
    :func:`densified` for the small ones); for a numpy array or CPU tensor only when
    the computation runs on a GPU that could not hold what it needs of it:
    a copy, labels and distances; with ``lloyd`` (Lloyd's iterations of
    ``KMeans.fit`` and ``elbow``) also the centred copy with a column of ones,
    squared norms and the previous iteration's labels, and for each of the
    ``problems`` run as one batch (restarts) its own labels and distances;
    and ``outputs`` values a row that the result holds (``transform``'s
    distances to the k centres).
    """
    if isinstance(X, np.memmap) or is_sparse(X):
        return True
    if not isinstance(X, (np.ndarray, torch.Tensor)) or X.ndim != 2:
        return False
    if isinstance(X, torch.Tensor) and X.device.type != "cpu":
        return False
    target = v.resolve_device(device, torch.device("cpu"))
    if target.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(target)
    itemsize = max(4, X.element_size() if isinstance(X, torch.Tensor) else X.itemsize)
    d = X.shape[1]
    # Bytes per row, as measured on the accelerator paths: d * itemsize + 24
    # (predict, MiniBatchKMeans); (2d + 2) * itemsize + 32 for Lloyd (float32,
    # d=8: 96 bytes, 3x the copy). Counting the copy alone, with a share of
    # 0.5, had let fits needing up to 1.3x (d=8) or 2x (d=2) the free memory
    # run out of it rather than stream. Each further problem of a batched run
    # holds labels, previous labels and two distances a row (n_init=10, d=2:
    # 264 bytes in float32, 368 in float64, where one problem's were counted).
    row_bytes = (2 * d + 2) * itemsize + 32 if lloyd else d * itemsize + 24
    if lloyd:
        row_bytes += (max(1, problems) - 1) * (16 + 2 * itemsize)
    # transform's n x k result (k=64, d=4: 272 bytes a row in float32, 40 counted).
    row_bytes += outputs * itemsize
    return X.shape[0] * row_bytes > _DEVICE_SHARE * free


def host_rows(
    X: Any, dtype: torch.dtype | None, *, allow_empty: bool = False
) -> tuple[HostRows, torch.dtype, v.OutputKind]:
    """Read access to the rows of a host array, memmap or CPU tensor, without copying it.

    Returns the reader, the compute dtype, and how to hand results back
    (numpy for arrays, tensors for a tensor).
    """
    shape = tuple(int(s) for s in X.shape)
    if is_sparse(X) and len(shape) == 2:
        csr = read_sparse(X)
        _check_shape(shape, "X", allow_empty)
        values = csr.values.dtype if dtype is None else dtype
        reader = HostRows(csr.read, csr.take, shape[0], shape[1], csr.values.element_size())
        return _rounded_rows(reader, dtype), compute_dtype(values), csr.kind
    _check_shape(shape, "X", allow_empty)
    compute = _compute_dtype(X, dtype)
    if isinstance(X, torch.Tensor):
        tensor = X.detach()

        def read(start: int, stop: int) -> torch.Tensor:
            return tensor[start:stop]

        def take(index: torch.Tensor) -> torch.Tensor:
            return tensor[index]

        kind = v.OutputKind(True, None)
        itemsize = tensor.element_size()
    else:
        array = X

        def to_tensor(rows: np.ndarray) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only views
                return torch.from_numpy(v.numeric_array(rows, "X"))

        def read(start: int, stop: int) -> torch.Tensor:
            return to_tensor(array[start:stop])

        def take(index: torch.Tensor) -> torch.Tensor:
            return to_tensor(array[index.numpy()])

        kind = v.OutputKind(False, None)
        itemsize = int(np.dtype(array.dtype).itemsize)
    return _rounded_rows(HostRows(read, take, shape[0], shape[1], itemsize), dtype), compute, kind


def _rounded_rows(rows: HostRows, dtype: torch.dtype | None) -> HostRows:
    """``rows`` read through the half precision ``dtype`` asked for, as data in
    memory is converted to it whole: a fit on a memmap and on the same array agree."""
    if dtype is None or compute_dtype(dtype) == dtype:
        return rows
    return rows._replace(read=_rounded(rows.read, dtype), take=_rounded(rows.take, dtype))


def _rounded(reader: Callable[..., torch.Tensor], dtype: torch.dtype) -> Any:
    """``reader`` whose rows are rounded to ``dtype``."""
    return lambda *args: reader(*args).to(dtype)


# ------------------------------------------------------------------ sparse input
# scipy.sparse matrices and arrays (CSR, CSC, COO, ...) and torch sparse
# tensors are read as CSR: rows start:stop are a slice of the stored values,
# turned into a dense chunk only when a pass reaches them. A matrix whose
# dense form fits the memory budget is densified once instead (in-memory fit).

_SPARSE_LAYOUTS = (
    torch.sparse_coo,
    torch.sparse_csr,
    torch.sparse_csc,
    torch.sparse_bsr,
    torch.sparse_bsc,
)


def is_sparse(X: Any) -> bool:
    """Whether ``X`` is a scipy.sparse matrix/array or a torch sparse tensor."""
    if isinstance(X, torch.Tensor):
        return X.layout in _SPARSE_LAYOUTS
    return type(X).__module__.startswith("scipy.sparse")


def stored_share(X: Any) -> float:
    """The share of the elements of a sparse ``X`` that are stored (duplicates
    of a torch COO tensor counted each; an upper bound)."""
    shape = tuple(int(s) for s in X.shape)
    elements = math.prod(shape)
    if elements == 0:
        return 1.0
    if isinstance(X, torch.Tensor):
        values = X._values() if X.layout == torch.sparse_coo else X.values()
        return values.numel() / elements
    return int(X.nnz) / elements


class _CSR(NamedTuple):
    """The rows of a sparse matrix in CSR form, on the CPU, without duplicates."""

    crow: torch.Tensor  # (n + 1,) int64
    col: torch.Tensor  # (nnz,) int64
    values: torch.Tensor  # (nnz,) floating
    n_rows: int
    n_features: int
    kind: v.OutputKind

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` dense: their stored values are one slice,
        scattered in one op (gathered by :meth:`take`: 20,000 x 100, all
        stored, 18 ms against 7 ms)."""
        lo, hi = int(self.crow[start]), int(self.crow[stop])
        out = torch.zeros((stop - start, self.n_features), dtype=self.values.dtype)
        flat = _row_of(self.crow[start : stop + 1]).mul_(self.n_features).add_(self.col[lo:hi])
        out.view(-1).index_put_((flat,), self.values[lo:hi])
        return out

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return dense_rows(self.crow, self.col, self.values, self.n_features, index)


def read_sparse(X: Any, name: str = "X", *, check_finite: bool = True, to_cpu: bool = True) -> _CSR:
    """A scipy or torch sparse ``X`` as :class:`_CSR` rows, checked as
    :func:`~torchkmeans._validation.as_tensor` checks dense data.

    The caller's matrix is never modified (duplicates are summed on a copy).
    ``to_cpu=False`` leaves a torch sparse tensor's components on its device
    (for :func:`~torchkmeans.functional.sparse.sparse_rows`; ``read`` and
    ``take`` need them on the CPU).
    Integer and boolean values become float64 (scipy) or the default float
    dtype (torch), float16 scipy values float32, as for dense input.
    """
    if isinstance(X, torch.Tensor):
        kind = v.OutputKind(True, X.device)
        tensor = X.detach()
        if tensor.ndim != 2 or tensor.dense_dim() != 0:
            raise ValueError(
                f"Expected {name} to be 2-D of shape (n_samples, n_features), got a sparse "
                f"tensor of shape {tuple(tensor.shape)} with {tensor.dense_dim()} dense "
                "dimension(s)."
            )
        if tensor.is_complex():
            raise ValueError(f"Complex data not supported; {name} has dtype {tensor.dtype}.")
        if tensor.layout == torch.sparse_coo:
            tensor = tensor.coalesce()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
            tensor = (tensor.to("cpu") if to_cpu else tensor).to_sparse_csr()
        crow = tensor.crow_indices().to(torch.int64)
        col = tensor.col_indices().to(torch.int64)
        values = tensor.values()
        if not values.is_floating_point():
            values = values.to(torch.get_default_dtype())
    else:
        kind = v.OutputKind(False, None)
        shape = tuple(getattr(X, "shape", ()))
        if len(shape) != 2:
            raise ValueError(
                f"Expected {name} to be 2-D of shape (n_samples, n_features), got a sparse "
                f"matrix of shape {shape}."
            )
        csr = X.tocsr()
        if not csr.has_canonical_format:
            csr = csr.copy()  # sum_duplicates works in place
            csr.sum_duplicates()
        data = csr.data
        if data.dtype.kind == "c":
            raise ValueError(f"Complex data not supported; {name} has dtype {data.dtype}.")
        if data.dtype.kind in "biu":
            data = data.astype(np.float64)
        elif data.dtype.kind != "f":
            raise ValueError(
                f"Expected {name} to hold numbers, got a sparse matrix of dtype {data.dtype}."
            )
        elif data.dtype == np.float16 or data.dtype.itemsize > 8:
            data = data.astype(np.float32 if data.dtype == np.float16 else np.float64)
        elif not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays
            values = torch.from_numpy(np.ascontiguousarray(data))
        crow = torch.from_numpy(csr.indptr.astype(np.int64))
        col = torch.from_numpy(csr.indices.astype(np.int64))
    if check_finite and not v.all_finite(values):
        raise ValueError(f"Input {name} contains NaN or infinity; expected finite values.")
    n, d = (int(s) for s in X.shape)
    _check_csr_indices(crow, col, n, d, name)
    return _CSR(crow, col, values, n, d, kind)


def _check_csr_indices(crow: torch.Tensor, col: torch.Tensor, n: int, d: int, name: str) -> None:
    """The structure of CSR rows: ``crow`` ``(n + 1,)`` rising from 0 to the
    number of stored values, each column index in ``[0, d)``. Neither scipy
    nor torch checks them when the matrix is built from its components, and
    the fused kernel reads and writes through them (an index past ``d``
    wrote into another cluster's sums, or past them)."""
    nnz = int(col.numel())
    ends = crow[[0, -1]].tolist() if crow.numel() else []
    if int(crow.shape[0]) != n + 1 or ends != [0, nnz] or not bool((crow.diff() >= 0).all()):
        raise ValueError(
            f"Expected {name}'s {n + 1} row pointers to rise from 0 to its {nnz} stored "
            f"values, got {int(crow.shape[0])} pointers, first and last {ends}."
        )
    if nnz:
        low, high = (int(bound) for bound in torch.aminmax(col))
        if low < 0 or high >= d:
            raise ValueError(
                f"Expected {name}'s column indices to be in [0, {d}), got indices from "
                f"{low} to {high}."
            )


def densified(X: Any, memory_budget: int | None) -> Any:
    """``X`` itself, or a sparse ``X`` as a dense array (scipy) or tensor (torch,
    on its device) when its dense form takes at most ``memory_budget`` bytes
    (``DEFAULT_MEMORY_BUDGET`` when None). A larger sparse ``X`` is returned
    as it is: :func:`should_stream` streams it, :func:`host_rows` densifies
    one chunk of rows at a time.
    """
    if not is_sparse(X):
        return X
    v.check_memory_budget(memory_budget)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    shape = tuple(int(s) for s in X.shape)
    itemsize = X.element_size() if isinstance(X, torch.Tensor) else np.dtype(X.dtype).itemsize
    if len(shape) != 2 or shape[0] * shape[1] * max(4, itemsize) > budget:
        return X
    rows = read_sparse(X)  # checked, duplicates summed
    if rows.kind.is_torch:
        return rows.read(0, rows.n_rows).to(rows.kind.device)
    # scipy's own loop into numpy's lazily zeroed pages (torch.zeros writes
    # every page: 20,000 x 1,000 float32, 30% stored, 13 ms against 91 ms),
    # in the dtype read_sparse gives.
    dtype = torch.empty(0, dtype=rows.values.dtype, device="cpu").numpy().dtype
    return X.toarray().astype(dtype, copy=False)


# The share of a sparse X that must be stored for it to be fitted dense (see
# dense_when_mostly_stored).
DENSIFIED_SHARE = 0.25


def dense_when_mostly_stored(X: Any, memory_budget: int | None) -> Any:
    """``X`` itself, or a sparse ``X`` that stores at least ``DENSIFIED_SHARE``
    of its elements as its dense form (see :func:`densified`), where that
    takes at most ``memory_budget`` bytes or no more than the sparse fit's
    own copy of the stored values: each value, its int64 column and the
    fused kernel's int32 one (every such float32 ``X``; float64 from 2/5
    stored).

    Lloyd's iterations on dense rows are matrix products on centred rows;
    on the stored values they gather each value (20 iterations, k=8, 2
    threads, 20,000 x 1,000 float32 and float64: 25% stored 0.109 and 0.201 s
    dense against 0.160 and 0.171 s on the stored values, 50% stored 0.138
    and 0.207 s against 0.356 and 0.350 s, all stored 0.121 and 0.225 s
    against 0.658 and 0.703 s), and rows far from the origin, which the
    expansion cannot label, are searched again densified in every
    iteration (20,000 x 100 float32 near 1e4, all stored, k=8: 11-14 s
    against 0.14 s dense). Mini-batch steps likewise (CPU time, one thread,
    k=20: 1% stored TF-IDF 0.59 s on the stored values against 2.05 s
    densified, 50% stored 0.12 s against 0.05 s). An empty ``X`` is
    returned as it is.
    """
    if not is_sparse(X):
        return X
    shape = tuple(int(s) for s in X.shape)
    elements = math.prod(shape)
    share = stored_share(X)
    if len(shape) != 2 or elements == 0 or share < DENSIFIED_SHARE:
        return X
    v.check_memory_budget(memory_budget)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    itemsize = X.element_size() if isinstance(X, torch.Tensor) else np.dtype(X.dtype).itemsize
    copy = round(share * elements) * (max(4, itemsize) + 8 + 4)
    return densified(X, max(budget, copy))


def sparse_input(
    X: Any,
    *,
    device: Any,
    dtype: torch.dtype | None,
    metric: str,
    compute: torch.dtype | None = None,
) -> tuple[SparseRows, v.OutputKind]:
    """A sparse ``X`` (checked by :func:`read_sparse`) as
    :class:`~torchkmeans.functional.sparse.SparseRows` on ``device`` (None:
    where ``X`` is), its values rounded through ``dtype`` (a half precision
    asked for) and computed in ``compute`` (None: ``dtype``'s or ``X``'s,
    half precision in float32). The components of a torch sparse tensor
    stay on its device."""
    csr = read_sparse(X, to_cpu=False)
    values = csr.values
    if dtype is not None:
        values = values.to(dtype)
    if compute is None:
        compute = compute_dtype(values.dtype)
    where = v.resolve_device(device, values.device)
    rows = sparse_rows(
        csr.crow, csr.col, values, csr.n_features, device=where, dtype=compute, metric=metric
    )
    return rows, csr.kind
