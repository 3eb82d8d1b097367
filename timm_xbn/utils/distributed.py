"""torch.distributed helpers that are no-ops in a single process: rank and world size, sums, gathers, barriers."""
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

__all__ = ["all_gather_objects", "all_reduce_sum", "barrier", "is_distributed", "is_main_process", "world_info"]


def is_distributed() -> bool:
    """True when torch.distributed is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> Tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without distributed."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world_info()[0] == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (a new tensor; the input is left unchanged)."""
    if not is_distributed():
        return tensor.clone()
    on_gpu = dist.get_backend() == "nccl"
    out = tensor.to(torch.device("cuda", torch.cuda.current_device()), copy=True) if on_gpu else tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without distributed)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
