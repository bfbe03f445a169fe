"""Whether a student is reachable (distill/align/feasibility.py): one clear error naming the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import ShapeMismatchError, UnsupportedLayerError
from _align_helpers import (
    mlp,
    make_teacher,
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
