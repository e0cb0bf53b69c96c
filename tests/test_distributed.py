"""Distributed fits: 2 gloo processes on the CPU, each with its shard, against one process."""

from __future__ import annotations

import datetime
import os
import pickle
import re
import socket
import time
import traceback
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import copies_found_on_the_cpu, on_the_cpu_paths_only
from sklearn.datasets import load_digits, make_blobs

from torchkmeans import KMeans, MiniBatchKMeans, VectorQuantizer, elbow
from torchkmeans.distributed import ProcessGroupCollective, collective

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)

WORLD = 2
TIMEOUT = 120  # seconds for a whole scenario; CI must never hang


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def blobs(n=3000, d=5, centers=6, seed=0):
    X, _ = make_blobs(n_samples=n, n_features=d, centers=centers, random_state=seed)
    return X


def shards(X, sizes):
    """Uneven shards: rank r gets sizes[r] consecutive rows."""
    edges = np.cumsum([0, *sizes])
    return [X[edges[r] : edges[r + 1]] for r in range(len(sizes))]


# ------------------------------------------------------------------ scenarios (run on every rank)


def fit_from_given_centroids(rank, tmp):
    X = blobs()
    part = shards(X, [1000, 2000])[rank]
    weights = np.linspace(0.5, 2.0, len(X))
    w_part = shards(weights, [1000, 2000])[rank]
    out = {}
    for metric in ("euclidean", "cosine"):
        km = KMeans(6, init=X[:6], metric=metric).fit(part, sample_weight=w_part)
        out[metric] = (km.cluster_centers_, km.labels_, km.inertia_, km.n_iter_)
    return out


def kmeans_plusplus_across_ranks(rank, tmp):
    X = blobs(n=4000, d=8, centers=10, seed=1)
    part = shards(X, [2500, 1500])[rank]
    results = []
    for init in ("k-means++", "random"):
        km = KMeans(10, init=init, n_init=3, random_state=0).fit(part)
        results.append((km.cluster_centers_, km.labels_, km.inertia_))
    return results


def empty_shard(rank, tmp):
    X = blobs(n=500)
    part = X if rank == 0 else X[:0]
    km = KMeans(6, init=X[:6]).fit(part)
    pp = KMeans(6, random_state=0).fit(part)
    return km.cluster_centers_, km.labels_, km.inertia_, pp.cluster_centers_, pp.inertia_


def init_of_each_rank(rank, tmp):
    # Each rank passes the first rows of its shard and a far centre of its own.
    X, _, centres = make_blobs(
        n_samples=3000, n_features=5, centers=6, random_state=0, return_centers=True
    )
    part = shards(X, [1500, 1500])[rank]
    init = np.vstack([part[:7], np.full((1, 5), 100.0 + rank)])
    mbk = MiniBatchKMeans(8, init=init, reassignment_ratio=0.0, random_state=0)
    for start in range(0, 1500, 300):
        mbk.partial_fit(part[start : start + 300])
    # Rank 0 starts on the centres and stops after an iteration, rank 1 did not.
    km = KMeans(6, init=centres + 3.0 * rank, tol=0.05).fit(part)
    return mbk.cluster_centers_, km.cluster_centers_, km.n_iter_


def weights_of_a_shard_sum_to_zero(rank, tmp):
    # Rank 0's shard is empty (its weights too), rank 1's weighs nothing at
    # first: each rank refused its weights' zero sum, which only the total must not be.
    X = blobs()
    part = shards(X, [0, 3000])[rank]
    weights = np.ones(len(part))
    weights[:1500] = 0.0
    km = KMeans(6, init=X[:6]).fit(part, sample_weight=weights)
    zero = _error_of(lambda: KMeans(6, init=X[:6]).fit(part, sample_weight=np.zeros(len(part))))
    mbk = MiniBatchKMeans(6, init=X[:6], reassignment_ratio=0.0, random_state=0)
    for start in range(0, 3000, 300):
        batch = X[start : start + 100] if rank == 0 else X[start + 100 : start + 300]
        mbk.partial_fit(batch, sample_weight=np.full(len(batch), float(rank == 1 or start > 0)))
    return km.cluster_centers_, km.inertia_, zero, mbk.cluster_centers_


