"""The fused CPU assignment kernel (``_assign_kernel.cpp``), built on first use.

A nearest-centroid search written as PyTorch ops materialises a block of
scores and reads it back for the argmin; with few centroids or narrow rows
that second pass costs more than the matrix product itself (100,000 x 32 rows,
k=64: the product and an argmin run at 0.4 of the product's speed), and with
many it still costs 10-20% (200,000 x 384, k=256; 100,000 x 128, k=1024). The
kernel scores a few rows at a time against the centroids in registers,
blocked like a matrix product so the centroids it reads stay in the L1 cache,
and keeps the running minimum there, so no score is ever stored; in a Lloyd
step it also sums each cluster's rows in the same pass. Rows in CSR form
(:func:`sparse_lloyd`) are labelled and summed the same way, in one pass over
their stored values, where a sparse product and then a scatter or second
product read them twice.

The kernel is compiled once per machine with the system's C++ compiler
(``$CXX``, else ``c++``/``g++``/``clang++``; ``-O3 -march=native -fopenmp``)
into ``$TORCHKMEANS_CACHE_DIR`` (default ``~/.cache/torchkmeans``), in about
five seconds: at install time by the package's build hook, or here on first
use if the cache has no library for this machine (``_native_build``). It is
loaded with ctypes and checked against torch on a small problem. Its threads
are OpenMP threads: with the libgomp PyTorch itself loaded, the same ones
PyTorch's ops run on, so the two never compete for cores. Without a compiler, or with
``TORCHKMEANS_NATIVE=0``, every caller uses its PyTorch ops instead, which
give the same labels up to the rounding of exact ties.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from . import _device
from ._native_build import build as _build

__all__ = ["available", "nearest", "parallel", "prefers_native", "sparse_lloyd"]

_LOG = logging.getLogger("torchkmeans")
_ABI_VERSION = 12
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_vector_bytes = 0  # of the loaded kernel's vectors
_tried = False

# Rows of at most this many features take the column layout (lanes hold
# rows), and up to _COLUMN_MAX_FEATURES_FEW_K features with at most
# _COLUMN_FEW_K centroids; others the row layout (lanes hold centroids).
# 100,000 rows, 2 threads, column layout's time over the row layout's: d=2
# 0.3-1.0 (k=4-256), d=8 0.45-0.9, d=12 0.5 (k=4), 0.8 (k=16), 1.0 (k=32),
# 1.25 (k=64); d=16 0.7 (k=4), 1.0 (k=16), 1.2-1.35 (k=32-256).
_COLUMN_MAX_FEATURES = 8
_COLUMN_MAX_FEATURES_FEW_K = 16
_COLUMN_FEW_K = 16
# Few centroids of more than _COLUMN_MAX_FEATURES_FEW_K features take the
# dots layout (lanes hold features): the row layout pads the centroids to 16
# lanes, so there k=2 costs as much as k=16. One thread, dots' time over the
# row layout's (float32; float64 alike): k=1-2 0.4-0.7 for any d > 16; k=3
# 1.35 (d=17), 0.7-0.85 (d=24-32), 0.5-0.7 (d=64-1,000); k=4 1.4-1.8 (d=17),
# 0.8-1.0 (d=32), 0.55-0.85 (d=64-1,000); k=6 1.1-1.7 (d=64-300), 0.85-1.0
# (d=1,000); k=8 1.0-1.6 even at d=1,000.
DOTS_MAX_K = 4
# Few centroids of wide rows take the blocks layout (lanes hold rows, each
# block of L features of L rows transposed in registers, L the lanes): the
# row layout pads k to L lanes, the blocks layout spends k multiply-adds per
# feature of L rows, and its scores are the row layout's, bit for bit. One
# thread, Zen 5, its time over the row layout's:
# - AVX-512 builds: float32 k=3-8, d=24-256 0.30-0.74 (dots, k=3-4:
#   0.57-1.4), d=1,024 0.7-0.8, d=17-20 0.7-1.15; float64 k=5-8, d=32-128
#   0.61-0.75, d=17-24 0.84-1.44, d=160-1,024 0.8-1.23, k=3-4 0.58-0.83
#   (dots 0.52-1.2).
# - AVX2 builds (x86-64-v3), whose row layout has fewer chains of
#   multiply-adds in flight at k <= 8: float32 k=3-8, d=17-1,024 0.13-0.35
#   (dots, k=3: 0.28-0.87); float64 0.27-0.61 (dots, k=3: 0.27-0.70).
# k = 1-2 stay in the dots layout (below the blocks layout's time at d >= 24
# in float32 on both builds). Not measured on 16-byte builds: the row layout.
BLOCKS_MAX_K = 8
_BLOCKS_MIN_K = 3
_BLOCKS_MIN_K_F64 = 5
_BLOCKS_MIN_FEATURES_F32 = 24
_BLOCKS_MIN_FEATURES_F64 = 32
_BLOCKS_MAX_FEATURES_F64 = 128
_DOTS_MIN_FEATURES = {3: 24, 4: 64}
# The row layout scores chunks of rows against panels of centroids kept in
# the L1 cache, each panel's vectors held in registers across a tile of rows.
# Wide rows with many centroids once took the PyTorch path (its product at
# torch.mm's speed plus an argmin), past 1 MB of transposed centroids in
# Lloyd's iterations and 4 MB labelling from scratch; since the kernel holds
# the panel's vectors in registers (0.8x its time) it is the faster one at
# every size measured, up to 32 MB. Zen 5, one thread, the kernel's time over
# the PyTorch path's: Lloyd iterations, d=1,024, k=512 (2 MB) 0.64; d=512,
# k=1,024 (2 MB) 0.59; d=768, k=1,000 (3 MB) 0.47-0.49; d=1,024, k=1,024
# (4 MB) 0.71; d=2,048, k=256 (2 MB) 0.40; d=512, k=4,096 (8 MB) 0.66;
# d=1,024, k=4,096 (16 MB) 0.52; d=2,048, k=4,096 (32 MB) 0.65 (two threads,
# the machine shared: 0.37-0.53); labelling from scratch (nearest_centroids),
# d=1,024, k=2,048-4,096 (8-16 MB) 0.42-0.51, d=2,048, k=4,096 0.54.
_ROWS_MAX_CENTROID_BYTES = 32 * 1024 * 1024
_LABELLING_MAX_CENTROID_BYTES = 32 * 1024 * 1024
_ROWS_ANY_K_MAX_FEATURES = 256
# Below this many multiply-adds a call runs on the calling thread alone.
_PARALLEL_MIN_WORK = 1 << 18


def _load(path: Path) -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        _LOG.debug("torchkmeans: loading %s failed: %s", path, error)
        return None
    if library.tk_abi_version() != _ABI_VERSION:
        return None
    pointer, integer, small = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for function in (library.tk_assign_f32, library.tk_assign_f64):
        function.restype = integer
        function.argtypes = [pointer, integer, integer, integer, pointer, pointer, integer, small]
        function.argtypes += [small, small, pointer, pointer, pointer, pointer, pointer, pointer]
        function.argtypes += [pointer, pointer]
    for function in (library.tk_sparse_lloyd_f32, library.tk_sparse_lloyd_f64):
        function.restype = None
        function.argtypes = [pointer, pointer, small, pointer, integer, integer, pointer, integer]
        function.argtypes += [small, small, pointer, pointer, pointer, pointer, pointer, pointer]
    for function in (library.tk_seed_scores_f32, library.tk_seed_scores_f64):
        function.restype = None
        function.argtypes = [pointer, integer, integer, integer, pointer, pointer, pointer, integer]
        function.argtypes += [pointer, pointer, small, small, pointer, integer, pointer]
    return library


def _library_or_none() -> ctypes.CDLL | None:
    global _library, _tried, _vector_bytes
    if _tried:
        return _library
    with _lock:
        if not _tried:
            enabled = os.environ.get("TORCHKMEANS_NATIVE", "1").strip().lower()
            if enabled not in ("0", "false", "no", "off") and sys.platform != "win32":
                path = _build()
                _library = _load(path) if path is not None else None
                if _library is not None:
                    _vector_bytes = int(_library.tk_vector_bytes())
                if _library is not None and not _self_test():
                    _LOG.warning("torchkmeans: the assignment kernel failed its self-test; unused")
                    _library = None
                    _vector_bytes = 0
            _tried = True
    return _library


def available() -> bool:
    """Whether the fused kernel is built and loaded (building it on first call)."""
    return _library_or_none() is not None


def parallel() -> bool:
    """Whether the built kernel splits its work over threads (built with OpenMP)."""
    library = _library_or_none()
    return library is not None and bool(library.tk_openmp())


def _self_test() -> bool:
    """Labels of a small problem against torch's, in every layout and dtype."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(101, 5, generator=generator, dtype=dtype, device="cpu")
        centroids = torch.randn(37, 5, generator=generator, dtype=dtype, device="cpu")
        expected = torch.cdist(x, centroids).argmin(1)
        for columns, differences in ((True, False), (False, False), (True, True)):
            labels = torch.empty(101, dtype=torch.int64, device="cpu")
            nearest(x, centroids, labels, columns=columns, differences=differences, threads=1)
            if not torch.equal(labels, expected):
                return False
        few = centroids[:DOTS_MAX_K]
        nearest(x, few, labels, columns=False, dots=True, threads=1)
        if not torch.equal(labels, torch.cdist(x, few).argmin(1)):
            return False
        few = centroids[:BLOCKS_MAX_K]
        nearest(x, few, labels, columns=False, blocks=True, threads=1)
        if not torch.equal(labels, torch.cdist(x, few).argmin(1)):
            return False
        # The CSR step on the same rows, every value stored.
        crow = torch.arange(0, 101 * 5 + 1, 5, device="cpu")
        col = torch.arange(5, device="cpu").repeat(101)
        distances = torch.empty(101, dtype=dtype, device="cpu")
        totals = torch.empty((37, 6), dtype=torch.float64, device="cpu")
        norms = x.square().sum(1)
        for columns in (col, col.to(torch.int32)):
            sparse_lloyd(
                crow, columns, x.reshape(-1), 5, centroids, norms, labels, distances, totals=totals
            )
            if not torch.equal(labels, expected):
                return False
    return True


