"""TENT (Wang et al., ICLR 2021): one entropy-minimisation step per test batch on the norm layers' affine parameters."""
from typing import Any, Dict, List

import torch
import torch.nn as nn

from .base import Adapter
from .norms import prepare_norm_adaptation

__all__ = ["Tent", "make_optimizer", "softmax_entropy"]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of the softmax of ``logits`` (N, C)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def make_optimizer(params: List[nn.Parameter], optimizer: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    """TENT's optimizers: SGD with momentum (its ImageNet-C setting) or Adam (betas 0.9, 0.999; its CIFAR setting)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")


class Tent(Adapter):
    """Per test batch: logits with every BN on batch statistics, then one step minimising their mean
    entropy, on the affine weight and bias of every BN / GN / LN / IN (nothing else is trained).

    The logits returned are those computed before the step, as in the reference implementation
    (DequanWang/tent). Defaults are its ImageNet-C setting (SGD, lr 0.00025, momentum 0.9, batch 64).
    """

    stateful = True

    def __init__(self, model: nn.Module, lr: float = 0.00025, optimizer: str = "sgd", momentum: float = 0.9):
        super().__init__(model)
        self.optimizer = make_optimizer(prepare_norm_adaptation(self.model), optimizer, lr, momentum)
        self.snapshot()

    def state(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

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
