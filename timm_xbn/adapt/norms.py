"""The normalization layers test-time adaptation updates, and the model set-up TENT-style methods need."""
from typing import List, Tuple

import torch.nn as nn

from ..stats.recalibrate import use_batch_stats
from ..utils.norms import NORM_TYPES, bn_modules, is_norm

__all__ = ["NORM_TYPES", "norm_affine_parameters", "prepare_norm_adaptation"]


def norm_affine_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(qualified name, parameter)`` of the affine weight and bias of every BN, GN, LN and IN
    (subclasses included: timm's BatchNormAct2d / LayerNorm2d, the XBN batch-free norms)."""
    params = []
    for name, module in model.named_modules():
        if is_norm(module):
            for kind in ("weight", "bias"):
                p = getattr(module, kind, None)
                if isinstance(p, nn.Parameter):
                    params.append((f"{name}.{kind}" if name else kind, p))
    return params


def prepare_norm_adaptation(model: nn.Module) -> List[nn.Parameter]:
    """Set ``model`` up as TENT does and return the parameters to update.

    Eval mode (dropout off), every BN on the test batch's statistics (running statistics dropped),
    gradients only for the norm layers' affine parameters. Works in place: pass a copy.
    """
    params = norm_affine_parameters(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no normalization layers with affine parameters to adapt")
    model.eval()
    model.requires_grad_(False)
    use_batch_stats(bn_modules(model))
    for _, p in params:
        p.requires_grad_(True)
    return [p for _, p in params]
