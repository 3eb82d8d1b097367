"""TENT (Wang et al., ICLR 2021): one entropy-minimisation step per test batch on the norm layers' affine parameters."""
import torch
import torch.nn as nn

from .base import AffineAdapter

__all__ = ["Tent", "softmax_entropy"]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of the softmax of ``logits`` (N, C)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class Tent(AffineAdapter):
    """Per test batch: logits with every BN on batch statistics, then one step minimising their mean
    entropy, on the affine weight and bias of every BN / GN / LN / IN (nothing else is trained).

    The logits returned are those computed before the step, as in the reference implementation
    (DequanWang/tent). Defaults are its ImageNet-C setting (SGD, lr 0.00025, momentum 0.9, batch 64).
    """

    name = "tent"

    def __init__(self, model: nn.Module, lr: float = 0.00025, optimizer: str = "sgd", momentum: float = 0.9):
        super().__init__(model, lr, optimizer, momentum)
        self.snapshot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model(x)
            loss = softmax_entropy(logits).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.passes.forward += x.shape[0]
        self.passes.backward += x.shape[0]
        return logits.detach()
