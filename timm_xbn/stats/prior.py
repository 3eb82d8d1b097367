"""Schneider et al. (2020)'s BN adaptation: source statistics mixed with each test batch's, at prediction time.

For a test batch of n samples every BN normalizes with
``mu = N/(N+n) * mu_source + n/(N+n) * mu_batch`` and the same mix of the source running variance
and the batch's (biased) variance, where N (``prior``) is the strength of the source statistics.
All BNs are mixed, so downstream BNs see inputs produced by mixed upstream BNs. N=0 is
prediction-time BN (Nado et al. 2020); N=inf is the source model.

The batch variance is the biased one (what BN normalizes with in training mode), so N=0 is exactly
prediction-time BN. bethgelab/robustness (robusta) reads the batch statistics off a momentum-1 BN
and so mixes the unbiased variance, m/(m-1) times larger for m = n*H*W values per channel: a
difference that matters only for small batches at small feature maps.
"""
import math
from typing import Tuple

import torch
import torch.nn as nn

from ..utils.errors import UserError

__all__ = ["prior_weight", "use_prior_statistics"]


def prior_weight(prior: float, batch_size: int) -> float:
    """N/(N+n): the weight of the source statistics for a batch of ``batch_size`` samples (1 for N=inf)."""
    return 1.0 if math.isinf(prior) else prior / (prior + batch_size)


def _mix(bn: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook: swap the running statistics for their mix with this batch's (eval mode only)."""
    if bn.training:
        return
    x = args[0].detach()  # statistics only: BN's eval forward takes no gradient through them
    dims = [0] + list(range(2, x.dim()))
    weight = prior_weight(bn.xbn_prior, x.shape[0])
    mean, var = bn.xbn_source_stats
    bn.running_mean = weight * mean + (1.0 - weight) * x.mean(dims)
    bn.running_var = weight * var + (1.0 - weight) * x.var(dims, unbiased=False)


def _restore(bn: nn.Module, _args, _output) -> None:
    """Forward hook: put the source statistics back, so the model's state never holds a batch's mix."""
    bn.running_mean, bn.running_var = bn.xbn_source_stats


def use_prior_statistics(bns: "list[tuple[str, nn.Module]]", prior: float) -> None:
    """Make each BN of ``bns`` (which must hold running statistics) mix them with every eval-mode
    batch's statistics, N = ``prior``; the running statistics themselves stay the source ones."""
    if not prior >= 0:
        raise UserError(f"prior (the source strength N) must be >= 0, got {prior}")
    for _, bn in bns:
        bn.xbn_prior = float(prior)
        bn.xbn_source_stats = (bn.running_mean, bn.running_var)
        bn.register_forward_pre_hook(_mix)
        bn.register_forward_hook(_restore)
