"""Feature taps: the outputs of a network's modules by path, read with forward hooks.

- :class:`FeatureTaps`: a context manager capturing the outputs of named modules (nobody
  rewrites ``forward()``); distillation terms and the representation diagnostics read features
  through it. A path may end in *views* that reshape what is captured, so that the terms, which
  expect feature maps with channels on axis 1 (``[B, C, ...]``) or vectors (``[B, D]``), can read
  any layer (:data:`VIEWS`): ``"layers.2:seq"`` is a Transformer layer's ``[B, L, D]`` output as
  ``[B, D, L]`` (one "channel" per model dimension, positions as the spatial axis),
  ``"layer3:pool"`` a ResNet stage's ``[B, C, H, W]`` averaged to ``[B, C]``,
  ``"layers.2:seq:pool"`` the mean token, ``"attn:first"`` the first element of a module that
  returns a tuple (``nn.MultiheadAttention``).
- :func:`last_hidden_layer`: the default feature module of a network, its last hidden
  representation (the last activation before the read-out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from torch import Tensor, nn

__all__ = ["FeatureTaps", "last_hidden_layer", "ACTIVATIONS", "VIEWS", "split_path", "apply_views"]


def _seq(t: Tensor) -> Tensor:
    if t.dim() != 3:
        raise ValueError(f"view 'seq' expects a sequence [batch, length, features], got shape {tuple(t.shape)}")
    return t.transpose(1, 2)


def _pool(t: Tensor) -> Tensor:
    if t.dim() < 3:
        raise ValueError(f"view 'pool' expects a feature map [batch, channels, ...], got shape {tuple(t.shape)}")
    return t.mean(tuple(range(2, t.dim())))


def _first(t: Any) -> Tensor:
    if not isinstance(t, (tuple, list)):
        raise ValueError(f"view 'first' expects a module that returns a tuple, got {type(t).__name__}")
    return t[0]


#: Views a tapped path may end in (``"<module path>:<view>[:<view>...]"``), applied left to right.
VIEWS: dict[str, Callable[[Any], Tensor]] = {
    "seq": _seq,  # [B, L, D] -> [B, D, L]: a sequence as a channels-first map
    "pool": _pool,  # [B, C, ...] -> [B, C]: average over every axis after the channels
    "flat": lambda t: t.reshape(t.shape[0], -1),  # [B, ...] -> [B, prod]
    "first": _first,  # (out, ...) -> out
}


def split_path(path: str) -> tuple[str, list[str]]:
    """``"layers.2:seq:pool"`` -> ``("layers.2", ["seq", "pool"])``; unknown views raise ``KeyError``."""
    module, *views = path.split(":")
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise KeyError(f"feature path {path!r}: unknown view(s) {unknown}; views: {', '.join(VIEWS)}")
    return module, views


def apply_views(value: Any, views: Sequence[str]) -> Any:
    """``value`` through the named :data:`VIEWS`, in order."""
    for v in views:
        value = VIEWS[v](value)
    return value


class FeatureTaps:
    """Capture the outputs of modules by path with forward hooks (a context manager).

    ``with FeatureTaps(net, ["features.3", "fc1"]) as taps: net(x)`` leaves ``taps.features``
    = {path: output}. A path that names no module raises ``KeyError`` listing the paths. A path
    may end in views (``"layers.2:seq"``, see :data:`VIEWS`); its feature is the output seen
    through them, under the full path as key.
    """

    def __init__(self, module: nn.Module, paths: Sequence[str], what: str = "network"):
        modules = dict(module.named_modules())
        self.views: dict[str, list[str]] = {}
        for p in paths:
            base, self.views[p] = split_path(p)
            if base not in modules:
                names = [n for n in modules if n]
                raise KeyError(
                    f"the {what} has no module {base!r}; its module paths are: {', '.join(names[:40])}"
                    + (" ..." if len(names) > 40 else "")
                )
        self.modules = {p: modules[split_path(p)[0]] for p in dict.fromkeys(paths)}
        self.features: dict[str, Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> "FeatureTaps":
        self.features = {}
        for p, m in self.modules.items():
            self._hooks.append(m.register_forward_hook(
                lambda mod, inp, out, p=p: self.features.__setitem__(p, apply_views(out, self.views[p]))))
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
