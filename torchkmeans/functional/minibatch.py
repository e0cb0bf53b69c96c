"""One step of mini-batch k-means (Sculley 2010; scikit-learn's ``_mini_batch_step``)."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .. import _validation as v
from . import _device, _native
from . import distances as _distances
from .collective import LOCAL, Collective, raise_rejected
from .distances import (
    _nearest,
    compute_dtype,
    first_copies,
    nearest_by_differences,
    scale_exponent_of,
    scored_by_differences,
    squared_norms_overflow,
    underflow_exponent_of,
    unit_rows,
)
from .updates import _scatter_sums

__all__ = ["MiniBatchStep", "minibatch_step"]

# A step of one problem on the CPU takes its labels and cluster sums from one
# pass of the kernel's differences for up to this many times the multiply-adds
# that nearest_centroids scores so (distances._DIFFERENCES_MAX_WORK): the pass
# also sums the clusters, which the expansion's path sums in a scatter of
# its own, after checking its labels. Steps of 1,024 rows, one thread, the
# differences' time over the expansion's at 2^21 (this bound): 0.43-0.67 in
# float32, 0.51-0.81 in float64, 0.23-0.32 for tight clusters shared by
# near-copies of their centre (every row's label checked again); at 2^22
# 0.98-1.17, at 2^23 0.45-1.26.
_STEP_DIFFERENCES_WORK_FACTOR = 2


def _step_by_differences(x: torch.Tensor, k: int) -> bool:
    """Whether a step labels rows ``x`` ``(n, d)`` against k centroids by one
    pass of the kernel's differences, which also sums the clusters (see above)."""
    if scored_by_differences(x, k):
        return True
    n, d = x.shape
    group = _distances._COLUMN_GROUP_ROWS
    work = -(-n // group) * group * k * d
    return (
        d <= _distances._DIFFERENCES_MAX_FEATURES
        and work <= _STEP_DIFFERENCES_WORK_FACTOR * _distances._DIFFERENCES_MAX_WORK
        and _device.on_host(x.device)
        and _native.prefers_native(x, k, within_lloyd=False)
    )


def _batch_by_differences(
    x: torch.Tensor, centroids: torch.Tensor, metric: str, differences: bool
) -> bool:
    """Whether :func:`_minibatch_step` labels and sums the batch ``x`` by one
    pass of the kernel's differences: one euclidean problem (``centroids``
    ``(k, d)``) whose rows' squared differences do not underflow
    (``differences``), where :func:`_step_by_differences` holds. The same for
    every batch of a fit (it depends on their shape, dtype and device)."""
    return (
        x.ndim == 2
        and centroids.ndim == 2
        and metric == "euclidean"
        and differences
        and _step_by_differences(x, centroids.shape[0])
    )


def certain_nearest(
    x: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Euclidean labels and distances of rows ``x`` ``(n, d)`` against
    ``centroids`` ``(k, d)`` by one call of the fused kernel that makes each
    label certain (``_native.nearest(certain=True)``), or None where that
    call does not apply (off the CPU, no kernel, the column or dots layout,
    squared distances that underflow or overflow): the caller then takes
    ``_nearest``.

    The kernel keeps each row's scores, centred on the centroids' mean, and
    measures again from differences only the few centroids scoring within
    the rounding bound of the lowest score (see ``_assign_kernel.cpp``,
    certify_chunk), where ``_nearest`` checks its labels afterwards
    (``certify_nearest``): rows of tight clusters shared by near-copies of
    their centre far from the centroids' mean pass neither its trust bound
    nor Elkan's, and were each scored again against every centroid.

    Examples
    --------
    >>> c = torch.full((5, 20), 1e4)
    >>> c[:, 0] += torch.arange(5.0)
    >>> found = certain_nearest(c[[3, 1]] + 0.25, c)  # None without the kernel
    >>> found is None or found[0].tolist() == [3, 1]
    True
    """
    if x.ndim != 2 or centroids.ndim != 2 or x.dtype != centroids.dtype:
        return None
    n, d = x.shape
    k = centroids.shape[0]
    if (
        not n
        or not _device.on_host(x.device)
        or _native._columns(d, k)
        or _native._dots(d, k)
        or not _native.prefers_native(x, k, within_lloyd=False)
        or scale_exponent_of(x, centroids)
    ):
        return None
    given = centroids.contiguous()
    offset = given.mean(0)
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    distances = torch.empty(n, dtype=x.dtype, device=x.device)
    minima = torch.empty(n, dtype=x.dtype, device=x.device)
    _native.nearest(
        x,
        given - offset,
        labels,
        offset=offset,
        minima=minima,
        distances=distances,
        given=given,
        certain=True,
    )
    # A row's centred squared norm is its distance less its score: rows far
    # larger than the centroids, whose scores may have overflowed, are
    # scored scaled by _nearest.
    if squared_norms_overflow(minima.neg_().add_(distances)):
        return None
    return labels, distances


class MiniBatchStep(NamedTuple):
    """Result of :func:`minibatch_step`."""

    centroids: torch.Tensor
    """Updated centroids, ``(k, d)`` or ``(b, k, d)``."""
    weight_sums: torch.Tensor
    """Accumulated weight of each centroid, ``(k,)`` or ``(b, k)``."""
    labels: torch.Tensor
    """Nearest centroid (before the update) of each row of the batch, int64."""
    inertia: torch.Tensor
    """Weighted sum of distances of the batch to those centroids, ``()`` or ``(b,)``,
    in the widest float of the device (float64 but on MPS)."""


def minibatch_step(
    x: torch.Tensor,
    centroids: torch.Tensor,
    weight_sums: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
    random_reassign: bool | torch.Tensor = False,
    reassignment_ratio: float = 0.01,
    generator: torch.Generator | None = None,
    metric: str = "euclidean",
    memory_budget: int | None = None,
    collective: Collective = LOCAL,
) -> MiniBatchStep:
    """Assign a batch to its nearest centroids and move them towards it.

    Each centroid moves to the weighted mean of everything it has absorbed so
    far: ``c_j <- (c_j * W_j + sum_{i in j} w_i x_i) / (W_j + sum_{i in j} w_i)``
    with ``W_j`` the accumulated ``weight_sums``; centroids without points in
    the batch stay put. With ``random_reassign``, centroids whose weight is
    below ``reassignment_ratio * max(weight_sums)`` (at most half the batch,
    the lightest first) jump to distinct rows of the batch and get the
    smallest weight of the others, as scikit-learn does; the rows are drawn
    with probability proportional to their (weighted) squared distance to
    their centroid, as k-means++ draws (scikit-learn: uniformly). On the CPU,
    drawn rows equal to a centroid or to another drawn row are taken last (the
    reseeded centroids would be copies, whose rows all go to the first).
    The inputs are not modified, and are detached: the results carry no
    gradient. Off the CPU a step reads nothing on the host, so float32 rows
    and centroids near 1e-25, whose squared distances underflow, are not
    rescaled there (on the CPU they are, as
    :func:`~torchkmeans.functional.nearest_centroids` does).

    Parameters
    ----------
    x : Tensor
        The batch, ``(n, d)`` or ``(b, n, d)`` for b independent problems.
        For ``metric="cosine"`` the rows should be unit vectors.
    centroids : Tensor
        ``(k, d)`` or ``(b, k, d)``.
    weight_sums : Tensor
        ``(k,)`` or ``(b, k)``, accumulated weight per centroid (zeros at the
        first step).
    sample_weight : Tensor, optional
        ``(n,)`` or ``(b, n)`` non-negative weights of the batch rows (only
        their shape is checked: their values would cost a host
        synchronisation every step).
    random_reassign : bool or Tensor, default=False
        Whether to reseed light centroids on this step; a bool tensor on the
        device decides without a host synchronisation (the reseeding is then
        computed every step and applied where the flag is set).
    reassignment_ratio : float, default=0.01
        Fraction of the heaviest centroid's weight below which a centroid is
        reseeded.
    generator : torch.Generator, optional
        Source of randomness for the reseeding, on ``x``'s device.
    metric : {"euclidean", "cosine"}
        Squared euclidean distance, or ``1 - cos`` (centroids renormalised).
    memory_budget : int, optional
        Bytes the distance block may take.
    collective : Collective
        On shards (:func:`torchkmeans.distributed.collective`): every rank
        passes its own batch; the batch sums, weights and inertia are summed
        over the ranks (one collective) and reseeded rows come from the first
        rank with the largest batch (any rank's batch may be empty), so
        all ranks keep the same centroids. ``n`` in the half-batch cap is the
        total over the ranks.

    Returns
    -------
    MiniBatchStep
        ``centroids``, ``weight_sums``, ``labels`` and the batch ``inertia``
        (computed before the update).

    Raises
    ------
    TypeError
        If ``x`` or ``centroids`` is not a floating-point tensor, or
        ``weight_sums`` or ``sample_weight`` is not a tensor.
    ValueError
        If the shapes of ``x``, ``centroids``, ``weight_sums`` and
        ``sample_weight`` do not match, ``metric`` is unknown or
        ``reassignment_ratio`` is negative.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
    >>> c = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    >>> step = minibatch_step(x, c, torch.tensor([1.0, 0.0]))
    >>> step.centroids
    tensor([[ 0.0000,  0.6667],
            [10.0000,  0.0000]])
    >>> step.weight_sums, step.labels, step.inertia
    (tensor([3., 1.]), tensor([0, 0, 1]), tensor(4., dtype=torch.float64))
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"Expected metric to be 'euclidean' or 'cosine', got {metric!r}.")
    if reassignment_ratio < 0:
        raise ValueError(f"reassignment_ratio={reassignment_ratio} should be >= 0.")
    x = v.check_data(x)
    centroids = v.check_centroids(centroids, x)
    v.check_memory_budget(memory_budget)
    b = max(x.shape[0] if x.ndim == 3 else 1, centroids.shape[0] if centroids.ndim == 3 else 1)
    k = centroids.shape[-2]
    if not isinstance(weight_sums, torch.Tensor):
        raise TypeError(
            f"Expected weight_sums to be a torch.Tensor, got {type(weight_sums).__name__}."
        )
    if tuple(weight_sums.shape) not in ((k,), (1, k), (b, k)):
        raise ValueError(
            f"Expected weight_sums to be of shape ({k},)"
            + (f" or ({b}, {k})" if b > 1 else "")
            + f", got shape {tuple(weight_sums.shape)}."
        )
    sample_weight = v.check_weight_tensor(sample_weight, x.shape[-2], b, values=False)
    return _minibatch_step(
        x,
        centroids,
        weight_sums.detach(),
        sample_weight=sample_weight,
        random_reassign=random_reassign,
        reassignment_ratio=reassignment_ratio,
        generator=generator,
        metric=metric,
        memory_budget=memory_budget,
        collective=collective,
        # Off the CPU a step reads nothing on the host: rows whose squared
        # distances underflow (float32 near 1e-25) are then not rescaled.
        differences=not _device.on_host(x.device) or not underflow_exponent_of(x, centroids),
    )


def _minibatch_step(
    x: torch.Tensor,
    centroids: torch.Tensor,
    weight_sums: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None,
    random_reassign: bool | torch.Tensor,
    reassignment_ratio: float,
    generator: torch.Generator | None,
    metric: str,
    memory_budget: int | None,
    collective: Collective,
    differences: bool = True,
    by_differences: bool | None = None,
) -> MiniBatchStep:
    """:func:`minibatch_step` on checked, detached arguments (MiniBatchKMeans'
    loop checks them once per fit: on a small batch the checks and the
    batching views of every step cost more than its search).

    ``by_differences``, when known, is :func:`_batch_by_differences` of the
    arguments (the same for every batch of a fit), whose checks took a tenth
    of a step of a small batch.

    ``differences=False`` keeps narrow rows from the kernel that scores them
    from differences: for rows whose squared differences underflow (float32
    near 1e-25, :func:`~torchkmeans.functional.distances.underflow_exponent_of`),
    which :func:`nearest_centroids` scores scaled. Off the CPU,
    ``differences=True`` (the rows' squared distances do not underflow) also
    lets the search skip its host reads."""
    batched = x.ndim == 3 or centroids.ndim == 3
    n, d, k = x.shape[-2], x.shape[-1], centroids.shape[-2]
    acc = compute_dtype(x.dtype)
    if batched:
        b = max(x.shape[0] if x.ndim == 3 else 1, centroids.shape[0] if centroids.ndim == 3 else 1)
        rows = (x if x.ndim == 3 else x.unsqueeze(0)).expand(b, -1, -1)
        old = (centroids if centroids.ndim == 3 else centroids.unsqueeze(0)).expand(b, -1, -1)
        ws = weight_sums.expand(b, k)
        weights = None if sample_weight is None else sample_weight.reshape(-1, n).expand(b, -1)
    else:
        rows, old, ws = x, centroids, weight_sums.reshape(k)
        weights = None if sample_weight is None else sample_weight.reshape(n)
    if weights is not None:
        weights = weights.to(acc)

    if by_differences is None:
        by_differences = _batch_by_differences(x, centroids, metric, differences)
    if by_differences:
        # Narrow rows or a small batch on the CPU: one kernel call labels the
        # batch from differences (exact, see nearest_centroids) and sums its
        # clusters in float64, where nearest_centroids and a scatter took
        # about twenty ops, most of a small step's time, or (up to twice
        # nearest_centroids' work, see _step_by_differences) more than the
        # pass; the update runs in float64 too.
        totals = torch.empty((k, d + 1), dtype=torch.float64, device=x.device)
        labels, distances = nearest_by_differences(x, old, weights=weights, totals=totals)
        sums, counts = totals[:, :-1], totals[:, -1]
    else:
        # On the CPU, one kernel call whose labels are certain where it
        # applies (certain_nearest; None elsewhere). Off the CPU a step reads
        # nothing on the host (MiniBatchKMeans reads its statistics every few
        # steps): its labels come from the centred expansion unchecked, as
        # those of Lloyd's iterations do, and the final labels are checked.
        found = None
        if not batched and metric == "euclidean" and differences:
            found = certain_nearest(rows.to(acc), old.to(acc))
        if found is not None:
            labels, distances = found
        else:
            labels, distances = _nearest(
                rows.to(acc),
                old.to(acc),
                metric=metric,
                memory_budget=memory_budget,
                checked=_device.on_host(x.device) or not differences,
            )
        assert distances is not None
        sums, counts = _scatter_sums(rows, labels, k, sample_weight=weights, dtype=acc)
    zero_rows = (rows == 0).all(-1) if metric == "cosine" else None

    def rows_at(picked: torch.Tensor) -> torch.Tensor:
        return rows.gather(-2, picked.unsqueeze(-1).expand(*picked.shape, d))

    return _apply_step(
        labels,
        distances,
        sums,
        counts,
        old,
        ws,
        centroids.dtype,
        weight_sums.dtype,
        acc=acc,
        weights=weights,
        rows_at=rows_at,
        zero_rows=zero_rows,
        random_reassign=random_reassign,
        reassignment_ratio=reassignment_ratio,
        generator=generator,
        metric=metric,
        collective=collective,
    )


def _apply_step(
    labels: torch.Tensor,
    distances: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    old: torch.Tensor,
    ws: torch.Tensor,
    centroids_dtype: torch.dtype,
    weight_sums_dtype: torch.dtype,
    *,
    acc: torch.dtype,
    weights: torch.Tensor | None,
    rows_at: Callable[[torch.Tensor], torch.Tensor],
    zero_rows: torch.Tensor | None,
    random_reassign: bool | torch.Tensor,
    reassignment_ratio: float,
    generator: torch.Generator | None,
    metric: str,
    collective: Collective,
    repeated_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
) -> MiniBatchStep:
    """The step's update from its assignment: ``labels`` and ``distances``
    ``(..., n)`` of the batch rows, their cluster ``sums`` ``(..., k, d)`` and
    ``counts`` ``(..., k)``; ``old`` centroids and ``ws`` weight sums.
    ``rows_at(picked)`` gives the batch rows ``picked`` ``(..., m)`` as
    ``(..., m, d)`` (reassignment), ``zero_rows`` ``(..., n)`` the cosine rows
    of zeros (None for euclidean); ``acc`` the dtype sums are exchanged in
    between ranks; ``repeated_at(picked, centroids)``, when given, the
    :func:`_repeated_rows` of the batch rows ``picked`` without their dense
    rows (sparse batches: only the reseeded rows are densified). Shared by
    dense and sparse batches."""
    n, k, d = labels.shape[-1], old.shape[-2], old.shape[-1]
    device = labels.device
    # The batch inertia in the widest float (float64 but on MPS), as KMeans'
    # inertia: summed in float32, finite squared distances near 1e36 made it
    # infinite (refused as an overflow of X by MiniBatchKMeans, whose KMeans
    # fit of the same data passed); rows scored scaled (float32 near 1e-25)
    # keep their float64 distances, which underflowed to 0 in float32.
    wide = _device.widest_float(distances.device)
    # dtype checks rather than .to calls that change nothing: on a small
    # batch each call costs as much as an op (about 1 us).
    distances = _as(distances, wide)
    inertia = (distances if weights is None else distances * weights).sum(-1)
    n_total = n
    if collective.distributed:
        # In acc on every rank: each rank's batch size picks its own path, and
        # the kernel's float64 totals would not match another rank's acc sums.
        # Summed in the inertia's wider float, then the sums back in acc: a
        # float32 all_reduce made a batch inertia past 3.4e38 infinite again.
        flat = torch.cat(
            [
                sums.reshape(-1).to(acc),
                counts.reshape(-1).to(acc),
                inertia.reshape(-1),
                inertia.new_full((1,), n),
            ]
        ).to(inertia.dtype)
        collective.all_sum(flat)
        sums = flat[: sums.numel()].view_as(sums).to(acc)
        counts = flat[sums.numel() : sums.numel() + counts.numel()].view_as(counts).to(acc)
        inertia = flat[sums.numel() + counts.numel() : -1].view_as(inertia)
        total = float(flat[-1])
        if math.isnan(total):  # a rank rejected its batch (see join_rejected_step)
            raise_rejected()
        n_total = int(total)
    work = sums.dtype
    old, ws = _as(old, work), _as(ws, work)
    new_ws = ws + counts
    filled = counts > 0
    # scikit-learn's (c * W + sum) / (W + w); a centroid without (weighted)
    # rows in the batch keeps its place exactly. Without weights, such a
    # centroid's sum is exactly 0 and (0 + c * 1) / 1 is c: no where over
    # the k x d values, which read and wrote them all again (k=20, d=50,000:
    # 1.5 ms, a fifth of a sparse step). Weights may sum to 0 over rows that
    # sum to something else (their values are not read), and unit_rows
    # rounds: those centroids are put back.
    exact = weights is None and metric == "euclidean"
    moved = sums.addcmul_(old, (torch.where(filled, ws, 1.0) if exact else ws).unsqueeze(-1))
    denominator = torch.where(filled, new_ws, 1.0).unsqueeze(-1)
    if work == centroids_dtype and not moved.is_contiguous():
        # Sums in a view of the kernel's (k, d + 1) totals: the division
        # writes the centroids contiguous, where a copy after it had been a
        # pass of its own (k=20, d=50,000: 0.3 ms of a sparse step). (Into
        # narrower centroids it would cast on the CPU through a copy.)
        moved = torch.div(
            moved, denominator, out=torch.empty_like(moved, memory_format=torch.contiguous_format)
        )
    else:
        moved = moved.div_(denominator)
    if metric == "cosine":
        moved = unit_rows(moved)
        # Only rows of zeros (no direction) in the batch, at the first step
        # (no weight yet): the centroid keeps its place rather than be zero.
        filled = filled & (moved != 0).any(-1)
    host = _device.on_host(device)
    if exact:
        new_centroids = moved
    elif host and moved.ndim == 2:
        # On the CPU a read costs nothing: only those centroids are written.
        kept = (~filled).nonzero().view(-1)
        if kept.numel():
            moved.index_copy_(0, kept, old.index_select(0, kept))
        new_centroids = moved
    else:
        new_centroids = torch.where(filled.unsqueeze(-1), moved, old)

    deferred = isinstance(random_reassign, torch.Tensor)
    to_reassign = None
    if (deferred or random_reassign) and reassignment_ratio > 0:
        if host and not deferred and new_ws.ndim == 1:
            # On the CPU a read costs nothing: when no centroid is light, skip
            # the reseeding's twenty-odd ops (and its random draw, as
            # scikit-learn does), most of a small step's time; the lightest
            # weight alone tells.
            lightest, heaviest = torch.aminmax(new_ws)
            if new_ws.dtype == torch.float64:
                # The same product and comparison in float64, on the host.
                threshold: float | torch.Tensor = reassignment_ratio * float(heaviest)
                light = float(lightest) < threshold
            else:
                threshold = reassignment_ratio * heaviest
                light = bool(lightest < threshold)
            if light:
                to_reassign = new_ws < threshold
        else:
            to_reassign = new_ws < reassignment_ratio * new_ws.amax(-1, keepdim=True)
            if deferred:
                to_reassign &= random_reassign.to(device=to_reassign.device, dtype=torch.bool)
            elif host and not bool(to_reassign.any()):
                to_reassign = None
    if to_reassign is not None:
        # At most half the batch: only the lightest int(n / 2) may move.
        rank = new_ws.argsort(dim=-1, stable=True).argsort(dim=-1)
        to_reassign &= rank < int(0.5 * n_total)
        lead = new_ws.shape[:-1]
        if n > 0:
            m = min(k, n)
            # m distinct rows per problem, drawn with probability proportional
            # to their (weighted) distance to the nearest centroid, k-means++'s
            # D^2 weighting, without replacement (keys log(u) / w, the m
            # largest): uniform rows, as scikit-learn draws, mostly land in
            # clusters that have a centroid, and a cluster without one stays
            # with the centroid between clusters its rows went to. 200,000 x
            # 128 blobs, k=1024 of 1,024-row batches, 195 steps: inertia 0.93x
            # that of uniform rows (8 seeds, each lower); rows at distance 0
            # (copies of a centroid) are never drawn before the others.
            keys = torch.rand((*lead, n), generator=generator, device=device, dtype=torch.float32)
            mass = distances if weights is None else distances * weights
            keys = torch.where(mass > 0, keys.to(mass.dtype).log_().div_(mass), float("-inf"))
            if zero_rows is not None:
                # Rows of zeros last: they would make zero centroids.
                keys = keys.masked_fill(zero_rows, float("-inf"))
            picks = keys.topk(m, dim=-1).indices
            if repeated_at is None:
                candidates = rows_at(picks)
                repeated = _repeated_rows(candidates, new_centroids.to(centroids_dtype))
            else:
                candidates, repeated = None, repeated_at(picks, new_centroids.to(centroids_dtype))
            if repeated is not None:
                # Copies last: a centroid reseeded onto a centroid, or two onto
                # copies of a row (batches are drawn with replacement), are
                # copies, whose rows all go to the first: the others stay
                # empty and light, their reseeding wasted (50 x 2000 Gaussian
                # rows, k=25: inertia 1.037x scikit-learn's, 0.97x with
                # copies last).
                order = repeated.to(torch.uint8).argsort(dim=-1, stable=True)
                picks = picks.gather(-1, order)
                if candidates is not None:
                    candidates = candidates.gather(-2, order.unsqueeze(-1).expand(*order.shape, d))
            slot = (to_reassign.cumsum(-1) - 1).clamp_(0, m - 1)
        if host and new_centroids.ndim == 2 and not collective.distributed:
            # Only the reseeded centroids are written, from only their rows,
            # where a where read and wrote all k x d values and k rows were
            # made dense (sparse batches, k=20, d=50,000: 4 ms a step; each
            # step reseeds when the batch holds 10 * k rows).
            reseeded = to_reassign.nonzero().view(-1)  # none without rows (n=0)
            if reseeded.numel():
                chosen = slot.index_select(0, reseeded)
                if candidates is None:
                    new_rows = rows_at(picks.index_select(0, chosen))
                else:
                    new_rows = candidates.index_select(0, chosen)
                new_centroids.index_copy_(0, reseeded, new_rows.to(work))
        else:
            if n > 0:
                if candidates is None:
                    new_rows = rows_at(picks.gather(-1, slot)).to(work)
                else:
                    new_rows = candidates.gather(-2, slot.unsqueeze(-1).expand(*slot.shape, d))
                    new_rows = new_rows.to(work)
            else:  # an empty shard: another rank provides the rows
                new_rows = torch.zeros((*lead, k, d), dtype=work, device=device)
            if collective.distributed:
                # The rows come from the (first) rank with the largest batch, so
                # an empty batch on rank 0 does not reseed centroids to garbage.
                sizes = collective.all_gather(torch.tensor([n], device=device)).view(-1)
                if collective.rank != int(sizes.argmax()):
                    new_rows = torch.zeros_like(new_rows)
                new_rows = collective.all_sum(new_rows.contiguous())
            new_centroids = torch.where(to_reassign.unsqueeze(-1), new_rows, new_centroids)
        inf = torch.full_like(new_ws, float("inf"))
        floor = torch.where(to_reassign, inf, new_ws).amin(-1, keepdim=True)
        floor = torch.where(torch.isinf(floor), new_ws, floor)
        new_ws = torch.where(to_reassign, floor, new_ws)

    # Contiguous: the sums, and so the centroids moved in place, may be a
    # view of the kernel's (k, d + 1) totals.
    return MiniBatchStep(
        _as(new_centroids, centroids_dtype).contiguous(),
        _as(new_ws, weight_sums_dtype),
        labels,
        inertia,
    )


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``: itself when it already is."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _repeated_rows(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor | None:
    """Which rows ``(..., n, d)`` equal a centroid ``(..., k, d)`` or an
    earlier row, ``(..., n)`` bool, compared in the centroids' dtype; None
    when none does, or off the CPU (see :func:`first_copies`)."""
    n, k = rows.shape[-2], centroids.shape[-2]
    c3 = centroids if centroids.ndim == 3 else centroids.unsqueeze(0)
    r3 = (rows if rows.ndim == 3 else rows.unsqueeze(0)).to(c3.dtype)
    b = max(c3.shape[0], r3.shape[0])
    first = first_copies(torch.cat([c3.expand(b, -1, -1), r3.expand(b, -1, -1)], dim=1))
    if first is None:
        return None
    repeated = first[:, k:] != torch.arange(k, k + n, device=first.device)
    return repeated if rows.ndim == 3 or centroids.ndim == 3 else repeated[0]


def join_rejected_step(
    centroids: torch.Tensor, weight_sums: torch.Tensor, collective: Collective
) -> None:
    """On a rank that rejected its batch: join the step's one collective with a flag.

    The other ranks, in :func:`minibatch_step` with the same ``centroids``
    ``(k, d)`` and ``weight_sums`` ``(k,)``, see the flag (a NaN batch size)
    and raise instead of waiting for this rank; nothing is updated anywhere.
    """
    if not collective.distributed:
        return
    acc = compute_dtype(centroids.dtype)
    size = centroids.numel() + weight_sums.numel() + 2  # sums, counts, inertia, n
    collective.all_sum(torch.full((size,), math.nan, dtype=acc, device=centroids.device))
