r"""Removing a layer (psi): which teacher layers go, and how each is folded away.

With an idempotent activation (ReLU), a square U_t = I gives ReLU(I ReLU(h)) = ReLU(h), so
layer t can be dropped (the paper's rule). ReLU is also positively homogeneous, so any U_t = P D
(a permutation times a positive diagonal) is exactly removable: ReLU(P D h) = P D h for h >= 0,
and U_{t+1} P D replaces the pair. A non-square layer is first shrunk by phi to as many units as
it has inputs; convolutions act through their center tap (a channel map).

:func:`scaled_permutation` finds the P D closest to a weight matrix (one assignment problem,
``scipy.optimize.linear_sum_assignment``). It serves both purposes: the residual
||U - P D|| / ||U|| of a teacher layer's best rows ranks which layers to remove
(:func:`choose_removals`), and the P D of the shrunk layer is what ``"permutation"`` and
``"refit"`` fold into the next layer.

A rule is a :class:`Removal` subclass registered by name with :func:`register_removal`; its
:meth:`~Removal.mix` gives the map that replaces the layer:

- ``"identity"``: condition on U_t = I (the paper);
- ``"permutation"``: the closest positively scaled permutation P D;
- ``"refit"``: P D, then the next layer's means are re-fitted by least squares on the probe data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ...bnn.posterior import MeanFieldPosterior
from ...errors import ShapeMismatchError
from .chain import Chain
from .feasibility import layer_mismatch, removable

__all__ = [
    "Assignment", "scaled_permutation", "relative_residual", "center_tap", "embed_tap",
    "Removal", "IdentityRemoval", "PermutationRemoval", "RefitRemoval",
    "REMOVALS", "register_removal", "resolve_removal", "choose_removals",
]


# ----------------------------------------------------------------------------- the assignment
@dataclass(frozen=True)
class Assignment:
    """The positively scaled permutation closest to a matrix ``w`` [out, in] (out >= in: on its best rows).

    Attributes:
        rows: the rows of ``w`` matched to a column (ascending; all rows when ``w`` is square).
        mix: ``[len(rows), in]``, one entry per row and per column: D_ii = max(w[i, pi(i)], 0).
    """

    rows: Tensor
    mix: Tensor


def scaled_permutation(w: Tensor) -> Assignment:
    """The scaled permutation P D closest to ``w`` [out, in].

    Each matched row i gets one column pi(i) (distinct), chosen to maximize the total share of
    the rows' energy that lies on a positive entry (``linear_sum_assignment``); D_ii =
    max(w[i, pi(i)], 0). With more rows than columns, the ``in`` rows that fit best are matched.
    """
    pos = w.clamp_min(0)
    share = pos.square() / w.square().sum(1, keepdim=True).clamp_min(1e-30)
    rows, cols = linear_sum_assignment((-share).detach().double().cpu().numpy())
    rows_t = torch.as_tensor(rows, device=w.device)
    cols_t = torch.as_tensor(cols, device=w.device)
    mix = torch.zeros(len(rows), w.shape[1], dtype=w.dtype, device=w.device)
    mix[torch.arange(len(rows), device=w.device), cols_t] = pos[rows_t, cols_t]
    return Assignment(rows_t, mix)


def relative_residual(w: Tensor, approx: Tensor) -> float:
    """||w - approx|| / ||w||."""
    return float((w - approx).norm() / w.norm().clamp_min(1e-30))


def center_tap(w: Tensor) -> Tensor:
    """A conv kernel's center tap ``[out, in]`` (the part that acts as a channel map); a matrix as is."""
    if w.dim() == 2:
        return w
    idx = tuple(k // 2 for k in w.shape[2:])
    return w[(slice(None), slice(None), *idx)]


def embed_tap(mix: Tensor, like: Tensor) -> Tensor:
    """``mix`` [out, in] as a weight shaped like ``like`` (center tap for convolutions)."""
    if like.dim() == 2:
        return mix
    out = torch.zeros_like(like)
    idx = tuple(k // 2 for k in like.shape[2:])
    out[(slice(None), slice(None), *idx)] = mix
    return out


# ----------------------------------------------------------------------------- rules
class Removal:
    """How a removed layer is folded away. Subclass and register with :func:`register_removal`.

    Class attributes:
        name: the registered name (set by :func:`register_removal`).
        needs_probe: the rule cannot run without probe data (``bd.align`` raises a ``DataError``).
        refits_next: after folding, the next layer's means are re-fitted by least squares on the
            probe data (as compensation does after every removal).
    """

    name: ClassVar[str] = ""
    needs_probe: ClassVar[bool] = False
    refits_next: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The registered name, or the class name of an unregistered rule (what a plan records)."""
        return self.name or type(self).__name__

    def score(self, w: Tensor) -> float:
        """How far a teacher layer's weights (teacher shapes) are from removable; lower goes first.

        Ranks the ways to remove layers (:func:`choose_removals`). Default: the relative
        distance of the center tap's best-matching rows to the closest scaled permutation.
        """
        tap = center_tap(w)
        a = scaled_permutation(tap)
        return relative_residual(tap[a.rows], a.mix)

    def mix(self, w: Tensor) -> Tensor:
        """The map ``[units, inputs]`` (square) that replaces the shrunk layer with weights ``w``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.label!r})"