def _columns(d: int, k: int) -> bool:
    """Whether the kernel scores rows of d features against k centroids in the
    column layout (see the constants above)."""
    return d <= _COLUMN_MAX_FEATURES or (d <= _COLUMN_MAX_FEATURES_FEW_K and k <= _COLUMN_FEW_K)


def _dots(d: int, k: int) -> bool:
    """Whether the kernel scores rows of d features against k centroids in the
    dots layout rather than the row layout (neither takes the column layout)."""
    return k <= 2 or (k <= DOTS_MAX_K and d >= _DOTS_MIN_FEATURES[k])


def _blocks(d: int, k: int, dtype: torch.dtype) -> bool:
    """Whether the kernel scores rows of d features (not in the column
    layout) against k centroids in the blocks layout (see the constants
    above)."""
    if not _BLOCKS_MIN_K <= k <= BLOCKS_MAX_K:
        return False
    if _vector_bytes == 32:
        return True
    if _vector_bytes != 64:
        return False
    if dtype == torch.float32:
        return d >= _BLOCKS_MIN_FEATURES_F32
    return k >= _BLOCKS_MIN_K_F64 and _BLOCKS_MIN_FEATURES_F64 <= d <= _BLOCKS_MAX_FEATURES_F64


def readable(x: torch.Tensor) -> bool:
    """Whether the kernel may read ``x``'s memory: a plain float32/float64
    tensor on the host. Tensors that have no memory of their own (torch.func's
    wrappers under grad/vmap, fake tensors of torch.compile, other subclasses)
    raised "Cannot access data pointer" on data_ptr()."""
    if not _device.on_host(x.device) or x.dtype not in (torch.float32, torch.float64):
        return False
    return _device.plain(x)


