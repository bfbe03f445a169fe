"""Calibration of a BNN's posterior predictive: a result object computed from a model and data.

>>> cal = bd.diagnostics.calibration(bnn, data.test, num_samples=32)
>>> cal.ece                      # classification: the top-label ECE, as bd.evaluate computes it
>>> cal.coverage_error           # regression: mean |observed - nominal| coverage
>>> bd.plots.calibration(cal)    # draws the result
>>> cal.to_dict()                # plain numbers, e.g. for metrics.json

Classification: the reliability curve of the predictive p(y | x) = mean of S softmax outputs
(per confidence bucket: mean top-1 confidence, top-1 accuracy and count; the bins of
:func:`~bayesdistill.diagnostics.calibration_curve`, ``n_bins`` equal-width bins plus a bucket
for confidence exactly 1.0) and the ECE (probability units).

Regression (a ``Normal`` likelihood): the coverage of central predictive intervals: for each
nominal level p, the fraction of targets inside the central p-interval of the moment-matched
Gaussian predictive N(mean_s mu_s, sigma^2 + var_s mu_s) (per output dimension), and the mean
absolute coverage error over the levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ..infer.metrics import calibration_curve, expected_calibration_error

__all__ = ["CalibrationResult", "calibration", "DEFAULT_LEVELS"]

#: Nominal levels of the central predictive intervals (regression): 0.05, 0.10, ..., 0.95.
DEFAULT_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


@dataclass
class CalibrationResult:
    """Calibration of a posterior predictive (see the module docstring).

    Attributes:
        task: ``"classification"`` (a reliability curve) or ``"regression"`` (interval coverage).
        num_examples: N, the labelled examples scored.
        num_samples: S, the posterior draws of the predictive (``None``: given probabilities).
        seed: seed of the posterior draws (``None``: fresh draws or given probabilities).
        n_bins: classification: the number of equal-width confidence bins.
        ece: classification: the top-label L1 expected calibration error (probability units);
            equals ``bd.evaluate(bnn, data, num_samples=S, seed=seed)["ece"]``.
        bin_lower, bin_upper: classification: the ``n_bins + 1`` buckets' edges (the last bucket
            is [1.0, 1.0], confidences of exactly 1).
        confidence, accuracy: classification: per bucket, mean top-1 confidence and top-1
            accuracy (NaN for an empty bucket).
        count: classification: examples per bucket.
        levels: regression: the nominal coverage levels p of the central intervals.
        observed: regression: the fraction of targets (over examples and output dimensions)
            inside each central p-interval.
        coverage_error: regression: mean over the levels of |observed - p|.
    """

    task: str
    num_examples: int
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    n_bins: Optional[int] = None
    ece: Optional[float] = None
    bin_lower: list[float] = field(default_factory=list)
    bin_upper: list[float] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    coverage_error: Optional[float] = None

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"CalibrationResult.task must be 'classification' or 'regression', got {self.task!r}")

    @classmethod
    def from_probs(cls, probs: Tensor, targets: Tensor, *, n_bins: int = 15, num_samples: Optional[int] = None,
                   seed: Optional[int] = None) -> "CalibrationResult":
        """The reliability curve and ECE of class probabilities ``probs`` ``[N, C]`` (not logits)
        for integer labels ``targets`` ``[N]``; computed on their device.

        Raises:
            ValueError: as :func:`~bayesdistill.diagnostics.calibration_curve` (bad shapes,
                values that are not probabilities, labels out of range, ``n_bins < 1``).
        """
        curve = calibration_curve(probs, targets, n_bins=n_bins)
        ece = expected_calibration_error(probs, targets, n_bins=n_bins)
        keys = ("bin_lower", "bin_upper", "confidence", "accuracy")
        values = torch.stack([curve[k].double() for k in keys] + [curve["count"].double()]).tolist()  # one sync
        lists = dict(zip(keys, values[:4]))
        return cls(task="classification", num_examples=int(probs.shape[0]), num_samples=num_samples, seed=seed,
                   n_bins=int(n_bins), ece=float(ece), count=[int(c) for c in values[4]], **lists)

    @classmethod
    def from_gaussian(cls, mean: Tensor, std: Tensor, targets: Tensor, *, levels: Sequence[float] = DEFAULT_LEVELS,
                      num_samples: Optional[int] = None, seed: Optional[int] = None) -> "CalibrationResult":
        """Coverage of the central intervals of Gaussian predictives N(mean, std^2) for ``targets``.

        ``mean``, ``std`` and ``targets`` have the same shape (``[N]`` or ``[N, D]``; every entry
        counts); the levels are compared on the tensors' device.

        Raises:
            ValueError: shapes differ, a level outside (0, 1), a non-positive ``std``.
        """
        mean, std = mean.detach().double(), std.detach().to(mean.device).double()
        targets = targets.detach().to(mean.device).double()
        if not (mean.shape == std.shape == targets.shape) or mean.numel() == 0:
            raise ValueError(f"coverage: mean {tuple(mean.shape)}, std {tuple(std.shape)} and targets "
                             f"{tuple(targets.shape)} must have one non-empty shape")
        lv = [float(p) for p in levels]
        if not lv or not all(0.0 < p < 1.0 for p in lv):
            raise ValueError(f"coverage levels must lie in (0, 1), got {lv}")
        if not bool((std > 0).all()):
            raise ValueError("coverage: the predictive standard deviations must be positive")
        z = ((targets - mean) / std).abs().reshape(-1)
        level_t = torch.tensor(lv, dtype=torch.float64, device=z.device)  # on z's device (CUDA included)
        half_width = math.sqrt(2.0) * torch.erfinv(level_t)  # |z| <= half_width with probability p
        observed = (z.unsqueeze(0) <= half_width.unsqueeze(1)).double().mean(1)
        error = (observed - level_t).abs().mean()
        values = torch.cat([observed, error.reshape(1)]).tolist()  # one sync
        return cls(task="regression", num_examples=int(mean.shape[0]), num_samples=num_samples, seed=seed,
                   levels=lv, observed=values[:-1], coverage_error=values[-1])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers and lists (NaN of empty buckets as ``None``)."""
        out: dict[str, Any] = {"task": self.task, "num_examples": self.num_examples,
                               "num_samples": self.num_samples, "seed": self.seed}
        if self.task == "classification":
            out.update(n_bins=self.n_bins, ece=self.ece,
                       bins={"lower": list(self.bin_lower), "upper": list(self.bin_upper),
                             "confidence": [_finite_or_none(v) for v in self.confidence],
                             "accuracy": [_finite_or_none(v) for v in self.accuracy],
                             "count": list(self.count)})
        else:
            out.update(levels=list(self.levels), observed=list(self.observed), coverage_error=self.coverage_error)
        return out


