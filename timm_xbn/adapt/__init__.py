"""Test-time adaptation of BN, GN and XBN networks: source, norm (AdaBN), prior (Schneider et al.),
batch (prediction-time BN), rbn (RoTTA's robust BN), TENT, EATA and SAR, in episodic or continual protocols.

Notebook use::

    from timm_xbn.adapt import create_adapter, run_protocol

    tent = create_adapter(model, "tent:lr=0.00025")       # a deep copy; model is never changed
    logits = tent(x)                                        # adapts on x, returns its logits
    errors = run_protocol(tent, {"fog/5": lambda: fog_batches, "snow/5": lambda: snow_batches}, "continual")
"""
from .base import Adapter, AffineAdapter, PassCounts
from .eata import EATA
from .methods import METHODS, STATEFUL_METHODS, create_adapter, parse_method
from .norms import NORM_TYPES, norm_affine_parameters, prepare_norm_adaptation
from .protocol import PROTOCOLS, counts_record, run_protocol
from .sar import SAR
from .statistics import Batch, Mix, Norm, Prior, RobustBN, Source
from .tent import Tent, softmax_entropy

__all__ = [
    "Adapter", "AffineAdapter", "PassCounts", "EATA", "METHODS", "STATEFUL_METHODS", "create_adapter", "parse_method",
    "NORM_TYPES", "norm_affine_parameters", "prepare_norm_adaptation", "PROTOCOLS", "counts_record", "run_protocol",
    "SAR", "Batch", "Mix", "Norm", "Prior", "RobustBN", "Source", "Tent", "softmax_entropy",
]
