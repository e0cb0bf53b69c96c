from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# CI runs the same examples every time (reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def accelerator_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code paths of an accelerator (deferred host checks, no native
    kernel, whole-tensor sorts...) on CPU tensors: what a CUDA device runs,
    checked on machines without one. ``TORCHKMEANS_TEST_ACCELERATOR_PATHS=1``
    runs the whole suite so."""
    from torchkmeans.functional import _device

    monkeypatch.setattr(_device, "on_host", lambda device: False)


if os.environ.get("TORCHKMEANS_TEST_ACCELERATOR_PATHS"):
    from torchkmeans.functional import _device

    _device.on_host = lambda device: False

# Copies of a centroid (a repeated init row, reseeding onto duplicate points)
# are found on the CPU only, where it costs no host read (README): their
# tests do not apply to a whole run on the accelerator paths.
# Tests of what the CPU paths alone do (the host's block sizes, say).
on_the_cpu_paths_only = pytest.mark.skipif(
    bool(os.environ.get("TORCHKMEANS_TEST_ACCELERATOR_PATHS")),
    reason="tests a CPU-only path",
)
copies_found_on_the_cpu = pytest.mark.skipif(
    bool(os.environ.get("TORCHKMEANS_TEST_ACCELERATOR_PATHS")),
    reason="copies of a centroid are found on the CPU only",
)


@pytest.fixture
def torch_ops_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fits and labelling through PyTorch ops, never the fused native kernel
    (torchkmeans/functional/_native.py): for tests of those ops' arithmetic."""
    from torchkmeans.functional import _native

    monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)


# PyTorch's float32 matmul precision, per backend (torch >= 2.9).
_PRECISION_SETTINGS = (
    (torch.backends, "fp32_precision"),
    (torch.backends.cuda.matmul, "fp32_precision"),
    (getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"),
)
needs_per_backend_precision = pytest.mark.skipif(
    not all(hasattr(owner, name) for owner, name in _PRECISION_SETTINGS),
    reason="torch < 2.9 has no per-backend float32 matmul precision",
)


@pytest.fixture
def matmul_precision():
    """Restores PyTorch's float32 matmul precision settings after the test."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in _PRECISION_SETTINGS]
    yield
    for owner, name, value in saved:
        setattr(owner, name, value)


@pytest.fixture
def bfloat16_products(matmul_precision):
    """float32 products in bfloat16 for the test: set_float32_matmul_precision
    ("medium") on a CPU with bfloat16 units (AMX), as TF32 under "high" on a
    GPU; skipped where the CPU multiplies float32 in float32 all the same."""
    a = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    torch.set_float32_matmul_precision("medium")
    if float((torch.mm(a, a.T).double() - a.double() @ a.double().T).abs().max()) < 1e-3:
        pytest.skip("this CPU multiplies float32 in float32 under 'medium'")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[CUDA, pytest.mark.cuda]),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """rtol/atol for comparisons at a dtype's precision."""
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-10}
    return {"rtol": 1e-4, "atol": 1e-4}


def tutorial_data() -> np.ndarray:
    from torchkmeans.__main__ import tutorial_data as data

    return data()


def blobs(n: int = 600, d: int = 5, k: int = 4, seed: int = 0, spread: float = 8.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d))
    return centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
