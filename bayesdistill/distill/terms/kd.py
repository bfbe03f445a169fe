"""Hinton knowledge distillation (Hinton, Vinyals & Dean 2015) as a term of the student's objective."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...bnn.network import BNN
from ...infer import distributed
from ...infer.metrics import fit_temperature
from .base import DistillTerm
from .registry import TermOption, register_term

__all__ = ["KD", "CALIBRATIONS", "LIKELIHOODS"]

#: ``KD(calibration=...)``: ``"temperature"`` (the teacher's logits temperature-scaled on the
#: labelled probe batch) or ``"none"`` (the teacher's softmax as it is, Hinton et al.)
CALIBRATIONS = ("temperature", "none")
#: ``KD(likelihood=...)``: ``"share"`` (the label's likelihood scaled by 1 - a, Hinton et al.'s
#: convex combination) or ``"keep"`` (the label's likelihood whole, the KD term added on top)
LIKELIHOODS = ("share", "keep")


@register_term(
    "kd",
    description="Hinton knowledge distillation: soft targets of temperature T, the likelihood scaled by 1 - a",
    options=[
        # T = 1: the teacher's predictive distribution as a soft label; T > 1 (with the T^2 factor)
        # made Bayesian students over-confident in benchmarks/table.py (docs/function-space.md)
        TermOption("temperature", float, 1.0, "softmax temperature T", range="(0, inf)"),
        TermOption("weight", float, 0.5, "weight a of the KD term (the teacher's share of each example's label); "
                   "the likelihood is scaled by 1 - a", range="(0, 1]"),
        TermOption("calibration", str, "none", "the teacher's soft labels: 'none' uses its logits as they are, "
                   "'temperature' scales them to fit the training labels (temperature scaling on the probe "
                   "batch)", choices=CALIBRATIONS),
        TermOption("likelihood", str, "share", "the label's likelihood: 'share' scales it by 1 - a (Hinton's "
                   "convex combination), 'keep' keeps it whole and adds the KD term on top", choices=LIKELIHOODS),
    ],
    build=lambda teacher, pairs, temperature, weight, calibration, likelihood: [
        KD(teacher, temperature=temperature, weight=weight, calibration=calibration, likelihood=likelihood)],
    tasks=("classification",),
)
class KD(DistillTerm):
    r"""Hinton knowledge distillation: ``(1 - a) CE(y, z_s) + a T^2 KL(softmax(z_t/T) || softmax(z_s/T))``.

    Hinton, Vinyals & Dean (2015). ``weight`` is a in [0, 1]; the student's likelihood is scaled
    by 1 - a (on labelled batches). Outputs must be logits ``[B, C]`` of the same C. The
    log-factor is ``-T^2 KL(softmax(z_t/T) || softmax(z_s/T))`` per example; ``loss`` reports its
    batch mean with the sign flipped (nats per example, before the weight).

    **Units and defaults** (docs/function-space.md, "Weights"). With T = 1 (the default) the
    log-factor is ``E_{y ~ p_t}[log p_s(y | x)] + H(p_t)``: the student's log-likelihood of a
    label drawn from the teacher's predictive distribution, up to a constant. Each example then
    carries one label's worth of likelihood, ``(1 - a)`` of its own label and ``a`` of the
    teacher's soft label (a = 0.5 by default): the term is a proper scoring rule, and a student
    that cannot match its teacher stays calibrated (if the teacher is). With T > 1 the T^2 KL
    approaches a squared error between logits (Hinton's high-temperature limit): a student weaker
    than its teacher then copies the teacher's confidence without its accuracy: with T = 4,
    a = 0.9 (RepDistiller's setting, and this package's defaults before) the Bayesian students of
    ``benchmarks/table.py`` on MNIST-1D became over-confident, with a higher NLL and ECE than the
    plain student, and T = 2 did the same; T = 1 did not (docs/function-space.md, "Weights").

    **The teacher's calibration** (``calibration=``). ``"none"`` (the default) uses the teacher's
    softmax as it is (Hinton et al.). ``"temperature"`` temperature-scales the teacher's logits
    (Guo et al. 2017) before training, on the labelled probe batch (the first 1024 training
    examples, :meth:`~bayesdistill.infer.Objective.setup`): the soft label is
    ``softmax(z_t / (tau T))`` with ``tau`` = :func:`~bayesdistill.diagnostics.fit_temperature`
    of the teacher's logits against the labels, within [0.05, 20]; it corrects a teacher that is
    under- or over-confident *on the training labels*. That is not the default because ``tau`` is
    fitted on data the teacher was usually trained on: a teacher that fits them well gets
    ``tau < 1`` (for the table's digits teachers the lower end, which turns the soft labels into
    the labels and KD into the plain likelihood), so the soft labels lose their dark knowledge,
    and on inputs the teacher has not seen (a transfer set) they become over-confident. Run on
    the comparison table (``python benchmarks/table.py --term-kw kd='{"calibration":
    "temperature"}'``, in its 50-epoch version) it did not lower KD's ECE in the one cell where
    KD was worse than plain, and it removed part of KD's gain with 10 % of the labels
    (docs/function-space.md, "Weights"). The fitted ``tau`` is :attr:`teacher_temperature` (1 before it is fitted, e.g.
    when the probe batch holds no labels: a warning says so), part of the term's state
    (checkpointed with its weight).

    **The label's likelihood** (``likelihood=``). ``"share"`` (the default) scales it by 1 - a:
    Hinton's ``(1 - a) CE + a KD``, one label's worth per example. ``"keep"`` keeps it whole and
    adds ``a`` times the KD log-factor, ``CE + a KD`` (the form of many KD implementations, and the
    convention of this package's other terms, whose weight adds evidence): each labelled example
    then carries ``1 + a`` labels' worth, which tempers the posterior as a ``kl_weight`` smaller by
    ``1 + a`` would. Measured on the 50-epoch comparison table's MNIST-1D and digits cells (5
    seeds, ``--term-kw kd='{"likelihood": "keep"}'``) it removed the one cell where KD's ECE was
    worse than plain's, and with it KD's gains elsewhere (docs/function-space.md, "Weights"): not the
    default.

    Args:
        teacher: the teacher (a :class:`~bayesdistill.BNN` or a plain ``nn.Module``) with logits
            ``[B, C]``.
        temperature: T > 0.
        weight: a in [0, 1], the teacher's share of each example's label.
        teacher_mode: ``"mean"`` (the posterior-mean network) or ``"sample"`` (one posterior draw
            per step).
        calibration: one of :data:`CALIBRATIONS`, ``"temperature"`` or ``"none"``.
        likelihood: one of :data:`LIKELIHOODS`, ``"share"`` (scaled by 1 - a) or ``"keep"``.
        name: the term's name.
    """

    def __init__(self, teacher: Union[BNN, nn.Module], temperature: float = 1.0, weight: float = 0.5,
                 teacher_mode: str = "mean", *, calibration: str = "none", likelihood: str = "share",
                 name: Optional[str] = None):
        if not 0 <= weight <= 1:
            raise ValueError(f"KD: weight (alpha) must lie in [0, 1], got {weight}")
        if not temperature > 0:
            raise ValueError(f"KD: temperature must be > 0, got {temperature}")
        if calibration not in CALIBRATIONS:
            raise ValueError(f"KD: calibration must be one of {', '.join(map(repr, CALIBRATIONS))}, got {calibration!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"KD: likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
        super().__init__(teacher, weight, name or "kd", teacher_mode)
        self.temperature = float(temperature)
        self.calibration = calibration
        self.likelihood = likelihood
        self.teacher_temperature = 1.0
        self._calibrated = calibration == "none"  # nothing to fit
        self._warned = False

    @property
    def likelihood_weight(self) -> float:  # type: ignore[override]
        """1 - a (``likelihood="share"``; follows ``weight`` when a schedule changes it), or 1
        (``likelihood="keep"``)."""
        return 1.0 if self.likelihood == "keep" else 1.0 - self.weight

    # -- state: the fitted teacher temperature is checkpointed with the weight ----------------
    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "teacher_temperature": self.teacher_temperature,
                "calibrated": self._calibrated}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        super().set_extra_state(state)
        if "teacher_temperature" in state:  # states saved before calibration existed hold none
            self.teacher_temperature = float(state["teacher_temperature"])
            self._calibrated = bool(state["calibrated"])

    def setup_targets(self, y: Tensor, s_out: Tensor, r_out: Any) -> None:
        """Fit :attr:`teacher_temperature` to the probe batch's labels ``y`` ``[N]`` (class
        indices) from the teacher's logits ``r_out`` ``[N, C]``; the same on every process of a
        distributed run (rank 0's). Labels that are not class indices of the teacher's classes
        leave the teacher as it is, with a warning."""
        if self.calibration == "none":
            return
        if not (torch.is_tensor(r_out) and r_out.dim() == 2 and torch.is_tensor(y) and not y.is_floating_point()
                and tuple(y.shape) == (r_out.shape[0],)):
            what = f"labels of shape {tuple(y.shape)} and dtype {y.dtype}" if torch.is_tensor(y) else f"labels {type(y).__name__}"
            warnings.warn(f"{self.name}: cannot calibrate the teacher's soft labels on {what} (expected class indices "
                          f"[N] for teacher logits [N, C]); using its logits as they are (calibration='none' "
                          "silences this)", stacklevel=2)
            self._warned = True
            return
        tau = torch.tensor(fit_temperature(r_out, y), dtype=torch.float64, device=r_out.device)
        group = distributed.current(initialize=False)
        if group is not None:  # rank 0's value on every rank, as the engine shares its buffers
            group.broadcast_([tau])
        self.teacher_temperature = float(tau)
        self._calibrated = True

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        if s_out.shape != t_out.shape:
            raise ValueError(f"KD needs student and teacher logits of the same shape; got {tuple(s_out.shape)} and {tuple(t_out.shape)}")
        if not self._calibrated and not self._warned:
            warnings.warn(f"{self.name}: the teacher's soft labels were not calibrated (no labelled probe batch "
                          "reached Objective.setup); using its logits as they are. Set up the objective with a "
                          "labelled batch, or pass calibration='none'", stacklevel=2)
            self._warned = True
        T = self.temperature
        log_p_t = F.log_softmax(t_out / (T * self.teacher_temperature), dim=-1)
        log_p_s = F.log_softmax(s_out / T, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return -(T * T) * kl
