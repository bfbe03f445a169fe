"""Inference: the mean-field ELBO, the SVI training loop and the posterior predictive."""

from .elbo import MeanFieldELBO
from .fit import FitResult, fit
from .predictive import evaluate, predict

__all__ = ["MeanFieldELBO", "fit", "FitResult", "evaluate", "predict"]
