"""Training: timm train.py-compatible recipes run by ``xbn-train`` (single process or torchrun).

Notebook use::

    from timm_xbn.training import build_args, train
    args = build_args("recipes/xbn_resnet50_standard.yaml", data_dir="/data/imagenet", batch_size=64)
    results = train(args)   # dict written to <output>/<experiment>/results.json
"""
from .args import SUPPORTED_KEYS, TRAIN_PY_KEYS, UNSUPPORTED_KEYS, XBN_KEYS, build_args, create_parser, load_recipe
from .checkpoint import TrainCheckpointSaver, find_resume_checkpoint, load_training_checkpoint
from .engine import Trainer, train
from .main import main

__all__ = [
    "SUPPORTED_KEYS", "TRAIN_PY_KEYS", "UNSUPPORTED_KEYS", "XBN_KEYS", "build_args", "create_parser", "load_recipe",
    "TrainCheckpointSaver", "find_resume_checkpoint", "load_training_checkpoint", "Trainer", "train", "main",
]
