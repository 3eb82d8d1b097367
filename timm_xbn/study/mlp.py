"""Section 4 of the paper: estimation shift of BN in a deep MLP, and GN blocking its accumulation.

The paper trains a 20-layer MLP (128 units per layer) with full-batch gradient descent (80
epochs, lr 0.1) and estimates BN's population statistics with Eqn. 3,
``mu_hat_t = (1 - alpha) * mu_hat_{t-1} + alpha * mu_batch`` with alpha = 0.9. PyTorch's BN
update is ``running = (1 - momentum) * running + momentum * batch``, so alpha maps to
``momentum=0.9`` one to one. "GNBN" replaces the BNs of the odd layers (1st, 3rd, ...) with
GroupNorm (4 groups).

Setup one trains on the test set itself (S = S'); setup two trains on random subsets S of the
test set S' (Figs. 2-5). ESM is always measured against the statistics of the test set S'.
"""
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..stats import estimation_shift
from ..utils.errors import UserError

__all__ = ["MLP_LAYOUTS", "MLPConfig", "MLPRun", "StudyMLP", "build_mlp", "layer_of", "train_full_batch", "input_shift"]

MLP_LAYOUTS = ("bn", "gnbn")


@dataclass
class MLPConfig:
    """Settings of the Section 4 experiments (defaults: the paper's Figures 2-5)."""

    depth: int = 20
    width: int = 128
    epochs: int = 80
    lr: float = 0.1
    bn_momentum: float = 0.9
    gn_groups: int = 4
    train_sizes: Sequence[int] = (32, 128, 256, 512, 1024)
    test_samples: Optional[int] = None
    eval_every: int = 1
    esm_every: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train_sizes"] = list(self.train_sizes)
        return d


class StudyMLP(nn.Module):
    """``depth`` x (Linear -> norm -> ReLU) followed by a linear classifier, on flattened inputs.

    ``layout="bn"`` puts BN in every layer; ``"gnbn"`` puts GroupNorm in the odd layers (1-based)
    and BN in the even ones. Norm modules are named ``layers.{i}.norm`` for layer ``i + 1``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 20,
        width: int = 128,
        layout: str = "bn",
        gn_groups: int = 4,
        bn_momentum: float = 0.9,
    ):
        super().__init__()
        if layout not in MLP_LAYOUTS:
            raise UserError(f"layout must be one of {', '.join(MLP_LAYOUTS)}, got {layout!r}")
        if depth < 1 or width < 1:
            raise UserError(f"depth and width must be positive, got depth={depth}, width={width}")
        layers = []
        for i in range(depth):
            use_gn = layout == "gnbn" and i % 2 == 0
            norm = nn.GroupNorm(gn_groups, width) if use_gn else nn.BatchNorm1d(width, momentum=bn_momentum)
            layers.append(nn.Sequential(OrderedDict(
                fc=nn.Linear(in_features if i == 0 else width, width), norm=norm, act=nn.ReLU(),
            )))
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x.flatten(1)))


def layer_of(name: str) -> int:
    """1-based MLP layer of a norm named ``layers.{i}.norm``."""
    return int(name.split(".")[1]) + 1


@torch.no_grad()
def _error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 error in percent, eval mode."""
    model.eval()
    return 100.0 * (model(x).argmax(1) != y).float().mean().item()


def _esm_rows(model: nn.Module, test_x: torch.Tensor) -> List[dict]:
    return [
        {"name": r.name, "layer": layer_of(r.name), "esm_mu": r.esm_mu, "esm_sigma": r.esm_sigma}
        for r in estimation_shift(model, [test_x])
    ]


def input_shift(train_x: torch.Tensor, test_x: torch.Tensor) -> float:
    """The paper's "ESM_sigma w.r.t. layer 0": ``||sqrt(var_train) - sqrt(var_test)||_2`` over input features."""
    std_train = train_x.flatten(1).double().var(0, unbiased=False).sqrt()
    std_test = test_x.flatten(1).double().var(0, unbiased=False).sqrt()
    return torch.linalg.vector_norm(std_train - std_test).item()


@dataclass
class MLPRun:
    """Per-epoch history and final ESM of one full-batch training run."""

    history: List[dict] = field(default_factory=list)
    final_esm: List[dict] = field(default_factory=list)
    train_error: float = 0.0
    test_error: float = 0.0


def train_full_batch(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 80,
    lr: float = 0.1,
    eval_every: int = 1,
    esm_every: int = 1,
    on_epoch: Optional[Callable[[int], None]] = None,
) -> MLPRun:
    """Full-batch gradient descent (one step per epoch) with per-epoch errors and ESM.

    Each epoch: a train-mode forward on the whole training set (BN normalizes with its
    statistics and updates the running estimate), its top-1 error is the epoch's *train error*,
    then one SGD step. Every ``eval_every`` epochs the *test error* is measured in eval mode
    (running statistics) and every ``esm_every`` epochs the ESM of each BN on the test set; the
    last epoch always gets both. Errors are in percent.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    run = MLPRun()
    for epoch in range(1, epochs + 1):
        model.train()
        logits = model(train_x)
        loss = F.cross_entropy(logits, train_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {
            "epoch": epoch,
            "loss": loss.item(),
            "train_error": 100.0 * (logits.detach().argmax(1) != train_y).float().mean().item(),
        }
        last = epoch == epochs
        if last or epoch % eval_every == 0:
            record["test_error"] = _error(model, test_x, test_y)
        if last or epoch % esm_every == 0:
            record["esm"] = _esm_rows(model, test_x)
        run.history.append(record)
        if on_epoch is not None:
            on_epoch(epoch)
    run.final_esm = run.history[-1]["esm"]
    run.train_error = run.history[-1]["train_error"]
    run.test_error = run.history[-1]["test_error"]
    return run


def build_mlp(layout: str, in_features: int, num_classes: int, cfg: MLPConfig, seed: int) -> StudyMLP:
    """A seeded ``StudyMLP``; the same seed gives the same Linear weights for both layouts."""
    torch.manual_seed(seed)
    return StudyMLP(in_features, num_classes, cfg.depth, cfg.width, layout, cfg.gn_groups, cfg.bn_momentum)
