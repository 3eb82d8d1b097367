"""Per-sample norms that would normalize a single value per sample at a given input size.

A GroupNorm or an InstanceNorm without running statistics normalizes each sample's groups on their own.
When a group holds one value per sample (1x1 maps with InstanceNorm, or GroupNorm with one channel per
group), the normalized value is 0 and the norm outputs its bias alone; torch refuses such an input for
InstanceNorm, and for GroupNorm on a batch of one image ("Expected more than 1 ... when training", even
in eval mode, naming no layer). The surgery, the trainer, the evaluation and the calibration measure the
maps with one dry forward pass and refuse such a norm by name before any work starts.
"""
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.instancenorm import _InstanceNorm

from ..utils.device import eval_mode, model_device
from ..utils.errors import UserError

__all__ = ["OneValueNorm", "values_per_group", "input_map_sizes", "find_one_value_norms", "check_one_value_norms"]


def values_per_group(norm: nn.Module, map_size: Sequence[int]) -> Optional[int]:
    """How many values of one sample ``norm`` normalizes together on maps of ``map_size`` (H, W);
    ``None`` for a norm that does not use each sample's own statistics (BN, IN with running statistics)."""
    pixels = torch.Size(map_size).numel()
    if isinstance(norm, nn.GroupNorm):
        return norm.num_channels // norm.num_groups * pixels
    if isinstance(norm, _InstanceNorm) and not norm.track_running_stats:
        return pixels
    return None


class OneValueNorm(NamedTuple):
    """A per-sample norm whose groups hold one value per sample at some input size."""

    name: str
    map_size: Tuple[int, ...]
    norm: nn.Module

    @property
    def more_values(self) -> str:
        """What gives its groups several values at the same maps."""
        if isinstance(self.norm, nn.GroupNorm):
            return "more channels per group (fewer groups, or channels_per_group >= 2)"
        return "GroupNorm with several channels per group (bfn gn)"

    def describe(self, input_size: Sequence[int]) -> str:
        """``layer4.0.bn3 gets 1x1 maps at input size 32x32, where InstanceNorm normalizes ... a constant``."""
        kind = "GroupNorm with one channel per group" if isinstance(self.norm, nn.GroupNorm) else "InstanceNorm"
        return (f"{self.name} gets {'x'.join(map(str, self.map_size))} maps at input size "
                f"{'x'.join(map(str, input_size[1:]))}, where {kind} normalizes a single value per sample "
                "and outputs a constant")


def input_map_sizes(model: nn.Module, names: Sequence[str], input_size: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """Spatial size of the input of each module in ``names`` for one image of ``input_size`` (C, H, W):
    a dry forward pass in eval mode without gradients; every module's train/eval flag is restored.
    Modules the forward pass does not reach (an unused head) are left out."""
    sizes: Dict[str, Tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
            sizes.setdefault(name, tuple(args[0].shape[2:]))
        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(recorder(name)) for name in names]
    reference = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=model_device(model), dtype=None if reference is None else reference.dtype)
    try:
        with torch.no_grad(), eval_mode([model]):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


@contextmanager
def _skipped(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run ``modules`` as the identity (a norm keeps its input's shape, so the maps after it are unchanged)."""
    own = [module.__dict__.get("forward") for module in modules]  # an instance's own forward (rare) comes back
    for module in modules:
        module.forward = _identity
    try:
        yield
    finally:
        for module, forward in zip(modules, own):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def find_one_value_norms(model: nn.Module, input_size: Sequence[int],
                         norms: Optional[Iterable[Tuple[str, nn.Module]]] = None) -> List[OneValueNorm]:
    """The per-sample norms that normalize one value per sample for images of ``input_size`` (C, H, W), in
    forward-registration order. ``norms``: ``(name, norm)`` pairs judged at the input of ``model``'s module
    of that name (the surgery's planned BFNs); by default ``model``'s own per-sample norms. No forward pass
    when there is nothing to judge."""
    if norms is None:
        norms = [(name, m) for name, m in model.named_modules() if values_per_group(m, ()) is not None]
    norms = list(norms)
    if not norms:
        return []
    names = [name for name, _ in norms]
    with _skipped([model.get_submodule(name) for name in names]):  # a norm that cannot run must not stop the pass
        sizes = input_map_sizes(model, names, input_size)
    return [OneValueNorm(name, sizes[name], norm) for name, norm in norms
            if name in sizes and values_per_group(norm, sizes[name]) == 1]


def check_one_value_norms(model: nn.Module, input_size: Sequence[int], larger: str, label: str = "") -> None:
    """``UserError`` naming the first per-sample norm of ``model`` (e.g. a converted model's BFNs) that
    normalizes one value per sample for images of ``input_size`` (C, H, W), before a forward pass on real
    data fails on it. ``larger`` says how to give the model larger images at the caller's entry point;
    ``label`` prefixes the message (the model's name among several)."""
    found = find_one_value_norms(model, input_size)
    if found:
        raise UserError(f"{label}{found[0].describe(input_size)}: {larger}, or convert the BN model again at "
                        f"another position or with {found[0].more_values}")
