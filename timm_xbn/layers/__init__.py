"""Normalization layers used by XBNBlocks."""
from .bfn import BFN_KINDS, GroupNorm2d, InstanceNorm2d, create_bfn, is_batch_free, paper_affine, resolve_groups

__all__ = ["BFN_KINDS", "GroupNorm2d", "InstanceNorm2d", "create_bfn", "is_batch_free", "paper_affine", "resolve_groups"]
