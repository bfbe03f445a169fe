r"""An adversarial weight prior: critics tell the teacher's convolution kernels from the student's.

Kolesov (2022; code ``justkolesov/adversarial_issues``), after the deep weight prior (Atanov et
al., ICLR 2019): instead of aligning weights index by index, one critic (discriminator) per
matched pair of convolution layers learns to tell *kernel slices* of the teacher (draws from the
teacher's posterior, the "source kernel dataset") from the student's, and the student is
penalized where the critic finds its kernels fake. No unit correspondence is needed: a slice is
one ``(out, in)`` kernel, ``w[o, i]`` (k values for Conv1d, k x k for Conv2d), so the layers may
have any numbers of input and output channels, and any depth; only the kernel's spatial shape
must match within a pair (the critic reads ``prod(kernel)`` numbers). Only convolutions
(Conv1d/2d/3d) are supported: that is what the method compares.

**The objective.** With critic ``D_l`` (a logit) for pair ``l``, adaptive weights ``lambda_l``,
the term's weight ``c`` and the BNN's KL weight ``beta``, the student maximizes

.. math::

    \mathcal{L}(q) = \mathbb{E}_q[\log p(y | x, w)]
        - \beta\Big(\mathrm{KL}(q \| p_0) - c \sum_l \lambda_l\, \mathbb{E}_q \sum_{s \in \text{slices}_l}
          \log \sigma(D_l(w_s))\Big)

(``penalty="log_sigmoid"``, the default; ``penalty="logit"`` replaces ``log sigma(D)`` by the
critic's logit ``D``, the reference code's generator loss ``-D(fake)``). This is the ELBO with the
*unnormalized* prior :math:`\tilde p(w) = p_0(w) \prod_l \prod_s \sigma(D_l(w_s))^{c \lambda_l}`:
:math:`\mathcal{L} = \mathrm{ELBO}(q; \tilde p / Z) + \log Z` with
:math:`Z = \mathbb{E}_{p_0}[\prod \sigma^{c\lambda}] \in (0, 1]`. For *fixed* critics and weights it
is therefore still a lower bound on the log evidence under the normalized prior
:math:`\tilde p / Z` (loose by :math:`-\log Z \ge 0`), but the critics and the ``lambda_l`` change
during training, so the values of different epochs belong to different priors and the history's
``elbo`` column is not a bound on the evidence of any one model. With ``penalty="logit"``,
:math:`\tilde p \propto p_0 e^{c\lambda D}` need not be normalizable at all (the critic's logit is
unbounded): then the objective is a penalized ELBO and nothing more. The expectation over q is
estimated with one reparameterized draw of the student's kernels per step, drawn by the term
(independent of the draw of the forward pass, which keeps it valid under local
reparameterization); the penalty enters once per step like the KL (scaled by ``beta``; a transfer
batch, where the engine sets ``beta = 0``, adds none).

**The critics** (:class:`KernelCritic`, the reference's MLP ``prod(kernel) -> 100 -> 100 -> 1``
with ReLU) are trained by the term's callback :class:`CriticTraining` (the engine adds it: a term's
:meth:`~bayesdistill.infer.Term.callbacks`), with their own Adam (lr 1e-3), on batches of 192
slices of a fresh teacher-posterior draw ("real", label 0.9: one-sided label smoothing, as in the
reference) and of a fresh, detached student-posterior draw ("fake", label 0), by binary cross
entropy averaged over the two halves; ``critic_steps`` (100) steps after every epoch, as in the
reference, and as many once before the first epoch (the reference has none: it starts penalizing
after ``epoch_unfreezing`` epochs instead). Their parameters are the term's (``requires_grad``
off outside the critic's own steps: the student's optimizer never moves them) and are saved with
the term's state; their optimizer with the callback's.

**The adaptive weights** (the reference's schedule): after each epoch's critic steps, ``p_fake`` =
the critic's mean probability that the student's slices are real (here over all slices of one
fresh student draw; the reference reads the last step's batch); ``lambda_l`` is doubled when
``p_fake < 0.2`` (the critic wins: push harder), halved when ``p_fake > 0.45`` (the student fools
it), and clipped to [1e-3, 1e3]; it starts at 1e-3. Units: here ``lambda`` weighs a *sum* of
log-factors over the slices (a prior is a sum over weights), in nats of the whole-data ELBO; the
reference weighs the *mean* over a batch of slices against the mean cross entropy per example, so
its lambda corresponds to ``lambda_ref * N / num_slices`` here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_number
from ..bnn.network import BNN
from ..bnn.posterior import MeanFieldPosterior
from ..errors import ShapeMismatchError
from ..infer.callbacks import Callback
from ..infer.objective import Term
from .terms.registry import TermOption, register_term

if TYPE_CHECKING:
    from ..infer.engine import SVIEngine

__all__ = ["AdversarialPrior", "KernelCritic", "CriticTraining", "kernel_slices", "conv_pairs", "parse_layer_pairs",
           "PENALTIES"]

#: The forms of the penalty: ``"log_sigmoid"``: -log sigma(D(w)) (the prior reading, bounded);
#: ``"logit"``: -D(w) (the reference code's generator loss).
PENALTIES = ("log_sigmoid", "logit")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def kernel_slices(weight: Tensor) -> Tensor:
    """A convolution weight ``[C_out, C_in, *kernel]`` as its kernel slices ``[C_out * C_in, prod(kernel)]``."""
    if weight.dim() < 3:
        raise ShapeMismatchError(f"kernel_slices expects a convolution weight [C_out, C_in, *kernel], got shape "
                                 f"{tuple(weight.shape)}")
    return weight.reshape(weight.shape[0] * weight.shape[1], -1)


class KernelCritic(nn.Module):
    """D: one kernel slice (``prod(kernel)`` numbers) -> a logit; the reference's MLP with ReLUs."""

    def __init__(self, kernel_numel: int, hidden: Sequence[int] = (100, 100)):
        super().__init__()
        sizes = [int(kernel_numel), *[int(h) for h in hidden]]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, slices: Tensor) -> Tensor:
        """Logits ``[N]`` of slices ``[N, prod(kernel)]``."""
        return self.net(slices).squeeze(-1)


