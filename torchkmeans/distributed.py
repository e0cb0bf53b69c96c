"""Fits over ``torch.distributed``: every rank holds a shard, all ranks get the same centroids.

Start one process per GPU (or per CPU worker) with ``torchrun``, initialise
the default process group (NCCL for CUDA tensors, gloo for CPU ones), and
call ``KMeans(...).fit(local_shard)`` on every rank: the estimators use the
initialised default group unless given ``process_group=None`` (fit locally)
or another group. Per Lloyd iteration the ranks sum ``(sums, counts,
inertia, changed labels)`` in one ``all_reduce`` of ``b*k*(d+1) + 2b``
numbers; k-means++ draws its candidates across ranks without moving any
data; labels stay on their rank. Collectives run with the group's own
timeout.

Examples
--------
>>> import torch
>>> collective(None).world_size  # no process group: a local fit
1
"""

from __future__ import annotations

from typing import Any

import torch

from .functional.collective import LOCAL, Collective

__all__ = ["ProcessGroupCollective", "collective"]


class ProcessGroupCollective(Collective):
    """:class:`~torchkmeans.functional.collective.Collective` over a ``torch.distributed`` group.

    Parameters
    ----------
    group : ProcessGroup, optional
        The group; None is the default (``WORLD``) group.
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._source = 0 if group is None else dist.get_global_rank(group, 0)

    @property
    def device(self) -> torch.device:
        if self._dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._dist.all_gather(parts, tensor, group=self.group)
        return torch.stack(parts)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        self._dist.broadcast(tensor, src=self._source, group=self.group)
        return tensor


def collective(process_group: Any = "auto") -> Collective:
    """The :class:`Collective` an estimator's ``process_group`` parameter stands for.

    Parameters
    ----------
    process_group : "auto", None or ProcessGroup
        "auto": the default group when ``torch.distributed`` is initialised
        with more than one process, else a local fit. None: a local fit.
        A group: that group.

    Returns
    -------
    Collective
    """
    if process_group is None:
        return LOCAL
    if isinstance(process_group, str):
        if process_group != "auto":
            raise ValueError(
                "Expected process_group to be 'auto', None or a ProcessGroup, "
                f"got {process_group!r}."
            )
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return LOCAL
        if torch.distributed.get_world_size() == 1:
            return LOCAL
        return ProcessGroupCollective(None)
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise ValueError(
            "Expected torch.distributed to be initialised when a process_group is given; "
            "call torch.distributed.init_process_group first."
        )
    return ProcessGroupCollective(process_group)
