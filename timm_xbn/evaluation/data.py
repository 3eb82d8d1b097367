"""Evaluation data: timm datasets and transforms, validated inputs, unreadable images skipped and counted.

The data set comes from ``timm.data.create_dataset`` (ImageFolder trees, tar files, ``hfds/``
Hugging Face datasets, ``torch/`` torchvision sets) and the transform from the model's pretrained
config via ``timm.data.resolve_data_config`` + ``create_transform``, overridable. Images that
cannot be decoded are dropped from their batch and reported, never crash a sweep: every batch
carries the indices and file names it skipped.
"""
import dataclasses
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from PIL import Image
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.models import get_pretrained_cfg
from timm.data.dataset import ImageDataset
from timm.data.readers.img_extensions import get_img_extensions
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from ..utils.distributed import world_info
from ..utils.errors import UserError
from .classes import ClassMapping, ClassMapSource, class_folders, match_classes
from .distributed import ShardSampler

__all__ = [
    "DATA_CONFIG_KEYS",
    "input_data_config",
    "Batch",
    "EvalData",
    "ORDERS",
    "SkippedSample",
    "SkipUnreadable",
    "check_order",
    "collate_skipping",
    "create_eval_data",
    "data_config_conflicts",
    "order_label",
    "order_record",
    "resolve_eval_data_config",
    "validate_data_dir",
]

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_FOLDER_READERS = ("", "folder")


class SkippedSample(NamedTuple):
    """An image that could not be read or transformed: its index, file name and the error."""

    index: int
    filename: str
    error: str


class Batch(NamedTuple):
    """A collated batch; ``images`` is None when every sample of the batch was unreadable."""

    images: Optional[torch.Tensor]
    targets: Optional[torch.Tensor]
    skipped: List[SkippedSample]


def _is_folder_reader(dataset: str) -> bool:
    return dataset.lower() in _FOLDER_READERS


def validate_data_dir(data_dir: Union[str, Path], dataset: str = "") -> Path:
    """Check that a folder (or tar) data source exists; other readers (``hfds/`` ...) are passed through."""
    path = Path(data_dir).expanduser()
    if not _is_folder_reader(dataset):
        return path
    if not path.exists():
        raise FileNotFoundError(f"data folder not found: {path}")
    if not path.is_dir() and not str(path).endswith(".tar"):
        raise UserError(f"data source {path} is neither a folder nor a .tar file")
    return check_no_symlink_loop(path)


def check_no_symlink_loop(root: Union[str, Path]) -> Path:
    """``root``, after checking that no symlinked folder below it leads back to one of its own parents:
    timm's folder reader follows links and would count the same images again and again."""
    root = Path(root)
    for folder, subdirs, _ in os.walk(root, followlinks=False):
        for name in subdirs:
            link = Path(folder) / name
            here = link.parent.resolve()
            if link.is_symlink() and (link.resolve() == here or link.resolve() in here.parents):
                raise UserError(f"data folder {root} holds a symbolic link loop: {link} -> {os.readlink(link)}; remove it")
    return root


