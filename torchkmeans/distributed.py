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

import copy
from typing import Any

import torch

from .functional.collective import LOCAL, Collective

__all__ = ["ProcessGroupCollective", "collective"]


def is_group(process_group: Any) -> bool:
    """Whether a ``process_group`` parameter is a group object rather than ``"auto"`` or None."""
    return process_group is not None and not isinstance(process_group, str)


class SharesProcessGroup:
    """Copies share a ``process_group`` object; a pickle holds the parameter's default instead.

    A ProcessGroup is this process's connection to the others, not state of
    the model: it cannot be pickled (pickling, deep-copying or cloning a model
    given one raised ``TypeError: cannot pickle ProcessGroup``). A copy made
    in this process (``copy.copy``, ``copy.deepcopy``, scikit-learn's
    ``clone``) belongs to the same group, the object shared as deep copies
    share classes and functions. A pickle (``pickle``, ``torch.save`` of a
    whole module, joblib) stores ``_pickled_group``, the parameter's
    default, in its place: the default group of whichever process loads it.
    """

    _pickled_group: Any = None

    def _plain_state(self) -> dict[str, Any]:
        getstate = getattr(super(), "__getstate__", None)  # torch.nn.Module's, Python 3.11's
        return dict(getstate() if getstate is not None else self.__dict__)

    def __getstate__(self) -> dict[str, Any]:
        state = self._plain_state()
        if is_group(state.get("process_group")):
            state["process_group"] = self._pickled_group
        return state

    def __copy__(self) -> Any:
        return _set_state(type(self).__new__(type(self)), self._plain_state())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        group = self.__dict__.get("process_group")
        if is_group(group):
            memo[id(group)] = group
        new = type(self).__new__(type(self))
        memo[id(self)] = new  # before the state, which may refer back to self
        return _set_state(new, copy.deepcopy(self._plain_state(), memo))


def _set_state(new: Any, state: dict[str, Any]) -> Any:
    """``new`` given ``state`` as unpickling gives it (a ``__setstate__`` fills in defaults)."""
    setstate = getattr(new, "__setstate__", None)
    if setstate is not None:
        setstate(state)
    else:
        new.__dict__.update(state)
    return new


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

    def _on_backend(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, or a copy on the group's GPU where NCCL cannot reach it
        (host data of a fit with ``device=None`` in an NCCL-only group)."""
        device = self.device
        if device.type == "cuda" and tensor.device.type != "cuda":
            return tensor.to(device)
        return tensor

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        moved = self._on_backend(tensor)
        self._dist.all_reduce(moved, op=self._dist.ReduceOp.SUM, group=self.group)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        moved = self._on_backend(tensor.contiguous())
        parts = [torch.empty_like(moved) for _ in range(self.world_size)]
        self._dist.all_gather(parts, moved, group=self.group)
        return torch.stack(parts).to(tensor.device)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        moved = self._on_backend(tensor)
        self._dist.broadcast(moved, src=self._source, group=self.group)
        if moved is not tensor:
            tensor.copy_(moved)
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
