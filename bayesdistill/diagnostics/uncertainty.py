r"""Does a model know what it does not know? Out-of-distribution detection and selective prediction.

>>> res = bd.diagnostics.ood_detection(bnn, oodset.data.test, oodset.ood, num_samples=32)
>>> res["mutual_information"].auroc     # P(an OOD input scores higher than an in-distribution one)
>>> sel = bd.diagnostics.selective_prediction(bnn, data.test)
>>> sel.aurc, sel.accuracy_at[0.9]      # area under the risk-coverage curve; accuracy at 90% coverage
>>> bd.plots.ood(res); bd.plots.selective({"teacher": sel, "student": sel_s})
>>> res.to_dict(); sel.to_dict()        # plain numbers, e.g. for metrics.json

Both work on the **posterior predictive** of a :class:`~bayesdistill.BNN`, p(y | x) = (1/S)
sum_s softmax(f(x; w_s)) with S weight draws w_s ~ q(w), and on a deterministic
``nn.Module`` (a point estimate: S = 1, so the mutual information is exactly 0). Precomputed
per-draw probabilities go to :meth:`OODResult.from_probs` / :meth:`SelectiveResult.from_probs`.

Uncertainty scores of an input x (all computed from the same S draws):

=========================  ==============================================  ===========  =============
score                      definition                                      units        OOD when
=========================  ==============================================  ===========  =============
``"entropy"``              H[p(. | x)], the predictive entropy (total)     nats         higher
``"mutual_information"``   H[p(. | x)] - (1/S) sum_s H[p(. | x, w_s)]      nats         higher
                           (epistemic part, BALD; 0 for S = 1)
``"max_probability"``      max_c p(c | x), the top-1 predictive probability probability  lower
=========================  ==============================================  ===========  =============

**OOD detection** (:func:`ood_detection`): the OOD inputs are the **positive** class and each
score is oriented so that higher means "more likely OOD" (``max_probability`` enters as minus
itself). AUROC: the area under the ROC curve, P(score(OOD) > score(in)) + 1/2 P(tie) (0.5 = no
better than chance, 1 = perfect). AUPR: average precision with OOD positive, sum_n (R_n -
R_{n-1}) P_n over the distinct score thresholds (scikit-learn's ``average_precision_score``;
its chance level is the OOD fraction M / (N + M)); ``aupr_in`` is the same with the
in-distribution inputs positive and the score negated. FPR at 95% TPR: the fraction of
in-distribution inputs flagged when the threshold catches 95% of the OOD ones. Ties in a score
are one threshold (as in scikit-learn).

**Selective prediction** (:func:`selective_prediction`): the model answers only its most
confident inputs (confidence = ``max_probability``, or minus the entropy / mutual
information) and abstains on the rest. For k = 1..N: coverage k / N and the accuracy of the k
most confident answers (the accuracy-coverage curve), risk = 1 - accuracy (the 0-1 risk, the
risk-coverage curve). Tied confidences are taken in random order, in expectation: within a
group of m tied inputs holding e errors, the first j of them hold j e / m errors. AURC =
(1/N) sum_k risk(k), the area under the risk-coverage curve (Geifman et al., 2019; lower is
better); the area under the accuracy-coverage curve is 1 - AURC (higher is better).
``aurc_optimal``: the AURC of a perfect ranking (all correct answers first) at the same error
rate; ``e_aurc`` = AURC - aurc_optimal (the excess due to the ranking). Accuracy at coverage c:
the accuracy of the ceil(c N) most confident inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = [
    "SCORES",
    "OODScore",
    "OODResult",
    "SelectiveResult",
    "ood_detection",
    "selective_prediction",
    "uncertainty_scores",
    "roc_auc",
    "roc_curve",
    "average_precision",
    "DEFAULT_COVERAGES",
]

#: The uncertainty scores and whether a higher value means "more likely out of distribution".
SCORES: dict[str, bool] = {"entropy": True, "mutual_information": True, "max_probability": False}
#: Coverages at which :func:`selective_prediction` reports the accuracy.
DEFAULT_COVERAGES = (0.5, 0.8, 0.9, 0.95)
_UNITS = {"entropy": "nats", "mutual_information": "nats", "max_probability": "probability"}


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- binary ranking metrics
def _binary(labels: Any, scores: Any) -> tuple[Tensor, Tensor]:
    labels = torch.as_tensor(labels).reshape(-1)
    scores = torch.as_tensor(scores).reshape(-1).detach().double().cpu()
    if labels.dtype == torch.bool:
        labels = labels.long()
    labels = labels.cpu()
    if labels.numel() != scores.numel():
        raise ValueError(f"{labels.numel()} labels but {scores.numel()} scores")
    if labels.numel() == 0:
        raise ValueError("no examples")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"scores contain {int((~torch.isfinite(scores)).sum())} non-finite value(s)")
    npos = int(labels.sum())
    if npos == 0 or npos == labels.numel():
        raise ValueError("ranking metrics need both positive and negative examples")
    return labels.double(), scores


def _cumulative_counts(labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """True and false positives at each distinct threshold, highest first: ``(tps, fps, thresholds)``;
    a threshold t flags every example with score >= t (ties flagged together)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    last = torch.cat([torch.nonzero(s[1:] != s[:-1]).reshape(-1), torch.tensor([len(s) - 1])])
    tps = torch.cumsum(y, 0)[last]
    fps = (last + 1).double() - tps
    return tps, fps, s[last]


