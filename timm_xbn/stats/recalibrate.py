"""Re-estimate BN statistics on target data (AdaBN and its variants).

Modes:
  * ``full`` (AdaBN, Li et al. 2016): every BN's statistics become the mean and variance of its
    input over all the target batches (one pass, see ``recalibrate``).
  * ``prior`` (Schneider et al. 2020, ``timm_xbn.stats.prior``): at prediction time every BN mixes
    the source statistics with each test batch's, ``N/(N+n) * source + n/(N+n) * batch`` for a
    batch of n samples, N = ``prior``; no target data is needed beforehand.
  * ``mix``: the ``full`` target statistics mixed once with the source ones,
    ``N/(N+n) * source + n/(N+n) * target`` with n the loader's batch size (fixed statistics;
    this is *not* Schneider et al.'s per-batch method, and ``prior=0`` equals ``full``).
  * ``batch`` (prediction-time BN, Nado et al. 2020): every BN normalizes each test batch with
    that batch's own statistics, also in eval mode.
"""
import copy
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn

from ..utils.device import eval_mode, model_device
from ..utils.distributed import is_distributed
from ..utils.errors import UserError
from ..utils.norms import bns_with_running_stats
from .moments import ChannelMoments, capture_bn_inputs, iterate_inputs
from .prior import prior_weight, use_prior_statistics

__all__ = ["RECALIBRATION_MODES", "recalibrate", "use_batch_stats"]

RECALIBRATION_MODES = ("full", "prior", "mix", "batch")
DATA_FREE_MODES = ("prior", "batch")


def use_batch_stats(bns: List[Tuple[str, nn.Module]]) -> None:
    """Make BNs normalize with each batch's statistics in eval mode, with no running stats at all."""
    for _, bn in bns:
        bn.track_running_stats = False
        bn.running_mean = None
        bn.running_var = None
        bn.num_batches_tracked = None


