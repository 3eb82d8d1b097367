"""Batch-free normalization (BFN) layers and their factory.

A BFN normalizes each sample on its own, so it computes the same thing in training and at
test time and has no population statistics to mis-estimate. The paper's XBNBlock puts one
BFN in each residual block to block the accumulation of BN's estimation shift.

Both layers carry an optional ``drop`` and ``act`` (as timm's ``BatchNormAct2d`` does) so a
fused norm+activation can be swapped for a BFN without losing its activation.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.errors import UserError

__all__ = ["GroupNorm2d", "InstanceNorm2d", "BFN_KINDS", "create_bfn", "paper_affine", "resolve_groups", "is_batch_free"]

BFN_KINDS = ("gn", "in", "ln")


class GroupNorm2d(nn.GroupNorm):
    """GroupNorm followed by optional dropout and activation (identity by default)."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        act: Optional[nn.Module] = None,
        drop: Optional[nn.Module] = None,
    ):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalized input before the affine step (what ``weight`` and ``bias`` scale and shift)."""
        return F.group_norm(x, self.num_groups, None, None, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self.act(self.drop(x))


class InstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm (per sample, per channel, over H and W) followed by optional dropout and activation."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = False,
        act: Optional[nn.Module] = None,
        drop: Optional[nn.Module] = None,
    ):
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalized input before the affine step (what ``weight`` and ``bias`` scale and shift)."""
        return F.instance_norm(x, None, None, None, None, True, 0.0, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return self.act(self.drop(x))


def is_batch_free(module: nn.Module) -> bool:
    """True for the BFN layers this package inserts (used to refuse converting twice)."""
    return isinstance(module, (GroupNorm2d, InstanceNorm2d))


def resolve_groups(num_channels: int, groups: Optional[int] = 64, channels_per_group: Optional[int] = None) -> int:
    """Number of GroupNorm groups for ``num_channels``.

    ``groups`` is clamped to the channel count (the authors' rule: layers with fewer than 64
    channels become per-channel). ``channels_per_group`` fixes the group size instead.
    Raises ``ValueError`` when the channels cannot be split evenly.
    """
    if channels_per_group is not None:
        if channels_per_group < 1 or num_channels % channels_per_group:
            raise UserError(
                f"channels_per_group={channels_per_group} does not divide {num_channels} channels"
            )
        return num_channels // channels_per_group
    if groups is None or groups < 1:
        raise UserError(f"groups must be a positive integer, got {groups}")
    num_groups = min(groups, num_channels)
    if num_channels % num_groups:
        raise UserError(
            f"GroupNorm with {num_groups} groups does not divide {num_channels} channels; "
            f"choose groups that divide {num_channels} or set channels_per_group"
        )
    return num_groups


def paper_affine(kind: str) -> bool:
    """Whether a BFN trained from scratch has affine parameters in the authors' code: GN and LN do,
    InstanceNorm does not (``nn.InstanceNorm2d``'s default)."""
    return kind.lower() != "in"


def create_bfn(
    kind: str,
    num_channels: int,
    groups: Optional[int] = 64,
    channels_per_group: Optional[int] = None,
    affine: Optional[bool] = None,
    eps: float = 1e-5,
    act: Optional[nn.Module] = None,
    drop: Optional[nn.Module] = None,
) -> nn.Module:
    """Build a batch-free norm for ``num_channels`` channels.

    Args:
        kind: ``"gn"`` (GroupNorm, ``groups`` clamped to the channels), ``"in"`` (InstanceNorm,
            no affine by default as in the authors' code) or ``"ln"`` (GroupNorm with one group,
            LayerNorm over C, H, W).
        groups / channels_per_group: group count or group size for ``"gn"``.
        affine: learnable per-channel scale and shift; defaults to ``paper_affine(kind)`` (True for
            gn/ln, False for in).
        act / drop: modules applied after normalization (carried over from a fused BN+act).
    """
    kind = kind.lower()
    affine = paper_affine(kind) if affine is None else affine
    if kind == "gn":
        num_groups = resolve_groups(num_channels, groups, channels_per_group)
        return GroupNorm2d(num_groups, num_channels, eps=eps, affine=affine, act=act, drop=drop)
    if kind == "ln":
        return GroupNorm2d(1, num_channels, eps=eps, affine=affine, act=act, drop=drop)
    if kind == "in":
        return InstanceNorm2d(num_channels, eps=eps, affine=affine, act=act, drop=drop)
    raise UserError(f"unknown batch-free norm {kind!r}; choose one of {', '.join(BFN_KINDS)}")