def _conv_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in net.named_modules() if isinstance(m, _CONVS)]


def conv_pairs(teacher: Union[BNN, MeanFieldPosterior], student: Union[BNN, nn.Module]) -> dict[str, str]:
    """Default pairs ``{teacher conv path: student conv path}``: each student convolution gets the
    teacher convolution with the same kernel shape (and, when the teacher's network is known, the
    same stride first) at the closest relative depth. Raises ``ShapeMismatchError`` for a student
    convolution no teacher convolution matches."""
    snet = student.net if isinstance(student, BNN) else student
    s_convs = _conv_layers(snet)
    if isinstance(teacher, BNN):
        t_convs = [(p, tuple(m.kernel_size), tuple(m.stride)) for p, m in _conv_layers(teacher.net)]
    else:
        t_convs = [(info.module, tuple(teacher.locs[name].shape[2:]), None) for name, info in teacher.info.items()
                   if info.attr == "weight" and info.module_type.startswith("Conv") and teacher.locs[name].dim() >= 3]
    if not s_convs:
        raise ShapeMismatchError("the adversarial prior compares convolution kernels: the student has no Conv1d/2d/3d")
    pairs: dict[str, str] = {}
    for i, (spath, m) in enumerate(s_convs):
        depth = i / max(len(s_convs) - 1, 1)
        cands = [(stride is not None and stride != tuple(m.stride), abs(j / max(len(t_convs) - 1, 1) - depth), j, tpath)
                 for j, (tpath, kernel, stride) in enumerate(t_convs) if kernel == tuple(m.kernel_size)]
        if not cands:
            raise ShapeMismatchError(
                f"student convolution {spath!r} has kernel {tuple(m.kernel_size)}, which no teacher convolution has "
                f"({[(p, k) for p, k, _ in t_convs]}); the critic compares kernels of one shape: name the pairs")
        tpath = min(cands)[3]
        if tpath in pairs:  # one critic per teacher layer: a second student layer gets its own key
            pairs[f"{tpath}#{spath}"] = spath
        else:
            pairs[tpath] = spath
    return pairs


def parse_layer_pairs(text: Optional[str]) -> Optional[dict[str, str]]:
    """``"1:1,5:3"`` -> ``{"1": "1", "5": "3"}``; ``"auto"``, ``""`` or ``None`` -> ``None`` (:func:`conv_pairs`)."""
    if text is None or text.strip() in ("", "auto"):
        return None
    pairs: dict[str, str] = {}
    for item in text.split(","):
        t, sep, s = item.partition(":")
        if not sep or not t.strip() or not s.strip():
            raise ValueError(f"adversarial_prior layers: expected TEACHER:STUDENT conv layer paths separated by commas "
                             f"(e.g. 1:1,5:3) or 'auto', got {text!r}")
        key = t.strip() if t.strip() not in pairs else f"{t.strip()}#{s.strip()}"
        pairs[key] = s.strip()
    return pairs


