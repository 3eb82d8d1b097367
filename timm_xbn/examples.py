"""A small real data set and two trained checkpoints to try every README example on, in seconds on a CPU.

``write_example_data(folder)`` (``xbn-eval example-data -o FOLDER``) writes::

    FOLDER/fmnist/train/<class>/*.png        Fashion-MNIST at 32 px (else MNIST-5k, else 8x8 digits, as the study)
    FOLDER/fmnist/validation/<class>/*.png
    FOLDER/fmnist-c/<corruption>/<severity>/<class>/*.png   the validation images corrupted, ImageNet-C layout
    FOLDER/bn/model.safetensors, config.json    a small BN ResNet trained for a few steps (timm export)
    FOLDER/xbn/model.safetensors, config.json   the same ResNet with XBNBlocks (P2, GroupNorm)
    FOLDER/labels.txt                           class index and name

Class folders are named by class index (``0`` ... ``9``), so every command maps them without ``--class-map``.
The exports carry their data config (32 px, no crop, the training images' mean and std), so
``-m local-dir:FOLDER/bn`` evaluates the network as it was trained, and no pretrained tag: the weights
are these few steps' and nothing else.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from PIL import Image
from timm.optim import create_optimizer_v2

from .corruptions.seeding import corrupt_images
from .hub.publish import describe_weights
from .models import create_model, export_model
from .study.data import load_dataset, subset
from .utils.errors import UserError
from .utils.files import write_text_atomic

__all__ = ["EXAMPLE_MODEL_KWARGS", "ExampleData", "write_example_data"]

IMAGE_SIZE = 32
# a ResNet-26 cut to one block per stage and narrow channels: trains in seconds on a CPU
EXAMPLE_MODEL_KWARGS = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16}
EXAMPLE_MODELS = {"bn": "resnet26", "xbn": "xbn_resnet26"}


@dataclass(frozen=True)
class ExampleData:
    """Where ``write_example_data`` put each part, and the top-1 (%) of each trained network on the validation images."""

    root: Path
    train: Path
    validation: Path
    corrupted: Path
    checkpoints: Dict[str, Path]
    top1: Dict[str, float]
    source: str


def _save_images(images: torch.Tensor, labels: torch.Tensor, folder: Path) -> None:
    """uint8 images (N, 3, S, S) as ``folder/<label>/<i>.png``."""
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        path = folder / str(label) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def _balanced(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` seeded random images of each class (fewer where a class has fewer)."""
    x, y = subset(x, y, len(y) - 1, seed)  # a seeded shuffle
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in torch.unique(y)])
    keep = keep.sort().values
    return x[keep], y[keep]


def _to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (N, C, H, W) as uint8 RGB at ``IMAGE_SIZE`` px."""
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, seed: int) -> None:
    """``steps`` SGD steps (timm's optimizer factory) over seeded reshuffles of the normalized images ``x``."""
    optimizer = create_optimizer_v2(model, "sgd", lr=0.05, momentum=0.9, weight_decay=5e-5)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    model.train()
    for step in range(steps):
        start = (step * batch_size) % len(y)
        if start + batch_size > len(y):
            order, start = torch.randperm(len(y), generator=generator), 0
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def _top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * sum((model(x[i:i + 100]).argmax(1) == y[i:i + 100]).sum().item() for i in range(0, len(y), 100)) / len(y)


def write_example_data(
    folder: Union[str, Path],
    train_per_class: int = 40,
    val_per_class: int = 20,
    steps: int = 60,
    batch_size: int = 32,
    corruptions: Sequence[str] = ("gaussian_noise", "contrast"),
    severities: Sequence[int] = (3, 5),
    seed: int = 0,
) -> ExampleData:
    """Write the example data set, its corrupted copy and two trained checkpoints to ``folder`` (see the module
    docstring). Work is bounded by the arguments: ``10 * train_per_class`` training images, ``steps`` steps of
    ``batch_size`` per network."""
    if min(train_per_class, val_per_class, steps, batch_size) < 1:
        raise UserError("train_per_class, val_per_class, steps and batch_size must be >= 1")
    root = Path(folder)
    data = load_dataset("auto", IMAGE_SIZE, seed)
    train_x, train_y = _balanced(data.train_x, data.train_y, train_per_class, seed)
    val_x, val_y = _balanced(data.test_x, data.test_y, val_per_class, seed)
    train_u8, val_u8 = _to_uint8_rgb(train_x), _to_uint8_rgb(val_x)
    _save_images(train_u8, train_y, root / "fmnist" / "train")
    _save_images(val_u8, val_y, root / "fmnist" / "validation")
    for name in corruptions:
        for severity in severities:
            _save_images(corrupt_images(val_u8, name, severity, seed=seed), val_y,
                         root / "fmnist-c" / name / str(severity))
    write_text_atomic(root / "labels.txt", "".join(f"{i} {c}\n" for i, c in enumerate(data.classes)))

    train_f, val_f = train_u8.float() / 255, val_u8.float() / 255
    mean = tuple(round(v, 4) for v in train_f.mean(dim=(0, 2, 3)).tolist())
    std = tuple(round(v, 4) for v in train_f.std(dim=(0, 2, 3)).tolist())
    norm = lambda x: (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    data_config = {"input_size": (3, IMAGE_SIZE, IMAGE_SIZE), "interpolation": "bilinear", "mean": mean, "std": std,
                   "crop_pct": 1.0, "crop_mode": "center"}
    checkpoints, top1 = {}, {}
    for label, arch in EXAMPLE_MODELS.items():
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=data.num_classes, **EXAMPLE_MODEL_KWARGS)
        _train(model, norm(train_f), train_y, steps, batch_size, seed)
        top1[label] = _top1(model, norm(val_f), val_y)
        checkpoints[label] = export_model(describe_weights(model), root / label, data_config=data_config)
    return ExampleData(root=root, train=root / "fmnist" / "train", validation=root / "fmnist" / "validation",
                       corrupted=root / "fmnist-c", checkpoints=checkpoints, top1=top1, source=data.describe())
