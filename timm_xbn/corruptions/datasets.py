"""Corrupted evaluation data: released ImageNet-C folders, CIFAR-10/100-C arrays, or a clean
image folder corrupted on the fly (reference package in the loader workers, or the fast torch
implementation on the evaluation device).

Every source yields uint8 images (B, 3, H, W); normalisation happens on the device (see
``evaluate.py``). Class folders map to the model's class indices by the rules of
``timm_xbn.evaluation.classes``: a ``class_map`` file; integer folder names; ImageNet-1k synset order
for wnids and a 1000-class model (so a subset of the classes still maps correctly); else sorted names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..evaluation.classes import class_folders, match_classes
from ..evaluation.data import EvalData, SkippedSample, SkipUnreadable
from ..utils.errors import UserError
from .names import ALL_CORRUPTIONS, CORRUPTIONS, SEVERITIES
from .reference import corrupt_reference
from .seeding import pixel_seed

__all__ = [
    "CifarC", "CifarCArray", "CorruptionSource", "ImageNetCFolders", "OnTheFly", "ReferenceCorrupted",
    "discover_imagenet_c",
]

def _listing(path: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "") or "nothing"


def _wanted(corruptions: Optional[Sequence[str]], severities: Optional[Sequence[int]]) -> tuple[list[str], list[int]]:
    return list(corruptions or CORRUPTIONS), list(severities or SEVERITIES)


def _missing(wanted: Sequence[str], severities: Sequence[int], present: Mapping[tuple[str, int], Any]) -> list[str]:
    missing = []
    for c in wanted:
        have = [s for s in severities if (c, s) in present]
        missing.extend([c] if not have else [f"{c}/{s}" for s in severities if s not in have])
    return missing


def discover_imagenet_c(root: Union[str, Path]) -> dict[tuple[str, int], Path]:
    """Map (corruption, severity) -> folder for a released ImageNet-C tree
    ``root/<corruption>/<severity 1-5>/<class>/<image>``; ValueError naming what was found otherwise."""
    root = Path(root).expanduser()
    layout = "<root>/<corruption>/<severity 1-5>/<class wnid>/<image>.JPEG"
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C folder not found: {root} (expected {layout})")
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if dirs and all(p.name in {str(s) for s in SEVERITIES} for p in dirs):
        raise UserError(f"{root} holds severity folders ({_listing(root)}), not corruption folders: "
                        f"point at its parent (expected {layout})")
    unknown = [p.name for p in dirs if p.name not in ALL_CORRUPTIONS]
    if unknown or not dirs:
        raise UserError(f"{root} is not in the ImageNet-C layout {layout}: found {_listing(root)}"
                        + (f"; unknown corruption folders {unknown} (valid: {', '.join(ALL_CORRUPTIONS)})" if unknown else ""))
    pairs = {}
    for cdir in dirs:
        for sdir in sorted(p for p in cdir.iterdir() if p.is_dir()):
            if sdir.name not in {str(s) for s in SEVERITIES}:
                raise UserError(f"{cdir} should hold severity folders 1-5 ({layout}), found {_listing(cdir)}")
            classes = [p for p in sdir.iterdir() if p.is_dir()]
            if not classes:
                raise UserError(f"{sdir} should hold one folder per class ({layout}), found {_listing(sdir)}")
            pairs[(cdir.name, int(sdir.name))] = sdir
    return pairs


class ReferenceCorrupted(Dataset):
    """Clean uint8 images (3, H, W) of an inner data set, corrupted per image by the reference
    package seeded by (seed, corruption, severity, the image's pixels): ``seeding.pixel_seed``, as the
    torch mode, so any order, batch or worker gives the same result."""

    def __init__(self, inner: Dataset, corruption: str, severity: int, seed: int = 0):
        self.inner, self.corruption, self.severity, self.seed = inner, corruption, severity, seed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        item = self.inner[index]
        if isinstance(item, SkippedSample):
            return item
        image, target = item
        hwc = np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0))
        seed = pixel_seed(self.seed, self.corruption, self.severity, image) & 0xFFFFFFFF  # NumPy seeds are 32-bit
        out = corrupt_reference(hwc, self.corruption, self.severity, seed)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), target


class CifarCArray(Dataset):
    """``images[start:start + count]`` of a CIFAR-C array (N, H, W, 3) uint8 as (3, H, W) tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, start: int, count: int):
        self.images, self.labels, self.start, self.count = images, labels, start, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        i = self.start + index
        return torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1))), int(self.labels[i % len(self.labels)])


