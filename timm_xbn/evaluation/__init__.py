"""Evaluation floor: timm data pipeline, shared data passes, distributed counts, the results store, ESM.

The grid of models x methods x data that every evaluation command is a view of sits one floor up, in
``timm_xbn.grid``. Notebook use::

    from timm_xbn.evaluation import build_model_specs, create_models, create_eval_data, resolve_eval_data_config
    from timm_xbn.grid import evaluate_robustness

    models = create_models(build_model_specs(["resnet50", "xbn_resnet50"], checkpoints=["bn.pth", "xbn.pth"]))
    data = create_eval_data("/data/imagenet/val", resolve_eval_data_config(models))
    results = evaluate_robustness(models, data, deltas=[0.1, 0.3, 0.5], seeds=5, blocks=6, output_dir="out")
"""
from .data import (
    ORDERS, Batch, EvalData, SkippedSample, SkipUnreadable, create_eval_data, data_config_conflicts,
    input_data_config, resolve_eval_data_config, validate_data_dir,
)
from .distributed import ShardSampler, init_distributed, is_main_process, world_info
from .engine import PassResult, run_pass
from .esm import evaluate_esm
from .metrics import accuracy_from_counts, topk_correct
from .models import ModelSpec, build_model_specs, create_eval_model, create_models, weights_sha1
from .plots import plot_esm, plot_robustness
from .results import load_results, make_results, summarize_robustness
from .shift import SHIFT_SETS, create_shift_data
from .store import SCHEMA, Cell, ResultsStore, legacy_layout
from .tables import adabn_table, esm_tables, robustness_table
from .sweep import Perturbed, Setting, SharedPass, eval_mode, naive_sweep, robustness_settings, setting_predictors

__all__ = [
    "ORDERS", "Batch", "EvalData", "SkippedSample", "SkipUnreadable", "create_eval_data", "data_config_conflicts",
    "input_data_config", "resolve_eval_data_config", "validate_data_dir",
    "ShardSampler", "init_distributed", "is_main_process", "world_info",
    "PassResult", "run_pass",
    "Perturbed", "Setting", "SharedPass", "eval_mode", "naive_sweep", "robustness_settings", "setting_predictors",
    "SCHEMA", "Cell", "ResultsStore", "legacy_layout", "SHIFT_SETS", "create_shift_data",
    "accuracy_from_counts", "topk_correct",
    "ModelSpec", "build_model_specs", "create_eval_model", "create_models", "weights_sha1",
    "load_results", "make_results", "summarize_robustness",
    "plot_esm", "plot_robustness", "adabn_table", "esm_tables", "robustness_table",
    "evaluate_esm",
]
