"""The paper's findings on real data, in one call (``xbn-eval study``).

Section 4 (a deep MLP with BN in every layer vs GN in the odd layers: estimation shift per layer)
and Section 5 at small scale (a narrow timm ResNet with BN vs its XBNBlock-P2 GN / IN
conversions: robustness to disturbed BN statistics, ESM, AdaBN under corruptions), on
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (or MNIST-5k / sklearn digits / any
ImageFolder). Each claim of the paper is checked with an explicit criterion and reported.

Notebook use::

    from timm_xbn.study import StudyConfig, run_study
    results = run_study(StudyConfig.preset(quick=True), "xbn_results/study_quick")
"""
from .config import PRESETS, StudyConfig
from .data import DATASET_NAMES, StudyData, load_dataset
from .mlp import MLPConfig, StudyMLP, train_full_batch
from .report import Claim, claims_from_csv, compare_lines, evaluate_claims, summary_lines
from .resnet import VARIANTS, ResNetConfig, build_variant
from .run import RESULTS_FILE, SUMMARY_FILE, run_study

__all__ = [
    "DATASET_NAMES", "StudyData", "load_dataset",
    "MLPConfig", "StudyMLP", "train_full_batch",
    "Claim", "claims_from_csv", "compare_lines", "evaluate_claims", "summary_lines",
    "VARIANTS", "ResNetConfig", "build_variant",
    "RESULTS_FILE", "SUMMARY_FILE", "PRESETS", "StudyConfig", "run_study",
]
