"""TinyBERT-style layer losses on a small Transformer encoder, and the heavy-student transfer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _helpers import tiny_mlp, toy_classification
from bayesdistill.distill import DistillObjective, TinyBERT, heavy_student
from bayesdistill.distill.function_space import FeatureTaps
from bayesdistill.infer import MeanFieldELBO


class Block(nn.Module):
    """A post-norm Transformer encoder block built from torch.nn, returning per-head attention."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):
        a, _ = self.attn(x, x, x, need_weights=True, average_attn_weights=False)
        x = self.n1(x + a)
        return self.n2(x + self.ff(x))


class Encoder(nn.Module):
    def __init__(self, d: int, heads: int, layers: int, classes: int = 3, seed: int = 0):
        torch.manual_seed(seed)
        super().__init__()
        self.embed = nn.Linear(1, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, x):  # x: [B, L] sequences of scalars
        h = self.embed(x.unsqueeze(-1))
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean(1))


def _setup():
    x, y = toy_classification(24, in_dim=6)
    teacher = bd.BNN(Encoder(8, 2, 2, seed=1), dataset_size=24)
    student = bd.BNN(Encoder(4, 2, 1, seed=2), dataset_size=24)
    term = TinyBERT(
        teacher,
        attention={"blocks.1.attn": "blocks.0.attn"},
        hidden={"blocks.1": "blocks.0"},
        embedding={"embed": "embed"},
        temperature=2.0,
        weight=0.5,
    )
    return x, y, teacher, student, term


def test_tinybert_losses_equal_their_definitions():
    x, y, teacher, student, term = _setup()
    obj = DistillObjective(student, [term])
    obj.setup(x)
    paths = ["blocks.0.attn", "blocks.0", "embed"]
    with torch.no_grad():
        with FeatureTaps(student.net, paths) as s_taps:
            s_out = student(x)
        t_out, t_feats = term.teacher_features(x, term.teacher_paths)
        parts = term.losses(s_out, s_taps.features, t_out, t_feats)
        a_s, a_t = s_taps.features["blocks.0.attn"][1], t_feats["blocks.1.attn"][1]
        assert a_s.shape == (24, 2, 6, 6)  # per-head maps
        torch.testing.assert_close(parts["attn"], ((a_s - a_t) ** 2).mean((1, 2, 3)))
        h = term.proj["hidn0"](s_taps.features["blocks.0"])
        torch.testing.assert_close(parts["hidn"], ((h - t_feats["blocks.1"]) ** 2).mean((1, 2)))
        e = term.proj["embd0"](s_taps.features["embed"])
        torch.testing.assert_close(parts["embd"], ((e - t_feats["embed"]) ** 2).mean((1, 2)))
        soft = -(F.softmax(t_out / 2.0, -1) * F.log_softmax(s_out / 2.0, -1)).sum(-1)
        torch.testing.assert_close(parts["pred"], soft)
        torch.testing.assert_close(
            term.log_factor(s_out, s_taps.features, t_out, t_feats), -sum(parts.values())
        )


def test_tinybert_term_enters_the_objective_and_trains():
    x, y, teacher, student, term = _setup()
    obj = DistillObjective(student, [term])
    obj.setup(x)
    trace = poutine.trace(obj.model).get_trace(x, y)
    site = trace.nodes["distill.tinybert"]
    assert site["is_observed"] and float(site["scale"]) == pytest.approx(1.0)  # batch = data set
    result = bd.fit(student, (x, y), epochs=3, batch_size=12, lr=1e-2, progress=False, distill=[term])
    assert [r["distill/tinybert/loss"] for r in result.history][-1] < result.history[0]["distill/tinybert/loss"]
    loss = MeanFieldELBO().differentiable_loss(obj.model, obj.guide, x, y)
    loss.backward()
    assert term.proj["hidn0"].weight.grad is not None and student.loc.grad is not None


