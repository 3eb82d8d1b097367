"""Disturb the estimated population statistics of BNs (Eq. 5 of the paper).

    mu_delta = (1 + d_mu) * mu_hat,   var_delta = (1 + d_sigma) * var_hat,   d ~ Uniform(-D, D)

with one ``d_mu`` and one ``d_sigma`` per channel. The paper's Figure 8 disturbs the first BN of
each of the first six residual blocks of a ResNet-50 and averages top-1 over five seeds.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..surgery import find_residual_blocks, supported_families_text
from ..utils.errors import UserError
from ..utils.norms import bn_modules, bns_with_running_stats, is_bn

__all__ = [
    "Perturbation", "disturbed_values", "perturbation_factors", "perturb_bn_stats", "select_perturbation_targets",
]

Factors = Tuple[torch.Tensor, torch.Tensor]


def _has_running_stats(module: nn.Module) -> bool:
    return is_bn(module) and module.running_mean is not None and module.running_var is not None


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 <= delta < 1.0:
        raise UserError(f"noise magnitude delta must be in [0, 1) so that 1 + d stays positive, got {delta}")
    return delta


def perturbation_factors(num_channels_per_target: Sequence[int], delta: float, seed: int) -> List[Factors]:
    """The multiplicative factors ``(1 + d_mu, 1 + d_sigma)`` for each target, as float64 CPU tensors.

    A ``torch.Generator`` seeded with ``seed`` draws, for each target in order, ``d_mu`` for all
    its channels and then ``d_sigma`` for all its channels, uniformly in [-delta, delta). The same
    (channels, delta, seed) always give the same factors, so sweeps can precompute them.
    """
    delta = _check_delta(delta)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    factors = []
    for channels in num_channels_per_target:
        if int(channels) < 1:
            raise ValueError(f"each target needs at least one channel, got {channels}")
        d_mu = (torch.rand(int(channels), generator=generator, dtype=torch.float64) * 2 - 1) * delta
        d_sigma = (torch.rand(int(channels), generator=generator, dtype=torch.float64) * 2 - 1) * delta
        factors.append((1 + d_mu, 1 + d_sigma))
    return factors


def disturbed_values(modules: Sequence[nn.Module], factors: Sequence[Factors]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``(buffer, Eq. 5 value)`` for the running mean and var of each BN: the buffer times its
    factor, computed in float64 and cast back to the buffer's dtype and device."""
    return [
        (buf, (buf.double() * factor.to(buf.device)).to(buf.dtype))
        for bn, (mu_factor, var_factor) in zip(modules, factors)
        for buf, factor in ((bn.running_mean, mu_factor), (bn.running_var, var_factor))
    ]


@dataclass(frozen=True)
class Perturbation:
    """What ``perturb_bn_stats`` applied: the target BN names and their ``(mu_factor, var_factor)``."""

    delta: float
    seed: int
    names: Tuple[str, ...]
    factors: Tuple[Factors, ...]


def _resolve_targets(model: nn.Module, targets: Sequence[str]) -> List[nn.Module]:
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise UserError("no perturbation targets given; use select_perturbation_targets(model) to pick them")
    if len(set(targets)) != len(targets):
        raise UserError(f"perturbation targets contain duplicates: {list(targets)}")
    modules = []
    for name in targets:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"{name!r} is not a submodule of {type(model).__name__}") from None
        if not _has_running_stats(module):
            raise UserError(f"{name!r} is a {type(module).__name__}, expected a BatchNorm with running statistics")
        modules.append(module)
    return modules


