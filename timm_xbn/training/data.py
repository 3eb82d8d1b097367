"""Datasets, loaders and Mixup for training, from timm's data pipeline.

The training loader is timm's ``create_loader`` (transforms, augmentations, collate, worker
seeding, prefetcher) with one change: its index sampler is a ``ResumableSampler``, whose order
depends only on (seed, epoch) and which can start part-way through an epoch. Together with a
per-epoch DataLoader generator this makes a resumed run draw exactly the batches, and (with
``workers=0``) exactly the augmentations, of an uninterrupted one.
"""
import argparse
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader
from torch.utils.data import DistributedSampler

from ..utils.errors import UserError

__all__ = [
    "ResumableSampler", "check_class_count", "create_datasets", "mixup_active", "create_mixup", "create_train_loader", "create_eval_loader", "position_loader",
]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by seed + epoch, sharded over ranks) that can skip the
    first ``start_index`` samples of this rank's share for the current epoch (mid-epoch resume)."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index:])


def _folder_splits(args: argparse.Namespace) -> Tuple[Path, Optional[Path]]:
    """The train and validation folders timm picks in ``data_dir``; ``ValueError`` when there is no
    validation folder (timm would then validate on ``data_dir`` itself: the training images)."""
    from timm.data.dataset_factory import _search_split

    from ..evaluation.data import check_no_symlink_loop

    root = check_no_symlink_loop(args.data_dir)
    train_root = Path(_search_split(str(root), args.train_split))
    eval_root = Path(_search_split(str(root), args.val_split)) if args.val_split else None
    if eval_root is not None and (eval_root == root or eval_root.resolve() == train_root.resolve()):
        raise UserError(f"no validation split in {root} (looked for {args.val_split}/ and its synonyms such as val/): "
                        "add one, or pass --val-split '' to train without validation")
    return train_root, eval_root


def _eval_class_map(train: Any, eval_root: Path, warn: Callable[[str], None]) -> Dict[str, int]:
    """The training classes (name -> index) for the validation folder, so that a validation split with
    fewer classes is still scored by class name; ``ValueError`` for classes training never saw."""
    from ..evaluation.classes import class_folders

    mapping = dict(train.reader.class_to_idx)
    names = set(class_folders(eval_root))
    unknown = sorted(names - set(mapping))
    if unknown:
        raise UserError(f"validation folder {eval_root} has classes the training split lacks: {', '.join(unknown[:5])}")
    if names != set(mapping):
        missing = sorted(set(mapping) - names)
        warn(f"validation folder {eval_root} has {len(names)} of the {len(mapping)} training classes (missing "
             f"{', '.join(missing[:5])}); its images are scored by class name")
    return mapping


def create_datasets(args: argparse.Namespace, warn: Callable[[str], None] = print) -> Tuple[Any, Optional[Any]]:
    """``(train, eval)`` datasets with ``timm.data.create_dataset``; eval is None when ``val_split`` is ''.

    For an ImageFolder, the validation folder must exist and its classes are indexed by the training
    split's class names (``warn`` says when it has fewer).
    """
    folder = (not args.dataset or args.dataset.split("/")[0] in ("folder", "tar"))
    if folder:
        if not args.data_dir or not Path(args.data_dir).exists():
            raise FileNotFoundError(f"data_dir {args.data_dir!r} not found: expected an ImageFolder root with train/ and validation/")
    splits = _folder_splits(args) if folder and Path(args.data_dir).is_dir() else None
    common = dict(
        root=args.data_dir, class_map=args.class_map, download=args.dataset_download,
        batch_size=args.batch_size, seed=args.seed, input_img_mode=args.input_img_mode or "RGB",
    )
    if args.input_key:
        common["input_key"] = args.input_key
    if args.target_key:
        common["target_key"] = args.target_key
    train = create_dataset(args.dataset, split=args.train_split, is_training=True,
                           num_samples=args.train_num_samples, **common)
    evaluation = None
    if args.val_split:
        if splits is not None and not args.class_map:
            common["class_map"] = _eval_class_map(train, splits[1], warn)
        evaluation = create_dataset(args.dataset, split=args.val_split, is_training=False,
                                    num_samples=args.val_num_samples, **common)
    return train, evaluation


