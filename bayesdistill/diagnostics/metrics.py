"""Posterior-predictive metrics (re-exported from :mod:`bayesdistill.infer.metrics`, where
:func:`~bayesdistill.evaluate` and the training engine's held-out evaluation use them)."""

from ..infer.metrics import (  # noqa: F401
    calibration_curve,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    regression_metrics,
)

__all__ = ["calibration_curve", "classification_metrics", "expected_calibration_error", "fit_temperature",
           "regression_metrics"]
