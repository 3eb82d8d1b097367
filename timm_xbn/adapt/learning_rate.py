"""The learning-rate rules of SAR's harness (mr-eggplant/SAR ``main.py``), which runs TENT, EATA and SAR.

Its rule from the test batch size ``bs``: ViT-Base 0.001 * bs / 64; the ResNet-50s (BN and GN)
0.00025 * 2 * bs / 64 below bs 32, else 0.00025; and for SAR in its batch-size-1 experiment, twice that.
An adapter given ``lr=0`` follows the rule at its stream's batch size (the first batch's: a shorter
last batch keeps it) and records which rule it followed (``lr_record``).
"""
from typing import Any, Dict, Optional

import torch.nn as nn

from ..utils.errors import UserError

__all__ = ["LearningRateRule", "harness_learning_rate", "is_vit"]


def harness_learning_rate(batch_size: int, vit: bool, method: str = "tent") -> float:
    """The harness's rate for ``method`` (tent, eata, sar) at ``batch_size`` (module docstring)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if vit:
        lr = 0.001 / 64 * batch_size
    else:
        lr = 0.00025 / 64 * batch_size * 2 if batch_size < 32 else 0.00025
    return 2 * lr if method == "sar" and batch_size == 1 else lr


def is_vit(model: nn.Module) -> bool:
    """The harness's ViT branch: a timm VisionTransformer."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


class LearningRateRule:
    """Mixin of the ``AffineAdapter`` subclasses whose ``lr`` 0 means the harness's rule: call
    ``init_rule`` in ``__init__`` and ``apply_rule`` at the start of every ``forward``."""

    name: str
    optimizer: Any
    model: nn.Module

    def init_rule(self, lr: float) -> None:
        if lr < 0:
            raise UserError(f"lr must be > 0 (or 0: the SAR harness's rule from the batch size), got {lr}")
        self.lr_rule = lr == 0
        self.vit = is_vit(self.model)
        self.batch_size: Optional[int] = None  # the stream's, from the first batch

    def apply_rule(self, batch_size: int) -> None:
        """Set the rule's rate for the stream's batch size (again after a reset, whose optimizer state
        holds the placeholder rate)."""
        if self.batch_size is None:
            self.batch_size = batch_size
        if self.lr_rule:
            for group in self.optimizer.param_groups:
                group["lr"] = harness_learning_rate(self.batch_size, self.vit, self.name)

    def lr_record(self) -> Dict[str, Any]:
        """The rule followed and the rate in use (``None`` under the rule before the first batch)."""
        lr = self.optimizer.param_groups[0]["lr"]
        return {"lr_rule": "sar-harness" if self.lr_rule else "fixed",
                "lr": None if self.lr_rule and self.batch_size is None else lr}