def check_class_count(dataset: Any, num_classes: int) -> None:
    """``UserError`` when the training split's class folders outnumber the model's outputs (the labels of the
    extra classes would index past the classifier)."""
    reader = getattr(dataset, "reader", None)
    found = len(getattr(reader, "class_to_idx", None) or {})
    if found > num_classes:
        raise UserError(f"the training split has {found} class folders but the model has {num_classes} outputs: "
                        f"pass --num-classes {found} (or a --class-map of at most {num_classes} classes)")


def mixup_active(args: argparse.Namespace) -> bool:
    """Whether the options turn Mixup / CutMix on (then targets are soft), as in train.py."""
    return args.mixup > 0 or args.cutmix > 0.0 or args.cutmix_minmax is not None


def create_mixup(args: argparse.Namespace, num_classes: int, collate: bool) -> Optional[Any]:
    """timm's Mixup / CutMix (``FastCollateMixup`` when ``collate``, for the prefetcher), or None."""
    if not mixup_active(args):
        return None
    kwargs = dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
        label_smoothing=args.smoothing, num_classes=num_classes,
    )
    return FastCollateMixup(**kwargs) if collate else Mixup(**kwargs)


def create_train_loader(dataset, args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device,
                        sampler: ResumableSampler, prefetch: bool, collate_fn=None):
    """timm's training loader for ``dataset`` with ``sampler`` as its index sampler."""
    loader = create_loader(
        dataset,
        input_size=data_config["input_size"],
        batch_size=args.batch_size,
        is_training=True,
        no_aug=args.no_aug,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        re_split=args.resplit,
        train_crop_mode=args.train_crop_mode,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob or 0.0,
        gaussian_blur_prob=args.gaussian_blur_prob or 0.0,
        auto_augment=args.aa,
        interpolation=args.train_interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        distributed=False,  # sharding is done by ``sampler``
        collate_fn=collate_fn,
        pin_memory=args.pin_mem and device.type == "cuda",  # pinning needs an accelerator
        device=device,
        use_prefetcher=prefetch,
        worker_seeding=args.worker_seeding,
    )
    torch_loader = _torch_loader(loader)
    # create_loader has no sampler argument: swap the index sampler of its BatchSampler (a plain
    # attribute) and give the loader its own generator, so neither draws from the global RNG.
    torch_loader.batch_sampler.sampler = sampler
    torch_loader.generator = torch.Generator()
    return loader


def create_eval_loader(dataset, args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device,
                       distributed: bool, prefetch: bool):
    """timm's evaluation loader (ordered sharding over ranks; padding excluded from the metrics)."""
    return create_loader(
        dataset,
        input_size=data_config["input_size"],
        batch_size=args.validation_batch_size or args.batch_size,
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        distributed=distributed,
        crop_pct=data_config["crop_pct"],
        pin_memory=args.pin_mem and device.type == "cuda",  # pinning needs an accelerator
        device=device,
        use_prefetcher=prefetch,
    )


def position_loader(loader, sampler: ResumableSampler, epoch: int, start_batch: int, seed: int, rank: int) -> None:
    """Position ``loader`` at batch ``start_batch`` of ``epoch`` (sampler order and worker seeds)."""
    torch_loader = _torch_loader(loader)
    sampler.set_epoch(epoch, start_batch * torch_loader.batch_size)
    torch_loader.generator.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


def _torch_loader(loader) -> torch.utils.data.DataLoader:
    """The DataLoader itself, behind timm's PrefetchLoader when there is one."""
    return getattr(loader, "loader", loader)
