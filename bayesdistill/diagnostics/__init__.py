"""Diagnostics: predictive metrics, result objects computed from models and data, and plots.

- metrics (pure tensor functions): :func:`classification_metrics`, :func:`regression_metrics`,
  :func:`expected_calibration_error`, :func:`calibration_curve`;
- results: :func:`calibration` -> :class:`CalibrationResult` (reliability curve and ECE, or
  predictive-interval coverage); :func:`cosine_distances` -> :class:`CosineDistances` (same- vs
  different-class pairs per model, with :class:`ModelDistances` and :func:`separation_auc`);
  :func:`weight_noise_robustness` -> :class:`WeightNoiseRobustness` (accuracy under weight noise);
  each has ``to_dict()`` for reports;
- :mod:`~bayesdistill.diagnostics.plots` (``bd.plots``): figures that draw results only.
"""

from . import plots
from .calibration import CalibrationResult, calibration
from .metrics import calibration_curve, classification_metrics, expected_calibration_error, regression_metrics
from .representations import CosineDistances, ModelDistances, cosine_distances, separation_auc
from .robustness import WeightNoiseRobustness, weight_noise_robustness

__all__ = [
    "plots",
    "classification_metrics",
    "regression_metrics",
    "expected_calibration_error",
    "calibration_curve",
    "calibration",
    "CalibrationResult",
    "cosine_distances",
    "CosineDistances",
    "ModelDistances",
    "separation_auc",
    "weight_noise_robustness",
    "WeightNoiseRobustness",
]
