"""Adapters that only change BN statistics: source, norm (AdaBN), prior (Schneider et al.), batch.

A model without BatchNorm running statistics (an all-GN network) has nothing for them to adapt:
they then predict exactly as the source model (and ``norm`` skips its calibration pass).
"""
from typing import Iterable

import torch
import torch.nn as nn

from ..stats import recalibrate
from ..utils.norms import bns_with_running_stats
from .base import Adapter

__all__ = ["Source", "Norm", "Prior", "Batch"]


class Source(Adapter):
    """No adaptation: the model as trained."""


class Norm(Adapter):
    """AdaBN (Li et al. 2016): before predicting a test stream, every BN's statistics become those
    of the whole stream (``recalibrate(mode="full")``, one extra forward pass over it)."""

    needs_data = True

    def prepare(self, batches: Iterable[torch.Tensor]) -> None:
        if not bns_with_running_stats(self.model):
            return

        def counted() -> Iterable[torch.Tensor]:
            for x in batches:
                self.passes.forward += x.shape[0]
                yield x

        recalibrate(self.model, counted(), mode="full", inplace=True)


class Prior(Adapter):
    """Schneider et al. (2020): each test batch of n samples is normalized in every BN with
    N/(N+n) * source + n/(N+n) * batch statistics (``recalibrate(mode="prior")``)."""

    def __init__(self, model: nn.Module, prior: float = 16.0):
        super().__init__(model)
        if bns_with_running_stats(self.model):
            recalibrate(self.model, mode="prior", prior=prior, inplace=True)


class Batch(Adapter):
    """Prediction-time BN (Nado et al. 2020): every BN normalizes each test batch with its own statistics."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        if bns_with_running_stats(self.model):
            recalibrate(self.model, mode="batch", inplace=True)
