"""How several processes combine partial results; a single process is the trivial case.

The functional core never imports ``torch.distributed``: the passes that can
run on shards (:func:`~torchkmeans.functional.streaming.streamed_kmeans`,
:func:`~torchkmeans.functional.minibatch.minibatch_step`) take a
:class:`Collective`, and :mod:`torchkmeans.distributed` provides one over a
process group.
"""

from __future__ import annotations

import torch

__all__ = ["LOCAL", "Collective", "raise_rejected"]


class Collective:
    """Collectives over the ranks of a job; this base class is one process alone.

    Subclasses override the three operations; every rank must call them in
    the same order with tensors of the same shape and dtype.

    Examples
    --------
    >>> t = torch.tensor([1.0, 2.0])
    >>> LOCAL.all_sum(t), LOCAL.all_gather(t).shape, LOCAL.world_size
    (tensor([1., 2.]), torch.Size([1, 2]), 1)
    """

    rank: int = 0
    world_size: int = 1

    @property
    def device(self) -> torch.device:
        """Where this rank's collective tensors live (CUDA for NCCL, else the CPU)."""
        return torch.device("cpu")

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(world_size, *tensor.shape)``: every rank's ``tensor``, in rank order."""
        return tensor.unsqueeze(0)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank, in place; returns it."""
        return tensor

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


LOCAL = Collective()


def raise_rejected(ranks: list[int] | None = None, what: str = "batch") -> None:
    """The error of the ranks whose input was valid when ``ranks`` (or another) rejected theirs.

    A rank that rejects its input (a ``what``: batch, shard) still joins the
    collective the others are in, with a flag, then raises its own error;
    the others raise this one.
    """
    who = "another rank" if not ranks else "rank " + ", ".join(str(rank) for rank in ranks)
    raise ValueError(
        f"Expected a valid {what} on every rank, but {who} rejected its {what} "
        "(see the error raised there); nothing was updated on any rank."
    )
