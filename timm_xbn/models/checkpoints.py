"""Checkpoint files: load them safely, check them against a model, import the authors' layout,
and export converted models in timm's Hub folder format."""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict, save_for_hf

__all__ = ["state_dict_mismatch", "load_weights", "import_authors_checkpoint", "export_model", "load_exported"]


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
        raise ValueError(
            f"cannot read checkpoint {path}: not a .safetensors file or a weights-only torch checkpoint, "
            f"or damaged ({type(err).__name__}: {err})"
        ) from None
    problems = state_dict_mismatch(model, state_dict)
    if problems:
        raise ValueError(f"checkpoint {path} does not match {type(model).__name__}:\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict)
    return model


def import_authors_checkpoint(checkpoint: Union[str, Path], arch: str = "resnet50", bfn: str = "gn",
                              **model_kwargs: Any) -> nn.Module:
    """Build the registered XBN model matching the authors' released layout and load their weights.

    The authors' checkpoints are torchvision-style state dicts of ResNets / ResNeXts with a BFN in
    the stem and in ``bn2`` of every bottleneck (XBNBlock-P2), e.g. ``arch="resnext50_32x4d"``.
    Returns ``xbn_<arch>_bfnstem`` (GroupNorm) or ``xbn_<arch>`` with ``bfn="in", stem=True``.
    """
    if bfn == "gn":
        name, kwargs = f"xbn_{arch}_bfnstem", dict(model_kwargs)
    else:
        name, kwargs = f"xbn_{arch}", dict(model_kwargs, bfn=bfn, stem=True)
    if not timm.is_model(name):
        raise ValueError(f"no registered model {name!r} for the authors' {arch}; known: {timm.list_models('xbn_*_bfnstem')}")
    return load_weights(timm.create_model(name, **kwargs), checkpoint)


def export_model(model: nn.Module, out_dir: Union[str, Path], data_config: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model.safetensors`` and timm's ``config.json`` (architecture + model_args) to ``out_dir``;
    ``data_config`` (input_size, mean, std, crop_pct, ...) replaces the model's own in the config.

    The folder loads back with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` once
    uploaded, or locally with ``load_exported(out_dir)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(out), safe_serialization=True, data_config=data_config)
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