def fewer_distinct_clusters(rank, tmp):
    # 3 distinct points, repeated, for 4 clusters: one process warns, the
    # ranks did not (a shard may see fewer clusters than the ranks together).
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]), 20, axis=0)
    part = X[:30] if rank == 0 else X[30:]
    separate = np.array([[0.0, 0.0], [0.0, 5.0]]) if rank == 0 else np.array([[5.0, 0.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KMeans(4, init=X[[0, 20, 40, 41]]).fit(part)
        duplicates = [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KMeans(2, init=[[0.0, 0.0], [5.0, 0.0]]).fit(separate)  # one cluster per rank
        separated = [str(w.message) for w in caught]
    return duplicates, separated


def memmap_shards(rank, tmp):
    X = blobs()
    part = shards(X, [1200, 1800])[rank]
    path = os.path.join(tmp, f"shard{rank}.dat")
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=part.shape)
    mm[:] = part
    mm.flush()
    ro = np.memmap(path, dtype=np.float64, mode="r", shape=part.shape)
    km = KMeans(6, init=X[:6]).fit(ro)
    return km.cluster_centers_, km.labels_, km.inertia_


def sparse_shards(rank, tmp):
    import scipy.sparse

    X = np.where(load_digits().data > 8, load_digits().data, 0.0)
    part = scipy.sparse.csr_matrix(shards(X, [700, 1097])[rank])
    # Rank 1's shard is read as dense chunks; rank 0's fits the budget and is densified.
    budget = None if rank == 0 else 10_000
    km = KMeans(10, init=X[:10], memory_budget=budget).fit(part)
    return km.cluster_centers_, km.labels_, km.inertia_


def empty_clusters_reseeded(rank, tmp):
    X = blobs()
    part = shards(X, [1500, 1500])[rank]
    init = np.vstack([X[:5], X[:1]])  # a duplicate: one cluster starts empty
    km = KMeans(6, init=init).fit(part)
    return km.cluster_centers_, km.labels_


def minibatch_partial_fit(rank, tmp):
    X = load_digits().data
    batches = [X[i : i + 100] for i in range(0, 1600, 100)]
    local = [b[:40] if rank == 0 else b[40:] for b in batches]
    mbk = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for batch in local:
        mbk.partial_fit(batch)
    seeded = MiniBatchKMeans(10, random_state=0, reassignment_ratio=0.0)
    for batch in local[:3]:
        seeded.partial_fit(batch)
    reassigning = MiniBatchKMeans(10, random_state=0, reassignment_ratio=0.5)
    for batch in local:
        reassigning.partial_fit(batch)
    return mbk.cluster_centers_, seeded.cluster_centers_, reassigning.cluster_centers_


def minibatch_empty_batches(rank, tmp):
    X = load_digits().data
    batches = [X[i : i + 100] for i in range(0, 1600, 100)]
    # Rank 0's batch is empty at every third step (the first too), rank 1's at the others.
    local = [b if (rank == 0) == (i % 3 != 0) else b[:0] for i, b in enumerate(batches)]
    given = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    reassigning = MiniBatchKMeans(10, random_state=0, reassignment_ratio=0.5)
    for batch in local:
        given.partial_fit(batch)
        reassigning.partial_fit(batch)
    return given.cluster_centers_, reassigning.cluster_centers_


def minibatch_fit_on_iterables_of_other_lengths(rank, tmp):
    # Rank 0 yields 4 batches, rank 1 yields 12; rank 0's ended after its
    # fourth step while rank 1 waited for the fifth until the group's timeout.
    X = load_digits().data
    batches = [X[i : i + 100] for i in range(0, 1600, 100)]
    local = [b[:40] for b in batches[:4]] if rank == 0 else [b[40:] for b in batches[:12]]
    fitted = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    fitted.fit(iter(local))
    partial = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    partial.partial_fit(iter(local))
    none = _error_of(lambda: MiniBatchKMeans(10).fit(iter(local if rank == 0 else [])))
    return fitted.cluster_centers_, fitted.n_steps_, partial.cluster_centers_, none


def minibatch_fit_on_iterables_of_lists(rank, tmp):
    # Rows as lists: rank 0's iterable ends after 2 batches and its empty
    # batch in the next steps was [], 1-D, refused by every step.
    X = load_digits().data
    batches = [X[i : i + 100] for i in range(0, 400, 100)]
    local = (
        [b[:40].tolist() for b in batches[:2]] if rank == 0 else [b[40:].tolist() for b in batches]
    )
    fitted = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    fitted.fit(iter(local))
    return fitted.cluster_centers_, fitted.n_steps_


def minibatch_float32_uneven_batches(rank, tmp):
    # float32 rows, 64 features, k=10: a batch of 100 rows is scored by the
    # kernel from differences (float64 totals), one of 1,697 rows by
    # nearest_centroids and a scatter (float32 sums); rank 0's second batch is empty.
    X = load_digits().data.astype(np.float32)
    batches = [X[:100], X[:0]] if rank == 0 else [X[100:], X[100:]]
    mbk = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for batch in batches:
        mbk.partial_fit(batch)
    return mbk.cluster_centers_


def minibatch_batch_inertia_beyond_float32(rank, tmp):
    # float32 rows x 2^60: squared distances near 1e37 are finite in float32,
    # the sum of a batch's is not.
    X = blobs(n=2000, d=4, centers=8).astype(np.float32) * np.float32(2.0**60)
    mbk = MiniBatchKMeans(8, init=X[:8], reassignment_ratio=0.0, random_state=0)
    for start in range(0, 2000, 500):
        batch = X[start : start + 500]
        mbk.partial_fit(batch[:200] if rank == 0 else batch[200:])
    return mbk.cluster_centers_, mbk.inertia_


def minibatch_inertia_of_the_batch(rank, tmp):
    # compute_labels: labels_ are the local rows', inertia_ that of the whole batch.
    X = load_digits().data
    local = [X[i : i + 100][:30] if rank == 0 else X[i : i + 100][30:] for i in range(0, 500, 100)]
    mbk = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    out = []
    for batch in local:
        mbk.partial_fit(batch)
        out.append((mbk.inertia_, mbk.labels_))
    return out


def minibatch_seeds_far_from_the_origin(rank, tmp):
    # float32 rows 1e5 + well-separated blobs, half a batch on each rank.
    X, _ = far_blobs()
    part = shards(X, [200, 200])[rank]
    out = []
    for seed in range(4):
        mbk = MiniBatchKMeans(4, random_state=seed, reassignment_ratio=0.0)
        out.append(mbk.partial_fit(part).cluster_centers_)
    return out


def far_blobs():
    X, _, centres = make_blobs(
        n_samples=400,
        n_features=2,
        centers=4,
        center_box=(-20, 20),
        random_state=1,
        return_centers=True,
    )
    return (1e5 + X).astype(np.float32), 1e5 + centres


def _rejected_then_in_step(rank, first, later):
    """``first`` batch, then ``later`` (rejected on some rank), then a good batch."""
    X = load_digits().data
    mbk = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.5, random_state=0)
    outcome = _error_of(lambda: mbk.partial_fit(first))
    if later is not None:
        outcome = _error_of(lambda: mbk.partial_fit(later))
    for start in range(300, 800, 100):  # the ranks are still in step
        mbk.partial_fit(X[start : start + 100])
    return outcome, mbk.cluster_centers_


def minibatch_nan_in_the_first_batch(rank, tmp):
    X = load_digits().data[:200].copy()
    if rank == 1:
        X[3, 3] = np.nan
    return _rejected_then_in_step(rank, X, None)


def minibatch_later_batch_with_other_features(rank, tmp):
    X = load_digits().data
    return _rejected_then_in_step(rank, X[:100], X[100:200] if rank == 0 else X[100:200, :60])


def minibatch_nan_in_a_later_batch(rank, tmp):
    X = load_digits().data[:200].copy()
    if rank == 0:
        X[150, 3] = np.inf
    return _rejected_then_in_step(rank, X[:100], X[100:])


def elbow_sweep(rank, tmp):
    X = blobs(n=2000, d=4, centers=4, seed=3)
    part = shards(X, [900, 1100])[rank]
    result = elbow(part, k=range(1, 8), n_init=2, random_state=0)
    return result.inertia, result.knee, [c for c in result.centroids], result.labels


def elbow_memmap_shards(rank, tmp):
    # As a memmap in one process: swept in passes, never loaded whole (it
    # was loaded on shards, with copies of about nine times its size).
    from torchkmeans import _validation

    X = blobs(n=2000, d=4, centers=4, seed=3)
    part = shards(X, [900, 1100])[rank]
    path = os.path.join(tmp, f"elbow{rank}.dat")
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=part.shape)
    mm[:] = part
    mm.flush()
    as_tensor = _validation.as_tensor

    def refuse_memmaps(X, *args, **kwargs):
        if isinstance(X, np.memmap):
            raise RuntimeError("the memmap was loaded whole")
        return as_tensor(X, *args, **kwargs)

    _validation.as_tensor = refuse_memmaps
    ro = np.memmap(path, dtype=np.float64, mode="r", shape=part.shape)
    result = elbow(ro, k=range(1, 8), n_init=2, random_state=0)
    return result.inertia, result.knee, result.labels


def elbow_one_dimensional_shard_on_one_rank(rank, tmp):
    X = blobs(n=200)
    return _error_of(lambda: elbow(X if rank == 0 else X[:, 0], k=range(1, 5), random_state=0))


def elbow_other_sweeps(rank, tmp):
    # Rank 0 would be done after 4 fits while rank 1 waits for a fifth.
    X = blobs(n=200)
    return _error_of(lambda: elbow(X, k=range(1, 5 + rank), random_state=0))


def mismatched_features(rank, tmp):
    X = blobs()
    part = X[:100] if rank == 0 else X[:100, :4]
    return _error_of(lambda: KMeans(3, random_state=0).fit(part))


def mismatched_clusters(rank, tmp):
    X = blobs()
    return _error_of(lambda: KMeans(3 + rank, random_state=0).fit(X[:100]))


def mismatched_dtype(rank, tmp):
    X = blobs()[:100]
    return _error_of(
        lambda: KMeans(3, random_state=0).fit(X.astype([np.float64, np.float32][rank]))
    )


def mismatched_tol(rank, tmp):
    # Another tol stops one rank's iterations earlier: its all_reduce would be missing.
    X = blobs()
    return _error_of(lambda: KMeans(6, init=X[:6], tol=[1e-4, 0.5][rank]).fit(X[:1000]))


def _minibatch_reseeding(rank, **params):
    # 12 centres on 6 blobs: light centres are reseeded, in steps that take
    # two more collectives; half of each batch on each rank.
    X = blobs()
    mbk = MiniBatchKMeans(12, random_state=0, **params)
    for start in range(0, 3000, 300):
        mbk.partial_fit(X[start : start + 300][rank * 150 : (rank + 1) * 150])


def mismatched_batch_size(rank, tmp):
    # batch_size sets how often a step reseeds: one rank's reseeding step waited for the other.
    return _error_of(lambda: _minibatch_reseeding(rank, batch_size=[20, 2000][rank]))


def mismatched_reassignment_ratio(rank, tmp):
    return _error_of(lambda: _minibatch_reseeding(rank, reassignment_ratio=[0.3, 0.0][rank]))


def mismatched_init(rank, tmp):
    # An array on rank 0, k-means++ on rank 1: rank 1's seeding collectives
    # met rank 0's first iteration, and gloo aborted both processes.
    X = blobs()
    return _error_of(lambda: KMeans(6, init=X[:6] if rank == 0 else "k-means++").fit(X[:100]))


def mismatched_minibatch_init(rank, tmp):
    X = blobs()
    init = X[:6] if rank == 0 else "k-means++"
    return _error_of(lambda: MiniBatchKMeans(6, init=init, random_state=0).partial_fit(X[:100]))


def minibatch_bad_init_on_one_rank(rank, tmp):
    # Rank 1's array is refused (shape, NaN): it raised alone and rank 0
    # waited in the broadcast of rank 0's array until the group's timeout.
    X = blobs()
    shape = X[:6] if rank == 0 else X[:5]
    nan = X[:6].copy()
    if rank == 1:
        nan[2, 1] = np.nan
    return [
        _error_of(lambda init=init: MiniBatchKMeans(6, init=init).partial_fit(X[:100]))
        for init in (shape, nan)
    ]


def nan_on_one_rank(rank, tmp):
    X = blobs()[:100].copy()
    if rank == 1:
        X[5, 2] = np.nan
    return _error_of(lambda: KMeans(3, random_state=0).fit(X))


def negative_weight_on_one_rank(rank, tmp):
    X = blobs()[:100]
    weights = np.ones(100)
    if rank == 1:
        weights[7] = -1.0
    return _error_of(lambda: KMeans(3, random_state=0).fit(X, sample_weight=weights))


def one_dimensional_shard_on_one_rank(rank, tmp):
    X = blobs()[:100]
    return _error_of(lambda: KMeans(3, random_state=0).fit(X if rank == 0 else X[:, 0]))


def explicit_group(rank, tmp):
    group = dist.new_group([0, 1])
    X = blobs()
    part = shards(X, [1000, 2000])[rank]
    km = KMeans(6, init=X[:6], process_group=group).fit(part)
    alone = KMeans(6, init=X[:6], process_group=None).fit(part)
    c = collective(group)
    return km.cluster_centers_, alone.cluster_centers_, type(c).__name__, c.world_size


def quantizer_empty_batches(rank, tmp):
    # Batches of uneven sizes, each rank's sometimes empty (rank 0's on the
    # first, initialising step): raising there left the other rank waiting.
    torch.manual_seed(rank)
    X = torch.as_tensor(blobs(n=400, d=6, seed=rank), dtype=torch.float32)
    vq = VectorQuantizer(8, 3, heads=2, dead_code_threshold=0.5)
    losses = []
    for step in range(6):
        n = 0 if (step + rank) % 3 == 0 else 20 + 30 * rank
        x = X[step * 60 : step * 60 + n].clone().requires_grad_()
        quantized, codes, loss = vq(x)
        loss.backward()
        assert quantized.shape == (n, 6) and codes.shape == (n, 2) and x.grad.shape == (n, 6)
        losses.append(float(loss))
    return vq.codebook, vq.ema_counts, losses


def quantizer_collecting_for_the_init(rank, tmp):
    # The ranks hold fewer vectors than codes: rank 0 collects another batch
    # before the k-means init, and meanwhile every rank quantizes with its codes.
    torch.manual_seed(rank)
    X = torch.as_tensor(blobs(n=100, d=3, seed=rank), dtype=torch.float32)
    vq = VectorQuantizer(8, 3)
    vq(X[: 5 if rank == 0 else 2])
    state = {name: buffer.clone() for name, buffer in vq.state_dict().items()}
    vq(X[50:])
    return state, bool(vq.initialized), vq.codebook


def quantizer_init_from_every_rank(rank, tmp):
    # Shards from different sources: rank 0's blobs around one point, rank
    # 1's far away. The k-means init saw rank 0's batch only: every code lay
    # among rank 0's blobs.
    torch.manual_seed(rank)
    X, _ = make_blobs(n_samples=200, n_features=4, centers=4, random_state=rank)
    X = torch.as_tensor(X + 100.0 * rank, dtype=torch.float32)
    vq = VectorQuantizer(8, 4)
    vq(X[:100])
    nan = X[100:].clone()
    nan[3, 1] = float("nan") if rank == 1 else 0.0
    rejected = _error_of(lambda: VectorQuantizer(8, 4)(nan))
    error = ((vq.eval()(X[100:]).quantized - X[100:]) ** 2).sum(-1).mean()
    return vq.codebook, float(error), rejected


def _error_of(work):
    try:
        work()
    except ValueError as exc:
        return ("ValueError", str(exc))
    return ("no error", "")


SCENARIOS = {
    f.__name__: f
    for f in (
        fit_from_given_centroids,
        kmeans_plusplus_across_ranks,
        empty_shard,
        init_of_each_rank,
        weights_of_a_shard_sum_to_zero,
        fewer_distinct_clusters,
        memmap_shards,
        sparse_shards,
        empty_clusters_reseeded,
        minibatch_partial_fit,
        minibatch_empty_batches,
        minibatch_fit_on_iterables_of_other_lengths,
        minibatch_fit_on_iterables_of_lists,
        minibatch_float32_uneven_batches,
        minibatch_batch_inertia_beyond_float32,
        minibatch_inertia_of_the_batch,
        minibatch_seeds_far_from_the_origin,
        minibatch_nan_in_the_first_batch,
        minibatch_later_batch_with_other_features,
        minibatch_nan_in_a_later_batch,
        elbow_sweep,
        elbow_memmap_shards,
        elbow_one_dimensional_shard_on_one_rank,
        elbow_other_sweeps,
        mismatched_features,
        mismatched_clusters,
        mismatched_dtype,
        mismatched_tol,
        mismatched_batch_size,
        mismatched_reassignment_ratio,
        mismatched_init,
        mismatched_minibatch_init,
        minibatch_bad_init_on_one_rank,
        nan_on_one_rank,
        negative_weight_on_one_rank,
        one_dimensional_shard_on_one_rank,
        explicit_group,
        quantizer_empty_batches,
        quantizer_collecting_for_the_init,
        quantizer_init_from_every_rank,
    )
}


def _worker(rank, name, port, tmp):
    torch.set_num_threads(1)
    outcome = None
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=60),
        )
        outcome = ("ok", SCENARIOS[name](rank, tmp))
    except BaseException:
        outcome = ("crash", traceback.format_exc())
    finally:
        with open(os.path.join(tmp, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(outcome, f)
        if dist.is_initialized():
            dist.destroy_process_group()


# The ranks are forked from one server process that imported torch, the
# package and this module once: spawned afresh, each rank of each of the ~45
# scenarios imported them again (~2.5 of its ~3.5 s on CI's 2 cores).
_START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
if _START_METHOD == "forkserver":
    mp.set_forkserver_preload(["torch", "numpy", "sklearn.datasets", "torchkmeans", __name__])


def run_ranks(name, tmp_path):
    """Every rank's result of scenario ``name``; the processes are killed after TIMEOUT."""
    context = mp.start_processes(
        _worker,
        args=(name, free_port(), str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method=_START_METHOD,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"scenario {name} did not finish in {TIMEOUT} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    outcomes = []
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            status, value = pickle.load(f)
        assert status == "ok", value
        outcomes.append(value)
    return outcomes


# ------------------------------------------------------------------ tests


def test_no_process_group_means_a_local_fit():
    assert collective("auto").world_size == 1 and not collective(None).distributed
    with pytest.raises(ValueError, match=r"Expected process_group to be 'auto', None or a"):
        collective("nccl")
    with pytest.raises(ValueError, match=r"Expected torch.distributed to be initialised"):
        collective(object())
    with pytest.raises(ValueError, match=r"Expected process_group to be 'auto', None or a"):
        KMeans(2, process_group="world").fit(np.eye(4))


def test_fit_on_shards_equals_one_process_on_the_concatenation(tmp_path):
    ranks = run_ranks("fit_from_given_centroids", tmp_path)
    X = blobs()
    weights = np.linspace(0.5, 2.0, len(X))
    for metric in ("euclidean", "cosine"):
        single = KMeans(6, init=X[:6], metric=metric).fit(X, sample_weight=weights)
        (c0, l0, i0, n0), (c1, l1, i1, n1) = ranks[0][metric], ranks[1][metric]
        np.testing.assert_array_equal(c0, c1)  # identical on every rank
        np.testing.assert_allclose(c0, single.cluster_centers_, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(np.concatenate([l0, l1]), single.labels_)
        assert i0 == i1 == pytest.approx(single.inertia_, rel=1e-10)
        assert n0 == n1 == single.n_iter_


def test_kmeans_plusplus_and_random_seeding_across_ranks(tmp_path):
    ranks = run_ranks("kmeans_plusplus_across_ranks", tmp_path)
    X = blobs(n=4000, d=8, centers=10, seed=1)
    best = KMeans(10, n_init=3, random_state=0).fit(X).inertia_
    for (c0, l0, i0), (c1, l1, i1) in zip(*ranks):
        np.testing.assert_array_equal(c0, c1)
        assert i0 == i1
        d2 = ((X[:, None, :] - c0[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(np.concatenate([l0, l1]), d2.argmin(1))
        assert i0 == pytest.approx(d2.min(1).sum(), rel=1e-10)
    # k-means++ over the shards is as good as over the whole data
    assert ranks[0][0][2] <= 1.01 * best


def test_a_rank_with_an_empty_shard_takes_part(tmp_path):
    (c0, l0, i0, p0, pi0), (c1, l1, i1, p1, pi1) = run_ranks("empty_shard", tmp_path)
    X = blobs(n=500)
    single = KMeans(6, init=X[:6]).fit(X)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(l0, single.labels_)
    assert l1.shape == (0,) and i0 == i1 == pytest.approx(single.inertia_, rel=1e-10)
    np.testing.assert_array_equal(p0, p1)
    assert pi0 == pi1
    assert pi0 <= 1.01 * KMeans(6, random_state=0).fit(X).inertia_


def test_an_init_array_is_that_of_rank_0(tmp_path):
    """Init arrays that differ by rank: a centre no row reached stayed each
    rank's own (MiniBatchKMeans), and KMeans' ranks stopped at different
    iterations, which aborted the process in the next mismatched collective."""
    (m0, k0, n0), (m1, k1, n1) = run_ranks("init_of_each_rank", tmp_path)
    X, _, centres = make_blobs(
        n_samples=3000, n_features=5, centers=6, random_state=0, return_centers=True
    )
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(m0[-1], np.full(5, 100.0))
    np.testing.assert_array_equal(k0, k1)
    single = KMeans(6, init=centres, tol=0.05).fit(X)
    assert n0 == n1 == single.n_iter_
    np.testing.assert_allclose(k0, single.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_the_weights_of_one_shard_may_sum_to_zero(tmp_path):
    (c0, i0, z0, m0), (c1, i1, z1, m1) = run_ranks("weights_of_a_shard_sum_to_zero", tmp_path)
    X = blobs()
    weights = np.ones(3000)
    weights[:1500] = 0.0
    single = KMeans(6, init=X[:6]).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert i0 == i1 == pytest.approx(single.inertia_, rel=1e-10)
    for kind, text in (z0, z1):  # all ranks' weights zero: refused on every rank
        assert kind == "ValueError" and "positive sum, got all weights zero" in text
    mbk = MiniBatchKMeans(6, init=X[:6], reassignment_ratio=0.0, random_state=0)
    for start in range(0, 3000, 300):
        batch = X[start : start + 300]
        weights = np.ones(300)
        weights[:100] = float(start > 0)
        mbk.partial_fit(batch, sample_weight=weights)
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_allclose(m0, mbk.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_fewer_distinct_clusters_are_counted_over_the_ranks(tmp_path):
    for duplicates, separated in run_ranks("fewer_distinct_clusters", tmp_path):
        assert any(
            "Number of distinct clusters (3) found smaller than n_clusters (4)" in m
            for m in duplicates
        ), duplicates
        assert not any("distinct clusters" in m for m in separated), separated


def test_memmap_shards_stream_and_agree(tmp_path):
    (c0, l0, i0), (c1, l1, i1) = run_ranks("memmap_shards", tmp_path)
    X = blobs()
    single = KMeans(6, init=X[:6]).fit(X)
    assert i0 == i1 == pytest.approx(single.inertia_, rel=1e-10)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(np.concatenate([l0, l1]), single.labels_)


def test_sparse_shards_agree_with_one_process(tmp_path):
    (c0, l0, i0), (c1, l1, i1) = run_ranks("sparse_shards", tmp_path)
    X = np.where(load_digits().data > 8, load_digits().data, 0.0)
    single = KMeans(10, init=X[:10]).fit(X)
    assert i0 == i1 == pytest.approx(single.inertia_, rel=1e-10)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(np.concatenate([l0, l1]), single.labels_)


@copies_found_on_the_cpu
def test_empty_clusters_are_reseeded_from_the_farthest_point_of_any_rank(tmp_path):
    (c0, l0), (c1, l1) = run_ranks("empty_clusters_reseeded", tmp_path)
    X = blobs()
    single = KMeans(6, init=np.vstack([X[:5], X[:1]])).fit(X)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(np.concatenate([l0, l1]), single.labels_)


def test_minibatch_partial_fit_on_shards_equals_the_concatenated_batches(tmp_path):
    ranks = run_ranks("minibatch_partial_fit", tmp_path)
    X = load_digits().data
    single = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for i in range(0, 1600, 100):
        single.partial_fit(X[i : i + 100])
    for r in range(WORLD):
        np.testing.assert_allclose(ranks[r][0], single.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(ranks[0][1], ranks[1][1])  # k-means++ over the ranks
    np.testing.assert_array_equal(ranks[0][2], ranks[1][2])  # reseeding keeps ranks equal
    assert not np.isnan(ranks[0][2]).any()


def test_minibatch_partial_fit_with_empty_batches_on_either_rank(tmp_path):
    (g0, r0), (g1, r1) = run_ranks("minibatch_empty_batches", tmp_path)
    X = load_digits().data
    single = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for i in range(0, 1600, 100):
        single.partial_fit(X[i : i + 100])
    np.testing.assert_array_equal(g0, g1)
    np.testing.assert_allclose(g0, single.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(r0, r1)
    assert np.isfinite(r0).all()
    # reseeded centres are rows of the data, never the zero placeholder
    assert not (r0 == 0).all(axis=1).any()


def test_minibatch_fit_on_iterables_of_lists_of_other_lengths_on_the_ranks(tmp_path):
    """Batches of rows as lists: a rank out of them joins with (0, d) empty ones."""
    (c0, n0), (c1, n1) = run_ranks("minibatch_fit_on_iterables_of_lists", tmp_path)
    X = load_digits().data
    single = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for i in range(0, 400, 100):
        single.partial_fit(X[i : i + 100] if i < 200 else X[i + 40 : i + 100])
    np.testing.assert_array_equal(c0, c1)
    assert n0 == n1 == 4
    np.testing.assert_allclose(c0, single.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_minibatch_fit_on_iterables_of_other_lengths_on_the_ranks(tmp_path):
    """A rank whose iterable ends first joins the others' remaining steps
    with empty batches: every step is that of the ranks' rows together."""
    (c0, n0, p0, e0), (c1, n1, p1, e1) = run_ranks(
        "minibatch_fit_on_iterables_of_other_lengths", tmp_path
    )
    X = load_digits().data
    single = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for i in range(0, 1200, 100):
        single.partial_fit(X[i : i + 100] if i < 400 else X[i + 40 : i + 100])
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_array_equal(p0, p1)
    assert n0 == n1 == 12
    np.testing.assert_allclose(c0, single.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p0, single.cluster_centers_, rtol=1e-10, atol=1e-10)
    for kind, text in (e0, e1):
        assert kind == "ValueError"
        assert re.search(
            r"Expected X to yield at least one batch on every rank, got none on 1", text
        )


def test_minibatch_float32_batches_of_uneven_sizes_on_the_ranks(tmp_path):
    """Each rank's batch takes the step's path its size picks; the sums they
    all_reduce must still be of one dtype on every rank."""
    c0, c1 = run_ranks("minibatch_float32_uneven_batches", tmp_path)
    X = load_digits().data.astype(np.float32)
    single = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    single.partial_fit(X)
    single.partial_fit(X[100:])
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, rtol=1e-5, atol=1e-4)


def test_minibatch_inertia_is_that_of_the_ranks_batches_together(tmp_path):
    r0, r1 = run_ranks("minibatch_inertia_of_the_batch", tmp_path)
    X = load_digits().data
    single = MiniBatchKMeans(10, init=X[:10], reassignment_ratio=0.0, random_state=0)
    for (i0, l0), (i1, l1), start in zip(r0, r1, range(0, 500, 100)):
        single.partial_fit(X[start : start + 100])
        np.testing.assert_array_equal(np.concatenate([l0, l1]), single.labels_)
        assert i0 == i1 == pytest.approx(single.inertia_, rel=1e-10)


# The ranks (spawned, without conftest) take the CPU paths, the single process
# here the accelerator's: data at 2^60, whose float32 scores overflow, labels
# differently on each.
@on_the_cpu_paths_only
def test_minibatch_batch_inertia_beyond_float32_is_summed_over_the_ranks(tmp_path):
    # The step's float64 batch inertia was all_reduced in float32 with the
    # sums: infinite, and partial_fit refused X as overflowing, which one
    # process fitting the same batches accepts.
    (c0, i0), (c1, i1) = run_ranks("minibatch_batch_inertia_beyond_float32", tmp_path)
    X = blobs(n=2000, d=4, centers=8).astype(np.float32) * np.float32(2.0**60)
    single = MiniBatchKMeans(8, init=X[:8], reassignment_ratio=0.0, random_state=0)
    for start in range(0, 2000, 500):
        single.partial_fit(X[start : start + 500])
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(c0, single.cluster_centers_, rtol=1e-5)
    assert i0 == i1 == pytest.approx(single.inertia_, rel=1e-5)


def test_minibatch_seeds_float32_data_far_from_the_origin_across_ranks(tmp_path):
    # k-means++ over the ranks scored uncentred rows: the expansion's float32
    # rounding (~1e3) swamped the distances (~1e2) and seeds merged blobs.
    r0, r1 = run_ranks("minibatch_seeds_far_from_the_origin", tmp_path)
    _, centres = far_blobs()
    for c0, c1 in zip(r0, r1):
        np.testing.assert_array_equal(c0, c1)
        nearest = ((c0[:, None].astype(np.float64) - centres) ** 2).sum(-1).argmin(1)
        assert sorted(nearest.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("minibatch_nan_in_the_first_batch", r"Input X contains NaN or infinity"),
        ("minibatch_later_batch_with_other_features", r"X has 60 features, but MiniBatchKMeans"),
        ("minibatch_nan_in_a_later_batch", r"Input X contains NaN or infinity"),
    ],
)
def test_a_batch_rejected_on_one_rank_raises_on_every_rank(tmp_path, scenario, message):
    """The rank that rejects its batch raises its own error, the others say
    which rank did; none waits for it, and the ranks stay in step."""
    (e0, c0), (e1, c1) = run_ranks(scenario, tmp_path)
    bad = 1 if re.search(message, e1[1]) else 0
    assert e0[0] == e1[0] == "ValueError", (e0, e1)
    assert re.search(message, (e0, e1)[bad][1])
    assert re.search(rf"(rank {bad}|another rank) rejected its batch", (e0, e1)[1 - bad][1])
    np.testing.assert_array_equal(c0, c1)


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("negative_weight_on_one_rank", r"sample_weight"),
        ("one_dimensional_shard_on_one_rank", r"Expected X to be 2-D"),
        ("elbow_one_dimensional_shard_on_one_rank", r"Expected X to be 2-D"),
    ],
)
def test_a_shard_rejected_on_one_rank_raises_on_every_rank(tmp_path, scenario, message):
    """KMeans.fit: a rank whose shard or weights fail the local checks joins
    the ranks' agreement check with its error; before, the other rank waited
    there until gloo's timeout."""
    (kind0, text0), (kind1, text1) = run_ranks(scenario, tmp_path)
    assert kind0 == kind1 == "ValueError", (text0, text1)
    assert re.search(message, text1), text1
    assert re.search(r"rank 1 rejected its shard", text0), text0


def test_elbow_on_shards_is_the_same_on_every_rank(tmp_path):
    (i0, k0, c0, l0), (i1, k1, c1, l1) = run_ranks("elbow_sweep", tmp_path)
    X = blobs(n=2000, d=4, centers=4, seed=3)
    np.testing.assert_array_equal(i0, i1)
    assert k0 == k1 == 4
    local = elbow(X, k=range(1, 8), n_init=2, random_state=0)
    np.testing.assert_allclose(i0, local.inertia, rtol=0.02)
    for a, b in zip(c0, c1):
        np.testing.assert_array_equal(a, b)
    assert l0.shape == (7, 900) and l1.shape == (7, 1100)


def test_elbow_on_memmap_shards_streams_them(tmp_path):
    (i0, k0, l0), (i1, k1, l1) = run_ranks("elbow_memmap_shards", tmp_path)
    X = blobs(n=2000, d=4, centers=4, seed=3)
    np.testing.assert_array_equal(i0, i1)
    assert k0 == k1 == 4
    local = elbow(X, k=range(1, 8), n_init=2, random_state=0)
    np.testing.assert_allclose(i0, local.inertia, rtol=0.02)
    assert l0.shape == (7, 900) and l1.shape == (7, 1100)


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("mismatched_features", r"Expected every rank to have the same n_features, got \[5, 4\]"),
        ("mismatched_clusters", r"Expected every rank to have the same n_clusters, got \[3, 4\]"),
        (
            "mismatched_dtype",
            r"Expected every rank to have the same dtype, got \['torch.float64', 'torch.float32'\]",
        ),
        ("mismatched_tol", r"Expected every rank to have the same tol, got \["),
        (
            "mismatched_batch_size",
            r"Expected every rank to have the same batch_size, got \[20, 2000\]",
        ),
        (
            "mismatched_reassignment_ratio",
            r"Expected every rank to have the same reassignment_ratio, got \[",
        ),
        ("elbow_other_sweeps", r"Expected every rank to have the same k, got \['(\?|\[1, 2, 3, 4)"),
        (
            "mismatched_init",
            r"Expected every rank to have the same init, got \['array', 'k-means\+\+'\]",
        ),
        (
            "mismatched_minibatch_init",
            r"Expected every rank to have the same init, got \['array', 'k-means\+\+'\]",
        ),
        ("nan_on_one_rank", r"Input X contains NaN or infinity"),
    ],
)
def test_ranks_that_disagree_all_raise_instead_of_hanging(tmp_path, scenario, message):
    outcomes = run_ranks(scenario, tmp_path)
    for kind, text in outcomes:
        assert kind == "ValueError"
        assert re.search(message, text), text


def test_minibatch_bad_init_on_one_rank_raises_on_every_rank(tmp_path):
    (shape0, nan0), (shape1, nan1) = run_ranks("minibatch_bad_init_on_one_rank", tmp_path)
    assert shape1 == ("ValueError", "Expected init to be of shape (6, 5), got shape (5, 5).")
    assert nan1[0] == "ValueError" and "NaN" in nan1[1]
    for kind, text in (shape0, nan0):
        assert kind == "ValueError"
        assert re.search(r"Expected a valid init on every rank, but rank 1 rejected its init", text)


def test_an_explicit_process_group(tmp_path):
    ranks = run_ranks("explicit_group", tmp_path)
    X = blobs()
    single = KMeans(6, init=X[:6]).fit(X)
    for shared, _, name, world in ranks:
        np.testing.assert_allclose(shared, single.cluster_centers_, atol=1e-10)
        assert name == ProcessGroupCollective.__name__ and world == WORLD
    assert not np.allclose(ranks[0][1], ranks[1][1])  # process_group=None: local fits differ


def test_the_torchrun_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "distributed_fit.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            str(example),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("same centroids on every rank: True") == 2, out.stdout


def test_quantizer_ranks_with_empty_batches_keep_the_same_codebook(tmp_path):
    (codebook, counts, losses), (other, other_counts, other_losses) = run_ranks(
        "quantizer_empty_batches", tmp_path
    )
    assert torch.equal(codebook, other) and torch.equal(counts, other_counts)
    assert torch.isfinite(codebook).all()
    assert losses[0] == 0.0 and other_losses[2] == 0.0
    assert all(loss > 0 for loss in losses[1:3]) and other_losses[0] > 0


def test_quantizer_ranks_share_the_codes_while_the_first_collects_for_the_init(tmp_path):
    (state, initialized, codebook), (other, _, other_codebook) = run_ranks(
        "quantizer_collecting_for_the_init", tmp_path
    )
    assert not bool(state["initialized"]) and initialized
    for name in state:
        assert torch.equal(state[name], other[name]), name
    assert torch.equal(codebook, other_codebook)


def test_quantizer_init_clusters_the_batches_of_every_rank(tmp_path):
    (codebook, error, rejected), (other, other_error, other_rejected) = run_ranks(
        "quantizer_init_from_every_rank", tmp_path
    )
    assert torch.equal(codebook, other)
    # Blobs of standard deviation 1 in 4-D: about 4 per vector when each
    # blob has a code; before, rank 1's vectors lay ~200 from theirs (4e4).
    assert error < 10 and other_error < 10, (error, other_error)
    # A NaN in rank 1's first batch is seen by the clustering rank: both raise.
    for kind, text in (rejected, other_rejected):
        assert kind == "ValueError" and "finite values for the k-means" in text


# ------------------------------------------- a live group in copies and pickles


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of this process alone, destroyed after the test."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield dist.new_group([0])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
def test_a_model_fitted_on_a_group_pickles_with_the_default_in_its_place(
    one_process_group, estimator
):
    X = blobs(n=300)
    km = estimator(6, random_state=0, process_group=one_process_group).fit(X)
    restored = pickle.loads(pickle.dumps(km))
    assert restored.process_group == "auto"
    assert km.process_group is one_process_group  # the pickled model keeps its group
    np.testing.assert_array_equal(restored.predict(X), km.predict(X))
    np.testing.assert_array_equal(restored.cluster_centers_, km.cluster_centers_)
    assert restored.inertia_ == km.inertia_


@pytest.mark.parametrize("estimator", [KMeans, MiniBatchKMeans])
def test_copies_and_clones_share_the_group(one_process_group, estimator):
    import copy

    from sklearn.base import clone

    sklearn = pytest.importorskip("sklearn")
    X = blobs(n=300)
    km = estimator(6, random_state=0, process_group=one_process_group).fit(X)
    for duplicate in (copy.deepcopy(km), copy.copy(km)):
        assert duplicate.process_group is one_process_group
        np.testing.assert_array_equal(duplicate.predict(X), km.predict(X))
    with sklearn.config_context(enable_metadata_routing=True):
        km.set_fit_request(sample_weight=True).set_output(transform="pandas")
        twin = clone(km)
        assert str(twin.get_metadata_routing()) == str(km.get_metadata_routing())
    assert twin.process_group is one_process_group
    assert not hasattr(twin, "cluster_centers_")
    assert twin.get_params() == km.get_params()
    assert list(twin.fit_transform(X).columns) == list(km.get_feature_names_out())
    np.testing.assert_array_equal(twin.cluster_centers_, km.cluster_centers_)


def test_a_quantizer_on_a_group_copies_with_it_and_pickles_without_it(one_process_group):
    import copy
    import io

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), VectorQuantizer(8, 3, process_group=one_process_group)
    )
    x = torch.randn(64, 4)
    model(x)
    teacher = copy.deepcopy(model)  # an EMA teacher, say
    assert teacher[1].process_group is one_process_group
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for restored in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(model))):
        assert restored[1].process_group is None
        assert torch.equal(restored[1].codebook, model[1].codebook)
    assert model[1].process_group is one_process_group
    for other in (teacher, restored):
        torch.manual_seed(1)
        expected = model(x)[1][1]
        torch.manual_seed(1)
        assert torch.equal(other(x)[1][1], expected)
        assert torch.equal(other[1].codebook, model[1].codebook)
