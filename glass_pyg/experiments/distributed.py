r"""Data-parallel runs under ``torchrun``: which pairs a process owns, and its exchanges with the others.

A run's pairs are dealt round robin (pair ``k`` to process ``k mod world``);
every process builds all pairs (the data and the S^2 rotation stage are
deterministic and cheap against training) and trains and evaluates its own.
The gradient of the mean loss over all pairs is obtained by
:class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients
over processes, from each process's sum over its pairs times ``world / num_pairs``.
Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here communicates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """The process that writes the run folder."""
        return self.rank == 0

    def owned(self, num_pairs: int) -> list[int]:
        """The pairs this process trains and evaluates."""
        if num_pairs < self.size:
            raise ValueError(f"data.num_pairs={num_pairs} is smaller than the {self.size} processes of this run: "
                             f"each process needs at least one pair")
        return list(range(self.rank, num_pairs, self.size))

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, by rank (picklable objects)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """The leader's ``obj``, on every process."""
        if self.size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, module: torch.nn.Module, per_pair: bool = False) -> torch.nn.Module:
        """``module`` under :class:`~torch.nn.parallel.DistributedDataParallel` when there are several
        processes; ``per_pair``: it trains parameters of single pairs (S^2 rotations), which get no
        gradient in the processes that do not own them (``find_unused_parameters``)."""
        if self.size == 1 or not any(p.requires_grad for p in module.parameters()):
            return module
        return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=per_pair)


def current_world() -> World:
    """The :class:`World` of this process: from ``torchrun``'s environment (joining its process group on
    first use, gloo: the runs compute on the CPU), else a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return World(dist.get_rank(), dist.get_world_size())
