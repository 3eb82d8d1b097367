"""Estimation shift magnitude (ESM, Definition 2 of the paper).

The *expected* statistics of a BN (Definition 1) are the mean and variance of its input over
the test set, computed with the trained model in eval mode. ESM compares them with the BN's
*estimated* statistics (``running_mean`` / ``running_var``):

    ESM_mu = ||mu_hat - mu_tilde||_2,   ESM_sigma = ||sqrt(var_hat) - sqrt(var_tilde)||_2
"""
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..utils.device import eval_mode, model_device
from ..utils.errors import UserError
from ..utils.norms import bn_modules
from .moments import ChannelMoments, capture_bn_inputs, iterate_inputs

__all__ = [
    "BNStats", "ESMRecord", "expected_bn_stats", "esm_from_stats", "estimation_shift", "esm_records_to_rows",
    "stats_from_moments",
]

# (mean, population variance, number of values per channel); mean/var are float64 tensors.
BNStats = Tuple[torch.Tensor, torch.Tensor, int]


@dataclass(frozen=True)
class ESMRecord:
    """ESM of one BN layer.

    ``depth`` is the 1-based position of the BN among all BNs of the model in registration
    order (timm registers modules in forward order). The ``*_per_channel`` values divide the
    L2 norms by sqrt(channels), i.e. they are the RMS over channels, so layers of different
    width compare.
    """

    name: str
    depth: int
    channels: int
    esm_mu: float
    esm_sigma: float
    esm_mu_per_channel: float
    esm_sigma_per_channel: float


@torch.no_grad()
def expected_bn_stats(
    model: nn.Module,
    batches: Iterable,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    max_batches: Optional[int] = None,
) -> Dict[str, BNStats]:
    """Exact mean and population variance of every BN's input over ``batches`` (Definition 1).

    The model runs in eval mode under ``torch.no_grad`` with forward pre-hooks on each BN
    (``nn.BatchNorm1d/2d/3d``, inputs (N, C), (N, C, L), (N, C, H, W), ...); statistics are
    reduced over every dim except C and merged per batch in float64, so they do not depend on
    the batch size. Hooks are removed and the train/eval mode restored afterwards; nothing
    else of the model is touched. Under torch.distributed each rank passes its shard and gets
    the statistics of all shards together.

    Args:
        model: any module with BatchNorm layers.
        batches: Tensors, or tuples/lists whose first element is the input (a DataLoader).
        device: where to run the batches; defaults to the model's device (the model is not moved).
        progress: show a rich progress bar.
        max_batches: stop after this many batches.

    Returns:
        ``{bn_name: (mean, var, count)}`` in registration order, ``mean``/``var`` float64
        tensors of shape (C,) on the CPU; BNs that never ran are left out.
    """
    if not bn_modules(model):
        raise UserError(f"{type(model).__name__} has no BatchNorm layers")
    device = torch.device(device) if device is not None else model_device(model)
    with eval_mode([model]), capture_bn_inputs(model, device=device) as moments:
        for x in iterate_inputs(batches, device, max_batches, progress, "expected BN stats"):
            model(x)
    stats = stats_from_moments(moments)
    if not stats:
        raise UserError("batches is empty (or never reached a BN): no data to compute the expected BN statistics from")
    return stats


def stats_from_moments(moments: Mapping[str, ChannelMoments]) -> Dict[str, BNStats]:
    """``{bn_name: (mean, var, count)}`` (CPU) from ``capture_bn_inputs`` moments, merged over all
    ranks under torch.distributed; BNs that never ran are left out."""
    stats: Dict[str, BNStats] = {}
    for name, acc in moments.items():
        acc.all_reduce_()
        if acc.count:
            stats[name] = (acc.mean.cpu(), acc.var.cpu(), acc.count)
    return stats


def esm_from_stats(model: nn.Module, stats: Dict[str, BNStats]) -> List[ESMRecord]:
    """ESM of every BN in ``stats`` (from ``expected_bn_stats``) against its running statistics.

    BNs without running statistics (``track_running_stats=False``) have nothing estimated and
    are skipped. Records are ordered by depth.
    """
    depth_of = {name: i for i, (name, _) in enumerate(bn_modules(model), start=1)}
    records = []
    for name, (mean, var, _count) in stats.items():
        if name not in depth_of:
            raise UserError(f"{name!r} is not a BatchNorm of {type(model).__name__}; BNs: {list(depth_of)[:5]} ...")
        bn = model.get_submodule(name)
        if bn.running_mean is None or bn.running_var is None:
            continue
        mu_hat = bn.running_mean.detach().to("cpu", torch.float64)
        var_hat = bn.running_var.detach().to("cpu", torch.float64)
        mean = mean.to("cpu", torch.float64)
        var = var.to("cpu", torch.float64)
        if mean.shape != mu_hat.shape:
            raise UserError(
                f"{name}: expected stats have shape {tuple(mean.shape)}, running stats {tuple(mu_hat.shape)}"
            )
        esm_mu = torch.linalg.vector_norm(mu_hat - mean).item()
        esm_sigma = torch.linalg.vector_norm(var_hat.clamp(min=0).sqrt() - var.clamp(min=0).sqrt()).item()
        scale = mean.numel() ** 0.5
        records.append(ESMRecord(
            name=name,
            depth=depth_of[name],
            channels=mean.numel(),
            esm_mu=esm_mu,
            esm_sigma=esm_sigma,
            esm_mu_per_channel=esm_mu / scale,
            esm_sigma_per_channel=esm_sigma / scale,
        ))
    return sorted(records, key=lambda r: r.depth)


def estimation_shift(
    model: nn.Module,
    batches: Iterable,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    max_batches: Optional[int] = None,
) -> List[ESMRecord]:
    """ESM of every BN of ``model`` on the data in ``batches`` (the test set, per the paper)."""
    return esm_from_stats(model, expected_bn_stats(model, batches, device, progress, max_batches))


def esm_records_to_rows(records: Iterable[ESMRecord]) -> List[dict]:
    """Plain dicts, one per layer, as the ``"layers"`` entries of the ``esm`` results JSON."""
    return [asdict(r) for r in records]
