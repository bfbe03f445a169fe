"""bayesdistill.diagnostics.uncertainty: OOD detection against scikit-learn's ROC AUC and average
precision (ties included), selective-prediction curves against brute-force sorting and a
hand-worked case, and a point estimate (S = 1) with zero mutual information."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

import bayesdistill as bd
from bayesdistill.diagnostics import (
    OODResult,
    SelectiveResult,
    average_precision,
    ood_detection,
    roc_auc,
    roc_curve,
    selective_prediction,
    uncertainty_scores,
)


def _cases(n_cases: int = 150, seed: int = 0):
    """Random binary problems, half of them with heavily tied (integer) scores."""
    g = np.random.default_rng(seed)
    for i in range(n_cases):
        n = int(g.integers(2, 60))
        y = g.integers(0, 2, n)
        y[0], y[1] = 0, 1
        s = g.integers(0, 4, n).astype(float) if i % 2 else g.normal(size=n)
        yield y, s


# ----------------------------------------------------------------------------- ranking metrics
def test_roc_auc_and_average_precision_equal_sklearn_ties_included():
    for y, s in _cases():
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_roc_curve_equals_sklearn():
    for y, s in _cases(40, seed=1):
        fpr, tpr, thr = roc_curve(y, s)
        f2, t2, th2 = sk_roc_curve(y, s, drop_intermediate=False)
        assert fpr.numpy() == pytest.approx(f2) and tpr.numpy() == pytest.approx(t2)
        assert thr[1:].numpy() == pytest.approx(th2[1:])


def test_constant_scores_are_chance():
    y = [0, 0, 1, 1, 1]
    assert roc_auc(y, [2.0] * 5) == 0.5
    assert average_precision(y, [2.0] * 5) == pytest.approx(3 / 5)


@pytest.mark.parametrize("labels, scores, match", [
    ([1, 1, 1], [0.1, 0.2, 0.3], "both positive and negative"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "0 .negative. or 1"),
    ([0, 1], [0.1, float("nan")], "non-finite"),
    ([0, 1, 1], [0.1, 0.2], "labels but"),
])
def test_ranking_metrics_refuse_bad_input(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(labels, scores)


# ----------------------------------------------------------------------------- scores
def test_uncertainty_scores_by_hand():
    # two draws, one input: p1 = (1, 0), p2 = (0, 1): predictive (1/2, 1/2), each draw certain
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    u = uncertainty_scores(probs)
    assert float(u["entropy"][0]) == pytest.approx(math.log(2))
    assert float(u["expected_entropy"][0]) == pytest.approx(0.0)
    assert float(u["mutual_information"][0]) == pytest.approx(math.log(2))
    assert float(u["max_probability"][0]) == pytest.approx(0.5)
    # agreeing draws: no epistemic part
    same = torch.tensor([[[0.7, 0.3]], [[0.7, 0.3]]])
    u = uncertainty_scores(same)
    assert float(u["mutual_information"][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(u["entropy"][0]) == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)))


def test_ood_result_from_probs_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(5, 40, 4, generator=g), -1)
    b = torch.softmax(0.3 * torch.randn(5, 30, 4, generator=g), -1)
    res = OODResult.from_probs(a, b)
    ua, ub = uncertainty_scores(a), uncertainty_scores(b)
    labels = [0] * 40 + [1] * 30
    for name, sign in (("entropy", 1), ("mutual_information", 1), ("max_probability", -1)):
        s = sign * torch.cat([ua[name], ub[name]]).numpy()
        r = res[name]
        assert r.auroc == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
        assert r.aupr == pytest.approx(average_precision_score(labels, s), abs=1e-12)
        assert r.aupr_in == pytest.approx(average_precision_score([1 - v for v in labels], -s), abs=1e-12)
        fpr, tpr, _ = sk_roc_curve(labels, s, drop_intermediate=False)
        assert r.fpr_at_95_tpr == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
        assert torch.equal(r.in_values, ua[name]) and torch.equal(r.ood_values, ub[name])
    assert res.num_in == 40 and res.num_ood == 30 and res.num_samples == 5
    assert set(res.auroc) == {"entropy", "mutual_information", "max_probability"}


def test_max_probability_is_negated_for_detection():
    # OOD inputs are flat (low max probability): perfect detection by max_probability
    a = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    b = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
    res = OODResult.from_probs(a, b, scores=["max_probability", "entropy"])
    assert list(res) == ["max_probability", "entropy"]
    assert res["max_probability"].auroc == 1.0 and res["entropy"].auroc == 1.0
    assert res["max_probability"].aupr == 1.0 and res["max_probability"].fpr_at_95_tpr == 0.0


def test_from_probs_refuses_logits_and_bad_scores():
    with pytest.raises(ValueError, match="probabilities"):
        OODResult.from_probs(torch.randn(10, 3) * 5, torch.softmax(torch.randn(4, 3), -1))
    p = torch.softmax(torch.randn(10, 3), -1)
    with pytest.raises(ValueError, match="unknown uncertainty score"):
        OODResult.from_probs(p, p, scores=["energy"])
    with pytest.raises(ValueError, match="share S and C"):
        OODResult.from_probs(p, torch.softmax(torch.randn(4, 5), -1))


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def models(trained):
    bnn, _, test = trained
    torch.manual_seed(0)
    net = bd.models.build("mlp", (8,), 3, hidden=(16,))
    return bnn, net, test


def test_deterministic_network_has_zero_mutual_information(models):
    _, net, test = models
    ood = 4 * torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    res = ood_detection(net, test, ood)
    mi = res["mutual_information"]
    assert res.num_samples == 1 and res.seed is None
    assert torch.equal(mi.in_values, torch.zeros(len(test), dtype=torch.float64))
    assert torch.equal(mi.ood_values, torch.zeros(50, dtype=torch.float64))
    assert mi.auroc == 0.5
    # the entropy is the softmax entropy of the network's logits
    x, y = test.tensors
    with torch.no_grad():
        p = torch.softmax(net(x).double(), -1)
    assert res["entropy"].in_values.numpy() == pytest.approx((-(p * p.log()).sum(-1)).numpy())
    assert res.in_accuracy == pytest.approx(float((p.argmax(-1) == y).double().mean()))


def test_ood_detection_of_a_bnn_equals_the_predictive(models):
    bnn, _, test = models
    x, y = test.tensors
    ood = 4 * torch.randn(60, 8, generator=torch.Generator().manual_seed(4))
    res = ood_detection(bnn, (x, y), ood, num_samples=8, seed=3, name="teacher")
    logits, _ = bd.predict(bnn, (x,), num_samples=8, seed=3)
    logits_ood, _ = bd.predict(bnn, (ood,), num_samples=8, seed=3)
    ref = OODResult.from_probs(torch.softmax(logits.double(), -1), torch.softmax(logits_ood.double(), -1))
    for k in ref:
        assert res[k].auroc == pytest.approx(ref[k].auroc) and res[k].aupr == pytest.approx(ref[k].aupr)
    assert res.name == "teacher" and res.num_samples == 8 and res.seed == 3
    assert float(res["mutual_information"].in_values.min()) >= 0.0
    assert res.in_accuracy == pytest.approx(bd.evaluate(bnn, test, num_samples=8, seed=3)["accuracy"])
    d = res.to_dict()
    json.dumps(d)
    assert d["scores"]["entropy"]["auroc"] == res["entropy"].auroc and d["name"] == "teacher"


def test_ood_detection_refuses_what_it_cannot_score(models):
    _, net, test = models
    with pytest.raises(TypeError, match="BNN or an nn.Module"):
        ood_detection("model", test, torch.randn(3, 8))
    reg = bd.BNN(bd.models.build("mlp", (8,), 1, hidden=(4,)), likelihood=bd.likelihoods.Normal(scale=0.1),
                 dataset_size=10)
    with pytest.raises(TypeError, match="Categorical"):
        ood_detection(reg, test, torch.randn(3, 8))
    with pytest.raises(TypeError, match="tensor, an"):
        ood_detection(net, [1, 2, 3], torch.randn(3, 8))


# ----------------------------------------------------------------------------- selective prediction
def _brute_force(confidence, correct):
    """Accuracy of the k most confident answers, k = 1..N, by sorting (no ties)."""
    order = sorted(range(len(confidence)), key=lambda i: -confidence[i])
    ok = [correct[i] for i in order]
    return [sum(ok[:k]) / k for k in range(1, len(ok) + 1)]


def test_selective_curves_equal_brute_force_sorting():
    g = np.random.default_rng(0)
    for _ in range(30):
        n = int(g.integers(1, 50))
        conf = g.permutation(n).astype(float)  # distinct
        correct = g.integers(0, 2, n)
        res = SelectiveResult.from_correct(torch.tensor(conf), torch.tensor(correct))
        acc = _brute_force(conf.tolist(), correct.tolist())
        assert res.selective_accuracy == pytest.approx(acc)
        assert res.risk == pytest.approx([1 - a for a in acc])
        assert res.coverage == pytest.approx([k / n for k in range(1, n + 1)])
        assert res.aurc == pytest.approx(1 - sum(acc) / n)
        assert res.area_accuracy == pytest.approx(sum(acc) / n)
        for c, v in res.accuracy_at.items():
            assert v == pytest.approx(acc[math.ceil(c * n) - 1])


def test_selective_ties_are_the_mean_over_their_orders():
    """With tied confidences, every curve point is the average over all orders of the tied inputs."""
    conf = [0.9, 0.5, 0.5, 0.5, 0.2, 0.2]
    correct = [1, 0, 1, 1, 0, 1]
    res = SelectiveResult.from_correct(torch.tensor(conf), torch.tensor(correct))
    groups = [[0], [1, 2, 3], [4, 5]]
    curves = []
    for p1 in itertools.permutations(groups[1]):
        for p2 in itertools.permutations(groups[2]):
            ok = [correct[i] for i in [0, *p1, *p2]]
            curves.append([sum(ok[:k]) / k for k in range(1, 7)])
    mean = [sum(c[k] for c in curves) / len(curves) for k in range(6)]
    assert res.selective_accuracy == pytest.approx(mean)


def test_selective_hand_worked_case():
    # confidences 0.9 > 0.8 > 0.7 > 0.6 with correct, wrong, correct, wrong
    res = SelectiveResult.from_correct(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0]),
                                       coverages=(0.25, 0.5, 0.75, 1.0))
    # risks at k = 1..4: 0, 1/2, 1/3, 1/2 -> AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3
    assert res.risk == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert res.aurc == pytest.approx(1 / 3) and res.area_accuracy == pytest.approx(2 / 3)
    # a perfect ranking (both correct first): risks 0, 0, 1/3, 1/2 -> 5/24
    assert res.aurc_optimal == pytest.approx(5 / 24) and res.e_aurc == pytest.approx(1 / 3 - 5 / 24)
    assert res.accuracy_at == pytest.approx({0.25: 1.0, 0.5: 0.5, 0.75: 2 / 3, 1.0: 0.5})
    assert res.accuracy == 0.5


def test_selective_prediction_of_models(models):
    bnn, net, test = models
    x, y = test.tensors
    res = selective_prediction(bnn, test, num_samples=8, seed=1, name="bnn")
    logits, _ = bd.predict(bnn, (x,), num_samples=8, seed=1)
    p = torch.softmax(logits.double(), -1).mean(0)
    top, pred = p.max(-1)
    acc = _brute_force(top.tolist(), (pred == y).long().tolist())
    assert res.selective_accuracy == pytest.approx(acc)
    assert res.accuracy == pytest.approx(bd.evaluate(bnn, test, num_samples=8, seed=1)["accuracy"])
    assert res.name == "bnn" and res.num_samples == 8 and res.score == "max_probability"
    # entropy ranks the least uncertain first
    ent = selective_prediction(bnn, test, num_samples=8, seed=1, score="entropy")
    h = -(p * p.log()).sum(-1)
    assert ent.selective_accuracy == pytest.approx(_brute_force((-h).tolist(), (pred == y).long().tolist()))
    det = selective_prediction(net, (x, y))
    assert det.num_samples == 1 and det.seed is None
    d = det.to_dict()
    json.dumps(d)
    assert "coverage" not in d and len(det.to_dict(curves=True)["risk"]) == len(y)
    assert set(d["accuracy_at"]) == {"0.5", "0.8", "0.9", "0.95"}
    with pytest.raises(ValueError, match="labelled"):
        selective_prediction(net, x)
    with pytest.raises(ValueError, match="coverages"):
        selective_prediction(net, (x, y), coverages=(0.0,))
