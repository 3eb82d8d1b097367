"""timm-xbn: XBNBlock networks, model surgery and BN robustness tools for timm.

``import timm_xbn`` registers the ``xbn_*`` models with timm's registry.

``convert`` is the surgery alone; a converted trained network is fitted to the BN network it came from
by the separate step ``calibrate(converted, original, images)``.
"""
from .layers import create_bfn
from .calibration import calibrate
from .surgery import convert, find_residual_blocks, supported_families_text
from . import models  # noqa: F401  (registers the models with timm)
from .utils.errors import UserError
from .version import __version__

__all__ = ["UserError", "calibrate", "convert", "create_bfn", "find_residual_blocks", "supported_families_text", "__version__"]
