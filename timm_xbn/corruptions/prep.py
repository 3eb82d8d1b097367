"""Loaded uint8 batches -> model inputs: corrupted on the device first (on-the-fly sources), then normalised."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .seeding import corrupt_images

__all__ = ["BatchPrep"]


class BatchPrep:
    """uint8 batch -> float batch on ``device``, corrupted first when ``corruption`` is given
    (torch implementation, each image seeded by its own pixels: ``seeding.corrupt_images``),
    normalised with the data config's mean / std."""

    def __init__(self, data_config: Mapping[str, Any], device: torch.device,
                 corruption: Optional[tuple[str, int]] = None, seed: int = 0):
        self.device, self.corruption, self.seed = device, corruption, seed
        self.mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.corruption is not None:
            x = corrupt_images(images, *self.corruption, seed=self.seed, device=self.device)
        else:
            x = images.to(self.device, non_blocking=True)
        return (x.float() - self.mean) / self.std
