"""Pure-tensor predictive metrics for Bayesian (posterior-sample) predictions.

All functions take *stacked posterior samples* of a model's outputs and return
summary metrics of the **posterior predictive** distribution, i.e. the
equally-weighted mixture over the ``S`` samples.  Every log quantity (NLL,
entropies, mutual information) is in **nats** (natural logarithm).

Conventions
-----------
* ``S`` -- number of posterior samples (``S >= 1``; ``S == 1`` is a point
  estimate), ``N`` -- number of data points, ``C`` -- number of classes,
  ``D`` -- regression output dimension.
* Reductions over data points are plain means over ``N``.
* Nothing here touches autograd-relevant state: the functions are meant for
  evaluation and run under :func:`torch.no_grad`.
* Computation stays on the inputs' device; the dict-returning functions
  synchronise with the host exactly once (a single ``.tolist()`` at the end).
  Input validation (finiteness, target range) needs a few extra host syncs.
* Half / bfloat16 inputs are upcast to float32; float64 inputs stay float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "classification_metrics",
    "expected_calibration_error",
    "calibration_curve",
    "regression_metrics",
    "fit_temperature",
]

# Tolerance used when validating user-supplied probabilities (range and row sums).
_PROB_RANGE_TOL = 1e-5
_PROB_SUM_TOL = 1e-3


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _working_dtype(t: Tensor) -> torch.dtype:
    """Floating dtype used for computation: float64 stays, everything else -> float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_floating(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"`{name}` contains {n_bad} non-finite value(s) (NaN or +/-inf)")


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}")


def _check_class_targets(targets: object, n: int, num_classes: int) -> Tensor:
    """Validate integer class labels of shape [N] with values in [0, C)."""
    targets = _check_tensor(targets, "targets")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"`targets` must be an integer tensor of class indices, got dtype {targets.dtype}")
    if tuple(targets.shape) != (n,):
        raise ValueError(
            f"`targets` has shape {tuple(targets.shape)}, expected ({n},) to match the N={n} predictions"
        )
    t_min, t_max = (int(v) for v in torch.stack([targets.min(), targets.max()]).tolist())
    if t_min < 0 or t_max >= num_classes:
        raise ValueError(
            f"`targets` must lie in [0, C) = [0, {num_classes}); got min={t_min}, max={t_max} (C={num_classes})"
        )
    return targets.long()


def _check_probs(probs: object) -> Tensor:
    """Validate a [N, C] matrix of class probabilities; returns it in the working dtype, clamped to [0, 1]."""
    probs = _check_tensor(probs, "probs")
    _check_floating(probs, "probs")
    if probs.dim() != 2:
        raise ValueError(f"`probs` must have shape [N, C], got shape {tuple(probs.shape)}")
    n, c = probs.shape
    if n == 0 or c == 0:
        raise ValueError(f"`probs` must be non-empty, got shape {tuple(probs.shape)}")
    probs = probs.to(_working_dtype(probs))
    _check_finite(probs, "probs")
    p_min, p_max = torch.stack([probs.min(), probs.max()]).tolist()
    if p_min < -_PROB_RANGE_TOL or p_max > 1.0 + _PROB_RANGE_TOL:
        raise ValueError(
            f"`probs` must be probabilities in [0, 1]; got min={p_min:.6g}, max={p_max:.6g} "
            "(pass softmax outputs, not logits)"
        )
    max_dev = float((probs.sum(dim=-1) - 1.0).abs().max())
    if max_dev > _PROB_SUM_TOL:
        raise ValueError(
            f"rows of `probs` must sum to 1 (tolerance {_PROB_SUM_TOL}); largest deviation is {max_dev:.6g}"
        )
    return probs.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- #
