"""Section 5 at small scale: a narrow, ResNet-50-deep timm network with BN vs its XBNBlock variants.

The BN network is timm's ``resnet50`` layout (3-4-6-3 = 16 bottlenecks, like the paper's
ResNet-50, so the estimation shift of stacked BNs has the paper's depth to accumulate over) with
narrow channels for the CPU. Every variant of one training seed starts from the same initial
weights: the BN model is built under that seed and the variants are made from it by surgery
(``timm_xbn.convert``, or every norm swapped for "GN"). GroupNorm's group count is scaled with the
width (64 groups at ResNet-50's width 64 -> 8 groups at width 8), so each stage keeps the paper's
channels per group.

Evaluations (all on the full test split): top-1; top-1 vs the Eq. 5 perturbation of the first BN
of the first ``blocks`` bottlenecks (several perturbation seeds); ESM per BN layer (Definition 2)
on the clean and on a corrupted test split; AdaBN under ImageNet-C corruptions (statistics
re-estimated on corrupted training images, evaluated on the corrupted test split).
"""
import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..corruptions.torch_ops import corrupt_batch
from ..evaluation.metrics import accuracy_from_counts, topk_correct
from ..evaluation.results import summarize_robustness
from ..evaluation.sweep import SharedPass, robustness_settings
from ..layers import paper_affine
from ..stats import estimation_shift, recalibrate, select_perturbation_targets
from ..surgery import XBNConfig, build_bfn_for, convert, find_stem_norms, replace_module
from ..utils.device import eval_mode, model_device
from ..utils.errors import UserError
from ..utils.files import atomic_write
from ..utils.norms import is_bn

__all__ = [
    "SCHEDULES",
    "VARIANTS",
    "ResNetConfig",
    "ImageSplit",
    "build_bn_network",
    "build_variant",
    "bn_depths",
    "prepare_images",
    "lr_scheduler",
    "train_classifier",
    "save_training_state",
    "load_training_state",
    "training_state_epoch",
    "evaluate_top1",
    "robustness_sweep",
    "esm_per_layer",
    "adabn_under_corruption",
    "autocast",
]

# label -> how the variant is made from the BN network of the same seed
VARIANTS: Dict[str, Optional[dict]] = {
    "BN": None,
    "XBN-P1": dict(position="P1", bfn="gn"),
    "XBN-GN": dict(position="P2", bfn="gn"),  # XBNBlock-P2, the paper's default XBNBlock
    "XBN-P3": dict(position="P3", bfn="gn"),
    "XBN-IN": dict(position="P2", bfn="in"),
    "GN": dict(all_norms=True),  # every BN (stem, blocks, shortcuts) replaced: Table 1's "Full"
}


# lr schedules of the main training (both with a linear warm-up from lr / 10 over ``warmup_steps``)
SCHEDULES = ("cosine", "linear")  # cosine over all updates (timm's CosineLRScheduler), or one-cycle: linear decay to 0 after the warm-up (PolyLRScheduler, power 1)


