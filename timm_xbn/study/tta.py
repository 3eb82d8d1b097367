"""Test-time adaptation when test batches are not i.i.d.: does a network with fewer BNs lose less?

The study's trained Section 5 networks (stored weights, nothing retrained) adapt to a continual
stream of corrupted test images: the test images are split into one block per corruption
(``TTAConfig.corruptions``, a disjoint share each), read block after block, so the gradient methods
take one update per batch over the whole stream (157 at batch 64 on the 10,000 test images). The
same images are read as four streams:

* ``iid``: each block in a seeded shuffle, batches of ``batch_size`` (the setting every method assumes);
* ``label-shift``: each block in its own Dirichlet draw (NOTE / RoTTA's protocol, one draw per
  domain as RoTTA; ``timm_xbn.adapt.streams.dirichlet_order``), batches of ``batch_size``;
* ``batch-1``: the first ``short_samples`` / blocks images of each block's i.i.d. order, one at a time
  (SAR's "batch size 1" wild setting; shorter, since one image per step costs a pass per image);
* ``iid-short``: those same images in i.i.d. batches of ``batch_size``, the reference of ``batch-1``.

The stream draws are seeded by the training seed, so the interval over training seeds covers the
draw too. Every method runs on its own copy of the network, reset for each stream, so the streams
differ only in how the same images are grouped. The loss of a stream is its error minus its
reference's error (``REFERENCE``); ``source`` does not depend on batches, so its loss is exactly 0 (a
check of the setup).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..adapt import create_adapter
from ..adapt.protocol import run_protocol
from ..adapt.streams import dirichlet_order
from ..utils.errors import UserError

__all__ = ["BESIDE", "REFERENCE", "TTA_STREAMS", "Domain", "TTAConfig", "domains_of", "stream_orders", "tta_errors"]

TTA_STREAMS = ("iid", "label-shift", "batch-1", "iid-short")
REFERENCE = {"label-shift": "iid", "batch-1": "iid-short"}  # a stream's loss: its error minus its reference's
BESIDE = ("source", "norm")  # reported beside the claim: source's loss is 0 by construction, norm's whole-stream statistics ignore grouping


@dataclass
class TTAConfig:
    """Settings of the test-time adaptation part (``xbn-eval study --part tta``)."""

    variants: Tuple[str, ...] = ("BN", "XBN-GN", "GN")
    # TENT, EATA and SAR at TENT's small-image setting (its public code's CIFAR-10-C optimizer: Adam, lr 1e-3;
    # SGD at the SAR harness's 0.00025 did not move them in 79 updates), RoTTA at its reference's (Adam, lr 1e-3)
    methods: Tuple[str, ...] = ("source", "norm", "prior:16", "batch", "tent:lr=0.001,optimizer=adam",
                                "eata:lr=0.001,optimizer=adam", "sar:lr=0.001,optimizer=adam", "rbn", "rotta")
    corruptions: Tuple[str, ...] = ("gaussian_noise", "defocus_blur", "fog", "contrast")
    severity: int = 3
    test_samples: Optional[int] = None  # a seeded subset of the test split, a share per corruption (None: all)
    short_samples: int = 400  # the batch-1 stream's images (SAR at batch 1: two passes per image)
    batch_size: int = 64
    dirichlet: float = 0.1

    def __post_init__(self) -> None:
        if not self.corruptions:
            raise UserError("the test-time adaptation stream needs at least one corruption")

    @property
    def claim_methods(self) -> Tuple[str, ...]:
        """The methods whose loss depends on the grouping, averaged into the claim (``BESIDE`` excluded)."""
        return tuple(m for m in self.methods if m not in BESIDE)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class Domain:
    """One block of the continual stream: ``corruption`` on the images ``start:end``."""

    corruption: str
    start: int
    end: int


def domains_of(count: int, corruptions: Sequence[str]) -> List[Domain]:
    """``count`` images split into one contiguous block per corruption (sizes differ by at most one)."""
    if count < len(corruptions):
        raise UserError(f"{count} test images cannot make {len(corruptions)} corruption blocks")
    bounds = [round(i * count / len(corruptions)) for i in range(len(corruptions) + 1)]
    return [Domain(c, bounds[i], bounds[i + 1]) for i, c in enumerate(corruptions)]


def stream_orders(labels: torch.Tensor, domains: Sequence[Domain], cfg: TTAConfig,
                  seed: int) -> Dict[str, Tuple[torch.Tensor, int]]:
    """Stream -> (read order of the images, batch size): the blocks in order, each read as the stream
    reads it (module docstring); ``seed`` draws the shuffles and the Dirichlet orders."""
    per_block = max(1, cfg.short_samples // len(domains))
    iid, shifted, short = [], [], []
    for k, d in enumerate(domains):
        shuffle = d.start + torch.randperm(d.end - d.start, generator=torch.Generator().manual_seed(seed * 1009 + k))
        iid.append(shuffle)
        shifted.append(d.start + torch.tensor(
            dirichlet_order(labels[d.start:d.end].tolist(), cfg.dirichlet, seed, domain=f"{d.corruption}/{cfg.severity}"),
            dtype=torch.long))
        short.append(shuffle[:per_block])
    short_order = torch.cat(short)
    return {"iid": (torch.cat(iid), cfg.batch_size), "label-shift": (torch.cat(shifted), cfg.batch_size),
            "batch-1": (short_order, 1), "iid-short": (short_order, cfg.batch_size)}


def _batches(images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int) -> Iterator:
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield images[idx], labels[idx]


def tta_errors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, domains: Sequence[Domain],
               cfg: TTAConfig, seed: int) -> Dict[str, Dict[str, float]]:
    """Top-1 error (%) of every method of ``cfg`` on every stream of ``(images, labels)`` (normalized
    model inputs, in ``domains`` blocks), streams drawn with ``seed``: ``{stream: {method: error}}``;
    ``model`` is never changed."""
    errors: Dict[str, Dict[str, float]] = {}
    for stream, (order, batch_size) in stream_orders(labels, domains, cfg, seed).items():
        streams = {stream: lambda o=order, b=batch_size: _batches(images, labels, o, b)}
        errors[stream] = {method: run_protocol(create_adapter(model, method), streams)[stream]["top1_error"]
                          for method in cfg.methods}
    return errors
