"""Host data that estimators stream instead of loading: memmaps, and arrays too big for the GPU."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import _validation as v
from .functional.distances import compute_dtype
from .functional.streaming import HostRows

__all__ = ["host_rows", "should_stream"]

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

    Always for a ``numpy.memmap``; for a numpy array or CPU tensor only when
    the computation runs on a GPU that could not hold what it needs of it:
    a copy, labels and distances; with ``lloyd`` (Lloyd's iterations of
    ``KMeans.fit`` and ``elbow``) also the centred copy with a column of ones,
    squared norms and the previous iteration's labels, and for each of the
    ``problems`` run as one batch (restarts) its own labels and distances;
    and ``outputs`` values a row that the result holds (``transform``'s
    distances to the k centres).
    """
    if isinstance(X, np.memmap):
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
    if dtype is not None and compute_dtype(dtype) != dtype:
        # Rows pass through the half precision asked for, as data in memory is
        # converted to it whole: a fit on a memmap and on the same array agree.
        read, take = _rounded(read, dtype), _rounded(take, dtype)
    return HostRows(read, take, shape[0], shape[1], itemsize), compute, kind


def _rounded(reader: Callable[..., torch.Tensor], dtype: torch.dtype) -> Any:
    """``reader`` whose rows are rounded to ``dtype``."""
    return lambda *args: reader(*args).to(dtype)
