"""Model surgery: turn a BatchNorm CNN into an XBNBlock network.

``convert`` replaces one BN per residual block (P1/P2/P3) in every ``every``-th block
(D-variants) with a batch-free norm, keeping every other weight and buffer bit-exact.
"""
import copy
import dataclasses
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..layers import create_bfn, find_one_value_norms, is_batch_free
from ..utils.errors import UserError
from .blocks import POSITIONS, ResidualBlock, find_residual_blocks, find_stem_norms, is_bn, supported_families_text

__all__ = ["XBNConfig", "Replacement", "ConversionResult", "build_bfn_for", "convert", "parse_position", "replace_module"]


@dataclass(frozen=True)
class XBNConfig:
    """The surgery settings; stored on a converted model as ``model.xbn_cfg`` (a dict)."""

    position: int = 2
    every: int = 1
    bfn: str = "gn"
    groups: Optional[int] = 64
    channels_per_group: Optional[int] = None
    affine: Optional[bool] = None
    stem: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Replacement:
    """One replaced norm: where it was and what it became."""

    name: str
    block: Optional[str]
    block_index: Optional[int]
    old: str
    new: str


class ConversionResult(NamedTuple):
    model: nn.Module
    replaced: List[Replacement]


def parse_position(position: Union[str, int]) -> int:
    """``"P2"``, ``"p2"`` or ``2`` -> 2."""
    text = str(position).strip().upper().removeprefix("P")
    if not text.isdigit() or int(text) not in POSITIONS:
        raise UserError(f"position must be P1, P2 or P3 (or 1, 2, 3), got {position!r}")
    return int(text)


def _describe_norms(model: nn.Module) -> str:
    counts = Counter(
        type(m).__name__ for m in model.modules() if "norm" in type(m).__name__.lower()
    )
    return ", ".join(f"{n} x{c}" for n, c in counts.most_common()) or "no normalization layers"


def build_bfn_for(bn: nn.Module, cfg: XBNConfig) -> nn.Module:
    """The BFN that replaces ``bn``: same channels, eps, device and dtype; the BN's affine
    weight/bias when both are affine; the dropout/activation of a fused timm ``BatchNormAct2d``."""
    bfn = create_bfn(
        cfg.bfn,
        bn.num_features,
        groups=cfg.groups,
        channels_per_group=cfg.channels_per_group,
        affine=cfg.affine,
        eps=bn.eps,
        act=copy.deepcopy(getattr(bn, "act", None)),
        drop=copy.deepcopy(getattr(bn, "drop", None)),
    )
    reference = bn.weight if bn.weight is not None else bn.running_mean
    if reference is not None:
        bfn.to(device=reference.device, dtype=reference.dtype)
    if bfn.weight is not None and bn.weight is not None:
        bfn.weight.data.copy_(bn.weight.data)
        bfn.bias.data.copy_(bn.bias.data)
    return bfn


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at qualified ``name`` in ``model``; returns the module it replaced."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def _short_repr(module: nn.Module) -> str:
    return f"{type(module).__name__}({module.extra_repr()})"


def _check_normalizable(model: nn.Module, planned: List[Tuple[str, Any, nn.Module]], input_size: Sequence[int]) -> None:
    """``UserError`` naming the first planned BFN whose group holds one value per sample at this input size:
    its output would be its bias alone (and torch's InstanceNorm refuses it)."""
    found = find_one_value_norms(model, input_size, [(name, bfn) for name, _, bfn in planned])
    if found:
        raise UserError(f"{found[0].describe(input_size)}: use another position, a larger input, or "
                        f"{found[0].more_values}; force=True (--force) converts anyway")


def _check_convertible(model: nn.Module, blocks: List[ResidualBlock]) -> None:
    already = [n for n, m in model.named_modules() if is_batch_free(m)]
    if already:
        raise UserError(
            f"model is already converted: it has {len(already)} batch-free norms from timm_xbn "
            f"(first: {already[0]}); convert the original BN model instead"
        )
    if not any(is_bn(m) for m in model.modules()):
        raise UserError(
            f"{type(model).__name__} has no BatchNorm layers to replace (found: {_describe_norms(model)})"
        )
    if not blocks:
        raise UserError(
            f"no supported residual blocks found in {type(model).__name__}; supported timm families:\n"
            + supported_families_text()
        )


