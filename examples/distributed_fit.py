"""K-Means over shards held by several processes: ``torch.distributed`` with torchrun.

    torchrun --nproc-per-node 2 examples/distributed_fit.py

Each rank makes (or would load) its own shard of the data; ``KMeans.fit``
sees the initialised process group and every rank ends with the same
centroids, while the labels of each rank are those of its own rows. gloo on
CPUs, NCCL when each rank has a GPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from torchkmeans import KMeans


def main() -> None:
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    # This rank's shard: 50,000 points around 8 shared centres (in practice, load your shard).
    centres = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)) * 4
    g = torch.Generator().manual_seed(1000 + rank)
    shard = centres[torch.randint(0, 8, (50_000,), generator=g)] + torch.randn(
        50_000, 32, generator=g
    )

    km = KMeans(n_clusters=8, random_state=0, device=device).fit(shard.to(device))

    checksum = torch.tensor([float(km.cluster_centers_.sum())], device=device)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    print(
        f"rank {rank}/{world}: {shard.shape[0]} local rows, n_iter={km.n_iter_}, "
        f"total inertia={km.inertia_:.1f}, local labels {tuple(km.labels_.shape)}, "
        f"same centroids on every rank: {all(torch.equal(c, gathered[0]) for c in gathered)}"
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
