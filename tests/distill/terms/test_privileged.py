"""PrivilegedKD (generalized distillation): the term is KD with the teacher run on the privileged
inputs x*; the side input is read from dict batches and from the engine's fast tensor path; a
missing or misshapen x* is a DataError before training; the registry builds it."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import bayesdistill as bd
from _distill_helpers import bnn_teacher
from _helpers import tiny_mlp, toy_classification
from bayesdistill.datasets import PrivilegedDataset
from bayesdistill.distill import KD, DistillObjective, PrivilegedKD, get_term
from bayesdistill.errors import DataError
from bayesdistill.infer import Batch


def _triplets(n: int = 16, seed: int = 0):
    x, y = toy_classification(n, seed=seed)  # x [n, 4], 3 classes
    xs = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1))
    return x, xs, y


def test_log_factor_is_kd_with_the_teacher_on_the_privileged_inputs():
    n, b, temp, lam = 40, 8, 2.0, 0.7
    x, xs, y = _triplets(b)
    teacher = tiny_mlp(in_dim=2, hidden=5, seed=3)  # reads x* (2 features), not x (4)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    term = PrivilegedKD(teacher, temperature=temp, weight=lam)
    assert term.likelihood_weight == pytest.approx(1 - lam) and term.name == "privileged_kd"
    obj = DistillObjective(student, [term])
    trace = poutine.trace(obj.model).get_trace(x, y, None, {"privileged": xs})
    trace.compute_log_prob()
    s_out = trace.nodes["_RETURN"]["value"]
    with torch.no_grad():
        t_out = teacher(xs)
    # by hand: T^2 KL(softmax(f_t(x*)/T) || softmax(f_s(x)/T)), per example
    p_t, p_s = torch.softmax(t_out / temp, -1), torch.softmax(s_out / temp, -1)
    by_hand = -(temp**2) * (p_t * (p_t.log() - p_s.log())).sum(-1)
    site = trace.nodes["distill.privileged_kd"]
    assert site["scale"] == pytest.approx(n / b)
    assert float(site["log_prob_sum"]) == pytest.approx(lam * float(by_hand.sum()) * n / b, rel=1e-5)
    # it equals the KD term whose teacher is given x* in place of x
    kd = KD(teacher, temperature=temp, weight=lam)
    torch.testing.assert_close(term.log_factor(s_out, {}, t_out, {}), kd.log_factor(s_out, {}, t_out, {}))
    ref = -(temp**2) * td.kl_divergence(td.Categorical(logits=t_out / temp), td.Categorical(logits=s_out / temp))
    torch.testing.assert_close(term.log_factor(s_out, {}, t_out, {}), ref, rtol=1e-5, atol=1e-6)
    # the likelihood is scaled by 1 - lambda
    ll = td.Categorical(logits=s_out).log_prob(y).sum()
    assert float(trace.nodes["obs"]["log_prob_sum"]) == pytest.approx((1 - lam) * n / b * float(ll), rel=1e-5)
    assert float(obj.step_metrics()["distill/privileged_kd/loss"]) == pytest.approx(-float(by_hand.mean()), rel=1e-5)


def test_a_kd_term_and_a_privileged_term_on_one_teacher_do_not_share_the_pass():
    teacher = tiny_mlp(in_dim=4, hidden=5, seed=3)
    assert KD(teacher).reference_key() != PrivilegedKD(teacher).reference_key()
    x, _, y = _triplets(6)
    xs = x.flip(0)  # same shape as x: a shared pass would be silently wrong
    a, b = KD(teacher, temperature=1.0, weight=0.5), PrivilegedKD(teacher, temperature=1.0, weight=0.5)
    obj = DistillObjective(bd.BNN(tiny_mlp(seed=2), dataset_size=6), [a, b])
    refs = obj._references(Batch(x, y, {"privileged": xs}))
    with torch.no_grad():
        assert torch.equal(refs[a.reference_key()][0], teacher(x))
        assert torch.equal(refs[b.reference_key()][0], teacher(xs))


class DictTriplets(Dataset):
    def __init__(self, x, xs, y):
        self.x, self.xs, self.y = x, xs, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "privileged": self.xs[i], "y": self.y[i]}


def _fit(data, term, n, epochs=2, **kw):
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    return student, bd.fit(student, data, epochs=epochs, batch_size=8, lr=0.01, seed=0, progress=False,
                           distill=[term], **kw)


def test_dict_batches_and_the_fast_tensor_path_give_the_same_batches_and_train():
    from bayesdistill.infer import Batches

    n = 24
    x, xs, y = _triplets(n)
    xs4 = torch.cat([xs, xs ** 2], 1)
    dicts, named = DictTriplets(x, xs4, y), PrivilegedDataset(x, y, xs4)
    for a, b in zip(Batches(dicts, 8, torch.device("cpu"), 5).epoch(1), Batches(named, 8, torch.device("cpu"), 5).epoch(1)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and set(a.side) == set(b.side) == {"privileged"}
        assert torch.equal(a.side["privileged"], b.side["privileged"])
    teacher = bnn_teacher(seed=1)  # a BNN teacher on 4 privileged features
    _, r1 = _fit(dicts, PrivilegedKD(teacher, weight=0.5), n)
    s2, r2 = _fit(named, PrivilegedKD(teacher, weight=0.5), n)
    # a plain TensorDataset (x, y, x*) puts x* in side["extra"]: key="extra" reads it
    s3, r3 = _fit(TensorDataset(x, y, xs4), PrivilegedKD(teacher, weight=0.5, key="extra"), n)
    assert torch.equal(s2.loc, s3.loc)
    for r in (r1, r2):
        assert all(torch.isfinite(torch.tensor(row["distill/privileged_kd/loss"])) for row in r.history)


def test_missing_privileged_inputs_are_a_data_error_before_training():
    n = 16
    x, xs, y = _triplets(n)
    teacher = tiny_mlp(in_dim=2, hidden=5, seed=3)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    before = student.loc.detach().clone()
    with pytest.raises(DataError, match=r"no side input 'privileged'.*side inputs: none"):
        bd.fit(student, (x, y), epochs=1, progress=False, distill=[PrivilegedKD(teacher)])
    assert torch.equal(student.loc, before)  # nothing trained
    with pytest.raises(DataError, match=r"no side input 'star'.*\['privileged'\]"):
        bd.fit(student, PrivilegedDataset(x, y, xs), epochs=1, progress=False,
               distill=[PrivilegedKD(teacher, key="star")])


def test_privileged_inputs_of_the_wrong_shape_are_a_data_error():
    n = 16
    x, xs, y = _triplets(n)
    teacher = tiny_mlp(in_dim=2, hidden=5, seed=3)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    # 3 features where the teacher reads 2: the teacher's own pass is the check
    with pytest.raises(DataError, match=r"teacher could not run on the privileged inputs of shape \(16, 3\)"):
        bd.fit(student, PrivilegedDataset(x, y, torch.randn(n, 3)), epochs=1, batch_size=16, progress=False,
               distill=[PrivilegedKD(teacher)])
    # a declared shape is checked on every batch
    with pytest.raises(DataError, match=r"privileged inputs of shape \(2,\) per example, the teacher expects \(5,\)"):
        bd.fit(student, PrivilegedDataset(x, y, xs), epochs=1, progress=False,
               distill=[PrivilegedKD(teacher, privileged_shape=(5,))])
    term = PrivilegedKD(teacher)
    with pytest.raises(DataError, match=r"shape \(3, 2\) but the batch holds 4 examples"):
        term.privileged_inputs(Batch(x[:4], y[:4], {"privileged": xs[:3]}))
    with pytest.raises(DataError, match="must be a tensor"):
        term.privileged_inputs(Batch(x[:4], y[:4], {"privileged": [1, 2, 3, 4]}))
    bad = xs[:4].clone()
    bad[1, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        term.privileged_inputs(Batch(x[:4], y[:4], {"privileged": bad}))
    with pytest.raises(DataError, match="no index 2"):
        PrivilegedKD(teacher, key="extra", index=2).privileged_inputs(Batch(x[:4], y[:4], {"extra": (xs[:4],)}))


def test_arguments_and_the_registry():
    teacher = tiny_mlp(in_dim=2, hidden=5, seed=3)
    with pytest.raises(TypeError, match="key"):
        PrivilegedKD(teacher, key="")
    with pytest.raises(ValueError, match="index"):
        PrivilegedKD(teacher, index=-1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PrivilegedKD(teacher, weight=1.5)
    spec = get_term("privileged_kd")
    assert spec.cls is PrivilegedKD and spec.tasks == ("classification",) and not spec.pairs
    (term,) = spec.make(teacher, None, temperature=2.0, key="star")
    assert isinstance(term, PrivilegedKD) and term.temperature == 2.0 and term.weight == 1.0 and term.key == "star"
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        spec.make(teacher, None, weight=0.0)


def test_a_distilled_student_learns_what_the_teacher_sees():
    """x* = the label-defining feature, x = that feature plus 3 of noise; with few examples the
    distilled student's test accuracy is at least the plain student's (a smoke check of the
    mechanism, not of the paper's numbers)."""
    data = bd.datasets.privileged_synthetic(1, n_train=60, n_test=2000, dim=10, seed=0)
    result = bd.distill.generalized_distillation(data, epochs=60, batch_size=60, seed=0, num_samples=16)
    acc = result.accuracy
    assert set(acc) == {"teacher", "student", "distilled"}
    assert acc["teacher"] > 0.85
    assert acc["distilled"] >= acc["student"] - 0.01
    assert result.gain == pytest.approx(acc["distilled"] - acc["student"])
    assert isinstance(result.models["teacher"].net, nn.Linear)
    assert result.models["teacher"].net.in_features == 1 and result.models["student"].net.in_features == 10
