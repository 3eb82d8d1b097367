"""The mixed stream: SAR's "mixed distribution shifts" (Niu et al., ICLR 2023), every (corruption,
severity) pair of a ``CorruptionSource`` shuffled together into one stream.

The pairs' data sets are concatenated (``MixedDataset``) and read in one seeded random order
(``EvalData.shuffled``, the i.i.d. stream's shuffle): every image of every pair is read exactly once,
and a batch mixes the pairs. Each item carries the index of the pair it came from, so that the
on-the-fly torch corruptions are applied per image with that image's own pair (``MixedPrep``; the
corruptions are seeded per image, so an image gets the same pixels as in its pair's own stream) and
the errors are counted per pair (``MixedPass``). Adapters run through the whole stream once, never
reset inside it.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..corruptions.datasets import CorruptionSource
from ..corruptions.prep import BatchPrep
from ..evaluation.data import EvalData, SkippedSample
from ..evaluation.metrics import SCORE_SIZE, score_batch
from ..utils.device import model_device
from ..utils.errors import UserError

__all__ = ["MixedDataset", "MixedPass", "MixedPrep", "mixed_data"]


class MixedDataset(Dataset):
    """The items of ``datasets`` one after another; item ``i`` -> ``(image, tensor([label, pair]))``,
    ``pair`` the index of the data set it came from (a skipped image keeps its ``SkippedSample``,
    with ``i`` as its index and the pair in its file name)."""

    def __init__(self, datasets: Sequence[Dataset], names: Sequence[str]):
        self.datasets, self.names = list(datasets), list(names)
        self.starts = [0]
        for dataset in self.datasets:
            self.starts.append(self.starts[-1] + len(dataset))

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(pair, index in that pair's data set) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        pair = bisect.bisect_right(self.starts, index) - 1
        return pair, index - self.starts[pair]

    def __getitem__(self, index: int):
        pair, inner = self.locate(index)
        item = self.datasets[pair][inner]
        if isinstance(item, SkippedSample):
            return item._replace(index=index, filename=f"{self.names[pair]}: {item.filename}")
        image, label = item
        return image, torch.tensor([int(label), pair])


def mixed_data(source: CorruptionSource, seed: int) -> EvalData:
    """Every pair of ``source`` (in ``source.pairs`` order) in one data set, read in the seeded shuffle."""
    if not source.pairs:
        raise UserError(f"no corruption x severity to mix in {source.source}")
    parts = [source.pair_data(c, s) for c, s in source.pairs]
    dataset = MixedDataset([p.dataset for p in parts], [f"{c}/{s}" for c, s in source.pairs])
    mixed = dataclasses.replace(parts[0], dataset=dataset, source=f"{source.source} (mixed: {len(parts)} pairs)",
                                info={"num_images": len(dataset)}, order=None)
    return mixed.shuffled(seed)


class MixedPrep:
    """uint8 batch + pair of each image -> float batch on ``device``: each image prepared by its own
    pair's ``BatchPrep`` (corrupted with that pair on the device in the torch mode)."""

    def __init__(self, source: CorruptionSource, device: torch.device, seed: int = 0):
        self.device = device
        self.preps = [BatchPrep(source.data_config, device, pair if source.on_device else None, seed)
                      for pair in source.pairs]

    def __call__(self, images: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        out = torch.empty(images.shape, dtype=torch.float32, device=self.device)
        for pair in pairs.unique().tolist():
            chosen = (pairs == pair).to(self.device)
            out[chosen] = self.preps[pair](images[pairs == pair])
        return out


class MixedPass:
    """What ``run_pass`` drives over a mixed stream: every predictor (a model or an ``Adapter``) on each
    batch, with its correct@1, correct@5 and sample counts split by the pair each image came from. Its keys
    are one per predictor x pair (``"<predictor key> @ <pair>"``), so that ``run_pass`` sums them over ranks."""

    def __init__(self, adapters: Mapping[str, nn.Module], prep: MixedPrep, pairs: Sequence[str]):
        self.adapters, self.prep, self.pairs = dict(adapters), prep, list(pairs)
        self.keys = [f"{key} @ {pair}" for key in self.adapters for pair in self.pairs]
        self.devices = {key: model_device(a) for key, a in self.adapters.items()}
        self.counts = torch.zeros(len(self.adapters), len(self.pairs), SCORE_SIZE, dtype=torch.int64)

    @torch.no_grad()
    def update(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        labels, pairs = targets[:, 0], targets[:, 1]
        x = self.prep(images, pairs)
        for i, (key, adapter) in enumerate(self.adapters.items()):
            logits = adapter(x.to(self.devices[key])).cpu()
            for pair in pairs.unique().tolist():
                chosen = pairs == pair
                self.counts[i, pair] += score_batch(logits[chosen], labels[chosen])

    def counts_tensor(self) -> torch.Tensor:
        """(adapters x pairs, ``SCORE_SIZE``) int64, in ``keys`` order."""
        return self.counts.view(-1, SCORE_SIZE).clone()

    def split(self, counts: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """``run_pass``'s counts per setting key -> adapter key -> pair -> counts."""
        return {key: {pair: counts[f"{key} @ {pair}"] for pair in self.pairs} for key in self.adapters}
