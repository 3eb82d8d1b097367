"""Registered XBNBlock models (importing this module registers them with timm)."""
from .checkpoints import export_model, import_authors_checkpoint, load_exported, load_weights, state_dict_mismatch
from .factory import check_model_name, create_base_model, create_model
from .pretrained import PretrainedWeightsUnavailable
from .names import AUTHORS_LAYOUT, AUTHORS_TAG, BN_STEM_SUFFIX, HUB_ORG
from .xbn_resnet import SURGERY_KWARGS, XBN_VARIANTS, XBNResNet

__all__ = [
    "export_model", "import_authors_checkpoint", "load_exported", "load_weights", "state_dict_mismatch",
    "check_model_name", "create_base_model", "create_model", "PretrainedWeightsUnavailable",
    "HUB_ORG", "AUTHORS_LAYOUT", "AUTHORS_TAG", "BN_STEM_SUFFIX", "SURGERY_KWARGS", "XBN_VARIANTS", "XBNResNet",
]
