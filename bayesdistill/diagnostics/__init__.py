"""Diagnostics: predictive metrics (accuracy, NLL, ECE, entropy, mutual information) and plots."""

from . import plots
from .metrics import calibration_curve, classification_metrics, expected_calibration_error, regression_metrics

__all__ = ["plots", "classification_metrics", "regression_metrics", "expected_calibration_error", "calibration_curve"]
