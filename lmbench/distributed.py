"""Multi-process training with DistributedDataParallel, started by ``torchrun``.

``torchrun --nproc_per_node=N -m lmbench run ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`start` turns them into a process group (NCCL on CUDA, gloo on CPU)
and a :class:`World`. Without them everything here is a no-op and the trainer runs as a
single process.

How a step is split
-------------------
The global batch is ``--batch-size``: every process computes the same global indices
(``batch_indices`` is a pure function of seed and step) and takes its contiguous rows
(:meth:`World.rows`), so the union over processes is exactly the single-process batch.
Per-sample randomness follows the same rule: a method that declares
``LandmarkMethod.slices_randomness`` draws it for the global batch and keeps its own rows
(``LandmarkMethod.random_batch`` / ``local_rows``, implemented by :func:`select_rows`), so
every sample gets the warp it would get in a single process, whatever the number of
processes. Methods that do not declare it get an independent stream per process instead
(correct in distribution, not sample-for-sample).

DDP averages the gradients of the processes' local means, which equals the gradient of
the global mean because the rows are equal in size (the batch size must divide by the
number of processes). BatchNorm layers become SyncBatchNorm on CUDA; PyTorch's
SyncBatchNorm does not run on CPU, so on gloo each process normalises with its own rows'
statistics (a small, documented difference from a single process).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

#: How long a collective (including the barrier while rank 0 evaluates) may wait.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether :func:`stop` should destroy the process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch (contiguous, equal-sized)."""
        if batch_size % self.size:
            raise ValueError(
                f"--batch-size {batch_size} does not divide among {self.size} processes; "
                f"use a multiple of {self.size}"
            )
        per = batch_size // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over processes (itself in a single process)."""
        if not self.distributed:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.size


SINGLE = World()


def environment_rank() -> int:
    """The torchrun rank of this process (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes; returns the world and this process's device.

    On CUDA each process uses ``cuda:LOCAL_RANK``. A process group that is already
    initialised (e.g. by a caller's own launcher) is used as it is and left open.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not dist.is_initialized():
        return SINGLE, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                f"use --nproc_per_node <= {torch.cuda.device_count()}"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, owns), device


def stop(world: World) -> None:
    """Leave the process group :func:`start` created (everyone reaches this together)."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _Losses(nn.Module):
    """``forward`` is ``method.losses``: DDP only hooks the modules it calls through forward."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, images, generator, **labels):
        return self.method.losses(images, generator, **labels)


def wrap(method: nn.Module, world: World, device: torch.device):
    """The callable that computes the method's loss terms: DDP-wrapped when distributed.

    ``find_unused_parameters`` is on because a method may leave a network out of a step;
    frozen helpers that are not registered submodules (the perceptual network) are not
    DDP parameters at all. BatchNorm is converted to SyncBatchNorm on CUDA (it has no CPU
    implementation).
    """
    if not world.distributed:
        return method.losses
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(method)
    ddp = nn.parallel.DistributedDataParallel(
        _Losses(method),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )
    return ddp


def syncs_batch_norm(module: nn.Module) -> bool:
    """Whether a training-mode forward of ``module`` would gather BatchNorm statistics from the
    other processes (SyncBatchNorm in a process group of more than one)."""
    return (
        dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        and any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    )


def select_rows(value, rows: slice):
    """Rows ``rows`` of per-sample values drawn for a whole batch.

    Tensors are sliced along dim 0; tuples, lists and dicts element-wise; a
    :class:`lmbench.warps.Warp` (a batch of ``batch_size`` transforms) is copied with every
    tensor attribute whose leading dimension is its batch sliced, recursively through
    composed and inverted warps. Anything else is returned unchanged (shared by all rows).
    """
    from lmbench.warps import Warp

    if isinstance(value, torch.Tensor):
        return value[rows]
    if isinstance(value, (tuple, list)):
        return type(value)(select_rows(v, rows) for v in value)
    if isinstance(value, dict):
        return {k: select_rows(v, rows) for k, v in value.items()}
    if isinstance(value, Warp):
        batch = value.batch_size
        part = copy.copy(value)
        for name, attribute in vars(value).items():
            if isinstance(attribute, Warp) or (
                isinstance(attribute, (list, tuple)) and any(isinstance(a, (Warp, torch.Tensor)) for a in attribute)
            ):
                setattr(part, name, select_rows(attribute, rows))
            elif isinstance(attribute, torch.Tensor) and attribute.dim() > 0 and attribute.shape[0] == batch:
                setattr(part, name, attribute[rows])
        part.batch_size = len(range(batch)[rows])
        return part
    return value


def rank_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A per-process stream for methods that do not slice global-batch randomness."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + step) * 7919 + rank) * 104_729 + 17)
    return g
