"""Find the residual blocks of a timm CNN and the BatchNorms along their main path.

A block's *norm slots* are its main-path normalizations in forward order, derived from the
block's structure, not from attribute names: each direct child of the block that holds a
BatchNorm is one slot (the BN itself, all BNs of a BN list, or the first BN of a composite such
as timm's ``ConvNormAct``), in registration order, which timm keeps equal to forward order.
Shortcut / downsample children and attention children are never slots.

The positions P1 / P2 / P3 pick a slot by its role, as the authors' code places them
(github huangleiBuaa/XBNBlock, ``models/resnet_XBNBlock_P1/P2/P3.py``, ``mobilenetV2_XBNBlock.py``):
P1 is the first BN, P2 the BN right after the block's first spatial (k x k, k > 1) convolution,
P3 the last BN, before the residual addition. In a bottleneck (1x1, 3x3, 1x1) these are the
1st, 2nd and 3rd BN; in a BasicBlock (3x3, 3x3) P1 and P2 are ``bn1`` and P3 is ``bn2``; in a
MobileNetV2 block P2 is the depthwise BN, which is the first BN of the expand-ratio-1 block.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Type

import torch.nn as nn
from timm.layers import CondConv2d
from timm.models import _efficientnet_blocks as effnet_blocks
from timm.models import byobnet, cspnet, regnet, res2net, resnest, resnet

from ..utils.errors import UserError
from ..utils.norms import is_bn

__all__ = [
    "ResidualBlock",
    "BLOCK_FAMILIES",
    "SHORTCUT_CHILD_NAMES",
    "POSITIONS",
    "is_bn",
    "find_residual_blocks",
    "find_stem_norms",
    "supported_families_text",
]

# Residual block classes, by the timm family (model source file) they come from.
BLOCK_FAMILIES: Dict[Type[nn.Module], str] = {
    resnet.BasicBlock: "resnet",
    resnet.Bottleneck: "resnet",
    regnet.Bottleneck: "regnet",
    res2net.Bottle2neck: "res2net",
    resnest.ResNestBottleneck: "resnest",
    byobnet.BasicBlock: "byobnet",
    byobnet.BottleneckBlock: "byobnet",
    byobnet.DarkBlock: "byobnet",
    byobnet.EdgeBlock: "byobnet",
    cspnet.BottleneckBlock: "cspnet",
    cspnet.DarkBlock: "cspnet",
    effnet_blocks.InvertedResidual: "efficientnet",
    effnet_blocks.DepthwiseSeparableConv: "efficientnet",
    effnet_blocks.EdgeResidual: "efficientnet",
}

#: The positions a block offers: P1 (first BN), P2 (after the first k x k conv), P3 (last BN).
POSITIONS = (1, 2, 3)

# What P1 / P2 / P3 are in each family, for docs and error messages.
FAMILY_SLOTS: Dict[str, str] = {
    "resnet": "Bottleneck: bn1 (1x1 reduce) / bn2 (3x3) / bn3 (1x1 expand); BasicBlock: bn1 / bn1 / bn2",
    "regnet": "conv1.bn (1x1) / conv2.bn (3x3 group conv) / conv3.bn (1x1)",
    "res2net": "bn1 (1x1) / bns (all scale branches of the 3x3 stage) / bn3 (1x1)",
    "resnest": "bn1 (1x1) / conv2.bn0 (split-attention conv) / bn3 (1x1)",
    "byobnet": "conv1_1x1 / conv2_kxk / conv3_1x1 norms (bottleneck); conv1_kxk / conv1_kxk / conv2_kxk (basic, edge); "
               "conv1_1x1 / conv2_kxk / conv2_kxk (dark)",
    "cspnet": "conv1.bn / conv2.bn / conv3.bn (bottleneck); conv1.bn / conv2.bn / conv2.bn (dark)",
    "efficientnet": "bn1 (expand 1x1) / bn2 (depthwise) / bn3 (project 1x1); DS conv: bn1 (depthwise) / bn1 / bn2",
}

# Children that carry the identity / projection path or an attention gate, never a slot.
SHORTCUT_CHILD_NAMES = frozenset({"downsample", "shortcut", "skip", "conv_shortcut"})
ATTENTION_CHILD_NAMES = frozenset({"se", "attn", "attn_last", "attn2", "attn3"})


@dataclass(frozen=True)
class ResidualBlock:
    """One residual block: 1-based ``index`` over the whole network, its qualified ``name``,
    timm ``family``, ``norm_slots`` (qualified names of the norms of slot 1, 2, 3, ... in forward
    order) and ``spatial`` (per slot: does a k x k convolution, k > 1, feed it)."""

    index: int
    name: str
    family: str
    module: nn.Module
    norm_slots: Tuple[Tuple[str, ...], ...]
    spatial: Tuple[bool, ...] = ()

    def slot_index(self, position: int) -> int:
        """0-based slot of position P1 / P2 / P3 (see the module docstring); a block with
        no spatial convolution before a BN takes its second slot (or only one) for P2."""
        if position not in POSITIONS:
            raise UserError(f"position must be P1, P2 or P3, got P{position}")
        if position == 1:
            return 0
        if position == 3:
            return len(self.norm_slots) - 1
        return next((i for i, spatial in enumerate(self.spatial) if spatial), min(1, len(self.norm_slots) - 1))

    def position_norms(self, position: int) -> Tuple[str, ...]:
        """Qualified names of the norm(s) at position P1 / P2 / P3 of this block."""
        return self.norm_slots[self.slot_index(position)]


def _slot_of_child(prefix: str, child: nn.Module) -> Tuple[str, ...]:
    """Qualified names of the BN(s) that make one slot out of a block's direct child."""
    if is_bn(child):
        return (prefix,)
    if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) and all(is_bn(m) for m in child):
        return tuple(f"{prefix}.{i}" for i in range(len(child)))
    for sub_name, sub in child.named_modules():
        if sub_name and is_bn(sub):
            return (f"{prefix}.{sub_name}",)
    return ()


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, CondConv2d))


