"""Shared by the corruption kernel tests: real photo batches, seeded generators, call counters, and
a corruption run through both paths (the compiled kernels and the tensor program CUDA batches run)."""
from typing import Callable, List, Optional, Union

import numpy as np
import pytest
import torch

from timm_xbn.corruptions import corrupt_batch, torch_ops
from timm_xbn.corruptions.agreement import real_images


def photo_batch(count: int, height: int, width: int) -> torch.Tensor:
    """``count`` real photos cropped to (height, width), as a contiguous uint8 (B, 3, H, W) batch."""
    images = np.stack(real_images(count, max(height, width)))[:, :height, :width]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def seeded(count: int, seed: int, per_image: bool = False) -> Union[torch.Generator, List[torch.Generator]]:
    """One generator for the batch, or one per image (seeds seed, seed + 1, ...: ``ImageDraws``)."""
    if per_image:
        return [torch.Generator().manual_seed(seed + i) for i in range(count)]
    return torch.Generator().manual_seed(seed)


def counting(monkeypatch: pytest.MonkeyPatch, module, name: str) -> list:
    """Count the calls of ``module.name`` (so a test knows a kernel ran): one entry per call."""
    calls, kernel = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def tensor_program(patch: pytest.MonkeyPatch) -> None:
    """What CUDA batches run, on the CPU: the torch ops in place of the kernels, NumPy and OpenCV."""
    patch.setattr(torch_ops, "_on_host", lambda t: False)


def both_paths(monkeypatch: pytest.MonkeyPatch, x: torch.Tensor, name: str, severity: int, seed: int = 0,
               per_image: bool = False, switch_off: Callable[[pytest.MonkeyPatch], None] = tensor_program,
               draws: Optional[Callable] = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel path, tensor program) results of one corruption of ``x``, from equal generators (or
    ``draws()``): the second with ``switch_off`` applied (default: ``tensor_program``)."""
    def run() -> torch.Tensor:
        return corrupt_batch(x, name, severity, seeded(len(x), seed, per_image), draws=draws and draws(), **kwargs)

    kernel = run()
    with monkeypatch.context() as patch:
        switch_off(patch)
        return kernel, run()
