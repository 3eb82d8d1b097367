"""timm-xbn: XBNBlock networks, model surgery and BN robustness tools for timm.

``import timm_xbn`` registers the ``xbn_*`` models with timm's registry.
"""
from .layers import create_bfn
from .calibration import calibrate, convert
from .surgery import find_residual_blocks, supported_families_text
from . import models  # noqa: F401  (registers the models with timm)
from .version import __version__
from . import calibration as _calibration, surgery as _surgery
import sys as _sys

# Calibration moved from ``timm_xbn.surgery`` up to ``timm_xbn.calibration`` (it uses statistics and the
# data pipeline, which sit above surgery). The old import paths keep working: the package root, the
# one floor above both, points them at the new room, so no lower floor imports a higher one.
_sys.modules.setdefault("timm_xbn.surgery.calibrate", _calibration.fit)
for _name in ("CalibrationResult", "ChannelRegression", "LayerFit", "calibrate", "calibration_batches", "convert"):
    setattr(_surgery, _name, getattr(_calibration, _name))  # surgery.convert keeps its calibrate= argument

__all__ = ["calibrate", "convert", "create_bfn", "find_residual_blocks", "supported_families_text", "__version__"]
