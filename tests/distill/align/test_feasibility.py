"""Whether a student is reachable (distill/align/feasibility.py): one clear error naming the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import ShapeMismatchError, UnsupportedLayerError
from bayesdistill.distill import check_alignable
from _align_helpers import (
    make_teacher,
    mlp,
)


def test_student_wider_deeper_or_other_sizes_raise_shape_mismatch():
    teacher, _ = make_teacher(mlp(3, 4, 2))
    with pytest.raises(ShapeMismatchError, match=r"student layer '0' has 5 units but its teacher layer '0' has 4"):
        bd.align(teacher, mlp(3, 5, 2))
    with pytest.raises(ShapeMismatchError, match=r"input sizes differ.*'0' takes 3.*takes 5"):
        bd.align(teacher, mlp(5, 4, 2))
    with pytest.raises(ShapeMismatchError, match=r"output sizes differ.*'2' gives 2.*gives 3"):
        bd.align(teacher, mlp(3, 4, 3))
    with pytest.raises(ShapeMismatchError, match="3 layers but the teacher only 2"):
        bd.align(teacher, mlp(3, 4, 4, 2))
    with pytest.raises(ShapeMismatchError, match="Conv1d"):
        bd.align(teacher, nn.Sequential(nn.Conv1d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_unsupported_structures_raise_naming_the_module():
    teacher = bd.BNN(nn.Sequential(_Block(), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(_Block\)"):
        bd.align(teacher, mlp(3, 2, 2))
    grouped = bd.BNN(nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"layer '0'.*groups=2"):
        bd.align(grouped, nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)))
    plain = bd.BNN(mlp(3, 4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(_Block\)"):
        bd.align(plain, nn.Sequential(_Block(), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match="bd.BNN"):
        bd.align(mlp(3, 4, 2), mlp(3, 2, 2))


def test_a_layer_that_is_not_removable_raises_with_the_reason():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    teacher = bd.BNN(net)
    student = mlp(3, 3, 2)
    with pytest.raises(ShapeMismatchError, match=r"'2' cannot be removed: it must be followed by a ReLU"):
        bd.align(teacher, student)
    with pytest.raises(ShapeMismatchError, match=r"'2' cannot be removed: it must be followed by a ReLU"):
        bd.align(teacher, student, remove=["2"])
    with pytest.raises(ShapeMismatchError, match="first and the last layer cannot be removed"):
        bd.align(teacher, student, remove=["4"])
    with pytest.raises(KeyError, match="no such teacher layer"):
        bd.align(teacher, student, remove=["3"])


# ----------------------------------------------------------------------------- check_alignable
def test_check_alignable_accepts_reachable_students():
    teacher = bd.models.build("cnn-deep", (40,), 10)
    assert check_alignable(teacher, bd.models.build("cnn-small", (40,), 10)) is None
    assert check_alignable(bd.BNN(teacher), bd.BNN(bd.models.build("cnn-deep", (40,), 10, channels=8))) is None
    assert check_alignable(mlp(3, 8, 6, 2), mlp(3, 5, 2)) is None  # one layer removed, the rest narrowed


def test_check_alignable_messages_name_the_layers_and_sizes():
    deep = bd.models.build("cnn-deep", (40,), 10)  # Conv1d layers '1', '3', '5', '7' (32 channels), Linear '10'
    # a student layer wider than the teacher layer it comes from (the CLI's --channels 64)
    with pytest.raises(ShapeMismatchError, match=r"student layer '1' has 64 units but its teacher layer '1' has 32: "
                                                 r"the student must not be wider than the teacher"):
        check_alignable(deep, bd.models.build("cnn-small", (40,), 10, channels=64))
    # a middle layer that could come from several teacher layers: all of them named, with their sizes
    with pytest.raises(ShapeMismatchError, match=r"student layer '2' \(Linear\(8->6\)\) has 6 units, more than any teacher "
                                                 r"layer it could come from \('2': 4, '4': 4\)"):
        check_alignable(mlp(3, 8, 4, 4, 2), mlp(3, 8, 6, 2))
    # another kind of first layer: said before any size (an MLP for a CNN)
    with pytest.raises(ShapeMismatchError, match=r"student layer '1' is Linear\(40->8\) but the teacher layer it comes "
                                                 r"from, '1', is Conv1d\(1->32.*same kind"):
        check_alignable(deep, bd.models.build("mlp", (40,), 10, hidden=(8,)))
    # another kind in the middle, with the teacher layers it could come from
    student = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Unflatten(1, (4, 1)), nn.Conv1d(4, 4, 1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ShapeMismatchError, match=r"student layer '3' is Conv1d\(4->4.*no teacher layer it could come "
                                                 r"from \('2': Linear\(4->4\), '4': Linear\(4->4\)\) is a Conv1d"):
        check_alignable(mlp(3, 4, 4, 4, 2), student)
    with pytest.raises(ShapeMismatchError, match="3 layers but the teacher only 2"):
        check_alignable(mlp(3, 4, 2), mlp(3, 4, 4, 2))
    with pytest.raises(ShapeMismatchError, match=r"input sizes differ: teacher layer '0' takes 3, student layer '0' takes 5"):
        check_alignable(mlp(3, 4, 2), mlp(5, 4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(_Block\)"):
        check_alignable(mlp(3, 4, 2), nn.Sequential(_Block(), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match="nn.Module"):
        check_alignable("cnn", mlp(3, 4, 2))
