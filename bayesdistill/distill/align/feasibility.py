"""Whether a student is reachable from a teacher by alignment, checked before any long computation.

Alignment keeps the order of the layers and the first and last layers, removes units (never
adds them) and removes whole layers. So student layer i (of m) can only come from teacher layers
i .. i + (n - m) (of n), and:

- the student is not deeper than the teacher;
- input and output sizes are the same;
- every student layer has the kind (Linear, Conv1d, Conv2d) of a teacher layer it can come from;
- no student layer is wider than every teacher layer of its kind it can come from.

:func:`check_alignable` raises :class:`~bayesdistill.ShapeMismatchError` with one message that
names the layers and sizes. :func:`bayesdistill.align` calls it first; the finer conditions
(kernel sizes, biases, normalization layers, which layers can be removed) are checked for every
way to remove layers when the plan is built.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ...errors import ShapeMismatchError, UnsupportedLayerError
from .chain import Chain, Layer, parse_chain

__all__ = ["check_alignable", "check_chains", "removable", "layer_mismatch"]

_SAME_KIND = "alignment maps layers onto layers of the same kind"
_NOT_WIDER = "the student must not be wider than the teacher"


def _network(model: Any) -> nn.Module:
    net = getattr(model, "net", model)  # a BNN's network
    if not isinstance(net, nn.Module):
        raise TypeError(f"expected an nn.Module or a bd.BNN, got {type(model).__name__}")
    return net


def check_alignable(teacher: Any, student: Any, example: Any = None) -> None:
    """Raise :class:`~bayesdistill.ShapeMismatchError` if ``student`` cannot be aligned from ``teacher``.

    Args:
        teacher: a network (``nn.Module``) or a :class:`~bayesdistill.BNN`; a chain of
            Linear/Conv layers (see :func:`~bayesdistill.distill.parse_chain`), or with
            ``example`` any network alignment traces as a graph (residual networks, Transformers).
        student: the same for the student.
        example: one input batch; networks that are not chains are checked on their
            computation graph (:mod:`.graph_match`: fewer blocks per stage, fewer units per
            channel group), which needs it.

    Raises:
        ShapeMismatchError: naming the layers and sizes: a deeper student, other input or output
            sizes, a student layer of a kind no teacher layer it can come from has, or one wider
            than every teacher layer it can come from.
        UnsupportedLayerError: a network that is not a chain alignment can edit (names the module).
    """
    tnet, snet = _network(teacher), _network(student)
    if example is not None and not (_is_chain(tnet) and _is_chain(snet)):
        _check_graphs(teacher, student, example)
        return
    check_chains(parse_chain(tnet, None, "teacher"), parse_chain(snet, None, "student"))


def _is_chain(net: nn.Module) -> bool:
    """Whether ``net`` is a chain alignment edits layer by layer (else it is aligned as a graph)."""
    if not isinstance(net, nn.Sequential):
        return False
    try:
        parse_chain(net)
    except UnsupportedLayerError:
        return False
    return True


def _check_graphs(teacher: Any, student: Any, example: Any) -> None:
    """The graph path's checks: trace both, count the blocks each stage loses, match the rest."""
    from ...bnn.network import BNN
    from .graph import materialize, trace_network
    from .graph_match import check_stage_blocks, last_removable, match_graphs, stage_removals

    nets = [materialize(m.net, m.posterior().locs) if isinstance(m, BNN) else m for m in (teacher, student)]
    tgraph, sgraph = (trace_network(n, example, w) for n, w in zip(nets, ("teacher", "student")))
    needs = stage_removals(nets[0], nets[1])
    check_stage_blocks(tgraph, needs)
    match_graphs(tgraph, sgraph, last_removable(tgraph, needs))


def check_chains(teacher: Chain, student: Chain) -> None:
    """:func:`check_alignable` on parsed chains."""
    _check_kinds(teacher, student, first_only=True)  # an MLP for a CNN: say so before any size
    _check_depth(teacher, student)
    _check_sizes(teacher, student)
    _check_kinds(teacher, student)
    _check_widths(teacher, student)


def _sources(teacher: Chain, student: Chain, i: int) -> list[Layer]:
    """The teacher layers student layer i can come from (the first and last layers map onto each other)."""
    n, m = len(teacher), len(student)
    if i == 0:
        return [teacher.layers[0]]
    if i == m - 1:
        return [teacher.layers[-1]]
    return teacher.layers[i: i + n - m + 1]


def _check_depth(teacher: Chain, student: Chain) -> None:
    n, m = len(teacher), len(student)
    if m > n:
        raise ShapeMismatchError(f"the student has {m} layers but the teacher only {n}: a student cannot be deeper")