def test_tinybert_needs_attention_weights():
    x, y = toy_classification(8, in_dim=6)

    class NoWeights(Block):
        def forward(self, x):
            a, _ = self.attn(x, x, x, need_weights=False)
            return a

    teacher = bd.BNN(nn.Sequential(nn.Unflatten(1, (6, 1)), nn.Linear(1, 4), NoWeights(4, 2), nn.Flatten(), nn.Linear(24, 3)))
    student = bd.BNN(nn.Sequential(nn.Unflatten(1, (6, 1)), nn.Linear(1, 4), NoWeights(4, 2), nn.Flatten(), nn.Linear(24, 3)))
    term = TinyBERT(teacher, attention={"2.attn": "2.attn"}, temperature=None)
    with pytest.raises(ValueError, match="need_weights=True"):
        bd.fit(student, (x, y), epochs=1, progress=False, distill=[term])


def test_heavy_student_runs_both_stages_with_decaying_intermediate_weights():
    x, y = toy_classification(40)
    teacher = bd.BNN(tiny_mlp(hidden=12, seed=0), dataset_size=40)
    bd.fit(teacher, (x, y), epochs=3, batch_size=20, progress=False)
    aux = bd.BNN(tiny_mlp(hidden=12, seed=1), dataset_size=40)
    student = bd.BNN(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)), dataset_size=40)
    aux_before = aux.loc.detach().clone()
    res = heavy_student(
        teacher, aux, student, (x, y), teacher_pair=("1", "1"), pairs={"0": "0", "2": "4"},
        epochs=(2, 3), intermediate_weight=4.0, decay=0.5, batch_size=20, progress=False,
    )
    assert len(res.auxiliary.history) == 2 and len(res.student.history) == 3
    assert "distill/pkt.1/loss" in res.auxiliary.history[0]
    assert not torch.equal(aux.loc.detach(), aux_before)  # stage 1 trained the auxiliary student
    weights = [r["intermediate_weight"] for r in res.student.history]
    assert weights == pytest.approx([2.0, 1.0, 0.5])  # x decay after every epoch
    with pytest.raises(ValueError, match="decay"):
        heavy_student(teacher, aux, student, (x, y), teacher_pair=("1", "1"), pairs={"2": "4"}, decay=0.0)


def test_heavy_student_resume_continues_the_decay_and_matches_an_uninterrupted_run(tmp_path):
    """Stage checkpoints go to D/auxiliary and D/student; an interrupted stage 2 resumed with
    resume=True ends bit-identical to an uninterrupted run (weights decayed from the epochs done)."""
    x, y = toy_classification(40)
    teacher = bd.BNN(tiny_mlp(hidden=12, seed=0), dataset_size=40)
    bd.fit(teacher, (x, y), epochs=2, batch_size=20, progress=False, seed=0)

    def nets():
        torch.manual_seed(11)  # the same initial student every time
        aux = bd.BNN(tiny_mlp(hidden=12, seed=1), dataset_size=40)
        student = bd.BNN(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)),
                         dataset_size=40)
        return aux, student

    kw = dict(teacher_pair=("1", "1"), pairs={"0": "0", "2": "4"}, intermediate_weight=4.0, decay=0.5,
              batch_size=20, progress=False, seed=3)
    aux, student = nets()
    full = heavy_student(teacher, aux, student, (x, y), epochs=(2, 4), **kw)

    aux2, student2 = nets()
    first = heavy_student(teacher, aux2, student2, (x, y), epochs=(2, 2), checkpoint_dir=tmp_path, **kw)
    assert (tmp_path / "auxiliary" / "checkpoint.pt").exists() and (tmp_path / "student" / "checkpoint.pt").exists()
    assert [r["intermediate_weight"] for r in first.student.history] == pytest.approx([2.0, 1.0])
    aux3, student3 = nets()  # fresh objects, as after a crash: everything comes from the checkpoints
    rest = heavy_student(teacher, aux3, student3, (x, y), epochs=(2, 4), checkpoint_dir=tmp_path, resume=True,
                         extend=True, **kw)  # stage 2 was planned for 2 epochs

    assert [r["intermediate_weight"] for r in rest.student.history] == pytest.approx([2.0, 1.0, 0.5, 0.25])
    assert len(rest.auxiliary.history) == 2  # the finished stage 1 was restored, not retrained
    assert torch.equal(aux3.loc, aux.loc) and torch.equal(aux3.rho, aux.rho)
    assert torch.equal(student3.loc, student.loc) and torch.equal(student3.rho, student.rho)
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h]  # noqa: E731
    assert strip(rest.student.history) == strip(full.student.history)