@register_term(
    "adversarial_prior",
    description="adversarial weight prior: per conv layer a critic tells teacher kernels from the student's",
    options=[
        TermOption("layers", str, "auto", "conv layer pairs TEACHER:STUDENT,... (e.g. 1:1,5:3,7:5) or auto (same "
                   "kernel, same stride first, closest relative depth); not the feature pairs of vid/pkt/hint"),
        TermOption("weight", float, 1.0, "multiplies the adaptive lambda of every pair", range="(0, inf)"),
        TermOption("init_lambda", float, 1e-3, "initial lambda per pair (per kernel slice)", range="(0, inf)"),
        TermOption("critic_steps", int, 100, "critic steps after each epoch", range="[1, inf)"),
        TermOption("critic_lr", float, 1e-3, "the critics' Adam learning rate", range="(0, inf)"),
        TermOption("penalty", str, "log_sigmoid", "-log sigmoid(D(w)) or the reference's -D(w)", choices=PENALTIES),
        TermOption("schedule", str, "adaptive", "lambda: the reference's adaptive rule or fixed",
                   choices=("adaptive", "fixed")),
    ],
    # the term's pairs are convolution layers (kernels), not the feature pairs of vid/pkt/hint: its
    # own option `layers`, so a command line's feature pairs never reach it
    build=lambda teacher, pairs, layers, **kw: [AdversarialPrior(teacher, parse_layer_pairs(layers), **kw)],
)
class AdversarialPrior(Term):
    """Adversarial weight prior (Kolesov 2022; Atanov et al. 2019): a prior-like penalty on the
    student's kernels from critics trained on the teacher's posterior (see the module docstring).

    Args:
        teacher: the teacher: a trained :class:`~bayesdistill.BNN` or its
            :class:`~bayesdistill.MeanFieldPosterior` (the "real" kernels are draws from it).
        pairs: teacher conv path -> student conv path (kernel shapes equal within a pair; channel
            counts free); ``None``: :func:`conv_pairs`, resolved when the objective is built. A key
            ``"<teacher path>#<anything>"`` lets one teacher layer serve several student layers.
        weight: ``c``, multiplies every pair's lambda (>= 0).
        init_lambda: lambda of every pair at the start (the reference: 1e-3).
        critic_steps: critic steps after every epoch (and before the first).
        critic_lr: the critics' Adam learning rate.
        critic_batch: slices per critic step, real and fake each (the reference: 192).
        hidden: the critics' hidden layers.
        penalty: ``"log_sigmoid"`` (default) or ``"logit"`` (:data:`PENALTIES`).
        schedule: ``"adaptive"`` (the reference's rule) or ``"fixed"`` (lambda stays).
        low: the adaptive rule multiplies lambda by ``factor`` when ``p_fake < low``.
        high: the adaptive rule divides lambda by ``factor`` when ``p_fake > high``.
        factor: the adaptive rule's step.
        bounds: the interval lambda is clipped to.
        real_label: the critics' label for teacher slices (0.9: one-sided label smoothing).
        name: the term's name (history columns ``distill/<name>/...``).

    Metrics per step: ``loss`` (the penalty ``sum_l lambda_l sum_s -log sigma(D_l)`` in nats, before
    ``weight`` and ``beta``), ``pair<i>/score`` (mean -log sigma(D) per slice, or -D). Per epoch the
    callback adds ``pair<i>/lambda`` (after the update), ``pair<i>/p_real``, ``pair<i>/p_fake`` and
    ``pair<i>/critic_loss``.
    """

    def __init__(
        self,
        teacher: Union[BNN, MeanFieldPosterior],
        pairs: Optional[Mapping[str, str]] = None,
        weight: float = 1.0,
        *,
        init_lambda: float = 1e-3,
        critic_steps: int = 100,
        critic_lr: float = 1e-3,
        critic_batch: int = 192,
        hidden: Sequence[int] = (100, 100),
        penalty: str = "log_sigmoid",
        schedule: str = "adaptive",
        low: float = 0.2,
        high: float = 0.45,
        factor: float = 2.0,
        bounds: tuple[float, float] = (1e-3, 1e3),
        real_label: float = 0.9,
        name: str = "adversarial_prior",
    ):
        super().__init__(name, weight)
        if isinstance(teacher, BNN):
            self._teacher_net: Optional[BNN] = teacher
            q = teacher.posterior()
        elif isinstance(teacher, MeanFieldPosterior):
            self._teacher_net, q = None, teacher
        else:
            raise TypeError(f"AdversarialPrior: teacher must be a bd.BNN or a MeanFieldPosterior, got {type(teacher).__name__}")
        if penalty not in PENALTIES:
            raise ValueError(f"AdversarialPrior: penalty must be one of {PENALTIES}, got {penalty!r}")
        if schedule not in ("adaptive", "fixed"):
            raise ValueError(f"AdversarialPrior: schedule must be 'adaptive' or 'fixed', got {schedule!r}")
        self.teacher_posterior = q
        self.init_lambda = check_number("init_lambda", init_lambda, minimum=0.0, exclusive_minimum=True)
        self.critic_steps = check_int("critic_steps", critic_steps, minimum=0)
        self.critic_lr = check_number("critic_lr", critic_lr, minimum=0.0, exclusive_minimum=True)
        self.critic_batch = check_int("critic_batch", critic_batch, minimum=1)
        self.hidden = tuple(int(h) for h in hidden)
        self.penalty, self.schedule = penalty, schedule
        self.low, self.high = check_number("low", low, minimum=0.0), check_number("high", high, maximum=1.0)
        if not self.low < self.high:
            raise ValueError(f"AdversarialPrior: low must be < high, got low={low}, high={high}")
        self.factor = check_number("factor", factor, minimum=1.0)
        lo, hi = (check_number("bounds", b, minimum=0.0, exclusive_minimum=True) for b in bounds)
        if not lo <= self.init_lambda <= hi:
            raise ValueError(f"AdversarialPrior: init_lambda={init_lambda} is outside bounds {bounds}")
        self.bounds = (lo, hi)
        self.real_label = check_number("real_label", real_label, minimum=0.0, maximum=1.0)
        self.default_pairs = pairs is None
        self.pairs: dict[str, str] = {}
        self.lambdas: list[float] = []
        self.critics = nn.ModuleList()
        self.warmed = False
        self._student: list[BNN] = []  # not a submodule: the student's parameters are not the term's
        self._offsets: list[tuple[int, int, torch.Size]] = []
        self._callback = CriticTraining(self)
        if pairs is not None:
            self._set_pairs(pairs)

    # -- pairs and critics ----------------------------------------------------------------
    def _set_pairs(self, pairs: Mapping[str, str]) -> None:
        if not isinstance(pairs, Mapping) or not pairs:
            raise TypeError(f"AdversarialPrior: pairs must be a non-empty mapping {{teacher conv path: student conv "
                            f"path}}, got {pairs!r}")
        q = self.teacher_posterior
        self.pairs = {str(k): str(v) for k, v in pairs.items()}
        self.lambdas = [self.init_lambda] * len(self.pairs)
        for i, tkey in enumerate(self.pairs):
            tpath = tkey.split("#", 1)[0]
            name = f"{tpath}.weight"
            if name not in q.locs:
                raise KeyError(f"AdversarialPrior: the teacher has no parameter {name!r}; its parameters: {list(q.locs)}")
            if q.locs[name].dim() < 3:
                raise ShapeMismatchError(f"AdversarialPrior: teacher layer {tpath!r} is not a convolution (weight shape "
                                         f"{tuple(q.locs[name].shape)}); the critics compare convolution kernels")
            self.register_buffer(f"teacher_loc{i}", q.locs[name].detach().clone(), persistent=False)
            self.register_buffer(f"teacher_scale{i}", q.scales[name].detach().clone(), persistent=False)
            self.critics.append(KernelCritic(int(q.locs[name][0, 0].numel()), self.hidden))
        self.critics.requires_grad_(False)

    def bind(self, bnn: BNN) -> None:
        if self.default_pairs and not self.pairs:
            self._set_pairs(conv_pairs(self._teacher_net if self._teacher_net is not None else self.teacher_posterior, bnn))
        self._student = [bnn]
        shapes = bnn.shapes
        offsets, start = {}, 0
        for n, shape in shapes.items():
            offsets[n] = (start, shape)
            start += shape.numel()
        self._offsets = []
        for i, (tkey, spath) in enumerate(self.pairs.items()):
            name = f"{spath}.weight"
            if name not in shapes:
                raise KeyError(f"AdversarialPrior: the student has no Bayesian parameter {name!r}; its parameters: "
                               f"{list(shapes)}")
            tshape = getattr(self, f"teacher_loc{i}").shape
            sshape = shapes[name]
            if len(sshape) < 3 or sshape[2:] != tshape[2:]:
                raise ShapeMismatchError(
                    f"AdversarialPrior: pair {tkey!r} -> {spath!r}: the student's weight has shape {tuple(sshape)}, the "
                    f"teacher's {tuple(tshape)}; a pair needs two convolutions with the same kernel shape "
                    f"{tuple(tshape[2:])} (channel counts may differ)")
            self._offsets.append((offsets[name][0], sshape.numel(), sshape))

    @property
    def student(self) -> BNN:
        if not self._student:
            raise RuntimeError("AdversarialPrior: the term is not bound to a student yet (it is, once bd.fit builds the objective)")
        return self._student[0]

    def callbacks(self) -> list[Callback]:
        return [self._callback]

    # -- state ------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"weight": self.weight, "lambdas": list(self.lambdas), "warmed": self.warmed}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.weight = float(state["weight"])
        self.lambdas = [float(v) for v in state.get("lambdas", self.lambdas)]
        self.warmed = bool(state.get("warmed", self.warmed))

    # -- draws ------------------------------------------------------------------------------
    def student_slices(self, i: int, detach: bool = False) -> Tensor:
        """One reparameterized draw of the student's kernels of pair ``i`` as slices ``[N, k]``."""
        bnn = self.student
        start, n, shape = self._offsets[i]
        loc = bnn.loc[start:start + n]
        scale = F.softplus(bnn.rho[start:start + n])
        if detach:
            loc, scale = loc.detach(), scale.detach()
        return kernel_slices((loc + scale * torch.randn_like(loc)).view(shape))

    def teacher_slices(self, i: int) -> Tensor:
        """One draw of the teacher's kernels of pair ``i`` from its posterior, as slices ``[N, k]``."""
        loc, scale = getattr(self, f"teacher_loc{i}"), getattr(self, f"teacher_scale{i}")
        return kernel_slices(loc + scale * torch.randn_like(loc))

    def scores(self, logits: Tensor) -> Tensor:
        """The per-slice penalty before lambda: ``-log sigma(D)`` or ``-D``."""
        return F.softplus(-logits) if self.penalty == "log_sigmoid" else -logits

    # -- the term ---------------------------------------------------------------------------
    def log_factor(self, s_out, s_feats, r_out, r_feats) -> Tensor:  # pragma: no cover - observe is the entry
        raise NotImplementedError("AdversarialPrior adds one factor per step in observe(), not per example")

    def observe(self, s_out: Tensor, s_feats, r_out, r_feats) -> None:
        bnn = self.student
        beta = bnn.kl_weight
        total = s_out.new_zeros(())
        metrics: dict[str, Tensor] = {}
        for i, critic in enumerate(self.critics):
            per_slice = self.scores(critic(self.student_slices(i)))
            total = total + self.lambdas[i] * per_slice.sum()
            metrics[f"pair{i}/score"] = per_slice.detach().mean()
        self.metrics = {"loss": total.detach(), **metrics}
        if beta == 0.0 or self.weight == 0.0:
            return  # a transfer batch (or the prior switched off): the penalty counts once per step, with the KL
        # one factor per step: spread over the batch so that the data plate's scale (N / B) gives it back once
        batch = s_out.shape[0]
        n = bnn.dataset_size or batch
        per_example = (-(self.weight * beta) * total / n).expand(batch)
        pyro.factor(f"distill.{self.name}", per_example)

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, penalty={self.penalty!r}, schedule={self.schedule!r}"


