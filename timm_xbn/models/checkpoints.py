"""Checkpoint files: load them safely, check them against a model, import the authors' layout,
and export converted models in timm's Hub folder format."""
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict, save_for_hf

from ..layers import is_batch_free
from ..utils.errors import UserError
from ..utils.files import atomic_write
from .names import AUTHORS_LAYOUT, AUTHORS_TAG

__all__ = ["state_dict_mismatch", "check_finite", "load_problem", "load_weights", "import_authors_checkpoint", "export_model", "load_exported"]


def state_dict_mismatch(model: nn.Module, state_dict: Dict[str, torch.Tensor], limit: int = 8) -> List[str]:
    """Human-readable differences between ``model``'s state dict and ``state_dict`` (empty when they match)."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
    return problems


def load_problem(path: Union[str, Path], err: Exception,
                 expected: str = "a .safetensors file or a weights-only torch checkpoint") -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` (or safetensors) refused, in a few words:
    torch's own message tells to load it unsafely, which is never an option here."""
    if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
        found = re.search(r"GLOBAL (\S+)", str(err))
        return f"it holds pickled Python objects, which are never loaded ({found.group(1) if found else 'weights_only'})"
    with Path(path).open("rb") as f:
        head = f.read(12)
    return f"not {expected}, or truncated (it starts with {head!r})"


def check_finite(state_dict: Dict[str, torch.Tensor], path: Union[str, Path]) -> None:
    """``ValueError`` naming the first tensor of ``state_dict`` (read from ``path``) holding NaN or infinity:
    such weights give meaningless numbers (e.g. chance accuracy), never a result worth reporting."""
    nonfinite = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        more = f" (+{len(nonfinite) - 1} more)" if len(nonfinite) > 1 else ""
        raise UserError(f"checkpoint {path} holds NaN or infinite values in {nonfinite[0]}{more}: "
                        "its results would mean nothing (a diverged training?)")


def _bn_where_bfn(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """A hint when the checkpoint holds BN statistics where ``model`` has batch-free norms: a checkpoint
    of an ``xbn_*`` model saved while its stem was BatchNorm (now the ``_bnstem`` names)."""
    stats = {k.rsplit(".", 1)[0] for k in state_dict if k.endswith(".running_mean")}
    clash = [name for name, m in model.named_modules() if is_batch_free(m) and name in stats]
    if not clash:
        return []
    stem = "bn1" in clash
    return [f"the checkpoint has BatchNorm statistics for {', '.join(clash[:4])}{' ...' if len(clash) > 4 else ''}, where the "
            "model has batch-free norms" + ("; a checkpoint of xbn_<base> from before the authors' batch-free stem became "
                                            "the default loads into xbn_<base>_bnstem (stem=False)" if stem else "")]


def load_weights(model: nn.Module, checkpoint: Union[str, Path]) -> nn.Module:
    """Load a checkpoint file into ``model`` strictly, in place.

    Accepts ``.safetensors`` or weights-only torch files (plain state dict, or timm / torchvision
    training checkpoints with ``state_dict`` / ``model`` / EMA entries; ``module.`` prefixes are
    stripped). Raises ``FileNotFoundError`` / ``ValueError`` naming what does not match.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state_dict = load_state_dict(str(path), weights_only=True)
    except Exception as err:  # corrupt file, or a pickle with non-tensor objects
        raise UserError(f"cannot read checkpoint {path}: {load_problem(path, err)}") from None
    check_finite(state_dict, path)
    problems = state_dict_mismatch(model, state_dict) + _bn_where_bfn(model, state_dict)
    if problems:
        raise UserError(f"checkpoint {path} does not match {type(model).__name__}:\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict)
    return model


def import_authors_checkpoint(checkpoint: Union[str, Path], arch: str = "resnet50", bfn: str = "gn",
                              **model_kwargs: Any) -> nn.Module:
    """Build the registered XBN model of the authors' released layout and load their weights.

    The authors' checkpoints are torchvision-style state dicts of ResNets / ResNeXts with a BFN in
    the stem and in ``bn2`` of every bottleneck (XBNBlock-P2, ``models/resnet_XBNBlock_P2.py``), e.g.
    ``arch="resnext50_32x4d"``: the registered ``xbn_<arch>`` under its ``authors_in1k`` tag (the tag
    its exported config records), with ``bfn="in"`` for an InstanceNorm run (still the authors' weights:
    the same tag, and ``bfn`` among the model args).
    """
    if arch not in AUTHORS_LAYOUT:
        raise UserError(f"no registered model of the authors' layout for {arch!r}; known: {sorted(AUTHORS_LAYOUT)}")
    kwargs = dict(model_kwargs) if bfn == "gn" else dict(model_kwargs, bfn=bfn)
    return load_weights(timm.create_model(f"{AUTHORS_LAYOUT[arch]}.{AUTHORS_TAG}", **kwargs), checkpoint)


def export_model(model: nn.Module, out_dir: Union[str, Path], data_config: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model.safetensors`` and timm's ``config.json`` (architecture + model_args) to ``out_dir``;
    ``data_config`` (input_size, mean, std, crop_pct, ...) replaces the model's own in the config.

    The folder loads back with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` once
    uploaded, or locally with ``load_exported(out_dir)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as staging:  # files replaced only once all are written
        save_for_hf(model, staging, safe_serialization=True, data_config=data_config)
        for path in sorted(Path(staging).iterdir()):
            with atomic_write(out / path.name) as tmp:
                os.replace(path, tmp)
    return out


def load_exported(folder: Union[str, Path], **kwargs: Any) -> nn.Module:
    """Rebuild a model from a folder written by ``export_model`` (or a downloaded Hub repo) through
    timm's own pretrained-loading path: architecture + model_args + pretrained_cfg from config.json."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected a folder written by export_model / xbn-convert")
    config = json.loads(config_path.read_text())
    overlay = dict(config.get("pretrained_cfg", {}), file=str(weights_path), num_classes=config["num_classes"])
    model_args = dict(config.get("model_args", {}), **kwargs)
    return timm.create_model(config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **model_args)