@dataclass
class CorruptionSource:
    """Where corrupted images come from, and which (corruption, severity) pairs are there.

    ``pairs`` are the requested pairs that exist (in benchmark order), ``missing`` the requested
    ones that do not (``"fog"`` or ``"fog/3"``). ``on_device`` names the corruption the evaluator
    applies to each batch on the device (torch mode); ``None`` when the loader delivers corrupted images.
    ``class_warning`` says when the class folders may not be the model's classes (``match_classes``).
    """

    kind: str
    source: str
    pairs: list[tuple[str, int]]
    missing: list[str]
    data_config: dict[str, Any]
    batch_size: int = 64
    workers: int = 2
    on_device: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    class_warning: Optional[str] = None

    def pair_data(self, corruption: str, severity: int) -> EvalData:
        raise NotImplementedError

    def clean_data(self) -> Optional[EvalData]:
        """The uncorrupted images, when this source has them."""
        return None

    def _eval_data(self, dataset: Dataset, source: str) -> EvalData:
        import os

        return EvalData(dataset, dict(self.data_config), batch_size=self.batch_size,
                        workers=max(0, min(self.workers, os.cpu_count() or 1)), source=source,
                        info={"num_images": len(dataset)})


def _crop_size(data_config: Mapping[str, Any]) -> tuple[int, int]:
    return tuple(int(v) for v in data_config["input_size"][1:])


def _clean_transform(data_config: Mapping[str, Any]):
    """timm's eval resize + centre crop, ending in a uint8 tensor (its prefetcher variant)."""
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "crop_pct", "crop_mode")
    return create_transform(**{k: data_config[k] for k in keys if data_config.get(k) is not None},
                            is_training=False, use_prefetcher=True)


def _folder_dataset(root: Path, class_map: Mapping[str, int], transform) -> SkipUnreadable:
    from timm.data import ImageDataset

    try:
        ds = ImageDataset(str(root), class_map=dict(class_map))
    except RuntimeError as err:  # timm: "Found 0 images in subfolders of ..."
        raise UserError(f"no images found in the class folders of {root}: {err}") from None
    return SkipUnreadable(ds, transform)


