"""Networks as chains of layers: what alignment needs to know about an ``nn.Module``.

Alignment (``bd.align``) edits weights unit by unit, so it must know which layer feeds which.
It reads that from the module tree of a *chain*: an ``nn.Sequential`` (nested ones allowed)
whose leaves are Bayesian layers (``Linear``, ``Conv1d``, ``Conv2d``), normalization layers
(``BatchNorm1d/2d``) and parameter-free modules (activations, ``Flatten``, pooling, dropout,
reshaping helpers). Each Bayesian layer owns the leaves that follow it up to the next Bayesian
layer (its "after" modules: activation, normalization, flatten, pooling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from ...errors import UnsupportedLayerError

__all__ = ["Layer", "Chain", "parse_chain", "columns_per_unit"]

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Layer:
    """One Bayesian layer of a chain and the parameter-free/normalization modules after it."""

    index: int
    path: str
    module: nn.Module
    after: list[tuple[str, nn.Module]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()  # per-example shape of the layer's output (pre-activation)

    @property
    def kind(self) -> str:
        return "linear" if isinstance(self.module, nn.Linear) else "conv"

    @property
    def in_units(self) -> int:
        m = self.module
        return m.in_features if isinstance(m, nn.Linear) else m.in_channels

    @property
    def out_units(self) -> int:
        m = self.module
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None or "bias" in self.module._buffers

    def norms(self) -> list[tuple[str, nn.Module]]:
        return [(p, m) for p, m in self.after if isinstance(m, NORMS)]

    def flattens(self) -> bool:
        return any(isinstance(m, nn.Flatten) for _, m in self.after)

    def describe(self) -> str:
        m = self.module
        if isinstance(m, nn.Linear):
            return f"Linear({m.in_features}->{m.out_features})"
        return f"{type(m).__name__}({m.in_channels}->{m.out_channels}, k={m.kernel_size}, s={m.stride})"


@dataclass
class Chain:
    """A parsed chain: leading modules before the first layer, then the layers."""

    prefix: list[tuple[str, nn.Module]]
    layers: list[Layer]

    def __len__(self) -> int:
        return len(self.layers)


def columns_per_unit(layer: Layer, nxt: Layer, purpose: str) -> int:
    """Input columns of ``nxt`` that one unit of ``layer`` feeds: the positions per channel where a
    Linear reads a flattened convolution, else 1.

    Raises:
        UnsupportedLayerError: the two layers' sizes do not relate (``purpose``, e.g. "alignment",
            names what needs them to).
    """
    if nxt.kind == "linear" and layer.kind == "conv":
        if nxt.in_units % layer.out_units:
            raise UnsupportedLayerError(
                f"layer {nxt.path!r} reads {nxt.in_units} features after the {layer.out_units} channels of "
                f"{layer.path!r}; {purpose} needs a whole number of positions per channel")
        return nxt.in_units // layer.out_units
    if nxt.in_units != layer.out_units:
        raise UnsupportedLayerError(
            f"layer {nxt.path!r} reads {nxt.in_units} inputs but {layer.path!r} gives {layer.out_units}; "
            f"{purpose} cannot relate them")
    return 1


def _leaves(net: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                walk(f"{prefix}.{name}" if prefix else name, child)
            return
        if isinstance(module, LAYERS + NORMS) or not any(True for _ in module.children()):
            out.append((prefix, module))
            return
        raise UnsupportedLayerError(
            f"alignment works on chains of layers (nn.Sequential, possibly nested); module "
            f"{prefix or '<root>'!r} ({type(module).__name__}) has sub-modules whose order in the "
            "forward pass alignment cannot know. Write the network as an nn.Sequential."
        )

    walk("", net)
    return out


def parse_chain(
    net: nn.Module,
    example: Optional[Tensor] = None,
    what: str = "network",
    run: Optional[Callable[[Tensor], Tensor]] = None,
) -> Chain:
    """Parse ``net`` into a :class:`Chain`; with ``example`` (one input batch) record output shapes.

    ``run`` is the function that evaluates the network (default ``net`` itself; for a
    :class:`~bayesdistill.BNN`'s network pass ``bnn.forward``, which fills in the weights).

    Raises :class:`UnsupportedLayerError` naming the module for anything alignment cannot edit
    (a module with parameters that is not Linear/Conv1d/Conv2d/BatchNorm, grouped or dilated
    convolutions, non-zero padding modes).
    """
    prefix: list[tuple[str, nn.Module]] = []
    layers: list[Layer] = []
    for path, module in _leaves(net):
        if isinstance(module, LAYERS):
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and (module.groups != 1 or module.padding_mode != "zeros"):
                raise UnsupportedLayerError(
                    f"{what} layer {path!r}: alignment supports convolutions with groups=1 and "
                    f"padding_mode='zeros', got groups={module.groups}, padding_mode={module.padding_mode!r}"
                )
            layers.append(Layer(len(layers), path, module))
            continue
        has_params = any(True for _ in module.parameters(recurse=False)) or any(
            k in module._buffers for k in ("weight", "bias")
        )
        if has_params and not isinstance(module, NORMS):
            raise UnsupportedLayerError(
                f"{what} module {path!r} ({type(module).__name__}) has parameters but alignment only "
                "edits Linear, Conv1d, Conv2d and BatchNorm1d/2d layers"
            )
        (layers[-1].after if layers else prefix).append((path, module))
    if not layers:
        raise UnsupportedLayerError(f"the {what} has no Linear/Conv layer to align")
    if example is not None:
        shapes: dict[str, tuple[int, ...]] = {}
        hooks = [
            layer.module.register_forward_hook(
                lambda mod, inp, out, path=layer.path: shapes.__setitem__(path, tuple(out.shape[1:]))
            )
            for layer in layers
        ]
        # shapes only: evaluate in eval mode, so that BatchNorm neither fails on one example nor
        # updates its running statistics, then restore every module's mode
        modes = [(m, m.training) for m in net.modules()]
        net.eval()
        try:
            with torch.no_grad():
                (run or net)(example[:1])
        finally:
            for m, mode in modes:
                m.training = mode
            for h in hooks:
                h.remove()
        for layer in layers:
            layer.out_shape = shapes.get(layer.path, ())
    return Chain(prefix, layers)