class SkipUnreadable(Dataset):
    """Wrap a map-style data set: apply ``transform``, and return a ``SkippedSample`` instead of raising
    for an image that cannot be decoded (timm's ``ImageDataset`` would substitute the next image,
    which counts that image twice)."""

    def __init__(self, dataset: Dataset, transform: Optional[Callable] = None):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def filename(self, index: int) -> str:
        if hasattr(self.dataset, "filename"):
            try:
                return str(self.dataset.filename(index))
            except (IndexError, AttributeError, KeyError, TypeError):
                pass
        return f"#{index}"

    def _load(self, index: int) -> Tuple[Any, int]:
        ds = self.dataset
        if isinstance(ds, ImageDataset):
            fileobj, target, *_ = ds.reader[index]
            image = Image.open(fileobj)
            image = image.convert(ds.input_img_mode or "RGB")  # forces the decode, so bad files fail here
            target = -1 if target is None else target
            if ds.target_transform is not None:
                target = ds.target_transform(target)
            return image, target
        image, target = ds[index][:2]
        return image, target

    def __getitem__(self, index: int):
        try:
            image, target = self._load(index)
            if self.transform is not None:
                image = self.transform(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return SkippedSample(index, self.filename(index), f"{type(err).__name__}: {err}")
        return image, target


def collate_skipping(samples: Sequence[Any]) -> Batch:
    """Collate the readable samples of a batch; keep the skipped ones aside."""
    skipped = [s for s in samples if isinstance(s, SkippedSample)]
    good = [s for s in samples if not isinstance(s, SkippedSample)]
    if not good:
        return Batch(None, None, skipped)
    images, targets = default_collate(good)
    return Batch(images, torch.as_tensor(targets), skipped)


def _model_data_configs(
    models: Union[nn.Module, Mapping[str, nn.Module]], overrides: Optional[Mapping[str, Any]]
) -> Dict[str, Dict[str, Any]]:
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not models:
        raise UserError("no models given")
    args = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    configs = {}
    for name, model in models.items():
        cfg = resolve_data_config(args=dict(args), model=model)
        # tuples: a config read back from JSON holds lists, which must not count as a difference
        configs[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in ((k, cfg.get(k)) for k in DATA_CONFIG_KEYS)}
    return configs


def data_config_conflicts(
    models: Union[nn.Module, Mapping[str, nn.Module]],
    overrides: Optional[Mapping[str, Any]] = None,
) -> List[str]:
    """Where the models' resolved data configs differ from the first model's, e.g.
    ``["interpolation: resnet50='bicubic' vs xbn_resnet50='bilinear'"]`` (empty when they agree)."""
    (first, reference), *others = _model_data_configs(models, overrides).items()
    return [
        f"{k}: {first}={reference[k]!r} vs {name}={cfg[k]!r}"
        for name, cfg in others for k in DATA_CONFIG_KEYS if cfg[k] != reference[k]
    ]


def resolve_eval_data_config(
    models: Union[nn.Module, Mapping[str, nn.Module]],
    overrides: Optional[Mapping[str, Any]] = None,
    strict: bool = False,
) -> Dict[str, Any]:
    """The eval data config (input size, interpolation, mean, std, crop) for ``models``.

    Each model's pretrained config is resolved with timm and ``overrides`` (keys of timm's
    ``resolve_data_config`` args: ``img_size``, ``input_size``, ``crop_pct``, ``crop_mode``,
    ``mean``, ``std``, ``interpolation``) applied on top. Models compared side by side share
    decoded batches, so they get one config: the first model's. With ``strict`` a difference
    between the models raises ``ValueError`` instead (see ``data_config_conflicts``).
    """
    configs = _model_data_configs(models, overrides)
    if strict:
        conflicts = data_config_conflicts(models, overrides)
        if conflicts:
            raise UserError(
                "models evaluated together share decoded batches, so they need the same data config, but "
                + "; ".join(conflicts)
                + " (set it explicitly, e.g. --img-size / --crop-pct / --mean / --std / --interpolation)"
            )
    return dict(next(iter(configs.values())))


# The order in which every batch-dependent evaluation reads its data (``EvalData.ordered``): a seeded
# shuffle by default, so that batches mix the classes and every command batches the same images
# together; "folder" reads the data set in its own order (one or two classes per batch for a folder).
ORDERS = ("shuffle", "folder")


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise UserError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")


def order_record(order: str, seed: int) -> Dict[str, Any]:
    """How the data were read, as results files record it: ``{"order": ..., "order_seed": ...}``
    (the seed is ``None`` for the folder order)."""
    check_order(order)
    return {"order": order, "order_seed": seed if order == "shuffle" else None}


def order_label(order: Optional[str], seed: Optional[int]) -> str:
    """``"read shuffled (seed 0)"`` or ``"read in folder order"``, for table titles (results files
    written before the order was recorded: ``"order not recorded"``)."""
    if order is None:
        return "order not recorded"
    return f"read shuffled (seed {seed})" if order == "shuffle" else "read in folder order"


def input_data_config(model: nn.Module, input_config: Optional[str] = None, **overrides: Any) -> Dict[str, Any]:
    """The data config (``DATA_CONFIG_KEYS``) of ``model``'s pretrained config, or of timm model
    ``input_config``'s (``arch`` or ``arch.tag``, e.g. ``inception_v3``: 299 px, mean 0.5), with the
    non-None ``overrides`` (``img_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation``) on top."""
    source = model.pretrained_cfg
    if input_config is not None:
        named = get_pretrained_cfg(input_config)
        if named is None:
            raise UserError(f"no timm pretrained config named {input_config!r} (a model name like resnet50 or "
                            "resnet50.a1_in1k) to take the input size and normalization from")
        source = named.to_dict()
    args = {k: v for k, v in overrides.items() if v is not None}
    cfg = resolve_data_config(args=args, pretrained_cfg=dict(source))
    return {k: cfg[k] for k in DATA_CONFIG_KEYS}


@dataclass
class EvalData:
    """A validated evaluation data set (transform applied, unreadable images skipped) and loader settings.

    ``loader(start=..., shard=...)`` gives batches in a fixed order: under torch.distributed each
    rank reads every ``world``-th batch from ``start`` on (no padding, so counts stay exact, and
    each batch holds the same images as in a single-process run).
    """

    dataset: SkipUnreadable
    data_config: Dict[str, Any]
    batch_size: int = 64
    workers: int = 2
    source: str = ""
    info: Dict[str, Any] = field(default_factory=dict)
    order: Optional[List[int]] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def shuffled(self, seed: int = 0) -> "EvalData":
        """The same data read in a seeded random order (identical on every rank).

        Batch-dependent evaluation (prediction-time BN) needs it: a class-sorted folder read in
        order gives batches of one or two classes, whose statistics are not the target domain's.
        """
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        return dataclasses.replace(self, order=order, info={**self.info, "order_seed": seed})

    def ordered(self, order: str = "shuffle", seed: int = 0) -> "EvalData":
        """The data in evaluation order ``order`` (see ``ORDERS``): ``"shuffle"`` is ``shuffled(seed)``,
        ``"folder"`` the data set's own order (class by class for a folder)."""
        check_order(order)
        if order == "shuffle":
            return self.shuffled(seed)
        return dataclasses.replace(self, order=None, info={k: v for k, v in self.info.items() if k != "order_seed"})

    def loader(self, start: int = 0, limit: Optional[int] = None, shard: bool = True, pin_memory: bool = False) -> DataLoader:
        """Batches of the images ``[start, limit)`` (this rank's share of them when ``shard``)."""
        rank, world = world_info() if shard else (0, 1)
        length = len(self.dataset) if limit is None else min(limit, len(self.dataset))
        sampler = ShardSampler(length, rank=rank, world=world, start=start, block=self.batch_size)
        if self.order is not None:
            sampler = [self.order[i] for i in sampler]
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate_skipping,
            pin_memory=pin_memory,
            persistent_workers=False,
        )