class ImageNetCFolders(CorruptionSource):
    """The released ImageNet-C tree; images are centre-cropped to the input size, never resized."""

    def __init__(self, root: Union[str, Path], data_config: Mapping[str, Any], num_classes: Optional[int] = None,
                 corruptions: Optional[Sequence[str]] = None, severities: Optional[Sequence[int]] = None,
                 clean_dir: Optional[Union[str, Path]] = None, class_map: Optional[Union[str, Path]] = None,
                 batch_size: int = 64, workers: int = 2):
        root = Path(root).expanduser()
        found = discover_imagenet_c(root)
        wanted, sevs = _wanted(corruptions, severities)
        if corruptions is None:  # evaluate every folder present, the 15 benchmark ones counted as expected
            wanted = list(CORRUPTIONS) + [c for c in ALL_CORRUPTIONS[len(CORRUPTIONS):] if any(k[0] == c for k in found)]
        pairs = [(c, s) for c in wanted for s in sevs if (c, s) in found]
        super().__init__("imagenet-c", str(root), pairs, _missing(wanted, sevs, found), dict(data_config),
                         batch_size, workers)
        self.folders = {p: found[p] for p in pairs}
        self.clean_dir = Path(clean_dir).expanduser() if clean_dir is not None else None
        if self.clean_dir is not None and not self.clean_dir.is_dir():
            raise FileNotFoundError(f"clean data folder not found: {self.clean_dir}")
        names = {n for p in pairs for n in class_folders(self.folders[p])}
        if self.clean_dir is not None:
            names |= set(class_folders(self.clean_dir))
        self.class_map, _, self.class_warning = match_classes(sorted(names), num_classes, class_map, str(root))

    def pair_data(self, corruption: str, severity: int) -> EvalData:
        from timm.data.transforms import MaybePILToTensor
        from torchvision import transforms

        transform = transforms.Compose([transforms.CenterCrop(_crop_size(self.data_config)), MaybePILToTensor()])
        folder = self.folders[(corruption, severity)]
        return self._eval_data(_folder_dataset(folder, self.class_map, transform), str(folder))

    def clean_data(self) -> Optional[EvalData]:
        if self.clean_dir is None:
            return None
        dataset = _folder_dataset(self.clean_dir, self.class_map, _clean_transform(self.data_config))
        return self._eval_data(dataset, str(self.clean_dir))


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped ``.npy`` array; ``ValueError`` naming the file when it is not one (numpy calls any
    non-.npy file "pickled data", and pickles are never loaded here)."""
    with path.open("rb") as f:
        head = f.read(6)
    if head != b"\x93NUMPY":
        raise UserError(f"{path} is not a .npy array file (it starts with {head!r}); CIFAR-C files are .npy arrays")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:  # e.g. an object array: a pickle inside the .npy
        raise UserError(f"{path} is not a plain numeric .npy array ({err.args[0].split(' when ')[0]}); it is not loaded") from None


class CifarC(CorruptionSource):
    """CIFAR-10-C / CIFAR-100-C: ``<corruption>.npy`` (5 x N images stacked by severity) and
    ``labels.npy`` (N, or 5 x N labels), as distributed by Hendrycks et al. and robustbench.
    Images are fed at their stored size (32 x 32)."""

    def __init__(self, root: Union[str, Path], data_config: Mapping[str, Any], num_classes: Optional[int] = None,
                 corruptions: Optional[Sequence[str]] = None, severities: Optional[Sequence[int]] = None,
                 batch_size: int = 64, workers: int = 2):
        root = Path(root).expanduser()
        layout = "<root>/<corruption>.npy (5*N, H, W, 3) uint8 and <root>/labels.npy"
        if not root.is_dir():
            raise FileNotFoundError(f"CIFAR-C folder not found: {root} (expected {layout})")
        if not (root / "labels.npy").is_file():
            raise FileNotFoundError(f"{root} has no labels.npy (expected {layout}); found {_listing(root)}")
        self.labels = _load_npy(root / "labels.npy")
        files = {p.stem: p for p in root.glob("*.npy") if p.stem != "labels"}
        unknown = [n for n in files if n not in ALL_CORRUPTIONS]
        if unknown:
            raise UserError(f"{root}: unknown corruption files {sorted(unknown)} (valid: {', '.join(ALL_CORRUPTIONS)})")
        if not files:
            raise UserError(f"{root} holds no <corruption>.npy files (expected {layout}); found {_listing(root)}")
        wanted, sevs = _wanted(corruptions, severities)
        if corruptions is None:
            wanted = list(CORRUPTIONS) + [c for c in ALL_CORRUPTIONS[len(CORRUPTIONS):] if c in files]
        self.arrays: dict[str, np.ndarray] = {}
        for name in (c for c in wanted if c in files):
            images = _load_npy(files[name])
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) % len(SEVERITIES):
                raise UserError(f"{files[name]}: expected (5*N, H, W, 3) uint8 images, found {images.dtype} {images.shape}")
            if len(self.labels) not in (len(images), len(images) // len(SEVERITIES)):
                raise UserError(f"{files[name]} holds {len(images)} images but labels.npy {len(self.labels)} labels "
                                f"(expected {len(images)} or {len(images) // len(SEVERITIES)})")
            self.arrays[name] = images
        present = {(c, s): True for c in self.arrays for s in SEVERITIES}
        pairs = [(c, s) for c in wanted for s in sevs if (c, s) in present]
        super().__init__("cifar-c", str(root), pairs, _missing(wanted, sevs, present), dict(data_config), batch_size, workers)
        n_classes = int(np.max(self.labels)) + 1
        if num_classes is not None and n_classes > num_classes:
            raise UserError(f"labels.npy has {n_classes} classes but the model only {num_classes} outputs")

    def pair_data(self, corruption: str, severity: int) -> EvalData:
        images = self.arrays[corruption]
        per = len(images) // len(SEVERITIES)
        dataset = CifarCArray(images, self.labels, (severity - 1) * per, per)
        return self._eval_data(SkipUnreadable(dataset), f"{self.source}/{corruption}.npy[{severity}]")


class OnTheFly(CorruptionSource):
    """A clean ImageFolder, resized and centre-cropped with the model's eval transform, then
    corrupted: ``mode="torch"`` on the evaluation device per batch, ``mode="reference"`` with the
    ``imagecorruptions`` package in the loader workers (seeded per image)."""

    def __init__(self, root: Union[str, Path], data_config: Mapping[str, Any], num_classes: Optional[int] = None,
                 corruptions: Optional[Sequence[str]] = None, severities: Optional[Sequence[int]] = None,
                 mode: str = "torch", seed: int = 0, class_map: Optional[Union[str, Path]] = None,
                 batch_size: int = 64, workers: int = 2):
        if mode not in ("torch", "reference"):
            raise UserError(f"on-the-fly corruption mode must be 'torch' or 'reference', got {mode!r}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"clean data folder not found: {root}")
        if corruptions is not None and mode == "torch":
            extra = [c for c in corruptions if c not in CORRUPTIONS]
            if extra:
                raise UserError(f"the torch implementation covers the 15 benchmark corruptions, not {extra}; "
                                "use --corrupt reference for them")
        wanted, sevs = _wanted(corruptions, severities)
        super().__init__(f"on-the-fly-{mode}", str(root), [(c, s) for c in wanted for s in sevs], [],
                         dict(data_config), batch_size, workers, on_device=(mode == "torch"), info={"seed": seed})
        self.root, self.mode, self.seed = root, mode, seed
        names = class_folders(root)
        if not names:
            raise UserError(f"{root} should hold one folder per class (<root>/<class>/<image>), found {_listing(root)}")
        self.class_map, _, self.class_warning = match_classes(names, num_classes, class_map, str(root))

    def clean_data(self) -> EvalData:
        return self._eval_data(_folder_dataset(self.root, self.class_map, _clean_transform(self.data_config)), str(self.root))

    def pair_data(self, corruption: str, severity: int) -> EvalData:
        clean = _folder_dataset(self.root, self.class_map, _clean_transform(self.data_config))
        if self.mode == "torch":
            return self._eval_data(clean, f"{self.root} ({corruption}/{severity}, torch)")
        return self._eval_data(ReferenceCorrupted(clean, corruption, severity, self.seed),
                               f"{self.root} ({corruption}/{severity}, reference)")
