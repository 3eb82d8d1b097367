"""Calibration of converted networks: fit each batch-free norm to the BN it replaced, re-estimate the others.

It consumes surgery (the converted model), statistics (BN re-estimation) and evaluation's data pipeline
(calibration images), so it sits on a floor above them.
"""
from .data import calibration_batches
from .fit import (
    DEFAULT_REESTIMATE, REESTIMATE_CHOICES, CalibrationResult, ChannelRegression, LayerFit, calibrate,
    reestimate_bns,
)

__all__ = [
    "CalibrationResult", "ChannelRegression", "LayerFit", "calibrate", "calibration_batches",
    "DEFAULT_REESTIMATE", "REESTIMATE_CHOICES", "reestimate_bns",
]
