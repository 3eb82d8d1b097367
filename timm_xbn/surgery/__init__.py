"""Model surgery: find residual blocks and swap their BNs for batch-free norms."""
from .blocks import (
    BLOCK_FAMILIES,
    ResidualBlock,
    find_residual_blocks,
    find_stem_norms,
    is_bn,
    supported_families_text,
)
from .calibrate import (
    DEFAULT_REESTIMATE, REESTIMATE_CHOICES, CalibrationResult, ChannelRegression, LayerFit, calibrate,
    calibration_batches, reestimate_bns,
)
from .convert import ConversionResult, Replacement, XBNConfig, build_bfn_for, convert, parse_position, replace_module

__all__ = [
    "BLOCK_FAMILIES", "ResidualBlock", "find_residual_blocks", "find_stem_norms", "is_bn",
    "supported_families_text", "ConversionResult", "Replacement", "XBNConfig", "convert",
    "parse_position", "replace_module", "build_bfn_for",
    "CalibrationResult", "ChannelRegression", "LayerFit", "calibrate", "calibration_batches",
    "DEFAULT_REESTIMATE", "REESTIMATE_CHOICES", "reestimate_bns",
]
