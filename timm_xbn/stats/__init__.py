"""BN statistics toolkit: perturb (Eq. 5), recalibrate (AdaBN) and measure (ESM, Definition 2)."""
from .esm import BNStats, ESMRecord, esm_from_stats, esm_records_to_rows, estimation_shift, expected_bn_stats
from .esm import stats_from_moments
from .moments import ChannelMoments, capture_bn_inputs
from .perturb import Perturbation, perturb_bn_stats, perturbation_factors, select_perturbation_targets
from .prior import prior_weight, use_prior_statistics
from .recalibrate import RECALIBRATION_MODES, recalibrate, use_batch_stats

__all__ = [
    "BNStats", "ESMRecord", "esm_from_stats", "esm_records_to_rows", "estimation_shift", "expected_bn_stats",
    "stats_from_moments",
    "ChannelMoments", "capture_bn_inputs",
    "Perturbation", "perturb_bn_stats", "perturbation_factors", "select_perturbation_targets",
    "prior_weight", "use_prior_statistics", "RECALIBRATION_MODES", "recalibrate", "use_batch_stats",
]
