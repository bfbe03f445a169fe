"""``bd.align`` end to end (distill/align/driver.py): the steps, the defaults, the records.

Hand-worked cases: the expected aligned posteriors and functions are computed independently
with plain torch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import DataError, ShapeMismatchError
from bayesdistill.distill import CRITERIA
from bayesdistill.distill.align import Refit, Restrict
from _align_helpers import (
    TeacherPosterior,
    assert_posteriors_equal,
    make_teacher,
    mlp,
    other_posterior,
    random_teacher_and_data,
    rel_err,
    seeded,
    set_bn,
    student_at,
)


def test_identity_plan_same_architecture_maps_the_posterior_unchanged():
    teacher, q = make_teacher(mlp(3, 4, 2, seed=0))
    student = mlp(3, 4, 2, seed=5)  # same architecture, other weights
    plan = bd.align(teacher, student)
    assert plan.is_identity and plan.edits == []
    aligned = plan.apply(q)
    assert_posteriors_equal(aligned, q)
    assert all(L["kept"] == list(range(L["teacher_units"])) and not L["removed"] for L in plan.layers)

    s = bd.BNN(student, prior=TeacherPosterior(q, plan=plan, scale="posterior"))
    assert torch.equal(s.prior_loc, torch.cat([q.locs[n].reshape(-1) for n in s.site_names]))
    assert torch.equal(s.prior_scale, torch.cat([q.scales[n].reshape(-1) for n in s.site_names]))

    # an identity plan (no edits) maps any posterior of the teacher's shapes onto itself
    q2 = other_posterior(q)
    assert_posteriors_equal(plan.apply(q2), q2)


def test_identity_plan_with_batchnorm_probe_data_and_point_estimates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(15, 2))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    teacher, q = make_teacher(net, likelihood=bd.likelihoods.Normal(scale=0.3))
    plan = bd.align(teacher, net, probe=torch.randn(20, 1, 5))
    assert plan.is_identity and plan.compensation
    assert plan.output_error == pytest.approx(0.0, abs=1e-12)
    # point estimates included: BatchNorm statistics (with num_batches_tracked) and the likelihood's
    assert_posteriors_equal(plan.apply(q), q)
    s = student_at(plan, q, net, likelihood=bd.likelihoods.Normal(scale=1.0))
    teacher.eval()
    x = torch.randn(8, 1, 5)
    assert torch.equal(s(x), teacher(x))


@pytest.mark.parametrize("conv", [False, True])
def test_align_with_data_leaves_a_training_mode_teacher_untouched(conv):
    """A teacher left in training mode (BatchNorm, dropout) is aligned as the eval-mode network."""
    if conv:
        net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5),
                            nn.Flatten(), nn.Linear(20, 2))
        x = torch.randn(40, 1, 5, generator=seeded(41))
    else:
        net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))
        x = torch.randn(40, 3, generator=seeded(41))
    set_bn(net[1], 42)
    teacher = bd.BNN(net, init_scale=0.1)
    assert teacher.training
    before = teacher.point_estimates()
    plan = bd.align(teacher, net, probe=x)  # identity plan
    assert teacher.training and teacher.net[3].training
    after = teacher.point_estimates()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # no running statistic was updated
    assert plan.is_identity
    assert plan.output_error == pytest.approx(0.0, abs=1e-12)  # no dropout noise in the comparison


@pytest.mark.parametrize("step", [1.0, 0.25])
def test_compensation_lowers_the_error(step):
    teacher, q, x = random_teacher_and_data()
    student = mlp(4, 3, 3, seed=1)
    kw = dict(probe=x, criterion="snr", step=step)
    plan_c = bd.align(teacher, student, compensation=True, **kw)
    plan_n = bd.align(teacher, student, compensation=False, **kw)
    assert plan_c.compensation and not plan_n.compensation
    assert plan_c.output_error < plan_n.output_error
    e_c, e_n = plan_c.layers[1]["error"], plan_n.layers[1]["error"]
    assert e_c["compensated"] < e_c["restricted"]
    assert e_n["compensated"] == e_n["restricted"]
    if step == 1.0:  # one round: the same units are removed, so the plain restrictions agree
        assert plan_c.layers[0]["kept"] == plan_n.layers[0]["kept"]
        assert e_c["restricted"] == pytest.approx(e_n["restricted"], rel=1e-6)
    # one least-squares re-fit of layer 1 per pruning round of layer 0, none without compensation
    rounds = {r for r, _, _ in plan_c.layers[0]["trace"]}
    assert len(plan_c.layers[1]["reconstruction"]) == len(rounds) == (1 if step == 1.0 else 4)
    assert plan_n.layers[1]["reconstruction"] == []
    # the reported output errors are the pruned teachers' relative errors on the probe data
    teacher.eval()
    full = teacher(x)
    for plan in (plan_c, plan_n):
        s = student_at(plan, q, student)
        assert plan.output_error == pytest.approx(rel_err(s(x), full), rel=1e-4)


class _Recorder:
    """Wraps a built-in criterion and records every unit's score per round, keyed by its weights."""

    def __init__(self, name: str):
        self.fn = CRITERIA[name]
        self.__name__ = name
        self.calls: list[dict[tuple, float]] = []

    def __call__(self, ctx):
        scores = self.fn(ctx)
        rows = ctx.w_loc.reshape(ctx.units, -1)
        self.calls.append({tuple(r.tolist()): float(s) for r, s in zip(rows, scores)})
        return scores


