"""The normalization layers test-time adaptation updates, and the model set-up TENT-style methods need."""
from typing import Callable, List, Tuple

import torch.nn as nn

from ..stats.recalibrate import use_batch_stats
from ..utils.errors import UserError
from ..utils.norms import NORM_TYPES, bn_modules, is_norm

__all__ = ["NORM_TYPES", "norm_affine_parameters", "prepare_norm_adaptation", "sar_affine_parameters"]

ParameterSelection = Callable[[nn.Module], List[Tuple[str, nn.Parameter]]]


def _affine_of(model: nn.Module, keep: Callable[[str, nn.Module], bool]) -> List[Tuple[str, nn.Parameter]]:
    """``(qualified name, parameter)`` of the affine weight and bias of the modules ``keep`` accepts."""
    params = []
    for name, module in model.named_modules():
        if keep(name, module):
            for kind in ("weight", "bias"):
                p = getattr(module, kind, None)
                if isinstance(p, nn.Parameter):
                    params.append((f"{name}.{kind}" if name else kind, p))
    return params


def norm_affine_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(qualified name, parameter)`` of the affine weight and bias of every BN, GN, LN and IN
    (subclasses included: timm's BatchNormAct2d / LayerNorm2d, the XBN batch-free norms)."""
    return _affine_of(model, lambda name, module: is_norm(module))


# SAR's ``collect_params`` leaves out the top of the network: ResNet's last stage and ViT-Base's last
# three blocks and final norm (module names containing one of these, or named exactly ``norm``).
SAR_EXCLUDED_NAME_PARTS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")
SAR_NORM_TYPES = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _sar_adapts(name: str, module: nn.Module) -> bool:
    return (isinstance(module, SAR_NORM_TYPES) and name != "norm"
            and not any(part in name for part in SAR_EXCLUDED_NAME_PARTS))


def sar_affine_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """The affine parameters SAR's reference code adapts (Niu et al. 2023, ``collect_params``): those
    of BatchNorm2d / LayerNorm / GroupNorm (subclasses included; no BN1d, no IN), except in modules
    whose name has ``layer4``, ``blocks.9``, ``blocks.10``, ``blocks.11`` or ``norm.`` or is ``norm``.
    The name rules are the reference's, written for ResNet-50 and ViT-Base (12 blocks)."""
    return _affine_of(model, _sar_adapts)


def prepare_norm_adaptation(model: nn.Module, select: ParameterSelection = norm_affine_parameters) -> List[nn.Parameter]:
    """Set ``model`` up as TENT does and return the parameters to update.

    Eval mode (dropout off), every BN on the test batch's statistics (running statistics dropped),
    gradients only for the affine parameters ``select`` picks (default: of every norm layer).
    Works in place: pass a copy.
    """
    params = select(model)
    if not params:
        raise UserError(f"{type(model).__name__} has no normalization layers with affine parameters to adapt"
                        + ("" if select is norm_affine_parameters else f" ({select.__name__})"))
    model.eval()
    model.requires_grad_(False)
    use_batch_stats(bn_modules(model))
    for _, p in params:
        p.requires_grad_(True)
    return [p for _, p in params]