# calibration
# --------------------------------------------------------------------------- #
def _bin_statistics(
    confidences: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bucket top-1 confidences into ``n_bins + 1`` buckets (see :func:`expected_calibration_error`).

    Args:
        confidences: ``[N]`` top-1 probabilities in ``[0, 1]``.
        correct: ``[N]`` 1.0 where the top-1 prediction is right, else 0.0 (same dtype).
        n_bins: number of equal-width bins on ``[0, 1]``.

    Returns:
        ``(boundaries [n_bins+1], counts [n_bins+1] int64, conf_sum [n_bins+1], acc_sum [n_bins+1])``;
        the sums are in float64.
    """
    boundaries = torch.linspace(0.0, 1.0, n_bins + 1, dtype=confidences.dtype, device=confidences.device)
    # right=True  ->  returns i with boundaries[i-1] <= x < boundaries[i];  minus one gives the bin whose
    # left edge is <= x.  x == 1.0 lands in bucket index n_bins (a degenerate bucket holding only 1.0).
    idx = torch.bucketize(confidences, boundaries, right=True) - 1
    idx = idx.clamp(0, n_bins)  # defensive; inputs are already clamped to [0, 1]
    n_buckets = n_bins + 1
    counts = torch.bincount(idx, minlength=n_buckets)
    conf_sum = torch.zeros(n_buckets, dtype=torch.float64, device=confidences.device)
    acc_sum = torch.zeros(n_buckets, dtype=torch.float64, device=confidences.device)
    conf_sum.index_add_(0, idx, confidences.to(torch.float64))
    acc_sum.index_add_(0, idx, correct.to(torch.float64))
    return boundaries, counts, conf_sum, acc_sum


def _top1(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 confidence ``[N]`` and correctness indicator ``[N]`` (in probs' dtype)."""
    confidences, predictions = probs.max(dim=-1)
    correct = (predictions == targets).to(probs.dtype)
    return confidences.clamp(0.0, 1.0), correct


def _ece_from_stats(counts: Tensor, conf_sum: Tensor, acc_sum: Tensor) -> Tensor:
    # sum_b (n_b / N) * |acc_b - conf_b| == sum_b |acc_sum_b - conf_sum_b| / N ; empty bins contribute 0.
    total = counts.sum().to(torch.float64)
    return (acc_sum - conf_sum).abs().sum() / total


@torch.no_grad()
def expected_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> Tensor:
    r"""Top-label expected calibration error (L1), binned exactly like torchmetrics.

    Matches ``torchmetrics.functional.classification.multiclass_calibration_error(..., norm="l1")``
    (torchmetrics >= 0.11 bucketize implementation), re-implemented independently.

    Definition::

        confidence_n = max_c probs[n, c]
        correct_n    = 1[argmax_c probs[n, c] == targets[n]]
        ECE          = sum_b (n_b / N) * | mean_{n in b} correct_n - mean_{n in b} confidence_n |

    over non-empty buckets ``b``.

    Binning (exact):
        ``edges = torch.linspace(0, 1, n_bins + 1)`` (in the probabilities' working dtype) and
        ``bucket = torch.bucketize(confidence, edges, right=True) - 1``.  This yields ``n_bins + 1``
        buckets:

        * bucket ``k`` for ``k = 0 .. n_bins - 1`` is the half-open interval ``[edges[k], edges[k+1])``
          -- left edge inclusive, right edge exclusive, so a confidence lying exactly on an interior
          edge goes to the *upper* bin;
        * bucket ``n_bins`` is the degenerate interval ``[1.0, 1.0]``: a confidence of exactly ``1.0``
          (common with saturated float32 softmax) is kept in its own last bucket rather than being
          merged into ``[edges[n_bins-1], 1)``.  This is what torchmetrics does (its bin arrays have
          length ``n_bins + 1``); it matters for ECE whenever the two groups are mis-calibrated in
          opposite directions.

    Args:
        probs: ``[N, C]`` class probabilities (rows sum to 1, values in ``[0, 1]``).  Not logits.
        targets: ``[N]`` integer class labels in ``[0, C)``.
        n_bins: number of equal-width confidence bins on ``[0, 1]``.

    Returns:
        0-dim tensor (probability units, in ``[0, 1]``), dtype float64, on the inputs' device.

    Raises:
        ValueError: bad shapes, non-finite / out-of-range probabilities, targets outside ``[0, C)``,
            or ``n_bins < 1``.
    """
    _check_n_bins(n_bins)
    probs = _check_probs(probs)
    targets = _check_class_targets(targets, probs.shape[0], probs.shape[1]).to(probs.device)
    confidences, correct = _top1(probs, targets)
    _, counts, conf_sum, acc_sum = _bin_statistics(confidences, correct, n_bins)
    return _ece_from_stats(counts, conf_sum, acc_sum)


@torch.no_grad()
def calibration_curve(probs: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per-bucket statistics for reliability diagrams, with the same binning as :func:`expected_calibration_error`.

    There are ``B = n_bins + 1`` buckets: ``n_bins`` half-open bins ``[k/n_bins, (k+1)/n_bins)`` plus a
    final degenerate bucket ``[1.0, 1.0]`` holding confidences of exactly 1.0 (see
    :func:`expected_calibration_error`).  ECE can be recovered exactly as
    ``nansum(count / count.sum() * |accuracy - confidence|)``.

    Args:
        probs: ``[N, C]`` class probabilities.
        targets: ``[N]`` integer class labels in ``[0, C)``.
        n_bins: number of equal-width confidence bins on ``[0, 1]``.

    Returns:
        dict of 1-D tensors of length ``B = n_bins + 1`` (on the inputs' device):

        * ``"bin_lower"``, ``"bin_upper"`` -- bucket edges (the last bucket has lower == upper == 1.0);
        * ``"confidence"`` -- mean top-1 confidence in the bucket (float64, NaN if empty);
        * ``"accuracy"`` -- fraction of correct top-1 predictions in the bucket (float64, NaN if empty);
        * ``"count"`` -- number of points in the bucket (int64).
    """
    _check_n_bins(n_bins)
    probs = _check_probs(probs)
    targets = _check_class_targets(targets, probs.shape[0], probs.shape[1]).to(probs.device)
    confidences, correct = _top1(probs, targets)
    edges, counts, conf_sum, acc_sum = _bin_statistics(confidences, correct, n_bins)
    denom = counts.to(torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=denom.device)
    nonempty = counts > 0
    one = edges[-1:]
    return {
        "bin_lower": torch.cat([edges[:-1], one]),
        "bin_upper": torch.cat([edges[1:], one]),
        "confidence": torch.where(nonempty, conf_sum / denom.clamp_min(1.0), nan),
        "accuracy": torch.where(nonempty, acc_sum / denom.clamp_min(1.0), nan),
        "count": counts,
    }


# --------------------------------------------------------------------------- #
# classification
# --------------------------------------------------------------------------- #
def _entropy_from_log_probs(log_p: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last axis from log-probabilities; 0 * log 0 := 0."""
    p = log_p.exp()
    terms = torch.where(torch.isneginf(log_p), torch.zeros_like(log_p), p * log_p)
    return -terms.sum(dim=-1)


@torch.no_grad()
def classification_metrics(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, float]:
    r"""Metrics of the Bayesian model average for classification.

    The posterior predictive is ``p(y | x_n) = (1/S) sum_s softmax(logits[s, n])``, computed in
    log space as ``log p = logsumexp_s(log_softmax(logits[s, n])) - log S`` so that tiny
    probabilities never underflow to ``log 0``.

    Args:
        logits: ``[S, N, C]`` per-posterior-sample logits (``S >= 1``, ``C >= 1``); must be finite.
            For a single deterministic model pass ``logits.unsqueeze(0)``.
        targets: ``[N]`` integer class labels in ``[0, C)``.
        n_bins: number of confidence bins for ``"ece"`` (see :func:`expected_calibration_error`).

    Returns:
        dict of Python scalars:

        * ``"accuracy"`` -- fraction with ``argmax_c p(c | x_n) == y_n``, in ``[0, 1]``;
        * ``"nll"`` -- ``mean_n -log p(y_n | x_n)`` (nats);
        * ``"ece"`` -- top-label L1 ECE of ``p`` (probability units);
        * ``"brier"`` -- ``mean_n sum_c (p(c | x_n) - 1[c == y_n])^2`` (multiclass Brier score summed
              over classes, in ``[0, 2]``);
        * ``"predictive_entropy"`` -- ``mean_n H[p(. | x_n)]`` (total uncertainty, nats);
        * ``"expected_entropy"`` -- ``mean_n mean_s H[softmax(logits[s, n])]`` (aleatoric, nats);
        * ``"mutual_information"`` -- ``predictive_entropy - expected_entropy`` (epistemic / BALD, nats;
              >= 0 up to round-off, exactly 0 when ``S == 1``);
        * ``"num_samples"`` -- ``S`` (an ``int``).

    Raises:
        ValueError: wrong dimensionality / mismatched shapes, empty inputs, non-finite logits,
            non-integer targets or targets outside ``[0, C)``, ``n_bins < 1``.
    """
    _check_n_bins(n_bins)
    logits = _check_tensor(logits, "logits")
    _check_floating(logits, "logits")
    if logits.dim() != 3:
        raise ValueError(
            f"`logits` must have shape [S, N, C], got shape {tuple(logits.shape)} "
            "(use logits.unsqueeze(0) for a single model)"
        )
    s, n, c = logits.shape
    if s == 0 or n == 0 or c == 0:
        raise ValueError(f"`logits` must be non-empty in every dimension, got shape {tuple(logits.shape)}")
    logits = logits.to(_working_dtype(logits))
    _check_finite(logits, "logits")
    targets = _check_class_targets(targets, n, c).to(logits.device)

    log_probs_s = torch.log_softmax(logits, dim=-1)  # [S, N, C]
    log_p = torch.logsumexp(log_probs_s, dim=0) - math.log(s)  # [N, C]
    p = log_p.exp()

    # Accuracy / NLL / Brier of the model average.
    pred = log_p.argmax(dim=-1)
    accuracy = (pred == targets).to(log_p.dtype).mean()
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1).mean()
    onehot = torch.nn.functional.one_hot(targets, num_classes=c).to(p.dtype)
    brier = (p - onehot).pow(2).sum(dim=-1).mean()

    # Uncertainty decomposition (per point, then averaged).
    h_pred = _entropy_from_log_probs(log_p)  # [N]
    h_exp = _entropy_from_log_probs(log_probs_s).mean(dim=0)  # [N]
    predictive_entropy = h_pred.mean()
    expected_entropy = h_exp.mean()
    mutual_information = (h_pred - h_exp).mean()

    # ECE on the predictive probabilities (same binning as expected_calibration_error).
    confidences, correct = _top1(p, targets)
    _, counts, conf_sum, acc_sum = _bin_statistics(confidences, correct, n_bins)
    ece = _ece_from_stats(counts, conf_sum, acc_sum)

    values = torch.stack(
        [
            t.to(torch.float64)
            for t in (accuracy, nll, ece, brier, predictive_entropy, expected_entropy, mutual_information)
        ]
    ).tolist()  # single host sync
    keys = ("accuracy", "nll", "ece", "brier", "predictive_entropy", "expected_entropy", "mutual_information")
    out: dict[str, float] = dict(zip(keys, (float(v) for v in values)))
    out["num_samples"] = s
    return out


# --------------------------------------------------------------------------- #
# regression
# --------------------------------------------------------------------------- #
@torch.no_grad()
def regression_metrics(mean_samples: Tensor, targets: Tensor, noise_scale: Tensor | float) -> dict[str, float]:
    r"""Metrics of the Gaussian-mixture posterior predictive for regression.

    The predictive for point ``n`` is the equal-weight mixture over posterior samples
    ``p(y_n) = (1/S) sum_s prod_d Normal(y_nd; mean_samples[s, n, d], noise_scale[s, n, d])``.
    Note the mixture is over *joint* ``D``-dimensional components (one posterior sample drives all
    output dimensions), not a product of per-dimension mixtures; for ``D == 1`` the two coincide.

    Args:
        mean_samples: ``[S, N, D]`` per-posterior-sample predicted means (``[S, N]`` is accepted
            together with ``targets`` of shape ``[N]`` and treated as ``D = 1``).
        targets: ``[N, D]`` observed values (same units as the means).
        noise_scale: observation-noise **standard deviation** (not variance), > 0; a Python float or a
            tensor broadcastable to ``[S, N, D]`` (e.g. scalar, ``[D]``, ``[N, D]`` or ``[S, 1, 1]``
            for per-sample homoscedastic noise).

    Returns:
        dict of Python scalars:

        * ``"rmse"`` -- ``sqrt(mean_{n,d} (ybar_nd - y_nd)^2)`` with ``ybar = mean_s mean_samples``
              (target units);
        * ``"mse"`` -- the square of ``rmse`` (target units squared);
        * ``"nll"`` -- ``mean_n -log p(y_n)`` of the mixture, via
              ``logsumexp_s sum_d log Normal(...) - log S`` (nats per data point, summed over ``D``);
        * ``"gaussian_nll"`` -- same, but for the moment-matched Gaussian with per-dimension variance
              ``var_nd = mean_s noise_snd^2 + var_s(mean_snd)`` (population variance, i.e. divided by
              ``S``; equals ``noise^2 + var_s(mean)`` for sample-independent noise).  Nats, summed over
              ``D``, averaged over ``N``;
        * ``"predictive_std"`` -- ``mean_{n,d} sqrt(var_nd)`` (target units);
        * ``"num_samples"`` -- ``S`` (an ``int``).

    Raises:
        ValueError: wrong dimensionality / mismatched shapes, empty or non-finite inputs, a
            non-positive or non-broadcastable ``noise_scale``.
    """
    mean_samples = _check_tensor(mean_samples, "mean_samples")
    targets = _check_tensor(targets, "targets")
    _check_floating(mean_samples, "mean_samples")
    if mean_samples.dim() == 2 and targets.dim() == 1:
        mean_samples = mean_samples.unsqueeze(-1)
        targets = targets.unsqueeze(-1)
    if mean_samples.dim() != 3:
        raise ValueError(f"`mean_samples` must have shape [S, N, D], got shape {tuple(mean_samples.shape)}")
    s, n, d = mean_samples.shape
    if s == 0 or n == 0 or d == 0:
        raise ValueError(f"`mean_samples` must be non-empty in every dimension, got shape {tuple(mean_samples.shape)}")
    if tuple(targets.shape) != (n, d):
        raise ValueError(
            f"`targets` has shape {tuple(targets.shape)}, expected ({n}, {d}) to match "
            f"`mean_samples` of shape {tuple(mean_samples.shape)}"
        )
    if targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"`targets` must be a real-valued tensor, got dtype {targets.dtype}")

    dtype = _working_dtype(mean_samples)
    device = mean_samples.device
    mean_samples = mean_samples.to(dtype)
    targets = targets.to(device=device, dtype=dtype)
    _check_finite(mean_samples, "mean_samples")
    _check_finite(targets, "targets")

    if isinstance(noise_scale, Tensor):
        sigma = noise_scale.to(device=device, dtype=dtype)
    elif isinstance(noise_scale, (int, float)) and not isinstance(noise_scale, bool):
        sigma = torch.tensor(float(noise_scale), device=device, dtype=dtype)
    else:
        raise TypeError(f"`noise_scale` must be a float or a tensor, got {type(noise_scale).__name__}")
    try:
        sigma = torch.broadcast_to(sigma, (s, n, d))
    except RuntimeError as exc:
        raise ValueError(
            f"`noise_scale` of shape {tuple(sigma.shape)} is not broadcastable to [S, N, D] = {(s, n, d)}"
        ) from exc
    _check_finite(sigma, "noise_scale")
    if not bool((sigma > 0).all()):
        raise ValueError(
            f"`noise_scale` must be strictly positive (a standard deviation); min is {float(sigma.min()):.6g}"
        )

    # Predictive mean / point-estimate errors.
    mean_pred = mean_samples.mean(dim=0)  # [N, D]
    mse = (mean_pred - targets).pow(2).mean()
    rmse = mse.sqrt()

    # Exact mixture NLL: log N(y; m, sigma) = -0.5 * ((y - m)/sigma)^2 - log sigma - 0.5 log(2 pi).
    z = (targets.unsqueeze(0) - mean_samples) / sigma  # [S, N, D]
    log_comp = (-0.5 * z.pow(2) - sigma.log() - 0.5 * math.log(2.0 * math.pi)).sum(dim=-1)  # [S, N]
    log_mix = torch.logsumexp(log_comp, dim=0) - math.log(s)  # [N]
    nll = -log_mix.mean()

    # Moment-matched Gaussian.
    var = sigma.pow(2).mean(dim=0) + mean_samples.var(dim=0, unbiased=False)  # [N, D]
    gaussian_nll = (0.5 * (targets - mean_pred).pow(2) / var + 0.5 * var.log() + 0.5 * math.log(2.0 * math.pi)).sum(
        dim=-1
    ).mean()
    predictive_std = var.sqrt().mean()

    values = torch.stack([t.to(torch.float64) for t in (rmse, mse, nll, gaussian_nll, predictive_std)]).tolist()
    keys = ("rmse", "mse", "nll", "gaussian_nll", "predictive_std")
    out: dict[str, float] = dict(zip(keys, (float(v) for v in values)))
    out["num_samples"] = s
    return out


# --------------------------------------------------------------------------- #
# temperature scaling
# --------------------------------------------------------------------------- #
#: The range of temperatures :func:`fit_temperature` searches (both ends included).
TEMPERATURE_BOUNDS = (0.05, 20.0)


@torch.no_grad()
def fit_temperature(logits: Tensor, targets: Tensor, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    iterations: int = 60) -> float:
    r"""Temperature scaling (Guo, Pleiss, Sun & Weinberger 2017): the temperature ``tau`` in
    ``bounds`` that minimizes the mean NLL of ``softmax(logits / tau)`` against ``targets``.

    The mean NLL ``L(b) = mean_i [logsumexp(b z_i) - b z_{i, y_i}]`` is convex in the inverse
    temperature ``b = 1 / tau``, with derivative ``mean_i [E_{softmax(b z_i)}[z_i] - z_{i, y_i}]``
    (increasing in ``b``); the minimizer is found by bisection on that derivative over
    ``[1 / bounds[1], 1 / bounds[0]]``, so the result is deterministic and needs no learning rate.
    When the NLL still falls at an end of the range (e.g. logits that rank every target first:
    the NLL decreases without bound as ``tau -> 0``) that end is returned.

    Args:
        logits: ``[N, C]`` unnormalized log-probabilities of one network (not posterior samples).
        targets: ``[N]`` integer class indices in ``[0, C)``.
        bounds: ``(lowest, highest)`` temperature, ``0 < lowest < highest``.
        iterations: bisection steps (60 halve the range to float64 precision).

    Returns:
        The temperature (a Python float, ``> 0``; 1 leaves the logits as they are).

    Raises:
        ValueError: bad shapes, non-finite logits, labels out of range, bad bounds.
    """
    logits = _check_tensor(logits, "logits")
    _check_floating(logits, "logits")
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"`logits` must have shape [N, C] with N >= 1, got {tuple(logits.shape)}")
    _check_finite(logits, "logits")
    targets = _check_class_targets(targets, logits.shape[0], logits.shape[1]).to(logits.device)
    lo_t, hi_t = (float(b) for b in bounds)
    if not (math.isfinite(lo_t) and math.isfinite(hi_t) and 0 < lo_t < hi_t):
        raise ValueError(f"`bounds` must be (lowest, highest) temperatures with 0 < lowest < highest, got {bounds!r}")
    z = logits.double()
    z_y = z.gather(1, targets[:, None]).squeeze(1)

    def slope(b: Tensor) -> Tensor:  # dL/db at inverse temperature b
        return ((b * z).softmax(-1) * z).sum(-1).sub(z_y).mean()

    lo = torch.tensor(1.0 / hi_t, dtype=torch.float64, device=z.device)
    hi = torch.tensor(1.0 / lo_t, dtype=torch.float64, device=z.device)
    ends = torch.stack([slope(lo), slope(hi)]).tolist()
    if ends[0] >= 0:  # the NLL rises from the lowest b on: the highest temperature
        return hi_t
    if ends[1] <= 0:  # still falling at the highest b: the lowest temperature
        return lo_t
    for _ in range(iterations):  # on the device; one host sync at the end
        mid = (lo + hi) / 2
        rising = slope(mid) > 0
        hi = torch.where(rising, mid, hi)
        lo = torch.where(rising, lo, mid)
    return float(2.0 / (lo + hi))
