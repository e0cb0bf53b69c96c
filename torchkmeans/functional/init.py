"""Initial centroids: greedy k-means++ and random sampling without replacement.

Both run for a batch of problems at once (``b`` restarts, or ``b`` data sets)
entirely on the data's device, drawing from a ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import _validation as v
from . import _device, _native
from .distances import (
    DEFAULT_MEMORY_BUDGET,
    block_rows,
    compute_dtype,
    overflow_exponent,
    squared_norms,
    times_power_of_two,
    underflow_exponent,
)

__all__ = ["kmeans_plusplus", "random_init"]


def _sample_from_cumulative(cumulative: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Indices i with ``cumulative[i-1] < draw <= cumulative[i]`` (inverse CDF)."""
    index = torch.searchsorted(cumulative, draws.contiguous())
    return index.clamp_(max=cumulative.shape[-1] - 1)


def _gather_rows(x3: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` ``(b, m)`` of ``x3`` ``(bx, n, d)`` as ``(b, m, d)``."""
    if x3.shape[0] == 1:
        return x3[0][index]
    b, m = index.shape
    return x3.gather(1, index.unsqueeze(-1).expand(b, m, x3.shape[-1]))


@_device.full_precision
def _distances_to(
    x3: torch.Tensor, x_sq: torch.Tensor | None, points: torch.Tensor, memory_budget: int | None
) -> torch.Tensor:
    """Distances ``(b, n, m)`` from every row of ``x3`` to ``points`` ``(b, m, d)``."""
    b, m, _ = points.shape
    n = x3.shape[1]
    p_sq = squared_norms(points) if x_sq is not None else None
    rows = block_rows(
        n, b * m, itemsize=x3.element_size(), memory_budget=memory_budget, device=x3.device
    )
    # Blocks are copied into one result as they come: gathered in a list and
    # concatenated, they were held twice (elbow's 3 restarts of 4,000,000 x 2
    # float32 rows: two 85 MB copies of the blocked candidates' distances).
    out = None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        xb = x3[:, start:stop]
        if x3.shape[0] == 1:
            flat = points.reshape(b * m, -1)
            if p_sq is None:
                block = torch.mm(xb[0], flat.T)
            else:
                block = torch.addmm(p_sq.reshape(1, b * m), xb[0], flat.T, alpha=-2.0)
            block = block.view(stop - start, b, m).transpose(0, 1)
        elif p_sq is None:
            block = torch.bmm(xb, points.transpose(1, 2))
        else:
            block = torch.baddbmm(p_sq.unsqueeze(1), xb, points.transpose(1, 2), alpha=-2.0)
        if x_sq is None:
            block = block.neg_().add_(1.0).clamp_(0.0, 2.0)
        else:
            block = block.add_(x_sq[:, start:stop].unsqueeze(-1)).clamp_min_(0.0)
        if stop - start == n:
            return block
        if out is None:
            out = torch.empty((b, n, m), dtype=block.dtype, device=block.device)
        out[:, start:stop] = block
    return out


def _candidate_block_rows(n: int, candidates: int, itemsize: int, memory_budget: int | None) -> int:
    """Rows whose distances to ``candidates`` k-means++ candidates are scored
    at once: all ``n`` unless they (and their float64 sums) exceed the memory
    budget (4,000,000 x 2 float32 rows had peaked at 15x the data)."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    return max(1, min(n, budget // (candidates * (itemsize + 8))))


def _candidate_potentials(
    distances: torch.Tensor,
    closest: torch.Tensor,
    w: torch.Tensor | None,
    acc: torch.dtype,
    chunk: int,
) -> torch.Tensor:
    """Potentials ``(b, L)`` in ``acc`` of L candidates per problem: the sums
    over the rows of ``min(distances, closest)`` (``(b, n, L)``, ``(b, n)``),
    weighted by ``w`` ``(b or 1, n)``, ``chunk`` rows at a time."""
    total = torch.zeros(
        (distances.shape[0], distances.shape[2]), dtype=acc, device=distances.device
    )
    for start in range(0, distances.shape[1], chunk):
        stop = start + chunk
        part = torch.minimum(distances[:, start:stop], closest[:, start:stop].unsqueeze(-1))
        if w is not None:
            part.mul_(w[:, start:stop].unsqueeze(-1))
        total += part.sum(1, dtype=acc)
    return total


# Rows of the candidates' distances filled and summed at once on the CPU.
_SCORE_CHUNK_ROWS = 65536

# random_init draws the float64 keys of at most this many rows at once
# (of one problem at least).
_KEYS_AT_ONCE = 1 << 16

# One problem on the CPU runs _kmeans_plusplus_single (tests turn this off to
# compare it with the batched loop).
_HOST_LOOP_ON_CPU = True


def greedy_choice(
    to_candidates: torch.Tensor,
    closest: torch.Tensor,
    weight: torch.Tensor | None,
    acc: torch.dtype,
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Greedy k-means++'s pick among candidates: their distances ``(m, n)`` to
    the rows, lowered in place to the rows' ``closest`` ``(n,)``; returns the
    index of the candidate of least (``weight``-ed) potential, its closest
    distances and the potentials ``(m,)`` in ``acc``."""
    torch.minimum(to_candidates, closest, out=to_candidates)
    if weight is not None:
        candidate_potential = (to_candidates * weight).sum(1, dtype=acc)
    else:
        candidate_potential = to_candidates.sum(1, dtype=acc)
    best = int(candidate_potential.argmin())
    return best, to_candidates[best], candidate_potential


# Rows narrower than this many of the kernel's vectors take PyTorch's ops
# (see _seed_scorer), but for at most _SEED_NARROW_MAX_ROWS of them.
_SEED_MIN_ROW_VECTORS = {torch.float32: 3.0, torch.float64: 1.5}
_SEED_NARROW_MAX_ROWS = 1024

# Below this many multiply-adds per step (about a millisecond on one core)
# the native scores run on the calling thread: a parallel region per step
# cost more than it saved (10,000 x 32, 6 candidates, 2 threads on a busy
# machine: 2.6x the time of one thread).
_SEED_PARALLEL_MIN_WORK = 1 << 23


def _seed_scorer(x: torch.Tensor) -> Callable[..., None] | None:
    """The native k-means++ scoring function where it beats PyTorch's ops on
    rows like ``x`` (2-D, CPU, float32/float64, contiguous rows), else None.

    Its lanes hold features: narrow rows leave lanes idle and pay a sum
    across lanes per row and candidate, and PyTorch's float32 product is
    fast. Seeding, one thread, AVX-512, its time over PyTorch's: float32
    2-16 features 1.35-3.4, 24-32: 0.95-1.2, 48: 0.7-1.0, 64: 0.8, 128-1,024:
    0.45-0.8; float64 2-4 features 1.5-2, 8-12: 1.0, 16-48: 0.55-0.85.
    Few rows cost the same either way but for the fixed costs, fewer in the
    native loop.
    """
    if not _native.readable(x) or x.stride(-1) != 1 or x.shape[1] == 0:
        return None
    function = _native.seed_scores(x.dtype)
    if function is None:
        return None
    vectors = x.shape[1] * x.element_size() / _native.vector_bytes()
    narrow = vectors < _SEED_MIN_ROW_VECTORS[x.dtype]
    return None if narrow and x.shape[0] > _SEED_NARROW_MAX_ROWS else function


# The native loop draws the random numbers of at most this many steps at once.
_STEPS_DRAWN_AT_ONCE = 4096


def _kmeans_plusplus_native(
    scorer: Callable[..., None],
    x: torch.Tensor,
    x_sq: torch.Tensor | None,
    weight: torch.Tensor | None,
    k: int,
    trials: int,
    generator: torch.Generator | None,
    may_hold: bool,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """k-means++ indices for one problem on the CPU, its candidates scored by
    the native kernel: one pass over the rows per step (the candidates'
    distances, their minimum with the closest and their potentials at once),
    where PyTorch's ops take five, and a skinny product of (trials, d) by
    (d, n) that reached a third of the memory's speed. The same draws as
    :func:`_kmeans_plusplus_single`, drawn many steps at a time (the CPU
    generator's stream does not depend on how it is split); ``may_hold``:
    the candidates' distances fit the memory budget. ``draws``: the first
    ``(1,)`` and the steps' ``(k - 1, trials)``, drawn by the caller (one
    problem of several) instead. ``offset`` ``(d,)``: the rows are those of
    ``x - offset``, centred by the kernel as it reads them (``x_sq`` their
    squared norms): the same scores as on a centred copy, without it."""
    n, d = x.shape
    acc = torch.float64
    threads = torch.get_num_threads() if n * d * trials >= _SEED_PARALLEL_MIN_WORK else 1
    cosine = int(x_sq is None)
    # Named: the kernel reads them through pointers, which must outlive the loop.
    x_sq = None if x_sq is None else x_sq.contiguous()
    weight = None if weight is None else weight.contiguous()
    weight_ptr = None if weight is None else weight.data_ptr()
    offset = None if offset is None else offset.to(x.dtype).contiguous()
    fixed = (
        x.data_ptr(),
        x.stride(0),
        n,
        d,
        None if offset is None else offset.data_ptr(),
        None if x_sq is None else x_sq.data_ptr(),
    )
    # The candidates' distances are kept (the chosen one's become the
    # closest) where writing them costs less than reading the rows again.
    held = (
        torch.empty((trials, n), dtype=x.dtype, device=x.device)
        if d > trials and may_hold
        else None
    )
    potentials = torch.empty(trials, dtype=acc, device=x.device)
    ignored = torch.empty(1, dtype=acc, device=x.device)
    weighted = None if weight is None else torch.empty(n, dtype=x.dtype, device=x.device)
    cumulative = torch.empty(n, dtype=acc, device=x.device)

    def lower(index: torch.Tensor, out: torch.Tensor | None, sums: torch.Tensor) -> None:
        """Distances to rows ``index`` lowered to ``closest`` into ``out``
        (``(m, n)``, or None), their potentials into ``sums``."""
        scorer(
            *fixed,
            index.data_ptr(),
            index.shape[0],
            closest.data_ptr(),
            weight_ptr,
            cosine,
            threads,
            None if out is None else out.data_ptr(),
            n,
            sums.data_ptr(),
        )

    if draws is None:
        steps = min(k - 1, _STEPS_DRAWN_AT_ONCE)
        taken = torch.rand(1 + steps * trials, generator=generator, dtype=acc, device=x.device)
        first_draw, step_draws = taken[:1], taken[1:].view(steps, trials)
    else:
        (first_draw, step_draws), steps = draws, k - 1
    if weight is None:
        first = min(int(first_draw * n), n - 1)
    else:
        cumulative = weight.cumsum(0, dtype=acc)
        first = int(_sample_from_cumulative(cumulative, first_draw * cumulative[-1]))
    chosen = [first]
    closest = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    index = torch.tensor(chosen, dtype=torch.int64, device=x.device)
    lower(index, closest, potentials)
    potential = potentials[:1].clone()
    # Steps drawn so far, and the first of those in step_draws.
    drawn, offset = steps, 0
    for c in range(1, k):
        if c - 1 == drawn:
            steps = min(k - c, _STEPS_DRAWN_AT_ONCE)
            step_draws = torch.rand(
                (steps, trials), generator=generator, dtype=acc, device=x.device
            )
            drawn, offset = drawn + steps, c - 1
        row = step_draws[c - 1 - offset]
        # As the PyTorch loop rounds them: weighted in x's dtype, summed in float64.
        rows = closest if weighted is None else torch.mul(closest, weight, out=weighted)
        cumsum = cumulative.copy_(rows).cumsum_(0)
        candidates = _sample_from_cumulative(cumsum, row.mul_(potential))
        lower(candidates, held, potentials)
        best = int(potentials.argmin())
        if held is not None:
            closest.copy_(held[best])
        else:
            # The chosen one's distances again, lowered into closest in place.
            lower(candidates[best : best + 1], closest, ignored)
        potential = potentials[best : best + 1].clone()
        chosen.append(int(candidates[best]))
    return torch.tensor(chosen, dtype=torch.int64, device=x.device)


# Several CPU problems are seeded one after another by the native loop when
# all their draws, taken at once, fit in this many bytes.
_PROBLEMS_DRAWS_BYTES = 64 * 1024 * 1024


@_device.full_precision
def _kmeans_plusplus_problems(
    work: torch.Tensor,
    x_sq: torch.Tensor | None,
    w: torch.Tensor | None,
    b: int,
    k: int,
    trials: int,
    generator: torch.Generator | None,
    memory_budget: int | None,
) -> torch.Tensor | None:
    """k-means++ indices ``(b, k)`` of b CPU problems (``work`` ``(b or 1, n,
    d)``) by the native loop, one problem at a time, with the batched loop's
    draws (all taken at once: the CPU generator's stream does not depend on
    how it is split); None where the kernel is not built or the draws would
    not fit ``_PROBLEMS_DRAWS_BYTES``."""
    scorer = _seed_scorer(work[0])
    if scorer is None or 8 * b * (1 + (k - 1) * trials) > _PROBLEMS_DRAWS_BYTES:
        return None
    n = work.shape[1]
    first = torch.rand((b, 1), generator=generator, dtype=torch.float64, device=work.device)
    steps = torch.rand(
        (k - 1, b, trials), generator=generator, dtype=torch.float64, device=work.device
    )
    may_hold = _candidate_block_rows(n, trials, work.element_size(), memory_budget) >= n
    indices = torch.empty((b, k), dtype=torch.int64, device=work.device)
    for i in range(b):
        # One problem's draws: a whole row of its own, as the loop scales them in place.
        indices[i] = _kmeans_plusplus_native(
            scorer,
            work[min(i, work.shape[0] - 1)],
            None if x_sq is None else x_sq[min(i, x_sq.shape[0] - 1)],
            None if w is None else w[min(i, w.shape[0] - 1)],
            k,
            trials,
            generator,
            may_hold,
            (first[i], steps[:, i].contiguous()),
        )
    return indices


@_device.full_precision
def _kmeans_plusplus_single(
    x: torch.Tensor,
    x_sq: torch.Tensor | None,
    w: torch.Tensor | None,
    k: int,
    trials: int,
    generator: torch.Generator | None,
    acc: torch.dtype,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """k-means++ indices for one problem on the CPU, bookkeeping in Python ints.

    The same draws and arithmetic as the batched loop in :func:`kmeans_plusplus`;
    on the CPU a host-side scalar costs nothing and small tensor ops cost
    microseconds each, which dominate small problems. Where the native kernel
    is built it scores the candidates (the same arithmetic, its dot products
    summed in another order).
    """
    n = x.shape[0]
    # Distances are kept as (m, n) rows, one per candidate: the minimum with
    # the closest distances, the potential of each candidate, the chosen row
    # and its cumulative sum all run along contiguous rows. The (n, m) layout
    # of the batched loop reduces and broadcasts across a handful of columns,
    # which does not vectorise (measured 3x slower in all for 200,000 x 8, k=32).
    rows_t = x.T
    block = _candidate_block_rows(n, trials, x.element_size(), memory_budget)
    # Rows beyond one cache-sized chunk are scored a chunk at a time, their
    # distances to the candidates kept (within the budget) in one buffer so
    # the chosen one's need not be computed again. Scored at once, the whole
    # (trials, n) block was copied to float64 for its sums (4,000,000 x 2
    # float32 rows, k=8: 128 MB beside the 64 MB block, and 5x slower), and
    # the chosen row, a view, kept its whole block alive into the next round.
    chunk = min(block, _SCORE_CHUNK_ROWS)
    scorer = _seed_scorer(x) if acc == torch.float64 else None
    held = (
        torch.empty((trials, n), dtype=x.dtype, device=x.device)
        if scorer is None and n > chunk and block >= n
        else None
    )

    def distances_to(
        index: torch.Tensor, start: int = 0, stop: int = n, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(m, stop - start)`` distances from the rows ``index`` ``(m,)`` to rows start:stop."""
        # index_select: a few times cheaper than indexing with a tensor.
        points = x.index_select(0, index)
        if x_sq is None:  # cosine
            scores = torch.mm(points, rows_t[:, start:stop], out=out)
            return scores.neg_().add_(1.0).clamp_(0.0, 2.0)
        # The rows' squared norms are known already: no need to recompute them.
        point_sq = x_sq.index_select(0, index).unsqueeze(1)
        scores = torch.addmm(point_sq, points, rows_t[:, start:stop], alpha=-2.0, out=out)
        return scores.add_(x_sq[start:stop]).clamp_min_(0.0)

    weight = None if w is None else w[0]
    if scorer is not None:
        return _kmeans_plusplus_native(scorer, x, x_sq, weight, k, trials, generator, block >= n)
    draw = torch.rand((1, 1), generator=generator, dtype=acc, device=x.device)
    if weight is None:
        first = min(int(draw * n), n - 1)
    else:
        cumulative = weight.cumsum(0, dtype=acc)
        first = int(_sample_from_cumulative(cumulative, draw[0] * cumulative[-1]))
    chosen = [first]
    closest = distances_to(torch.full((1,), first, dtype=torch.int64, device=x.device))[0]
    weighted = closest if weight is None else closest * weight
    potential = weighted.sum(dtype=acc)
    # cumsum(dtype=acc) copies its input to acc first, then sums into a
    # second new tensor: for many rows one buffer, reused, holds both.
    cumulative = torch.empty(n, dtype=acc, device=x.device) if n > chunk else None
    for _ in range(1, k):
        # The same draws as (1, trials) in the batched loop.
        draws = torch.rand(trials, generator=generator, dtype=acc, device=x.device)
        if cumulative is None:
            cumsum = weighted.cumsum(0, dtype=acc)
        else:
            cumsum = cumulative.copy_(weighted).cumsum_(0)
        candidates = _sample_from_cumulative(cumsum, draws.mul_(potential))
        if n <= chunk:
            best, closest, candidate_potential = greedy_choice(
                distances_to(candidates), closest, weight, acc
            )
        else:
            candidate_potential = torch.zeros(trials, dtype=acc, device=x.device)
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                out = None if held is None else held[:, start:stop]
                part = distances_to(candidates, start, stop, out)
                torch.minimum(part, closest[start:stop], out=part)
                if weight is not None:
                    part = part * weight[start:stop]
                candidate_potential += part.sum(1, dtype=acc)
            best = int(candidate_potential.argmin())
            if held is None:
                # Beyond the budget: the chosen one's distances are computed again.
                chosen_distances = distances_to(candidates[best : best + 1])[0]
                torch.minimum(closest, chosen_distances, out=closest)
            else:
                closest.copy_(held[best])
        potential = candidate_potential[best]
        weighted = closest if weight is None else closest * weight
        chosen.append(int(candidates[best]))
    return torch.tensor(chosen, dtype=torch.int64, device=x.device)


def _seeds_less_offset(
    x: torch.Tensor,
    offset: torch.Tensor,
    x_sq: torch.Tensor,
    sample_weight: torch.Tensor | None,
    n_clusters: int,
    generator: torch.Generator | None,
    memory_budget: int | None,
) -> torch.Tensor | None:
    """:func:`kmeans_plusplus`'s centroids ``(k, d)`` for the rows of ``x -
    offset`` (``x`` ``(n, d)`` on the CPU, ``offset`` ``(d,)``, ``x_sq`` the
    centred rows' squared norms ``(n,)``, ``sample_weight`` ``(n,)`` or
    None), seeded by the native kernel, which centres the rows as it reads
    them: the same draws, scores and seeds as on a centred copy of ``x``,
    without the copy. None where the kernel would not seed such rows (see
    :func:`_seed_scorer`): the caller centres a copy then."""
    scorer = _seed_scorer(x)
    if scorer is None:
        return None
    n = x.shape[0]
    trials = 2 + int(math.log(n_clusters))
    block = _candidate_block_rows(n, trials, x.element_size(), memory_budget)
    weight = None if sample_weight is None else sample_weight.to(x.dtype)
    index = _kmeans_plusplus_native(
        scorer, x, x_sq, weight, n_clusters, trials, generator, block >= n, offset=offset
    )
    return x.index_select(0, index) - offset


def kmeans_plusplus(
    x: torch.Tensor,
    n_clusters: int,
    *,
    n_problems: int | None = None,
    sample_weight: torch.Tensor | None = None,
    x_sq_norms: torch.Tensor | None = None,
    metric: str = "euclidean",
    n_local_trials: int | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant).

    Each new centre is the best of ``n_local_trials`` candidates (default
    ``2 + int(log(k))``) sampled with probability proportional to
    ``sample_weight * D(x)``, where D is the distance to the nearest centre
    chosen so far; the candidate that lowers the potential most is kept.
    Seeding is not differentiable: the inputs are detached and the centroids
    carry no gradient.

    Parameters
    ----------
    x : Tensor
        ``(n, d)``, or ``(b, n, d)`` for b independent data sets.
    n_clusters : int
        Number of centres k.
    n_problems : int, optional
        Seed this many independent problems on a shared 2-D ``x`` (restarts);
        for a 3-D ``x``, None or its number of data sets.
    sample_weight : Tensor, optional
        ``(n,)`` or ``(b, n)`` non-negative weights.
    x_sq_norms : Tensor, optional
        Precomputed squared norms of the rows of ``x``. Without them the
        rows are scored centred on their mean (the centroids are rows of
        ``x`` as given); with them, as they are: pass centred rows and their
        norms for data far from the origin.
    metric : {"euclidean", "cosine"}
        D is the squared euclidean distance, or ``1 - cos`` on unit vectors.
    n_local_trials : int, optional
        Candidates per centre.
    generator : torch.Generator, optional
        Source of randomness, on ``x``'s device.
    memory_budget : int, optional
        Bytes for the candidate distance blocks.

    Returns
    -------
    (centroids, indices)
        ``(k, d)`` and ``(k,)`` for a single problem, else ``(b, k, d)`` and
        ``(b, k)``; ``centroids = x[indices]``.

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point tensor, or ``n_clusters``,
        ``n_problems`` or ``n_local_trials`` is not an int.
    ValueError
        If ``x`` has fewer rows than ``n_clusters``, ``metric`` is unknown,
        ``n_local_trials`` < 1, ``n_problems``, ``sample_weight`` or
        ``x_sq_norms`` do not match ``x``, or the weights are negative, NaN
        or infinite.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    >>> centroids, indices = kmeans_plusplus(x, 2, generator=g)
    >>> sorted(i // 2 for i in indices.tolist())  # one seed in each pair
    [0, 1]
    """
    x = v.check_data(x)
    k = v.check_n_clusters(n_clusters)
    if n_problems is not None:
        v.check_positive_int(n_problems, "n_problems")
    euclidean = v.check_metric(metric) == "euclidean"
    if n_local_trials is not None:
        v.check_positive_int(n_local_trials, "n_local_trials")
    v.check_memory_budget(memory_budget)
    batched = x.ndim == 3 or n_problems is not None
    x3 = x if x.ndim == 3 else x.unsqueeze(0)
    b = x3.shape[0] if x.ndim == 3 else (n_problems or 1)
    if x.ndim == 3 and n_problems is not None and n_problems != b:
        raise ValueError(
            f"Expected n_problems to match the {b} data sets of a 3-D x, got n_problems="
            f"{n_problems}; leave it None for 3-D x."
        )
    n = x3.shape[1]
    if k > n:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
    # A subsample (MiniBatchKMeans' init_size rows) may hold only zero weights.
    sample_weight = v.check_weight_tensor(
        sample_weight, n, b, positive_sum=False, dtype=compute_dtype(x.dtype)
    )
    if x_sq_norms is not None:
        if x_sq_norms.numel() != x.shape[:-1].numel():
            raise ValueError(
                f"Expected x_sq_norms to be of shape {tuple(x.shape[:-1])}, "
                f"got shape {tuple(x_sq_norms.shape)}."
            )
        x_sq_norms = x_sq_norms.detach()
    # Half precision is scored in float32, as nearest_centroids does: the
    # squared norms of float16 rows overflow from |x| ~ 256 on.
    work = x3.to(compute_dtype(x3.dtype))
    x_sq = None
    if euclidean:
        if x_sq_norms is None:
            # Scored on rows centred on their mean, as kmeans() scores them: for
            # float32 rows far from the origin (1e5 + unit noise) the expansion
            # |x|^2 - 2 x.c + |c|^2 rounds beyond the distances between blobs,
            # and the seeds fell about at random (several in one blob).
            work = work - work.mean(1, keepdim=True)
            # Squared distances of float32 rows near 1e-25 are 0, and near
            # 1e19 inf: the seeds fell at random. Scaled by a power of two
            # they are exact (the centroids are rows of x all the same).
            largest = float(work.abs().amax()) if n else 0.0
            exponent = underflow_exponent(largest, work.dtype) or overflow_exponent(
                largest, work.dtype, work.shape[-1]
            )
            work = times_power_of_two(work, exponent)
            x_sq = squared_norms(work)
        else:
            x_sq = x_sq_norms.reshape(x3.shape[0], n).to(work.dtype)
    trials = 2 + int(math.log(k)) if n_local_trials is None else int(n_local_trials)
    acc = _device.widest_float(x.device)
    w = None if sample_weight is None else sample_weight.reshape(-1, n).to(work.dtype)

    def weighted(values: torch.Tensor) -> torch.Tensor:
        """``sample_weight * values`` for values ``(b, n)`` or ``(b, n, L)``."""
        if w is None:
            return values
        return values * (w if values.ndim == 2 else w.unsqueeze(-1))

    if b == 1 and _device.on_host(x.device) and _HOST_LOOP_ON_CPU:
        index = _kmeans_plusplus_single(
            work[0], None if x_sq is None else x_sq[0], w, k, trials, generator, acc, memory_budget
        )
        centroids = x3[0][index]
        return (centroids, index) if not batched else (centroids[None], index[None])

    if _device.on_host(x.device) and _HOST_LOOP_ON_CPU and acc == torch.float64:
        index = _kmeans_plusplus_problems(work, x_sq, w, b, k, trials, generator, memory_budget)
        if index is not None:
            centroids = _gather_rows(x3, index)
            return (centroids, index) if batched else (centroids[0], index[0])
    indices = torch.empty((b, k), dtype=torch.int64, device=x.device)
    draws = torch.rand((b, 1), generator=generator, device=x.device, dtype=acc)
    if w is None:
        first = (draws * n).long().clamp_(max=n - 1)
    else:
        cumulative = w.cumsum(-1, dtype=acc).expand(b, n).contiguous()
        first = _sample_from_cumulative(cumulative, draws * cumulative[:, -1:])
    indices[:, 0] = first[:, 0]
    closest = _distances_to(work, x_sq, _gather_rows(work, first), memory_budget)[..., 0]
    potential = weighted(closest).sum(-1, keepdim=True, dtype=acc)
    rows = torch.arange(b, device=x.device)
    block = _candidate_block_rows(n, b * trials, work.element_size(), memory_budget)
    # The candidates of b problems outweigh narrow data: beyond its own size
    # they are scored in blocks too (elbow's 3 restarts of 1,000,000 x 2
    # float32 rows, 4 candidates each: 6x the data).
    block = min(block, max(_SCORE_CHUNK_ROWS, n * work.shape[-1] // (b * trials)))
    # On the CPU the candidates' potentials are summed a chunk of rows at a
    # time: summed at once, the whole (b, n, trials) block was held twice more,
    # its minimum with the closest distances and that copied to float64
    # (elbow's 3 restarts of 1,000,000 x 8 float32 rows: 144 MB beside the
    # 48 MB block). Elsewhere one launch sums it all.
    chunk = _SCORE_CHUNK_ROWS if _device.on_host(x.device) else n
    # On the CPU the problems' float64 cumulative sums are taken one problem
    # at a time: those of elbow's 3 restarts were 3x the data of 2 float32
    # features at once. Elsewhere one launch takes them all.
    one_at_a_time = _device.on_host(x.device) and b > 1
    cumulative = torch.empty((1 if one_at_a_time else b, n), dtype=acc, device=x.device)
    for c in range(1, k):
        draws = torch.rand((b, trials), generator=generator, device=x.device, dtype=acc)
        draws.mul_(potential)
        if one_at_a_time:
            candidates = torch.empty((b, trials), dtype=torch.int64, device=x.device)
            for i in range(b):
                row = closest[i : i + 1]
                if w is not None:
                    row = row * w[i : i + 1] if w.shape[0] > 1 else row * w
                # cumsum(dtype=acc) copies its input to acc first: one buffer holds both.
                cumulative.copy_(row).cumsum_(-1)
                candidates[i : i + 1] = _sample_from_cumulative(cumulative, draws[i : i + 1])
        else:
            cumulative.copy_(weighted(closest)).cumsum_(-1)
            candidates = _sample_from_cumulative(cumulative, draws)
        points = _gather_rows(work, candidates)
        if block < n:
            # Large data: the candidates' distances in blocks of rows, within
            # the memory budget, and those of the chosen one again after.
            candidate_potential = torch.zeros((b, trials), dtype=acc, device=x.device)
            for start in range(0, n, block):
                stop = min(n, start + block)
                part = _distances_to(
                    work[:, start:stop],
                    None if x_sq is None else x_sq[:, start:stop],
                    points,
                    memory_budget,
                )
                part_w = None if w is None else w[:, start:stop]
                candidate_potential += _candidate_potentials(
                    part, closest[:, start:stop], part_w, acc, chunk
                )
                # Freed before the next block is computed, not after: one
                # block of the budget at a time, not two.
                del part
            best = candidate_potential.argmin(-1)
            potential = candidate_potential[rows, best].unsqueeze(-1)
            chosen = points[rows, best].unsqueeze(1)
            # Unnamed, the chosen one's distances are freed at once, not held
            # through the next round; the minimum is taken in place (a new one
            # beside the old was the peak of elbow's seeding: 9x the data of
            # 4,000,000 x 2 float32 rows).
            torch.minimum(
                closest, _distances_to(work, x_sq, chosen, memory_budget)[..., 0], out=closest
            )
            indices[:, c] = candidates[rows, best]
            continue
        to_candidates = _distances_to(work, x_sq, points, memory_budget)
        candidate_potential = _candidate_potentials(to_candidates, closest, w, acc, chunk)
        best = candidate_potential.argmin(-1)
        potential = candidate_potential[rows, best].unsqueeze(-1)
        torch.minimum(closest, to_candidates[rows, :, best], out=closest)
        indices[:, c] = candidates[rows, best]
    centroids = _gather_rows(x3, indices)
    if not batched:
        return centroids[0], indices[0]
    return centroids, indices


def random_init(
    x: torch.Tensor,
    n_clusters: int,
    *,
    n_problems: int | None = None,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k distinct rows of ``x`` drawn without replacement, weighted by ``sample_weight``.

    Uses exponential keys (Efraimidis-Spirakis): the k largest of
    ``log(u) / w`` are a weighted sample without replacement; no limit on n.
    The inputs are detached: the centroids carry no gradient.

    Parameters
    ----------
    x : Tensor
        ``(n, d)``, or ``(b, n, d)`` for b independent data sets.
    n_clusters : int
        Number of rows k to draw.
    n_problems : int, optional
        Draw for this many independent problems on a shared 2-D ``x``; for a
        3-D ``x``, None or its number of data sets.
    sample_weight : Tensor, optional
        ``(n,)`` or ``(b, n)`` non-negative weights.
    generator : torch.Generator, optional
        Source of randomness, on ``x``'s device.

    Returns
    -------
    (centroids, indices)
        As :func:`kmeans_plusplus`.

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point tensor, or ``n_clusters`` or
        ``n_problems`` is not an int.
    ValueError
        If ``x`` is not 2-D or 3-D, has fewer rows than ``n_clusters``, or
        ``sample_weight`` does not match it or is negative, NaN or infinite.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> centroids, indices = random_init(torch.arange(10.0).reshape(5, 2), 3, generator=g)
    >>> centroids.shape, len(set(indices.tolist()))
    (torch.Size([3, 2]), 3)
    """
    x = v.check_data(x)
    n_clusters = v.check_n_clusters(n_clusters)
    if n_problems is not None:
        v.check_positive_int(n_problems, "n_problems")
    batched = x.ndim == 3 or n_problems is not None
    x3 = x if x.ndim == 3 else x.unsqueeze(0)
    b = x3.shape[0] if x.ndim == 3 else (n_problems or 1)
    if x.ndim == 3 and n_problems is not None and n_problems != b:
        raise ValueError(
            f"Expected n_problems to match the {b} data sets of a 3-D x, got n_problems="
            f"{n_problems}; leave it None for 3-D x."
        )
    n = x3.shape[1]
    if n_clusters > n:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")
    # A subsample (MiniBatchKMeans' init_size rows) may hold only zero weights.
    # Keys are drawn in float64, whatever x's dtype.
    sample_weight = v.check_weight_tensor(
        sample_weight, n, b, positive_sum=False, dtype=torch.float64
    )
    weights = None if sample_weight is None else sample_weight.reshape(-1, n).to(torch.float64)
    # The keys of a few problems at a time (the same draws, in the same
    # order): those of all b at once took b x n float64 (10 restarts of
    # 4,000,000 rows: 10x the data of 2 float32 features).
    group = max(1, min(b, _KEYS_AT_ONCE // max(1, n)))
    parts = []
    for start in range(0, b, group):
        stop = min(b, start + group)
        keys = torch.rand(
            (stop - start, n), generator=generator, device=x.device, dtype=torch.float64
        )
        keys = keys.clamp_(min=torch.finfo(torch.float64).tiny).log_()
        if weights is not None:
            keys = keys.div_(weights if weights.shape[0] == 1 else weights[start:stop])
        parts.append(keys.topk(n_clusters, dim=-1).indices)
    indices = parts[0] if len(parts) == 1 else torch.cat(parts)
    centroids = _gather_rows(x3, indices)
    if not batched:
        return centroids[0], indices[0]
    return centroids, indices