@pytest.mark.parametrize("seed", [0, 3])
def test_iterative_rescoring_changes_the_order_only_when_means_are_refitted(seed):
    teacher, _, x = random_teacher_and_data(seed=seed, hidden=12)
    student = mlp(4, 4, 3, seed=100)

    def kept(**kw):
        return bd.align(teacher, student, probe=x, **kw).layers[0]["kept"]

    # the data criterion re-scores against the re-fitted next layer: one shot and iterative differ
    one = bd.align(teacher, student, probe=x, criterion="data", compensation=True, step=1.0)
    it = bd.align(teacher, student, probe=x, criterion="data", compensation=True, step=0.1)
    assert one.layers[0]["kept"] != it.layers[0]["kept"]
    assert one.layers[0]["trace"] != it.layers[0]["trace"]
    assert len({r for r, _, _ in it.layers[0]["trace"]}) == 8  # 8 excess units, ceil(0.1 * k) = 1 per round

    # without re-fits the remaining units' scores never change, so the order is the same
    for crit in ("snr", "data"):
        assert kept(criterion=crit, compensation=False, step=1.0) == kept(criterion=crit, compensation=False, step=0.1)

    # verify the reason: per-unit scores across rounds
    for crit, comp in (("snr", False), ("data", False), ("snr", True), ("data", True)):
        rec = _Recorder(crit)
        bd.align(teacher, student, probe=x, criterion=rec, compensation=comp, step=0.1)
        first = rec.calls[0]
        changed = [abs(c[u] - first[u]) > 1e-6 * max(1.0, abs(first[u])) for c in rec.calls[1:] for u in c]
        if comp:
            assert any(changed), crit  # the re-fit moved the outgoing means
        else:
            assert not any(changed), crit


def test_probe_data_formats_and_a_bnn_student_give_the_same_plan():
    teacher, q, x = random_teacher_and_data(hidden=6)
    y = torch.zeros(len(x), dtype=torch.long)
    student = mlp(4, 3, 3, seed=1)
    ref = bd.align(teacher, student, probe=x, criterion="data")
    ds = torch.utils.data.TensorDataset(x, y)
    for data in ((x, y), ds, torch.utils.data.DataLoader(ds, batch_size=50)):
        plan = bd.align(teacher, student, probe=data, criterion="data")
        assert plan.layers == ref.layers and plan.output_error == ref.output_error
    plan = bd.align(teacher, bd.BNN(student), probe=x, criterion="data")
    assert plan.layers == ref.layers
    assert_posteriors_equal(plan.apply(q), ref.apply(q))
    few = bd.align(teacher, student, probe=x, criterion="data", max_probe=10)
    assert few.output_error != ref.output_error  # only the first 10 inputs were used


