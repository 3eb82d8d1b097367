"""The interface of a test-time adaptation method: a module that adapts as it predicts.

An ``Adapter`` owns a deep copy of the user's model (which is never changed). Calling it on a test
batch returns that batch's logits, after whatever adaptation the method does on it. ``reset()``
returns it to its state at creation (episodic protocol). It counts the samples that went through
forward and backward passes, as EATA reports them.
"""
import copy
import functools
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..utils.errors import UserError
from ..utils.norms import bn_modules
from .norms import ParameterSelection, norm_affine_parameters, prepare_norm_adaptation

__all__ = ["AffineAdapter", "Adapter", "PassCounts", "make_optimizer"]


class PassCounts:
    """Samples through forward and backward passes (a batch of 64 forwarded twice counts 128)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    def as_dict(self) -> Dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}


class Adapter(nn.Module):
    """Base class: ``forward(x)`` -> logits of ``x`` (adapting on it first where the method does).

    Subclasses set ``name`` (the method's name in ``METHODS``), ``stateful`` when updates carry over
    from batch to batch (their results then depend on the batch order), ``needs_data`` when
    ``prepare(batches)`` must see the whole test stream before predicting it, and ``batch_statistics``
    when their BNs take statistics from every batch while in eval mode with running statistics.

    A BN whose statistics come from the batch it is given needs more than one value per channel
    (N x H x W > 1): the variance of one value is 0. Given one (batch size 1 where a BN sees 1 x 1 maps,
    or a BatchNorm1d), the copy stops with a one-line ``ValueError`` naming the layer and the method.
    """

    name: str = ""
    stateful: bool = False
    needs_data: bool = False
    batch_statistics: bool = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for name, bn in bn_modules(self.model):
            bn.register_forward_pre_hook(functools.partial(self._check_values_per_channel, name))
        self.passes = PassCounts()
        self._initial: Optional[Dict[str, Any]] = None

    def snapshot(self) -> None:
        """Remember the current state as the one ``reset()`` returns to (stateful subclasses call it
        at the end of their ``__init__``; for the others ``reset()`` has nothing to undo)."""
        self._initial = copy.deepcopy(self.state())

    def state(self) -> Dict[str, Any]:
        """Everything that adaptation changes (tensors and numbers only, so ``weights_only`` loads it)."""
        return {"model": self.model.state_dict()}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def reset(self) -> None:
        """Back to the state at creation (the pass counts keep running)."""
        if self._initial is not None:
            self.load_state(copy.deepcopy(self._initial))

    def prepare(self, batches: Iterable[torch.Tensor]) -> None:
        """See the test inputs before predicting them (only methods with ``needs_data``)."""

    def _check_values_per_channel(self, layer: str, bn: nn.Module, args: tuple) -> None:
        """Forward pre-hook of every BN: a ``ValueError`` naming it and the method when its statistics are
        about to come from this input (train mode, no running statistics, or ``batch_statistics``) and
        the input holds one value per channel (where torch would raise without naming the layer, or, in
        eval mode, the statistics would silently get a variance of 0)."""
        x = args[0]
        if (self.batch_statistics or bn.training or bn.running_mean is None) and x.numel() <= x.shape[1]:
            raise UserError(f"{self.name}: {layer} ({type(bn).__name__}) takes its statistics from the batch, "
                            f"and a batch of {x.shape[0]} gives it 1 value per channel (input {tuple(x.shape)}); "
                            "use a batch size of 2 or more, or a method that keeps the source statistics "
                            "(source, prior:N with N > 0)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` from the (adapted) copy; adapting methods override this."""
        self.passes.forward += x.shape[0]
        with torch.no_grad():
            return self.model(x)


def make_optimizer(params: List[nn.Parameter], optimizer: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    """TENT's optimizers: SGD with momentum (its ImageNet-C setting) or Adam (betas 0.9, 0.999; its CIFAR setting)."""
    if not lr > 0:
        raise UserError(f"lr must be > 0, got {lr}")
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    raise UserError(f"optimizer must be sgd or adam, got {optimizer!r}")


class AffineAdapter(Adapter):
    """Base of the methods that train the norm layers' affine parameters (TENT, EATA, SAR): the copy
    set up by ``prepare_norm_adaptation``, an optimizer over ``params``, and a state made of the
    model, the optimizer and the attributes named in ``extra_state``. Subclasses call ``snapshot()``
    at the end of their ``__init__``."""

    stateful = True
    extra_state: Tuple[str, ...] = ()

    def __init__(self, model: nn.Module, lr: float, optimizer: str = "sgd", momentum: float = 0.9,
                 select: ParameterSelection = norm_affine_parameters):
        super().__init__(model)
        self.params = prepare_norm_adaptation(self.model, select)
        self.optimizer = make_optimizer(self.params, optimizer, lr, momentum)

    def state(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                **{name: getattr(self, name) for name in self.extra_state}}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name in self.extra_state:
            setattr(self, name, state[name])
