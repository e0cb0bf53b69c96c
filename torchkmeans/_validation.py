"""Conversion of user input to tensors and back, and argument checks.

Everything that faces the user funnels through here so that every estimator
gives the same error messages ("Expected X to be ..., got ...").
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = {
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}


class OutputKind(NamedTuple):
    """How results are handed back: numpy arrays, or tensors on a device."""

    is_torch: bool
    device: torch.device | None

    def out(self, tensor: torch.Tensor) -> Any:
        """Convert ``tensor`` to the caller's kind (numpy array or tensor)."""
        if self.is_torch:
            return tensor if self.device is None else tensor.to(self.device)
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return tensor.detach().cpu().numpy()


def user_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` that names the first frame outside
    this package: the user's line, however deep the call (a fixed level
    pointed past the user's script, at "sys:1", from ``MiniBatchKMeans.fit``)."""
    package = __file__.rsplit("_validation.py", 1)[0]
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def resolve_device(device: str | torch.device | None, data_device: torch.device) -> torch.device:
    """Resolve the ``device`` argument: None -> the data's, "auto" -> CUDA if present."""
    if device is None:
        return data_device
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Expected device to be None, 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Expected device={device!r} to be available, but this torch has no CUDA device; "
            "use device='auto' to fall back to the CPU."
        )
    if resolved.type == "meta":
        raise ValueError(
            f"Expected device to be one that holds data, got {device!r}: meta tensors have "
            "no values to cluster."
        )
    if resolved.type != "cpu":
        # A backend this torch was not built with (device='mps' on Linux) or a
        # device index beyond the machine's would fail inside torch's copy.
        try:
            torch.empty(0, device=resolved)
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(
                f"Expected device={device!r} to be available, but this torch cannot use "
                f"it ({str(exc).splitlines()[0]}); use device='auto' to pick one that is."
            ) from exc
    return resolved


def resolve_dtype(dtype: str | torch.dtype | np.dtype | type | None) -> torch.dtype | None:
    """Resolve the ``dtype`` argument to a floating torch dtype (or None)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        resolved = _DTYPE_NAMES[dtype]
    else:
        try:
            resolved = _DTYPE_NAMES.get(np.dtype(dtype).name)  # type: ignore[arg-type]
        except TypeError:
            resolved = None
    if resolved not in _FLOAT_DTYPES:
        raise ValueError(
            "Expected dtype to be None or one of float16, bfloat16, float32, float64, "
            f"got {dtype!r}."
        )
    return resolved


def as_tensor(
    data: Any,
    name: str = "X",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    ndim: int = 2,
    check_finite: bool = True,
    shape: str | None = None,
    strided: bool = False,
) -> tuple[torch.Tensor, OutputKind]:
    """Convert array-like ``data`` to a floating tensor without modifying it.

    Returns the tensor (which may share memory with ``data``: callers must not
    write into it) and the :class:`OutputKind` to convert results back with.
    numpy, lists and pandas frames give numpy results; tensors give tensors on
    their own device. Integer and boolean input becomes float64 (numpy) or the
    default float dtype (torch), as scikit-learn and PyTorch do. ``shape``
    names the expected 2-D shape in errors (default ``(n_samples, n_features)``).
    ``strided``: a numpy array (or frame) that is not C-contiguous is wrapped
    as it is, as a tensor is, for callers that copy it anyway (see
    :func:`numeric_array`).
    """
    if isinstance(data, torch.Tensor):
        check_dense(data, name)
        kind = OutputKind(True, data.device)
        tensor = data.detach()
        if tensor.is_complex():
            raise ValueError(f"Complex data not supported; {name} has dtype {tensor.dtype}.")
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
    else:
        kind = OutputKind(False, None)
        array = numeric_array(data, name, shape or "(n_samples, n_features)", strided=strided)
        with warnings.catch_warnings():
            # Read-only arrays (memmaps, broadcasts) are shared, not copied:
            # torch warns that they are not writable, and nothing writes to them.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
    if tensor.ndim != ndim:
        hint = tensor.ndim == 1 and ndim == 2 and shape is None
        if shape is None:
            shape = "(n_samples, n_features)" if ndim == 2 else "(batch, n_samples, n_features)"
        if tensor.ndim == 0:
            raise ValueError(
                f"Expected {name} to be {ndim}-D of shape {shape}, got a scalar ({data!r})."
            )
        raise ValueError(
            f"Expected {name} to be {ndim}-D of shape {shape}, got shape {tuple(tensor.shape)}."
            + (
                " Reshape your data with X.reshape(-1, 1) (one feature) or "
                "X.reshape(1, -1) (one sample)."
                if hint
                else ""
            )
        )
    target_device = resolve_device(device, tensor.device)
    source = tensor
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(device=target_device, dtype=dtype)
    else:
        tensor = tensor.to(device=target_device)
    if check_finite and not all_finite(tensor):
        raise not_finite(name, tensor, source)
    return tensor, kind


def not_finite(name: str, converted: torch.Tensor, source: torch.Tensor) -> ValueError:
    """The error for ``converted``, which is not finite, made from ``source``.

    A narrowing cast (float64 rows for float32 centres) can overflow where
    ``source`` is finite: said so, as the infinities it made would turn
    centres and distances into NaN; else ``source`` holds NaN or infinity.
    """
    if converted.dtype != source.dtype and all_finite(source):
        target, origin = (str(t).removeprefix("torch.") for t in (converted.dtype, source.dtype))
        return ValueError(
            f"Input {name} holds values beyond the range of {target} (converted from "
            f"{origin}); expected values that are finite in {target}."
        )
    return ValueError(f"Input {name} contains NaN or infinity; expected finite values.")


def check_dense(tensor: torch.Tensor, name: str) -> None:
    """Refuse a sparse tensor (COO, CSR...): the kernels need strided memory;
    and a meta tensor, which has no values."""
    if tensor.layout != torch.strided:
        raise TypeError(
            f"Expected {name} to be a dense array or tensor, got a sparse tensor "
            f"({tensor.layout}); convert it with {name}.to_dense()."
        )
    if tensor.is_meta:
        raise ValueError(f"Expected {name} to hold values, got a tensor on the meta device.")


def check_not_complex(tensor: torch.Tensor, name: str) -> None:
    """Refuse complex weights: casting them to a real dtype drops the imaginary part."""
    if tensor.is_complex():
        raise TypeError(f"Expected {name} to hold real numbers, got dtype {tensor.dtype}.")


def distances_overflow(name: str, dtype: torch.dtype) -> ValueError:
    """The error for finite data whose squared distances are not finite in ``dtype``."""
    target = str(dtype).removeprefix("torch.")
    remedy = "rescale it" if dtype == torch.float64 else "compute in float64 or rescale it"
    return ValueError(
        f"Squared distances between the rows of {name} overflow {target}; expected data "
        f"whose squared distances are finite in {target}: {remedy}."
    )


@contextlib.contextmanager
def overflow_of_X(dtype: torch.dtype) -> Iterator[None]:
    """:func:`distances_overflow` of the functional core's ``x``, raised about
    the estimator's ``X`` (the argument the caller passed)."""
    try:
        yield
    except ValueError as exc:
        if str(exc) == str(distances_overflow("x", dtype)):
            raise distances_overflow("X", dtype) from None
        raise


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of ``tensor`` is finite (True when it is empty).

    One sum first, as scikit-learn does: it is finite only when every element
    is (NaN and infinities propagate), and costs one read of the data instead
    of element-wise masks (100,000 x 64 float32: 0.7 ms against 16 ms). Only
    a sum that is not finite, which large finite values can also give by
    overflowing, is checked element by element.
    """
    if not tensor.numel() or bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def numeric_array(
    data: Any, name: str, shape: str = "(n_samples, n_features)", *, strided: bool = False
) -> np.ndarray:
    """``data`` as a contiguous native-endian float32/float64 numpy array (a view if it is
    one); ``shape`` names the expected shape in errors.

    ``strided`` keeps a 2-D view that is not C-contiguous (a Fortran-ordered
    array, a pandas frame's block, every other row) when torch can wrap its
    strides: for a fit, whose centred copy of the data reads any strides, a
    C-ordered copy first had doubled its peak memory (2.1x the data against
    1.1x).
    """
    if hasattr(data, "toarray") or type(data).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"Expected {name} to be a dense array or tensor, got a sparse matrix "
            f"({type(data).__name__}); convert it with {name}.toarray()."
        )
    if data is None:
        raise TypeError(
            f"Expected {name} to be an array-like or tensor of shape {shape}, got None."
        )
    if hasattr(data, "to_numpy") and not isinstance(data, np.ndarray):
        data = data.to_numpy()
    try:
        array = np.asarray(data)
    except ValueError as exc:
        raise ValueError(
            f"Expected {name} to be a rectangular array-like of numbers (rows of equal "
            f"length), got one numpy cannot convert: {exc}"
        ) from exc
    if array.dtype.kind == "c":
        raise ValueError(f"Complex data not supported; {name} has dtype {array.dtype}.")
    if array.dtype.kind == "O":
        try:
            array = _object_to_float(array)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"Expected {name} to hold numbers, got an object array that could not "
                f"be converted to float: {exc}"
            ) from exc
    elif array.dtype.kind in "biu":
        array = array.astype(np.float64)
    elif array.dtype.kind in "SU":
        # Numbers read as text (np.loadtxt(dtype=str), a column of strings):
        # scikit-learn's KMeans converts them to float, as an object array is.
        try:
            array = array.astype(np.float64)
        except ValueError as exc:
            raise ValueError(
                f"Expected {name} to hold numbers, got an array of dtype {array.dtype} that "
                f"could not be converted to float: {exc}"
            ) from exc
    elif array.dtype.kind != "f":
        raise ValueError(f"Expected {name} to hold numbers, got an array of dtype {array.dtype}.")
    if array.dtype == np.float16 or array.dtype.itemsize > 8:
        array = array.astype(np.float32 if array.dtype == np.float16 else np.float64)
    elif not array.dtype.isnative:
        # Big-endian data (FITS files, other machines): torch cannot wrap those bytes.
        array = array.astype(array.dtype.newbyteorder("="))
    if strided and _wrappable_strides(array):
        return array
    # ascontiguousarray makes a 0-d array 1-D: a scalar would then be
    # reported as shape (1,) instead of as a scalar.
    if array.ndim == 0:
        return array
    array = np.ascontiguousarray(array)
    if any(stride < 0 for stride in array.strides):
        # numpy calls a view C-contiguous whatever the stride of a dimension
        # of length 1 (X[::-1][:1]), and returns it as it is; torch refuses a
        # negative stride.
        array = array.copy()
    return array


def _wrappable_strides(array: np.ndarray) -> bool:
    """Whether ``torch.from_numpy`` takes this 2-D array's strides as they are
    (it refuses negative ones, ``X[::-1]``; unaligned bytes are copied too)."""
    return (
        array.ndim == 2
        and array.flags.aligned
        and all(stride >= 0 and stride % array.itemsize == 0 for stride in array.strides)
    )


def _object_to_float(array: np.ndarray) -> np.ndarray:
    """An object array as float64, pandas' missing values (``pd.NA``) as NaN.

    ``pd.NA`` refuses ``float()``; a column holding it should get the same
    "contains NaN" error as one holding NaN. pandas is only consulted when the
    plain conversion fails and pandas is already loaded (its data came in).
    """
    try:
        return array.astype(np.float64)
    except TypeError:
        pandas = sys.modules.get("pandas")
        if pandas is None:
            raise
        missing = pandas.isna(array)
        if not missing.any():
            raise
        return np.where(missing, np.nan, array).astype(np.float64)


def check_n_clusters(n_clusters: Any) -> int:
    """Validate ``n_clusters`` (an integer >= 1)."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral):
        raise TypeError(f"Expected n_clusters to be an int, got {n_clusters!r}.")
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} should be >= 1.")
    return int(n_clusters)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer argument that must be >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} to be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}={value} should be >= {minimum}.")
    return int(value)


def check_memory_budget(memory_budget: Any) -> None:
    """Validate ``memory_budget``: None, or a number of bytes >= 1."""
    if memory_budget is not None:
        check_positive_int(memory_budget, "memory_budget")


def check_nonnegative_float(value: Any, name: str) -> float:
    """Validate a real argument that must be >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} to be a real number, got {value!r}.")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value} should be a finite number >= 0.")
    return float(value)


def check_flag(value: Any, name: str) -> bool:
    """Validate a bool argument (numpy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected {name} to be a bool, got {type(value).__name__}.")
    return bool(value)


def check_verbose(value: Any) -> int:
    """Validate ``verbose``: a bool or an int >= 0, as scikit-learn accepts."""
    if not isinstance(value, (bool, np.bool_, numbers.Integral)):
        raise TypeError(f"Expected verbose to be a bool or an int, got {value!r}.")
    if value < 0:
        raise ValueError(f"verbose={value} should be >= 0.")
    return int(value)


def check_metric(metric: Any) -> str:
    """Validate ``metric`` ("euclidean" or "cosine")."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"Expected metric to be 'euclidean' or 'cosine', got {metric!r}.")
    return str(metric)


def check_sample_weight(
    sample_weight: Any,
    n_samples: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    positive_sum: bool = True,
) -> torch.Tensor | None:
    """Validate ``sample_weight``: None, a scalar, or n_samples non-negative finite numbers.

    ``positive_sum=False``: the weights of a shard, whose sum is checked over all ranks.
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        weights = torch.full((n_samples,), float(sample_weight), device=device, dtype=dtype)
    else:
        if isinstance(sample_weight, torch.Tensor):
            check_dense(sample_weight, "sample_weight")
            check_not_complex(sample_weight, "sample_weight")
            weights = sample_weight.detach().to(device=device, dtype=dtype)
        else:
            array = np.asarray(sample_weight)
            if array.dtype.kind == "O":
                # As X: object columns of numbers (pandas), missing values as NaN.
                try:
                    array = _object_to_float(array)
                except (TypeError, ValueError) as exc:
                    raise TypeError(
                        "Expected sample_weight to hold numbers, got an object array that "
                        f"could not be converted to float: {exc}"
                    ) from exc
            if array.dtype.kind not in "biuf":
                raise TypeError(f"Expected sample_weight to hold numbers, got dtype {array.dtype}.")
            if not array.dtype.isnative:
                # Big-endian weights, as numeric_array converts X: torch cannot wrap them.
                array = array.astype(array.dtype.newbyteorder("="))
            # A C-ordered copy: torch cannot read negative strides (w[::-1]).
            weights = torch.tensor(array.copy(), dtype=dtype, device=device)
        if weights.shape != (n_samples,):
            raise ValueError(
                f"Expected sample_weight to be of shape ({n_samples},), "
                f"got shape {tuple(weights.shape)}."
            )
    check_weight_values(weights, positive_sum=positive_sum)
    return weights


def check_weight_values(weights: torch.Tensor, *, positive_sum: bool = True) -> None:
    """Check weights ``(n,)`` or ``(b, n)``: finite, non-negative, a positive and
    finite sum per problem."""
    if weights.numel() and not bool(torch.isfinite(weights.sum(-1)).all()):
        # One sum per problem, as all_finite: elements are read only when it is not finite.
        if not bool(torch.isfinite(weights).all()):
            raise ValueError("Input sample_weight contains NaN or infinity.")
        raise ValueError(
            f"Expected sample_weight to have a finite sum, got weights whose sum overflows "
            f"{str(weights.dtype).removeprefix('torch.')}: rescale them."
        )
    if bool((weights < 0).any()):
        raise ValueError("Expected sample_weight to be non-negative, got negative values.")
    if positive_sum and not bool((weights > 0).any(-1).all()):
        if weights.ndim == 1:
            raise ValueError("Expected sample_weight to have a positive sum, got all weights zero.")
        problem = int((~(weights > 0).any(-1)).nonzero()[0, 0])
        raise ValueError(
            "Expected sample_weight to have a positive sum for every problem, "
            f"got all weights zero in problem {problem}."
        )


def make_generator(random_state: Any, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` from ``random_state``.

    Accepts None (a seed drawn from numpy's global random state, as
    scikit-learn: ``np.random.seed`` makes it repeatable), an int, a
    ``numpy.random.RandomState`` or ``Generator`` (a seed is drawn from it)
    or a ``torch.Generator``: one for another device (a CPU generator for
    CUDA data, or one of cuda:0 for cuda:1) seeds one on ``device``, as
    torch draws there from that device's generators alone.
    """
    if isinstance(random_state, torch.Generator):
        own = random_state.device
        if own.type == device.type and (device.index is None or own.index in (None, device.index)):
            return random_state
        # torch.randint(..., generator=<CPU generator>, device="cuda") raises
        # "Expected a 'cuda' device type for generator but found 'cpu'".
        seed = int(
            torch.randint(
                0,
                np.iinfo(np.int64).max,
                (1,),
                generator=random_state,
                device=random_state.device,
            )
        )
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if not 0 <= random_state < 2**64:
            # torch seeds are unsigned 64-bit integers.
            raise ValueError(f"random_state={random_state} should be >= 0 and < 2**64.")
        seed = int(random_state)
    elif random_state is None or isinstance(random_state, np.random.RandomState):
        # None is numpy's global RandomState, as scikit-learn's check_random_state
        # (fresh entropy per call had ignored np.random.seed).
        rng = np.random.mtrand._rand if random_state is None else random_state
        seed = int(rng.randint(np.iinfo(np.int32).max))
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(np.iinfo(np.int64).max))
    else:
        raise TypeError(
            "Expected random_state to be None, an int, a numpy RandomState/Generator "
            f"or a torch.Generator, got {random_state!r}."
        )
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def check_init(init: Any) -> None:
    """Validate ``init``: "k-means++", "random", an array-like of centroids or a callable."""
    if isinstance(init, str):
        if init not in ("k-means++", "random"):
            raise ValueError(
                "Expected init to be 'k-means++', 'random', an array of shape "
                f"(n_clusters, n_features) or a callable, got {init!r}."
            )
    elif (
        not callable(init)
        and not hasattr(init, "__array__")
        and not isinstance(init, (list, tuple, torch.Tensor))
    ):
        raise TypeError(
            "Expected init to be 'k-means++', 'random', an array of shape "
            f"(n_clusters, n_features) or a callable, got {type(init).__name__}."
        )


def feature_names(data: Any) -> np.ndarray | None:
    """Column names of a data frame when all are strings (object array), else None.

    scikit-learn's rule: names are recorded only when every column name is a
    string; a mix of strings and other names is refused.

    Examples
    --------
    >>> class Frame:
    ...     columns = ["a", "b"]
    >>> feature_names(Frame()).tolist(), feature_names(np.zeros((2, 2)))
    (['a', 'b'], None)
    """
    columns = getattr(data, "columns", None)
    if columns is None or isinstance(data, (np.ndarray, torch.Tensor)):
        return None
    names = np.asarray(list(columns), dtype=object)
    if names.ndim != 1 or names.size == 0:
        return None
    types = sorted({type(name).__qualname__ for name in names})
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {types} as feature name / column name types; convert "
            "them all to strings (X.columns = X.columns.astype(str)) or to non-strings."
        )
    return names if types == ["str"] else None


def check_feature_names(fitted: np.ndarray | None, data: Any, estimator: str) -> None:
    """Compare the column names of ``data`` with those seen in fit, as scikit-learn does.

    Different names (or order) raise ``ValueError``; names on only one side warn.
    """
    names = feature_names(data)
    if fitted is None and names is None:
        return
    if fitted is None:
        warnings.warn(
            f"X has feature names, but {estimator} was fitted without feature names",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return
    if names is None:
        warnings.warn(
            f"X does not have valid feature names, but {estimator} was fitted with feature names",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return
    if len(fitted) == len(names) and bool(np.all(fitted == names)):
        return
    message = "The feature names should match those that were passed during fit.\n"
    unseen = sorted(set(names) - set(fitted))
    missing = sorted(set(fitted) - set(names))

    def listed(values: list[str]) -> str:
        shown = [f"- {value}\n" for value in values[:5]]
        return "".join(shown) + ("- ...\n" if len(values) > 5 else "")

    if unseen:
        message += "Feature names unseen at fit time:\n" + listed(unseen)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + listed(missing)
    if not unseen and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def is_batch_stream(X: Any) -> bool:
    """Whether ``X`` is an iterable of batches (a DataLoader, a generator)
    rather than one array-like.

    Examples
    --------
    >>> is_batch_stream(iter([np.zeros((2, 3))])), is_batch_stream(np.zeros((2, 3)))
    (True, False)
    """
    # A memoryview is a buffer numpy reads as an array (iterating over one of
    # several dimensions raises NotImplementedError).
    if isinstance(X, (np.ndarray, torch.Tensor, list, tuple, str, bytes, dict, memoryview)):
        return False
    if hasattr(X, "__array__") or hasattr(X, "to_numpy") or hasattr(X, "toarray"):
        return False
    return hasattr(X, "__iter__")


# ---------------------------------------------------------------- functional API
# The functional layer takes tensors only: no conversion, only checks of what
# was given. Each helper returns the tensor detached: clustering is not
# differentiable, and the kernels write into buffers with out= and in-place
# ops, which autograd refuses for tensors that require grad.


def check_data(x: Any, name: str = "x", *, rows: str = "n") -> torch.Tensor:
    """``x`` ``(rows, d)`` or ``(b, rows, d)``: a floating tensor, returned detached."""
    if not isinstance(x, torch.Tensor):
        # The estimators take arrays and frames; a user of the functional API
        # who has one needs to know how to pass it.
        raise TypeError(
            f"Expected {name} to be a torch.Tensor, got {type(x).__name__} (torch.as_tensor "
            "converts it; the KMeans estimator takes arrays as they are)."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"Expected {name} to be a floating-point tensor, got dtype {x.dtype} "
            f"({name}.float() converts it)."
        )
    check_dense(x, name)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"Expected {name} to be 2-D ({rows}, d) or 3-D (b, {rows}, d), "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[-1] == 0:
        # Without features every distance is 0: the kernels size their blocks by d.
        raise ValueError(
            f"Expected {name} to have at least one feature, got shape {tuple(x.shape)}."
        )
    return x.detach()


def check_centroids(centroids: Any, x: torch.Tensor, name: str = "centroids") -> torch.Tensor:
    """``centroids`` ``(k, d)`` or ``(b, k, d)`` for checked data ``x``, returned detached.

    At least one centroid, ``x``'s number of features, and a batch size of 1
    or that of ``x`` (a 2-D ``x`` is shared by any number of problems).
    """
    centroids = check_data(centroids, name, rows="k")
    shape = tuple(centroids.shape)
    if centroids.shape[-2] == 0:
        raise ValueError(f"Expected {name} to hold at least one centroid, got shape {shape}.")
    if centroids.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"Expected {name} to have {x.shape[-1]} features (as x), got shape {shape}."
        )
    bx = x.shape[0] if x.ndim == 3 else 1
    if centroids.ndim == 3 and centroids.shape[0] not in (1, bx) and bx != 1:
        raise ValueError(f"Expected {name} to have batch size 1 or {bx} (as x), got shape {shape}.")
    return centroids


def check_weight_tensor(
    sample_weight: Any,
    n_samples: int,
    n_problems: int = 1,
    *,
    values: bool = True,
    positive_sum: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """``sample_weight`` None, ``(n,)``, or ``(b, n)`` for b problems, returned detached.

    ``values=False`` checks the shape only: the values cost a host
    synchronisation, which a step inside a training loop should not pay.
    ``positive_sum=False`` lets every weight be zero (seeding from a subsample).
    ``dtype``: the one the weights are computed in, where their values (and
    sum) are checked, as the estimators check them after conversion.
    """
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, torch.Tensor):
        raise TypeError(
            f"Expected sample_weight to be a torch.Tensor or None, "
            f"got {type(sample_weight).__name__}."
        )
    check_dense(sample_weight, "sample_weight")
    check_not_complex(sample_weight, "sample_weight")
    shape = tuple(sample_weight.shape)
    if shape not in ((n_samples,), (1, n_samples), (n_problems, n_samples)):
        expected = f"({n_samples},)" + (
            f" or ({n_problems}, {n_samples})" if n_problems > 1 else ""
        )
        raise ValueError(f"Expected sample_weight to be of shape {expected}, got shape {shape}.")
    weights = sample_weight.detach()
    if values:
        computed = weights if dtype is None else weights.to(dtype)
        check_weight_values(computed, positive_sum=positive_sum)
    return weights
