"""The mean-field ELBO: exact KL, agreement with Pyro's TraceMeanField_ELBO, plain Pyro SVI/Predictive.

Every formula is checked against an independent computation: KL terms against
``torch.distributions.kl_divergence`` of ``Normal`` distributions built by hand from
``bnn.posterior()`` and the prior specification, the ELBO against
``pyro.infer.TraceMeanField_ELBO`` under the same random draws, and the data term against a
cross-entropy (or Gaussian log-density) of the network run with the drawn weights through
``torch.func.functional_call``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from torch.func import functional_call

import bayesdistill as bd
import bayesdistill.infer.elbo as elbo_module
from _helpers import randomize_posterior, tiny_conv1d, tiny_mlp, toy_classification, toy_regression

NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]  # the site names of tiny_mlp()


def reference_kl(q: bd.MeanFieldPosterior, prior_table) -> torch.Tensor:
    """sum over tensors of KL(N(loc, scale) || N(prior_loc, prior_scale)), in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for name, (loc, scale) in q.items():
        p_loc, p_scale = prior_table[name]
        p_loc = torch.as_tensor(p_loc, dtype=torch.float64).expand(loc.shape)
        p_scale = torch.as_tensor(p_scale, dtype=torch.float64).expand(loc.shape)
        kl = td.kl_divergence(td.Normal(loc.double(), scale.double()), td.Normal(p_loc, p_scale))
        assert kl.shape == loc.shape
        total = total + kl.sum()
    return total


def elbo_kl_part(bnn: bd.BNN, x, y, **elbo_kw) -> torch.Tensor:
    elbo = bd.MeanFieldELBO(**elbo_kw)
    elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    return elbo.last_parts["kl"]


def _teacher_posterior() -> bd.MeanFieldPosterior:
    teacher = bd.BNN(tiny_mlp(seed=1))
    randomize_posterior(teacher, seed=5, scale_range=(0.05, 0.6))
    return teacher.posterior()


# ----------------------------------------------------------------------------- 1. exact KL
def _prior_cases():
    """(id, prior factory, reference table name -> (loc, scale)) built independently of the library."""
    iso = lambda: bd.priors.Normal(loc=0.3, scale=2.0)  # noqa: E731
    iso_table = lambda: {n: (0.3, 2.0) for n in NAMES}  # noqa: E731
    pattern = lambda: bd.priors.Normal(  # noqa: E731
        loc={"*.bias": 0.5, "*": -0.25}, scale={"0.weight": 0.5, "*.bias": 3.0, "*": 1.5}
    )
    pattern_table = lambda: {  # noqa: E731
        "0.weight": (-0.25, 0.5),
        "0.bias": (0.5, 3.0),
        "2.weight": (-0.25, 1.5),
        "2.bias": (0.5, 3.0),
    }
    yield "isotropic", iso, iso_table
    yield "per-tensor-patterns", pattern, pattern_table
    for variance, temperature in [("posterior", 1.0), ("unit", 1.0), (0.3, 1.0), ("posterior", 4.0), ("unit", 2.25)]:
        def factory(scale=variance, temperature=temperature):
            return bd.priors.TeacherPosterior(_teacher_posterior(), scale=variance, temperature=temperature)

        def table(scale=variance, temperature=temperature):
            qt = _teacher_posterior()
            out = {}
            for name, (loc, scale) in qt.items():
                if variance == "posterior":
                    s = scale
                elif variance == "unit":
                    s = torch.ones_like(scale)
                else:
                    s = torch.full_like(scale, variance)
                out[name] = (loc, s * temperature**0.5)
            return out

        yield f"teacher-{variance}-T{temperature}", factory, table


PRIOR_CASES = list(_prior_cases())