def _folder_class_mapping(root: Path, split: str, num_classes: Optional[int],
                          class_map: ClassMapSource) -> Optional[ClassMapping]:
    """The class mapping of an ImageFolder source (its ``split`` child when present, as timm picks it)."""
    from timm.data.dataset_factory import _search_split

    folder = Path(_search_split(str(root), split))
    names = class_folders(folder) if folder.is_dir() else []
    if not names:
        return None
    return match_classes(names, num_classes, class_map, where=str(folder))


def create_eval_data(
    data_dir: Union[str, Path],
    data_config: Mapping[str, Any],
    dataset: str = "",
    split: str = "validation",
    batch_size: int = 64,
    workers: int = 2,
    class_map: ClassMapSource = None,
    input_img_mode: str = "RGB",
    num_classes: Optional[int] = None,
) -> EvalData:
    """Build the eval data set with timm's ``create_dataset`` and an eval transform from ``data_config``.

    ``data_dir`` is an ImageFolder tree (``class/image.jpg``, or a ``val``/``validation`` child of it),
    a tar file, or the root for ``dataset="hfds/..."`` / ``"torch/..."``. A missing folder raises
    ``FileNotFoundError``; a folder without images raises ``ValueError`` naming the extensions looked for.
    The class folders of an ImageFolder map to the indices of a model with ``num_classes`` outputs by
    the rules of ``timm_xbn.evaluation.classes`` (``class_map``, integer names, ...); ``info["class_warning"]``
    says when that mapping is a guess.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise UserError(f"workers must be >= 0 (0 loads in the main process), got {workers}")
    root = validate_data_dir(data_dir, dataset)
    matched = _folder_class_mapping(root, split, num_classes, class_map) \
        if _is_folder_reader(dataset) and root.is_dir() else None
    timm_class_map = matched.mapping if matched is not None else class_map or ""
    try:
        ds = create_dataset(dataset, root=str(root), split=split, class_map=timm_class_map,
                            is_training=False, input_img_mode=input_img_mode)
    except tarfile.TarError as err:
        raise UserError(f"cannot read {root} as a tar file of images: {err}") from None
    except RuntimeError as err:
        if "Found 0 images" not in str(err):
            raise
        extensions = ", ".join(get_img_extensions())
        raise UserError(f"no images found in {root} (looked in its class sub-folders for {extensions})") from None
    if isinstance(ds, torch.utils.data.IterableDataset):
        raise UserError(
            f"dataset {dataset!r} is iterable (streaming); evaluation needs a map-style data set "
            "(ImageFolder, tar, hfds/, torch/) for exact sharding and resume"
        )
    if len(ds) == 0:
        raise UserError(f"data set {dataset or 'folder'} at {root} (split {split!r}) holds no images")
    transform = create_transform(**{k: v for k, v in data_config.items() if v is not None}, is_training=False)
    num_found = len(getattr(getattr(ds, "reader", None), "class_to_idx", {}) or {}) or None
    return EvalData(
        SkipUnreadable(ds, transform),
        dict(data_config),
        batch_size=batch_size,
        workers=min(workers, os.cpu_count() or 1),
        source=f"{dataset + ':' if dataset else ''}{root}",
        info={"num_images": len(ds), "num_classes": num_found, "split": split,
              **({"class_map": matched.rule, "class_warning": matched.warning} if matched is not None else {})},
    )
