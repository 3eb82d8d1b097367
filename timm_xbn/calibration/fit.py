"""Calibrate a converted network's batch-free norms so it computes what its BN original computed.

A BN and a GroupNorm / InstanceNorm with the same affine parameters compute different functions
(population statistics vs each sample's own), so ``convert`` alone changes a trained network.
``calibrate`` goes through the BFNs in forward order and sets each one's per-channel ``weight`` and
``bias`` to the least-squares fit ``y ~ a * x_hat + b`` over a few hundred unlabeled images, where

* ``x_hat`` is the BFN's normalized input (before its affine step) in the *converted* network, with
  the earlier BFNs already calibrated, and
* ``y`` is the replaced BN's affine output in the *original* network on the same images: the output
  *before* any fused activation (timm's ``BatchNormAct2d`` applies drop + act after its affine
  step, and the BFN carries the same act, so where the fit is exact the activations match too).

The fit is closed form per channel: ``a = cov(x_hat, y) / var(x_hat)``, ``b = mean(y) - a * mean(x_hat)``.
Then the BNs left in the converted network keep or re-estimate their statistics (``reestimate``):

* ``none`` keeps the trained statistics;
* ``full`` replaces them with those of their new inputs on the calibration images (AdaBN); from a
  few hundred images that is itself an estimation shift, the effect the paper is about;
* ``mix`` averages the two weighted by how many images each comes from, Schneider et al.'s prior
  ``N/(N+n) * trained + n/(N+n) * calibration`` (``timm_xbn.stats.prior``) with n the calibration
  images and N (``source_images``) the training images behind the trained statistics.

The default, ``full``, is what ``benchmarks/calibration.py``'s rule, fixed before the measurement, picked
(``docs/calibration.md``: 3 families x 6 conversions x 3 training seeds; after calibration ``full`` was
better in 2 cells and worse in none, the rest inconclusive; ``mix`` with N = the training images moves
the statistics by n/(N+n) only and was inconclusive everywhere).

A BFN without affine parameters (``convert(..., affine=False)``, or an IN built to be trained from
scratch) has nothing to calibrate: ``calibrate`` refuses it. ``convert`` keeps the BNs' weight and bias
in affine BFNs by default (2 x C parameters; the converted model's config records ``affine=True``).
"""
import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_one_value_norms, is_batch_free
from ..stats import recalibrate
from ..utils.device import eval_mode, model_device
from ..utils.errors import UserError
from ..utils.norms import bns_with_running_stats, is_bn

__all__ = [
    "REESTIMATE_CHOICES", "DEFAULT_REESTIMATE", "ChannelRegression", "LayerFit", "CalibrationResult", "calibrate",
    "reestimate_bns",
]

REESTIMATE_CHOICES = ("none", "full", "mix")
DEFAULT_REESTIMATE = "full"  # chosen from docs/calibration.md by the rule fixed before measuring