#: Registered removal rules: name -> :class:`Removal` subclass.
REMOVALS: dict[str, type[Removal]] = {}


def register_removal(name: str) -> Callable[[type[Removal]], type[Removal]]:
    """Class decorator: register a :class:`Removal` subclass under ``name`` (``bd.align(removal=name)``)."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a removal name must be a non-empty string other than 'auto', got {name!r}")

    def decorator(cls: type[Removal]) -> type[Removal]:
        if not (isinstance(cls, type) and issubclass(cls, Removal)):
            raise TypeError(f"register_removal({name!r}) decorates a Removal subclass, got {cls!r}")
        if name in REMOVALS and REMOVALS[name] is not cls:
            raise ValueError(f"removal rule {name!r} is already registered ({REMOVALS[name].__name__})")
        cls.name = name
        REMOVALS[name] = cls
        return cls

    return decorator


@register_removal("identity")
class IdentityRemoval(Removal):
    """The paper's rule: condition on U_t = I (exact only for an identity layer)."""

    def mix(self, w: Tensor) -> Tensor:
        return torch.eye(w.shape[0], dtype=w.dtype, device=w.device)


@register_removal("permutation")
class PermutationRemoval(Removal):
    """The closest positively scaled permutation P D (exact for any U_t = P D after a ReLU)."""

    def mix(self, w: Tensor) -> Tensor:
        return scaled_permutation(center_tap(w)).mix


@register_removal("refit")
class RefitRemoval(PermutationRemoval):
    """P D, then the next layer's means re-fitted by least squares on the probe data."""

    needs_probe = True
    refits_next = True


def resolve_removal(removal: Union[str, Removal, type[Removal]], has_probe: bool) -> Removal:
    """The rule for ``removal``: a registered name, ``"auto"`` (``"refit"`` with probe data, else
    ``"permutation"``), a :class:`Removal` instance or subclass."""
    if isinstance(removal, Removal):
        return removal
    if isinstance(removal, type) and issubclass(removal, Removal):
        return removal()
    if removal == "auto":
        removal = "refit" if has_probe else "permutation"
    if isinstance(removal, str) and removal in REMOVALS:
        return REMOVALS[removal]()
    raise ValueError(f"removal must be 'auto', one of {sorted(REMOVALS)} or a Removal, got {removal!r}")


# ----------------------------------------------------------------------------- which layers go
def _combination_problem(teacher: Chain, student: Chain, combo: Sequence[int]) -> Optional[str]:
    """``None`` if removing the teacher layers ``combo`` gives the student's structure, else why not."""
    n = len(teacher)
    for t in combo:
        why = removable(teacher, t)
        if why is not None:
            return f"teacher layer {teacher.layers[t].path!r} cannot be removed: {why}"
    kept = [t for t in range(n) if t not in combo]
    for t, sl in zip(kept, student.layers):
        why = layer_mismatch(teacher.layers[t], sl)
        if why:
            return why
    if teacher.layers[kept[-1]].out_units != student.layers[-1].out_units:
        return "the output sizes differ"
    for t in combo:  # the removed layer must shrink to a square map
        prev_kept = max(i for i in kept if i < t)
        width_in = student.layers[kept.index(prev_kept)].out_units
        if teacher.layers[t].out_units < width_in:
            return (f"teacher layer {teacher.layers[t].path!r} has fewer units ({teacher.layers[t].out_units}) "
                    f"than its input ({width_in})")
    return None


def _candidates(teacher: Chain, student: Chain, remove: Optional[Sequence[str]]) -> list[tuple[int, ...]]:
    n, m = len(teacher), len(student)
    if m > n:
        raise ShapeMismatchError(f"the student has {m} layers but the teacher only {n}: a student cannot be deeper")
    if remove is None:
        return list(itertools.combinations(range(n), n - m))
    paths = [L.path for L in teacher.layers]
    unknown = [p for p in remove if p not in paths]
    if unknown:
        raise KeyError(f"remove={unknown}: no such teacher layer; teacher layers: {paths}")
    combo = tuple(sorted(paths.index(p) for p in remove))
    if len(combo) != n - m:
        raise ShapeMismatchError(f"remove= names {len(combo)} layers but the teacher has {n} and the student {m}")
    return [combo]


def choose_removals(
    teacher: Chain, student: Chain, q: MeanFieldPosterior, remove: Optional[Sequence[str]], rule: Removal
) -> list[int]:
    """The teacher layers to remove: among the ways that give the student's structure (or the
    layers named by ``remove``), the one with the smallest total ``rule.score``.

    Raises :class:`ShapeMismatchError` with the reasons when no way works.
    """
    reasons = []
    best, best_score = None, math.inf
    for combo in _candidates(teacher, student, remove):
        why = _combination_problem(teacher, student, combo)
        if why is not None:
            reasons.append(why)
            continue
        score = sum(rule.score(q.locs[f"{teacher.layers[t].path}.weight"]) for t in combo)
        if score < best_score:
            best, best_score = list(combo), score
    if best is None:
        raise ShapeMismatchError(
            "the student cannot be reached from the teacher by removing units and layers: "
            + "; ".join(dict.fromkeys(reasons))
        )
    return best