def test_bad_probe_data_raises_data_error():
    teacher, _ = make_teacher(mlp(3, 4, 2))
    with pytest.raises(DataError, match="probe data do not fit the teacher"):
        bd.align(teacher, mlp(3, 2, 2), probe=torch.randn(10, 5))
    with pytest.raises(DataError, match="NaN"):
        bd.align(teacher, mlp(3, 2, 2), probe=torch.full((4, 3), float("nan")))
    with pytest.raises(DataError, match="probe data must be"):
        bd.align(teacher, mlp(3, 2, 2), probe="inputs.csv")


def test_cnn_deep_to_cnn_small():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher_net = bd.models.build("cnn-deep", (40,), 10)
        student_net = bd.models.build("cnn-small", (40,), 10)
    teacher = bd.BNN(teacher_net, init_scale=0.05)
    q = teacher.posterior()
    x = torch.randn(64, 40, generator=seeded(111))
    plan_c = bd.align(teacher, student_net, probe=x)
    plan_n = bd.align(teacher, student_net, probe=x, compensation=False)
    assert plan_c.compensation and plan_c.removal == "refit"
    for plan in (plan_c, plan_n):
        removed = [L["teacher"] for L in plan.layers if L["removed"]]
        assert removed == ["3"]  # the length-preserving Conv1d(32, 32, 3, padding=1)
        assert [len(L["kept"]) for L in plan.layers] == [16, 16, 16, 16, 10]  # '3' shrinks to square first
    assert plan_c.output_error < plan_n.output_error
    student = bd.BNN(student_net)
    aligned = plan_c.apply(q)
    assert {k: tuple(v.shape) for k, v in aligned.locs.items()} == {k: tuple(v) for k, v in student.shapes.items()}
    s = bd.BNN(student_net, prior=TeacherPosterior(q, plan=plan_c), init="prior-mean")
    s.eval()
    teacher.eval()
    assert rel_err(s(x), teacher(x)) == pytest.approx(plan_c.output_error, rel=1e-3)


# ----------------------------------------------------------------------------- defaults and order
def test_the_defaults_that_depend_on_the_probe_data():
    """The documented rule: probe data switch compensation on and removal "auto" to "refit";
    nothing else (the criterion stays "snr")."""
    teacher, q, x = random_teacher_and_data(hidden=6)
    student = mlp(4, 3, 3, seed=1)
    plain = bd.align(teacher, student)
    assert (plain.criterion, plain.compensation, plain.removal) == ("snr", False, "permutation")
    assert plain.output_error is None and all(isinstance(e, Restrict) for e in plain.edits)
    probed = bd.align(teacher, student, probe=x)
    assert (probed.criterion, probed.compensation, probed.removal) == ("snr", True, "refit")
    assert any(isinstance(e, Refit) for e in probed.edits)
    # probe data for the reported errors only: the plan of no probe data, plus the errors
    measured = bd.align(teacher, student, probe=x, compensation=False, removal="permutation")
    assert (measured.compensation, measured.removal) == (False, "permutation")
    assert measured.edits == plain.edits and measured.output_error is not None
    assert_posteriors_equal(measured.apply(q), plain.apply(q))
    with pytest.raises(TypeError, match="data"):
        bd.align(teacher, student, data=x)  # the probe inputs have one name: probe=


class _Unreadable(torch.utils.data.Dataset):
    """Probe data that must not be read."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        raise AssertionError("the probe data were read")


def test_align_checks_the_student_before_reading_the_probe_data():
    teacher, _ = make_teacher(mlp(3, 4, 2))
    with pytest.raises(ShapeMismatchError, match="wider"):
        bd.align(teacher, mlp(3, 5, 2), probe=_Unreadable())
    with pytest.raises(ShapeMismatchError, match="input sizes differ"):
        bd.align(teacher, mlp(5, 4, 2), probe=torch.utils.data.DataLoader(_Unreadable()))