def _norm_slots(block_name: str, block: nn.Module) -> Tuple[Tuple[Tuple[str, ...], ...], Tuple[bool, ...]]:
    """The block's slots and, per slot, whether the last convolution before its (first) BN is k x k."""
    slots, spatial = [], []
    feeding: Optional[nn.Module] = None  # the last convolution seen on the main path, in registration order
    for child_name, child in block.named_children():
        if child_name in SHORTCUT_CHILD_NAMES or child_name in ATTENTION_CHILD_NAMES:
            continue
        prefix = f"{block_name}.{child_name}"
        slot = _slot_of_child(prefix, child)
        for sub_name, sub in child.named_modules():
            if slot and (f"{prefix}.{sub_name}" if sub_name else prefix) == slot[0]:
                slots.append(slot)
                spatial.append(feeding is not None and max(feeding.kernel_size) > 1)
            elif _is_conv(sub):
                feeding = sub
    return tuple(slots), tuple(spatial)


def _walk_blocks(module: nn.Module, prefix: str, found: List[Tuple[str, nn.Module]]) -> None:
    for name, child in module.named_children():
        qualified = f"{prefix}.{name}" if prefix else name
        if type(child) in BLOCK_FAMILIES:
            found.append((qualified, child))
        else:
            _walk_blocks(child, qualified, found)


def find_residual_blocks(model: nn.Module) -> List[ResidualBlock]:
    """All supported residual blocks of ``model`` in forward order, numbered from 1."""
    found: List[Tuple[str, nn.Module]] = []
    _walk_blocks(model, "", found)
    blocks = []
    for i, (name, block) in enumerate(found, start=1):
        slots, spatial = _norm_slots(name, block)
        blocks.append(ResidualBlock(index=i, name=name, family=BLOCK_FAMILIES[type(block)], module=block,
                                    norm_slots=slots, spatial=spatial))
    return blocks


def find_stem_norms(model: nn.Module, blocks: Optional[List[ResidualBlock]] = None) -> List[str]:
    """Qualified names of the BNs in the stem: the top-level children before the first one that holds a block."""
    blocks = find_residual_blocks(model) if blocks is None else blocks
    if not blocks:
        return []
    first_stage = blocks[0].name.split(".")[0]
    stem = []
    for top_name, top in model.named_children():
        if top_name == first_stage:
            break
        stem.extend(
            f"{top_name}.{sub}" if sub else top_name for sub, m in top.named_modules() if is_bn(m)
        )
    return stem


def supported_families_text() -> str:
    """One line per supported family: its block classes and the meaning of P1/P2/P3."""
    by_family: Dict[str, List[str]] = {}
    for cls, family in BLOCK_FAMILIES.items():
        by_family.setdefault(family, []).append(cls.__name__)
    return "\n".join(
        f"  {family}: {', '.join(classes)} -- {FAMILY_SLOTS[family]}" for family, classes in by_family.items()
    )