def seed_scores(dtype: torch.dtype) -> Callable[..., None] | None:
    """The kernel's k-means++ scoring function for ``dtype`` (float32 or
    float64), or None where the kernel is not built."""
    if dtype not in (torch.float32, torch.float64):
        return None
    library = _library_or_none()
    if library is None:
        return None
    return library.tk_seed_scores_f32 if dtype == torch.float32 else library.tk_seed_scores_f64


def vector_bytes() -> int:
    """The width in bytes of the built kernel's vectors (0 where it is not built)."""
    library = _library_or_none()
    return 0 if library is None else int(library.tk_vector_bytes())


def prefers_native(x: torch.Tensor, k: int, *, within_lloyd: bool = True) -> bool:
    """Whether :func:`nearest` beats PyTorch ops on rows like ``x`` (2-D) with k
    centroids: in Lloyd's iterations, or (``within_lloyd=False``) labelling rows
    from scratch."""
    if not readable(x):
        return False
    if x.ndim != 2 or x.stride(-1) != 1 or x.shape[1] == 0 or k < 1:
        return False
    d = x.shape[1]
    padded = (k + 15) // 16 * 16
    limit = _ROWS_MAX_CENTROID_BYTES if within_lloyd else _LABELLING_MAX_CENTROID_BYTES
    fits = _columns(d, k) or d <= _ROWS_ANY_K_MAX_FEATURES or d * padded * x.element_size() <= limit
    if not fits or not available():
        return False
    # A kernel built without OpenMP runs on one thread: only where PyTorch's
    # ops would too, or the work is small.
    assert _library is not None
    return bool(
        _library.tk_openmp()
        or torch.get_num_threads() == 1
        or x.shape[0] * k * d < _PARALLEL_MIN_WORK
    )


