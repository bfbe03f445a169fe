"""Shared builders of the graph-alignment tests (tests/distill/align/test_graph*.py).

Teachers are tiny residual networks and Transformers from ``bd.models`` with random means,
BatchNorm statistics and affine parameters; the expected functions are computed independently by
loading the means into a plain copy of the architecture and zeroing what alignment removes.
"""

from __future__ import annotations

import torch
from torch import nn

import bayesdistill as bd


def randomize_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters of every BatchNorm (so nothing is trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return net


def tiny_resnet(blocks=(2, 2), widths=(8, 12), seed: int = 0, classes: int = 5) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return randomize_norms(bd.models.resnet(classes, blocks=blocks, widths=widths), seed)


def tiny_transformer(layers=6, heads=4, head_dim=2, ffn=12, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return bd.models.transformer(4, 6, vocab_size=20, d_model=8, num_heads=heads, head_dim=head_dim, ffn_dim=ffn,
                                     num_layers=layers)


def plain_copy(architecture: nn.Module, q: bd.MeanFieldPosterior) -> nn.Module:
    """A plain network of ``architecture``'s type with the posterior means and point estimates loaded
    (``load_state_dict``: no bayesdistill code involved), in eval mode."""
    import copy

    net = copy.deepcopy(architecture)
    state = {k: v.clone() for k, v in q.locs.items()}
    state.update({k[4:]: v.clone() for k, v in q.point_estimates.items() if k.startswith("net.")})
    net.load_state_dict(state, strict=True)
    return net.eval()


def dropped(record: dict) -> list[int]:
    """The teacher units a group record of a plan removed."""
    return sorted(set(range(record["teacher_units"])) - set(record["kept"]))


def zero_(t: torch.Tensor, index, dim: int = 0) -> None:
    with torch.no_grad():
        t.index_fill_(dim, torch.as_tensor(index, dtype=torch.long), 0.0)
