"""Diagnostics: predictive metrics (accuracy, NLL, ECE, entropy, mutual information) and plots."""

from .metrics import calibration_curve, classification_metrics, expected_calibration_error, regression_metrics

__all__ = ["classification_metrics", "regression_metrics", "expected_calibration_error", "calibration_curve"]