@pytest.mark.parametrize("case", PRIOR_CASES, ids=[c[0] for c in PRIOR_CASES])
def test_kl_equals_torch_distributions_closed_form(case):
    _, make_prior, make_table = case
    x, y = toy_classification(12)
    bnn = bd.BNN(tiny_mlp(), prior=make_prior(), dataset_size=100)
    randomize_posterior(bnn, seed=2, scale_range=(0.02, 1.5))
    assert bnn.site_names == NAMES
    expected = reference_kl(bnn.posterior(), make_table())
    assert expected > 1.0  # a non-trivial value, not a vacuous comparison

    torch.testing.assert_close(bnn.kl().double(), expected, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(elbo_kl_part(bnn, x, y).double(), expected, rtol=2e-6, atol=1e-5)
    # KL does not depend on the Monte Carlo draw: several particles give the same KL part
    torch.testing.assert_close(elbo_kl_part(bnn, x, y, num_particles=3).double(), expected, rtol=2e-6, atol=1e-5)


def test_kl_gradient_matches_torch_distributions():
    prior = bd.priors.Normal(loc={"*.bias": 0.5, "*": -0.25}, scale={"*.weight": 0.7, "*": 2.0})
    bnn = bd.BNN(tiny_mlp(), prior=prior)
    randomize_posterior(bnn, seed=4)
    g_ours = torch.autograd.grad(bnn.kl(), [bnn.loc, bnn.rho])

    loc = bnn.loc.detach().double().requires_grad_()
    rho = bnn.rho.detach().double().requires_grad_()
    scale = torch.nn.functional.softplus(rho)
    p_loc = torch.cat([torch.full((n,), 0.5 if k.endswith("bias") else -0.25, dtype=torch.float64)
                       for k, n in zip(bnn.site_names, [s.numel() for s in bnn.shapes.values()])])
    p_scale = torch.cat([torch.full((n,), 2.0 if k.endswith("bias") else 0.7, dtype=torch.float64)
                         for k, n in zip(bnn.site_names, [s.numel() for s in bnn.shapes.values()])])
    ref = td.kl_divergence(td.Normal(loc, scale), td.Normal(p_loc, p_scale)).sum()
    g_ref = torch.autograd.grad(ref, [loc, rho])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_cached_fixed_prior_path_matches_per_weight_form_value_and_gradient():
    """A fixed prior takes the cached dot-product form of the fused KL; value and gradients
    equal torch.distributions' closed form (float64) and the per-weight form."""
    x, y = toy_classification(12)
    prior = bd.priors.Normal(loc={"*.bias": 0.5, "*": -0.25}, scale={"*.weight": 0.7, "*": 2.0})
    bnn = bd.BNN(tiny_mlp(), prior=prior, dataset_size=40)
    randomize_posterior(bnn, seed=6, scale_range=(0.05, 1.2))
    elbo = bd.MeanFieldELBO()
    elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    assert len(elbo._prior_constants.entries) == 1  # the BNN's flat prior buffers were cached
    _, _, _, (inv_var, offset, zero_loc) = elbo._prior_constants.entries[0]
    assert not zero_loc
    torch.testing.assert_close(inv_var, 1 / bnn.prior_scale.square())
    torch.testing.assert_close(offset.double(), bnn.prior_scale.double().log().sum() - 0.5 * bnn.num_weights)

    loc64 = bnn.loc.detach().double().requires_grad_()
    rho64 = bnn.rho.detach().double().requires_grad_()
    ref = td.kl_divergence(td.Normal(loc64, torch.nn.functional.softplus(rho64)),
                           td.Normal(bnn.prior_loc.double(), bnn.prior_scale.double())).sum()
    g_ref = torch.autograd.grad(ref, [loc64, rho64])
    for _ in range(2):  # the second call is a cache hit
        kl = elbo_module.fused_normal_kl([(bnn.loc, bnn.scale(), bnn.prior_loc, bnn.prior_scale)],
                                          elbo._prior_constants)
        torch.testing.assert_close(kl.double(), ref.detach(), rtol=2e-6, atol=1e-4)
        g = torch.autograd.grad(kl, [bnn.loc, bnn.rho])
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    assert len(elbo._prior_constants.entries) == 1
    plain = elbo_module.fused_normal_kl([(bnn.loc, bnn.scale(), bnn.prior_loc, bnn.prior_scale)])  # no cache
    torch.testing.assert_close(kl, plain, rtol=1e-6, atol=1e-4)


def test_cached_prior_constants_follow_in_place_changes_of_the_prior():
    x, y = toy_classification(12)
    bnn = bd.BNN(tiny_mlp(), dataset_size=40)  # N(0, 1): the zero-mean branch
    randomize_posterior(bnn, seed=7)
    elbo = bd.MeanFieldELBO()
    elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    assert elbo._prior_constants.entries[0][3][2] is True  # zero prior mean detected
    with torch.no_grad():
        bnn.prior_scale.mul_(3.0)
        bnn.prior_loc.add_(0.2)
    elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    expected = reference_kl(bnn.posterior(), {n: (0.2, 3.0) for n in NAMES})
    torch.testing.assert_close(elbo.last_parts["kl"].double(), expected, rtol=2e-6, atol=1e-4)
    assert len(elbo._prior_constants.entries) == 1 and elbo._prior_constants.entries[0][3][2] is False


def test_learned_prior_scales_bypass_the_constant_cache():
    x, y = toy_classification(12)
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(scale=0.8, learn_scale=True), dataset_size=40)
    elbo = bd.MeanFieldELBO()
    elbo.differentiable_loss(bnn.model, bnn.guide, x, y).backward()
    assert elbo._prior_constants.entries == []
    assert bnn.prior_log_scale.grad is not None and bnn.prior_log_scale.grad.abs().sum() > 0