@contextmanager
def perturb_bn_stats(model: nn.Module, delta: float, seed: int, targets: Sequence[str]) -> Iterator[Perturbation]:
    """Within the ``with`` block the ``targets`` BNs use Eq. 5's disturbed statistics.

    The running mean and variance of each target are multiplied by the factors of
    ``perturbation_factors`` (computed in float64, then cast to the buffer's dtype). On exit,
    also on an exception or KeyboardInterrupt, every ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` buffer of every BN of ``model`` is restored bit-exactly by copying a
    saved clone back into the original buffer object.

    Example::

        targets = select_perturbation_targets(model, blocks=6)
        with perturb_bn_stats(model, delta=0.3, seed=0, targets=targets) as p:
            top1 = evaluate(model)
    """
    delta = _check_delta(delta)
    modules = _resolve_targets(model, targets)
    factors = perturbation_factors([m.num_features for m in modules], delta, seed)
    saved = [
        (bn, key, buf, buf.detach().clone())
        for _, bn in bn_modules(model)
        for key, buf in bn.named_buffers(recurse=False)
        if key in ("running_mean", "running_var", "num_batches_tracked") and buf is not None
    ]
    try:
        with torch.no_grad():
            for buf, value in disturbed_values(modules, factors):
                buf.copy_(value)
        yield Perturbation(delta, int(seed), tuple(targets), tuple(factors))
    finally:
        with torch.no_grad():
            for bn, key, buf, clone in saved:
                if bn._buffers.get(key) is not buf:  # the buffer was re-assigned inside the block
                    bn._buffers[key] = buf
                buf.copy_(clone)


def _first_bn_of_block(model: nn.Module, block) -> str:
    for slot in block.norm_slots:
        for name in slot:
            if _has_running_stats(model.get_submodule(name)):
                return name
    raise UserError(
        f"block {block.name} ({type(block.module).__name__}) has no BatchNorm with running statistics "
        f"on its main path (norm slots: {block.norm_slots})"
    )


def select_perturbation_targets(
    model: nn.Module,
    blocks: Union[int, Sequence[str], None] = 6,
    scope: str = "first",
) -> List[str]:
    """Qualified names of the BNs to disturb, in network order.

    Args:
        model: a BN model (a timm CNN with residual blocks, or anything with BNs for ``scope="all"``).
        blocks: ``N`` = the first N residual blocks (1-based over the whole network, as
            ``find_residual_blocks`` numbers them); a sequence of block names (e.g.
            ``["layer1.0", "layer2.1"]``) = those blocks; ``None`` = every BN of the model.
        scope: ``"first"`` = the first BN of each disturbed block (the paper's rule); ``"all"`` =
            every BN of the model, whatever ``blocks`` says (works for MLPs too).

    The first BN of a block is the first main-path norm slot that still holds a BatchNorm with
    running statistics. In a BN network that is slot 1 (``bn1``); in an XBNBlock-P1 network slot 1
    is the batch-free norm, so slot 2 (``bn2``) is disturbed; a D-variant's unconverted blocks
    keep slot 1. Shortcut/downsample BNs are never a block's first BN.
    """
    if scope not in ("first", "all"):
        raise UserError(f"scope must be 'first' or 'all', got {scope!r}")
    every_bn = [name for name, _ in bns_with_running_stats(model)]
    if not every_bn:
        raise UserError(f"{type(model).__name__} has no BatchNorm layers with running statistics to perturb")
    if scope == "all" or blocks is None:
        return every_bn

    residual = find_residual_blocks(model)
    if not residual:
        raise UserError(
            f"no supported residual blocks found in {type(model).__name__}; use blocks=None or scope='all' "
            f"to disturb every BN, or a model of one of these timm families:\n" + supported_families_text()
        )
    if isinstance(blocks, bool) or not isinstance(blocks, (int, str, Sequence)):
        raise UserError(f"blocks must be an int, a sequence of block names or None, got {blocks!r}")
    if isinstance(blocks, int):
        if not 1 <= blocks <= len(residual):
            raise UserError(
                f"blocks={blocks} is out of range: {type(model).__name__} has {len(residual)} residual blocks"
            )
        chosen = residual[:blocks]
    else:
        wanted = [blocks] if isinstance(blocks, str) else list(blocks)
        by_name = {b.name: b for b in residual}
        unknown = [n for n in wanted if n not in by_name]
        if unknown or not wanted:
            valid = ", ".join(list(by_name)[:6])
            raise UserError(
                f"unknown residual block name(s) {unknown or wanted}; {type(model).__name__} has "
                f"{len(residual)} blocks, e.g. {valid}, ..."
            )
        chosen = sorted({by_name[n].index: by_name[n] for n in wanted}.values(), key=lambda b: b.index)
    return [_first_bn_of_block(model, block) for block in chosen]
