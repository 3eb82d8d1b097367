"""The distribution-shift sets timm users report beside ImageNet-C, as evaluation data with their own scoring.

* ``imagenet-r`` / ``imagenet-a``: 200 of the 1,000 classes. The model's logits are restricted to those 200
  outputs (timm's ``imagenet_r_indices.txt`` / ``imagenet_a_indices.txt``), as timm's ``validate.py`` does,
  and top-k, NLL, Brier and ECE are computed over that subset.
* ``imagenet-real``: the ImageNet validation images with the ReaL multi-labels (Beyer et al. 2020, timm's
  ``imagenet_real_labels.json``, indexed by the ``ILSVRC2012_val_NNNNNNNN`` file number): a prediction is
  right when it is one of the image's labels, images without labels are left out; no calibration metrics
  (there is no single label to score a probability against).
* ``imagenet-v2`` / ``imagenet-sketch``: plain 1,000-class folders (class folders ``0``..``999`` or wnids).

``create_shift_data`` checks that a folder is the set it is said to be (its class folders, or ReaL's file
names) and returns the data with the set's scorer; ``timm_xbn.grid.evaluate_shift`` runs any method on them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ..utils.errors import UserError
from .classes import class_folders
from .data import EvalData, SkippedSample, create_eval_data
from .metrics import score_batch, scores_of_counts

__all__ = ["SHIFT_SETS", "ShiftSet", "create_shift_data", "real_scorer", "subset_scorer"]

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
REAL_FILE = re.compile(r"ILSVRC2012_val_(\d{8})\.\w+$")


@dataclass(frozen=True)
class ShiftSet:
    """A shift set: its name, the class folders it holds (``None``: 1,000 ImageNet classes, as wnids or as
    ``0``..``999``), the file of timm's ``_info`` folder naming its outputs, and whether it is ReaL."""

    name: str
    synsets_file: Optional[str] = None
    indices_file: Optional[str] = None
    real: bool = False


SHIFT_SETS: Dict[str, ShiftSet] = {s.name: s for s in (
    ShiftSet("imagenet-r", "imagenet_r_synsets.txt", "imagenet_r_indices.txt"),
    ShiftSet("imagenet-a", "imagenet_a_synsets.txt", "imagenet_a_indices.txt"),
    ShiftSet("imagenet-real", real=True),
    ShiftSet("imagenet-v2"),
    ShiftSet("imagenet-sketch"),
)}


def _info_file(name: str) -> Path:
    import timm.data

    return Path(timm.data.__file__).parent / "_info" / name


@lru_cache(maxsize=None)
def _lines(name: str) -> Tuple[str, ...]:
    return tuple(_info_file(name).read_text().split())


@lru_cache(maxsize=1)
def _real_labels() -> Tuple[Tuple[int, ...], ...]:
    return tuple(tuple(labels) for labels in json.loads(_info_file("imagenet_real_labels.json").read_text()))


def subset_scorer(indices: Sequence[int], num_outputs: int = 1000) -> Scorer:
    """Score a batch of ``num_outputs`` logits on the classes ``indices`` only: the logits of the other outputs are
    dropped and each target (an index among the ``num_outputs``) becomes its position among ``indices``."""
    index = torch.tensor(list(indices), dtype=torch.long)
    position = torch.full((num_outputs,), -1, dtype=torch.long)
    position[index] = torch.arange(len(index))

    def score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != num_outputs:
            raise UserError(f"the set scores {num_outputs} outputs, the model gives {logits.shape[1]}")
        sub = position[targets.cpu()]
        if (sub < 0).any():
            raise UserError(f"class {int(targets.cpu()[sub < 0][0])} is not one of the set's {len(index)} classes")
        return score_batch(logits[:, index.to(logits.device)], sub.to(logits.device))

    return score


