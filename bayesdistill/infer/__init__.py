"""Inference: the mean-field ELBO, the objective, the training engine and its callbacks,
``fit``, and the posterior predictive."""

from .batches import Batch, Batches, default_batch
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    Evaluate,
    FunctionCallback,
    KLSchedule,
    LRSchedule,
    NonFiniteGuard,
    ProgressBar,
    TensorBoardLogger,
)
from .checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from .elbo import MeanFieldELBO
from .engine import FitResult, SVIEngine
from .fit import fit
from .objective import Objective, ScaleSite, Term
from .predictive import evaluate, predict

__all__ = [
    "MeanFieldELBO",
    "fit",
    "FitResult",
    "SVIEngine",
    "evaluate",
    "predict",
    "Batch",
    "Batches",
    "default_batch",
    "Term",
    "Objective",
    "ScaleSite",
    "Callback",
    "FunctionCallback",
    "KLSchedule",
    "LRSchedule",
    "NonFiniteGuard",
    "Evaluate",
    "EarlyStopping",
    "ProgressBar",
    "CSVLogger",
    "TensorBoardLogger",
    "Checkpoint",
    "CHECKPOINT_NAME",
    "load_checkpoint",
]
