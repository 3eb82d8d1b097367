"""Shared-pass sweeps: every model and every (delta, seed) setting is evaluated on each decoded batch.

A Delta x seed robustness sweep naively costs one data pass per setting. Here each batch is
decoded and transformed once; for each model the disturbed BN statistics of every setting
(Eq. 5, factors from ``timm_xbn.stats.perturbation_factors``) are precomputed once and copied into
the target buffers before that setting's forward, and the clean buffers are copied back after
the model's last setting. ``naive_sweep`` is the straightforward reference (one pass per setting,
``timm_xbn.stats.perturb_bn_stats``) used by the tests and the benchmark.
"""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..stats import perturb_bn_stats, perturbation_factors
from ..stats.perturb import disturbed_values
from ..utils.device import eval_mode, model_device
from .metrics import topk_correct

__all__ = ["Setting", "SharedPass", "eval_mode", "model_device", "naive_sweep", "robustness_settings"]

BufferValues = List[Tuple[torch.Tensor, torch.Tensor]]  # (buffer, value to copy into it)


@dataclass(frozen=True)
class Setting:
    """One evaluation of one model: clean (``seed is None``) or disturbed with noise ``delta`` and ``seed``."""

    model: str
    delta: float = 0.0
    seed: Optional[int] = None

    @property
    def clean(self) -> bool:
        return self.seed is None

    @property
    def key(self) -> str:
        if self.clean:
            return f"{self.model}|clean"
        return f"{self.model}|delta={float(self.delta)!r}|seed={self.seed}"


def robustness_settings(models: Sequence[str], deltas: Sequence[float], seeds: Sequence[int]) -> List[Setting]:
    """Clean + every (delta, seed) for each model, in that order."""
    return [Setting(m) for m in models] + [Setting(m, float(d), int(s)) for m in models for d in deltas for s in seeds]


def _disturbed_values(model: nn.Module, targets: Sequence[str], delta: float, seed: int) -> BufferValues:
    """The running mean/var of each target after Eq. 5, computed exactly as ``perturb_bn_stats`` does."""
    bns = [model.get_submodule(t) for t in targets]
    return disturbed_values(bns, perturbation_factors([bn.num_features for bn in bns], delta, seed))


class SharedPass:
    """Accumulate top-k counts of many settings over batches that are decoded once.

    Args:
        models: label -> model (on its device; all must accept the same input batch).
        settings: the settings to evaluate; ``Setting.model`` refers to a label of ``models``.
        targets: label -> qualified names of the BNs to disturb (needed for disturbed settings).

    ``update(images, targets)`` runs every setting on one batch; ``counts`` maps ``Setting.key``
    to ``[correct@1, correct@5, samples]``. The target buffers are restored bit-exactly after each
    model's settings, also on an exception. Put the models in eval mode (``eval_mode``) first.
    """

    def __init__(self, models: Mapping[str, nn.Module], settings: Sequence[Setting],
                 targets: Optional[Mapping[str, Sequence[str]]] = None):
        unknown = sorted({s.model for s in settings} - set(models))
        if unknown:
            raise ValueError(f"settings refer to unknown models {unknown}; models: {list(models)}")
        keys = [s.key for s in settings]
        if len(set(keys)) != len(keys):
            raise ValueError("settings contain duplicates")
        self.models = dict(models)
        self.settings = list(settings)
        self.plan: Dict[str, List[Tuple[Setting, Optional[BufferValues]]]] = {}
        self.originals: Dict[str, BufferValues] = {}
        with torch.no_grad():
            for label in self.models:
                mine = [s for s in settings if s.model == label]
                if not mine:
                    continue
                model = self.models[label]
                disturbed = [s for s in mine if not s.clean]
                names = list((targets or {}).get(label, ()))
                if disturbed and not names:
                    raise ValueError(f"disturbed settings for {label!r} need perturbation targets")
                self.plan[label] = [(s, None if s.clean else _disturbed_values(model, names, s.delta, s.seed)) for s in mine]
                if disturbed:
                    self.originals[label] = [
                        (buf, buf.detach().clone()) for t in names
                        for buf in (model.get_submodule(t).running_mean, model.get_submodule(t).running_var)
                    ]
        self.devices = {label: model_device(self.models[label]) for label in self.plan}
        self.counts: Dict[str, torch.Tensor] = {
            s.key: torch.zeros(3, dtype=torch.int64, device=self.devices[s.model]) for s in self.settings
        }

    @staticmethod
    def _copy(values: BufferValues) -> None:
        for buf, value in values:
            buf.copy_(value)

    @torch.no_grad()
    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Run every setting on one batch and add its counts."""
        on_device: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}
        for label, plan in self.plan.items():
            model, device = self.models[label], self.devices[label]
            if device not in on_device:  # one host-to-device copy per device, shared by its models
                on_device[device] = (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            x, y = on_device[device]
            originals = self.originals.get(label)
            dirty = False
            try:
                for setting, values in plan:
                    if values is not None:
                        self._copy(values)
                        dirty = True
                    elif dirty:
                        self._copy(originals)
                        dirty = False
                    self.counts[setting.key] += topk_correct(model(x), y)
            finally:
                if dirty:
                    self._copy(originals)

    def counts_tensor(self) -> torch.Tensor:
        """All counts as an (settings, 3) int64 CPU tensor, in ``settings`` order."""
        return torch.stack([self.counts[s.key].cpu() for s in self.settings])


def naive_sweep(
    models: Mapping[str, nn.Module],
    settings: Sequence[Setting],
    targets: Mapping[str, Sequence[str]],
    make_batches: Callable[[], Iterable],
) -> Dict[str, torch.Tensor]:
    """Reference implementation: one full pass over ``make_batches()`` per setting, disturbing the
    statistics with ``perturb_bn_stats``. Batches are ``(images, labels, ...)``. Returns counts
    like ``SharedPass.counts`` (on the CPU)."""
    counts: Dict[str, torch.Tensor] = {}
    with eval_mode(models.values()), torch.no_grad():
        for setting in settings:
            model = models[setting.model]
            device = model_device(model)
            total = torch.zeros(3, dtype=torch.int64)
            ctx = nullcontext() if setting.clean else perturb_bn_stats(model, setting.delta, setting.seed, targets[setting.model])
            with ctx:
                for images, labels, *_ in make_batches():
                    if images is None:
                        continue
                    total += topk_correct(model(images.to(device)), labels.to(device)).cpu()
            counts[setting.key] = total
    return counts
