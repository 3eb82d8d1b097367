"""TENT (Wang et al., ICLR 2021): one entropy-minimisation step per test batch on the norm layers' affine parameters."""
import torch
import torch.nn as nn

from ..utils.errors import UserError
from .base import AffineAdapter
from .learning_rate import LearningRateRule

__all__ = ["Tent", "softmax_entropy"]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of the softmax of ``logits`` (N, C)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class Tent(LearningRateRule, AffineAdapter):
    """Per test batch: logits with every BN on batch statistics, then one step minimising their mean
    entropy, on the affine weight and bias of every BN / GN / LN / IN (nothing else is trained).

    The logits returned are those computed before the step, as in the reference implementation
    (DequanWang/tent). Defaults are its ImageNet-C setting (SGD, lr 0.00025, momentum 0.9, batch 64).
    ``lr=0``: the SAR harness's rule from the batch size (``timm_xbn.adapt.learning_rate``);
    ``optimizer="nesterov"``: SGD with Nesterov momentum (the reference's ``OPTIM.NESTEROV``, dampening 0).
    """

    name = "tent"

    def __init__(self, model: nn.Module, lr: float = 0.00025, optimizer: str = "sgd", momentum: float = 0.9):
        nesterov = optimizer == "nesterov"
        if nesterov and not momentum > 0:
            raise UserError(f"optimizer nesterov needs momentum > 0, got {momentum}")
        super().__init__(model, lr if lr > 0 else 0.00025, "sgd" if nesterov else optimizer, momentum)
        if nesterov:
            self.optimizer = torch.optim.SGD(self.params, lr=self.optimizer.defaults["lr"], momentum=momentum, nesterov=True)
        self.init_rule(lr)
        self.snapshot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.apply_rule(x.shape[0])
        with torch.enable_grad():
            logits = self.model(x)
            loss = softmax_entropy(logits).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.passes.forward += x.shape[0]
        self.passes.backward += x.shape[0]
        return logits.detach()
