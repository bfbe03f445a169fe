"""Feature taps: the outputs of a network's modules by path, read with forward hooks.

- :class:`FeatureTaps`: a context manager capturing the outputs of named modules (nobody
  rewrites ``forward()``); distillation terms and the representation diagnostics read features
  through it.
- :func:`last_hidden_layer`: the default feature module of a network, its last hidden
  representation (the last activation before the read-out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from torch import Tensor, nn

__all__ = ["FeatureTaps", "last_hidden_layer", "ACTIVATIONS"]


class FeatureTaps:
    """Capture the outputs of modules by path with forward hooks (a context manager).

    ``with FeatureTaps(net, ["features.3", "fc1"]) as taps: net(x)`` leaves ``taps.features``
    = {path: output}. A path that names no module raises ``KeyError`` listing the paths.
    """

    def __init__(self, module: nn.Module, paths: Sequence[str], what: str = "network"):
        modules = dict(module.named_modules())
        for p in paths:
            if p not in modules:
                names = [n for n in modules if n]
                raise KeyError(
                    f"the {what} has no module {p!r}; its module paths are: {', '.join(names[:40])}"
                    + (" ..." if len(names) > 40 else "")
                )
        self.modules = {p: modules[p] for p in dict.fromkeys(paths)}
        self.features: dict[str, Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> "FeatureTaps":
        self.features = {}
        for p, m in self.modules.items():
            self._hooks.append(m.register_forward_hook(lambda mod, inp, out, p=p: self.features.__setitem__(p, out)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


#: Activation modules (class names) that end a hidden layer.
ACTIVATIONS = ("ReLU", "LeakyReLU", "ReLU6", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid",
               "Softplus", "Hardtanh", "Hardswish", "PReLU")


def last_hidden_layer(net: nn.Module) -> Optional[str]:
    """Module path of the network's last hidden representation, or ``None`` when it has none.

    The last activation module (:data:`ACTIVATIONS`) before the read-out, the last Linear,
    Bilinear or convolution (or other leaf module with parameters): e.g. the ReLU before the
    Flatten and Linear of the built-in networks. Layers are recognized by type too, so this
    works on a :class:`~bayesdistill.BNN`'s network, whose weights are sample sites rather
    than parameters. ``None``: no activation precedes the read-out (e.g. a plain linear
    model); the network output is then the only representation.
    """
    leaves = [(n, m) for n, m in net.named_modules() if n and not any(True for _ in m.children())]
    layer_types = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
    readout = max((k for k, (_, m) in enumerate(leaves)
                   if isinstance(m, layer_types) or any(True for _ in m.parameters(recurse=False))), default=None)
    if readout is None:
        return None
    for n, m in reversed(leaves[:readout]):
        if type(m).__name__ in ACTIVATIONS:
            return n
    return None
