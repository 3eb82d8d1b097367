"""Create the models to evaluate: any timm (or registered ``xbn_*``) model, with weights."""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..models import check_model_name, create_model
from ..utils.errors import UserError

__all__ = [
    "ModelSpec", "build_model_specs", "create_eval_model", "create_models", "state_dict_sha1", "weights_sha1",
]


def create_eval_model(
    name: str,
    pretrained: bool = False,
    checkpoint: Optional[Union[str, Path]] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """``timm_xbn.models.create_model`` (checked name, strict ``checkpoint`` loading) in eval mode."""
    return create_model(name, pretrained=pretrained, checkpoint=checkpoint, **dict(model_kwargs or {})).eval()


@dataclass(frozen=True)
class ModelSpec:
    """How to build one evaluated model; ``label`` names it in tables, results and plots."""

    label: str
    name: str
    pretrained: bool = False
    checkpoint: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)

    def create(self) -> nn.Module:
        return create_eval_model(self.name, self.pretrained, self.checkpoint, self.model_kwargs)

    def fingerprint(self) -> Dict[str, Any]:
        """What identifies the model's weights (checked when a sweep resumes)."""
        return {"name": self.name, "pretrained": self.pretrained, "checkpoint": self.checkpoint,
                "model_kwargs": self.model_kwargs}


def build_model_specs(
    names: Sequence[str],
    checkpoints: Sequence[Optional[str]] = (),
    pretrained: bool = False,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> List[ModelSpec]:
    """One ``ModelSpec`` per model name; ``checkpoints`` pair up with ``names`` by position (fewer
    checkpoints than names only with ``pretrained``: the remaining models keep timm's pretrained
    weights, never random ones). Labels are the names,
    suffixed with the checkpoint file stem when that is needed to tell them apart."""
    if not names:
        raise UserError("give at least one model")
    if len(checkpoints) > len(names):
        raise UserError(f"{len(checkpoints)} checkpoints for {len(names)} models; pass one --checkpoint per --model, in order")
    if 0 < len(checkpoints) < len(names) and not pretrained:
        raise UserError(f"{len(checkpoints)} checkpoint(s) for {len(names)} models: the others would be scored with random "
                        "weights; pass one --checkpoint per --model, in order (or --pretrained for the rest)")
    for name in names:
        check_model_name(name)
    ckpts = list(checkpoints) + [None] * (len(names) - len(checkpoints))
    specs = []
    for name, ckpt in zip(names, ckpts):
        label = name if names.count(name) == 1 or ckpt is None else f"{name}:{Path(ckpt).stem}"
        specs.append(ModelSpec(label, name, pretrained, str(ckpt) if ckpt else None, dict(model_kwargs or {})))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"models must be distinct (name + checkpoint), got {labels}")
    return specs


def create_models(specs: Sequence[ModelSpec], device: Union[str, torch.device] = "cpu") -> Dict[str, nn.Module]:
    """``{label: model}`` for ``specs``, in eval mode on ``device``."""
    return {spec.label: spec.create().to(device) for spec in specs}


def weights_sha1(model: nn.Module) -> str:
    """SHA-1 of all parameters and buffers (names, dtypes, shapes, bytes): identifies the weights
    a result was computed with, so a resumed sweep refuses to mix results of different weights."""
    return state_dict_sha1(model.state_dict())


def state_dict_sha1(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``weights_sha1`` of a state dict."""
    digest = hashlib.sha1()
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
