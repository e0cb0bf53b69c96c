"""Which code path a device takes: the host's (the CPU) or an accelerator's.

Choices of algorithm that depend only on where the data lives (host checks
versus deferred ones, block sizes, the native kernel, sort versus topk...)
ask :func:`on_host`, looked up on this module at call time, so that the
tests can run the accelerator paths on the CPU (``tests/conftest.py``,
fixture ``accelerator_paths``). Calls into a device's own API (CUDA streams,
pinned memory, matmul precision) look at the device itself.
"""

from __future__ import annotations

import torch

__all__ = ["on_host", "traced", "widest_float"]


def on_host(device: torch.device) -> bool:
    """Whether work on ``device`` takes the host's code paths."""
    return device.type == "cpu"


def traced() -> bool:
    """Whether torch.compile or torch.jit.trace records the caller: neither
    follows a host read or a branch on data, nor the fused kernel's writes."""
    compiling = getattr(torch.compiler, "is_compiling", None)
    if compiling is None:  # pragma: no cover - torch < 2.3
        compiling = torch._dynamo.is_compiling
    return bool(compiling()) or torch.jit.is_tracing()


def widest_float(device: torch.device) -> torch.dtype:
    """The widest floating dtype ``device`` computes in: float64, float32 on
    MPS. Sums, counts and inertia accumulate in it."""
    return torch.float32 if device.type == "mps" else torch.float64
