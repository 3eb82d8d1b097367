"""Normalization layers used by XBNBlocks."""
from .bfn import BFN_KINDS, GroupNorm2d, InstanceNorm2d, create_bfn, is_batch_free, paper_affine, resolve_groups
from .one_value import OneValueNorm, check_one_value_norms, find_one_value_norms, input_map_sizes, values_per_group

__all__ = ["BFN_KINDS", "GroupNorm2d", "InstanceNorm2d", "create_bfn", "is_batch_free", "paper_affine", "resolve_groups",
           "OneValueNorm", "check_one_value_norms", "find_one_value_norms", "input_map_sizes", "values_per_group"]
