"""``torch.distributed`` for the training scripts: one process per device under ``torchrun``, or one process.

``torchrun --nproc_per_node=N train/finetune.py MODEL ...`` starts N processes and sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`init` then joins the process group (NCCL on CUDA, gloo on the CPU) and gives each
process its device (``cuda:LOCAL_RANK``). Without those variables the script runs as one process and every
collective below is the identity, so the single-process path is the same code.

What each piece is for:

* :meth:`World.wrap` — ``DistributedDataParallel`` around the module whose ``forward`` computes the whole
  training objective (``engine.Objective``: cross-entropy plus the Deep Defense regularizer). DDP prepares its
  gradient all-reduce in the wrapped module's ``forward``; calling ``trace``/``reverse`` on the inner network
  would bypass it, so the objective itself is the module DDP wraps.
* :meth:`World.sum` / :meth:`World.max` — reduce the evaluation counts (correct predictions, Σ‖Δx‖/‖x‖, fooled
  images, FGS hits at every step of the ε_ref bisection) so every reported number is the global one.
* :meth:`World.ranks_where` — which ranks hit a condition (a NaN loss), so every rank stops at the same step
  with the same message instead of waiting forever in the next collective.
* :meth:`World.gather` — Python objects from every rank (the per-rank RNG states of a resume checkpoint).
* :func:`shard` — a rank's share of an evaluation set: images ``rank, rank + N, …``, each image on exactly one
  rank (no padding duplicates), so the reduced counts count every image once.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer than this fails instead of hanging


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``RANK`` and ``WORLD_SIZE``) is set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class World:
    """The processes of this run: ``rank`` of ``size`` (0 of 1 for a single process); ``device`` is where the
    collectives' tensors live (the rank's GPU for NCCL, the CPU for gloo)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: a single process, no process group
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum of ``values`` over every rank (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, value: float) -> float:
        """The largest ``value`` over every rank."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def ranks_where(self, flag: bool) -> list[int]:
        """The ranks on which ``flag`` is true (the same list on every rank)."""
        flags = [0.0] * self.size
        flags[self.rank] = float(bool(flag))
        return [r for r, f in enumerate(self.sum(flags)) if f]

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a list of one for a single process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_state(self, net: nn.Module) -> None:
        """Every parameter and buffer of ``net`` set to rank 0's (e.g. BatchNorm statistics after training, which
        each rank updated from its own batches)."""
        if self.distributed:
            for tensor in net.state_dict().values():
                dist.broadcast(tensor.data, src=0)

    def wrap(self, objective: nn.Module) -> nn.Module:
        """``objective`` in ``DistributedDataParallel`` (its gradients are averaged over the ranks in
        ``backward``); the module itself for a single process."""
        if not self.distributed:
            return objective
        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers (frozen BatchNorm statistics) are identical on every rank; train-mode BatchNorm of the reference
        # training takes rank 0's, as DDP does by default
        return nn.parallel.DistributedDataParallel(objective, device_ids=ids)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init(device_name: Optional[str]) -> tuple[World, torch.device]:
    """Under ``torchrun``: join the process group and return this process's :class:`World` and training device,
    NCCL on CUDA (``cuda:LOCAL_RANK``; ``--device cpu`` or no GPU: gloo on the CPU)."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_name in (None, "auto") or str(device_name).startswith("cuda"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"error: torchrun started local rank {local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s); pass --nproc_per_node={torch.cuda.device_count()}.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, rank=rank, world_size=size, timeout=TIMEOUT)
    return World(rank, size, local_rank, backend, device), device


def current() -> World:
    """The :class:`World` of an already initialised process group (or a single process), for code that is not
    handed one (e.g. printing only on rank 0)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), backend=dist.get_backend())
    return World()


def shard(indices: Sequence[int], world: World) -> list[int]:
    """This rank's share of ``indices``: positions ``rank, rank + size, …`` (each index on exactly one rank;
    unlike ``DistributedSampler``, no rank repeats an image to even out the shares)."""
    return list(indices)[world.rank::world.size]
