"""Random state of on-the-fly corruptions, keyed by the image: the same image gets the same pixels in
any batch, position, order, batch size, resumed run or torchrun shard.

Each image's seed is a hash (BLAKE2b, 64 bits) of (seed, corruption, severity, the image's shape and
uint8 pixels after the evaluation transform): a function of that one image, not of its index, so it
also holds when a folder gains or loses files or is read through another class map. Two identical
images get the same corruption. The torch implementation gives each image its own generator seeded
this way (``corrupt_images``); the reference package is seeded with the same number (low 32 bits).

Cost, for the 9 corruptions that draw random numbers (the others need no seed): the hash ~0.2 ms per
224 px image and a generator ~0.02 ms (CPU, one thread), and the draws are made image by image
(``ImageDraws``: the same numbers of values in more, smaller calls), which changes little on the CPU,
where batches are corrupted in chunks of 4 images anyway. On a GPU each draw becomes one small kernel
per image (fog: one per image, its plasma drawn at once): a fixed launch cost per image instead of per batch.
"""
from __future__ import annotations

import hashlib
from typing import Union

import numpy as np
import torch
from torch import Tensor

from .names import ALL_CORRUPTIONS
from .torch_ops import RANDOM_CORRUPTIONS, corrupt_batch

__all__ = ["corrupt_images", "pixel_seed"]


def pixel_seed(seed: int, name: str, severity: int, image: Union[Tensor, np.ndarray]) -> int:
    """A 63-bit seed for corrupting ``image`` (uint8, any layout: its bytes and shape are hashed)."""
    pixels = np.ascontiguousarray(image.cpu().numpy() if isinstance(image, Tensor) else image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixel_seed hashes uint8 images, got {pixels.dtype}")
    digest = hashlib.blake2b(f"{seed}/{ALL_CORRUPTIONS.index(name)}/{severity}/{pixels.shape}".encode(), digest_size=8)
    digest.update(memoryview(pixels).cast("B"))
    return int.from_bytes(digest.digest(), "little") >> 1


def corrupt_images(images: Tensor, name: str, severity: int, seed: int = 0,
                   device: Union[str, torch.device, None] = None) -> Tensor:
    """Corrupt a uint8 batch (B, 3, H, W) on ``device`` (default: the images'), each image with its
    own generator seeded by ``pixel_seed``: an image's result does not depend on the rest of the batch
    (the deterministic corruptions, which draw nothing, skip the seeding)."""
    device = torch.device(device) if device is not None else images.device
    generators = [torch.Generator(device=device).manual_seed(pixel_seed(seed, name, severity, image))
                  for image in images] if name in RANDOM_CORRUPTIONS else None
    return corrupt_batch(images.to(device, non_blocking=True), name, severity, generators)
