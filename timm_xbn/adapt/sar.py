"""SAR (Niu et al., ICLR 2023): reliable-entropy filtering, a sharpness-aware step, and model recovery.

Per test batch, as the reference code (mr-eggplant/SAR, ``forward_and_adapt_sar``):
  1. logits with every BN on batch statistics; keep the reliable samples, entropy < E0 = 0.4 ln C;
  2. SAM: gradient g of their mean entropy; move the affine parameters to w + rho g / ||g||;
  3. forward again there; of the step-1 samples keep those still below E0; the gradient of their mean
     entropy, taken at the perturbed point, updates the original w with SGD. The step is taken even
     when a filter keeps nothing (a zero gradient: the momentum still moves the weights);
  4. an EMA (0.9) of that second loss (when it has samples); when it is below ``reset_constant`` (0.2)
     the model has collapsed onto confident predictions and the model and optimizer go back to the
     source state (model recovery). The EMA is kept across a recovery, as the reference's
     ``SAR.forward`` does (its ``reset`` clears it, then the caller writes the old value back).

Defaults are the reference's. Its two knobs that depend on the setting are options here:
``layers`` (``"reference"``: its name rules, which leave out ResNet's ``layer4`` and ViT-Base's last
three blocks and final norm; ``"all"``: every BN / GN / LN / IN, for networks whose top the rules do
not name) and ``lr`` (0: its harness's rule from the batch size, doubled at batch size 1 as its
batch-size-1 experiment does, ``sar_learning_rate``; else a fixed rate). ``optimizer="adam"`` makes
Adam (TENT's small-image optimizer) SAM's base step in place of SGD: not a setting of the reference.
Not as the reference: the copy is in eval mode (dropout off; the reference runs train mode), and E0
is 0.4 ln C for the model's C classes (the reference fixes C = 1000, ImageNet).
"""
import math
from typing import List, Optional

import torch
import torch.nn as nn

from ..utils.errors import UserError
from .base import AffineAdapter
from .learning_rate import LearningRateRule, harness_learning_rate
from .norms import norm_affine_parameters, sar_affine_parameters
from .tent import softmax_entropy

__all__ = ["SAR", "sar_learning_rate"]

LAYERS = {"reference": sar_affine_parameters, "all": norm_affine_parameters}


def sar_learning_rate(batch_size: int, vit: bool) -> float:
    """The reference's ``main.py`` rule for SAR: ViT 0.001 * bs / 64; other models (ResNet-50 BN / GN)
    0.00025 * 2 * bs / 64 when bs < 32, else 0.00025; twice that at batch size 1."""
    return harness_learning_rate(batch_size, vit, "sar")


class SAR(LearningRateRule, AffineAdapter):
    """SAR on the affine parameters ``layers`` selects. Defaults: the reference's (SGD with momentum
    0.9, its learning-rate rule, rho 0.05, E0 = 0.4 ln C, recovery when the loss EMA < 0.2)."""

    name = "sar"
    extra_state = ("ema",)

    def __init__(self, model: nn.Module, lr: float = 0.0, momentum: float = 0.9, rho: float = 0.05,
                 margin: float = 0.4, reset_constant: float = 0.2, layers: str = "reference", optimizer: str = "sgd"):
        if not rho > 0:
            raise UserError(f"rho must be > 0, got {rho}")
        if layers not in LAYERS:
            raise UserError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
        super().__init__(model, lr if lr > 0 else 0.00025, optimizer, momentum, select=LAYERS[layers])
        self.init_rule(lr)
        self.rho, self.margin, self.reset_constant = rho, margin, reset_constant
        self.ema: Optional[float] = None
        self.resets = 0
        self.snapshot()

    def _reliable_entropy_backward(self, x: torch.Tensor, keep: Optional[torch.Tensor]) -> tuple:
        """Forward ``x``; backpropagate the mean entropy of the samples (among ``keep``) below E0, a
        zero gradient when there are none. Returns (logits, reliable mask, loss value or None)."""
        logits = self.model(x)
        entropy = softmax_entropy(logits)
        reliable = entropy < self.margin * math.log(logits.shape[1])
        if keep is not None:
            reliable &= keep
        self.passes.forward += x.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        if not reliable.any():
            for p in self.params:
                p.grad = torch.zeros_like(p)
            return logits, reliable, None
        loss = entropy[reliable].mean()
        loss.backward()
        self.passes.backward += int(reliable.sum())
        return logits, reliable, loss.item()

    @torch.no_grad()
    def _ascend(self) -> List[torch.Tensor]:
        """SAM's first step: w <- w + rho g / ||g|| (global norm); returns the original weights."""
        original = [p.detach().clone() for p in self.params]
        norm = torch.norm(torch.stack([p.grad.norm(2) for p in self.params]), 2)
        for p in self.params:
            p.add_(p.grad * (self.rho / (norm + 1e-12)))
        return original

    def _recover(self) -> None:
        """Model recovery: the source model and optimizer, the loss EMA kept (as the reference)."""
        ema = self.ema
        self.reset()
        self.ema = ema
        self.resets += 1
        self.apply_rule(self.batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.apply_rule(x.shape[0])
        with torch.enable_grad():
            logits, reliable, _ = self._reliable_entropy_backward(x, None)
            original = self._ascend()
            _, _, second = self._reliable_entropy_backward(x, reliable)
            with torch.no_grad():
                for p, w in zip(self.params, original):
                    p.copy_(w)
            self.optimizer.step()
        if second is not None:
            self.ema = second if self.ema is None else 0.9 * self.ema + 0.1 * second
        if self.ema is not None and self.ema < self.reset_constant:
            self._recover()
        return logits.detach()