class ChannelRegression:
    """Per-channel simple linear regression of ``y`` on ``x`` (both ``(N, C, ...)``), accumulated batch by batch.

    Keeps the count, the means and the centred cross-products (``Sxx``, ``Sxy``, ``Syy``) per channel
    in float64 and merges batches with Chan et al.'s parallel update: the same memory as raw sums
    (``sum x``, ``sum y``, ``sum x^2``, ``sum xy``) without their cancellation when means are large.
    """

    def __init__(self, num_channels: int):
        self.count = 0
        zeros = lambda: torch.zeros(num_channels, dtype=torch.float64)  # noqa: E731
        self.mean_x, self.mean_y, self.sxx, self.sxy, self.syy = zeros(), zeros(), zeros(), zeros(), zeros()

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Merge one batch of paired activations; every dim except dim 1 (channels) is a sample."""
        if x.shape != y.shape or x.dim() < 2 or x.shape[1] != self.mean_x.numel():
            raise ValueError(f"expected two (N, {self.mean_x.numel()}, ...) tensors of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        x = x.detach().to("cpu", torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        y = y.detach().to("cpu", torch.float64).transpose(0, 1).reshape(y.shape[1], -1)
        n = x.shape[1]
        if n == 0:
            return
        mean_x, mean_y = x.mean(1), y.mean(1)
        dx, dy = x - mean_x[:, None], y - mean_y[:, None]
        total = self.count + n
        shift_x, shift_y = mean_x - self.mean_x, mean_y - self.mean_y
        weight = self.count * n / total
        self.sxx += (dx * dx).sum(1) + shift_x * shift_x * weight
        self.sxy += (dx * dy).sum(1) + shift_x * shift_y * weight
        self.syy += (dy * dy).sum(1) + shift_y * shift_y * weight
        self.mean_x += shift_x * (n / total)
        self.mean_y += shift_y * (n / total)
        self.count = total

    def solve(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` per channel. Where ``x`` is constant every ``a`` fits equally well; such a channel gets
        ``a = 0, b = mean(y)`` (for a normalized input, constant means 0, and this is then the minimum-norm
        solution ``numpy.linalg.lstsq`` gives)."""
        if self.count == 0:
            raise ValueError("no activations were accumulated")
        varying = self.sxx > 1e-12 * self.count
        slope = torch.where(varying, self.sxy / self.sxx.clamp_min(1e-300), torch.zeros_like(self.sxy))
        return slope, self.mean_y - slope * self.mean_x

    def r2(self) -> torch.Tensor:
        """Per-channel fraction of ``var(y)`` the fit explains (1 where ``y`` is constant)."""
        explained = self.sxy ** 2 / (self.sxx * self.syy).clamp_min(1e-300)
        return torch.where(self.syy > 0, explained.clamp(0.0, 1.0), torch.ones_like(self.syy))


@dataclass(frozen=True)
class LayerFit:
    """How well one calibrated BFN reproduces its BN: R^2 of the fit, mean and worst over the channels."""

    name: str
    channels: int
    r2_mean: float
    r2_min: float


class CalibrationResult(NamedTuple):
    model: nn.Module
    fits: List[LayerFit]
    images: int
    seconds: float

    def summary(self) -> str:
        """One line: how many BFNs, images and seconds, and the R^2 of the fits (mean and worst layer)."""
        worst = min(self.fits, key=lambda f: f.r2_mean)
        mean = sum(f.r2_mean for f in self.fits) / len(self.fits)
        return (f"calibrated {len(self.fits)} batch-free norms on {self.images} images in {self.seconds:.1f} s; "
                f"R^2 of the fits: mean {mean:.3f}, worst {worst.r2_mean:.3f} ({worst.name})")


