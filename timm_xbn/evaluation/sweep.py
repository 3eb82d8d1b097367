"""Shared-pass sweeps: every model and every (delta, seed) setting is evaluated on each decoded batch.

A Delta x seed robustness sweep naively costs one data pass per setting. Here each batch is
decoded and transformed once (``SharedPass``, which runs any set of predictors: models, test-time
adapters, ``Perturbed`` models); for each disturbed setting Eq. 5's statistics (factors from
``timm_xbn.stats.perturbation_factors``) are precomputed once and copied into the target buffers of
the shared model for that setting's forward only. ``naive_sweep`` is the straightforward reference (one pass per setting,
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
from .metrics import SCORE_SIZE, score_batch

__all__ = ["Perturbed", "Setting", "SharedPass", "eval_mode", "model_device", "naive_sweep", "robustness_settings",
           "setting_predictors"]

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


class Perturbed(nn.Module):
    """``model`` with Eq. 5's noise of magnitude ``delta`` and ``seed`` in the statistics of the BNs
    ``targets``, for the duration of each forward only: the model is shared, not copied (a sweep over
    many (delta, seed) settings keeps one copy of the weights), and its buffers are restored bit-exactly
    after every forward, also on an exception."""

    def __init__(self, model: nn.Module, targets: Sequence[str], delta: float, seed: int):
        super().__init__()
        if not targets:
            raise ValueError("a disturbed setting needs perturbation targets (the BNs to disturb)")
        self.model = model
        with torch.no_grad():
            self.values = _disturbed_values(model, targets, delta, seed)
            self.originals = [(buf, value) for buf, value in
                              ((buf, buf.detach().clone()) for buf, _ in self.values)]

    @staticmethod
    def _copy(values: BufferValues) -> None:
        with torch.no_grad():
            for buf, value in values:
                buf.copy_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._copy(self.values)
        try:
            return self.model(x)
        finally:
            self._copy(self.originals)


def setting_predictors(models: Mapping[str, nn.Module], settings: Sequence[Setting],
                       targets: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, nn.Module]:
    """``Setting.key`` -> the module that predicts it: the model itself (clean) or ``Perturbed``."""
    unknown = sorted({s.model for s in settings} - set(models))
    if unknown:
        raise ValueError(f"settings refer to unknown models {unknown}; models: {list(models)}")
    predictors: Dict[str, nn.Module] = {}
    for s in settings:
        if s.key in predictors:
            raise ValueError("settings contain duplicates")
        model = models[s.model]
        if s.clean:
            predictors[s.key] = model
            continue
        names = list((targets or {}).get(s.model, ()))
        if not names:
            raise ValueError(f"disturbed settings for {s.model!r} need perturbation targets")
        predictors[s.key] = Perturbed(model, names, s.delta, s.seed)
    return predictors


class SharedPass:
    """Accumulate top-k counts of many predictors over batches that are decoded once.

    Args:
        predictors: key -> a module mapping an input batch to logits (a model, a ``Perturbed`` model,
            a test-time ``Adapter``), each on its device; all accept the same input batch.
        prep: optional function applied to each uint8 / float batch first (corruption, normalisation).
        scorer: ``(logits, targets) -> scores`` of one batch (default ``score_batch``: top-k counts and the
            calibration sums; a shift set's subset or multi-label scorer, ``timm_xbn.evaluation.shift``).

    ``update(images, targets)`` runs every predictor on one batch and adds its scores; ``counts`` maps
    each key to its summed scores (``[correct@1, correct@5, samples, ...]``, ``metrics.SCORE_LAYOUT``).
    Put the models in eval mode (``eval_mode``) first.
    ``SharedPass.of_settings(models, settings, targets)`` builds one over robustness ``Setting``s.
    """

    def __init__(self, predictors: Mapping[str, nn.Module], prep: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = score_batch):
        self.predictors = dict(predictors)
        self.keys = list(self.predictors)
        self.prep, self.scorer = prep, scorer
        self.devices = {key: model_device(p) for key, p in self.predictors.items()}
        self.counts: Dict[str, torch.Tensor] = {
            key: torch.zeros(SCORE_SIZE, dtype=torch.int64, device=self.devices[key]) for key in self.keys}

    @classmethod
    def of_settings(cls, models: Mapping[str, nn.Module], settings: Sequence[Setting],
                    targets: Optional[Mapping[str, Sequence[str]]] = None) -> "SharedPass":
        """Every (clean or disturbed) robustness setting of ``models`` in one pass."""
        return cls(setting_predictors(models, settings, targets))

    @torch.no_grad()
    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Run every predictor on one batch and add its counts."""
        if self.prep is not None:
            images = self.prep(images)
        on_device: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}
        for key, predictor in self.predictors.items():
            device = self.devices[key]
            if device not in on_device:  # one host-to-device copy per device, shared by its predictors
                on_device[device] = (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            x, y = on_device[device]
            self.counts[key] += self.scorer(predictor(x), y)

    def counts_tensor(self) -> torch.Tensor:
        """All scores as a (predictors, ``SCORE_SIZE``) int64 CPU tensor, in ``keys`` order."""
        return torch.stack([self.counts[key].cpu() for key in self.keys])


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
            total = torch.zeros(SCORE_SIZE, dtype=torch.int64)
            ctx = nullcontext() if setting.clean else perturb_bn_stats(model, setting.delta, setting.seed, targets[setting.model])
            with ctx:
                for images, labels, *_ in make_batches():
                    if images is None:
                        continue
                    total += score_batch(model(images.to(device)), labels.to(device)).cpu()
            counts[setting.key] = total
    return counts
