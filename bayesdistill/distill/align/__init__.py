"""Alignment: map a teacher's posterior onto a smaller student's shapes (Grabovoy & Strijov, 2021).

The package, one concern per module:

- :mod:`.chain`: networks as chains of layers (:func:`parse_chain`);
- :mod:`.feasibility`: whether a student is reachable from a teacher (:func:`check_alignable`);
- :mod:`.criteria`: which units go first (:data:`CRITERIA`, :func:`register_criterion`);
- :mod:`.removal`: which layers go and how each is folded away (:data:`REMOVALS`,
  :func:`register_removal`), with one assignment solver (:func:`scaled_permutation`);
- :mod:`.editor`: the posterior being edited (:class:`PosteriorEditor`);
- :mod:`.plan`: the result as typed, replayable, savable data (:class:`AlignmentPlan`);
- :mod:`.driver`: :func:`align`, the steps in order;
- :mod:`.curves`: narrowed architectures and pruning curves (:func:`narrow`,
  :func:`pruning_curve` -> :class:`PruningCurve`, :func:`aligned_network`).
"""

from .chain import Chain, Layer, parse_chain
from .criteria import CRITERIA, UnitContext, register_criterion
from .curves import DEFAULT_FRACTIONS, PruningCurve, aligned_network, narrow, pruning_curve
from .driver import align
from .editor import PosteriorEditor
from .feasibility import check_alignable
from .plan import AlignmentPlan, Fold, LayerGeometry, Refit, Restrict
from .removal import REMOVALS, Removal, register_removal, scaled_permutation

__all__ = [
    "align",
    "AlignmentPlan",
    "UnitContext",
    "CRITERIA",
    "register_criterion",
    "REMOVALS",
    "Removal",
    "register_removal",
    "check_alignable",
    "parse_chain",
    "narrow",
    "pruning_curve",
    "PruningCurve",
    "aligned_network",
    "DEFAULT_FRACTIONS",
    "Chain",
    "Layer",
    "PosteriorEditor",
    "Restrict",
    "Fold",
    "Refit",
    "LayerGeometry",
    "scaled_permutation",
]
