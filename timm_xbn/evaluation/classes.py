"""Class folder names -> the model's class indices, so that a folder holding only some classes scores right.

The rules, first match wins: a ``class_map`` (a timm class-map ``.txt`` file, one folder name per
line in model index order, or a dict); folder names that are all integers (``"0"``, ``"7"``,
``"012"``) are those indices; ImageNet wnids with a 1000-class model take the ImageNet-1k synset
order; otherwise the folders are numbered in (natural) sorted order, as timm's ImageFolder does.
"""
from pathlib import Path
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Union

from ..utils.errors import UserError

__all__ = ["ClassMapSource", "ClassMapping", "class_folders", "match_classes"]

ClassMapSource = Union[str, Path, Mapping[str, int], None]


class ClassMapping(NamedTuple):
    """Folder name -> model class index, the rule that made it, and a warning when it may be wrong."""

    mapping: Dict[str, int]
    rule: str
    warning: Optional[str] = None


def _natural_key(text: str):
    from timm.utils.misc import natural_key

    return natural_key(text)


def _imagenet_synsets() -> list:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def _load_class_map(class_map: Union[str, Path, Mapping[str, int]]) -> Dict[str, int]:
    if isinstance(class_map, Mapping):
        return dict(class_map)
    from timm.data.readers.class_map import load_class_map

    path = Path(class_map).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class map file not found: {path}")
    if path.suffix.lower() != ".txt":
        raise UserError(f"class map must be a .txt file with one class name per line, got {path.name}")
    return load_class_map(str(path))


def class_folders(root: Union[str, Path]) -> list:
    """The class folder names of an ImageFolder ``root`` (its direct sub-folders)."""
    return [p.name for p in Path(root).iterdir() if p.is_dir()]


def match_classes(class_names: Sequence[str], num_classes: Optional[int], class_map: ClassMapSource = None,
                  where: str = "the data") -> ClassMapping:
    """Map class folder names to the model's ``num_classes`` outputs (see the module docstring).

    ``ValueError`` when a folder is missing from the class map or maps beyond the model's head.
    The result carries a warning when the folders were numbered by sorted order but are fewer than
    the model's classes: then nothing tells which of the model's classes they are.
    """
    names = sorted(set(class_names), key=_natural_key)
    warning = None
    if class_map is not None:
        given = _load_class_map(class_map)
        unmapped = [n for n in names if n not in given]
        if unmapped:
            raise UserError(f"{len(unmapped)} class folders of {where} are not in the class map, e.g. {unmapped[:5]}")
        mapping, rule = {n: int(given[n]) for n in names}, "class map"
    elif names and all(n.isdigit() for n in names):
        mapping, rule = {n: int(n) for n in names}, "numeric folder names"
    elif num_classes == 1000 and set(names) <= set(synsets := _imagenet_synsets()):
        order = {w: i for i, w in enumerate(synsets)}
        mapping, rule = {n: order[n] for n in names}, "ImageNet-1k synsets"
    else:
        mapping, rule = {n: i for i, n in enumerate(names)}, "sorted folder names"
        if num_classes is not None and len(names) < num_classes:
            indices = "class 0" if len(names) == 1 else f"classes 0-{len(names) - 1}"
            warning = (f"{where} has {len(names)} class folders for a model with {num_classes} classes; they are "
                       f"taken as its {indices} in sorted order ({', '.join(names[:3])}"
                       f"{', ...' if len(names) > 3 else ''}). If they are other classes, pass --class-map "
                       "(one folder name per line, in model index order) or name the folders by class index")
    if num_classes is not None and max(mapping.values(), default=-1) >= num_classes:
        raise UserError(f"{where} has {len(names)} classes mapped up to index {max(mapping.values())} "
                        f"({rule}), but the model has only {num_classes} outputs (pass --class-map, or set num_classes)")
    return ClassMapping(mapping, rule, warning)
