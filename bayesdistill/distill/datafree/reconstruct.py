r"""Reconstructing inputs from a teacher's activation record (no training data).

:func:`reconstruct` starts from random inputs and optimizes them, with the teacher fixed, until
the teacher's activations match the record. Two objectives:

- ``"match"`` (Lopes, Fenu & Starner 2017): each input ``i`` gets a class ``c_i`` (balanced:
  ``c_i = i mod C``) and, for every block ``b`` of the record, a target ``s_ib`` sampled from the
  class's Gaussian ``N(mean_b[c_i], cov_b[c_i])`` (clipped at 0 for non-negative blocks); the
  loss of input ``i`` is ``sum_b ||phi_b(x_i) - s_ib||^2 / D_b`` (``phi_b`` the block's feature,
  ``D_b`` its width). With a ``"top"`` record this is the seed lecture's
  ``x0 = argmin_x ||f(x)/T - b||^2``.
- ``"deepinversion"`` (Yin et al., CVPR 2020, with the record in place of BatchNorm
  statistics): the cross-entropy of the teacher's output on the input's class, plus
  ``feature_weight`` times, for every non-output layer of an ``"all"`` record, the distance
  between the batch's mean and variance of that layer and the record's marginal (all-class)
  mean and variance (``||mu_batch - mu||_2 + ||var_batch - var||_2``), plus ``tv_weight`` times
  the squared total variation of the input along its last axis and ``l2_weight`` times its
  squared norm (image priors).

Inputs start as ``N(input_mean, input_std^2)`` noise (the record's scalar input statistics) and
are optimized with Adam in batches of ``batch_size`` (each batch on its own: the DeepInversion
batch statistics are per batch), on CPU or GPU, with a progress bar. ``steps=0`` returns the
starting noise (the "random noise" baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_choice, check_int, check_number
from ...bnn.network import BNN
from .record import OUTPUT, ActivationRecord, TeacherRunner

__all__ = ["reconstruct", "Reconstruction", "OBJECTIVES", "sample_targets"]

#: the reconstruction objectives
OBJECTIVES = ("match", "deepinversion")


@dataclass
class Reconstruction:
    """Inputs reconstructed from a record.

    Attributes:
        x: ``[n, *input_shape]`` the inputs (on the CPU).
        classes: ``[n]`` int64, the class each input was reconstructed for.
        loss_start, loss_end: ``[n]`` each input's objective before and after the optimization
            (``"match"``: its weighted squared distance to its targets; ``"deepinversion"``: its
            cross-entropy plus its image-prior terms, without the batch-statistics term).
        objective, kind, steps: how it was made.
    """

    x: Tensor
    classes: Tensor
    loss_start: Tensor
    loss_end: Tensor
    objective: str
    kind: str
    steps: int

    def __len__(self) -> int:
        return len(self.x)


def _sqrt_psd(cov: Tensor) -> Tensor:
    """A square root ``S`` with ``S S^T = cov`` (eigenvalues below 0 set to 0): sampling works for
    singular covariances (dead units)."""
    vals, vecs = torch.linalg.eigh(cov.double())
    return (vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)).float()


def sample_targets(record: ActivationRecord, classes: Tensor, generator: torch.Generator,
                   roots: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """One target per input and block: ``mean[c] + S[c] z``, ``z ~ N(0, I)``, clipped at 0 for
    non-negative blocks; ``{block name: [n, D]}`` (CPU)."""
    out = {}
    for b in record.blocks:
        root = roots[b.name] if roots is not None else _sqrt_psd(b.cov)
        z = torch.randn(len(classes), b.dim, generator=generator)
        s = b.mean[classes] + torch.einsum("nij,nj->ni", root[classes], z)
        out[b.name] = s.clamp_min(0) if b.nonnegative else s
    return out


def _match_loss(record: ActivationRecord, acts: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    loss = 0
    for b in record.blocks:
        loss = loss + ((b.features(acts) - targets[b.name]) ** 2).sum(1) / b.dim
    return loss


def _tv(x: Tensor) -> Tensor:
    flat = x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 1 else x.unsqueeze(0)
    return ((flat[..., 1:] - flat[..., :-1]) ** 2).sum((-1, -2)) if flat.dim() == 3 else flat.new_zeros(len(x))


def _target_classes(classes: Optional[Tensor], n: int, num_classes: int) -> Tensor:
    """The ``[n]`` int64 target classes on the CPU: ``arange(n) % C`` by default, else checked."""
    if classes is None:
        return torch.arange(n) % num_classes
    if not (torch.is_tensor(classes) and classes.dtype == torch.long and tuple(classes.shape) == (n,)):
        raise ValueError(f"classes must be an int64 tensor of shape ({n},)")
    if bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ValueError(f"classes must lie in [0, {num_classes - 1}] (the record's classes)")
    return classes.cpu()


def reconstruct(
    teacher: Union[BNN, nn.Module],
    record: ActivationRecord,
    n: int,
    *,
    steps: int = 2000,
    lr: float = 0.05,
    batch_size: int = 1000,
    objective: str = "match",
    classes: Optional[Tensor] = None,
    feature_weight: float = 1.0,
    tv_weight: float = 0.0,
    l2_weight: float = 0.0,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
    seed: int = 0,
) -> Reconstruction:
    """Reconstruct ``n`` inputs of the teacher from its record (see the module docstring).

    Args:
        teacher: the teacher the record was made from (checked: a record of another teacher
            raises :class:`~bayesdistill.errors.RecordMismatchError`); moved to ``device``.
        record: an :class:`~bayesdistill.distill.datafree.ActivationRecord`.
        n: the number of inputs.
        steps: Adam steps per batch (0: the starting noise).
        lr: Adam's learning rate.
        batch_size: inputs optimized together.
        objective: ``"match"`` or ``"deepinversion"`` (an ``"all"`` or ``"top"`` record).
        classes: ``[n]`` int64 target classes (default ``arange(n) % C``).
        feature_weight, tv_weight, l2_weight: the DeepInversion weights.
        device: where to optimize (default: the teacher's device); progress: a tqdm bar;
        seed: seeds the starting noise and the sampled targets (a CPU generator: the same on
            every device).
    """
    record.check_teacher(teacher)
    n = check_int("n", n, minimum=1)
    steps = check_int("steps", steps, minimum=0)
    lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_choice("objective", objective, OBJECTIVES)
    feature_weight = check_number("feature_weight", feature_weight, minimum=0.0)
    tv_weight = check_number("tv_weight", tv_weight, minimum=0.0)
    l2_weight = check_number("l2_weight", l2_weight, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    classes = _target_classes(classes, n, record.num_classes)
    if objective == "deepinversion" and record.kind not in ("all", "top"):
        raise ValueError(f"objective='deepinversion' matches layer statistics: it needs an 'all' (or 'top') record, "
                         f"got {record.kind!r}")
    dev = torch.device(device) if device is not None else (
        teacher.loc.device if isinstance(teacher, BNN) else next(iter(teacher.parameters()), torch.empty(0)).device)
    runner = TeacherRunner(teacher, record.layers, record.temperature).to(dev)
    gen = torch.Generator().manual_seed(seed)
    x0 = record.input_mean + record.input_std * torch.randn(n, *record.input_shape, generator=gen)
    if objective == "match":
        targets = sample_targets(record, classes, gen, {b.name: _sqrt_psd(b.cov) for b in record.blocks})
    else:
        hidden = [b.name for b in record.blocks if b.name != OUTPUT and b.basis is None]
        marginals = {name: tuple(t.to(dev) for t in record.marginal(name)) for name in hidden}

    def per_example(x: Tensor, acts: dict[str, Tensor], c: Tensor, tg: Optional[dict[str, Tensor]]) -> Tensor:
        if objective == "match":
            return _match_loss(record, acts, tg)  # type: ignore[arg-type]
        out = acts[OUTPUT] * record.temperature
        loss = F.cross_entropy(out, c, reduction="none")
        if tv_weight:
            loss = loss + tv_weight * _tv(x)
        if l2_weight:
            loss = loss + l2_weight * (x.reshape(len(x), -1) ** 2).sum(1)
        return loss

    def batch_loss(x: Tensor, acts: dict[str, Tensor], c: Tensor, tg: Optional[dict[str, Tensor]]) -> Tensor:
        loss = per_example(x, acts, c, tg).mean()
        if objective == "deepinversion" and feature_weight and len(x) > 1:
            for name, (mu, var) in marginals.items():
                f = record.block(name).features(acts)
                loss = loss + feature_weight * (torch.linalg.vector_norm(f.mean(0) - mu)
                                                + torch.linalg.vector_norm(f.var(0, unbiased=False) - var))
        return loss

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps * ((n + batch_size - 1) // batch_size), desc=f"reconstruct ({record.kind})",
                   unit="step", leave=True)
    xs, starts, ends = [], [], []
    try:
        for lo in range(0, n, batch_size):
            sl = slice(lo, min(n, lo + batch_size))
            c = classes[sl].to(dev)
            tg = {k: v[sl].to(dev) for k, v in targets.items()} if objective == "match" else None
            x = x0[sl].clone().to(dev).requires_grad_(True)
            with torch.no_grad():
                starts.append(per_example(x, runner.run(x), c, tg).cpu())
            opt = torch.optim.Adam([x], lr=lr)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(x, runner.run(x), c, tg)
                (grad,) = torch.autograd.grad(loss, x)
                x.grad = grad
                opt.step()
                if bar is not None:
                    bar.update(1)
                    if bar.n % 50 == 0:
                        bar.set_postfix(loss=f"{float(loss):.4g}")
            with torch.no_grad():
                ends.append(per_example(x, runner.run(x), c, tg).cpu())
            xs.append(x.detach().cpu())
    finally:
        if bar is not None:
            bar.close()
    return Reconstruction(torch.cat(xs), classes.clone(), torch.cat(starts), torch.cat(ends), objective, record.kind,
                          steps)
