"""VectorQuantizer: a k-means codebook that trains inside a model.

The codebook is not a parameter: it follows the exponential moving average
(EMA) of the cluster sums and counts of the training batches, i.e. one
online k-means step per forward. The encoder learns through the
straight-through estimator and a commitment loss.

Everything that can change lives in buffers registered in ``__init__``
(``codebook``, ``ema_sums``, ``ema_counts``, ``initialized``), always in
float32, so ``.to(device)``, ``.half()`` and ``state_dict`` behave. After the
first training forward (the one-time k-means initialisation, which
synchronises with the host) a forward has no host synchronisation and no
data-dependent Python branch, so ``torch.compile(fullgraph=True)`` can trace
it. Under ``torch.distributed`` the batch statistics of all ranks are summed
with one ``all_reduce`` per step, so every rank keeps the same codebook.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

try:  # private (torch 2.0 to 2.13 at least): imported here, not where torch.compile traces
    from torch._functorch.pyfunctorch import coerce_cinterpreter
except ImportError:  # a later torch: the package imports, torch.func transforms are refused
    coerce_cinterpreter = None

from . import _validation as v
from .distributed import SharesProcessGroup
from .functional import _device, _native, kmeans, nearest_centroids, scatter_sums
from .functional.distances import DEFAULT_MEMORY_BUDGET, compute_dtype, unit_rows
from .functional.updates import _scatter_sums, accumulate, with_ones_column

__all__ = ["QuantizerOutput", "VectorQuantizer"]

_METRICS = ("euclidean", "cosine")


class QuantizerOutput(NamedTuple):
    """Result of :meth:`VectorQuantizer.forward`."""

    quantized: torch.Tensor
    """The nearest codes, with ``x``'s shape and dtype; the gradient passes straight to ``x``."""
    codes: torch.Tensor
    """int64 code indices, ``x.shape[:-1]`` (``heads == 1``) or ``(*x.shape[:-1], heads)``
    (``x``'s shape without dimension ``channel_dim``)."""
    loss: torch.Tensor
    """float32 scalar ``commitment_weight * mean((x - quantized.detach())**2)`` (x unit: cosine),
    the mean over the vectors that ``mask`` keeps."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    # numbers.Integral, as the estimators: numpy integers (from a config or
    # an array) are ints too.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} to be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"Expected {name} to be >= {minimum}, got {value}.")
    return int(value)


def _check_float(name: str, value: Any, accept: Callable[[float], bool], expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} to be a float, got {type(value).__name__}.")
    value = float(value)
    # NaN fails every comparison, so it is rejected here as well.
    if not accept(value):
        raise ValueError(f"Expected {name} to be {expected}, got {value}.")
    return value


def _distributed(process_group: Any) -> tuple[bool, int, int]:
    """``(active, rank in group, group size)``, evaluated at call time.

    Looked up on every forward rather than cached at construction: a model is
    usually built before ``init_process_group`` is called.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False, 0, 1
    return True, dist.get_rank(process_group), dist.get_world_size(process_group)


def _group_source(process_group: Any) -> int:
    """Global rank of the group's first member (the rank that seeds the codebook)."""
    if process_group is None:
        return 0
    return torch.distributed.get_global_rank(process_group, 0)


def _gather_rows(rows: torch.Tensor, process_group: Any, world: int) -> torch.Tensor:
    """The rows ``(h, n_r, d)`` of every rank of the group, in rank order along n, on every rank."""
    dist = torch.distributed
    size = torch.tensor([rows.shape[1]], device=rows.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=process_group)
    counts = [int(n) for n in sizes]
    # all_gather takes tensors of one shape: batches padded to the longest.
    padded = rows.new_zeros(rows.shape[0], max(1, *counts), rows.shape[2])
    padded[:, : rows.shape[1]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=process_group)
    return torch.cat([part[:, :n] for part, n in zip(parts, counts)], dim=1)


def _laplace_smoothed(counts: torch.Tensor, eps: float) -> torch.Tensor:
    """Counts ``(h, k)`` with additive smoothing that keeps their total.

    ``(n_i + eps) / (n + k * eps) * n``: no code divides by zero, not even
    one whose count has decayed to nothing.
    """
    total = counts.sum(-1, keepdim=True)
    return (counts + eps) / (total + counts.shape[-1] * eps) * total


def _recomputing() -> bool:
    """Whether the autograd engine runs the caller: a forward that
    torch.utils.checkpoint recomputes during backward (either variant)."""
    if _device.traced():
        return False
    # A private call (torch 2.x): without it, a recomputed forward steps again.
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def _interpreter() -> Any:
    """The innermost of torch.func's transforms that runs the caller (an
    interpreter with ``key()``, ``level()`` and ``lower()``), or None.

    ``isinstance``, not ``is None``: torch.compile follows this test, and
    took the stack's ``None`` for an interpreter.
    """
    functorch = torch._C._functorch
    interpreter = functorch.peek_interpreter_stack()
    if not isinstance(interpreter, functorch.CInterpreter):
        return None
    if coerce_cinterpreter is None:
        raise RuntimeError(
            "VectorQuantizer under torch.func transforms (vmap, grad, jvp...) needs "
            "torch._functorch.pyfunctorch.coerce_cinterpreter, which this torch "
            f"({torch.__version__}) lacks; call it outside the transform."
        )
    return coerce_cinterpreter(interpreter)


def _differentiates(interpreter: Any) -> bool:
    """Whether ``interpreter`` (of :func:`_interpreter`) is one of
    torch.func's gradient transforms (grad, vjp, jacrev, jvp, jacfwd...)."""
    kinds = torch._C._functorch.TransformType
    return interpreter is not None and interpreter.key() in (kinds.Grad, kinds.Jvp)


