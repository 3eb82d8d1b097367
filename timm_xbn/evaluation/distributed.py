"""torch.distributed for evaluation: joining the process group, and exact sharding without padding.

Run any evaluation under ``torchrun --nproc_per_node=N``: each rank reads every N-th batch, the
integer counts are all-reduced, so the numbers equal a single-process run exactly. The rank / world
helpers and collectives live in ``timm_xbn.utils.distributed`` (re-exported here).
"""
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..utils.distributed import (
    all_gather_objects, all_reduce_sum, barrier, is_distributed, is_main_process, world_info,
)
from ..utils.errors import UserError

__all__ = [
    "ShardSampler",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "shutdown_distributed",
    "world_info",
]


def _check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` for a malformed name or a GPU this machine lacks."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"device {device!r} is not a device name: use auto, cpu, cuda or cuda:K") from None
    if resolved.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:K")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use cpu (or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise UserError(f"device {device!r} asked for, but torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    return resolved


def init_distributed(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1) and pick this rank's device.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:K"``. Uses NCCL
    for CUDA and gloo for CPU. Without torchrun this only resolves the device.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = _check_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if world > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return resolved


class ShardSampler(Sampler[int]):
    """Deal whole batches round-robin: the images from ``start`` on are cut into blocks of ``block``
    consecutive indices and rank ``r`` reads blocks ``r, r + world, ...``.

    Every index is read exactly once over all ranks (no padding, so counts stay exact), and each
    batch holds the same images as in a single-process run, so even batch-dependent evaluation
    (prediction-time BN) gives identical numbers. Ranks may differ by one batch.
    """

    def __init__(self, length: int, rank: int = 0, world: int = 1, start: int = 0, block: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.length, self.rank, self.world, self.start, self.block = length, rank, world, start, block

    def blocks(self) -> range:
        """The block numbers (counted from ``start``) that this rank reads."""
        total = -(-max(0, self.length - self.start) // self.block)
        return range(self.rank, total, self.world)

    def __iter__(self) -> Iterator[int]:
        for b in self.blocks():
            first = self.start + b * self.block
            yield from range(first, min(first + self.block, self.length))

    def __len__(self) -> int:
        return sum(min(self.block, self.length - self.start - b * self.block) for b in self.blocks())


def shutdown_distributed() -> None:
    """Leave the process group joined by ``init_distributed`` (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
