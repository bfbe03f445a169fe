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

Networks that are not chains (residual networks, Transformers) take the graph path:

- :mod:`.graph`: the computation graph (``torch.fx``): channel groups coupled by residual
  connections, residual blocks (:func:`trace_network`; layer rules in :mod:`.graph_layers`,
  registered with :func:`register_layer_handler`; operation rules in :mod:`.graph_ops`; blocks in
  :mod:`.graph_blocks`);
- :mod:`.graph_match`: whether the student is the teacher with fewer blocks and units;
- :mod:`.graph_editor`: :class:`GraphEditor` (the posterior with kept units per group and removed
  blocks; replay without the network);
- :mod:`.graph_driver` / :mod:`.graph_refit`: the steps, least-squares compensation, errors.
"""

from .chain import Chain, Layer, parse_chain
from .criteria import BLOCK_CRITERIA, CRITERIA, BlockContext, UnitContext, register_block_criterion, register_criterion
from .curves import DEFAULT_FRACTIONS, PruningCurve, aligned_network, narrow, pruning_curve
from .driver import align
from .editor import PosteriorEditor
from .feasibility import check_alignable
from .graph import GraphGeometry, NetworkGraph, register_layer_handler, trace_network
from .graph_editor import GraphEditor
from .plan import AlignmentPlan, Fold, LayerGeometry, Refit, RefitLayer, RemoveBlock, Restrict, RestrictGroup
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
    "BlockContext",
    "BLOCK_CRITERIA",
    "register_block_criterion",
    "trace_network",
    "register_layer_handler",
    "NetworkGraph",
    "GraphGeometry",
    "GraphEditor",
    "RestrictGroup",
    "RemoveBlock",
    "RefitLayer",
]
