"""Processes and devices: ``torchrun`` environments, DDP and FSDP2 wrapping, small collectives.

Launched by ``torchrun --nproc_per_node=N``, every process finds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment; :func:`setup` joins the process group (NCCL on CUDA, gloo on CPU)
and picks the device. Without ``torchrun`` there is one process and no process group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "all_gather_objects", "broadcast_object", "fsdp_units", "setup", "sum_across", "wrap"]


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world_size`` processes, on ``device``; ``owns_group``: the
    process group was created by :func:`setup` (and is destroyed by :meth:`close`)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self, *, sync: bool = True) -> None:
        """Destroy the process group if :func:`setup` created it.

        ``sync``: first wait for every process (one that tears the group down while another still
        talks to it can abort); pass False on an error path, where the others may never arrive.
        """
        if self.owns_group and dist.is_initialized():
            if sync:
                dist.barrier()
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup(device: str = "auto") -> Dist:
    """Join the ``torchrun`` process group when there is one; choose the device.

    ``device="auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. A CUDA device that
    does not exist (more processes per node than GPUs) is a ValueError, not a CUDA error.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise ValueError(
                f"device {dev} (LOCAL_RANK {local_rank}) does not exist: this machine has {count} CUDA "
                f"device(s). Start at most {count} process(es) per node, or pass --device cpu")
        torch.cuda.set_device(dev)
    owns = False
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The submodules to shard one by one: ``model.fsdp_units()`` if the model defines it, else every
    element of every ``nn.ModuleList`` (the blocks of a stack), so that only one block's parameters
    are gathered at a time."""
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    units = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            units.extend(module)
    return units


def wrap(model: nn.Module, strategy: str, info: Dist) -> nn.Module:
    """``model`` (already on ``info.device``) for ``strategy``: itself, DDP, or sharded with FSDP2.

    FSDP2's ``fully_shard`` turns the parameters into sharded DTensors in place: build the optimizer
    from the model after this call.
    """
    if strategy == "single":
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for unit in fsdp_units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"strategy must be 'single', 'ddp' or 'fsdp', got {strategy!r}")


def no_sync(model: nn.Module, strategy: str, sync: bool):
    """A context in which backward accumulates gradients locally (``sync=False``) or reduces them."""
    if strategy == "ddp" and not sync:
        return model.no_sync()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def sum_across(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (itself with one process)."""
    if info.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj, info: Dist) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (small Python objects, sent between live processes)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: Dist):
    """Rank 0's ``obj`` in every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