def test_fused_kl_equals_per_site_kl_under_mask(monkeypatch):
    """poutine.mask forces MeanFieldELBO's per-site KL path; it must agree with the fused one."""
    x, y = toy_classification(12)
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(loc=0.1, scale={"*.bias": 3.0, "*": 0.6}), dataset_size=40)
    randomize_posterior(bnn, seed=3)

    calls = []
    real = elbo_module.fused_normal_kl
    monkeypatch.setattr(elbo_module, "fused_normal_kl",
                        lambda pairs, *a: calls.append(len(pairs)) or real(pairs, *a))

    elbo = bd.MeanFieldELBO()
    pyro.set_rng_seed(0)
    fused_loss = elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    fused = dict(elbo.last_parts)
    assert calls == [len(NAMES)]  # all four sites went through the fused path

    calls.clear()
    pyro.set_rng_seed(0)
    masked_loss = elbo.differentiable_loss(poutine.mask(bnn.model, mask=True), poutine.mask(bnn.guide, mask=True), x, y)
    per_site = dict(elbo.last_parts)
    assert calls == []  # masked sites went through kl_divergence one by one

    torch.testing.assert_close(per_site["kl"], fused["kl"], rtol=1e-6, atol=1e-5)
    assert torch.equal(per_site["nll"], fused["nll"])  # same draw, same data term
    torch.testing.assert_close(masked_loss, fused_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(fused["kl"].double(), reference_kl(bnn.posterior(), {n: (0.1, 3.0 if n.endswith("bias") else 0.6) for n in NAMES}), rtol=2e-6, atol=1e-5)

    # mask=False removes every term, in both paths
    elbo.differentiable_loss(poutine.mask(bnn.model, mask=False), poutine.mask(bnn.guide, mask=False), x, y)
    assert float(elbo.last_parts["kl"]) == 0.0 and float(elbo.last_parts["nll"]) == 0.0


def test_mixed_sites_kl_and_value_match_reference():
    """BNN sites plus hand-written sites: a broadcast prior, a scaled site, a masked plate, a Gamma."""
    x, y = toy_classification(10)
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(0.2, 1.5), dataset_size=50)
    randomize_posterior(bnn, seed=6)
    a_loc, a_scale = torch.tensor([0.1, -0.4, 0.9]), torch.tensor([0.3, 0.5, 1.2])
    c_loc, c_scale = torch.tensor([[0.5, -1.0], [2.0, 0.3]]), torch.tensor([[0.2, 0.9], [0.4, 1.1]])
    mask_c = torch.tensor([True, False])

    def model(x, y):
        pyro.sample("a", dist.Normal(0.0, 2.0).expand([3]).to_event(1))
        with poutine.scale(scale=0.5):
            pyro.sample("b", dist.Normal(1.0, 0.5))
        with pyro.plate("pc", 2), poutine.mask(mask=mask_c):
            pyro.sample("c", dist.Normal(torch.zeros(2, 2), 1.0).to_event(1))
        pyro.sample("d", dist.Gamma(2.0, 3.0))
        return bnn.model(x, y)

    def guide(x, y):
        pyro.sample("a", dist.Normal(a_loc, a_scale).to_event(1))
        with poutine.scale(scale=0.5):
            pyro.sample("b", dist.Normal(0.3, 0.2))
        with pyro.plate("pc", 2), poutine.mask(mask=mask_c):
            pyro.sample("c", dist.Normal(c_loc, c_scale).to_event(1))
        pyro.sample("d", dist.Gamma(4.0, 2.0))
        bnn.guide(x, y)

    expected = (
        td.kl_divergence(td.Normal(a_loc, a_scale), td.Normal(0.0, 2.0)).sum().double()
        + 0.5 * td.kl_divergence(td.Normal(0.3, 0.2), td.Normal(1.0, 0.5)).double()
        + td.kl_divergence(td.Normal(c_loc[0], c_scale[0]), td.Normal(0.0, 1.0)).sum().double()
        + td.kl_divergence(td.Gamma(4.0, 2.0), td.Gamma(2.0, 3.0)).double()
        + reference_kl(bnn.posterior(), {n: (0.2, 1.5) for n in NAMES})
    )
    ours = bd.MeanFieldELBO(num_particles=2)
    pyro.set_rng_seed(8)
    loss = ours.loss(model, guide, x, y)
    torch.testing.assert_close(ours.last_parts["kl"].double(), expected, rtol=2e-6, atol=1e-5)
    pyro.set_rng_seed(8)
    assert loss == pytest.approx(TraceMeanField_ELBO(num_particles=2).loss(model, guide, x, y), rel=1e-6, abs=1e-4)


