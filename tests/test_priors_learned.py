"""Learned prior scales (empirical Bayes), TeacherPosterior scale options and alignment plans.

Checked against independent computations: prior site scales read from a Pyro trace of the
model, the ELBO against ``pyro.infer.TraceMeanField_ELBO`` under the same draws, KL values and
gradients against ``torch.distributions``, the empirical-Bayes optimum against its closed form
(for tensor l: s_l^2 = mean over its weights of (mu_q - mu_p)^2 + sigma_q^2, in units of the base
scale), and teacher priors against scales built by hand from the teacher posterior.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

import bayesdistill as bd
import bayesdistill.bnn.kl as kl_module
import bayesdistill.infer.elbo as elbo_module
from _helpers import randomize_posterior, states_equal, tiny_mlp, toy_classification, toy_regression, without_time

NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]  # the site names of tiny_mlp()
BASE = {"0.weight": 0.5, "0.bias": 3.0, "2.weight": 1.5, "2.bias": 3.0}  # the pattern prior below
PATTERN_SCALES = {"0.weight": 0.5, "*.bias": 3.0, "*": 1.5}
PATTERN_LOCS = {"*.bias": 0.5, "*": -0.25}


def _teacher_posterior(hidden: int = 6, seed: int = 1) -> bd.MeanFieldPosterior:
    teacher = bd.BNN(tiny_mlp(hidden=hidden, seed=seed))
    randomize_posterior(teacher, seed=5, scale_range=(0.05, 0.6))
    return teacher.posterior()


def _learned_pattern_bnn(**kw) -> bd.BNN:
    """A BNN whose Normal prior has per-tensor base scales, learned multipliers set to known values."""
    prior = bd.priors.Normal(loc=PATTERN_LOCS, scale=PATTERN_SCALES, learn_scale=True)
    bnn = bd.BNN(tiny_mlp(), prior=prior, **kw)
    randomize_posterior(bnn, seed=2, scale_range=(0.05, 0.9))
    with torch.no_grad():
        bnn.prior_log_scale.copy_(torch.tensor([0.3, -0.7, 0.1, 0.45]))
    return bnn


def _reference_kl(bnn: bd.BNN, p_locs, p_scales) -> torch.Tensor:
    """sum over tensors of KL(N(q_loc, q_scale) || N(p_loc, p_scale)), float64, from bnn.posterior()."""
    total = torch.zeros((), dtype=torch.float64)
    for name, (loc, scale) in bnn.posterior().items():
        p_loc = torch.as_tensor(p_locs[name], dtype=torch.float64).expand(loc.shape)
        p_scale = torch.as_tensor(p_scales[name], dtype=torch.float64).expand(loc.shape)
        total = total + td.kl_divergence(td.Normal(loc.double(), scale.double()), td.Normal(p_loc, p_scale)).sum()
    return total


# ----------------------------------------------------------------------------- 1. model sites and ELBO
def test_learned_scale_parameter_shape_and_init():
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(scale=PATTERN_SCALES, learn_scale=True))
    assert isinstance(bnn.prior_log_scale, torch.nn.Parameter)
    assert bnn.prior_log_scale.shape == (len(NAMES),) and torch.equal(bnn.prior_log_scale, torch.zeros(4))
    assert [n for n, _ in bnn.named_parameters()] == ["loc", "rho", "prior_log_scale"]
    assert "prior_log_scale" in bnn.state_dict()
    # the multiplier starts at 1: the effective scales are the base scales
    for name, scale in bnn.prior_scales().items():
        assert torch.equal(scale, torch.full(bnn.shapes[name], BASE[name]))
    # without learn_scale nothing is added
    plain = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(scale=PATTERN_SCALES))
    assert not hasattr(plain, "prior_log_scale") and [n for n, _ in plain.named_parameters()] == ["loc", "rho"]
    assert set(plain.state_dict()) == {"loc", "rho", "prior_loc", "prior_scale"}
    for name, scale in plain.prior_scales().items():
        assert torch.equal(scale, torch.full(plain.shapes[name], BASE[name]))
    assert bd.priors.Prior.learn_scale is False and bd.priors.Normal().learn_scale is False


def test_model_prior_sites_use_base_times_exp_param():
    bnn = _learned_pattern_bnn()
    mult = dict(zip(NAMES, [math.exp(v) for v in (0.3, -0.7, 0.1, 0.45)]))
    x, y = toy_classification(8)
    trace = poutine.trace(bnn.model).get_trace(x, y)
    for name in NAMES:
        base_dist = trace.nodes[name]["fn"].base_dist
        shape = bnn.shapes[name]
        torch.testing.assert_close(base_dist.scale, torch.full(shape, BASE[name] * mult[name]), rtol=1e-6, atol=0)
        assert torch.equal(base_dist.loc, torch.full(shape, PATTERN_LOCS["*.bias"] if name.endswith("bias") else -0.25))
    # prior_scales() reports the same effective values; kl() uses them
    for name, scale in bnn.prior_scales().items():
        torch.testing.assert_close(scale, torch.full(bnn.shapes[name], BASE[name] * mult[name]), rtol=1e-6, atol=0)
    p_locs = {n: (0.5 if n.endswith("bias") else -0.25) for n in NAMES}
    p_scales = {n: BASE[n] * mult[n] for n in NAMES}
    torch.testing.assert_close(bnn.kl().double(), _reference_kl(bnn, p_locs, p_scales), rtol=2e-6, atol=1e-5)


def test_model_prior_scale_views_share_one_flat_tensor():
    """The fused-KL fast path: the per-site prior scales glue back to their base without a copy."""
    bnn = _learned_pattern_bnn()
    x, y = toy_classification(8)
    trace = poutine.trace(bnn.model).get_trace(x, y)
    scales = [trace.nodes[n]["fn"].base_dist.scale.reshape(-1) for n in NAMES]
    glued = kl_module._concat(scales)
    assert glued.data_ptr() == scales[0].data_ptr() and glued.numel() == bnn.num_weights
    assert glued._base is None  # the flat tensor itself, not a torch.cat copy


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_meanfield_elbo_equals_trace_meanfield_elbo_with_learned_scale(kl_weight, monkeypatch):
    bnn = _learned_pattern_bnn(likelihood=bd.likelihoods.Normal(scale=0.7), dataset_size=100)
    x, y = toy_regression(16, out_dim=3)  # tiny_mlp maps 4 -> 3
    bnn.kl_weight = kl_weight
    params = [bnn.loc, bnn.rho, bnn.prior_log_scale]

    calls = []
    real = elbo_module.fused_normal_kl
    monkeypatch.setattr(elbo_module, "fused_normal_kl",
                        lambda pairs, *a: calls.append(len(pairs)) or real(pairs, *a))
    pyro.set_rng_seed(11)
    ours = bd.MeanFieldELBO(num_particles=2)
    l_ours = ours.differentiable_loss(bnn.model, bnn.guide, x, y)
    g_ours = torch.autograd.grad(l_ours, params)
    assert calls == [len(NAMES)] * 2  # one fused KL per particle, all sites in it
    pyro.set_rng_seed(11)
    l_ref = TraceMeanField_ELBO(num_particles=2).differentiable_loss(bnn.model, bnn.guide, x, y)
    g_ref = torch.autograd.grad(l_ref, params)

    torch.testing.assert_close(l_ours, l_ref, rtol=1e-6, atol=1e-4)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (g_ours[2].abs() > 0).all()  # the gradient reaches every prior multiplier
    torch.testing.assert_close(ours.last_parts["kl"], kl_weight * bnn.kl().detach(), rtol=1e-6, atol=1e-5)


def test_kl_gradient_in_prior_log_scale_matches_torch_distributions():
    bnn = _learned_pattern_bnn()
    g_ours = torch.autograd.grad(bnn.kl(), [bnn.loc, bnn.rho, bnn.prior_log_scale])

    loc = bnn.loc.detach().double().requires_grad_()
    rho = bnn.rho.detach().double().requires_grad_()
    log_s = bnn.prior_log_scale.detach().double().requires_grad_()
    numels = [s.numel() for s in bnn.shapes.values()]
    p_loc = torch.cat([torch.full((n,), 0.5 if k.endswith("bias") else -0.25, dtype=torch.float64) for k, n in zip(NAMES, numels)])
    p_scale = torch.cat([BASE[k] * log_s[i].exp() * torch.ones(n, dtype=torch.float64) for i, (k, n) in enumerate(zip(NAMES, numels))])
    ref = td.kl_divergence(td.Normal(loc, torch.nn.functional.softplus(rho)), td.Normal(p_loc, p_scale)).sum()
    g_ref = torch.autograd.grad(ref, [loc, rho, log_s])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_plain_pyro_svi_and_predictive_with_learned_scale():
    """Pyro's own SVI finds prior_log_scale through pyro.module and optimizes it with q."""
    x, y = toy_classification(32)
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.TeacherPosterior(_teacher_posterior(), scale="learned"), dataset_size=32)
    svi = pyro.infer.SVI(bnn.model, bnn.guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    pyro.set_rng_seed(0)
    losses = [svi.step(x, y) for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert f"{bnn.pyro_name}$$$prior_log_scale" in pyro.get_param_store().keys()
    assert (bnn.prior_log_scale.detach() != 0).all()
    for guide in (bnn.guide, None):  # posterior predictive, and prior predictive (learned scales)
        pred = pyro.infer.Predictive(bnn.model, guide=guide, num_samples=3, parallel=True)(x)
        assert pred["obs"].shape == (3, 32) and pred["0.weight"].shape == (3, 1, 6, 4)


def test_parallel_prior_predictive_runs_each_prior_draw():
    """Predictive without a guide samples the (learned-scale) prior under a plate: each particle's
    observation is the network run with that particle's weights."""
    x, _ = toy_regression(5, out_dim=3)
    bnn = _learned_pattern_bnn(likelihood=bd.likelihoods.Normal(scale=1e-4), dataset_size=5)
    pyro.set_rng_seed(1)
    pred = pyro.infer.Predictive(bnn.model, num_samples=4, parallel=True)(x)
    assert pred["obs"].shape == (4, 5, 3) and pred["0.weight"].shape == (4, 1, 6, 4)
    for i in range(4):
        w = {n: pred[n][i, 0] for n in NAMES}
        torch.testing.assert_close(pred["obs"][i], bnn.forward_with(x, w), rtol=0, atol=1e-3)
    assert not torch.allclose(pred["obs"][0], pred["obs"][1])
    # the draws have the learned prior scales: 0.bias ~ N(0.5, (3 e^-0.7)^2), 24 + 6 values pooled
    z = torch.cat([(pred["0.weight"] + 0.25).flatten() / (0.5 * math.exp(0.3)),
                   (pred["0.bias"] - 0.5).flatten() / (3.0 * math.exp(-0.7))])
    assert 0.5 < float(z.std()) < 1.6


# ----------------------------------------------------------------------------- 2. empirical-Bayes fixed point
@pytest.mark.parametrize("make_prior", [
    lambda q: bd.priors.TeacherPosterior(q, scale="learned"),
    lambda q: bd.priors.Normal(loc=PATTERN_LOCS, scale=PATTERN_SCALES, learn_scale=True),
], ids=["teacher-learned", "normal-patterns"])
def test_kl_optimum_is_the_closed_form_prior_variance(make_prior):
    teacher = _teacher_posterior()
    bnn = bd.BNN(tiny_mlp(), prior=make_prior(teacher))
    randomize_posterior(bnn, seed=3, scale_range=(0.05, 1.2))
    bnn.loc.requires_grad_(False)
    bnn.rho.requires_grad_(False)
    # closed form, from q and the prior means only (the base scale is constant per tensor in
    # both priors): s_l^2 = mean_i((mu_i - m_i)^2 + sigma_i^2)
    q = bnn.posterior()
    if isinstance(bnn.prior, bd.priors.TeacherPosterior):
        p_loc = {n: teacher.locs[n].double() for n in NAMES}
    else:
        p_loc = {n: torch.full(bnn.shapes[n], 0.5 if n.endswith("bias") else -0.25, dtype=torch.float64) for n in NAMES}
    expected_var = {n: ((q.locs[n].double() - p_loc[n]) ** 2 + q.scales[n].double() ** 2).mean() for n in NAMES}
    start = bnn.prior_scales()  # multipliers 1: the base scales, constant per tensor
    assert all(torch.all(t == t.flatten()[0]) for t in start.values())
    assert min(abs(float(expected_var[n]) / float(start[n].flatten()[0]) ** 2 - 1) for n in NAMES) > 0.05  # a real move

    opt = torch.optim.Adam([bnn.prior_log_scale], lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995)
    for _ in range(600):
        opt.zero_grad()
        bnn.kl().backward()
        opt.step()
        sched.step()
    assert bnn.loc.grad is None and bnn.rho.grad is None
    for n, scale in bnn.prior_scales().items():
        torch.testing.assert_close(scale.double() ** 2, expected_var[n].expand(scale.shape), rtol=1e-3, atol=0)
    # and it is a stationary point of the KL: d KL / d log s_l = n_l - sum_i(...) / s_l^2 = 0
    grad = torch.autograd.grad(bnn.kl(), bnn.prior_log_scale)[0]
    numels = torch.tensor([bnn.shapes[n].numel() for n in NAMES], dtype=grad.dtype)
    assert (grad.abs() / numels).max() < 2e-3


# ----------------------------------------------------------------------------- 3. teacher scale options
def _expected_teacher_scale(q, name, scale, temperature):
    if scale == "posterior":
        s = q.scales[name]
    elif scale in ("unit", "learned"):
        s = torch.ones_like(q.scales[name])
    else:
        s = torch.full_like(q.scales[name], scale)
    return s * temperature**0.5


@pytest.mark.parametrize("scale, temperature", [
    ("learned", 1.0), ("learned", 4.0), (0.3, 2.0), ("posterior", 0.5), ("unit", 9.0),
])
def test_teacher_prior_scales_and_means(scale, temperature):
    q = _teacher_posterior()
    prior = bd.priors.TeacherPosterior(q, scale=scale, temperature=temperature)
    assert prior.learn_scale is (scale == "learned")
    bnn = bd.BNN(tiny_mlp(), prior=prior, init="prior-mean")
    assert hasattr(bnn, "prior_log_scale") is (scale == "learned")
    scales = bnn.prior_scales()
    student = bnn.posterior()
    for name in q:
        torch.testing.assert_close(scales[name], _expected_teacher_scale(q, name, scale, temperature), rtol=1e-6, atol=0)
        assert torch.equal(student.locs[name], q.locs[name])  # the prior means are exactly the teacher's
    assert torch.equal(bnn.prior_loc, torch.cat([q.locs[n].reshape(-1) for n in NAMES]))
    if scale == "learned":
        assert torch.equal(bnn.prior_log_scale.detach(), torch.zeros(4))
        # the prior means stay fixed when the scales are learned: only the multiplier is a parameter
        assert "prior_loc" not in dict(bnn.named_parameters())


def test_teacher_prior_rejects_bad_options():
    q = _teacher_posterior()
    with pytest.raises(ValueError, match="learned"):
        bd.priors.TeacherPosterior(q, scale="fitted")
    with pytest.raises(ValueError, match="scale"):
        bd.priors.TeacherPosterior(q, scale=-1.0)
    with pytest.raises(TypeError, match="apply"):
        bd.priors.TeacherPosterior(q, plan=object())


def test_teacher_prior_variance_argument_is_now_scale():
    """The argument holds a standard deviation: it is called scale=, and variance= says so."""
    q = _teacher_posterior()
    with pytest.raises(TypeError, match=r"scale="):
        bd.priors.TeacherPosterior(q, variance="unit")
    with pytest.raises(TypeError, match="unexpected"):
        bd.priors.TeacherPosterior(q, sigma=1.0)
    prior = bd.priors.TeacherPosterior(q, scale=0.5)
    assert prior.scale == 0.5 and "scale=0.5" in repr(prior)


# ----------------------------------------------------------------------------- 4. fit and resume
def _regression_bnn() -> bd.BNN:
    q = _teacher_posterior()
    prior = bd.priors.TeacherPosterior(q, scale="learned")
    return bd.BNN(tiny_mlp(out_dim=3), prior=prior, likelihood=bd.likelihoods.Normal(scale=0.3), dataset_size=64)


def _fit(bnn, **kw):
    x, y = toy_regression(64, out_dim=3)
    kw.setdefault("epochs", 4)
    return bd.fit(bnn, (x, y), batch_size=16, lr=0.02, seed=7, progress=False, **kw)


def test_fit_learns_the_prior_scales_and_resumes_bit_identically(tmp_path):
    straight = _regression_bnn()
    r_straight = _fit(straight)
    rows = r_straight.history
    assert all(math.isfinite(row[k]) for row in rows for k in ("elbo", "nll", "kl", "loss"))
    assert rows[-1]["elbo"] > rows[0]["elbo"]
    assert (straight.prior_log_scale.detach() != 0).all()  # optimized jointly with q
    # the history's kl column is the KL under the learned scales that the optimizer saw
    assert all(row["loss"] == pytest.approx(row["nll"] + row["kl"], rel=1e-6) for row in rows)
    # q's export does not carry the prior
    assert set(straight.posterior().locs) == set(NAMES)

    part = _regression_bnn()
    _fit(part, epochs=2, checkpoint_dir=tmp_path)
    assert "prior_log_scale" in torch.load(tmp_path / "checkpoint.pt", weights_only=False)["bnn"]
    resumed = _regression_bnn()
    r_resumed = _fit(resumed, checkpoint_dir=tmp_path, resume=True, extend=True)
    assert states_equal(resumed.state_dict(), straight.state_dict())
    assert without_time(r_resumed.history) == without_time(r_straight.history)


# ----------------------------------------------------------------------------- 5. alignment plans
class _KeepUnits:
    """A duck-typed alignment plan: keep hidden units ``keep`` of layer 0 (rows of 0.*, columns of 2.weight)."""

    def __init__(self, keep):
        self.keep = torch.as_tensor(keep)
        self.calls = 0

    def _restrict(self, name, t):
        if name.startswith("0."):
            return t[self.keep].clone()
        if name == "2.weight":
            return t[:, self.keep].clone()
        return t.clone()

    def apply(self, q):
        self.calls += 1
        return bd.MeanFieldPosterior(
            {n: self._restrict(n, t) for n, t in q.locs.items()},
            {n: self._restrict(n, t) for n, t in q.scales.items()},
            dict(q.info),
        )

    def __repr__(self):
        return f"KeepUnits({self.keep.tolist()})"


@pytest.mark.parametrize("scale", ["posterior", "learned"])
def test_plan_restricts_the_teacher_posterior(scale):
    teacher = _teacher_posterior(hidden=8)
    keep = [0, 2, 3, 5, 6, 7]
    plan = _KeepUnits(keep)
    prior = bd.priors.TeacherPosterior(teacher, plan=plan, scale=scale)
    assert "KeepUnits" in repr(prior)
    bnn = bd.BNN(tiny_mlp(hidden=6), prior=prior, init="prior-mean")
    assert plan.calls == 1
    idx = torch.tensor(keep)
    expected_loc = {
        "0.weight": teacher.locs["0.weight"][idx], "0.bias": teacher.locs["0.bias"][idx],
        "2.weight": teacher.locs["2.weight"][:, idx], "2.bias": teacher.locs["2.bias"],
    }
    expected_scale = {
        "0.weight": teacher.scales["0.weight"][idx], "0.bias": teacher.scales["0.bias"][idx],
        "2.weight": teacher.scales["2.weight"][:, idx], "2.bias": teacher.scales["2.bias"],
    }
    locs = bnn.posterior().locs  # init="prior-mean": the student's means are the prior means
    scales = bnn.prior_scales()
    for name in NAMES:
        assert torch.equal(locs[name], expected_loc[name])
        want = expected_scale[name] if scale == "posterior" else torch.ones_like(expected_scale[name])
        assert torch.equal(scales[name], want)
    # the original posterior is left alone
    assert teacher.locs["0.weight"].shape == (8, 4)


def test_plan_with_wrong_shapes_names_the_plan():
    teacher = _teacher_posterior(hidden=8)
    wrong = _KeepUnits([0, 1, 2, 3, 4])  # five units for a student with six
    with pytest.raises(bd.ShapeMismatchError, match=r"'0\.weight'.*\(6, 4\).*\(5, 4\).*plan KeepUnits"):
        bd.BNN(tiny_mlp(hidden=6), prior=bd.priors.TeacherPosterior(teacher, plan=wrong))

    class Identity:
        def apply(self, q):
            return q

    with pytest.raises(bd.ShapeMismatchError, match="plan"):
        bd.BNN(tiny_mlp(hidden=6), prior=bd.priors.TeacherPosterior(teacher, plan=Identity()))

    class NotAPosterior:
        def apply(self, q):
            return dict(q.locs)

    with pytest.raises(TypeError, match="plan"):
        bd.BNN(tiny_mlp(hidden=6), prior=bd.priors.TeacherPosterior(teacher, plan=NotAPosterior()))
