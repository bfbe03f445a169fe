"""Diagnostics: predictive metrics, result objects computed from models and data, and plots.

- metrics (pure tensor functions): :func:`classification_metrics`, :func:`regression_metrics`,
  :func:`expected_calibration_error`, :func:`calibration_curve`, :func:`fit_temperature`
  (temperature scaling);
- results: :func:`calibration` -> :class:`CalibrationResult` (reliability curve and ECE, or
  predictive-interval coverage); :func:`cosine_distances` -> :class:`CosineDistances` (same- vs
  different-class pairs per model, with :class:`ModelDistances` and :func:`separation_auc`);
  :func:`ood_detection` -> :class:`OODResult` (AUROC / AUPR of the predictive entropy, mutual
  information and max probability against OOD inputs, per :class:`OODScore`) and
  :func:`selective_prediction` -> :class:`SelectiveResult` (accuracy- and risk-coverage curves,
  AURC, accuracy at fixed coverage);
  :func:`weight_noise_robustness` -> :class:`WeightNoiseRobustness` (accuracy under weight noise);
  each has ``to_dict()`` for reports;
- :mod:`~bayesdistill.diagnostics.plots` (``bd.plots``): figures that draw results only.
"""

from . import plots
from .calibration import CalibrationResult, calibration
from .metrics import (
    calibration_curve,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    regression_metrics,
)
from .representations import CosineDistances, ModelDistances, cosine_distances, separation_auc
from .uncertainty import (
    SCORES,
    OODResult,
    OODScore,
    SelectiveResult,
    average_precision,
    ood_detection,
    roc_auc,
    roc_curve,
    selective_prediction,
    uncertainty_scores,
)
from .robustness import WeightNoiseRobustness, weight_noise_robustness

__all__ = [
    "plots",
    "classification_metrics",
    "regression_metrics",
    "expected_calibration_error",
    "calibration_curve",
    "fit_temperature",
    "calibration",
    "CalibrationResult",
    "cosine_distances",
    "CosineDistances",
    "ModelDistances",
    "separation_auc",
    "ood_detection",
    "OODResult",
    "OODScore",
    "selective_prediction",
    "SelectiveResult",
    "uncertainty_scores",
    "roc_auc",
    "roc_curve",
    "average_precision",
    "SCORES",
    "weight_noise_robustness",
    "WeightNoiseRobustness",
]
