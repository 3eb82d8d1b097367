"""EATA (Niu et al., ICML 2022) without the Fisher regulariser: TENT on reliable, non-redundant samples, re-weighted.

Per test batch (mr-eyes/EATA's ``forward_and_adapt_eata``):
  1. logits with every BN on batch statistics; keep the reliable samples, entropy < E0 = 0.4 ln C;
  2. drop the redundant ones: |cosine(p, m)| >= ``d_margin`` where p is a sample's softmax and m a
     moving average (0.9) of the kept samples' mean softmax over past batches (none on the first batch);
  3. one SGD step on the mean of entropy * exp(E0 - entropy) (the weight is a constant) over what is left;
  4. m <- 0.9 m + 0.1 mean softmax of the samples kept.
Reset (episodic) clears m too.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import AffineAdapter
from .learning_rate import LearningRateRule
from .tent import softmax_entropy

__all__ = ["EATA"]


class EATA(LearningRateRule, AffineAdapter):
    """EATA on the affine parameters of every BN / GN / LN / IN. Defaults: EATA's ImageNet-C setting
    (SGD lr 0.00025, momentum 0.9, E0 = 0.4 ln C, ``d_margin`` 0.05); ``lr=0``: the SAR harness's rule
    from the batch size (``timm_xbn.adapt.learning_rate``); ``optimizer="adam"``: TENT's small-image
    optimizer (Adam, betas 0.9, 0.999) under EATA's step, which is TENT's on a filtered, weighted batch."""

    name = "eata"
    extra_state = ("model_probs",)

    def __init__(self, model: nn.Module, lr: float = 0.00025, momentum: float = 0.9, margin: float = 0.4,
                 d_margin: float = 0.05, optimizer: str = "sgd"):
        super().__init__(model, lr if lr > 0 else 0.00025, optimizer, momentum)
        self.init_rule(lr)
        self.margin, self.d_margin = margin, d_margin
        self.model_probs: Optional[torch.Tensor] = None
        self.snapshot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.apply_rule(x.shape[0])
        with torch.enable_grad():
            logits = self.model(x)
            entropy = softmax_entropy(logits)
            e0 = self.margin * math.log(logits.shape[1])
            keep = entropy < e0
            probs = logits.detach().softmax(1)
            if self.model_probs is not None:
                keep &= F.cosine_similarity(self.model_probs.unsqueeze(0), probs, dim=1).abs() < self.d_margin
            self.passes.forward += x.shape[0]
            self.optimizer.zero_grad(set_to_none=True)
            if keep.any():
                kept = entropy[keep]
                (kept * torch.exp(e0 - kept.detach())).mean().backward()
                self.optimizer.step()
                self.passes.backward += int(keep.sum())
                mean = probs[keep].mean(0)
                self.model_probs = mean if self.model_probs is None else 0.9 * self.model_probs + 0.1 * mean
        return logits.detach()
