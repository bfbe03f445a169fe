"""Exceptions raised by bayesdistill.

Every error names what was expected, what was given and, where there is one, how to fix it.
They subclass the built-in exception a user would catch anyway (``ValueError``,
``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BayesDistillError",
    "UnsupportedLayerError",
    "ShapeMismatchError",
    "DataError",
    "FileFormatError",
    "PosteriorFormatError",
    "PosteriorMismatchError",
    "RecordMismatchError",
    "NonFiniteLossError",
    "RunExistsError",
    "ResumeMismatchError",
]


class BayesDistillError(Exception):
    """Base class of all bayesdistill errors."""


class UnsupportedLayerError(BayesDistillError, TypeError):
    """A module with parameters that bayesdistill cannot make Bayesian (named by module path)."""


class ShapeMismatchError(BayesDistillError, ValueError):
    """A tensor (prior, posterior entry, data) whose shape does not match the network."""


class DataError(BayesDistillError, ValueError):
    """Training or evaluation data that do not fit the likelihood (shape, dtype, range, NaN)."""


class FileFormatError(BayesDistillError, ValueError):
    """A file of this package (posterior, checkpoint, alignment plan, model) that is unreadable,
    truncated, of another kind or of an unknown format version."""


class PosteriorFormatError(FileFormatError):
    """A posterior (or checkpoint) file that is unreadable, corrupt or of an unknown format
    version, or a posterior whose values are invalid (non-finite means, scales not > 0)."""


class PosteriorMismatchError(BayesDistillError, ValueError):
    """A posterior whose parameter names or shapes belong to another network."""


class RecordMismatchError(BayesDistillError, ValueError):
    """A teacher's activation record (data-free distillation) used with another teacher: its
    architecture or its weights differ from those the record was made from."""


class NonFiniteLossError(BayesDistillError, FloatingPointError):
    """The ELBO became NaN or infinite during training.

    Attributes:
        epoch: 1-based epoch in which the loss first became non-finite.
        step: 1-based step within that epoch (``None`` if only known per epoch).
        checkpoint: path of the last good checkpoint, if one was written.
    """

    def __init__(self, message: str, *, epoch: int, step: int | None, checkpoint: str | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


class RunExistsError(BayesDistillError, FileExistsError):
    """A fresh run was pointed at a folder that already holds a run (finished or partial).

    Resume it (``resume=True``, CLI ``--resume``), replace it (``overwrite=True``, CLI
    ``--overwrite``) or choose another folder.
    """


class ResumeMismatchError(BayesDistillError, ValueError):
    """A resumed run's settings or data differ from the checkpoint's (each difference is named)."""

