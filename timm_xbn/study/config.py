"""The study's settings: ``StudyConfig`` holds everything that determines its numbers, with three presets."""
import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Tuple

import torch

from ..utils.errors import UserError
from .mlp import MLPConfig
from .resnet import VARIANTS, ResNetConfig
from .tta import TTAConfig

__all__ = ["DEVICES", "JOB_KINDS", "JobKind", "PRESETS", "QUICK_NOTE", "StudyConfig", "resolve_device"]

PRESETS = ("default", "quick", "full")
QUICK_NOTE = "quick smoke run: verdicts mean nothing"


class JobKind(str, Enum):
    """The study's kinds of job, which are also its parts (``xbn-eval study --part``); the value is the name
    used in results and settings."""

    MLP = "mlp"  # the Section 4 MLP runs of one seed
    NETWORK = "network"  # one Section 5 network trained (or loaded), then evaluated
    SMALL_BATCH = "small_batch"  # one small-batch training run
    TTA = "tta"  # test-time adaptation of one stored network

    def __str__(self) -> str:
        return self.value

    @property
    def label(self) -> str:
        """What its progress line is called."""
        return {"mlp": "Section 4 MLPs", "network": "Section 5 networks", "small_batch": "Small-batch training",
                "tta": "Test-time adaptation"}[self.value]


JOB_KINDS = tuple(JobKind)  # in the order they run and are reported
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """``cpu`` or ``cuda`` for a ``DEVICES`` choice (``auto``: cuda when available)."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: CUDA is not available on this machine (choose cpu, or auto: cuda when available)")
    return "cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name


@dataclass
class StudyConfig:
    """Everything that determines the study's numbers (the worker count does not: see ``jobs``)."""

    dataset: str = "auto"
    image_size: int = 32
    seed: int = 0
    train_seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    threads: int = 1
    device: str = "cpu"  # the ResNets' (cpu or cuda: bf16 autocast, channels_last); the MLPs always run on the CPU
    preset_name: str = "default"  # the preset it was made from (``quick``: a smoke run whose verdicts mean nothing)
    mlp: MLPConfig = field(default_factory=lambda: MLPConfig(test_samples=5000))
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> "StudyConfig":
        """``default`` (about 2 hours on 2 CPU cores, 12,700 CPU-seconds in portable mode), ``quick`` (about a minute; a smoke test whose
        verdicts mean nothing) or ``full`` (more seeds, variants, Deltas and small-batch iterations; hours)."""
        if name not in PRESETS:
            raise UserError(f"unknown study preset {name!r}; choose from {', '.join(PRESETS)}")
        cfg = cls(**overrides, preset_name=name)
        if name == "quick":
            cfg.train_seeds = (0, 1)
            cfg.mlp = dataclasses.replace(cfg.mlp, epochs=12, test_samples=600, train_sizes=(32, 256), eval_every=2)
            cfg.resnet = dataclasses.replace(
                cfg.resnet, train_samples=512, epochs=1.0, min_steps=8, eval_samples=300, calib_samples=100, warmup_steps=2,
                batch_size=64, deltas=(0.9,), perturb_seeds=(0,), corruptions=("gaussian_noise",),
                small_batch_sizes=(4, 16), small_batch_iterations=8,
            )
            cfg.tta = dataclasses.replace(cfg.tta, test_samples=48, short_samples=8, batch_size=16)
        elif name == "full":
            cfg.train_seeds = tuple(range(10))
            cfg.resnet = dataclasses.replace(
                cfg.resnet, variants=tuple(VARIANTS), deltas=(0.1, 0.3, 0.5, 0.7, 0.9),
                adabn_variants=("BN", "XBN-GN"), small_batch_iterations=1000,
            )
        return cfg

    @property
    def quick(self) -> bool:
        """A smoke run (the ``quick`` preset): its verdicts mean nothing."""
        return self.preset_name == "quick"

    def to_dict(self) -> dict:
        return {
            "preset": self.preset_name, "dataset": self.dataset, "image_size": self.image_size, "seed": self.seed,
            "train_seeds": list(self.train_seeds), "threads": self.threads, "device": self.device,
            "mlp": self.mlp.to_dict(), "resnet": self.resnet.to_dict(), "tta": self.tta.to_dict(),
        }
