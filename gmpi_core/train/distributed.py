"""Multi-process training without DDP: process-group set-up, parameter broadcast, gradient averaging.

Launched by ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the
environment). The official code wraps G and D in DDP over gloo (docs/method.md §6.1); a GMPI step runs several
forwards per network and R1's double backward, which DDP's one-forward-one-backward hooks do not fit, so
here the parameters are broadcast from rank 0 once and gradients are averaged by hand after every
backward (one flat all-reduce per module). Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "DistEnv",
    "all_gather_objects",
    "allreduce_gradients",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "init_distributed",
    "inside_torchrun",
    "module_digest",
    "rank_logger",
    "shutdown",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def inside_torchrun() -> bool:
    """True when this process was started by torchrun / torch.distributed.run."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' requested but CUDA is not available; use --device cpu")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(device)
    if device != "cpu":
        raise ValueError(f"unknown device '{device}'; choose one of auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 7200.0) -> DistEnv:
    """Read the torchrun environment, pick the device and, for more than one process, join the process
    group (NCCL on CUDA, gloo on CPU; the 7200 s timeout is the official one, docs/method.md §6.1)."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = _resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s."""
    if not _active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src)


@torch.no_grad()
def allreduce_gradients(module: nn.Module) -> None:
    """Average ``.grad`` of every trainable parameter over the ranks, as DDP would (one flat all-reduce
    per dtype). A parameter without a gradient on this rank counts as a zero gradient, so every rank ends
    with the same gradient for every trainable parameter (DDP with ``find_unused_parameters``)."""
    if not _active():
        return
    world = dist.get_world_size()
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        assert p.grad is not None
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(reduced)


def broadcast_object(obj: Any, src: int = 0, device: torch.device | None = None) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; NCCL stages it through ``device``)."""
    if not _active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    stage = device if device is not None and device.type == "cuda" else None
    dist.broadcast_object_list(box, src=src, device=stage)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (just ``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def module_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests ⇔ bitwise-equal parameters."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rank_logger(name: str, rank: int) -> logging.Logger:
    """A logger that speaks INFO on rank 0 and only WARNING and above on the other ranks."""
    log = logging.getLogger(name if rank == 0 else f"{name}.rank{rank}")
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return log
