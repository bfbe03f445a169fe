r"""Data-parallel SVI on ``torch.distributed`` (launched by ``torchrun``; gloo on CPUs, NCCL on GPUs).

The rules that keep a mean-field ELBO exact under data parallelism, as the engine applies them:

- every rank sees the same full data set; an epoch's seeded permutation is cut into global
  batches of ``world_size x batch_size`` examples, and each global batch into ``world_size``
  near-equal local batches, one per rank: no example is padded in or dropped, and every rank takes
  the same number of steps (a trailing remainder smaller than the number of ranks joins the
  previous global batch);
- each rank's loss is the full KL plus ``N / B_local`` times the sum of its local negative
  log-likelihoods, with ``N`` the *global* data-set size (the BNN's plate already scales by
  ``dataset_size / batch``); the gradients are *averaged* over ranks with one all-reduce of the
  flattened gradient per step. The average of ``R`` unbiased estimates is the unbiased gradient of
  the ELBO for a global batch;
- parameters (variational, prior, likelihood and the terms', created during set-up) and buffers are
  broadcast from rank 0 before training; buffers (BatchNorm statistics, computed per rank from the
  local batches) again after every epoch;
- the initialization seed is shared; the weight-noise seed includes the rank and the epoch, so ranks
  draw independent noise and a resumed run (on any number of ranks) draws what an uninterrupted
  one would;
- metrics are averaged over ranks; progress bars and files come from rank 0.

Terms that depend on the whole batch (PKT's kernel over the batch, normalization statistics) see
the local batch of their rank; VID's entropy H(t) is fitted on the same first examples on every rank.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ProcessGroup", "current", "global_batches", "noise_seed"]


@dataclass(frozen=True)
class ProcessGroup:
    """The calling process's place in a multi-process run."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean_(self, tensor: Tensor) -> Tensor:
        """Average ``tensor`` over ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= self.world_size
        return tensor

    def all_reduce_max_(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` to every rank, in place."""
        for t in tensors:
            dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current(initialize: bool = True) -> Optional[ProcessGroup]:
    """The process group of this run, or ``None`` for a single process.

    Under ``torchrun`` (``WORLD_SIZE > 1`` and ``MASTER_ADDR`` in the environment) a default process
    group is initialized here if the script has not done it (NCCL when CUDA is available, else
    gloo), so that a script calling ``bd.fit`` runs unchanged.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        if not (initialize and env_world > 1 and "MASTER_ADDR" in os.environ):
            return None
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    world = dist.get_world_size()
    if world == 1:
        return None
    return ProcessGroup(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def global_batches(order: Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> list[Tensor]:
    """This rank's local batches (index tensors) of one epoch's ``order`` of the examples.

    ``order`` is cut into global batches of ``world_size * batch_size``; a trailing remainder smaller
    than ``world_size`` joins the previous global batch; each global batch is split into
    ``world_size`` contiguous near-equal parts and this rank takes part ``rank``. With one process
    these are the plain consecutive batches of ``batch_size``.
    """
    n = len(order)
    if n < world_size:
        raise ValueError(f"{n} examples cannot feed {world_size} processes: every rank needs at least one")
    size = batch_size * world_size
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < world_size:
        starts.pop()  # the remainder joins the previous global batch
    bounds = starts[1:] + [n]
    out = []
    for a, b in zip(starts, bounds):
        chunk = order[a:b]
        out.append(torch.tensor_split(chunk, world_size)[rank] if world_size > 1 else chunk)
    return out


def noise_seed(seed: int, rank: int, epoch: int) -> int:
    """The weight-noise seed of ``rank`` in ``epoch`` (distinct per rank and epoch, < 2**63)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 7_919 + 1) % (2**63 - 1)


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    """How many steps each rank takes per epoch (see :func:`global_batches`)."""
    size = batch_size * world_size
    steps = math.ceil(n / size)
    if steps > 1 and n - (steps - 1) * size < world_size:
        steps -= 1
    return steps
