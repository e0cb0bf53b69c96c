from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import settings

# CI runs the same examples every time (reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


# TORCHKMEANS_TEST_FAKE_CUDA=1 runs the tests marked cuda (`-m cuda`) on a
# CUDA device emulated on the CPU (tests/fake_cuda.py): what can be checked
# of the CUDA paths (devices of tensors and generators, numpy conversions,
# streams) without a GPU.
FAKE_CUDA = bool(os.environ.get("TORCHKMEANS_TEST_FAKE_CUDA"))
if FAKE_CUDA:
    torch.cuda.is_available = lambda: True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not FAKE_CUDA:
        return
    # The other tests would take the emulated device for a real one (device="auto").
    skip = pytest.mark.skip(reason="TORCHKMEANS_TEST_FAKE_CUDA runs the cuda-marked tests only")
    for item in items:
        if item.get_closest_marker("cuda") is None:
            item.add_marker(skip)


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


@pytest.fixture
def torch_defaults_changed() -> Iterator[Callable[[], contextlib.AbstractContextManager[None]]]:
    """A context manager that changes PyTorch's global defaults as training
    scripts do: ``set_default_device`` ("meta" here, where a script sets
    "cuda": any tensor made without ``device=`` lands on it and breaks the
    fit) and ``set_default_dtype(torch.float64)``. Data on the CPU (numpy or
    tensors) is computed there and gives the same results all the same
    (DESIGN.md: ``device=None`` means where the data is). Restored after the
    test whatever happens."""
    dtype = torch.get_default_dtype()

    @contextlib.contextmanager
    def changed() -> Iterator[None]:
        torch.set_default_device("meta")
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_device(None)
            torch.set_default_dtype(dtype)

    yield changed
    torch.set_default_device(None)
    torch.set_default_dtype(dtype)


def assert_identical(got: Any, expected: Any) -> None:
    """Equal values of the same kind: tensors of the same dtype on the same
    device, arrays of the same dtype, equal scalars (NaN equal to NaN),
    through tuples, lists and dicts."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_identical(got[key], expected[key])
    elif isinstance(expected, (tuple, list)):
        assert type(got) is type(expected) and len(got) == len(expected)
        for a, b in zip(got, expected):
            assert_identical(a, b)
    elif isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor)
        assert (got.device, got.dtype) == (expected.device, expected.dtype)
        assert got.requires_grad == expected.requires_grad
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    elif isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    else:
        assert type(got) is type(expected)
        assert got == expected or (got != got and expected != expected)


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


@pytest.fixture(autouse=True)
def _emulated_cuda(request: pytest.FixtureRequest) -> Iterator[None]:
    if FAKE_CUDA and request.node.get_closest_marker("cuda") is not None:
        from fake_cuda import fake_cuda

        with fake_cuda():
            yield
    else:
        yield