class _StopForward(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def _forward_until(model: nn.Module, module: nn.Module, x: torch.Tensor,
                   transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``model(x)`` up to ``module`` and return ``transform(module's input)``; the rest is skipped."""
    captured: List[torch.Tensor] = []

    def hook(_module: nn.Module, args: Tuple[Any, ...]) -> None:
        captured.append(transform(args[0]))
        raise _StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UserError(f"{type(module).__name__} was never called by the model's forward pass")
    return captured[0]


def bn_affine_output(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``bn`` in eval mode computes from input ``x`` up to its affine step (no fused drop / act)."""
    use_batch = bn.running_mean is None or bn.running_var is None
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch, 0.0, bn.eps)


def _first_conv_channels(model: nn.Module) -> Optional[int]:
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _images_of(batch: Any) -> Optional[torch.Tensor]:
    """The image tensor of a batch (a Tensor, or a tuple/list whose first item is one); None for an
    all-unreadable batch of timm_xbn's eval pipeline."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    if batch is None or isinstance(batch, torch.Tensor):
        return batch
    raise UserError(f"a calibration batch must be a Tensor or (images, ...), got {type(batch).__name__}")


class _CalibrationImages:
    """The images of a loader, at most ``max_images`` of them, checked on every pass: 4-D with the
    model's input channels, and the same images as the first pass (same count and pixel sum; the order
    does not matter, since each pass pairs the two models' activations batch by batch)."""

    def __init__(self, loader: Iterable, max_images: Optional[int], in_chans: Optional[int], device: torch.device):
        if max_images is not None and max_images < 1:
            raise UserError(f"the number of calibration images must be >= 1, got {max_images}")
        self.loader, self.max_images, self.in_chans, self.device = loader, max_images, in_chans, device
        self.fingerprint: Optional[Tuple[int, float]] = None

    @property
    def count(self) -> int:
        return self.fingerprint[0] if self.fingerprint else 0

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or (self.in_chans is not None and x.shape[1] != self.in_chans):
            raise UserError(f"calibration images must be (N, {self.in_chans}, H, W) for this model, "
                            f"got a batch of shape {tuple(x.shape)}")
        return x

    def __iter__(self) -> Iterator[torch.Tensor]:
        seen, checksum = 0, 0.0
        for batch in self.loader:
            x = _images_of(batch)
            if x is None:
                continue
            if self.max_images is not None:
                x = x[: self.max_images - seen]
            x = self._checked(x)
            seen += len(x)
            checksum += float(x.double().sum())
            yield x.to(self.device)
            if self.max_images is not None and seen >= self.max_images:
                break
        self._check_pass(seen, checksum)

    def _check_pass(self, seen: int, checksum: float) -> None:
        if seen == 0:
            raise UserError("the calibration loader gave no images")
        if self.fingerprint is None:
            self.fingerprint = (seen, checksum)
        elif self.fingerprint != (seen, checksum):
            raise UserError(
                f"the calibration loader gave other images on a later pass ({seen} images vs {self.fingerprint[0]}, "
                "or other pixels): calibration reads them once per BFN, so it needs the same images on every pass "
                "(any order; no random augmentation or random subsets)"
            )


def _bfn_pairs(converted: nn.Module, original: nn.Module) -> List[Tuple[str, nn.Module, nn.Module]]:
    """``(name, BFN in converted, BN it replaced in original)`` in registration (= forward) order."""
    bfns = [(name, m) for name, m in converted.named_modules() if is_batch_free(m)]
    if not bfns:
        raise UserError(f"{type(converted).__name__} has no batch-free norms to calibrate: convert it first "
                        "(timm_xbn.convert)")
    pairs = []
    for name, bfn in bfns:
        try:
            bn = original.get_submodule(name)
        except AttributeError:
            bn = None
        channels = bfn.num_channels if hasattr(bfn, "num_channels") else bfn.num_features
        if bn is None or not is_bn(bn) or bn.num_features != channels:
            found = "nothing" if bn is None else f"{type(bn).__name__}"
            raise UserError(f"the original model does not match the converted one at {name}: expected the BatchNorm "
                            f"with {channels} channels that the surgery replaced, found {found}")
        if bfn.weight is None:
            raise UserError(f"{name} ({type(bfn).__name__}) has no affine parameters to calibrate: convert with "
                            "affine=True (convert's default for a trained BN network)")
        pairs.append((name, bfn, bn))
    return pairs


@contextmanager
def _layer_progress(show: bool, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over the BFNs; yields ``advance(next_layer_name)``."""
    if not show:
        yield lambda _name: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("calibrating BFNs", total=total)
        yield lambda name: bar.update(task, advance=1, description=f"calibrating {name}")


@torch.no_grad()
def _fit_layer(converted: nn.Module, original: nn.Module, bfn: nn.Module, bn: nn.Module,
               images: _CalibrationImages, original_device: torch.device) -> ChannelRegression:
    """Accumulate the regression of the BN's affine output on the BFN's normalized input over all images."""
    regression = ChannelRegression(bn.num_features)
    for x in images:
        y = _forward_until(original, bn, x.to(original_device), lambda t: bn_affine_output(bn, t))
        x_hat = _forward_until(converted, bfn, x, bfn.normalize)
        regression.update(x_hat, y)
    return regression


def calibrate(
    converted: nn.Module,
    original: nn.Module,
    images: Iterable,
    max_images: Optional[int] = None,
    reestimate: str = DEFAULT_REESTIMATE,
    source_images: Optional[float] = None,
    inplace: bool = False,
    progress: bool = False,
) -> CalibrationResult:
    """Fit each BFN of ``converted`` to the BN it replaced in ``original`` (see the module docstring).

    Args:
        converted: the output of ``timm_xbn.convert(original)``; a deep copy is calibrated unless ``inplace``.
        original: the BN model it was converted from; never changed (train/eval flags restored).
        images: unlabeled calibration images: a re-iterable of Tensors or ``(images, ...)`` batches (a
            DataLoader) giving the same images on every pass (in any order; no random augmentation): it is
            read once per BFN and once more to re-estimate the BNs.
        max_images: use the first ``max_images`` images only.
        reestimate: what the remaining BNs' statistics become afterwards: ``none``, ``full`` or ``mix``
            (see the module docstring and ``reestimate_bns``).
        source_images: N for ``mix``: how many training images the trained statistics come from.
        inplace: calibrate ``converted`` itself.
        progress: show rich progress bars.

    Returns:
        ``(model, fits, images, seconds)``: the calibrated model, one ``LayerFit`` per BFN, the number of
        images used and the wall time.
    """

    _check_reestimate(reestimate, source_images)
    pairs = _bfn_pairs(converted, original)
    target = converted if inplace else copy.deepcopy(converted)
    data = _CalibrationImages(images, max_images, _first_conv_channels(original), model_device(target))
    first = next(iter(data), None)  # one batch: its size is the maps' size (no images: an error on the first pass)
    if first is not None:
        check_one_value_norms(target, tuple(first.shape[1:]), "calibrate on larger images (--img-size)")
    start = time.perf_counter()
    fits = []
    with eval_mode([target, original]), _layer_progress(progress, len(pairs)) as advance:
        for name, _, bn in pairs:
            bfn = target.get_submodule(name)
            regression = _fit_layer(target, original, bfn, bn, data, model_device(original))
            slope, intercept = regression.solve()
            bfn.weight.data.copy_(slope)
            bfn.bias.data.copy_(intercept)
            r2 = regression.r2()
            fits.append(LayerFit(name, len(r2), float(r2.mean()), float(r2.min())))
            advance(name)
    reestimate_bns(target, data, reestimate, source_images, progress=progress)
    return CalibrationResult(target, fits, data.count, time.perf_counter() - start)


def _check_reestimate(choice: str, source_images: Optional[float]) -> None:
    if choice not in REESTIMATE_CHOICES:
        raise UserError(f"reestimate must be one of {', '.join(REESTIMATE_CHOICES)}, got {choice!r}")
    if choice == "mix" and (source_images is None or not source_images >= 0):
        raise UserError("reestimate='mix' needs source_images >= 0: the number of training images the BN "
                        f"statistics come from (N of the mix N/(N+n)), got {source_images}")


def reestimate_bns(model: nn.Module, images: Iterable, choice: str = DEFAULT_REESTIMATE,
                   source_images: Optional[float] = None, progress: bool = False) -> nn.Module:
    """Set the BN statistics of ``model`` (in place) from ``images``: ``none`` keeps them, ``full`` takes
    those of the BNs' inputs on the images, ``mix`` takes ``N/(N+n) * trained + n/(N+n) * full`` per
    statistic (mean and variance), n the number of images, N = ``source_images``. Returns ``model``."""
    _check_reestimate(choice, source_images)
    if choice == "none" or not bns_with_running_stats(model):
        return model
    if not isinstance(images, _CalibrationImages):
        images = _CalibrationImages(images, None, None, model_device(model))
    if choice == "mix" and not images.count:
        for _ in images:  # one pass to count the images (calibrate has counted them already)
            pass
    if choice == "full":
        return recalibrate(model, images, mode="full", inplace=True, progress=progress)
    return recalibrate(model, images, mode="mix", prior=source_images, mix_count=images.count, inplace=True,
                       progress=progress)
