"""PKT (probabilistic knowledge transfer): the cosine-kernel conditionals and KL by hand, one term
over several pairs (equal to the sum of one-pair terms), per-pair weights, its metrics, and the
weight convention (KL in units of the teacher's KL from uniform; invariances)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _distill_helpers import student_features, teacher_features
from _helpers import tiny_mlp, toy_classification
from bayesdistill.distill import PKT, DistillObjective


def _pkt_cond_by_hand(rows):
    n = len(rows)
    out = []
    for i in range(n):
        k = []
        for j in range(n):
            if i == j:
                k.append(0.0)
                continue
            a, b = rows[i], rows[j]
            cos = sum(u * v for u, v in zip(a, b)) / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))
            k.append((cos + 1) / 2)
        total = sum(k)
        out.append([v / total for v in k])
    return out


def _pkt_by_hand(t_rows, s_rows):
    """-KL(P_i || Q_i) per example, in plain Python."""
    p, q = _pkt_cond_by_hand(t_rows), _pkt_cond_by_hand(s_rows)
    n = len(p)
    return [-sum(p[i][j] * math.log(p[i][j] / q[i][j]) for j in range(n) if j != i) for i in range(n)]


def test_pkt_hand_worked_three_examples():
    t_rows = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    s_rows = [[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 3.0]]
    p = _pkt_cond_by_hand(t_rows)
    # worked values of the teacher's first row: K = (0, 1/2, (1 + 1/sqrt 2)/2), normalized
    k13 = (1 + 1 / math.sqrt(2)) / 2
    assert p[0] == pytest.approx([0.0, 0.5 / (0.5 + k13), k13 / (0.5 + k13)])
    ref = _pkt_by_hand(t_rows, s_rows)
    pkt = PKT(nn.Identity(), {"t": "s"})
    lf = pkt.log_factor(None, {"s": torch.tensor(s_rows)}, None, {"t": torch.tensor(t_rows)})
    assert lf.shape == (3,)
    assert lf.tolist() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert all(v < 0 for v in ref)
    # identical geometry (the same directions, other lengths) gives 0: the kernel is a cosine
    same = pkt.log_factor(None, {"s": 3 * torch.tensor(t_rows)}, None, {"t": torch.tensor(t_rows)})
    torch.testing.assert_close(same, torch.zeros(3), rtol=0, atol=1e-5)
    # maps are flattened per example
    maps = pkt.log_factor(None, {"s": torch.tensor(s_rows).reshape(3, 1, 3)}, None, {"t": torch.tensor(t_rows).reshape(3, 2, 1)})
    torch.testing.assert_close(maps, lf)
    assert pkt.name == "pkt"  # one term, whatever its pairs


def test_pkt_takes_pairs_not_the_old_path_arguments():
    with pytest.raises(TypeError, match=r"pairs=\{teacher_path: student_path\}"):
        PKT(nn.Identity(), "s", "t")  # the old PKT(teacher, student_path, teacher_path)


def _two_pair_setup(n=40, b=8):
    x, y = toy_classification(b)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    teacher = tiny_mlp(hidden=8, seed=1)
    return x, y, student, teacher


def _trace(obj, x, y, seed=0):
    pyro.set_rng_seed(seed)
    trace = poutine.trace(obj.model).get_trace(x, y)
    trace.compute_log_prob()
    return trace


def test_pkt_over_two_pairs_is_the_sum_of_two_one_pair_terms():
    x, y, student, teacher = _two_pair_setup()
    w = {"0": 0.5, "1": 2.0}
    both = PKT(teacher, {"0": "0", "1": "1"}, weight=w)
    t_both = _trace(DistillObjective(student, [both]), x, y)
    a, b = PKT(teacher, {"0": "0"}, weight=w["0"]), PKT(teacher, {"1": "1"}, weight=w["1"])
    t_two = _trace(DistillObjective(student, [a, b]), x, y)
    assert (a.name, b.name) == ("pkt", "pkt1")
    assert torch.equal(t_both.nodes["_RETURN"]["value"], t_two.nodes["_RETURN"]["value"])  # the same draw
    lf_both = t_both.nodes["distill.pkt"]["fn"].log_factor
    lf_two = t_two.nodes["distill.pkt"]["fn"].log_factor + t_two.nodes["distill.pkt1"]["fn"].log_factor
    assert lf_both.shape == (8,)
    torch.testing.assert_close(lf_both, lf_two, rtol=1e-6, atol=1e-7)
    assert float(t_both.nodes["distill.pkt"]["log_prob_sum"]) == pytest.approx(
        float(t_two.nodes["distill.pkt"]["log_prob_sum"] + t_two.nodes["distill.pkt1"]["log_prob_sum"]), rel=1e-6)
    # the term's log-factor (before the weights) is the sum of the one-pair terms'
    s_out, s_feats = student_features(student, x, t_both, ["0", "1"])
    t_out, t_feats = teacher_features(teacher, x, ["0", "1"])
    torch.testing.assert_close(both.log_factor(s_out, s_feats, t_out, t_feats),
                               a.log_factor(s_out, s_feats, t_out, t_feats) + b.log_factor(s_out, s_feats, t_out, t_feats))


def test_pkt_per_pair_weights_against_the_computation_by_hand():
    n, bsz = 40, 8
    x, y, student, teacher = _two_pair_setup(n, bsz)
    w = {"0": 0.25, "1": 3.0}
    pkt = PKT(teacher, {"0": "0", "1": "1"}, weight=w, normalize="none")  # nats, as by hand
    obj = DistillObjective(student, [pkt])
    trace = _trace(obj, x, y)
    _, s_feats = student_features(student, x, trace, ["0", "1"])
    _, t_feats = teacher_features(teacher, x, ["0", "1"])
    per_pair = [_pkt_by_hand(t_feats[p].tolist(), s_feats[p].detach().tolist()) for p in ("0", "1")]
    expected = [w["0"] * u + w["1"] * v for u, v in zip(*per_pair)]
    site = trace.nodes["distill.pkt"]
    assert site["fn"].log_factor.detach().tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert site["scale"] == pytest.approx(n / bsz)
    assert float(site["log_prob_sum"]) == pytest.approx(n / bsz * sum(expected), rel=1e-4)
    assert pkt.pair_weights == [0.25, 3.0]
    # metrics: per pair and in total, the batch mean of -log f before the weights
    vals = obj.step_metrics()
    assert set(vals) == {"distill/pkt/loss", "distill/pkt/pair0/loss", "distill/pkt/pair1/loss"}
    for i, lf in enumerate(per_pair):
        assert float(vals[f"distill/pkt/pair{i}/loss"]) == pytest.approx(-sum(lf) / len(lf), rel=1e-4)
    assert float(vals["distill/pkt/loss"]) == pytest.approx(-(sum(per_pair[0]) + sum(per_pair[1])) / bsz, rel=1e-4)
    # a float weight: every pair that weight
    same = PKT(teacher, {"0": "0", "1": "1"}, weight=0.7)
    assert same.pair_weights == [0.7, 0.7] and same.weight == 0.7


# ---------------------------------------------------------------------------------- the weight convention
def _rows_kl(p, q):
    """KL(P_i || Q_i) per row by torch.distributions (the diagonal, 0 in both, left out)."""
    b = p.shape[0]
    off = ~torch.eye(b, dtype=torch.bool)
    return td.kl_divergence(td.Categorical(probs=p[off].reshape(b, b - 1)), td.Categorical(probs=q[off].reshape(b, b - 1)))


def test_pkt_default_is_the_kl_in_units_of_the_teachers_kl_from_uniform():
    g = torch.Generator().manual_seed(0)
    t, s = torch.relu(torch.randn(16, 10, generator=g)), torch.randn(16, 5, generator=g)
    pkt = PKT(nn.Identity(), {"t": "s"})
    assert pkt.normalize == "uniform"
    pkt.setup(None, {"s": s}, None, {"t": t})
    p, q = pkt._cond(t), pkt._cond(s)
    uniform = (1 - torch.eye(16)) / 15
    u = float(_rows_kl(p, uniform).mean())
    assert pkt.scales == {0: pytest.approx(u, rel=1e-4)}
    lf = pkt.pair_log_factors(None, {"s": s}, None, {"t": t})[0]
    torch.testing.assert_close(lf, -_rows_kl(p, q) / u, rtol=1e-4, atol=1e-6)
    # a student without geometry (all its features alike) pays about one unit per example
    flat = pkt.pair_log_factors(None, {"s": torch.ones(16, 5)}, None, {"t": t})[0]
    assert float(flat.mean()) == pytest.approx(-1.0, rel=1e-3)
    # normalize="none": nats
    raw = PKT(nn.Identity(), {"t": "s"}, normalize="none")
    raw.setup(None, {"s": s}, None, {"t": t})
    torch.testing.assert_close(raw.pair_log_factors(None, {"s": s}, None, {"t": t})[0], -_rows_kl(p, q),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        PKT(nn.Identity(), {"t": "s"}, normalize="max")


def test_pkt_weight_means_the_same_for_any_feature_size_and_scale():
    """Cosine kernels: a teacher map duplicated along its channels, or multiplied by 10, gives the
    same P, the same normalizer and the same log-factor."""
    g = torch.Generator().manual_seed(1)
    t, s = torch.relu(torch.randn(12, 4, 6, generator=g)), torch.randn(12, 7, generator=g)
    out = []
    for tt in (t, torch.cat([t, t], 1), 10 * t):
        pkt = PKT(nn.Identity(), {"t": "s"})
        pkt.setup(None, {"s": s}, None, {"t": tt})
        out.append(pkt.pair_log_factors(None, {"s": s}, None, {"t": tt})[0])
    torch.testing.assert_close(out[1], out[0])
    torch.testing.assert_close(out[2], out[0])


def test_pkt_kl_hardly_depends_on_the_batch_size():
    """KL(P_i || Q_i) is an average over the neighbours under P_i: on the same data, split into
    batches of 8 or of 512, its mean per example changes little (the normalizer u likewise)."""
    g = torch.Generator().manual_seed(0)
    t = torch.relu(torch.randn(1024, 32, generator=g) @ torch.randn(32, 32, generator=g))
    s = torch.relu(t @ torch.randn(32, 16, generator=g) * 0.3 + torch.randn(1024, 16, generator=g))
    pkt = PKT(nn.Identity(), {"t": "s"}, normalize="none")
    kl, u = {}, {}
    for b in (8, 512):
        kl[b] = torch.cat([-pkt.pair_log_factors(None, {"s": s[k:k + b]}, None, {"t": t[k:k + b]})[0]
                           for k in range(0, 1024, b)]).mean()
        u[b] = sum(pkt.uniform_kl(t[k:k + b]) for k in range(0, 1024, b)) / (1024 // b)
    assert float(kl[8]) == pytest.approx(float(kl[512]), rel=0.2)
    assert u[8] == pytest.approx(u[512], rel=0.2)
