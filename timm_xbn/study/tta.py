"""Test-time adaptation when test batches are not i.i.d.: does a network with fewer BNs lose less?

The study's trained Section 5 networks (stored weights, nothing retrained) adapt to a corrupted
test set read as three streams of the same images:

* ``iid``: a seeded shuffle, batches of ``batch_size`` (the setting every method assumes);
* ``label-shift``: class-imbalanced, temporally correlated labels (NOTE / RoTTA's Dirichlet
  protocol, ``timm_xbn.adapt.streams.dirichlet_order`` with ``dirichlet``), batches of ``batch_size``;
* ``batch-1``: the i.i.d. order one image at a time (SAR's "batch size 1" wild setting).

Every method runs on its own copy of the network, reset for each stream (episodic), so the streams
differ only in how the same images are grouped. The loss of a stream is its error minus the i.i.d.
error; ``source`` does not depend on batches, so its loss is exactly 0 (a check of the setup).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, Tuple

import torch
import torch.nn as nn

from ..adapt import create_adapter
from ..adapt.protocol import run_protocol
from ..adapt.streams import dirichlet_order

__all__ = ["TTA_STREAMS", "TTAConfig", "stream_orders", "tta_errors"]

TTA_STREAMS = ("iid", "label-shift", "batch-1")


@dataclass
class TTAConfig:
    """Settings of the test-time adaptation part (``xbn-eval study --part tta``)."""

    variants: Tuple[str, ...] = ("BN", "XBN-GN", "GN")
    methods: Tuple[str, ...] = ("source", "norm", "prior:16", "tent", "sar")
    corruption: str = "gaussian_noise"
    severity: int = 3
    test_samples: int = 500  # the batch-1 stream costs one backward pass per image for TENT and two for SAR
    batch_size: int = 64
    dirichlet: float = 0.1

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def stream_orders(labels: torch.Tensor, cfg: TTAConfig, seed: int) -> Dict[str, Tuple[torch.Tensor, int]]:
    """Stream -> (read order of the images, batch size); every stream reads every image once."""
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shifted = torch.tensor(dirichlet_order(labels.tolist(), cfg.dirichlet, seed), dtype=torch.long)
    return {"iid": (shuffled, cfg.batch_size), "label-shift": (shifted, cfg.batch_size), "batch-1": (shuffled, 1)}


def _batches(images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int) -> Iterator:
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield images[idx], labels[idx]


def tta_errors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TTAConfig, seed: int) -> Dict[str, Dict[str, float]]:
    """Top-1 error (%) of every method of ``cfg`` on every stream of ``(images, labels)`` (normalized
    model inputs): ``{stream: {method: error}}``; ``model`` is never changed."""
    errors: Dict[str, Dict[str, float]] = {}
    for stream, (order, batch_size) in stream_orders(labels, cfg, seed).items():
        streams = {stream: lambda o=order, b=batch_size: _batches(images, labels, o, b)}
        errors[stream] = {method: run_protocol(create_adapter(model, method), streams)[stream]["top1_error"]
                          for method in cfg.methods}
    return errors
