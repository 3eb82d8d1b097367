"""Calibration images: a seeded sample of an image folder, decoded once into batches."""
from pathlib import Path
from typing import Any, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..evaluation.data import create_eval_data, resolve_eval_data_config
from ..utils.errors import UserError

__all__ = ["calibration_batches"]


def calibration_batches(
    folder: Union[str, Path],
    model: nn.Module,
    num_images: int = 256,
    batch_size: int = 32,
    workers: int = 2,
    seed: int = 0,
    data_config: Optional[Mapping[str, Any]] = None,
) -> List[torch.Tensor]:
    """``num_images`` images of ``folder`` (any tree of images, labels unused; a ``train/`` child is used
    when present), drawn in a seeded random order, prepared with the eval transform of ``data_config``
    (default: ``model``'s pretrained config) by timm's data pipeline and decoded once into batches:
    calibration reads them once per BFN (``num_images x 3 x H x W`` floats: 154 MB for 256 at 224 px).
    Unreadable images are left out. Not sharded: under torchrun every rank calibrates on the same images."""
    if num_images < 1:
        raise UserError(f"the number of calibration images must be >= 1, got {num_images}")
    config = resolve_eval_data_config(model) if data_config is None else data_config
    data = create_eval_data(folder, config, split="train", batch_size=batch_size, workers=workers)
    return [batch.images for batch in data.shuffled(seed).loader(limit=num_images, shard=False) if batch.images is not None]
