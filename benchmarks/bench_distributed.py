"""Weak scaling of the distributed fit: 1 and 2 processes, the same rows per process.

Usage::

    python benchmarks/bench_distributed.py [--rows 200000] [--d 64] [--k 256]
        [--iterations 10] [--threads 1] [--backend gloo] [--world 1 2]

Each process (gloo on the CPU, one thread each by default) holds ``--rows``
rows of its own and runs ``--iterations`` Lloyd iterations from the same
initial centroids (tol=0, so none stops early). Printed per world size:
seconds per iteration (the slowest rank), the share of that spent inside
the per-iteration ``all_reduce`` (which includes waiting for the slower
rank), and the weak-scaling efficiency ``t(1) / t(world)`` (1.0 is perfect).
It is a script, never a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import tempfile
import time

import _threads

_threads.pin_threads()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from torchkmeans.distributed import ProcessGroupCollective  # noqa: E402
from torchkmeans.functional.collective import LOCAL, Collective  # noqa: E402
from torchkmeans.functional.streaming import streamed_kmeans  # noqa: E402


class TimedCollective(ProcessGroupCollective):
    """Adds up the seconds spent in ``all_sum`` (the per-iteration all_reduce)."""

    seconds = 0.0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = super().all_sum(tensor)
        self.seconds += time.perf_counter() - start
        return out


def shard(rank: int, rows: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Gaussian noise: labels keep changing for many iterations, so none stops early.
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(100 + rank))
    init = torch.randn(k, d, generator=torch.Generator().manual_seed(1))
    return x, init


def fit(x: torch.Tensor, init: torch.Tensor, iterations: int, collective: Collective) -> float:
    start = time.perf_counter()
    result = streamed_kmeans(
        x,
        init.shape[0],
        init=init,
        max_iter=iterations,
        tol=0.0,
        dtype=x.dtype,
        collective=collective,
    )
    seconds = time.perf_counter() - start
    if int(result.n_iter) != iterations:
        raise RuntimeError(f"stopped after {int(result.n_iter)} of {iterations} iterations")
    return seconds


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        args.backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    x, init = shard(rank, args.rows, args.d, args.k)
    collective = TimedCollective()
    fit(x, init, 1, collective)  # warm-up
    collective.seconds = 0.0
    seconds = fit(x, init, args.iterations, collective)
    times = torch.tensor([seconds, collective.seconds], dtype=torch.float64)
    every = [torch.zeros_like(times) for _ in range(world)]
    dist.all_gather(every, times)
    if rank == 0:
        slowest = max(every, key=lambda t: float(t[0]))
        with open(out, "w") as f:
            f.write(f"{float(slowest[0])} {float(slowest[1])}")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per process")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    print(
        f"weak scaling: {args.rows:,} x {args.d} float32 rows per process, k={args.k}, "
        f"{args.iterations} Lloyd iterations, {args.threads} thread(s) per process, "
        f"{args.backend}, {os.cpu_count()} CPUs"
    )
    # One process without any collective: the baseline.
    torch.set_num_threads(args.threads)
    x, init = shard(0, args.rows, args.d, args.k)
    fit(x, init, 1, LOCAL)
    alone = fit(x, init, args.iterations, LOCAL) / args.iterations
    print(f"{'processes':>9} {'s/iter':>9} {'all_reduce':>11} {'efficiency':>11}")
    print(f"{'1 (local)':>9} {alone:9.4f} {'-':>11} {1.0:11.2f}")
    for world in args.world:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.txt")
            mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
            with open(out) as f:
                total, reduce_seconds = map(float, f.read().split())
        per_iteration = total / args.iterations
        print(
            f"{world:>9} {per_iteration:9.4f} {100 * reduce_seconds / total:10.1f}% "
            f"{alone / per_iteration:11.2f}"
        )


if __name__ == "__main__":
    main()