@dataclass
class ResNetConfig:
    """Settings of the Section 5 experiments (the default study's; ``StudyConfig.preset`` changes them)."""

    arch: str = "resnet50"
    channels: Tuple[int, ...] = (8, 16, 32, 64)
    stem_width: int = 16
    gn_groups: int = 8
    stem_pool: bool = False
    channels_last: bool = True  # oneDNN's faster convolution layout on CPU (about 1.6x here); changes rounding only
    # main training (every variant, every seed)
    variants: Tuple[str, ...] = ("BN", "XBN-GN", "XBN-IN", "GN")
    train_samples: Optional[int] = None
    epochs: float = 3.0  # 2 epochs reach 89.3 % for BN (seeds 0, 1), below the study's 89.5 % floor
    min_steps: int = 400  # small data sets (the MNIST-5k fallback) train for this many updates at least
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 1e-4
    decay_norms: bool = True  # the authors' grouping: every parameter decays (False: timm's, norms and biases without)
    stem_bfn: bool = True  # XBN variants normalize the stem with their BFN too, as the authors' networks do
    warmup_steps: int = 100
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    eval_samples: Optional[int] = None
    eval_batch_size: int = 250  # forward passes are fastest per image at 128-250 on the CPU (cache-sized activations)
    # Figure 8
    robustness_variants: Tuple[str, ...] = ("BN", "XBN-GN", "XBN-IN")
    deltas: Tuple[float, ...] = (0.3, 0.6, 0.9)
    perturb_seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)  # the paper's 5 draws per network
    blocks: int = 6
    # ESM per layer (clean test split and the test split under one corruption)
    esm_variants: Tuple[str, ...] = ("BN", "XBN-GN", "XBN-IN")
    esm_corruption: str = "gaussian_noise"
    # AdaBN under corruptions
    adabn_variants: Tuple[str, ...] = ("BN",)
    corruptions: Tuple[str, ...] = ("gaussian_noise", "defocus_blur", "fog", "contrast")
    severity: int = 3
    calib_samples: int = 2000
    # small-batch training (Table 6): same iterations for every batch size, lr = lr * sqrt(b / batch_size)
    small_batch_variants: Tuple[str, ...] = ("BN", "GN", "XBN-GN")
    small_batch_sizes: Tuple[int, ...] = (2, 4, 8, 32)
    small_batch_iterations: int = 300

    def recipe(self) -> Dict[str, Any]:
        """The main training's recipe as ``train_classifier`` keywords: one place for the study and its benchmarks."""
        return {"batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "warmup_steps": self.warmup_steps, "schedule": self.schedule, "label_smoothing": self.label_smoothing,
                "decay_norms": self.decay_norms}

    def __post_init__(self) -> None:
        unknown = [v for v in (*self.variants, *self.robustness_variants, *self.esm_variants,
                               *self.adabn_variants, *self.small_batch_variants) if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown Section 5 variant(s) {unknown}; choose from {list(VARIANTS)}")
        if "BN" not in self.variants:
            raise UserError("the Section 5 variants must include the BN baseline")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown lr schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")

    def train_steps(self, train_images: int) -> int:
        """SGD updates of the main training: ``epochs`` passes over the data, at least ``min_steps``."""
        return max(self.min_steps, int(self.epochs * train_images) // self.batch_size)

    def small_batch_lr(self, batch_size: int) -> float:
        """Square-root scaling of the main recipe's lr (keeps SGD's noise scale comparable)."""
        return self.lr * math.sqrt(batch_size / self.batch_size)

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

    def to(self, device: str) -> "ImageSplit":
        """This split with its tensors on ``device``."""
        return ImageSplit(self.x.to(device), self.y.to(device), self.mean.to(device), self.std.to(device))

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


def build_bn_network(cfg: ResNetConfig, num_classes: int, seed: int) -> nn.Module:
    """The BN network, initialised under ``seed`` (the global RNG is saved and restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(
            cfg.arch, num_classes=num_classes, in_chans=3, channels=tuple(cfg.channels), stem_width=cfg.stem_width,
        )
    if not cfg.stem_pool:
        model.maxpool = nn.Identity()
    return model


def _all_norms_batch_free(model: nn.Module, groups: int) -> nn.Module:
    """Every BN of ``model`` (stem, blocks, shortcuts) replaced by GroupNorm, in place."""
    gn = XBNConfig(bfn="gn", groups=groups)
    for name in [n for n, m in model.named_modules() if is_bn(m)]:
        replace_module(model, name, build_bfn_for(model.get_submodule(name), gn))
    return model


def _batch_free_stem(model: nn.Module, bfn: XBNConfig) -> None:
    """The stem's BN replaced by ``bfn`` in place. The authors' stem norm is GN with 64 groups on 64
    channels, one channel per group; timm's plain stem keeps 64 channels here (``stem_width`` sizes deep
    stems only), so one channel per group keeps the paper's stem exactly."""
    for name in find_stem_norms(model):
        replace_module(model, name, build_bfn_for(model.get_submodule(name), bfn))


def build_variant(label: str, cfg: ResNetConfig, num_classes: int, seed: int) -> nn.Module:
    """Variant ``label`` of ``VARIANTS``, made from the BN network of ``seed`` (same initial weights)."""
    if label not in VARIANTS:
        raise UserError(f"unknown Section 5 variant {label!r}; choose from {list(VARIANTS)}")
    model = build_bn_network(cfg, num_classes, seed)
    recipe = VARIANTS[label]
    if recipe is not None and recipe.get("all_norms"):
        model = _all_norms_batch_free(model, cfg.gn_groups)
    elif recipe is not None:
        # trained from scratch: the authors' BFN (IN without affine parameters), not surgery's kept weight and bias
        affine = paper_affine(recipe["bfn"])
        model = convert(model, groups=cfg.gn_groups, inplace=True, affine=affine, **recipe).model
        if cfg.stem_bfn:
            _batch_free_stem(model, XBNConfig(bfn=recipe["bfn"], groups=None, channels_per_group=1, affine=affine))
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def autocast(model: nn.Module):
    """bf16 autocast for a model on CUDA (its convolutions and matmuls at tensor-core speed); nothing on the CPU."""
    device = model_device(model)
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def bn_depths(cfg: ResNetConfig) -> Dict[str, int]:
    """Name -> 1-based position of every BN in the BN network, so variants' BNs line up by depth."""
    model = build_bn_network(cfg, num_classes=10, seed=0)
    return {name: i for i, name in enumerate((n for n, m in model.named_modules() if is_bn(m)), start=1)}


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, steps: int, warmup_steps: int, lr: float):
    """timm's per-update scheduler for ``schedule`` (``SCHEDULES``): warm-up from lr / 10, then decay to 0."""
    warmup = dict(warmup_t=min(warmup_steps, steps // 2), warmup_lr_init=lr / 10, lr_min=0.0, t_in_epochs=False)
    if schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=steps, **warmup)
    if schedule == "linear":  # one-cycle: the decay starts at the end of the warm-up, from the peak
        return PolyLRScheduler(optimizer, t_initial=steps - warmup["warmup_t"], power=1.0, warmup_prefix=True, **warmup)
    raise UserError(f"unknown lr schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


def train_classifier(
    model: nn.Module,
    split: ImageSplit,
    seed: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    steps: int,
    on_step: Optional[Callable[[int], None]] = None,
    checkpoint: Optional[Path] = None,
    schedule: str = "cosine",
    label_smoothing: float = 0.0,
    decay_norms: bool = False,
) -> List[dict]:
    """SGD (momentum 0.9, timm's optimizer factory) with a linear warm-up and a cosine or linear decay
    (``schedule``, timm's schedulers) for ``steps`` updates over seeded reshuffles of ``split``, on
    cross-entropy with ``label_smoothing``; returns per-epoch loss and train top-1 (%).
    ``decay_norms``: weight decay on every parameter, as the authors' ``extension/optimizer.py`` (the
    study passes ``ResNetConfig.decay_norms``); False: timm's ``filter_bias_and_bn``, norm weights and
    biases without decay.

    ``on_step(update)`` is called after every update. With ``checkpoint`` (a ``.safetensors`` path) the
    training state is saved there after every epoch but the last (``save_training_state``) and, when
    the file exists at the start, training resumes from it: the result is bit-identical to an
    uninterrupted run."""
    optimizer = create_optimizer_v2(model, "sgd", lr=lr, weight_decay=weight_decay, momentum=0.9,
                                    filter_bias_and_bn=not decay_norms)
    scheduler = lr_scheduler(optimizer, schedule, steps, warmup_steps, lr)
    generator = torch.Generator().manual_seed(seed)
    history: List[dict] = []
    update, epoch = 0, 0
    epochs = math.ceil(steps / (len(split.y) // batch_size)) if len(split.y) >= batch_size else 1
    if checkpoint is not None and Path(checkpoint).is_file():
        update, history = load_training_state(checkpoint, model, optimizer, generator, steps)
        epoch = len(history)
    model.train()
    while update < steps:
        epoch += 1
        order = torch.randperm(len(split.y), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(order) - batch_size + 1, batch_size):  # full batches only (BN needs > 1 sample)
            idx = order[i:i + batch_size]
            x, y = split.normalize(split.x[idx]), split.y[idx]
            with autocast(model):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update += 1
            scheduler.step_update(update)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if on_step is not None:
                on_step(update)
            if update == steps:
                break
        history.append({"epoch": epoch, "images": seen, "loss": loss_sum / seen, "train_top1": 100.0 * correct / seen})
        if checkpoint is not None and update < steps:
            save_training_state(checkpoint, model, optimizer, generator, update, steps, epochs, history)
    model.eval()
    return history


def save_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        update: int, steps: int, epochs: int, history: List[dict]) -> None:
    """``train_classifier``'s state after an epoch as one safetensors file (atomically): the weights and
    buffers, the optimizer's momentum buffers and hyper-parameters, the data-order and torch RNG states,
    the update count and the history so far."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for index, per_param in state["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v.detach().cpu().contiguous() for k, v in per_param.items()
                        if isinstance(v, torch.Tensor)})
    tensors["rng.order"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"update": update, "steps": steps, "epoch": len(history), "epochs": epochs, "history": history,
            "param_groups": state["param_groups"]}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "state": json.dumps(meta)})


def training_state_epoch(path: Path) -> Tuple[int, int]:
    """(epochs done, epochs in all) of a ``save_training_state`` file, read from its header only."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    return meta["epoch"], meta["epochs"]


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        steps: int) -> Tuple[int, List[dict]]:
    """Restore a ``save_training_state`` file into ``model``, ``optimizer``, ``generator`` and the torch
    RNG; returns (update, history). Momentum buffers get their parameter's memory layout, as in a run
    that never stopped."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    if meta["steps"] != steps:
        raise UserError(f"{path} is the training state of a {meta['steps']}-step run, not {steps}; delete it to start over")
    device = model_device(model)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param: Dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            param = params[int(index)]
            per_param.setdefault(int(index), {})[name] = torch.empty_like(param).copy_(value.to(device))
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng.order"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["update"], meta["history"]


@torch.no_grad()
def evaluate_top1(model: nn.Module, batches) -> float:
    """Top-1 (%) of ``model`` in eval mode over ``(images, labels)`` batches."""
    counts = None
    with eval_mode([model]), autocast(model):
        for x, y in batches:
            c = topk_correct(model(x).float(), y)
            counts = c if counts is None else counts + c
    return accuracy_from_counts(counts.cpu())["top1"]


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
    sweep = SharedPass.of_settings(models, settings, targets)
    with eval_mode(models.values()), autocast(next(iter(models.values()))):
        for x, y in split.batches(batch_size):
            sweep.update(x, y)
    runs = {s.key: accuracy_from_counts(sweep.counts[s.key].cpu()) for s in settings}
    return summarize_robustness(runs, settings), targets


def esm_per_layer(model: nn.Module, batches, depth_of: Mapping[str, int]) -> List[dict]:
    """ESM rows of every BN of ``model`` over ``batches``; ``depth`` is the norm's position among the
    BN network's norms (``depth_of``), so converted models line up with the BN model."""
    rows = []
    for r in estimation_shift(model, batches):
        row = asdict(r)
        row["depth"] = depth_of[r.name]
        rows.append(row)
    return rows


def adabn_under_corruption(
    model: nn.Module,
    test: ImageSplit,
    shifted_test: torch.Tensor,
    calib: ImageSplit,
    shifted_calib: torch.Tensor,
    batch_size: int,
) -> dict:
    """Top-1 on the corrupted test images before and after AdaBN (``recalibrate(mode="full")`` on
    corrupted, unlabelled images of the training split, disjoint from the test split)."""
    before = evaluate_top1(model, test.batches(batch_size, shifted_test))
    adapted = recalibrate(model, [x for x, _ in calib.batches(batch_size, shifted_calib)], mode="full")
    after = evaluate_top1(adapted, test.batches(batch_size, shifted_test))
    return {"before_top1": before, "after_top1": after}


def corrupted(x: torch.Tensor, corruption: str, severity: int, seed: int) -> torch.Tensor:
    """``x`` (in [0, 1]) under an ImageNet-C corruption, drawn from its own seeded generator."""
    return corrupt_batch(x, corruption, severity, torch.Generator().manual_seed(seed))