def roc_curve(labels: Any, scores: Any) -> tuple[Tensor, Tensor, Tensor]:
    """The ROC curve of ``scores`` (higher = positive) for binary ``labels`` (1 = positive).

    Returns float64 tensors ``(fpr, tpr, thresholds)``, starting at (0, 0) (threshold +inf)
    and ending at (1, 1), one point per distinct score value (as scikit-learn's ``roc_curve``
    with ``drop_intermediate=False``).
    """
    labels, scores = _binary(labels, scores)
    tps, fps, thr = _cumulative_counts(labels, scores)
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, fps / fps[-1]])
    tpr = torch.cat([zero, tps / tps[-1]])
    return fpr, tpr, torch.cat([torch.tensor([math.inf], dtype=torch.float64), thr])


def roc_auc(labels: Any, scores: Any) -> float:
    """The area under the ROC curve (trapezoidal, so a tie between a positive and a negative
    counts 1/2): equals ``sklearn.metrics.roc_auc_score(labels, scores)``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(torch.trapezoid(tpr, fpr))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision (the area under the precision-recall curve without interpolation):
    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds; equals
    ``sklearn.metrics.average_precision_score(labels, scores)``."""
    labels, scores = _binary(labels, scores)
    tps, fps, _ = _cumulative_counts(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    delta = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((delta * precision).sum())


def _fpr_at_tpr(labels: Tensor, scores: Tensor, level: float = 0.95) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    reach = torch.nonzero(tpr >= level - 1e-12).reshape(-1)
    return float(fpr[reach[0]])


# --------------------------------------------------------------------------- scores from probabilities
def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last axis; 0 log 0 := 0."""
    return -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(-1)


def _check_per_draw_probs(probs: Any, what: str) -> Tensor:
    """``[S, N, C]`` (or ``[N, C]``: S = 1) probabilities as float64."""
    if not torch.is_tensor(probs):
        raise TypeError(f"{what} must be a tensor of probabilities [S, N, C] or [N, C], got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {probs.dtype}")
    p = probs.detach().double()
    if p.dim() == 2:
        p = p.unsqueeze(0)
    if p.dim() != 3 or min(p.shape) == 0:
        raise ValueError(f"{what} must have shape [S, N, C] (per posterior draw) or [N, C], got {tuple(probs.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{what} contains non-finite values")
    if float(p.min()) < -1e-6 or float(p.max()) > 1 + 1e-6:
        raise ValueError(f"{what} must hold probabilities in [0, 1] (softmax outputs, not logits)")
    dev = float((p.sum(-1) - 1).abs().max())
    if dev > 1e-3:
        raise ValueError(f"the rows of {what} must sum to 1 (largest deviation {dev:.3g}): pass softmax outputs")
    return p.clamp(0.0, 1.0)


def uncertainty_scores(probs: Tensor) -> dict[str, Tensor]:
    """Per-input uncertainty scores of per-draw probabilities ``probs`` ``[S, N, C]`` (or ``[N, C]``,
    a point estimate): ``entropy`` (nats), ``expected_entropy`` (nats, the aleatoric part),
    ``mutual_information`` (nats, entropy - expected entropy, clamped at 0 against round-off;
    exactly 0 for S = 1), ``max_probability``, and ``prediction`` (the predictive's argmax);
    float64 / int64 tensors ``[N]`` on the inputs' device."""
    p = _check_per_draw_probs(probs, "probs")
    mean = p.mean(0)
    h = _entropy(mean)
    h_exp = _entropy(p).mean(0)
    mi = (h - h_exp).clamp_min(0.0) if p.shape[0] > 1 else torch.zeros_like(h)
    top, pred = mean.max(-1)
    return {"entropy": h, "expected_entropy": h_exp, "mutual_information": mi, "max_probability": top,
            "prediction": pred}


def _check_scores(scores: Any) -> tuple[str, ...]:
    if isinstance(scores, str):
        scores = (scores,)
    scores = tuple(scores)
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise ValueError(f"unknown uncertainty score(s) {unknown}; choose from {list(SCORES)}")
    return tuple(dict.fromkeys(scores))


# --------------------------------------------------------------------------- OOD detection
@dataclass
class OODScore:
    """One score's separation of in-distribution from OOD inputs (OOD = the positive class).

    Attributes:
        name: ``"entropy"``, ``"mutual_information"`` or ``"max_probability"``.
        in_values, ood_values: float64 CPU tensors, the score of each in-distribution and each
            OOD input, in the score's own units and sign (a max probability is a probability).
        higher_is_ood: whether a higher value means "more likely OOD" (False for
            ``max_probability``, which is negated for the ranking metrics).
        auroc: area under the ROC curve (0.5 = chance).
        aupr: average precision with OOD positive (chance: the OOD fraction).
        aupr_in: average precision with the in-distribution inputs positive (score negated).
        fpr_at_95_tpr: the fraction of in-distribution inputs flagged at the threshold that
            flags 95% of the OOD inputs.
    """

    name: str
    in_values: Tensor
    ood_values: Tensor
    higher_is_ood: bool
    auroc: float
    aupr: float
    aupr_in: float
    fpr_at_95_tpr: float

    @classmethod
    def from_values(cls, name: str, in_values: Tensor, ood_values: Tensor,
                    higher_is_ood: Optional[bool] = None) -> "OODScore":
        """The metrics of given score values (``higher_is_ood`` defaults to the score's own)."""
        if higher_is_ood is None:
            if name not in SCORES:
                raise ValueError(f"OODScore {name!r}: pass higher_is_ood for a score not in {list(SCORES)}")
            higher_is_ood = SCORES[name]
        a = torch.as_tensor(in_values).detach().reshape(-1).double().cpu()
        b = torch.as_tensor(ood_values).detach().reshape(-1).double().cpu()
        labels, ranked = cls._ranking(a, b, higher_is_ood)
        return cls(name=name, in_values=a, ood_values=b, higher_is_ood=bool(higher_is_ood),
                   auroc=roc_auc(labels, ranked), aupr=average_precision(labels, ranked),
                   aupr_in=average_precision(1 - labels, -ranked), fpr_at_95_tpr=_fpr_at_tpr(labels, ranked))

    @staticmethod
    def _ranking(a: Tensor, b: Tensor, higher_is_ood: bool) -> tuple[Tensor, Tensor]:
        if a.numel() == 0 or b.numel() == 0:
            raise ValueError(f"OOD detection needs in-distribution and OOD inputs; got {a.numel()} and {b.numel()}")
        labels = torch.cat([torch.zeros(a.numel()), torch.ones(b.numel())]).double()
        ranked = torch.cat([a, b])
        return labels, (ranked if higher_is_ood else -ranked)

    @property
    def units(self) -> str:
        return _UNITS.get(self.name, "score units")

    def roc_curve(self) -> tuple[Tensor, Tensor]:
        """``(fpr, tpr)`` of the ROC curve (OOD positive), float64 CPU tensors from (0, 0) to (1, 1)."""
        labels, ranked = self._ranking(self.in_values, self.ood_values, self.higher_is_ood)
        fpr, tpr, _ = roc_curve(labels, ranked)
        return fpr, tpr

    def to_dict(self) -> dict[str, Any]:
        """``auroc``, ``aupr``, ``aupr_in``, ``fpr_at_95_tpr``, the mean score on each set and the
        orientation (NaN as ``None``)."""
        return {"auroc": self.auroc, "aupr": self.aupr, "aupr_in": self.aupr_in, "fpr_at_95_tpr": self.fpr_at_95_tpr,
                "mean_in": _finite_or_none(float(self.in_values.mean())),
                "mean_ood": _finite_or_none(float(self.ood_values.mean())),
                "higher_is_ood": self.higher_is_ood, "units": self.units}


@dataclass
class OODResult:
    """OOD detection by a model's uncertainty scores (see the module docstring).

    Attributes:
        scores: score name -> :class:`OODScore`, in the order asked for.
        num_in, num_ood: N in-distribution and M OOD inputs scored.
        num_samples: S, the posterior draws of the predictive (1 for a point estimate;
            ``None`` when given probabilities of unknown origin).
        seed: seed of the draws (``None``: fresh draws or given probabilities).
        name: the model's name (for plots overlaying several models), or ``None``.
        in_accuracy: top-1 accuracy of the predictive on the in-distribution inputs when they
            were labelled, else ``None``.
    """

    scores: dict[str, OODScore]
    num_in: int
    num_ood: int
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    name: Optional[str] = None
    in_accuracy: Optional[float] = None

    def __getitem__(self, score: str) -> OODScore:
        return self.scores[score]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def auroc(self) -> dict[str, float]:
        """score name -> AUROC."""
        return {k: s.auroc for k, s in self.scores.items()}

    @classmethod
    def from_probs(cls, in_probs: Tensor, ood_probs: Tensor, *, scores: Sequence[str] = tuple(SCORES),
                   in_targets: Optional[Tensor] = None, num_samples: Optional[int] = None,
                   seed: Optional[int] = None, name: Optional[str] = None) -> "OODResult":
        """OOD detection from per-draw class probabilities: ``in_probs`` ``[S, N, C]`` and
        ``ood_probs`` ``[S, M, C]`` (the same S draws; ``[N, C]`` / ``[M, C]`` for a point
        estimate, whose mutual information is 0). ``in_targets`` (optional, ``[N]``) adds the
        in-distribution accuracy.

        Raises:
            ValueError: not probabilities, mismatched S or C, an unknown score, an empty set.
            TypeError: not tensors.
        """
        names = _check_scores(scores)
        a, b = _check_per_draw_probs(in_probs, "in_probs"), _check_per_draw_probs(ood_probs, "ood_probs")
        if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
            raise ValueError(f"in_probs {tuple(a.shape)} and ood_probs {tuple(b.shape)} must share S and C")
        sa, sb = uncertainty_scores(a), uncertainty_scores(b)
        acc = None
        if in_targets is not None:
            t = torch.as_tensor(in_targets).reshape(-1).to(sa["prediction"].device)
            if t.numel() != a.shape[1]:
                raise ValueError(f"in_targets has {t.numel()} labels for {a.shape[1]} inputs")
            acc = float((sa["prediction"] == t.long()).double().mean())
        return cls(scores={k: OODScore.from_values(k, sa[k], sb[k]) for k in names}, num_in=int(a.shape[1]),
                   num_ood=int(b.shape[1]), num_samples=num_samples if num_samples is not None else int(a.shape[0]),
                   seed=seed, name=name, in_accuracy=acc)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers: ``name``, ``num_in``, ``num_ood``, ``num_samples``, ``seed``,
        ``in_accuracy`` and ``scores``: score -> :meth:`OODScore.to_dict`."""
        return {"name": self.name, "num_in": self.num_in, "num_ood": self.num_ood, "num_samples": self.num_samples,
                "seed": self.seed, "in_accuracy": self.in_accuracy,
                "scores": {k: s.to_dict() for k, s in self.scores.items()}}


# --------------------------------------------------------------------------- selective prediction
@dataclass
class SelectiveResult:
    """Selective prediction: accuracy and risk of the k most confident answers, k = 1..N.

    Attributes:
        score: the uncertainty score that ranks the inputs (``"max_probability"``: most
            probable first; ``"entropy"`` / ``"mutual_information"``: lowest first).
        num_examples: N.
        num_samples, seed, name: as in :class:`OODResult`.
        accuracy: the accuracy at full coverage (of all N answers).
        coverage: ``[k / N for k = 1..N]``.
        selective_accuracy: the accuracy of the k most confident answers (ties in expectation
            over their order), per coverage.
        risk: ``1 - selective_accuracy`` (the 0-1 selective risk).
        aurc: the mean of ``risk`` over k = 1..N: the area under the risk-coverage curve.
        area_accuracy: ``1 - aurc``: the area under the accuracy-coverage curve.
        aurc_optimal: the AURC of a perfect ranking at the same error rate.
        e_aurc: ``aurc - aurc_optimal``.
        accuracy_at: coverage c -> accuracy of the ceil(c N) most confident answers.
    """

    score: str
    num_examples: int
    accuracy: float
    coverage: list[float]
    selective_accuracy: list[float]
    risk: list[float]
    aurc: float
    area_accuracy: float
    aurc_optimal: float
    e_aurc: float
    accuracy_at: dict[float, float] = field(default_factory=dict)
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    name: Optional[str] = None

    @classmethod
    def from_correct(cls, confidence: Tensor, correct: Tensor, *, score: str = "max_probability",
                     coverages: Sequence[float] = DEFAULT_COVERAGES, num_samples: Optional[int] = None,
                     seed: Optional[int] = None, name: Optional[str] = None) -> "SelectiveResult":
        """The curves from a confidence per input (higher = answered first) and whether the
        answer is correct (``[N]`` each)."""
        conf = torch.as_tensor(confidence).detach().reshape(-1).double().cpu()
        ok = torch.as_tensor(correct).detach().reshape(-1).double().cpu()
        n = conf.numel()
        if n == 0 or ok.numel() != n:
            raise ValueError(f"selective prediction needs one confidence per answer; got {n} and {ok.numel()}")
        if not bool(torch.isfinite(conf).all()):
            raise ValueError("confidences contain non-finite values")
        cov = [float(c) for c in coverages]
        if not all(0.0 < c <= 1.0 for c in cov):
            raise ValueError(f"coverages must lie in (0, 1], got {cov}")
        order = torch.argsort(conf, descending=True, stable=True)
        c, err = conf[order], 1.0 - ok[order]
        # groups of tied confidences: their errors are spread evenly over the group's positions
        new = torch.cat([torch.ones(1, dtype=torch.bool), c[1:] != c[:-1]])
        group = torch.cumsum(new.long(), 0) - 1
        sizes = torch.bincount(group).double()
        errs = torch.zeros(len(sizes), dtype=torch.float64).index_add_(0, group, err)
        before = torch.cumsum(errs, 0) - errs  # errors of the groups ranked higher
        start = torch.cumsum(sizes, 0) - sizes  # examples of the groups ranked higher
        k = torch.arange(1, n + 1, dtype=torch.float64)
        errors_k = before[group] + (k - start[group]) * errs[group] / sizes[group]
        risk = errors_k / k
        num_err = float(err.sum())
        optimal = (k - (n - num_err)).clamp_min(0.0) / k
        aurc, aurc_opt = float(risk.mean()), float(optimal.mean())
        at = {}
        for cv in cov:
            idx = max(1, math.ceil(cv * n - 1e-9)) - 1
            at[cv] = 1.0 - float(risk[idx])
        return cls(score=score, num_examples=n, accuracy=1.0 - num_err / n, coverage=(k / n).tolist(),
                   selective_accuracy=(1.0 - risk).tolist(), risk=risk.tolist(), aurc=aurc, area_accuracy=1.0 - aurc,
                   aurc_optimal=aurc_opt, e_aurc=aurc - aurc_opt, accuracy_at=at, num_samples=num_samples,
                   seed=seed, name=name)

    @classmethod
    def from_probs(cls, probs: Tensor, targets: Tensor, *, score: str = "max_probability",
                   coverages: Sequence[float] = DEFAULT_COVERAGES, num_samples: Optional[int] = None,
                   seed: Optional[int] = None, name: Optional[str] = None) -> "SelectiveResult":
        """Selective prediction from per-draw class probabilities ``probs`` ``[S, N, C]`` (or
        ``[N, C]``) and integer labels ``targets`` ``[N]``; the answer is the predictive's argmax.

        Raises:
            ValueError: not probabilities, labels that do not fit, an unknown score.
        """
        (score,) = _check_scores(score)
        p = _check_per_draw_probs(probs, "probs")
        t = torch.as_tensor(targets).reshape(-1)
        if t.is_floating_point() or t.numel() != p.shape[1]:
            raise ValueError(f"targets must be {p.shape[1]} integer class labels, got shape {tuple(t.shape)} "
                             f"and dtype {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) >= p.shape[2]:
            raise ValueError(f"targets must lie in [0, {p.shape[2]})")
        u = uncertainty_scores(p)
        conf = u[score] if not SCORES[score] else -u[score]
        correct = u["prediction"].cpu() == t.long().cpu()
        return cls.from_correct(conf, correct, score=score, coverages=coverages,
                                num_samples=num_samples if num_samples is not None else int(p.shape[0]),
                                seed=seed, name=name)

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """Plain numbers: ``name``, ``score``, ``num_examples``, ``num_samples``, ``seed``,
        ``accuracy``, ``aurc``, ``area_accuracy``, ``aurc_optimal``, ``e_aurc``, ``accuracy_at``
        (keys are the coverages as strings); with ``curves=True`` also ``coverage``,
        ``selective_accuracy`` and ``risk``."""
        out: dict[str, Any] = {"name": self.name, "score": self.score, "num_examples": self.num_examples,
                               "num_samples": self.num_samples, "seed": self.seed, "accuracy": self.accuracy,
                               "aurc": self.aurc, "area_accuracy": self.area_accuracy,
                               "aurc_optimal": self.aurc_optimal, "e_aurc": self.e_aurc,
                               "accuracy_at": {f"{c:g}": v for c, v in self.accuracy_at.items()}}
        if curves:
            out.update(coverage=list(self.coverage), selective_accuracy=list(self.selective_accuracy),
                       risk=list(self.risk))
        return out


# --------------------------------------------------------------------------- from models and data
def _inputs_targets(data: Any, what: str) -> tuple[Any, Optional[Tensor]]:
    """``(inputs, targets or None)`` of a tensor, an ``(x,)`` / ``(x, y)`` tuple, a Dataset or a DataLoader."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if torch.is_tensor(data):
        return data, None
    if isinstance(data, (tuple, list)) and 1 <= len(data) <= 2 and all(torch.is_tensor(t) for t in data):
        return data[0], (data[1] if len(data) == 2 else None)
    if isinstance(data, TensorDataset):
        return data.tensors[0], (data.tensors[1] if len(data.tensors) > 1 else None)
    if isinstance(data, (Dataset, DataLoader)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=1024, shuffle=False)
        xs, ys = [], []
        for batch in loader:
            if torch.is_tensor(batch):
                xs.append(batch)
            else:
                xs.append(batch[0])
                if len(batch) > 1:
                    ys.append(batch[1])
        if not xs:
            raise ValueError(f"{what} is empty")
        return torch.cat(xs), (torch.cat(ys) if ys and len(ys) == len(xs) else None)
    raise TypeError(f"{what} must be a tensor, an (x, y) tuple, a Dataset or a DataLoader, got {type(data).__name__}")


@torch.no_grad()
def _per_draw_probs(model: Any, data: Any, num_samples: int, seed: Optional[int], batch_size: int,
                    what: str) -> tuple[Tensor, Optional[Tensor], int]:
    """``(probs [S, N, C] float64, targets or None, S)`` of a BNN (S posterior draws, the same for
    every batch) or a deterministic ``nn.Module`` (S = 1), on the model's device."""
    from ..bnn.likelihoods import Categorical
    from ..bnn.network import BNN
    from ..infer.predictive import predict

    x, y = _inputs_targets(data, what)
    if isinstance(model, BNN):
        if not isinstance(model.likelihood, Categorical):
            raise TypeError(f"OOD detection and selective prediction need a classifier (Categorical likelihood); "
                            f"the BNN has {type(model.likelihood).__name__}")
        logits, _ = predict(model, (x,), num_samples=num_samples, batch_size=batch_size, seed=seed)
        s = int(logits.shape[0])
    elif isinstance(model, torch.nn.Module):
        try:
            device = next(iter(model.parameters())).device
        except StopIteration:
            device = x.device
        was = model.training
        model.eval()
        try:
            logits = torch.cat([model(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
        finally:
            model.train(was)
        logits, s = logits.unsqueeze(0), 1
    else:
        raise TypeError(f"expected a bd.BNN or an nn.Module (a point estimate), got {type(model).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"the model's outputs must be logits [N, C]; got shape {tuple(logits.shape[1:])} per draw")
    return torch.softmax(logits.double(), dim=-1), y, s


def ood_detection(model: Any, in_data: Any, ood_data: Any, *, num_samples: int = 32, seed: Optional[int] = 0,
                  scores: Sequence[str] = tuple(SCORES), name: Optional[str] = None,
                  batch_size: int = 1024) -> OODResult:
    """How well ``model``'s uncertainty scores tell ``ood_data`` from ``in_data`` (OOD positive).

    Args:
        model: a trained classifier :class:`~bayesdistill.BNN` (its posterior predictive with
            ``num_samples`` draws; with a ``seed``, the same draws for both sets), or an
            ``nn.Module`` returning logits (a point estimate: S = 1, mutual information 0).
        in_data: in-distribution inputs: a tensor, an ``(x, y)`` tuple, a Dataset or a
            DataLoader; labels, if present, give :attr:`OODResult.in_accuracy`.
        ood_data: OOD inputs, in the same forms (labels ignored).
        num_samples: posterior draws S (BNN only).
        seed: seed of the draws (``None``: fresh draws, different for the two sets).
        scores: any of ``"entropy"``, ``"mutual_information"``, ``"max_probability"``.
        name: the model's name in the result (for plots and tables).
        batch_size: inputs per forward pass.

    Returns:
        An :class:`OODResult`.

    Raises:
        TypeError: a model that is neither a BNN nor an ``nn.Module``, a regression BNN, data
            in an unknown form.
        ValueError: an unknown score, an empty set.
    """
    names = _check_scores(scores)
    pa, ya, s = _per_draw_probs(model, in_data, num_samples, seed, batch_size, "in_data")
    pb, _, _ = _per_draw_probs(model, ood_data, num_samples, seed, batch_size, "ood_data")
    return OODResult.from_probs(pa, pb, scores=names, in_targets=ya, num_samples=s,
                                seed=seed if s > 1 else None, name=name)


def selective_prediction(model: Any, data: Any, *, num_samples: int = 32, seed: Optional[int] = 0,
                         score: str = "max_probability", coverages: Sequence[float] = DEFAULT_COVERAGES,
                         name: Optional[str] = None, batch_size: int = 1024) -> SelectiveResult:
    """Accuracy- and risk-coverage curves of ``model`` on labelled ``data``, ranking the inputs by
    ``score`` (the most confident answered first).

    Args:
        model: a classifier :class:`~bayesdistill.BNN` or an ``nn.Module`` returning logits.
        data: labelled data: an ``(x, y)`` tuple, a Dataset or a DataLoader of ``(x, y)``.
        num_samples: posterior draws of the predictive (BNN only).
        seed: seeds the posterior draws (BNN only).
        score: ``"max_probability"`` (default), ``"entropy"`` or ``"mutual_information"``.
        coverages: the coverages of :attr:`SelectiveResult.accuracy_at`.
        name: the model's name in the result.
        batch_size: inputs per forward pass.

    Returns:
        A :class:`SelectiveResult`.

    Raises:
        TypeError: as :func:`ood_detection`.
        ValueError: unlabelled data, an unknown score, coverages outside (0, 1].
    """
    (score,) = _check_scores(score)
    p, y, s = _per_draw_probs(model, data, num_samples, seed, batch_size, "data")
    if y is None:
        raise ValueError("selective_prediction() needs labelled data (inputs and targets)")
    return SelectiveResult.from_probs(p, y, score=score, coverages=coverages, num_samples=s,
                                      seed=seed if s > 1 else None, name=name)
