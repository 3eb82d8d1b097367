"""Section 5 at small scale: a narrow timm ResNet with BN vs its XBNBlock conversions.

The BN network is a timm ``resnet26`` (8 bottlenecks) with narrow channels. Its XBN variants are
made by ``timm_xbn.convert`` of the *untrained* BN model (P2 with GroupNorm, P2 with
InstanceNorm), so all three start from the same weights and are then trained the same way.
GroupNorm's group count is scaled with the width (64 groups at ResNet-50's width 64 -> 16 groups
at width 16), so each stage has the paper's channels per group (1, 2, 4, 8).

Evaluations (all on the test split): top-1 vs the Eq. 5 perturbation of the first BN of the
first ``blocks`` bottlenecks (several seeds), ESM per BN layer (Definition 2), and AdaBN
recalibration under ImageNet-C corruptions applied with ``timm_xbn.corruptions``.
"""
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..corruptions.torch_ops import corrupt_batch
from ..evaluation.metrics import accuracy_from_counts, topk_correct
from ..evaluation.results import summarize_robustness
from ..evaluation.sweep import SharedPass, eval_mode, robustness_settings
from ..stats import estimation_shift, recalibrate, select_perturbation_targets
from ..surgery import convert

__all__ = [
    "RESNET_VARIANTS",
    "ResNetConfig",
    "ImageSplit",
    "build_variants",
    "prepare_images",
    "train_classifier",
    "evaluate_top1",
    "robustness_sweep",
    "esm_per_layer",
    "adabn_under_corruption",
]

RESNET_VARIANTS = ("BN", "XBN-GN", "XBN-IN")


@dataclass
class ResNetConfig:
    """Settings of the Section 5 experiments (defaults fit the CPU budget of the default study)."""

    arch: str = "resnet26"
    channels: Tuple[int, ...] = (8, 16, 32, 64)
    stem_width: int = 8
    gn_groups: int = 8
    stem_pool: bool = False
    image_size: int = 32
    train_samples: Optional[int] = 20000
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    eval_samples: int = 1000
    eval_batch_size: int = 250
    deltas: Tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    perturb_seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    blocks: int = 3
    corruptions: Tuple[str, ...] = ("gaussian_noise", "defocus_blur", "fog", "contrast")
    severity: int = 3
    calib_samples: int = 1000

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class ImageSplit:
    """Images in [0, 1] (N, 3, S, S), labels, and the per-channel normalization the models use."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def batches(self, batch_size: int, x: Optional[torch.Tensor] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Normalized ``(images, labels)`` batches in order (of ``x`` instead of the clean images if given)."""
        x = self.x if x is None else x
        for i in range(0, len(self.y), batch_size):
            yield self.normalize(x[i:i + batch_size]), self.y[i:i + batch_size]


def prepare_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size`` px (bilinear, antialiased) and repeat grey to 3 channels (corruptions are RGB)."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def build_variants(cfg: ResNetConfig, num_classes: int, seed: int) -> Dict[str, nn.Module]:
    """The BN network and its P2 XBNBlock conversions (GN, IN), all from the same initial weights."""
    torch.manual_seed(seed)
    bn = timm.create_model(
        cfg.arch, num_classes=num_classes, in_chans=3, channels=tuple(cfg.channels), stem_width=cfg.stem_width,
    )
    if not cfg.stem_pool:
        bn.maxpool = nn.Identity()
    return {
        "BN": bn,
        "XBN-GN": convert(bn, position="P2", bfn="gn", groups=cfg.gn_groups).model,
        "XBN-IN": convert(bn, position="P2", bfn="in").model,
    }


def train_classifier(
    model: nn.Module,
    split: ImageSplit,
    cfg: ResNetConfig,
    seed: int,
    on_step: Optional[Callable[[], None]] = None,
) -> List[dict]:
    """SGD (momentum 0.9, the paper's weight decay) with a warmup + cosine schedule (timm's
    optimizer and scheduler factories), seeded shuffling; returns per-epoch loss and train top-1 (%)."""
    steps_per_epoch = math.ceil(len(split.y) / cfg.batch_size)
    optimizer = create_optimizer_v2(model, "sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=cfg.epochs * steps_per_epoch, warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.lr / 10, lr_min=0.0, t_in_epochs=False,
    )
    generator = torch.Generator().manual_seed(seed)
    history, update = [], 0
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(split.y), generator=generator)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x, y = split.normalize(split.x[idx]), split.y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update += 1
            scheduler.step_update(update)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            if on_step is not None:
                on_step()
        history.append({"epoch": epoch, "loss": loss_sum / len(order), "train_top1": 100.0 * correct / len(order)})
    model.eval()
    return history


@torch.no_grad()
def evaluate_top1(model: nn.Module, batches) -> float:
    """Top-1 (%) of ``model`` in eval mode over ``(images, labels)`` batches."""
    counts = None
    with eval_mode([model]):
        for x, y in batches:
            c = topk_correct(model(x), y)
            counts = c if counts is None else counts + c
    return accuracy_from_counts(counts)["top1"]


def robustness_sweep(
    models: Mapping[str, nn.Module],
    split: ImageSplit,
    deltas: Sequence[float],
    seeds: Sequence[int],
    blocks: int,
    batch_size: int,
) -> Tuple[Dict[str, dict], Dict[str, List[str]]]:
    """Top-1 vs Eq. 5 noise magnitude for each model, disturbing the first BN of the first ``blocks``
    bottlenecks (``select_perturbation_targets``), via the evaluation engine's shared pass.

    Returns the ``models`` section of a ``robustness`` results dict and the disturbed BN names.
    """
    targets = {label: select_perturbation_targets(m, blocks=blocks, scope="first") for label, m in models.items()}
    settings = robustness_settings(list(models), deltas, seeds)
    sweep = SharedPass(models, settings, targets)
    with eval_mode(models.values()):
        for x, y in split.batches(batch_size):
            sweep.update(x, y)
    runs = {s.key: accuracy_from_counts(sweep.counts[s.key]) for s in settings}
    return summarize_robustness(runs, settings), targets


def esm_per_layer(model: nn.Module, split: ImageSplit, batch_size: int, depth_of: Mapping[str, int]) -> List[dict]:
    """ESM rows of every BN of ``model`` on the split; ``depth`` is the norm's position among the
    BN network's norms (``depth_of``), so converted models line up with the BN model."""
    rows = []
    for r in estimation_shift(model, split.batches(batch_size)):
        row = asdict(r)
        row["depth"] = depth_of[r.name]
        rows.append(row)
    return rows


def adabn_under_corruption(
    models: Mapping[str, nn.Module],
    eval_split: ImageSplit,
    calib_split: ImageSplit,
    corruption: str,
    severity: int,
    batch_size: int,
    seed: int,
) -> Dict[str, dict]:
    """Top-1 on the corrupted eval split before and after AdaBN (``recalibrate(mode="full")`` on the
    corrupted, unlabelled calibration split, disjoint from the eval split)."""
    generator = torch.Generator().manual_seed(seed)
    shifted_eval = corrupt_batch(eval_split.x, corruption, severity, generator)
    shifted_calib = corrupt_batch(calib_split.x, corruption, severity, generator)
    out = {}
    for label, model in models.items():
        before = evaluate_top1(model, eval_split.batches(batch_size, shifted_eval))
        adapted = recalibrate(model, [x for x, _ in calib_split.batches(batch_size, shifted_calib)], mode="full")
        after = evaluate_top1(adapted, eval_split.batches(batch_size, shifted_eval))
        out[label] = {"before_top1": before, "after_top1": after}
    return out
