"""TinyBERT-style layer losses on a small Transformer encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _helpers import toy_classification
from bayesdistill.bnn import FeatureTaps
from bayesdistill.distill import DistillObjective, TinyBERT
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
        # hidden states and embeddings: MSE in units of the teacher feature's variance (the default
        # normalize="variance"; on the setup batch, here the same x), written out
        def var(f):
            flat = f.reshape(len(f), -1)
            return ((flat - flat.mean(0)) ** 2).sum(0).div(len(f) - 1).mean()

        h = term.proj["hidn0"](s_taps.features["blocks.0"])
        v_h = var(t_feats["blocks.1"])
        assert term.variances["hidn0"] == pytest.approx(float(v_h), rel=1e-5)
        torch.testing.assert_close(parts["hidn"], ((h - t_feats["blocks.1"]) ** 2).mean((1, 2)) / v_h)
        e = term.proj["embd0"](s_taps.features["embed"])
        torch.testing.assert_close(parts["embd"], ((e - t_feats["embed"]) ** 2).mean((1, 2)) / var(t_feats["embed"]))
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
    assert set(obj.step_metrics()) == {"distill/tinybert/loss"}
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


def test_tinybert_hidden_states_must_agree_but_in_width():
    x, y = toy_classification(8, in_dim=6)
    teacher = bd.BNN(Encoder(8, 2, 1, seed=1), dataset_size=8)
    student = bd.BNN(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), dataset_size=8)
    term = TinyBERT(teacher, hidden={"blocks.0": "1"})  # [B, 6, 8] against a vector [B, 5]
    with pytest.raises(ValueError, match=r"TinyBERT hidden states differ in shape.*'blocks.0' \(8, 6, 8\)"):
        bd.fit(student, (x, y), epochs=1, progress=False, distill=[term])


def test_tinybert_reductions_and_the_plain_mse():
    """normalize="none" gives the paper's MSEs; reduction="sum" sums over the elements instead
    (D times the mean); attention maps are never normalized (probabilities, a fixed scale)."""
    x, y, teacher, student, _ = _setup()
    paths = ["blocks.0.attn", "blocks.0", "embed"]
    got = {}
    for reduction in ("mean", "sum"):
        term = TinyBERT(teacher, attention={"blocks.1.attn": "blocks.0.attn"}, hidden={"blocks.1": "blocks.0"},
                        embedding={"embed": "embed"}, temperature=2.0, normalize="none", reduction=reduction)
        obj = DistillObjective(student, [term])
        torch.manual_seed(0)
        obj.setup(x)
        assert term.variances == {"hidn0": 1.0, "embd0": 1.0}
        with torch.no_grad():
            with FeatureTaps(student.net, paths) as s_taps:
                s_out = student(x)
            t_out, t_feats = term.teacher_features(x, term.teacher_paths)
            got[reduction] = term.losses(s_out, s_taps.features, t_out, t_feats)
            h = term.proj["hidn0"](s_taps.features["blocks.0"])
        if reduction == "mean":
            torch.testing.assert_close(got["mean"]["hidn"], ((h - t_feats["blocks.1"]) ** 2).mean((1, 2)))
    for kind, d in (("attn", 2 * 6 * 6), ("hidn", 6 * 8), ("embd", 6 * 8)):
        torch.testing.assert_close(got["sum"][kind], d * got["mean"][kind], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["sum"]["pred"], got["mean"]["pred"])  # nats per example either way
    with pytest.raises(ValueError, match="reduction"):
        TinyBERT(teacher, hidden={"blocks.1": "blocks.0"}, reduction="max")