def convert(
    model: nn.Module,
    position: Union[str, int] = "P2",
    every: int = 1,
    bfn: str = "gn",
    groups: Optional[int] = 64,
    channels_per_group: Optional[int] = None,
    affine: Optional[bool] = None,
    stem: bool = False,
    inplace: bool = False,
    input_size: Optional[Sequence[int]] = None,
    force: bool = False,
) -> ConversionResult:
    """Replace the BN at ``position`` (P1 / P2 / P3) of every ``every``-th residual block with a batch-free norm.

    Args:
        model: a timm CNN whose residual blocks use BatchNorm (see ``supported_families_text()``).
        position: P1 / P2 / P3 = the first BN of a block / the BN after its first k x k convolution /
            its last BN, as in the authors' code (P2 is the paper's default): a bottleneck's bn1 / bn2 / bn3,
            a BasicBlock's bn1 / bn1 / bn2, a MobileNetV2 block's depthwise BN for P2.
        every: 1 converts all blocks; 2/4/8 give the paper's D2/D4/D8 (blocks 2n/4n/8n, 1-based,
            counted over the whole network).
        bfn: ``"gn"``, ``"in"`` or ``"ln"`` (see ``timm_xbn.layers.create_bfn``).
        groups / channels_per_group: GroupNorm settings (groups are clamped to the channels).
        affine: BFNs with a per-channel scale and shift. ``None`` (default) keeps what the network
            learned: a BFN is affine, starting from the BN's weight and bias, when a replaced BN is
            affine (every timm BN is), for GN, LN and IN alike. Models built to be trained from scratch
            (``xbn_*``, ``xbn_converted``) pass the authors' choice instead (``timm_xbn.layers.paper_affine``:
            IN without affine parameters).
        stem: also replace the stem BNs (the authors' released models do).
        inplace: modify ``model`` itself; by default a deep copy is converted and ``model`` is untouched.
        input_size: (C, H, W) of the images the network will see (a timm data config's ``input_size``).
            When given, a dry forward pass measures each replaced norm's input maps, and a BFN whose
            group would hold one value per sample (1 x 1 maps with InstanceNorm, or GroupNorm with one
            channel per group) is an error naming the layer, unless ``force``.
        force: convert even where such a BFN would output a constant.

    Returns:
        ``(model, replaced)``: the converted model (with ``model.xbn_cfg``) and one
        ``Replacement`` per swapped norm. A converted *trained* network keeps its accuracy once its new
        norms are fitted to the BNs they replace: ``timm_xbn.calibrate(converted, model, images)``.
    """
    cfg = XBNConfig(parse_position(position), int(every), bfn.lower(), groups, channels_per_group, affine, bool(stem))
    if cfg.every < 1:
        raise UserError(f"every must be a positive integer (1, 2, 4, 8), got {every}")
    blocks = find_residual_blocks(model)
    _check_convertible(model, blocks)
    chosen = [b for b in blocks if b.index % cfg.every == 0]
    for block in chosen:
        if not block.norm_slots:
            raise UserError(f"{block.name} ({type(block.module).__name__}) has no BatchNorm on its main path to replace")
    if not chosen:
        raise UserError(f"every={cfg.every} selects no block: the model has only {len(blocks)} residual blocks")

    targets = [(name, None) for name in find_stem_norms(model, blocks)] if cfg.stem else []
    targets += [(name, block) for block in chosen for name in block.position_norms(cfg.position)]
    if cfg.affine is None:  # keep the trained BNs' weight and bias
        kept = any(model.get_submodule(name).affine for name, _ in targets)
        cfg = dataclasses.replace(cfg, affine=kept)
    planned = []
    for name, block in targets:  # build every BFN first, so a bad setting fails before any change
        try:
            planned.append((name, block, build_bfn_for(model.get_submodule(name), cfg)))
        except UserError as err:
            raise UserError(f"cannot replace {name}: {err}") from None
    if input_size is not None and not force:
        _check_normalizable(model, planned, input_size)

    target = model if inplace else copy.deepcopy(model)
    replaced: List[Replacement] = []
    for name, block, bfn in planned:
        old = replace_module(target, name, bfn)
        replaced.append(Replacement(
            name=name,
            block=block.name if block else None,
            block_index=block.index if block else None,
            old=_short_repr(old),
            new=_short_repr(bfn),
        ))
    target.xbn_cfg = cfg.to_dict()
    _record_reconstruction(target, cfg)
    return ConversionResult(target, replaced)


def _record_reconstruction(model: nn.Module, cfg: XBNConfig) -> None:
    """Make a converted timm model rebuildable from its exported config: its architecture becomes
    the registered ``xbn_converted`` with the base name and the surgery settings as model args.

    Models still being built by a registered factory (no ``pretrained_cfg`` yet) are left alone.
    """
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if not pretrained_cfg or not pretrained_cfg.get("architecture"):
        return
    settings = {k: v for k, v in cfg.to_dict().items() if v != getattr(XBNConfig, k)}
    model._model_args = {**getattr(model, "_model_args", {}), "base_model": pretrained_cfg["architecture"], **settings}
    model.pretrained_cfg = model.default_cfg = {**pretrained_cfg, "architecture": "xbn_converted"}
