"""A CUDA device emulated on the CPU, for the tests of the CUDA code paths.

No machine of this project's CI has a GPU. Inside :func:`fake_cuda`,
``torch.cuda.is_available()`` is true and tensors made on or moved to
``"cuda"`` are CPU tensors wrapped in :class:`CudaTensor`, which reports
``device == cuda:0`` and enforces what the real device enforces on the host's
code: no op mixes it with CPU tensors (save 0-d ones, CPU indices and
copies), ``numpy()`` refuses it, a random op on it needs a generator of the
CUDA device; pinned memory, streams and events are stand-ins. A code path
that would raise on a real GPU for one of those reasons raises here too.

Not emulated: numerics (the wrapped tensors compute on the CPU, float32
products without TF32), asynchrony (every copy is complete at once) and
memory. Autograd through wrapped tensors is not supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from torchkmeans.functional import _device, _native, init

CUDA0 = torch.device("cuda", 0)


class CudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> CudaTensor:
        strided = inner.layout == torch.strided
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride() if strided else None,
            storage_offset=inner.storage_offset() if strided else None,
            dtype=inner.dtype,
            layout=inner.layout,
            device=CUDA0,
            requires_grad=False,
        )
        out.inner = inner
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:  # type: ignore[override]
        return f"CudaTensor({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        name = func.overloadpacket.__name__
        mixing_allowed = name in ("copy_", "_to_copy", "index", "index_put_", "_index_put_impl_")
        if not mixing_allowed:
            cpu = [t for t in tensors if not isinstance(t, CudaTensor) and t.dim() > 0]
            if cpu:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, cuda:0 and cpu! (emulated, in {func})"
                )
        if name == "_to_copy" and torch.device(kwargs.get("device", CUDA0)).type == "cpu":
            return func(*unwrap(args), **unwrap(kwargs))
        out = func(*unwrap(args), **unwrap(kwargs))
        # In-place and out= ops hand back their wrapped argument itself.
        by_inner = {id(t.inner): t for t in tensors if isinstance(t, CudaTensor)}
        return tree_map(
            lambda t: by_inner.get(id(t), CudaTensor(t)) if isinstance(t, torch.Tensor) else t,
            out,
        )


def unwrap(tree: Any) -> Any:
    return tree_map(lambda t: t.inner if isinstance(t, CudaTensor) else t, tree)


def _is_cuda(device: Any) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class _Generator(torch.Generator):
    """A CPU generator that reports the device it was made for."""

    def __new__(cls, device: Any = "cpu") -> _Generator:
        generator = super().__new__(cls)
        generator.claimed = torch.device(device)
        return generator

    def __init__(self, device: Any = "cpu") -> None:
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.claimed


# Added to the host address of a wrapped tensor's data: a CPU kernel that
# reads it faults, as it would on a device pointer.
_DEVICE_ADDRESSES = 1 << 56


def _host_only(fn: Any) -> Any:
    """``fn``, a CPU kernel's entry point, refusing CUDA tensors."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(t, CudaTensor) for t in flat):
            raise RuntimeError(f"the CPU kernel {fn.__name__} was given a CUDA tensor (emulated)")
        return fn(*args, **kwargs)

    return checked


# Ops that take CPU tensors along with CUDA ones on a real device.
_MIXING_ALLOWED = frozenset(("copy_", "__setitem__", "__getitem__", "to", "cuda", "cpu"))


def _check_devices(name: str, flat: list) -> None:
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    if not any(isinstance(t, CudaTensor) for t in tensors) or name in _MIXING_ALLOWED:
        return
    if any(not isinstance(t, CudaTensor) and t.dim() > 0 for t in tensors):
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"cuda:0 and cpu! (emulated, in {name})"
        )


