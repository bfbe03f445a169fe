"""Unit-scoring criteria (distill/align/criteria.py): the built-in ones, the registry, errors.

Scores are checked against hand computations with plain torch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdistill as bd
from bayesdistill import DataError, MeanFieldPosterior
from bayesdistill.distill import CRITERIA, register_criterion
from _align_helpers import (
    hand_mlp_teacher,
    keep_by_first_weight,
    make_teacher,
    mlp,
    random_teacher_and_data,
    seeded,
)


@pytest.fixture
def criteria_registry():
    """Restore the criterion registry after a test that registers its own criteria."""
    before = dict(CRITERIA)
    yield CRITERIA
    CRITERIA.clear()
    CRITERIA.update(before)


def test_random_criterion_is_reproducible_by_seed():
    teacher, _ = make_teacher(mlp(4, 12, 3, seed=0))
    student = mlp(4, 4, 3, seed=1)
    k0 = bd.align(teacher, student, criterion="random", seed=0).layers[0]["kept"]
    assert bd.align(teacher, student, criterion="random", seed=0).layers[0]["kept"] == k0
    others = [bd.align(teacher, student, criterion="random", seed=s).layers[0]["kept"] for s in (1, 2)]
    assert any(k != k0 for k in others)
    assert all(len(k) == 4 and len(set(k)) == 4 for k in [k0, *others])


def test_snr_criterion_keeps_the_units_with_the_largest_mean_in_out_snr():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    teacher = bd.BNN(net)
    q = teacher.posterior()
    # |mu| = 1 everywhere; the scales make the SNRs
    locs = {k: torch.ones_like(v) for k, v in q.locs.items()}
    s_in = torch.tensor([0.1, 1.0, 0.5, 0.4])  # incoming rows and bias: SNR 10, 1, 2, 2.5
    s_out = torch.tensor([10.0, 0.1, 0.5, 1.0])  # outgoing columns: SNR 0.1, 10, 2, 1
    scales = {
        "0.weight": s_in[:, None].expand(4, 3).clone(), "0.bias": s_in.clone(),
        "2.weight": s_out[None, :].expand(2, 4).clone(), "2.bias": torch.ones(2),
    }
    teacher.load_posterior(MeanFieldPosterior(locs, scales))
    q = teacher.posterior()
    # by hand: mean over 3 incoming + 1 bias + 2 outgoing weights
    hand = torch.stack([
        torch.cat([(q.locs["0.weight"][j] / q.scales["0.weight"][j]), (q.locs["0.bias"][j] / q.scales["0.bias"][j])[None],
                   q.locs["2.weight"][:, j] / q.scales["2.weight"][:, j]]).abs().mean()
        for j in range(4)
    ])
    expected = sorted(torch.argsort(hand, descending=True)[:2].tolist())
    assert expected == [0, 1]  # incoming alone would keep 0 and 3, outgoing alone 1 and 2
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    for step in (1.0, 0.25):
        plan = bd.align(teacher, student, criterion="snr", step=step)
        assert plan.layers[0]["kept"] == expected
    trace = bd.align(teacher, student, criterion="snr", step=1.0).layers[0]["trace"]
    for _, unit, score in trace:
        assert score == pytest.approx(float(hand[unit]), rel=1e-5)


@pytest.mark.parametrize("compensation", [False, True])
def test_data_criterion_scores_are_the_units_output_energy(compensation):
    """With compensation a removed unit's mean goes into the re-fitted bias: the score is the
    centred output energy; without, the whole contribution is lost: the raw energy."""
    teacher, q, x = random_teacher_and_data(hidden=6)
    student = mlp(4, 2, 3, seed=1)
    plan = bd.align(teacher, student, probe=x, criterion="data", compensation=compensation, step=1.0)
    h = torch.relu(x @ q.locs["0.weight"].T + q.locs["0.bias"])
    hc = h - h.mean(0) if compensation else h
    energy = hc.square().mean(0) * q.locs["2.weight"].square().sum(0)  # E ||(a_j [- mean]) w_j||^2
    trace = plan.layers[0]["trace"]
    assert len(trace) == 4
    for _, unit, score in trace:
        assert score == pytest.approx(float(energy[unit]), rel=1e-4)
    assert plan.layers[0]["kept"] == sorted(torch.argsort(energy, descending=True)[:2].tolist())


@pytest.mark.parametrize("compensation", [False, True])
def test_data_criterion_for_a_convolution_feeding_a_convolution(compensation):
    L = 7
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 3, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3 * 4, 2))
    with torch.random.fork_rng():
        torch.manual_seed(58)
        teacher, q = make_teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(3 * 4, 2))
    x = torch.randn(50, 1, L, generator=seeded(59))
    plan = bd.align(teacher, student, probe=x, criterion="data", compensation=compensation, step=1.0)
    a = torch.relu(F.conv1d(x, q.locs["0.weight"], q.locs["0.bias"], padding=1))
    if compensation:  # the mean goes into the re-fitted bias
        a = a - a.mean(0)
    energy = []
    for j in range(4):  # channel j alone through the next convolution
        only = torch.zeros_like(a)
        only[:, j] = a[:, j]
        energy.append(F.conv1d(only, q.locs["2.weight"], None, stride=2, padding=1).square().sum((1, 2)).mean())
    energy = torch.stack(energy)
    for _, unit, score in plan.layers[0]["trace"]:
        assert score == pytest.approx(float(energy[unit]), rel=1e-4)
    assert plan.layers[0]["kept"] == sorted(torch.argsort(energy, descending=True)[:2].tolist())


def test_criterion_errors():
    teacher, _ = make_teacher(mlp(3, 4, 2))
    student = mlp(3, 2, 2)
    with pytest.raises(DataError, match="data"):
        bd.align(teacher, student, criterion="data")
    with pytest.raises(ValueError, match=r"3 scores for 4 units of layer '0'"):
        bd.align(teacher, student, criterion=lambda ctx: torch.zeros(3))
    with pytest.raises(ValueError, match="criterion must be one of"):
        bd.align(teacher, student, criterion="magnitude")
    with pytest.raises(ValueError, match="step"):
        bd.align(teacher, student, step=0.0)
    with pytest.raises(ValueError, match="removal"):
        bd.align(teacher, student, removal="drop")
    with pytest.raises(DataError, match="compensation"):
        bd.align(teacher, student, compensation=True)


# ----------------------------------------------------------------------------- the registry
def test_the_built_in_criteria_are_registered():
    assert {"random", "snr", "data"} <= set(CRITERIA)
    assert CRITERIA["data"].needs_probe and not CRITERIA["snr"].needs_probe and not CRITERIA["random"].needs_probe


def test_a_criterion_registered_by_name_is_used_by_align(criteria_registry):
    rounds = []

    @register_criterion("first-weight")
    def first_weight(ctx):
        rounds.append((ctx.round, ctx.units))
        return keep_by_first_weight(ctx)

    assert criteria_registry["first-weight"] is first_weight and first_weight.needs_probe is False
    teacher, q = make_teacher(hand_mlp_teacher())
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    plan = bd.align(teacher, student, criterion="first-weight", step=0.5)
    assert plan.criterion == "first-weight"
    assert plan.layers[0]["kept"] == [1, 3] and rounds == [(0, 4), (1, 3)]
    # the same plan as passing the function itself
    direct = bd.align(teacher, student, criterion=keep_by_first_weight, step=0.5)
    assert direct.layers == plan.layers and direct.criterion == "keep_by_first_weight"
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("first-weight")(lambda ctx: ctx.w_loc[:, 0])
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("snr")(first_weight)
    with pytest.raises(ValueError, match="non-empty"):
        register_criterion("")


def test_a_registered_criterion_that_needs_probe_data(criteria_registry):
    @register_criterion("mean-activation", needs_probe=True)
    def mean_activation(ctx):
        return ctx.activations.reshape(len(ctx.activations), ctx.units, -1).mean((0, 2))

    teacher, q, x = random_teacher_and_data(hidden=6)
    student = mlp(4, 2, 3, seed=1)
    with pytest.raises(DataError, match="criterion='mean-activation' needs probe data"):
        bd.align(teacher, student, criterion="mean-activation")
    plan = bd.align(teacher, student, criterion="mean-activation", probe=x, compensation=False, step=1.0)
    h = torch.relu(x @ q.locs["0.weight"].T + q.locs["0.bias"])
    assert plan.layers[0]["kept"] == sorted(torch.argsort(h.mean(0), descending=True)[:2].tolist())
    y = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(DataError, match="mean-activation.*probe="):
        bd.distill.pruning_curve(teacher, (x, y), criterion="mean-activation", fractions=(0.5,))
