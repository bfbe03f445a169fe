"""Growth: embed a small trained network's posterior into a larger network (the reverse of alignment).

"Anti-distillation" (Petrushina, Grabovoy, Bakhteev & Strijov 2022): when the data get more
classes or features, a larger model starts from a smaller pre-trained one; Net2Net (Chen,
Goodfellow & Shlens 2016) widens and deepens function-preservingly. One concern per module:

- :mod:`.matching`: which large layer continues which small layer, which are inserted
  (:func:`match_layers`), and the refusal to shrink (:class:`~bayesdistill.ShapeMismatchError`);
- :mod:`.plan`: the result as typed, replayable, savable data (:class:`GrowthPlan`,
  :class:`UnitMap`, :class:`GrownLayer`);
- :mod:`.driver`: :func:`grow`, the modes ``net2net``, ``embed``, ``zero``, ``uniform``;
- :mod:`.student`: :class:`GrowthPrior` and :func:`student_from_small` (the grown BNN in one call).

Supported: chains (``nn.Sequential``, nested allowed) of Linear/Conv1d/Conv2d, BatchNorm1d/2d
after a continued layer, parameter-free modules (activations, Flatten, pooling, dropout). Not
supported: residual or attention blocks, grouped or dilated-by-growth convolutions, a longer input
(the positions per channel must stay), new layers with normalization after them, removing
anything (use :func:`~bayesdistill.align`).
"""

from .driver import grow
from .matching import LayerMatch, match_layers
from .plan import GROWTH_MODES, GrownLayer, GrowthPlan, UnitMap
from .student import GROWN_INITS, GrowthPrior, student_from_small

__all__ = ["grow", "GrowthPlan", "GrownLayer", "UnitMap", "GROWTH_MODES", "GrowthPrior", "student_from_small",
           "GROWN_INITS", "match_layers", "LayerMatch"]
