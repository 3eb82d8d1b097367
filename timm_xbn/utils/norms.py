"""What counts as a BatchNorm, and as a normalization layer, in a model."""
from typing import List, Tuple

import torch.nn as nn

__all__ = ["NORM_TYPES", "bn_modules", "bns_with_running_stats", "is_bn", "is_norm"]

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def is_bn(module: nn.Module) -> bool:
    """True for any BatchNorm (nn.BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def is_norm(module: nn.Module) -> bool:
    """True for any BN, GN, LN or IN, subclasses included (timm's LayerNorm2d, the XBN batch-free norms)."""
    return isinstance(module, NORM_TYPES)


def bn_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every BatchNorm of ``model``, in registration order."""
    return [(name, m) for name, m in model.named_modules() if is_bn(m)]


def bns_with_running_stats(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``bn_modules`` restricted to BNs that hold running statistics (``track_running_stats=True``)."""
    return [(n, m) for n, m in bn_modules(model) if m.running_mean is not None and m.running_var is not None]
