"""Adapters that only change BN statistics: source, norm (AdaBN), mix (AdaBN mixed once with the source),
prior (Schneider et al.), batch, rbn (RoTTA's robust BN).

A model without BatchNorm running statistics (an all-GN network) has nothing for them to adapt:
they then predict exactly as the source model (and ``norm`` skips its calibration pass).
"""
from typing import Iterable

import torch
import torch.nn as nn

from ..stats import recalibrate
from ..utils.errors import UserError
from ..utils.norms import bns_with_running_stats
from .base import Adapter

__all__ = ["Source", "Norm", "Mix", "Prior", "Batch", "RobustBN"]


class Source(Adapter):
    """No adaptation: the model as trained."""

    name = "source"


class Norm(Adapter):
    """AdaBN (Li et al. 2016): before predicting a test stream, every BN's statistics become those
    of the whole stream (``recalibrate(mode="full")``, one extra forward pass over it)."""

    name = "norm"
    needs_data = True
    mode = "full"
    prior = 0.0

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.snapshot()  # reset() (episodic protocol) returns to the source statistics

    def _counted(self, batches: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
        for x in batches:
            self.passes.forward += x.shape[0]
            yield x

    def prepare(self, batches: Iterable[torch.Tensor]) -> None:
        if bns_with_running_stats(self.model):
            recalibrate(self.model, self._counted(batches), mode=self.mode, prior=self.prior, inplace=True)


class Mix(Norm):
    """``norm``'s statistics of the whole stream mixed once with the source ones,
    ``N/(N+n) * source + n/(N+n) * stream`` with n the batch size (``recalibrate(mode="mix")``; fixed
    statistics, not Schneider et al.'s per-batch ``prior``)."""

    name = "mix"
    mode = "mix"

    def __init__(self, model: nn.Module, prior: float = 16.0):
        super().__init__(model)
        if not prior >= 0:
            raise UserError(f"prior (the source strength N) must be >= 0, got {prior}")
        self.prior = prior


class Prior(Adapter):
    """Schneider et al. (2020): each test batch of n samples is normalized in every BN with
    N/(N+n) * source + n/(N+n) * batch statistics (``recalibrate(mode="prior")``)."""

    name = "prior"

    def __init__(self, model: nn.Module, prior: float = 16.0):
        super().__init__(model)
        self.batch_statistics = prior == 0  # N = 0: the batch's statistics alone (``batch``)
        if bns_with_running_stats(self.model):
            recalibrate(self.model, mode="prior", prior=prior, inplace=True)


class Batch(Adapter):
    """Prediction-time BN (Nado et al. 2020): every BN normalizes each test batch with its own statistics."""

    name = "batch"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        if bns_with_running_stats(self.model):
            recalibrate(self.model, mode="batch", inplace=True)


class RobustBN(Adapter):
    """RoTTA's robust BN (Yuan et al., CVPR 2023, ``RobustBN2d``): every BN keeps test statistics as an
    EMA of the batch statistics, ``mu <- (1 - m) mu + m mu_batch`` and the same for the (biased) variance,
    starting from the source running statistics, and normalizes each batch with the updated EMA. Built
    for non-i.i.d. streams: one batch of one class moves the statistics by ``m`` only. Alone here, without
    RoTTA's memory bank and teacher; ``m`` = 0.05, RoTTA's ``ALPHA``. Works at batch size 1 where every
    BN gets several values per channel; a BN given one value per channel (1 x 1 maps) would fold a
    variance of 0 into its EMA at every batch, decaying it towards 0, so it stops with the one-line
    error of ``Adapter``, as the methods that normalize with the batch's statistics do."""

    name = "rbn"
    stateful = True
    batch_statistics = True

    def __init__(self, model: nn.Module, momentum: float = 0.05):
        super().__init__(model)
        if not 0 < momentum <= 1:
            raise UserError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        for _, bn in bns_with_running_stats(self.model):
            bn.register_forward_pre_hook(self._update)
        self.snapshot()

    @torch.no_grad()
    def _update(self, bn: nn.Module, args: tuple) -> None:
        """Forward pre-hook (eval mode): fold this batch's statistics into the BN's running ones."""
        x = args[0]
        var, mean = torch.var_mean(x, [0] + list(range(2, x.dim())), unbiased=False)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), self.momentum)
        bn.running_var.lerp_(var.to(bn.running_var.dtype), self.momentum)
