"""Model surgery: find residual blocks and swap their BNs for batch-free norms."""
from .blocks import (
    BLOCK_FAMILIES,
    ResidualBlock,
    find_residual_blocks,
    find_stem_norms,
    is_bn,
    supported_families_text,
)
from .convert import ConversionResult, Replacement, XBNConfig, build_bfn_for, convert, parse_position, replace_module

__all__ = [
    "BLOCK_FAMILIES", "ResidualBlock", "find_residual_blocks", "find_stem_norms", "is_bn",
    "supported_families_text", "ConversionResult", "Replacement", "XBNConfig", "convert",
    "parse_position", "replace_module", "build_bfn_for",
]