def _nearest_codes(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """Index of the nearest code of each row: ``x`` ``(h, n, d)``, codebook ``(h, k, d)``.

    On the CPU, euclidean codes come from
    :func:`~torchkmeans.functional.nearest_centroids`, which checks the labels
    that the rounding of ``|x|^2 - 2 x.c + |c|^2`` could have decided (inputs
    in groups at 0 and 1e4: up to 71% of the codes were not the nearest): the
    nearest code wherever the inputs lie, and faster than the product below.
    The check reads a count on the host, free on the CPU; on an accelerator
    (a forward has no host synchronisation), under torch.compile and in a
    trace (torch.jit.trace) the codes come from the expansion, on rows and
    codes centred on the codebook's mean, the nearer of its two best measured
    from differences: exact unless inputs lie much farther from that mean
    than from their codes. For unit vectors (cosine) the nearest code has
    the largest dot product.

    Those products are scored in blocks of rows whose ``(h, rows, k)`` scores
    fit ``DEFAULT_MEMORY_BUDGET`` (all rows at once took ``4 n k`` bytes:
    8 GiB for 262,144 vectors against 8,192 codes).
    """
    # A trace (torch.jit.trace, TorchScript ONNX export) does not record the
    # kernel's writes: the traced codes would be an uninitialised buffer.
    # Under vmap the check's host reads and random draws are refused.
    host = _device.on_host(x.device) and not _device.traced()
    if metric == "euclidean" and host and _device.plain(x) and _device.plain(codebook):
        heads, k = x.shape[0], codebook.shape[1]
        if heads > 1 and _native.prefers_native(x[0], k, within_lloyd=False):
            # Head by head through the fused kernel: batched, the heads took
            # PyTorch's products and the label check, 5-12x the time (4,096
            # rows, 2-8 heads of 2-32 numbers, 32-512 codes: 3.9-12.9 ms
            # against 0.3-1.8 ms).
            return torch.stack([nearest_centroids(x[h], codebook[h]).labels for h in range(heads)])
        return nearest_centroids(x, codebook).labels
    heads, n, _ = x.shape
    rows = max(1, DEFAULT_MEMORY_BUDGET // (x.element_size() * heads * codebook.shape[1]))
    if n <= rows:
        return _block_codes(x, codebook, metric)
    blocks = [_block_codes(x[:, i : i + rows], codebook, metric) for i in range(0, n, rows)]
    return torch.cat(blocks, dim=1)


def _codes_scale(centred: torch.Tensor) -> torch.Tensor:
    """A power of two per head ``(h, 1, 1)`` that brings the largest entry of
    the centred codebook ``(h, k, d)`` into [0.5, 1), on the device (no host
    read): rows and codes are scored scaled by it, an exact change. float32
    codes near 2^64 had squared norms of inf (511 of 512 codes wrong), near
    1e-30 of 0 (483 of 512 wrong)."""
    largest = torch.linalg.vector_norm(centred, ord=math.inf, dim=(1, 2), keepdim=True)
    # Bounded so that the factor itself is finite (codes of subnormal spread).
    bound = int(math.log2(torch.finfo(centred.dtype).max)) - 1
    # Not in place: vmap has no batching rule for clamp_ (a warning of a
    # "performance drop" at every call).
    exponent = torch.frexp(largest).exponent.clamp(-bound, bound)
    return torch.ldexp(torch.ones_like(largest), exponent.neg_())


def _commitment_loss(
    x: torch.Tensor, target: torch.Tensor, weight: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight * mean((x - target)**2)`` of non-empty ``x``, on the device.
    Given ``keep`` (bool, ``x.shape[:-1]``), the mean is over the kept
    vectors only (0 if there are none).

    The squares are summed scaled by ``p**2``, where ``p`` is a power of
    two within a factor 2 of ``sqrt(weight / n)``: their sum is then about the loss
    itself, finite wherever the loss is (float32 inputs near 2^60 have
    squares near 2^120, whose sum overflowed: the loss was inf), and
    scaling by a power of two is exact (inputs scaled by ``2^e`` scale the
    loss by exactly ``2^(2e)``). The gradient and second derivative are
    the mean's.
    """
    if keep is None:
        ratio = torch.full((), weight, dtype=x.dtype, device=x.device) / x.numel()
    else:
        # where, not a product: a padding vector may hold NaN or infinity.
        kept = keep.unsqueeze(-1)
        x, target = torch.where(kept, x, 0.0), torch.where(kept, target, 0.0)
        ratio = weight / (keep.sum().clamp_min(1) * x.shape[-1]).to(x.dtype)
    scale = torch.ldexp(torch.ones_like(ratio), torch.frexp(ratio).exponent // 2)
    squares = nn.functional.mse_loss(x * scale, target * scale, reduction="sum")
    return squares * (ratio / scale.square())


def _block_codes(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """:func:`_nearest_codes` from products, on one block of rows ``(h, rows, d)``,
    scored scaled by a power of two (:func:`_codes_scale`)."""
    if metric == "cosine":
        return torch.bmm(x, codebook.transpose(1, 2)).argmax(-1)
    offset = codebook.mean(1, keepdim=True)  # (h, 1, d)
    centred = codebook - offset
    scale = _codes_scale(centred)
    centred = centred.mul_(scale)
    code_sq = centred.square().sum(-1).unsqueeze(1)  # (h, 1, k)
    # (x - offset) * scale in one op: both products exact, one rounding.
    rows = torch.addcmul(offset * -scale, x, scale)
    scores = torch.baddbmm(code_sq, rows, centred.transpose(1, 2), alpha=-2.0)
    if codebook.shape[1] == 1:
        return scores.argmin(-1)
    # Of the expansion's two best codes, the nearer measured from differences
    # (two passes over the rows, no host read): the ties its rounding decides
    # wrongly are mostly between those two. Gaussian rows against 512 codes
    # with products in bfloat16 (set_float32_matmul_precision("medium") on a
    # CPU with AMX; TF32 under "high" on a GPU rounds less): 35 of 8,192 codes
    # wrong, none after; groups 1e3 apart: 1,079 wrong, 194 after.
    candidates = scores.topk(2, dim=-1, largest=False).indices  # (h, n, 2)
    distances = []
    negated = codebook * -scale
    for j in range(2):
        index = candidates[..., j : j + 1].expand(-1, -1, x.shape[-1])
        difference = torch.addcmul(negated.gather(1, index), x, scale)  # (x - c) * scale
        distances.append(torch.linalg.vecdot(difference, difference))
    return candidates[..., 0].where(distances[0] <= distances[1], candidates[..., 1])


def _perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp`` of the entropy of the code distribution given by counts ``(h, k)``."""
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return entropy.exp()


class VectorQuantizer(SharesProcessGroup, nn.Module):
    """Vector quantization layer whose codebook is learned by online k-means.

    Each vector of the input's last dimension is replaced by its nearest
    code. In training mode the codebook follows the EMA of the cluster sums
    and counts (Laplace-smoothed counts, no gradient to the codebook), is
    initialised by k-means on the first training batch, and codes whose EMA
    count drops below ``dead_code_threshold`` times the mean count of the
    codes are re-seeded from vectors of the current batch. In ``eval()``
    mode the codebook is frozen.

    Parameters
    ----------
    num_codes : int
        Codes per codebook (k).
    dim : int
        Size of one vector (of one head's part of the last dimension).
    metric : {"euclidean", "cosine"}
        ``"cosine"`` quantizes the direction: inputs and codes are unit
        vectors and ``quantized`` holds unit codes. Rows of zeros (padding)
        get a code but neither initialise nor move one.
    decay : float
        EMA decay in ``[0, 1)``; each step moves the statistics by
        ``1 - decay`` towards the batch's.
    eps : float
        Laplace smoothing of the counts, > 0.
    commitment_weight : float
        Weight of the commitment loss, >= 0.
    kmeans_init : bool
        Initialise the codebook with k-means (k-means++ seeding, then
        ``kmeans_iters`` Lloyd iterations) on the first training batch that
        holds at least ``num_codes`` vectors (under torch.distributed, the
        batches of all ranks together; smaller batches are collected
        until there are enough; meanwhile they are quantized with the initial
        codes, which stay unchanged: the first rank's on every rank, under
        torch.distributed). Otherwise codes start as standard normal draws.
    kmeans_iters : int
        Lloyd iterations of that initialisation.
    dead_code_threshold : float
        A code whose EMA count (the smoothed number of batch vectors it
        receives per step, summed over ranks) falls below this fraction of
        the codes' mean EMA count (the batch's vectors per code) is replaced
        by a random vector of the current batch, with that many vectors'
        worth of statistics. Relative, so one value suits any batch and
        codebook size: an absolute count of 1 re-seeded about 450 of 512
        codes at every step of batches of 128 vectors, and an autoencoder on
        digits reconstructed 1.4x worse with it (the example, 512 codes of
        16 numbers) than with any fraction from 0.01 to 0.2. 0 disables
        re-seeding, which there collapsed the codebook to a few codes; the
        fraction is below 1 (at 1, codes of equal counts would all be dead).
    heads : int
        Independent codebooks: the last dimension of ``x`` is ``heads * dim``
        and head h quantizes its slice ``[h*dim:(h+1)*dim]`` with codebook h.
    channel_dim : int
        The dimension of ``x`` that holds the vectors' entries: -1 (the
        last), or 1 for channels-first feature maps such as a convolution's
        ``(batch, heads * dim, height, width)``, which are quantized as
        they are (no permute needed) and give ``quantized`` of their shape
        and ``codes`` of ``(batch, height, width)`` (``(..., heads)``
        when ``heads > 1``); ``mask`` then has the shape of the codes of one
        head, and :meth:`lookup` puts the entries back in that dimension.
    process_group : torch.distributed.ProcessGroup, optional
        Group whose ranks share the codebook (the default group if None).
        Used only when ``torch.distributed`` is initialised at forward time.
        ``copy.deepcopy`` shares the group; a pickle (``torch.save`` of the
        module) stores None in its place (the state_dict never holds it).

    Attributes
    ----------
    codebook : Tensor
        ``(heads, num_codes, dim)`` float32 codes. Codes copied in before the
        first training forward of a quantizer with ``kmeans_init=False`` are
        the ones training starts from.
    ema_sums : Tensor
        ``(heads, num_codes, dim)`` float32 EMA of the per-code sums.
    ema_counts : Tensor
        ``(heads, num_codes)`` float32 EMA of the per-code counts.
    initialized : Tensor
        bool scalar, True once the codebook has been initialised. Until
        then, while batches are being collected for the k-means
        initialisation, ``state_dict`` holds them too (``init_samples`` and
        ``init_collected``, of the same shapes at any time), so that a
        checkpoint resumes the collection.
    init_samples : Tensor
        ``(heads, num_codes, dim)`` float32, the vectors collected so far
        for the k-means initialisation, then zeros. Read-only.
    init_collected : Tensor
        int64 ``(2,)``, the number of vectors and batches collected so far. Read-only.

    Raises
    ------
    TypeError, ValueError
        If an argument has the wrong type or is out of range.

    Notes
    -----
    Randomness (k-means++ seeding, random codes, the choice of re-seeding
    vectors) comes from torch's global generator: ``torch.manual_seed``
    makes a run reproducible. Under ``torch.distributed`` the first rank of
    the group seeds the codebook (by k-means on the first batches of all
    ranks, gathered) and picks the re-seeding vectors; its
    choices reach the others through the same collectives as the
    statistics, so no two ranks ever disagree.

    The first training forward runs the k-means initialisation on the host
    side: under ``torch.compile`` it runs eagerly, outside the graph (a graph
    break, so ``fullgraph=True`` needs a model that has done one training
    step, or whose state was loaded from a trained one), and gives eager's
    codebook. Inductor draws the random numbers of its graphs (the vectors
    that re-seed dead codes) from its own generator: set
    ``torch._inductor.config.fallback_random = True`` for eager's draws.

    The buffers stay float32 when the module is cast with
    ``.half()``/``.bfloat16()``/``.double()``; codes are chosen in float32
    for half-precision inputs and in float64 for float64 ones.

    Under ``torch.func.grad`` (vjp, jacrev, jvp...) a forward is the same
    as outside it, EMA step and initialisation included, and so under
    ``torch.compile`` around such a transform (``fullgraph=True`` after the
    init step): the step runs on the rows' values below the gradient
    transforms. Under ``torch.func.vmap`` the quantizer must be in
    ``eval()`` mode (one codebook cannot take a step per batch element),
    but for an ensemble: the buffers of initialised quantizers stacked by
    ``torch.func.stack_module_state`` and vmapped over with
    ``functional_call`` (``randomness="different"`` where dead codes are
    re-seeded) each take their own step. Under vmap ``usage`` and
    ``perplexity`` are those of the whole batch (as quantized in one call;
    with ``chunk_size``, of the last chunk, which vmap quantizes in a call
    of its own), an ensemble's stacked ones each member's. All of this
    holds under ``torch.compile`` around vmap as well. ``torch.func.functional_call``
    with a replaced ``codebook`` quantizes with it, and differentiates the
    quantized vectors (not the loss) with respect to it in ``eval()`` mode.

    Under gradient checkpointing (``torch.utils.checkpoint``) the forward
    that backward runs again takes no second EMA step and leaves ``usage``
    alone, but it quantizes with the codebook as this step left it: the
    commitment loss's gradient, and layers after the quantizer in the same
    checkpointed segment, see those codes. Checkpoint the layers around the
    quantizer rather than through it to keep them exact.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> vq = VectorQuantizer(num_codes=4, dim=2)
    >>> x = torch.randn(64, 2, requires_grad=True)
    >>> quantized, codes, loss = vq(x)
    >>> quantized.shape, codes.shape, loss.shape
    (torch.Size([64, 2]), torch.Size([64]), torch.Size([]))
    >>> _ = vq.eval()  # frozen codebook from here on
    >>> quantized, codes, loss = vq(x)
    >>> torch.equal(quantized, vq.lookup(codes))
    True
    >>> batched = torch.func.vmap(vq)(x.detach().reshape(4, 16, 2))
    >>> torch.equal(batched.codes, codes.reshape(4, 16))
    True
    >>> _ = vq(x[:1])  # usage and perplexity of the last batch, vmapped or not
    >>> _ = torch.func.vmap(vq)(x.detach().reshape(4, 16, 2))
    >>> vq.usage
    tensor([1.])
    """

    codebook: torch.Tensor
    ema_sums: torch.Tensor
    ema_counts: torch.Tensor
    initialized: torch.Tensor
    last_counts: torch.Tensor
    # A class default too: modules pickled before the parameter existed.
    channel_dim: int = -1

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        metric: str = "euclidean",
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.05,
        heads: int = 1,
        channel_dim: int = -1,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        self.num_codes = _check_int("num_codes", num_codes, 1)
        self.dim = _check_int("dim", dim, 1)
        self.heads = _check_int("heads", heads, 1)
        self.kmeans_iters = _check_int("kmeans_iters", kmeans_iters, 1)
        if metric not in _METRICS:
            raise ValueError(f"Expected metric to be 'euclidean' or 'cosine', got {metric!r}.")
        self.metric = metric
        self.decay = _check_float("decay", decay, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        self.eps = _check_float("eps", eps, lambda v: 0.0 < v < math.inf, "> 0")
        self.commitment_weight = _check_float(
            "commitment_weight", commitment_weight, lambda v: 0.0 <= v < math.inf, ">= 0"
        )
        self.dead_code_threshold = _check_float(
            "dead_code_threshold", dead_code_threshold, lambda v: 0.0 <= v < 1.0, "in [0, 1)"
        )
        # numpy bools too, as the estimators' flags: isinstance(bool) refused
        # np.bool_ with "Expected kmeans_init to be a bool, got bool."
        self.kmeans_init = v.check_flag(kmeans_init, "kmeans_init")
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, numbers.Integral):
            raise TypeError(f"Expected channel_dim to be an int, got {type(channel_dim).__name__}.")
        self.channel_dim = int(channel_dim)
        self.process_group = process_group

        # float32 whatever torch's default dtype: under
        # set_default_dtype(torch.float64) the first EMA step raised
        # (float64 statistics, float32 batch counts).
        codebook = torch.randn(heads, num_codes, dim, dtype=torch.float32)
        if metric == "cosine":
            codebook = unit_rows(codebook)
        self.register_buffer("codebook", codebook)
        # One vector per code to start with: an unused code then keeps its
        # place (sums and counts decay together) until it is re-seeded.
        self.register_buffer("ema_sums", codebook.clone())
        self.register_buffer("ema_counts", torch.ones(heads, num_codes, dtype=torch.float32))
        self.register_buffer("initialized", torch.tensor(False))
        # Statistics of the last batch (for usage and perplexity), not state.
        self.register_buffer(
            "last_counts", torch.zeros(heads, num_codes, dtype=torch.float32), persistent=False
        )
        # Host-side mirror of ``initialized``: reading the buffer in forward
        # would synchronise with the device on every step, and branch on data
        # under torch.compile. Kept in step with the buffer by load_state_dict.
        self._needs_init = True
        self._init_samples: list[torch.Tensor] = []

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, heads={self.heads}, "
            f"metric={self.metric!r}, decay={self.decay}, "
            f"dead_code_threshold={self.dead_code_threshold}"
            + (f", channel_dim={self.channel_dim}" if self.channel_dim != -1 else "")
        )

    # ------------------------------------------------------------------ state

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # The statistics must stay float32 when a whole model is cast with
        # .half()/.bfloat16(): in half precision the EMA of counts stalls
        # (1 - decay is below the resolution near 1) and sums overflow. The
        # tensor still follows the device change.
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if t.is_floating_point() and moved.dtype != t.dtype:
                return t.to(device=moved.device)
            return moved

        applied = super()._apply(keep_dtype, recurse)
        # The batches collected for the k-means initialisation go along
        # (left behind, they met the codebook on another device).
        self._init_samples = [keep_dtype(batch) for batch in self._init_samples]
        return applied

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The batches collected so far for the k-means initialisation (a
        # checkpoint taken meanwhile lost them, and the resumed quantizer
        # collected again from scratch), in tensors of one shape whether a
        # collection is under way or not. Saved only while there were some,
        # under keys of their own, they refused to load in place: a
        # checkpoint of the collection into a new quantizer, or one from
        # outside it into a collecting one (torch.distributed.checkpoint's
        # "Missing key", then "Size mismatch").
        destination[prefix + "init_samples"] = self.init_samples
        destination[prefix + "init_collected"] = self.init_collected

    @property
    def init_samples(self) -> torch.Tensor:
        """``(heads, num_codes, dim)`` float32: the vectors collected so far for
        the k-means initialisation (fewer than ``num_codes``: with as many,
        it runs), in their first ``init_collected[0]`` rows, then zeros."""
        samples = self.codebook.new_zeros(self.heads, self.num_codes, self.dim)
        if self._init_samples:
            collected = torch.cat(self._init_samples, dim=1)[:, : self.num_codes]
            samples[:, : collected.shape[1]] = collected
        return samples

    @property
    def init_collected(self) -> torch.Tensor:
        """int64 ``(2,)``: the number of vectors and of batches collected so
        far for the k-means initialisation."""
        vectors = sum(batch.shape[1] for batch in self._init_samples)
        # On the CPU whatever torch's default device (a count, as in earlier releases).
        return torch.tensor([vectors, len(self._init_samples)], dtype=torch.int64, device="cpu")

    def _collected(
        self, samples: torch.Tensor, collected: torch.Tensor
    ) -> list[torch.Tensor] | str:
        """The batches that ``init_samples`` and ``init_collected`` describe,
        or why they are refused."""
        shape = (self.heads, self.num_codes, self.dim)
        if samples.shape != shape:
            return f"Expected init_samples of shape {shape}, got shape {tuple(samples.shape)}."
        values = collected.tolist() if collected.shape == (2,) else None
        if values is None or not (0 <= values[0] < self.num_codes and values[1] >= (values[0] > 0)):
            return (
                f"Expected init_collected to be [vectors < num_codes={self.num_codes}, "
                f"batches >= 1 if any vectors], got {collected.tolist()}."
            )
        vectors, batches = values
        if batches == 0:
            return []
        samples = samples[:, :vectors].to(device=self.codebook.device, dtype=torch.float32)
        # The collection only ever needs the vectors together and the number
        # of batches (the initial counts are per batch).
        return [samples] + [samples[:, :0]] * (batches - 1)

    def _collected_before(
        self, samples: torch.Tensor, sizes: torch.Tensor
    ) -> list[torch.Tensor] | str:
        """:meth:`_collected` for checkpoints of earlier releases: the
        vectors ``(heads, n, dim)`` and one size per batch."""
        shape = (self.heads, samples.shape[1] if samples.ndim == 3 else "n", self.dim)
        if samples.shape != shape:
            return f"Expected init_samples of shape {shape}, got shape {tuple(samples.shape)}."
        if int(sizes.sum()) != samples.shape[1]:
            return f"Expected init_sizes to sum to {samples.shape[1]}, got {int(sizes.sum())}."
        samples = samples.to(device=self.codebook.device, dtype=torch.float32)
        return list(samples.split(sizes.tolist(), dim=1))

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Taken out before the buffers load: they are not buffers (strict
        # loading would call them unexpected). Checkpoints of earlier
        # releases have init_sizes in place of init_collected, and neither
        # outside a collection.
        samples = state_dict.pop(prefix + "init_samples", None)
        collected = state_dict.pop(prefix + "init_collected", None)
        sizes = state_dict.pop(prefix + "init_sizes", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # load_state_dict(assign=True) puts the checkpoint's tensors in place
        # of the buffers: a half-precision checkpoint would make the
        # statistics half (the first EMA step then raised on mixed dtypes).
        for name in ("codebook", "ema_sums", "ema_counts"):
            buffer = self._buffers[name]
            if buffer is not None and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        # Loading is host-side work already: one read of the flag is fine here.
        self._needs_init = not bool(self.initialized)
        self._init_samples = []
        if samples is None or not (self._needs_init and self.kmeans_init):
            return
        if collected is not None:
            batches = self._collected(samples, collected)
        elif sizes is not None:
            batches = self._collected_before(samples, sizes)
        else:
            return
        if isinstance(batches, str):
            error_msgs.append(batches)
        else:
            self._init_samples = batches

    # -------------------------------------------------------------- accessors

    @property
    def usage(self) -> torch.Tensor:
        """``(heads,)`` fraction of the codes used by the last batch.

        Examples
        --------
        >>> vq = VectorQuantizer(4, 1, kmeans_init=False).eval()
        >>> _ = vq.codebook.copy_(torch.tensor([[[0.0], [1.0], [2.0], [3.0]]]))
        >>> _ = vq(torch.tensor([[0.1], [0.2], [2.9]]))
        >>> vq.usage
        tensor([0.5000])
        """
        return (self.last_counts > 0).float().mean(-1)

    @property
    def perplexity(self) -> torch.Tensor:
        """``(heads,)`` perplexity of the codes of the last batch.

        ``exp`` of the entropy of the code frequencies: ``num_codes`` when all
        codes are used equally often, 1 when one code takes everything.

        Examples
        --------
        >>> vq = VectorQuantizer(2, 1, kmeans_init=False).eval()
        >>> _ = vq.codebook.copy_(torch.tensor([[[0.0], [1.0]]]))
        >>> _ = vq(torch.tensor([[0.0], [1.0], [0.1], [0.9]]))
        >>> vq.perplexity
        tensor([2.])
        """
        return _perplexity(self.last_counts)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The code vectors of indices ``codes``, the inverse of :meth:`forward`'s codes.

        Parameters
        ----------
        codes : Tensor
            Integer indices in ``[0, num_codes)``, shaped like ``forward``'s
            codes: ``(...)`` for ``heads == 1``, ``(..., heads)`` otherwise.

        Returns
        -------
        Tensor
            float32, ``(..., heads * dim)``, the entries moved to dimension
            ``channel_dim`` (``(batch, heads * dim, height, width)`` for
            codes ``(batch, height, width)`` and ``channel_dim=1``).

        Raises
        ------
        TypeError
            If ``codes`` is not an integer tensor (bool is not).
        ValueError
            If ``heads > 1`` and the last dimension of ``codes`` is not
            ``heads``, if ``codes`` has too few dimensions to put the
            entries back in dimension ``channel_dim``, or (for codes on the
            CPU, where the check needs no device synchronisation) a code
            lies outside ``[0, num_codes)``.
        RuntimeError
            On an accelerator, a code outside ``[0, num_codes)`` fails a
            device-side assertion (reported at the next synchronisation;
            a CUDA device is then unusable, as after any device assert).

        Examples
        --------
        >>> vq = VectorQuantizer(3, 2, heads=2, kmeans_init=False)
        >>> _ = vq.codebook.copy_(torch.arange(12.0).reshape(2, 3, 2))
        >>> vq.lookup(torch.tensor([[0, 2], [1, 1]]))
        tensor([[ 0.,  1., 10., 11.],
                [ 2.,  3.,  8.,  9.]])
        """
        if (
            not isinstance(codes, torch.Tensor)
            or codes.is_floating_point()
            or codes.is_complex()
            or codes.dtype == torch.bool
        ):
            got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise TypeError(f"Expected codes to be an integer tensor, got {got}.")
        # Tokens stored as uint8 (k <= 256) would index as a boolean mask, and
        # int8/int16 not at all: as indices, every integer dtype is int64.
        codes = codes.long()
        if self.heads > 1 and (codes.ndim == 0 or codes.shape[-1] != self.heads):
            raise ValueError(
                f"Expected codes to be of shape (..., heads={self.heads}), "
                f"got shape {tuple(codes.shape)}."
            )
        # A negative code (a padding token such as -1 or -100) would index
        # from the end: the last codes, silently.
        if codes.numel() and not _device.traced():
            expected = f"Expected codes in [0, num_codes={self.num_codes})"
            if _device.on_host(codes.device):
                low, high = (int(bound) for bound in torch.aminmax(codes))
                if low < 0 or high >= self.num_codes:
                    raise ValueError(f"{expected}, got values from {low} to {high}.")
            else:
                # Reading the bounds would wait for the device: a device-side
                # assertion checks them without a synchronisation, and fails
                # at the next one (as an index past the end fails the gather).
                in_range = (codes >= 0) & (codes < self.num_codes)
                torch._assert_async(in_range.all(), f"{expected}.")
        if self.heads == 1:
            vectors = self.codebook[0][codes]
        else:
            heads = torch.arange(self.heads, device=codes.device)
            vectors = self.codebook[heads, codes].flatten(-2)  # (..., heads * dim)
        channel_dim = self.channel_dim
        if channel_dim == -1:
            return vectors
        if not -vectors.ndim <= channel_dim < vectors.ndim:
            # The vectors need channel_dim + 1 (or -channel_dim) dimensions.
            least = (channel_dim + 1 if channel_dim >= 0 else -channel_dim) - (self.heads == 1)
            raise ValueError(
                f"Expected codes of at least {least} dimensions for channel_dim={channel_dim}, "
                f"got shape {tuple(codes.shape)}."
            )
        return vectors.movedim(-1, channel_dim)

    # ---------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x``; in training mode, also update the codebook.

        Parameters
        ----------
        x : Tensor
            Floating tensor ``(..., heads * dim)`` of any floating dtype
            (``heads * dim`` entries along dimension ``channel_dim``).
        mask : Tensor, optional
            bool ``x.shape[:-1]`` (``x``'s shape without dimension
            ``channel_dim``), False at the vectors to leave out
            (padding of sequences of different lengths): they get a code
            and a quantized vector like the others, but take no part in the
            commitment loss (the mean over the kept vectors; 0 if there are
            none), the codebook's statistics and initialisation, re-seeding,
            ``usage`` and ``perplexity``. None keeps every vector.

        Returns
        -------
        QuantizerOutput
            ``(quantized, codes, loss)``.

        Raises
        ------
        TypeError
            If ``x`` is not a floating-point tensor, or ``mask`` is not a
            bool tensor.
        ValueError
            If the last dimension of ``x`` (dimension ``channel_dim``) is
            not ``heads * dim``, ``x`` holds no vectors, ``mask``'s shape
            is not that of ``x`` without that dimension, or ``x`` holds NaN
            or infinity in a training forward that initialises the codebook
            by k-means. After that, a non-finite vector gets a code and a
            NaN loss but does not enter the codebook's statistics. In a training forward under
            torch.distributed, a rank's batch of no vectors (shape
            ``(0, heads * dim)``, say) is accepted: it takes part in the
            step's collectives with no statistics and a loss of 0 (raising
            left the other ranks waiting in them).
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"Expected x to be a floating-point tensor, got {got}.")
        width = self.heads * self.dim
        empty_ok = self.training and _distributed(self.process_group)[0]
        channel_dim = self.channel_dim
        if (
            not -x.ndim <= channel_dim < x.ndim
            or x.shape[channel_dim] != width
            or (x.numel() == 0 and not empty_ok)
        ):
            expected = f"of shape (..., {width})"
            if channel_dim != -1:
                expected = f"with {width} entries along dimension channel_dim={channel_dim}"
            raise ValueError(
                f"Expected x to be a non-empty tensor {expected}, got shape {tuple(x.shape)}."
            )
        if channel_dim != -1:
            # A view: the rows are gathered in one copy below, as for
            # channels-last input that is not contiguous.
            x = x.movedim(channel_dim, -1)
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise TypeError(f"Expected mask to be a bool tensor, got {got}.")
            if mask.shape != x.shape[:-1]:
                which = "its last dimension"
                if channel_dim != -1:
                    which = f"dimension channel_dim={channel_dim}"
                raise ValueError(
                    f"Expected mask of shape {tuple(x.shape[:-1])} (x's shape without "
                    f"{which}), got shape {tuple(mask.shape)}."
                )
            mask = mask.to(x.device)
        heads, dim = self.heads, self.dim
        # Distances and statistics in float32 even under autocast: in half
        # precision |x|^2 overflows and near ties between codes flip.
        with torch.autocast(device_type=x.device.type, enabled=False):
            keep = None if mask is None else mask.reshape(-1)
            selected, codes = self._assign_and_update(x, keep)
            target = selected.transpose(0, 1).reshape(x.shape)
            reference = x.float()
            if self.metric == "cosine":
                reference = unit_rows(reference.unflatten(-1, (heads, dim)))
                reference = reference.flatten(-2)
            # The commitment loss moves the encoder only: a codebook that
            # takes a gradient (replaced through functional_call, or made to
            # require one) was pulled towards the batch by it as well.
            if x.numel():
                loss = _commitment_loss(reference, target.detach(), self.commitment_weight, mask)
            else:
                # The mean of no vectors is NaN: 0, still in x's graph.
                loss = (reference - target.detach()).square().sum()
        # Straight-through estimator: forward value exactly the code (x - x is
        # an exact zero, unlike x + (q - x) in half precision), gradient the
        # identity to x.
        quantized = target.to(x.dtype) + (x - x.detach())
        if channel_dim != -1:
            quantized = quantized.movedim(-1, channel_dim)
        codes = codes.transpose(0, 1).reshape(*x.shape[:-1], heads)
        if heads == 1:
            codes = codes.squeeze(-1)
        return QuantizerOutput(quantized, codes, loss)

    def _assign_and_update(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_step`, under torch.func's transforms and torch.compile too.

        Under grad (vjp, jacrev, jvp...) the step runs on the rows' values
        below the gradient transforms (:meth:`_below_gradients`): it takes
        no gradient, and there its results were wrapped by the transform,
        which then refused to write them into the buffers ("would mutate a
        captured Tensor", eagerly and under torch.compile), and the codes
        could not take the fused kernel. In ``eval()`` mode the quantized
        vectors are then taken from the codebook again at the caller's
        level, so that a codebook replaced by ``functional_call`` is
        differentiated. Under vmap the step runs on the batched rows.
        """
        interpreter = _interpreter()
        if interpreter is None:
            return self._step(x, keep)
        selected, codes = self._below_gradients(x.detach(), keep, interpreter)
        if not self.training:
            selected = self._select(codes)
        return selected, codes

    def _below_gradients(
        self, x: torch.Tensor, keep: torch.Tensor | None, interpreter: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_step` on ``x``'s values below the gradient transforms at
        the top of torch.func's stack, down to the first other transform
        (vmap) or none: their levels are set aside (``lower()``, which
        torch.compile follows), as eager's autograd is outside a grad."""
        if _differentiates(interpreter):
            functorch = torch._C._functorch
            level = interpreter.level()
            x = functorch._unwrap_for_grad(x, level)
            keep = None if keep is None else functorch._unwrap_for_grad(keep, level)
            with interpreter.lower():
                return self._below_gradients(x, keep, _interpreter())
        if self.training and not _device.compiling() and _device.plain(x):
            buffers = (self.codebook, self.ema_sums, self.ema_counts, self.last_counts)
            if not all(map(_device.plain, buffers)):
                raise RuntimeError(
                    "Expected VectorQuantizer's buffers to be its own in training mode under "
                    "torch.func's transforms, got buffers replaced by differentiated ones "
                    "(the EMA step cannot write into them); call eval() to differentiate "
                    "through the codebook."
                )
        return self._step(x, keep)

    def _select(self, codes: torch.Tensor) -> torch.Tensor:
        """The codes' vectors ``(heads, n, dim)`` of indices ``codes`` ``(heads, n)``.

        One index_select of whole rows: a gather with the codes expanded
        over dim took 4-7x as long (4,096 rows of 16-32 numbers). Its
        backward reads no codes, so that a codebook made to require a
        gradient may take the EMA step (a gather's backward read it,
        overwritten: "modified by an inplace operation").
        """
        offsets = torch.arange(self.heads, device=codes.device).unsqueeze(-1) * self.num_codes
        rows_of = (codes + offsets).reshape(-1)
        book = self.codebook.reshape(-1, self.dim)
        return book.index_select(0, rows_of).view(self.heads, codes.shape[1], self.dim)

    def _step(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes ``(heads, n, dim)`` and indices ``(heads, n)`` of ``x``, then the update.

        In training mode this also runs the one-time initialisation and the
        EMA step; it records the code counts of the batch in any mode. Only
        the rows that ``keep`` (bool ``(n,)``, None: all) marks take part in
        the statistics, the initialisation and the counts.
        """
        heads, dim = self.heads, self.dim
        # (heads, n, dim) outside autograd: the codebook side of the
        # computation never needs a gradient. Codes are chosen in x's computed
        # dtype (float64 rows rounded to float32 first could get the code
        # of their rounding), the statistics kept in float32.
        rows = x.detach().reshape(-1, heads, dim).transpose(0, 1).to(compute_dtype(x.dtype))
        if self.metric == "cosine":
            rows = unit_rows(rows)
        rows = rows.contiguous()
        flat = rows.float()
        # Gradient checkpointing runs the forward a second time during
        # backward: that run takes no second EMA step (the codebook moved
        # twice per step, at decay**2) and collects no batch twice for the
        # initialisation; it keeps the batch statistics of the first run.
        recomputing = _recomputing()
        training = self.training and not recomputing
        # Under torch.func.vmap the rows are a batch of problems, each of
        # which would move the one codebook (vmap refuses the writes), unless
        # the buffers are batched too (an ensemble's, stacked by
        # torch.func.stack_module_state); the k-means initialisation reads
        # the host, which vmap refuses.
        if _device.compiling():
            # torch.compile follows is_batchedtensor, not plain(): compiled,
            # vmap's rows were taken for one problem (an obscure error in
            # training, from the sums).
            batched = torch._C._functorch.is_batchedtensor(rows)
            own_buffers = not torch._C._functorch.is_batchedtensor(self.ema_sums)
        else:
            batched, own_buffers = not _device.plain(rows), _device.plain(self.ema_sums)
        if training and batched and (own_buffers or self._needs_init):
            raise RuntimeError(
                "Expected VectorQuantizer to be in eval() mode under torch.func.vmap "
                "(one codebook cannot take an EMA step per batch element), got training "
                "mode; quantize the whole batch in one call to train, or vmap over the "
                "stacked buffers of initialised quantizers (an ensemble)."
            )

        if training and self._needs_init:
            initialize = self._initialize
            if _device.compiling():
                # Run eagerly, outside the graph (torch._dynamo is loaded by
                # now): traced, torch.compile followed the whole k-means
                # through its host reads (3 minutes of inductor on 2 cores)
                # and inductor seeded it from its own generator, not eager's.
                initialize = torch.compiler.disable(initialize)
            initialize(flat, keep)

        codes = _nearest_codes(rows, self.codebook.detach().to(rows.dtype), self.metric)
        selected = self._select(codes)
        # While batches are still being collected for the k-means
        # initialisation, the codebook is left alone: k-means replaces it.
        if training and not self._needs_init:
            # A non-finite row (an encoder overflowing in float16, say) keeps
            # its code and its NaN loss, but stays out of the statistics: there
            # it made its code NaN for good, and under torch.distributed the
            # codes of every rank.
            # (heads, n): 0 * x sums to 0 unless x holds NaN or infinity;
            # isfinite().all(-1) over rows this short took 4-8x as long.
            finite = flat.mul(0.0).sum(-1) == 0
            if self.metric == "cosine":
                # A row of zeros has no direction: in the statistics and as
                # a re-seeding vector it made codes zero vectors (padding
                # rows: 13 of 16 codes, whose non-unit zeros then quantized
                # the rows nearest no other code).
                finite &= (flat != 0).any(-1)
            if keep is not None:
                finite &= keep
            flat = flat.where(finite.unsqueeze(-1), 0.0)
            weight = finite.to(flat.dtype)
            if batched:
                # Under vmap (an ensemble's stacked buffers): out of place,
                # as vmap writes no batched sums into a new unbatched tensor.
                index = codes.unsqueeze(-1).expand(heads, codes.shape[1], dim)
                sums = flat.new_zeros(heads, self.num_codes, dim).scatter_add(1, index, flat)
                counts = weight.new_zeros(heads, self.num_codes).scatter_add(1, codes, weight)
            elif _device.compiling():
                # The sums of one problem on the CPU end in a bincount, whose
                # output shape torch.compile takes as data-dependent: four
                # graph breaks per step for every quantizer of one head (the
                # default), against none for several heads.
                totals = flat.new_zeros(heads, self.num_codes, dim + 1)
                accumulate(totals, with_ones_column(flat), codes, weight)
                sums, counts = totals[..., :dim], totals[..., dim]
            else:
                sums, counts = _scatter_sums(flat, codes, self.num_codes, sample_weight=weight)
            # Outside autograd: a codebook made to require a gradient raised
            # "a leaf Variable that requires grad is being used in an
            # in-place operation" (the EMA step is not differentiated).
            with torch.no_grad():
                self._update(flat, finite, sums, counts)
        elif recomputing:
            # usage and perplexity keep the batch of the first run.
            return selected, codes
        else:
            ones = torch.ones_like(codes, dtype=torch.float32)
            if keep is not None:
                ones = ones * keep
            # Out of place: under vmap the counts are a batch of counts.
            counts = ones.new_zeros(heads, self.num_codes).scatter_add(1, codes, ones)
        self._record_counts(counts)
        return selected, codes

    def _record_counts(self, counts: torch.Tensor) -> None:
        """``last_counts`` from the code counts ``(heads, num_codes)`` of the batch.

        Under vmap the counts of the batch elements are summed over the
        vmapped dimensions that ``last_counts`` lacks (those of the whole
        batch, as quantized in one call: vmap refuses to write a batch of
        counts into one tensor, and usage and perplexity kept the last batch
        quantized outside vmap); an ensemble's stacked ``last_counts`` takes
        each member's own.
        """
        functorch = torch._C._functorch
        interpreter = _interpreter()
        if interpreter is None:
            self.last_counts.copy_(counts)
            return
        level = interpreter.level()
        if _device.compiling():
            # torch.compile follows is_batchedtensor, not maybe_get_level:
            # an ensemble's last_counts is batched at the innermost vmap.
            own = functorch.is_batchedtensor(self.last_counts)
        else:
            own = functorch.maybe_get_level(self.last_counts) >= level
        if own:
            self.last_counts.copy_(counts)
            return
        batch_dim = None
        if interpreter.key() == functorch.TransformType.Vmap:
            counts, batch_dim = functorch._unwrap_batched(counts, level)
        elif _differentiates(interpreter):
            counts = functorch._unwrap_for_grad(counts, level)
        else:
            self.last_counts.copy_(counts)
            return
        with interpreter.lower():
            self._record_counts(counts if batch_dim is None else counts.sum(batch_dim))

    def _initialize(self, flat: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """One-time initialisation on a training batch ``(heads, n, dim)``; syncs with the host.

        Only the rows that ``keep`` (bool ``(n,)``, None: all) marks are
        collected and clustered.

        With ``kmeans_init``, batches are collected until they hold
        ``num_codes`` vectors, then clustered. Under torch.distributed the
        batches of all ranks are gathered, and the first rank of the group
        decides (whether there are enough vectors, and the statistics) and
        broadcasts, so every rank starts from its state; that also aligns
        codebooks drawn at random with different seeds.
        """
        if bool(self.initialized):
            # Initialised state copied in without load_state_dict (for
            # instance DDP broadcasting rank 0's buffers): nothing to do, and
            # no collective the other ranks would not join.
            self._needs_init = False
            return
        active, rank, world = _distributed(self.process_group)
        heads, k, dim = self.codebook.shape
        ready, finite = True, True
        codebook, counts = self.codebook, self.ema_counts
        # The statistics of the codes as they stand: codes copied into the
        # codebook before the first training forward (pretrained ones, with
        # kmeans_init=False) are where training starts; the sums drawn in
        # __init__ pulled the first EMA step back to the random codes.
        sums = codebook * counts.unsqueeze(-1)
        if self.kmeans_init:
            if keep is not None:
                flat = flat[:, keep]
            # Every rank's batch, gathered: rank 0's alone seeded the codes
            # in its own part of the data only (shards from other sources:
            # 15x the inertia of one process after 300 steps).
            batch = _gather_rows(flat, self.process_group, world) if world > 1 else flat
            # Checked before the batch joins the collected ones (where a NaN
            # made every later training forward raise), on the rank that
            # clusters them; the others learn it from the broadcast and raise too.
            finite = rank != 0 or bool(torch.isfinite(batch).all())
            # A copy: ``flat`` may share memory with the caller's x.
            self._init_samples.append(batch if world > 1 else flat.clone())
            samples = torch.cat(self._init_samples, dim=1)
            ready = finite and samples.shape[1] >= k
            if ready and rank == 0:
                # Cosine rows of zeros (no direction) neither seed nor move
                # a code: clustered, they made codes zero vectors. A head of
                # zeros only keeps them all (k-means needs a positive weight).
                weight = None
                if self.metric == "cosine":
                    weight = (samples != 0).any(-1).to(samples.dtype)
                    weight = weight.where(weight.any(-1, keepdim=True), 1.0)
                result = kmeans(
                    samples,
                    k,
                    init="k-means++",
                    max_iter=self.kmeans_iters,
                    metric=self.metric,
                    sample_weight=weight,
                    generator=None,
                )
                codebook = result.centroids.float()
                _, counts = scatter_sums(samples, result.labels, k, sample_weight=weight)
                # EMA counts are per step (summed over ranks, as the gathered
                # batches are): scale the collected counts to that unit.
                counts = counts / len(self._init_samples)
                sums = codebook * counts.unsqueeze(-1)
        if active:
            size = heads * k * dim
            packed = torch.cat(
                [
                    codebook.new_tensor([float(ready) if finite else -1.0]),
                    codebook.reshape(-1),
                    sums.reshape(-1),
                    counts.reshape(-1),
                ]
            )
            torch.distributed.broadcast(
                packed, src=_group_source(self.process_group), group=self.process_group
            )
            flag = float(packed[0])
            ready, finite = flag > 0, flag >= 0
            codebook = packed[1 : 1 + size].view(heads, k, dim)
            sums = packed[1 + size : 1 + 2 * size].view(heads, k, dim)
            counts = packed[1 + 2 * size :].view(heads, k)
        if not finite:
            self._init_samples.pop()
            raise ValueError(
                "Expected x to hold finite values for the k-means initialisation "
                "of the codebook, got NaN or infinity."
            )
        # While the first rank is still collecting, the others quantize with
        # its initial codes too: their own random draws gave every rank other
        # codes for the same vectors.
        if not (ready or active):
            return
        with torch.no_grad():
            self.codebook.copy_(codebook)
            self.ema_sums.copy_(sums)
            self.ema_counts.copy_(counts)
        if not ready:
            return
        self.initialized.fill_(True)
        self._needs_init = False
        self._init_samples = []

    def _update(
        self, flat: torch.Tensor, finite: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
    ) -> None:
        """EMA step from this rank's batch statistics, codebook from them, dead codes re-seeded.

        ``flat`` ``(heads, n, dim)`` with ``finite`` ``(heads, n)`` marking
        the rows that may re-seed a code, ``sums`` ``(heads, k, dim)``,
        ``counts`` ``(heads, k)``. No host synchronisation and no branch on
        data: one ``all_reduce`` under torch.distributed, ``torch.where`` for
        the dead codes.
        """
        heads, n, dim = flat.shape
        k = self.num_codes
        reseed = self.dead_code_threshold > 0
        if reseed and n == 0:
            # A rank with no rows (a dead code restarts where it is; only the
            # group's first rank's candidates count anyway).
            candidates = self.codebook
        elif reseed:
            # Distinct random batch vectors, one per code (wrapping around
            # when the batch is smaller than the codebook), finite rows first.
            keys = torch.rand(heads, n, device=flat.device, dtype=torch.float32).masked_fill(
                ~finite, 2.0
            )
            order = keys.argsort(-1)
            picked = order if n >= k else order.repeat(1, -(-k // n))
            picked = picked[:, :k]
            candidates = flat.gather(1, picked.unsqueeze(-1).expand(heads, k, dim))
            # Past the batch's finite rows, a dead code restarts where it is.
            usable = finite.gather(1, picked).unsqueeze(-1)
            candidates = torch.where(usable, candidates, self.codebook)
        active, rank, _ = _distributed(self.process_group)
        if active:
            parts = [sums.reshape(-1), counts.reshape(-1)]
            if reseed:
                # Only the group's first rank contributes candidates, so the
                # sum is its candidates on every rank: the ranks re-seed alike
                # with no second collective.
                parts.append(candidates.reshape(-1) * float(rank == 0))
            packed = torch.cat(parts)
            torch.distributed.all_reduce(packed, group=self.process_group)
            sums = packed[: heads * k * dim].view(heads, k, dim)
            counts = packed[heads * k * dim : heads * k * (dim + 1)].view(heads, k)
            if reseed:
                candidates = packed[heads * k * (dim + 1) :].view(heads, k, dim)

        # (heads, 1): a batch with no finite row (on any rank) leaves the
        # statistics alone; at decay 0 it emptied them, and the codes were 0 / 0.
        weight = (counts.sum(-1, keepdim=True) > 0).to(counts.dtype) * (1.0 - self.decay)
        # Out of place, then copied: vmap has no batching rule for lerp_ (a
        # warning of a "performance drop" at every step of an ensemble).
        self.ema_counts.copy_(self.ema_counts.lerp(counts, weight))
        self.ema_sums.copy_(self.ema_sums.lerp(sums, weight.unsqueeze(-1)))
        smoothed = _laplace_smoothed(self.ema_counts, self.eps)
        codebook = self.ema_sums / smoothed.unsqueeze(-1)
        if self.metric == "cosine":
            codebook = unit_rows(codebook)
        if reseed:
            # (heads, 1): a fraction of the mean count, the same on every rank.
            threshold = self.dead_code_threshold * self.ema_counts.mean(-1, keepdim=True)
            dead = self.ema_counts < threshold
            dead3 = dead.unsqueeze(-1)
            codebook = torch.where(dead3, candidates, codebook)
            # A re-seeded code starts with `threshold` vectors' worth of
            # statistics centred on its new position.
            restart = threshold.expand_as(self.ema_counts)
            self.ema_sums.copy_(
                torch.where(dead3, candidates * threshold.unsqueeze(-1), self.ema_sums)
            )
            self.ema_counts.copy_(torch.where(dead, restart, self.ema_counts))
        self.codebook.copy_(codebook)
