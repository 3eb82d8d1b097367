"""ImageNet-C style corruption robustness: metrics, data sources, batch preparation, fast corruptions
(the evaluation itself is a view of the grid, ``timm_xbn.grid.evaluate_corruptions``).

Notebook use::

    from timm_xbn.corruptions import ImageNetCFolders, corrupt_batch
    from timm_xbn.evaluation import create_eval_model, resolve_eval_data_config
    from timm_xbn.grid import evaluate_corruptions

    model = create_eval_model("resnet50", checkpoint="bn.pth")
    source = ImageNetCFolders("/data/imagenet-c", resolve_eval_data_config(model), num_classes=1000)
    results = evaluate_corruptions({"resnet50": model}, source, output_dir="out")

    x_fog = corrupt_batch(images_uint8, "fog", severity=3, generator=torch.Generator().manual_seed(0))
"""
from .datasets import CifarC, CorruptionSource, ImageNetCFolders, OnTheFly, discover_imagenet_c
from .metrics import (
    ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, corruption_error, mean_corruption_error, missing_pairs,
    relative_corruption_error, summarize,
)
from .names import ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, parse_corruptions, parse_severities
from .plots import plot_corruption_heatmap
from .prep import BatchPrep
from .reference import corrupt_reference
from .tables import corruption_table
from .torch_ops import Draws, corrupt_batch

__all__ = [
    "CifarC", "CorruptionSource", "ImageNetCFolders", "OnTheFly", "discover_imagenet_c",
    "ALEXNET_CLEAN_ERROR", "ALEXNET_ERRORS", "corruption_error", "mean_corruption_error", "missing_pairs",
    "relative_corruption_error", "summarize",
    "ALL_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS", "SEVERITIES", "parse_corruptions", "parse_severities",
    "BatchPrep", "plot_corruption_heatmap", "corrupt_reference", "corruption_table", "Draws", "corrupt_batch",
]