@torch.no_grad()
def _target_moments(
    model: nn.Module,
    bns: List[Tuple[str, nn.Module]],
    batches: Iterable,
    device: torch.device,
    max_batches: Optional[int],
    progress: bool,
) -> Tuple[Dict[str, ChannelMoments], int]:
    """One pass with the BNs in batch-statistics mode (buffers untouched); returns the input
    moments of each BN over all batches (all ranks) and the size of the first batch."""
    tracking = {bn: bn.track_running_stats for _, bn in bns}
    batch_size = 0
    with eval_mode([model]):
        try:
            for bn in tracking:  # train mode + no tracking: batch statistics, running buffers left alone
                bn.train()
                bn.track_running_stats = False
            with capture_bn_inputs(model, device=device, names=[n for n, _ in bns]) as moments:
                for x in iterate_inputs(batches, device, max_batches, progress, "recalibrating BN"):
                    batch_size = batch_size or x.shape[0]
                    model(x)
        finally:
            for bn, track in tracking.items():
                bn.track_running_stats = track
    for acc in moments.values():
        acc.all_reduce_()
    if is_distributed():
        size = torch.tensor([batch_size], device=device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        batch_size = int(size.item())
    if batch_size == 0:
        raise UserError("batches is empty: no target data to recalibrate the BN statistics with")
    return moments, batch_size


def recalibrate(
    model: nn.Module,
    batches: Optional[Iterable] = None,
    mode: str = "full",
    prior: float = 16.0,
    inplace: bool = False,
    device: Union[str, torch.device, None] = None,
    max_batches: Optional[int] = None,
    progress: bool = False,
    mix_count: Optional[int] = None,
) -> nn.Module:
    """Adapt the BN statistics of ``model`` to the target data in ``batches``.

    ``full`` and ``mix`` make one pass over ``batches`` (no gradients; dropout etc. stay in eval
    mode). During the pass every BN normalizes with the current batch's statistics, as
    ``torch.optim.swa_utils.update_bn`` and AdaBN implementations do: each BN sees its input as
    produced by upstream BNs in prediction-time (per-batch) mode, not by upstream BNs with the
    final adapted statistics. The two agree for large batches; for small ones deeper BNs' statistics
    are somewhat off (issue 12 reports a ResNet-50's layer4 sigma 5.5 % off at batch 16). The BN
    input is accumulated
    over ALL samples (not an EMA) in float64, and ``running_mean`` / ``running_var`` become its
    exact mean and *population* variance (divided by the count, not count - 1: the count is
    N*H*W values per channel, and this is the variance BN's eval-mode normalization should use;
    PyTorch's EMA would store unbiased per-batch variances instead). ``mix`` mixes these with
    the source statistics once, ``N/(N+n) * source + n/(N+n) * target``, with N = ``prior`` and n
    the number of samples in the first target batch (the loader's batch size); ``prior=0`` equals
    ``full``. ``num_batches_tracked`` and ``momentum`` are left unchanged.
    A BN that never runs keeps its statistics. Under torch.distributed every rank passes its
    shard and all ranks get the statistics of the whole data set.

    ``prior`` and ``batch`` need no data (``batches`` is ignored) and act per test batch in eval
    mode, so predictions depend on the batch size and composition. ``prior`` (Schneider et al.)
    keeps the source statistics and mixes them with each batch's in every BN
    (``timm_xbn.stats.prior``). ``batch``: the BNs drop their running statistics
    (``track_running_stats=False``), so in eval mode they normalize each batch with its own
    statistics while the rest of the model (dropout, ...) stays in eval mode.

    Args:
        model: a model with BatchNorm layers; the caller's model is never changed unless
            ``inplace=True``. Per-module train/eval modes are restored.
        batches: Tensors, or tuples/lists whose first element is the input (a DataLoader).
        mode: ``"full"``, ``"prior"``, ``"mix"`` or ``"batch"``.
        prior: N >= 0, the strength of the source statistics (``prior`` and ``mix`` modes; may be inf).
        inplace: adapt ``model`` itself instead of a deep copy.
        device: where to run the batches; defaults to the model's device (the model is not moved).
        max_batches: use at most this many batches.
        progress: show a rich progress bar.
        mix_count: n in mode ``mix``, the number of samples the target statistics stand for (default: the
            first batch's size); pass the number of target images to weight the two by image counts.

    Returns:
        The recalibrated model (``model`` itself when ``inplace``).
    """
    if mode not in RECALIBRATION_MODES:
        raise UserError(f"mode must be one of {', '.join(RECALIBRATION_MODES)}, got {mode!r}")
    if not bns_with_running_stats(model):
        raise UserError(f"{type(model).__name__} has no BatchNorm layers with running statistics to recalibrate")
    if mode not in DATA_FREE_MODES and batches is None:
        raise UserError(f"mode={mode!r} needs target batches")
    if mode in ("prior", "mix") and not prior >= 0:
        raise UserError(f"prior (the source strength N) must be >= 0, got {prior}")
    if mix_count is not None and mix_count < 1:
        raise UserError(f"mix_count (the target's sample count n) must be >= 1, got {mix_count}")

    target = model if inplace else copy.deepcopy(model)
    bns = bns_with_running_stats(target)
    if mode == "batch":
        use_batch_stats(bns)
        return target
    if mode == "prior":
        use_prior_statistics(bns, prior)
        return target

    device = torch.device(device) if device is not None else model_device(target)
    moments, batch_size = _target_moments(target, bns, batches, device, max_batches, progress)
    source_weight = prior_weight(prior, mix_count or batch_size) if mode == "mix" else 0.0
    with torch.no_grad():
        for name, bn in bns:
            acc = moments[name]
            if acc.count == 0:
                continue
            for buf, stat in ((bn.running_mean, acc.mean), (bn.running_var, acc.var)):
                stat = stat.to(buf.device)
                buf.copy_(source_weight * buf.double() + (1.0 - source_weight) * stat)
    return target
