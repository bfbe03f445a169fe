"""bayesdistill.diagnostics.representations: cosine distances against hand computations and the
separation AUC against sklearn's ROC AUC."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

import bayesdistill as bd
from bayesdistill.bnn import FeatureTaps
from bayesdistill.diagnostics import CosineDistances, cosine_distances, separation_auc


def _cos_by_hand(a, b):
    return 1.0 - sum(p * q for p, q in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def _sklearn_auc(m) -> float:
    scores = torch.cat([m.similar, m.dissimilar]).tolist()
    labels = [0] * m.num_similar + [1] * m.num_dissimilar  # 1 = dissimilar, scored by distance
    return roc_auc_score(labels, scores)


def test_counts_pairs_and_matches_hand_computation():
    x = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5]]
    y = [0, 0, 1, 1]
    res = cosine_distances([("teacher", torch.nn.Identity()), ("student", torch.nn.Identity())],
                           (torch.tensor(x), torch.tensor(y)))
    assert isinstance(res, CosineDistances) and list(res) == ["teacher", "student"] and len(res) == 2
    i, j = res.pairs
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert res.same_class.tolist() == [True, False, False, False, False, True]
    assert (res.num_pairs, res.num_examples) == (6, 4)
    d = res["teacher"]
    assert d.num_similar == 2 and d.num_dissimilar == 4 and d.layer is None
    similar = [_cos_by_hand(x[0], x[1]), _cos_by_hand(x[2], x[3])]
    dissimilar = [_cos_by_hand(x[a], x[b]) for a, b in ((0, 2), (0, 3), (1, 2), (1, 3))]
    assert d.similar.tolist() == pytest.approx(similar, abs=1e-12)
    assert d.dissimilar.tolist() == pytest.approx(dissimilar, abs=1e-12)
    assert d.mean_similar == pytest.approx(sum(similar) / 2) and d.mean_dissimilar == pytest.approx(sum(dissimilar) / 4)
    # AUC: the fraction of (similar, dissimilar) pairs with the dissimilar one farther apart
    wins = sum((b > a) + 0.5 * (b == a) for a in similar for b in dissimilar)
    assert d.separation_auc == pytest.approx(wins / 8)
    assert d.separation_auc == pytest.approx(_sklearn_auc(d), abs=1e-12)


def test_separation_auc_equals_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    similar = torch.randint(0, 6, (40,), generator=g).double() / 5  # many ties, within and across groups
    dissimilar = torch.randint(2, 9, (70,), generator=g).double() / 5
    labels = [0] * 40 + [1] * 70
    assert separation_auc(similar, dissimilar) == pytest.approx(
        roc_auc_score(labels, torch.cat([similar, dissimilar]).tolist()), abs=1e-12)
    assert math.isnan(separation_auc(similar[:0], dissimilar))


def test_layers_bnn_and_model_list(trained):
    bnn, _, test = trained
    x, y = test.tensors
    # a module's output via FeatureTaps: the hidden ReLU '2' of the posterior-mean network
    res = cosine_distances([("teacher", bnn, "2"), ("student", bnn)], test)
    with torch.no_grad(), FeatureTaps(bnn.net, ["2"]) as taps:
        out = bnn(x)  # the posterior-mean network
    h = taps.features["2"]
    i, j = res.pairs
    same = y[i] == y[j]
    for name, f in (("teacher", h), ("student", out)):
        f = torch.nn.functional.normalize(f.double(), dim=1)
        expected = (1 - (f[i] * f[j]).sum(1)).clamp(0, 2)
        assert torch.allclose(res[name].similar, expected[same])
        assert torch.allclose(res[name].dissimilar, expected[~same])
        assert res[name].separation_auc == pytest.approx(_sklearn_auc(res[name]), abs=1e-9)
    assert res["teacher"].layer == "2"
    # the same pairs for every model; a plain nn.Module with a layer
    net = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.ReLU())
    res = cosine_distances([("a", bnn), ("b", bnn, "2"), ("c", net, "1")], test, max_pairs=500, seed=1)
    assert list(res.models) == ["a", "b", "c"]
    assert all(v.num_similar + v.num_dissimilar == 500 for v in res.models.values())
    assert [v.layer for v in res.models.values()] == [None, "2", "1"]
    assert bnn.training is True  # eval mode was restored


def test_samples_distinct_pairs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g), torch.arange(50) % 5
    ident = [("teacher", torch.nn.Identity())]
    res = cosine_distances(ident, (x, y), max_pairs=300, seed=3)
    i, j = res.pairs
    assert len(i) == 300 and bool((i < j).all())
    assert len(set(zip(i.tolist(), j.tolist()))) == 300
    assert int((y[i] == y[j]).sum()) == res["teacher"].num_similar
    again = cosine_distances(ident, (x, y), max_pairs=300, seed=3)
    assert torch.equal(again.pairs[0], i) and torch.equal(again.pairs[1], j)
    # all 1225 pairs when max_pairs allows
    assert cosine_distances(ident, (x, y)).num_pairs == 50 * 49 // 2


def test_to_dict_is_plain_json():
    x, y = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    res = cosine_distances([("t", torch.nn.Identity(), None), ("s", torch.nn.Identity())], (x, y))
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["num_examples"] == 6 and d["num_pairs"] == 15 and d["seed"] == 0 and list(d["models"]) == ["t", "s"]
    m = d["models"]["t"]
    assert m == {"layer": None, "mean_similar": pytest.approx(res["t"].mean_similar),
                 "mean_dissimilar": pytest.approx(res["t"].mean_dissimilar),
                 "separation_auc": pytest.approx(res["t"].separation_auc), "num_similar": 3, "num_dissimilar": 12}
    # one class only: no dissimilar pair, the AUC and that mean are None in the dict
    one = cosine_distances([("t", torch.nn.Identity())], (x, torch.zeros(6, dtype=torch.long))).to_dict()
    assert one["models"]["t"]["separation_auc"] is None and one["models"]["t"]["mean_dissimilar"] is None
    json.dumps(one, allow_nan=False)


def test_argument_errors():
    x, y = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    ident = torch.nn.Identity()
    with pytest.raises(TypeError, match="tuples"):
        cosine_distances(ident, (x, y))  # a bare model, not a list of (name, model)
    with pytest.raises(ValueError, match="class labels"):
        cosine_distances([("t", ident)], (x, torch.randn(6, 3)))
    with pytest.raises(KeyError, match="no module"):
        cosine_distances([("t", ident, "9")], (x, y))
    with pytest.raises(TypeError, match="tuples"):
        cosine_distances([ident, ident], (x, y))
    with pytest.raises(TypeError, match="labelled data"):
        cosine_distances([("t", ident)], "data")
    with pytest.raises(ValueError, match="no models"):
        cosine_distances([], (x, y))
    with pytest.raises(ValueError, match="differ"):
        cosine_distances([("t", ident), ("t", ident)], (x, y))
    with pytest.raises(ValueError, match="max_pairs"):
        cosine_distances([("t", ident)], (x, y), max_pairs=0)
    with pytest.raises(ValueError, match="at least 2"):
        cosine_distances([("t", ident)], (x[:1], y[:1]))
    with pytest.raises(TypeError, match="nn.Module"):
        cosine_distances([("t", lambda v: v)], (x, y))


def test_exported():
    for name in ("calibration", "CalibrationResult", "cosine_distances", "CosineDistances", "ModelDistances",
                 "separation_auc"):
        assert name in bd.diagnostics.__all__ and hasattr(bd.diagnostics, name)