def _check_sizes(teacher: Chain, student: Chain) -> None:
    t_first, s_first = teacher.layers[0], student.layers[0]
    if t_first.in_units != s_first.in_units:
        raise ShapeMismatchError(
            f"input sizes differ: teacher layer {t_first.path!r} takes {t_first.in_units}, student layer "
            f"{s_first.path!r} takes {s_first.in_units}"
        )
    t_last, s_last = teacher.layers[-1], student.layers[-1]
    if t_last.out_units != s_last.out_units:
        raise ShapeMismatchError(
            f"output sizes differ: teacher layer {t_last.path!r} gives {t_last.out_units}, "
            f"student layer {s_last.path!r} gives {s_last.out_units}"
        )


def _check_kinds(teacher: Chain, student: Chain, first_only: bool = False) -> None:
    for i, s in enumerate(student.layers[:1] if first_only else student.layers):
        sources = _sources(teacher, student, i)
        if any(type(t.module) is type(s.module) for t in sources):
            continue
        if len(sources) == 1:
            t = sources[0]
            raise ShapeMismatchError(
                f"student layer {s.path!r} is {s.describe()} but the teacher layer it comes from, {t.path!r}, "
                f"is {t.describe()}; {_SAME_KIND}"
            )
        where = ", ".join(f"{t.path!r}: {t.describe()}" for t in sources)
        raise ShapeMismatchError(
            f"student layer {s.path!r} is {s.describe()} but no teacher layer it could come from ({where}) "
            f"is a {type(s.module).__name__}; {_SAME_KIND}"
        )


def _check_widths(teacher: Chain, student: Chain) -> None:
    for i, s in enumerate(student.layers):
        sources = [t for t in _sources(teacher, student, i) if type(t.module) is type(s.module)]
        if s.out_units <= max(t.out_units for t in sources):
            continue
        if len(sources) == 1:
            t = sources[0]
            raise ShapeMismatchError(
                f"student layer {s.path!r} has {s.out_units} units but its teacher layer {t.path!r} has "
                f"{t.out_units}: {_NOT_WIDER}"
            )
        where = ", ".join(f"{t.path!r}: {t.out_units}" for t in sources)
        raise ShapeMismatchError(
            f"student layer {s.path!r} ({s.describe()}) has {s.out_units} units, more than any teacher layer "
            f"it could come from ({where}): {_NOT_WIDER}"
        )


# ----------------------------------------------------------------------------- per-layer conditions
def removable(chain: Chain, t: int) -> Optional[str]:
    """``None`` if layer t can be removed by psi, else the reason."""
    layers = chain.layers
    L = layers[t]
    if t == 0 or t == len(layers) - 1:
        return "the first and the last layer cannot be removed (input and output sizes must match)"
    acts = [m for _, m in L.after]
    if not acts or not all(isinstance(m, (nn.ReLU, nn.Dropout, nn.Identity)) for m in acts) or not any(
        isinstance(m, nn.ReLU) for m in acts
    ):
        return "it must be followed by a ReLU only (an idempotent, positively homogeneous activation)"
    prev_acts = [m for _, m in layers[t - 1].after]
    if not prev_acts or not isinstance(prev_acts[-1], (nn.ReLU, nn.Dropout, nn.Identity)) or not any(
        isinstance(m, nn.ReLU) for m in prev_acts
    ):
        return "its input must come from a ReLU (so that inputs are >= 0)"
    pools = (nn.Flatten, nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool2d, nn.AvgPool2d)
    if any(isinstance(m, pools) for m in prev_acts):
        return "a flatten or pooling precedes it"
    if L.kind != layers[t - 1].kind:
        return "it is of another kind than the layer before it"
    m = L.module
    if L.kind == "conv":
        same = all(s == 1 for s in m.stride) and all(d == 1 for d in m.dilation) and (
            m.padding == "same" or all(p == (k - 1) // 2 and k % 2 == 1 for p, k in zip(m.padding, m.kernel_size))
        )
        if not same:
            return "a convolution is removable only with stride 1 and 'same' padding (odd kernel)"
    return None


def layer_mismatch(tl: Layer, sl: Layer) -> Optional[str]:
    """``None`` if student layer ``sl`` can be aligned from teacher layer ``tl``, else why not."""
    if tl.kind != sl.kind or type(tl.module) is not type(sl.module):
        return f"teacher layer {tl.path!r} is {tl.describe()} but student layer {sl.path!r} is {sl.describe()}"
    if tl.kind == "conv":
        for attr in ("kernel_size", "stride", "padding", "dilation"):
            if getattr(tl.module, attr) != getattr(sl.module, attr):
                return (
                    f"teacher layer {tl.path!r} and student layer {sl.path!r} differ in {attr}: "
                    f"{getattr(tl.module, attr)} vs {getattr(sl.module, attr)}"
                )
    if sl.out_units > tl.out_units:
        return (
            f"student layer {sl.path!r} has {sl.out_units} units but its teacher layer {tl.path!r} has "
            f"{tl.out_units}: {_NOT_WIDER}"
        )
    if tl.has_bias != sl.has_bias:
        return f"teacher layer {tl.path!r} and student layer {sl.path!r} differ in having a bias"
    if len(tl.norms()) != len(sl.norms()):
        return f"teacher layer {tl.path!r} and student layer {sl.path!r} have different normalization layers"
    return None