class _Trainable:
    """Critic parameters trainable inside the block, frozen (and without gradients) outside."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.module.requires_grad_(True)

    def __exit__(self, *exc: Any) -> None:
        self.module.requires_grad_(False)
        for p in self.module.parameters():
            p.grad = None


class CriticTraining(Callback):
    """Trains an :class:`AdversarialPrior`'s critics and updates its lambdas (the term's callback).

    Before the first epoch: ``critic_steps`` steps (once per run; a resumed run does not repeat them).
    After every epoch: ``critic_steps`` steps, then ``p_real``/``p_fake`` over all slices of one fresh
    teacher and student draw per pair, then the adaptive rule (``schedule="adaptive"``). Writes
    ``distill/<name>/pair<i>/{lambda,p_real,p_fake,critic_loss}`` into the epoch's record. Its state
    (the critics' Adam) is checkpointed; the critics and lambdas are the term's state. With several
    processes (``torchrun``) each rank trains its critics on its own draws, then every rank takes rank
    0's critics and lambdas, so that all ranks' students see the same prior (tested on 2 processes:
    ``tests/infer/test_distributed.py``).
    """

    order = 0

    def __init__(self, term: AdversarialPrior):
        self.term = term
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._pending: Optional[Mapping[str, Any]] = None
        self.last: dict[str, float] = {}

    def settings(self) -> dict[str, Any]:
        t = self.term
        return {f"{t.name}_critics": [t.critic_steps, t.critic_lr, t.critic_batch, list(t.hidden), t.penalty,
                                      t.schedule, t.low, t.high, t.factor, list(t.bounds), t.real_label]}

    def _opt(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.term.critics.parameters(), lr=self.term.critic_lr)
            if self._pending is not None:
                self.optimizer.load_state_dict(self._pending)
                self._pending = None
        return self.optimizer

    def train_critics(self, steps: int) -> list[float]:
        """``steps`` critic updates (every pair's critic each step); returns the last loss per pair."""
        t = self.term
        opt = self._opt()
        losses = [float("nan")] * len(t.critics)
        with _Trainable(t.critics):
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for i, critic in enumerate(t.critics):
                    real = _batch(t.teacher_slices(i), t.critic_batch)
                    fake = _batch(t.student_slices(i, detach=True), t.critic_batch)
                    lr, lf = critic(real), critic(fake)
                    loss = 0.5 * F.binary_cross_entropy_with_logits(lr, torch.full_like(lr, t.real_label)) + \
                        0.5 * F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
                    total = total + loss
                    losses[i] = float(loss.detach())
                total.backward()
                opt.step()
        return losses

    @torch.no_grad()
    def probabilities(self) -> list[tuple[float, float]]:
        """Per pair ``(p_real, p_fake)``: the critic's mean probability of "real" over all slices of
        one fresh teacher draw and one fresh student draw."""
        t = self.term
        return [(float(torch.sigmoid(c(t.teacher_slices(i))).mean()), float(torch.sigmoid(c(t.student_slices(i, True))).mean()))
                for i, c in enumerate(t.critics)]

    def update_lambdas(self, p_fake: Sequence[float]) -> None:
        t = self.term
        if t.schedule != "adaptive":
            return
        lo, hi = t.bounds
        for i, p in enumerate(p_fake):
            lam = t.lambdas[i]
            if p < t.low:
                lam *= t.factor
            elif p > t.high:
                lam /= t.factor
            t.lambdas[i] = min(hi, max(lo, lam))

    def _sync(self, engine: "SVIEngine") -> None:
        """Several processes: every rank takes rank 0's critics and lambdas (one prior for all)."""
        group = getattr(engine, "group", None)
        if group is None:
            return
        t = self.term
        lam = torch.tensor(t.lambdas, dtype=torch.float64, device=engine.device)
        group.broadcast_([*t.critics.parameters(), lam])
        t.lambdas = [float(v) for v in lam.tolist()]

    def on_epoch_start(self, engine: "SVIEngine", epoch: int) -> None:
        if not self.term.warmed:
            self.train_critics(self.term.critic_steps)
            self.term.warmed = True
            self._sync(engine)

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        t = self.term
        losses = self.train_critics(t.critic_steps)
        probs = self.probabilities()
        self.update_lambdas([pf for _, pf in probs])
        self._sync(engine)
        prefix = f"distill/{t.name}/"
        for i, ((pr, pf), loss) in enumerate(zip(probs, losses)):
            record[f"{prefix}pair{i}/lambda"] = t.lambdas[i]
            record[f"{prefix}pair{i}/p_real"] = pr
            record[f"{prefix}pair{i}/p_fake"] = pf
            record[f"{prefix}pair{i}/critic_loss"] = loss

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is not None:
            return {"optimizer": self.optimizer.state_dict()}
        return {"optimizer": self._pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        opt = state.get("optimizer")
        if opt is None:
            return
        if self.optimizer is not None:
            self.optimizer.load_state_dict(opt)
        else:
            self._pending = opt


def _batch(slices: Tensor, size: int) -> Tensor:
    """``size`` slices drawn uniformly with replacement (a layer may hold fewer slices than a batch)."""
    idx = torch.randint(0, slices.shape[0], (size,), device=slices.device)
    return slices[idx]
