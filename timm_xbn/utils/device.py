"""Where a model lives, and running models in eval mode without losing their train/eval flags."""
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn

__all__ = ["eval_mode", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(models: Iterable[nn.Module]) -> Iterator[None]:
    """Put ``models`` in eval mode and restore every module's train/eval flag on exit.

    Entering calls ``model.eval()`` (not just the flags) so that modules overriding ``train()``
    run their hooks, e.g. timm's LeViT / EfficientFormer drop attention-bias caches built from
    older weights.
    """
    models = list(models)
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