def test_site_without_closed_form_kl_names_the_site():
    def model():
        pyro.sample("z", dist.Laplace(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Beta(2.0, 2.0))

    with pytest.raises(NotImplementedError, match="'z'"):
        bd.MeanFieldELBO().loss(model, guide)


# ----------------------------------------------------------------------------- 2. ELBO value
def _problem(likelihood: str, dataset_size, kl_weight: float, batch: int = 16):
    if likelihood == "categorical":
        x, y = toy_classification(batch)
        bnn = bd.BNN(tiny_mlp(), likelihood=bd.likelihoods.Categorical(), dataset_size=dataset_size,
                     prior=bd.priors.Normal(loc=0.1, scale={"*.bias": 2.0, "*": 0.8}))
    else:
        x, y = toy_regression(batch)
        bnn = bd.BNN(tiny_mlp(out_dim=2), likelihood=bd.likelihoods.Normal(scale=0.7), dataset_size=dataset_size,
                     prior=bd.priors.Normal(loc=0.1, scale={"*.bias": 2.0, "*": 0.8}))
    randomize_posterior(bnn, seed=1, scale_range=(0.01, 0.3))
    bnn.kl_weight = kl_weight
    return bnn, x, y


@pytest.mark.parametrize("kl_weight", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("dataset_size", [None, 200])
@pytest.mark.parametrize("likelihood", ["categorical", "normal"])
def test_meanfield_elbo_equals_trace_meanfield_elbo(likelihood, dataset_size, kl_weight):
    bnn, x, y = _problem(likelihood, dataset_size, kl_weight)
    ours, ref = bd.MeanFieldELBO(num_particles=3), TraceMeanField_ELBO(num_particles=3)

    pyro.set_rng_seed(11)
    l_ours = ours.differentiable_loss(bnn.model, bnn.guide, x, y)
    g_ours = torch.autograd.grad(l_ours, [bnn.loc, bnn.rho])
    pyro.set_rng_seed(11)
    l_ref = ref.differentiable_loss(bnn.model, bnn.guide, x, y)
    g_ref = torch.autograd.grad(l_ref, [bnn.loc, bnn.rho])

    torch.testing.assert_close(l_ours, l_ref, rtol=1e-6, atol=1e-4)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # the float-valued API (loss) agrees as well
    pyro.set_rng_seed(12)
    f_ours = ours.loss(bnn.model, bnn.guide, x, y)
    pyro.set_rng_seed(12)
    assert f_ours == pytest.approx(ref.loss(bnn.model, bnn.guide, x, y), rel=1e-6, abs=1e-4)

    # parts: loss = nll + kl, and kl = kl_weight * exact KL (the guide site scale, as Pyro does)
    parts = ours.last_parts
    assert f_ours == pytest.approx(float(parts["nll"] + parts["kl"]), rel=1e-6)
    torch.testing.assert_close(parts["kl"], kl_weight * bnn.kl().detach(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("likelihood", ["categorical", "normal"])
def test_dataset_size_scales_only_the_data_term(likelihood):
    bnn, x, y = _problem(likelihood, None, 1.0)
    elbo = bd.MeanFieldELBO(num_particles=2)
    pyro.set_rng_seed(5)
    elbo.loss(bnn.model, bnn.guide, x, y)
    unscaled = dict(elbo.last_parts)
    bnn.dataset_size = 200
    pyro.set_rng_seed(5)
    elbo.loss(bnn.model, bnn.guide, x, y)
    torch.testing.assert_close(elbo.last_parts["nll"], unscaled["nll"] * (200 / len(x)), rtol=1e-6, atol=1e-5)
    assert torch.equal(elbo.last_parts["kl"], unscaled["kl"])


def test_user_poutine_scale_matches_trace_meanfield():
    """A user's poutine.scale around model and guide scales data term and KL alike, as in Pyro."""
    bnn, x, y = _problem("categorical", 100, 0.3)
    model, guide = poutine.scale(bnn.model, scale=0.25), poutine.scale(bnn.guide, scale=0.25)
    ours = bd.MeanFieldELBO()
    pyro.set_rng_seed(2)
    l_ours = ours.loss(model, guide, x, y)
    pyro.set_rng_seed(2)
    assert l_ours == pytest.approx(TraceMeanField_ELBO().loss(model, guide, x, y), rel=1e-6, abs=1e-4)
    torch.testing.assert_close(ours.last_parts["kl"], 0.25 * 0.3 * bnn.kl().detach(), rtol=1e-6, atol=1e-5)


def _drawn_weights(bnn, seed, *args):
    pyro.set_rng_seed(seed)
    trace = poutine.trace(bnn.guide).get_trace(*args)
    return {n: trace.nodes[n]["value"].detach() for n in bnn.site_names}


def test_nll_part_is_scaled_cross_entropy_of_the_drawn_weights():
    net = tiny_mlp()
    x, y = toy_classification(10)
    bnn = bd.BNN(net, dataset_size=250)
    randomize_posterior(bnn, seed=9, scale_range=(0.05, 0.5))
    elbo = bd.MeanFieldELBO()
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(bnn.model, bnn.guide, x, y)

    w = _drawn_weights(bnn, 3, x, y)
    q = bnn.posterior()
    assert all(not torch.equal(w[n], q.locs[n]) for n in w)  # real draws, not the means
    logits = functional_call(net, w, (x,))  # the user's untouched network, run with the drawn weights
    expected = -(250 / 10) * torch.log_softmax(logits, dim=-1)[torch.arange(10), y].sum()
    torch.testing.assert_close(elbo.last_parts["nll"], expected.detach(), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(loss.detach(), elbo.last_parts["nll"] + elbo.last_parts["kl"])


def test_nll_part_is_scaled_gaussian_nll_of_the_drawn_weights():
    net = tiny_mlp(out_dim=2)
    x, y = toy_regression(8)
    bnn = bd.BNN(net, likelihood=bd.likelihoods.Normal(scale=0.4), dataset_size=96)
    randomize_posterior(bnn, seed=10, scale_range=(0.05, 0.5))
    elbo = bd.MeanFieldELBO()
    pyro.set_rng_seed(4)
    elbo.loss(bnn.model, bnn.guide, x, y)
    out = functional_call(net, _drawn_weights(bnn, 4, x, y), (x,))
    expected = -(96 / 8) * td.Normal(out, 0.4).log_prob(y).sum()
    torch.testing.assert_close(elbo.last_parts["nll"], expected.detach(), rtol=1e-6, atol=1e-4)


def test_elbo_as_module_equals_differentiable_loss():
    bnn, x, y = _problem("categorical", 64, 1.0)
    pyro.set_rng_seed(0)
    a = bd.MeanFieldELBO()(bnn.model, bnn.guide)(x, y)
    pyro.set_rng_seed(0)
    b = bd.MeanFieldELBO().differentiable_loss(bnn.model, bnn.guide, x, y)
    assert a.requires_grad
    assert torch.equal(a, b)


def test_local_reparameterization_keeps_the_kl_exact():
    x, y = toy_classification(12)
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(loc=-0.1, scale=0.9), dataset_size=60)
    randomize_posterior(bnn, seed=12)
    elbo = bd.MeanFieldELBO()
    pyro.set_rng_seed(0)
    elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    plain = dict(elbo.last_parts)
    with bd.local_reparameterization() as handler:
        pyro.set_rng_seed(0)
        elbo.differentiable_loss(bnn.model, bnn.guide, x, y)
    lrt = dict(elbo.last_parts)
    assert sorted(handler.moments) == sorted(NAMES)  # every Linear weight and bias went through LRT
    assert torch.equal(lrt["kl"], plain["kl"])
    torch.testing.assert_close(lrt["kl"].double(), reference_kl(bnn.posterior(), {n: (-0.1, 0.9) for n in NAMES}), rtol=2e-6, atol=1e-5)
    assert torch.isfinite(lrt["nll"]) and not torch.equal(lrt["nll"], plain["nll"])


# ----------------------------------------------------------------------------- 3. plain Pyro
@pytest.mark.parametrize("elbo_cls", [bd.MeanFieldELBO, TraceMeanField_ELBO])
def test_plain_pyro_svi_trains_the_bnn(elbo_cls):
    x, y = toy_classification(64, in_dim=2, num_classes=2, seed=3)
    bnn = bd.BNN(tiny_mlp(2, 16, 2), dataset_size=64)
    loc0 = bnn.loc.detach().clone()
    svi = SVI(bnn.model, bnn.guide, pyro.optim.Adam({"lr": 0.03}), elbo_cls())
    pyro.set_rng_seed(0)
    losses = [svi.step(x, y) for _ in range(50)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert not torch.equal(bnn.loc.detach(), loc0)  # the BNN's own tensors were optimized
    assert set(pyro.get_param_store().keys()) == {f"{bnn.pyro_name}$$$loc", f"{bnn.pyro_name}$$$rho"}
    accuracy = (bnn(x).argmax(-1) == y).float().mean()
    assert accuracy >= 0.9


def test_pyro_predictive_returns_obs_and_every_weight_site():
    x, _ = toy_classification(9)
    bnn = bd.BNN(tiny_mlp(), dataset_size=100, init_scale=0.1)
    num_samples = 5
    pyro.set_rng_seed(0)
    pred = Predictive(bnn.model, guide=bnn.guide, num_samples=num_samples)(x)
    assert set(pred) == set(bnn.site_names) | {"obs"}
    assert pred["obs"].shape == (num_samples, 9)
    assert pred["obs"].dtype == torch.int64 and 0 <= int(pred["obs"].min()) and int(pred["obs"].max()) < 3
    for name, shape in bnn.shapes.items():
        # Pyro's convention: (num_samples, one 1 per plate dim -- here "data" --, *site shape)
        assert pred[name].shape == (num_samples, 1, *shape), name
        w = pred[name].reshape(num_samples, *shape)
        assert not torch.equal(w[0], w[1])  # independent draws from q
        loc, scale = bnn.posterior()[name]
        assert ((w - loc).abs() < 8 * scale).all()


@pytest.mark.parametrize("make_net, x_shape", [(tiny_mlp, (5, 4)), (tiny_conv1d, (5, 1, 12))], ids=["mlp", "conv1d"])
def test_guide_and_model_sites_are_independent_normals(make_net, x_shape):
    x = torch.randn(x_shape)
    bnn = bd.BNN(make_net(), prior=bd.priors.Normal(0.0, 0.5))
    q = bnn.posterior()
    guide_trace = poutine.trace(bnn.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(bnn.model, trace=guide_trace)).get_trace(x)
    latent = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"]
    assert latent == bnn.site_names
    for name in latent:
        shape = bnn.shapes[name]
        for trace in (guide_trace, model_trace):
            fn = trace.nodes[name]["fn"]
            assert isinstance(fn, td.Independent) and isinstance(fn.base_dist, td.Normal), name
            assert fn.reinterpreted_batch_ndims == len(shape)
            assert fn.event_shape == shape and fn.batch_shape == torch.Size()
            assert fn.base_dist.has_rsample
        g = guide_trace.nodes[name]["fn"].base_dist
        torch.testing.assert_close(g.loc.detach(), q.locs[name])
        torch.testing.assert_close(g.scale.detach(), q.scales[name])
        p = model_trace.nodes[name]["fn"].base_dist
        assert torch.equal(p.loc, torch.zeros(shape)) and torch.equal(p.scale, torch.full(shape, 0.5))
        assert guide_trace.nodes[name]["value"].shape == shape
        assert model_trace.nodes[name]["value"] is guide_trace.nodes[name]["value"]
    assert model_trace.nodes["obs"]["fn"].batch_shape == (x_shape[0],)
