r"""Spectral bases on a network's layer graph (Lopes, Fenu & Starner 2017, "spectral" records).

The units of the recorded layers are the nodes of a graph whose edges are the absolute weights
of the linear maps between consecutive layers: for layers of widths ``n_1, ..., n_L`` and the
weights ``W_l`` (``[n_{l+1}, n_l]``) of the map from layer ``l`` to ``l + 1``, the adjacency is the
symmetric block matrix with ``A[l, l+1] = |W_l|^T`` and ``A[l+1, l] = |W_l|``. Its combinatorial
Laplacian is ``L = diag(A 1) - A``. The eigenvectors of ``L`` with the ``k`` smallest
eigenvalues (the smoothest signals on the graph) are the basis ``U`` (``[N, k]``); the spectral
coefficients of an activation vector ``a`` (the layers' activations concatenated) are
``U^T a``. A record of the coefficients' per-class mean and covariance is a compressed record of
the activations, and a reconstruction matches coefficients instead of activations.

- ``"spectral-all"``: one graph over all recorded layers;
- ``"spectral-pairs"``: one graph per pair of consecutive layers (``l``, ``l + 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["layer_graph_adjacency", "graph_laplacian", "spectral_basis", "num_components"]


def layer_graph_adjacency(sizes: Sequence[int], weights: Sequence[Tensor]) -> Tensor:
    """The symmetric adjacency ``[N, N]`` (``N = sum(sizes)``, float64) of a chain of layers of
    widths ``sizes`` connected by ``weights[l]`` of shape ``[sizes[l + 1], sizes[l]]``."""
    sizes = [int(s) for s in sizes]
    if len(weights) != len(sizes) - 1:
        raise ValueError(f"a chain of {len(sizes)} layers needs {len(sizes) - 1} weight matrices, got {len(weights)}")
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    a = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
    for l, w in enumerate(weights):
        if tuple(w.shape) != (sizes[l + 1], sizes[l]):
            raise ValueError(f"weight {l} has shape {tuple(w.shape)}, expected {(sizes[l + 1], sizes[l])}")
        block = w.detach().abs().to(torch.float64).cpu()
        a[offsets[l + 1]:offsets[l + 2], offsets[l]:offsets[l + 1]] = block
        a[offsets[l]:offsets[l + 1], offsets[l + 1]:offsets[l + 2]] = block.T
    return a


def graph_laplacian(adjacency: Tensor) -> Tensor:
    """``L = diag(A 1) - A`` of a symmetric adjacency."""
    return torch.diag(adjacency.sum(1)) - adjacency


def num_components(nodes: int, fraction: float) -> int:
    """How many eigenvectors a fraction keeps: ``max(1, round(fraction * nodes))``, at most ``nodes``."""
    return min(nodes, max(1, round(float(fraction) * nodes)))


def spectral_basis(sizes: Sequence[int], weights: Sequence[Tensor], k: int) -> Tensor:
    """The ``k`` eigenvectors of the layer graph's Laplacian with the smallest eigenvalues, as the
    columns of a ``[N, k]`` float32 matrix (``torch.linalg.eigh``; signs as it returns them)."""
    lap = graph_laplacian(layer_graph_adjacency(sizes, weights))
    if not 1 <= k <= lap.shape[0]:
        raise ValueError(f"k must be in [1, {lap.shape[0]}] (the number of nodes), got {k}")
    _, vectors = torch.linalg.eigh(lap)
    return vectors[:, :k].to(torch.float32).contiguous()
