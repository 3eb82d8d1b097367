"""The ground floor: small facts every room shares, importing nothing else of timm_xbn."""
from .device import eval_mode, model_device
from .distributed import all_gather_objects, all_reduce_sum, barrier, is_distributed, is_main_process, world_info
from .errors import USER_ERRORS
from .norms import NORM_TYPES, bn_modules, bns_with_running_stats, is_bn, is_norm

__all__ = [
    "eval_mode", "model_device", "all_gather_objects", "all_reduce_sum", "barrier", "is_distributed", "is_main_process",
    "world_info", "USER_ERRORS", "NORM_TYPES", "bn_modules", "bns_with_running_stats", "is_bn", "is_norm",
]
