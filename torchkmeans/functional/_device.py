"""Which code path a device takes: the host's (the CPU) or an accelerator's.

Choices of algorithm that depend only on where the data lives (host checks
versus deferred ones, block sizes, the native kernel, sort versus topk...)
ask :func:`on_host`, looked up on this module at call time, so that the
tests can run the accelerator paths on the CPU (``tests/conftest.py``,
fixture ``accelerator_paths``). Calls into a device's own API (CUDA streams,
pinned memory, matmul precision) look at the device itself.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from typing import Any, Callable, TypeVar

import torch

__all__ = ["empty", "full_precision", "on_host", "plain", "reused", "traced", "widest_float"]

_F = TypeVar("_F", bound=Callable[..., Any])

# numpy asks Linux for transparent huge pages on host arrays of 4 MiB and
# more (madvise); torch does not, and the first write to a large tensor then
# faults in every 4 KiB page: filling a fresh 100,000 x 50 float64 tensor
# took 15 ms against 3 ms for a numpy array, half of transform's time there.
_HUGE_PAGE = 2 * 1024 * 1024
_HUGE_MIN_BYTES = 4 * 1024 * 1024
_MADV_HUGEPAGE = 14


def _load_madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - no C library symbols
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def on_host(device: torch.device) -> bool:
    """Whether work on ``device`` takes the host's code paths."""
    return device.type == "cpu"


def empty(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, backed by huge pages where the host gives them, as numpy's arrays are.

    For large outputs written once (``transform``'s distances): only a hint
    to the kernel, which leaves the memory as it was where it declines.
    """
    out = torch.empty(shape, dtype=dtype, device=device)
    size = out.numel() * out.element_size()
    if _madvise is not None and device.type == "cpu" and size >= _HUGE_MIN_BYTES and not traced():
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        stop = (out.data_ptr() + size) // _HUGE_PAGE * _HUGE_PAGE
        if stop > start:
            _madvise(start, stop - start, _MADV_HUGEPAGE)
    return out


def compiling() -> bool:
    """Whether torch.compile traces the caller."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    if is_compiling is None:  # pragma: no cover - torch < 2.3
        is_compiling = torch._dynamo.is_compiling
    return bool(is_compiling())


# Host temporaries that every call of a function needs again (a block of
# rows' centred copy, of scores) are kept for the next call, per thread, up to
# this size each. Fresh ones were fresh pages in every call: once a call's
# temporaries together exceed twice the largest block the C allocator has
# returned to Linux, it returns them too (glibc trims the top of its heap),
# and each call faults them in again: transform of 1,000 x 256 float32 rows
# with k=64 took 3.4 ms against scikit-learn's 1.1 ms, 970 page faults a call.
_REUSED_MAX_BYTES = 4 * 1024 * 1024


class _Reused(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}


_reused = _Reused()


def reused(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised host tensor of ``shape`` for temporaries of the call
    site ``name``, in memory kept for its next call on this thread.

    The tensor must not outlive the call (nor leave the caller): the next
    call on the thread writes over it. Larger than ``_REUSED_MAX_BYTES``, or
    traced, it is a fresh ``torch.empty``. Not for tensors autograd records.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _REUSED_MAX_BYTES or traced():
        return torch.empty(shape, dtype=dtype, device="cpu")
    raw = _reused.buffers.get(name)
    if raw is None or raw.numel() < nbytes:
        # A normal tensor even when first asked for in inference mode, where
        # torch.empty makes an inference tensor: later calls outside it could
        # not write into that.
        with torch.inference_mode(False):
            raw = torch.empty(max(nbytes, 64), dtype=torch.uint8, device="cpu")
        _reused.buffers[name] = raw
    return raw[:nbytes].view(dtype).view(shape)


def traced() -> bool:
    """Whether torch.compile or torch.jit.trace records the caller: neither
    follows a host read or a branch on data, nor the fused kernel's writes."""
    return compiling() or torch.jit.is_tracing()


def plain(t: torch.Tensor) -> bool:
    """Whether ``t`` is a tensor with memory of its own, whose ``data_ptr()``
    may be read: not one of torch.func's wrappers (grad, vmap), a fake
    tensor of torch.compile or another subclass ("Cannot access data
    pointer")."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor(t)
    return type(t) in (torch.Tensor, torch.nn.Parameter) and not wrapped


def widest_float(device: torch.device) -> torch.dtype:
    """The widest floating dtype ``device`` computes in: float64, float32 on
    MPS. Sums, counts and inertia accumulate in it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return device_type == "cuda" and bool(torch.is_autocast_enabled())


def full_precision(fn: _F) -> _F:
    """``fn`` with autocast off on the device of its first tensor argument.

    Under ``torch.autocast`` the products and dot products of the distances
    (``addmm``, ``baddbmm``, ``linalg.vecdot``...) ran in bfloat16/float16
    whatever the data's dtype: a KMeans fit in a model's autocast region
    seeded from rounded distances, and on the accelerator paths labelled
    915 of 2,000 rows differently. Wraps every function that computes them.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if device is None or not _autocast_enabled(device.type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type=device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
