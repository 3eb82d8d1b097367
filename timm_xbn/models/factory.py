"""Create timm models by name with clear errors and optional local checkpoints."""
import difflib
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch.nn as nn

from ..utils.errors import UserError
from .checkpoints import load_weights
from .pretrained import check_pretrained

__all__ = ["check_model_name", "create_model", "create_base_model"]


LOCAL_DIR = "local-dir:"


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` with close matches when ``name`` is not a timm model, an ``hf-hub:`` id
    or a ``local-dir:FOLDER`` (a folder with config.json + weights, as ``xbn-convert`` writes)."""
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):])
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{name}: no config.json in {folder} (expected an xbn-convert / xbn-hub folder)")
        return
    if name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see timm.list_models()"
    raise UserError(f"unknown model {name!r}{hint}")


def create_model(name: str, pretrained: bool = False, checkpoint: Optional[Union[str, Path]] = None,
                 **kwargs: Any) -> nn.Module:
    """``timm.create_model`` (``import timm_xbn`` has registered the xbn_* models) plus a checked
    name and an optional local ``checkpoint`` (safetensors or weights-only torch file).
    A ``local-dir:FOLDER`` model loads the folder's own weights unless a checkpoint is given."""
    check_model_name(name)
    if pretrained and not name.startswith(LOCAL_DIR):
        check_pretrained(kwargs.get("base_model", name) if name == "xbn_converted" else name)
    pretrained = pretrained or (name.startswith(LOCAL_DIR) and checkpoint is None)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:  # a kwarg the model's constructor does not take
        raise UserError(f"cannot create {name} with model kwargs {kwargs}: {err}") from None
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def create_base_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for a BN model about to be converted: the last BN of each residual block
    is not zero-initialised (``zero_init_last=False`` where the model takes it, e.g. ResNets, RegNets),
    so a from-scratch ``xbn_converted`` starts like the registered ``xbn_*`` models and the authors'
    code. Models without that option (EfficientNets, ...) are built as they are."""
    if "zero_init_last" in kwargs:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, zero_init_last=False, **kwargs)
    except TypeError as err:
        if "zero_init_last" not in str(err):
            raise
        return timm.create_model(name, **kwargs)