@torch.no_grad()
def calibration(bnn: Any, data: Any, *, num_samples: int = 32, seed: Optional[int] = 0, n_bins: int = 15,
                levels: Sequence[float] = DEFAULT_LEVELS) -> CalibrationResult:
    """Calibration of ``bnn``'s posterior predictive on labelled ``data``.

    Args:
        bnn: a trained :class:`~bayesdistill.BNN`.
        data: labelled data accepted by :func:`~bayesdistill.evaluate`.
        num_samples: posterior draws S of the predictive.
        seed: seed of the draws (``None``: fresh draws).
        n_bins: classification: equal-width confidence bins.
        levels: regression (``Normal`` likelihood): nominal levels of the central intervals.

    Returns:
        A :class:`CalibrationResult`: a reliability curve with the ECE (classification), or the
        coverage of central predictive intervals (regression). Computed on the model's device.

    Raises:
        TypeError: ``bnn`` is not a BNN.
        ValueError: ``data`` has no targets.
    """
    from ..bnn.likelihoods import Normal as NormalLikelihood
    from ..bnn.network import BNN
    from ..infer.predictive import predict

    if not isinstance(bnn, BNN):
        raise TypeError(f"calibration(bnn, data) expects a bd.BNN, got {type(bnn).__name__}")
    outputs, targets = predict(bnn, data, num_samples=num_samples, seed=seed)
    if targets is None:
        raise ValueError("calibration() needs labelled data (inputs and targets)")
    s = int(outputs.shape[0])
    if isinstance(bnn.likelihood, NormalLikelihood):
        means = outputs.double()
        targets = targets.to(means.device).double().reshape(means.shape[1:])
        sigma = bnn.likelihood.scale.detach().to(means.device).double()
        std = (sigma**2 + means.var(0, unbiased=False)).sqrt()
        mean = means.mean(0)
        return CalibrationResult.from_gaussian(mean, std.expand_as(mean), targets, levels=levels,
                                               num_samples=s, seed=seed)
    # the same arithmetic (and dtype) as classification_metrics, so the ECE equals evaluate()'s
    logits = outputs if outputs.dtype == torch.float64 else outputs.float()
    log_p = torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(s)
    return CalibrationResult.from_probs(log_p.exp(), targets, n_bins=n_bins, num_samples=s, seed=seed)