def _operand(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype`` and contiguous; itself when it is already (a
    Lloyd iteration of a small fit passes its operands so, and ``.to`` costs
    as much as the check even then)."""
    if tensor.dtype == dtype and tensor.is_contiguous():
        return tensor
    return tensor.to(dtype).contiguous()


def nearest(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    *,
    cosine: bool = False,
    offset: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    minima: torch.Tensor | None = None,
    distances: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
    columns: bool | None = None,
    dots: bool | None = None,
    blocks: bool | None = None,
    differences: bool = False,
    threads: int | None = None,
    given: torch.Tensor | None = None,
    certain: bool = False,
) -> tuple[float, int]:
    """Label each row of ``x - offset`` ``(n, d)`` with its nearest centroid ``(k, d)``.

    The score of a row and a centroid c is ``|c|^2 - 2 x.c`` (euclidean: the
    squared distance less ``|x|^2``) or ``-x.c`` (``cosine``, unit rows).
    Writes ``labels`` ``(n,)`` int64, and when given the lowest scores into
    ``minima`` ``(n,)``, each row's distance to its centroid (squared
    euclidean, or ``1 - cos``; from differences, as ``exact_distances``)
    into ``distances`` ``(n,)``, and per cluster the (weighted) sum of its rows
    and of their weights into ``totals`` ``(k, d+1)`` float64. ``x`` is a CPU
    float32/float64 tensor with contiguous rows (any row stride); the other
    inputs are converted to its dtype, the outputs must be contiguous.
    ``columns``, ``dots`` (with ``columns`` false: lanes hold features, for
    at most ``DOTS_MAX_K`` centroids), ``blocks`` (with ``columns`` and
    ``dots`` false: lanes hold rows, a block of features transposed at a
    time, for at most ``BLOCKS_MAX_K`` centroids; the row layout's scores)
    and ``threads`` override the layout and thread count the kernel would
    pick (tests). ``differences`` (euclidean, column layout
    only) scores squared distances from differences instead: exact
    wherever the rows lie, so ``minima`` are the distances and no centring
    is needed; it costs one more op per term, cheap on narrow rows.
    ``given`` ``(k, d)``, the centroids before centring (``centroids`` being
    ``given - offset``): the ``distances`` are then measured between the
    rows of ``x`` and these, as exact as from uncentred data, where the
    centring's rounding of rows far from the offset would otherwise blur
    the distances of rows near their centroid.
    ``certain`` (euclidean, the row layout) makes each label the nearest
    centroid whatever the rounding of the scores: the kernel keeps a row's
    scores, and where centroids other than the lowest-scoring one score
    within the scores' rounding bound of it, the row's distances to those
    (from differences, as ``distances``) decide. ``centroids`` must then be
    ``given - offset`` rounded once (or ``offset`` None), and ``minima``
    remain the lowest scores.

    Returns the weighted sum of the lowest scores, and the number of rows
    whose label differs from ``previous`` (0 without it). Call only where
    :func:`available` is true.
    """
    library = _library
    assert library is not None
    # The kernel reads and writes through raw pointers: a tensor elsewhere
    # (made on torch's default device, say) would crash the process.
    for name, tensor in (
        ("x", x),
        ("centroids", centroids),
        ("offset", offset),
        ("weights", weights),
        ("previous", previous),
    ):
        if tensor is not None and not tensor.is_cpu:
            raise ValueError(f"Expected {name} on the CPU, got a tensor on {tensor.device}.")
    n, d = x.shape
    k = centroids.shape[0]
    # The kernel reads raw pointers: inputs in x's dtype and contiguous (no
    # copy when they already are), outputs checked rather than converted.
    dtype = x.dtype
    centroids = _operand(centroids, dtype)
    offset = None if offset is None else _operand(offset, dtype)
    weights = None if weights is None else _operand(weights, dtype)
    previous = None if previous is None else _operand(previous, torch.int64)
    given = None if given is None else _operand(given, dtype)
    if given is not None and given.shape != (k, d):
        raise ValueError(f"Expected given to be of shape {(k, d)}, got {tuple(given.shape)}.")
    for name, out, dtype in (
        ("labels", labels, torch.int64),
        ("minima", minima, x.dtype),
        ("distances", distances, x.dtype),
        ("totals", totals, torch.float64),
    ):
        if out is not None and (out.dtype != dtype or not out.is_contiguous() or not out.is_cpu):
            raise ValueError(f"Expected {name} to be a contiguous {dtype} tensor on the CPU.")
    if certain:
        if cosine or differences or columns or dots or blocks:
            raise ValueError(
                "Expected certain labels only with euclidean scores in the row layout."
            )
        columns, dots, blocks = False, False, False
    if columns is None:
        columns = _columns(d, k)
    if differences and (cosine or not columns):
        raise ValueError("Expected differences only with euclidean scores in the column layout.")
    if blocks is None:
        blocks = not columns and not dots and _blocks(d, k, x.dtype)
    if dots is None:
        dots = not columns and not blocks and _dots(d, k)
    if dots and (columns or k > DOTS_MAX_K):
        raise ValueError(f"Expected the dots layout only for at most {DOTS_MAX_K} centroids.")
    if blocks and (columns or dots or k > BLOCKS_MAX_K):
        raise ValueError(f"Expected the blocks layout only for at most {BLOCKS_MAX_K} centroids.")
    if threads is None:
        threads = torch.get_num_threads() if n * k * d >= _PARALLEL_MIN_WORK else 1
    function = library.tk_assign_f32 if x.dtype == torch.float32 else library.tk_assign_f64
    score_sum = ctypes.c_double()
    arguments = (
        x.data_ptr(),
        x.stride(0),
        n,
        d,
        None if offset is None else offset.data_ptr(),
        centroids.data_ptr(),
        k,
        int(cosine),
        4 if certain else 2 if differences else 3 if dots else 5 if blocks else int(columns),
        threads,
        None if weights is None else weights.data_ptr(),
        None if previous is None else previous.data_ptr(),
        labels.data_ptr(),
        None if minima is None else minima.data_ptr(),
        None if distances is None else distances.data_ptr(),
        None if totals is None else totals.data_ptr(),
        ctypes.byref(score_sum),
        None if given is None else given.data_ptr(),
    )
    if torch.autograd._profiler_enabled():
        # The kernel is no aten op: named for torch.profiler (benchmarks/).
        with torch.profiler.record_function("torchkmeans::fused_assign"):
            changed = function(*arguments)
    else:
        changed = function(*arguments)
    return score_sum.value, int(changed)


def sparse_lloyd(
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    n_features: int,
    centroids: torch.Tensor,
    sq_norms: torch.Tensor | None,
    labels: torch.Tensor,
    distances: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    totals: torch.Tensor | None = None,
    threads: int | None = None,
) -> float:
    """Lloyd's step on CSR rows in one pass over their stored values.

    Rows ``crow`` ``(n + 1,)``, ``col`` ``(nnz,)`` (int32 or int64: int32
    columns, 4 bytes read per stored value rather than 8, for a fit that
    converts them once) and ``values``
    ``(nnz,)`` (float32/float64) of ``n_features`` columns, with squared norms
    ``sq_norms`` ``(n,)`` (euclidean), or None for cosine scores of unit rows.
    Writes into ``labels`` ``(n,)`` int64 the nearest of ``centroids``
    ``(k, n_features)`` (by ``|c|^2 - 2 x.c``, ties to the lowest index, as
    scikit-learn's sparse loop; cosine: ``1 - x.c`` clamped to [0, 2]), into
    ``distances`` ``(n,)`` each row's distance to it (``|x|^2 + |c|^2 - 2 x.c``
    clamped at 0; cosine ``1 - x.c``), and when given into ``totals``
    ``(k, n_features + 1)`` float64 (overwritten, not added to) per cluster
    the sum of its rows times ``weights`` ``(n,)`` float64 and of their
    weights. Returns the weighted
    sum of the distances. ``threads`` overrides the thread count (tests).
    Call only where :func:`available` is true.
    """
    library = _library
    assert library is not None
    dtype = values.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Expected values of float32 or float64, got {dtype}.")
    n = int(crow.shape[0]) - 1
    k = int(centroids.shape[0])
    crow = _operand(crow, torch.int64)
    col = _operand(col, torch.int32 if col.dtype == torch.int32 else torch.int64)
    values = _operand(values, dtype)
    centroids = _operand(centroids, dtype)
    sq_norms = None if sq_norms is None else _operand(sq_norms, dtype)
    weights = None if weights is None else _operand(weights, torch.float64)
    for name, tensor in (
        ("crow", crow),
        ("col", col),
        ("values", values),
        ("centroids", centroids),
        ("weights", weights),
    ):
        if tensor is not None and not tensor.is_cpu:
            raise ValueError(f"Expected {name} on the CPU, got a tensor on {tensor.device}.")
    if tuple(centroids.shape) != (k, n_features):
        raise ValueError(
            f"Expected centroids of shape (k, {n_features}), got {tuple(centroids.shape)}."
        )
    for name, out, out_dtype, shape in (
        ("labels", labels, torch.int64, (n,)),
        ("distances", distances, dtype, (n,)),
        ("totals", totals, torch.float64, (k, n_features + 1)),
    ):
        if out is not None and (
            out.dtype != out_dtype
            or not out.is_contiguous()
            or not out.is_cpu
            or tuple(out.shape) != shape
        ):
            raise ValueError(
                f"Expected {name} to be a contiguous {out_dtype} tensor of shape {shape} "
                "on the CPU."
            )
    if threads is None:
        work = int(values.numel()) * k
        threads = torch.get_num_threads() if work >= _PARALLEL_MIN_WORK else 1
    function = (
        library.tk_sparse_lloyd_f32 if dtype == torch.float32 else library.tk_sparse_lloyd_f64
    )
    score_sum = ctypes.c_double()
    arguments = (
        crow.data_ptr(),
        col.data_ptr(),
        int(col.dtype == torch.int32),
        values.data_ptr(),
        n,
        n_features,
        centroids.data_ptr(),
        k,
        int(sq_norms is None),
        threads,
        None if sq_norms is None else sq_norms.data_ptr(),
        None if weights is None else weights.data_ptr(),
        labels.data_ptr(),
        distances.data_ptr(),
        None if totals is None else totals.data_ptr(),
        ctypes.byref(score_sum),
    )
    if torch.autograd._profiler_enabled():
        with torch.profiler.record_function("torchkmeans::sparse_lloyd"):
            function(*arguments)
    else:
        function(*arguments)
    return score_sum.value
