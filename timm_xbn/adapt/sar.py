"""SAR (Niu et al., ICLR 2023): reliable-entropy filtering, a sharpness-aware step, and model recovery.

Per test batch (mr-eyes/SAR's ``forward_and_adapt_sar``):
  1. logits with every BN on batch statistics; keep the reliable samples, entropy < E0 = 0.4 ln C;
  2. SAM: gradient g of their mean entropy; move the affine parameters to w + rho g / ||g||;
  3. forward again there; of the step-1 samples keep those still below E0; the gradient of their mean
     entropy, taken at the perturbed point, updates the original w with SGD;
  4. an EMA (0.9) of that second loss; when it falls below ``reset_constant`` (0.2) the model has
     collapsed onto confident predictions and is reset to the source weights (model recovery).
Unlike SAR's ResNet-50 setting, all norm layers are adapted (SAR leaves out layer4).
"""
import math
from typing import List, Optional

import torch
import torch.nn as nn

from .base import AffineAdapter
from .tent import softmax_entropy

__all__ = ["SAR"]


class SAR(AffineAdapter):
    """SAR on the affine parameters of every BN / GN / LN / IN. Defaults: SAR's (SGD lr 0.00025,
    momentum 0.9, rho 0.05, E0 = 0.4 ln C, reset when the loss EMA < 0.2)."""

    extra_state = ("ema",)

    def __init__(self, model: nn.Module, lr: float = 0.00025, momentum: float = 0.9, rho: float = 0.05,
                 margin: float = 0.4, reset_constant: float = 0.2):
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        super().__init__(model, lr, "sgd", momentum)
        self.rho, self.margin, self.reset_constant = rho, margin, reset_constant
        self.ema: Optional[float] = None
        self.resets = 0
        self.snapshot()

    def _reliable_entropy_backward(self, x: torch.Tensor, keep: Optional[torch.Tensor]) -> tuple:
        """Forward ``x``; backpropagate the mean entropy of the samples (among ``keep``) below E0.
        Returns (logits, reliable mask, loss value or None when no sample is reliable)."""
        logits = self.model(x)
        entropy = softmax_entropy(logits)
        reliable = entropy < self.margin * math.log(logits.shape[1])
        if keep is not None:
            reliable &= keep
        self.passes.forward += x.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        if not reliable.any():
            return logits, reliable, None
        loss = entropy[reliable].mean()
        loss.backward()
        self.passes.backward += int(reliable.sum())
        return logits, reliable, loss.item()

    @torch.no_grad()
    def _ascend(self) -> List[torch.Tensor]:
        """SAM's first step: w <- w + rho g / ||g|| (global norm); returns the offsets to undo."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
        offsets = [g * (self.rho / (norm + 1e-12)) for g in grads]
        for p, e in zip(self.params, offsets):
            p.add_(e)
        return offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            logits, reliable, loss = self._reliable_entropy_backward(x, None)
            if loss is not None:
                offsets = self._ascend()
                _, _, second = self._reliable_entropy_backward(x, reliable)
                with torch.no_grad():
                    for p, e in zip(self.params, offsets):
                        p.sub_(e)
                if second is not None:
                    self.optimizer.step()
                    self.ema = second if self.ema is None else 0.9 * self.ema + 0.1 * second
        if self.ema is not None and self.ema < self.reset_constant:
            self.reset()
            self.resets += 1
        return logits.detach()
