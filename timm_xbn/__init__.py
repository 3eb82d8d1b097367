"""timm-xbn: XBNBlock networks, model surgery and BN robustness tools for timm.

``import timm_xbn`` registers the ``xbn_*`` models with timm's registry.
"""
from .layers import create_bfn
from .surgery import calibrate, convert, find_residual_blocks, supported_families_text
from . import models  # noqa: F401  (registers the models with timm)
from .version import __version__

__all__ = ["calibrate", "convert", "create_bfn", "find_residual_blocks", "supported_families_text", "__version__"]