class _FakeCudaMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        flat, _ = tree_flatten((args, kwargs))
        on_cuda = any(isinstance(t, CudaTensor) for t in flat)
        if name == "__get__":
            # Properties (device, shape, T...): the wrapper's own metadata, or dispatch.
            return func(*args, **kwargs)
        if name == "numpy" and on_cuda:
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                "the tensor to host memory first. (emulated)"
            )
        if name in ("record_stream", "pin_memory"):
            return args[0] if name == "pin_memory" else None
        if name == "is_pinned":
            return True
        if name in ("to", "cuda") and isinstance(args[0], torch.Tensor):
            return self._to(name, args, kwargs)
        if name == "data_ptr" and isinstance(args[0], CudaTensor):
            # Comparable as a device pointer is, and never a host address.
            return args[0].inner.data_ptr() + _DEVICE_ADDRESSES
        if name == "cpu" and isinstance(args[0], CudaTensor):
            return args[0].inner.clone()
        if name in ("__getitem__", "__setitem__") and not isinstance(args[0], CudaTensor):
            index, _ = tree_flatten(args[1])
            if any(isinstance(i, CudaTensor) for i in index):
                raise RuntimeError(
                    "indices should be either on cpu or on the same device as the indexed "
                    "tensor (cpu) (emulated)"
                )
        if name == "__setitem__" and isinstance(args[0], CudaTensor):
            # Advanced indexing (index_put_) moves only a 0-d value to the device.
            index, _ = tree_flatten(args[1])
            value = args[2]
            if (
                any(isinstance(i, torch.Tensor) for i in index)
                and isinstance(value, torch.Tensor)
                and not isinstance(value, CudaTensor)
                and value.dim() > 0
            ):
                raise RuntimeError(
                    "Expected all tensors to be on the same device, but found at least two "
                    "devices, cuda:0 and cpu! (emulated, in index_put_)"
                )
        _check_devices(name, flat)
        kwargs.pop("pin_memory", None)
        device = kwargs.get("device")
        to_cuda = _is_cuda(device)
        if to_cuda:
            kwargs["device"] = "cpu"
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator):
            wanted = "cuda" if (to_cuda or on_cuda) else "cpu"
            if generator.device.type != wanted:
                raise RuntimeError(
                    f"Expected a '{wanted}' device type for generator but found "
                    f"'{generator.device.type}' (emulated, in {name})"
                )
        if not on_cuda:
            out = func(*args, **kwargs)
            if to_cuda:
                return tree_map(lambda t: _moved(t) if isinstance(t, torch.Tensor) else t, out)
            return out
        # Python bindings take a CUDA device guard, which a CPU-only torch
        # cannot: the call runs on the inner tensors, its outputs are wrapped
        # (in-place and out= ones: their own wrapper).
        by_inner = {id(t.inner): t for t in flat if isinstance(t, CudaTensor)}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*unwrap(args), **unwrap(kwargs))
        if device is not None and not to_cuda:
            return out
        return tree_map(
            lambda t: by_inner.get(id(t), _moved(t)) if isinstance(t, torch.Tensor) else t, out
        )

    @staticmethod
    def _to(name: str, args: tuple, kwargs: dict) -> torch.Tensor:
        tensor = args[0]
        if name == "cuda":
            device, dtype, copy = CUDA0, None, False
        else:
            copy = bool(kwargs.pop("copy", False))
            device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        inner = tensor.inner if isinstance(tensor, CudaTensor) else tensor
        was_cuda = isinstance(tensor, CudaTensor)
        to_cuda = _is_cuda(device) or (device is None and was_cuda)
        with torch._C.DisableTorchFunctionSubclass():
            moved = inner.to(dtype=dtype or inner.dtype)
            if moved is inner and (copy or to_cuda != was_cuda):
                moved = inner.clone()
        if not to_cuda:
            return moved
        if was_cuda and moved is inner:
            return tensor
        return CudaTensor(moved)


def _moved(t: torch.Tensor) -> torch.Tensor:
    return t if isinstance(t, CudaTensor) else CudaTensor(t)


class _Stream(torch.Stream):
    """A stream object torch's argument parsing accepts (record_stream)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stream:
        return super().__new__(cls, device="cpu")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Event:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True


@contextlib.contextmanager
def fake_cuda(free_bytes: int = 64 * 2**30) -> Iterator[None]:
    """Within the block, ``"cuda"`` is the emulated device (see the module)."""
    saved = {}
    patches = {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "get_device_name": lambda device=None: "emulated CUDA device",
        "mem_get_info": lambda device=None: (free_bytes, 2 * free_bytes),
        "synchronize": lambda device=None: None,
        "max_memory_allocated": lambda device=None: 0,
        "memory_allocated": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
        "empty_cache": lambda: None,
        "Stream": _Stream,
        "Event": _Event,
        "current_stream": lambda device=None: _Stream(),
        "stream": lambda stream=None: contextlib.nullcontext(),
        "manual_seed_all": lambda seed: None,
    }
    for name, value in patches.items():
        saved[name] = getattr(torch.cuda, name)
        setattr(torch.cuda, name, value)
    kernels = [(_native, "nearest"), (_native, "sparse_lloyd"), (init, "_kmeans_plusplus_native")]
    saved_kernels = [(owner, name, getattr(owner, name)) for owner, name in kernels]
    for owner, name, fn in saved_kernels:
        setattr(owner, name, _host_only(fn))
    generator, plain = torch.Generator, _device.plain
    torch.Generator = _Generator  # type: ignore[misc]
    # A real CUDA tensor is a plain torch.Tensor, not a subclass.
    _device.plain = lambda t: type(t) is CudaTensor or plain(t)
    try:
        with _FakeCudaMode():
            yield
    finally:
        torch.Generator = generator  # type: ignore[misc]
        _device.plain = plain
        for owner, name, fn in saved_kernels:
            setattr(owner, name, fn)
        for name, value in saved.items():
            setattr(torch.cuda, name, value)
