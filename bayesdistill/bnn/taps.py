"""Feature taps: read the outputs of a network's modules by path with forward hooks.

Distillation terms compare what a teacher and a student compute inside their networks; nobody
rewrites ``forward()`` for that (torchdistill's idea): a module path such as ``"features.3"``
(a key of ``dict(net.named_modules())``) names the module whose output is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["FeatureTaps"]


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