def real_scorer(logits: torch.Tensor, label_sets: torch.Tensor) -> torch.Tensor:
    """ReaL's top-1 / top-5: a hit when one of the top-k predictions is among the image's labels (``label_sets``,
    padded with -1); images without labels are not counted. No calibration sums (scores beyond the counts 0)."""
    label_sets = label_sets.to(logits.device)
    labelled = (label_sets >= 0).any(dim=1)
    pred = logits[labelled].topk(min(5, logits.shape[1]), dim=1).indices
    hits = (pred.unsqueeze(2) == label_sets[labelled].unsqueeze(1)).any(dim=2)  # (n, k): prediction j is a label
    counts = torch.stack([hits[:, :1].any(dim=1).sum(), hits.any(dim=1).sum(), labelled.sum()]).to(torch.int64)
    return scores_of_counts(counts)


class RealLabelled(Dataset):
    """An ImageNet validation data set whose targets are the ReaL label sets of its images (by file number),
    padded with -1 to the longest set."""

    def __init__(self, dataset: Dataset, files: Sequence[str]):
        self.dataset = dataset
        labels = _real_labels()
        width = max(len(s) for s in labels)
        self.targets = []
        for name in files:
            match = REAL_FILE.search(Path(name).name)
            if match is None or not 1 <= int(match.group(1)) <= len(labels):
                raise UserError(f"imagenet-real scores the ImageNet validation images by their file number "
                                f"(ILSVRC2012_val_00000001.JPEG ... _00050000); {name} is not one of them")
            found = labels[int(match.group(1)) - 1]
            self.targets.append(torch.tensor(list(found) + [-1] * (width - len(found))))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, SkippedSample):
            return item
        return item[0], self.targets[index]


def _check_folders(root: Path, shift: ShiftSet) -> None:
    """``ValueError`` naming what is missing or extra when ``root`` does not hold the set's class folders."""
    found = set(class_folders(root))
    if shift.synsets_file is not None:
        expected = set(_lines(shift.synsets_file))
        what = f"the {len(expected)} class folders of {shift.name} (the wnids of timm's {shift.synsets_file})"
    elif found and all(n.isdigit() for n in found):
        expected, what = {str(i) for i in range(1000)}, "1000 class folders 0..999"
    else:
        expected = set(_lines("imagenet_synsets.txt"))
        what = "the 1000 ImageNet class folders (wnids, or 0..999)"
    if shift.real:
        extra = sorted(found - expected)
        if extra:
            raise UserError(f"{root} is not an ImageNet validation folder for {shift.name}: its class folders "
                            f"should be ImageNet wnids, found {extra[:3]}")
        return
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        raise UserError(f"{root} does not hold {what}: {len(missing)} missing (e.g. {missing[:3]}), "
                        f"{len(extra)} not of the set (e.g. {extra[:3]})")


def create_shift_data(root: Union[str, Path], name: str, data_config: Mapping[str, Any], batch_size: int = 64,
                      workers: int = 2, num_classes: int = 1000) -> Tuple[EvalData, Scorer]:
    """The shift set ``name`` at ``root`` (an ImageFolder; its ``val`` child when present) and its scorer.

    ``ValueError`` for an unknown set, a model without 1,000 outputs, or a folder that is not the set."""
    if name not in SHIFT_SETS:
        raise UserError(f"unknown shift set {name!r}; choose from {', '.join(SHIFT_SETS)}")
    if num_classes != 1000:
        raise UserError(f"{name} scores ImageNet-1k models; the model has {num_classes} outputs")
    shift = SHIFT_SETS[name]
    data = create_eval_data(root, data_config, batch_size=batch_size, workers=workers, num_classes=1000)
    folder = Path(data.source)
    from timm.data.dataset_factory import _search_split

    _check_folders(Path(_search_split(str(folder), "validation")), shift)
    scorer: Scorer = score_batch
    if shift.indices_file is not None:
        scorer = subset_scorer([int(i) for i in _lines(shift.indices_file)])
    if shift.real:
        files = [data.dataset.filename(i) for i in range(len(data.dataset))]
        data = EvalData(RealLabelled(data.dataset, files), data.data_config, data.batch_size, data.workers,
                        data.source, {**data.info, "labels": "ReaL"}, data.order)
        scorer = real_scorer
    data.info["shift_set"] = name
    return data, scorer

