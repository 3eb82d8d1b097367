"""``convert`` with calibration: the surgery, then a fit of the new BFNs to the BNs they replace."""
import copy
from typing import Iterable, Optional, Sequence, Union

import torch.nn as nn

from ..surgery import ConversionResult
from ..surgery import convert as convert_bns
from .fit import calibrate as calibrate_bfns

__all__ = ["convert"]


def convert(
    model: nn.Module,
    position: Union[str, int] = "P2",
    every: int = 1,
    bfn: str = "gn",
    groups: Optional[int] = 64,
    channels_per_group: Optional[int] = None,
    affine: Optional[bool] = None,
    stem: bool = False,
    inplace: bool = False,
    calibrate: Optional[Iterable] = None,
    calib_images: Optional[int] = None,
    progress: bool = False,
    input_size: Optional[Sequence[int]] = None,
    force: bool = False,
) -> ConversionResult:
    """``timm_xbn.surgery.convert`` (same arguments and result), then optionally calibration.

    Args:
        calibrate: unlabeled images (a DataLoader or re-iterable of batches, same images on every pass):
            fit each BFN's affine parameters to the BN it replaces and re-estimate the other BNs on them
            (``timm_xbn.calibrate``, default re-estimation). BFNs are then affine unless ``affine=False`` (an error).
        calib_images: calibrate on the first ``calib_images`` images only.
        progress: show progress bars while calibrating.
        input_size / force: the surgery's refusal of BFNs that would normalize one value per sample.
    """
    surgery = dict(input_size=input_size, force=force)
    if calibrate is None:
        return convert_bns(model, position, every, bfn, groups, channels_per_group, affine, stem, inplace, **surgery)
    if affine is None:  # calibration sets the BFNs' weight and bias, so it needs them
        affine = True
    original = copy.deepcopy(model) if inplace else model
    result = convert_bns(model, position, every, bfn, groups, channels_per_group, affine, stem, inplace, **surgery)
    calibrate_bfns(result.model, original, calibrate, max_images=calib_images, inplace=True, progress=progress)
    return result
