"""BNN construction, forward passes, the vectorized predictive and local reparameterization."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pyro
import pytest
import torch
import torch.nn.functional as F
import pyro.distributions as dist
from pyro import poutine
from torch import nn
from torch.func import functional_call

import bayesdistill as bd
from _helpers import (
    clone_state,
    randomize_posterior,
    states_equal,
    tiny_bn_net,
    tiny_conv1d,
    tiny_mlp,
    toy_classification,
)


def _conv2d_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return nn.Sequential(
            OrderedDict(
                stem=nn.Conv2d(1, 2, 3, padding=1),
                act=nn.ReLU(),
                body=nn.Sequential(nn.Conv2d(2, 2, 1), nn.Flatten()),
                head=nn.Linear(2 * 5 * 5, 3, bias=False),
            )
        )


# ----------------------------------------------------------------------------- construction
@pytest.mark.parametrize("make_net", [tiny_mlp, tiny_conv1d, _conv2d_net], ids=["mlp", "conv1d", "conv2d"])
def test_every_layer_parameter_becomes_a_site_in_named_parameters_order(make_net):
    net = make_net()
    expected = [(n, p.shape) for n, p in net.named_parameters()]
    bnn = bd.BNN(net)
    assert bnn.site_names == [n for n, _ in expected]
    assert list(bnn.shapes.items()) == expected
    assert bnn.num_weights == sum(s.numel() for _, s in expected)
    # the only trainable tensors of a fully Bayesian net are the two flat variational families
    assert [n for n, _ in bnn.named_parameters()] == ["loc", "rho"]
    assert bnn.loc.shape == bnn.rho.shape == (bnn.num_weights,)
    info = bnn.posterior().info
    for name in bnn.site_names:
        path, _, attr = name.rpartition(".")
        assert (info[name].module, info[name].attr) == (path, attr)
        assert info[name].module_type == type(net.get_submodule(path)).__name__


def test_user_network_is_not_mutated():
    net = tiny_bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    param_ids = {n: id(p) for n, p in net.named_parameters()}
    x, y = toy_classification(32)
    bnn = bd.BNN(net, dataset_size=32)
    bd.fit(bnn, (x, y), epochs=2, batch_size=8, lr=0.05, progress=False)
    assert bnn.net is not net
    assert {n: id(p) for n, p in net.named_parameters()} == param_ids
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())
    assert states_equal(before, net.state_dict())
    # the BNN's copy did train (so the comparison above could have failed)
    assert not torch.equal(bnn.net[1].running_mean, net[1].running_mean)
    assert not torch.equal(bnn.posterior().locs["0.weight"], net[0].weight)


@pytest.mark.parametrize("selector", [["0"], "0", lambda path, module: path == "0"], ids=["list", "str", "callable"])
def test_deterministic_modules_stay_point_estimates_and_train(selector):
    net = tiny_mlp()
    bnn = bd.BNN(net, deterministic=selector, dataset_size=16)
    assert bnn.site_names == ["2.weight", "2.bias"]
    params = dict(bnn.named_parameters())
    assert set(params) == {"loc", "rho", "net.0.weight", "net.0.bias"}
    assert isinstance(bnn.net[0].weight, nn.Parameter)
    assert torch.equal(bnn.net[0].weight, net[0].weight)
    assert bnn.loc.numel() == net[2].weight.numel() + net[2].bias.numel()

    x, y = toy_classification(16)
    loss = bd.MeanFieldELBO().differentiable_loss(bnn.model, bnn.guide, x, y)
    loss.backward()
    for name in ("net.0.weight", "net.0.bias", "loc", "rho"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name

    before = bnn.net[0].weight.detach().clone()
    bd.fit(bnn, (x, y), epochs=2, batch_size=8, lr=0.05, progress=False)
    assert not torch.equal(bnn.net[0].weight.detach(), before)
    # point estimates are part of the posterior object
    assert torch.equal(bnn.posterior().point_estimates["net.0.weight"], bnn.net[0].weight.detach())


def test_batchnorm_is_deterministic_by_default_and_bayesian_on_request():
    net = tiny_bn_net()
    plain = bd.BNN(net)
    assert plain.site_names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert {"net.1.weight", "net.1.bias"} <= {n for n, _ in plain.named_parameters()}
    assert {"net.1.running_mean", "net.1.running_var"} <= set(plain.point_estimates())
    x, y = toy_classification(16)
    bd.MeanFieldELBO().differentiable_loss(plain.model, plain.guide, x, y).backward()
    assert plain.net[1].weight.grad.abs().sum() > 0 and plain.net[1].bias.grad.abs().sum() > 0

    bayes = bd.BNN(net, bayesian_norm=True)
    assert bayes.site_names == [n for n, _ in net.named_parameters()]
    assert [n for n, _ in bayes.named_parameters()] == ["loc", "rho"]
    assert bayes.posterior().info["1.weight"].module_type == "BatchNorm1d"
    # running statistics stay point estimates either way
    assert {"net.1.running_mean", "net.1.running_var"} <= set(bayes.point_estimates())


def test_init_module_uses_the_network_weights():
    net = tiny_conv1d()
    bnn = bd.BNN(net, prior=bd.priors.Normal(loc=0.7, scale=1.0), init_scale=0.05)
    q = bnn.posterior()
    for name, p in net.named_parameters():
        assert torch.equal(q.locs[name], p.detach())
        torch.testing.assert_close(q.scales[name], torch.full_like(p, 0.05))
    x = torch.randn(3, 1, 12)
    torch.testing.assert_close(bnn(x), net(x))  # forward = network at the posterior mean


def test_init_prior_mean_uses_the_prior_means():
    net = tiny_mlp()
    prior = bd.priors.Normal(loc={"*.bias": 0.5, "*": -0.25}, scale=1.0)
    q = bd.BNN(net, prior=prior, init="prior-mean", init_scale=0.2).posterior()
    for name, p in net.named_parameters():
        assert torch.equal(q.locs[name], torch.full_like(p, 0.5 if name.endswith("bias") else -0.25))
        torch.testing.assert_close(q.scales[name], torch.full_like(p, 0.2))

    teacher = bd.BNN(tiny_mlp(seed=9))
    randomize_posterior(teacher, seed=1)
    qt = teacher.posterior()
    q = bd.BNN(net, prior=bd.priors.TeacherPosterior(qt, scale="unit"), init="prior-mean").posterior()
    for name in qt:
        assert torch.equal(q.locs[name], qt.locs[name])


def test_init_from_posterior_copies_loc_and_scale():
    teacher = bd.BNN(tiny_mlp(seed=4))
    randomize_posterior(teacher, seed=2, scale_range=(1e-4, 2.0))
    qt = teacher.posterior()
    student = bd.BNN(tiny_mlp(seed=5), init=qt)
    q = student.posterior()
    for name in qt:
        assert torch.equal(q.locs[name], qt.locs[name])
        torch.testing.assert_close(q.scales[name], qt.scales[name], rtol=1e-5, atol=1e-7)


def test_priors_are_buffers_that_follow_to():
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(loc=0.25, scale={"*.bias": 2.0, "*": 0.5}))
    buffers = dict(bnn.named_buffers())
    assert "prior_loc" in buffers and "prior_scale" in buffers
    assert {"prior_loc", "prior_scale"} <= set(bnn.state_dict())
    expected_scale = torch.cat([torch.full((s.numel(),), 2.0 if n.endswith("bias") else 0.5) for n, s in bnn.shapes.items()])
    assert torch.equal(bnn.prior_scale, expected_scale)
    assert torch.equal(bnn.prior_loc, torch.full((bnn.num_weights,), 0.25))

    bnn.to(torch.float64)
    for t in (bnn.prior_loc, bnn.prior_scale, bnn.loc, bnn.rho):
        assert t.dtype == torch.float64
    x, y = toy_classification(6)
    trace = poutine.trace(bnn.model).get_trace(x.double(), y)
    for name in bnn.site_names:
        base = trace.nodes[name]["fn"].base_dist
        assert base.loc.dtype == base.scale.dtype == torch.float64
        assert trace.nodes[name]["value"].dtype == torch.float64
    loss = bd.MeanFieldELBO().differentiable_loss(bnn.model, bnn.guide, x.double(), y)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert bnn.kl().dtype == torch.float64


def test_check_data_has_no_side_effects_on_batchnorm_statistics():
    bnn = bd.BNN(tiny_bn_net())
    x, y = toy_classification(16)
    state = clone_state(bnn)
    bnn.train()
    out = bnn.check_data(3.0 * x + 1.0, y)
    assert out.shape == (16, 3)
    assert bnn.training
    assert states_equal(state, bnn.state_dict())
    # fit's up-front validation must not move them either (epochs=0: validation only)
    bd.fit(bnn, (3.0 * x + 1.0, y), epochs=0, progress=False)
    assert states_equal(state, bnn.state_dict())


# ----------------------------------------------------------------------------- predictive
@pytest.mark.parametrize(
    "make_net, x_shape",
    [(tiny_mlp, (7, 4)), (tiny_bn_net, (7, 4)), (tiny_conv1d, (7, 1, 12))],
    ids=["mlp", "batchnorm", "conv1d"],
)
def test_vectorized_predict_equals_sequential(make_net, x_shape):
    bnn = bd.BNN(make_net())
    randomize_posterior(bnn, seed=3, scale_range=(0.05, 0.3))
    x = torch.randn(x_shape)
    a = bnn.predict(x, 6, vectorize=True, generator=torch.Generator().manual_seed(21))
    b = bnn.predict(x, 6, vectorize=False, generator=torch.Generator().manual_seed(21))
    assert a.shape == b.shape == (6, 7, 3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # the samples differ
    # and each sample is the network run with one draw of q
    w = bnn.sample_weights(6, generator=torch.Generator().manual_seed(21))
    bnn.eval()
    net = copy.deepcopy(make_net()).eval()
    for s in (0, 5):
        ws = {k: v[s] for k, v in w.items()}
        ref = functional_call(net, {**ws, **bnn.net.state_dict()}, (x,))
        torch.testing.assert_close(a[s], ref, rtol=1e-5, atol=1e-5)
    c = bnn.predict(x, 6, generator=torch.Generator().manual_seed(22))
    assert not torch.allclose(a, c)


def test_predict_leaves_training_mode_and_statistics_alone():
    bnn = bd.BNN(tiny_bn_net())
    state = clone_state(bnn)
    bnn.train()
    bnn.predict(torch.randn(5, 4), 3)
    assert bnn.training and states_equal(state, bnn.state_dict())


# ----------------------------------------------------------------------------- local reparameterization
def _lrt_output(bnn, x):
    with bd.local_reparameterization():
        guide_trace = poutine.trace(bnn.guide).get_trace(x)
        return poutine.replay(bnn.model, trace=guide_trace)(x).detach()


def test_lrt_linear_preactivation_moments():
    """Brute force: n samples of y = LRT(x) have mean x M^T + m and variance x^2 (S^2)^T + s^2."""
    lin = nn.Linear(3, 2)
    bnn = bd.BNN(lin, likelihood=bd.likelihoods.Normal())
    randomize_posterior(bnn, seed=0, scale_range=(0.2, 0.9))
    q = bnn.posterior()
    M, S = q["weight"]
    m, s = q["bias"]
    x0 = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 2.0], [0.0, 0.0, 0.0]])
    n = 40_000
    pyro.set_rng_seed(0)
    out = _lrt_output(bnn, x0.repeat_interleave(n, dim=0)).view(3, n, 2)

    mean, var = x0 @ M.T + m, (x0**2) @ (S**2).T + s**2
    # 5 standard errors: mean error ~ sqrt(var/n), variance error ~ var sqrt(2/n)
    assert ((out.mean(1) - mean).abs() < 5 * (var / n).sqrt()).all()
    assert ((out.var(1) - var).abs() < 5 * var * (2 / n) ** 0.5).all()
    # independent noise per example and per output unit
    corr = torch.corrcoef(torch.stack([out[0, :, 0], out[0, :, 1], out[1, :, 0]]))
    assert (corr - torch.eye(3)).abs().max() < 5 / n**0.5


def test_lrt_conv1d_preactivation_moments():
    conv = nn.Conv1d(2, 3, 3, padding=1)
    bnn = bd.BNN(nn.Sequential(conv, nn.Flatten()), likelihood=bd.likelihoods.Normal())
    randomize_posterior(bnn, seed=1, scale_range=(0.2, 0.6))
    q = bnn.posterior()
    M, S = q["0.weight"]
    m, s = q["0.bias"]
    x0 = torch.randn(1, 2, 5, generator=torch.Generator().manual_seed(0))
    n = 20_000
    pyro.set_rng_seed(1)
    out = _lrt_output(bnn, x0.expand(n, 2, 5).contiguous())  # [n, 3 * 5]
    mean = F.conv1d(x0, M, m, padding=1).flatten()
    var = F.conv1d(x0**2, S**2, s**2, padding=1).flatten()
    assert ((out.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all()
    assert ((out.var(0) - var).abs() < 5 * var * (2 / n) ** 0.5).all()


def test_lrt_handler_is_scoped():
    """Outside the handler the same guide draws weights again; the network is not left patched."""
    bnn = bd.BNN(tiny_mlp())
    x = torch.randn(4, 4)
    _lrt_output(bnn, x)
    assert bd.bnn.local_reparam.current() is None
    assert all("forward" not in vars(m) for m in bnn.net.modules())
    trace = poutine.trace(bnn.guide).get_trace(x)
    q = bnn.posterior()
    assert not torch.equal(trace.nodes["0.weight"]["value"], q.locs["0.weight"])
    with bd.local_reparameterization():
        trace = poutine.trace(bnn.guide).get_trace(x)
    assert torch.equal(trace.nodes["0.weight"]["value"], q.locs["0.weight"])


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 5)])
def test_site_distributions_equal_the_generic_constructors(shape):
    """The model's and guide's site distributions (built without the generic constructors)
    are the same distributions as Normal(loc, scale).to_event(k): shapes, log_prob, KL,
    expand, sampling, and the presampled draw is returned by rsample()."""
    from torch.distributions import kl_divergence

    from bayesdistill.bnn.network import _site_normal

    g = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(shape, generator=g), torch.rand(shape, generator=g) + 0.1
    p_loc, p_scale = torch.randn(shape, generator=g), torch.rand(shape, generator=g) + 0.5
    draw = loc + scale * torch.randn(shape, generator=g)
    for k in range(len(shape) + 1):
        fast = _site_normal(loc, scale, k, draw)
        ref = dist.Normal(loc, scale).to_event(k)
        assert (fast.batch_shape, fast.event_shape) == (ref.batch_shape, ref.event_shape)
        assert isinstance(fast, type(ref)) and fast.has_rsample
        v = torch.randn(shape, generator=g)
        torch.testing.assert_close(fast.log_prob(v), ref.log_prob(v))
        torch.testing.assert_close(kl_divergence(fast, dist.Normal(p_loc, p_scale).to_event(k)),
                                   kl_divergence(ref, dist.Normal(p_loc, p_scale).to_event(k)))
        assert torch.equal(fast.rsample(), draw)  # the draw made beforehand
        assert fast.rsample((2,)).shape == (2, *shape)  # with a sample shape: fresh noise
        wide = fast.expand((4, *fast.batch_shape))
        assert wide.batch_shape == (4, *ref.batch_shape)
        assert not torch.equal(wide.rsample()[0], draw)
        no_draw = _site_normal(loc, scale, k)
        torch.manual_seed(1)
        a = no_draw.rsample()
        torch.manual_seed(1)
        torch.testing.assert_close(a, ref.rsample())


def test_site_distributions_use_the_constructors_under_pyro_coercions(monkeypatch):
    import bayesdistill.bnn.network as network

    seen = []

    def coerce(cls, args, kwargs):
        seen.append(cls.__name__)
        return None

    monkeypatch.setattr(network, "_COERCIONS", [coerce])
    monkeypatch.setattr(dist.distribution, "COERCIONS", [coerce])
    d = network._site_normal(torch.zeros(3), torch.ones(3), 1)
    assert "Independent" in seen and d.event_shape == (3,)


def test_lrt_linear_only_leaves_convolutions_to_weight_sampling():
    """layers="linear": Linear sites record moments (value = loc), Conv sites draw weights; the
    forward samples the Linear pre-activations only and the KL is unchanged."""
    bnn = bd.BNN(tiny_conv1d(length=12, channels=4))
    x = torch.randn(5, 1, 12)
    q = bnn.posterior()
    with bd.local_reparameterization("linear") as h:
        trace = poutine.trace(bnn.guide).get_trace(x)
        assert set(h.moments) == {"3.weight", "3.bias"}
        model_trace = poutine.trace(poutine.replay(bnn.model, trace=trace)).get_trace(x)
    assert torch.equal(trace.nodes["3.weight"]["value"], q.locs["3.weight"])
    assert not torch.equal(trace.nodes["0.weight"]["value"], q.locs["0.weight"])
    assert all("forward" not in vars(m) for m in bnn.net.modules())
    assert model_trace.nodes["_RETURN"]["value"].shape == (5, 3)
    with bd.local_reparameterization() as h_all:
        poutine.trace(bnn.guide).get_trace(x)
    assert set(h_all.moments) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    with pytest.raises(ValueError, match="linear"):
        bd.local_reparameterization("conv")


def test_fit_local_reparam_linear_equals_all_on_a_linear_network():
    """On a network of Linear layers "linear" and True are the same estimator, draw for draw."""
    x, y = toy_classification(32)
    a, b = bd.BNN(tiny_mlp(), dataset_size=32), bd.BNN(tiny_mlp(), dataset_size=32)
    bd.fit(a, (x, y), epochs=2, batch_size=16, seed=1, progress=False, local_reparam=True)
    bd.fit(b, (x, y), epochs=2, batch_size=16, seed=1, progress=False, local_reparam="linear")
    assert torch.equal(a.loc, b.loc) and torch.equal(a.rho, b.rho)
    c = bd.BNN(tiny_conv1d(), dataset_size=32)
    bd.fit(c, (torch.randn(32, 1, 12), y), epochs=1, batch_size=16, seed=1, progress=False, local_reparam="linear")
    with pytest.raises(ValueError, match="local_reparam"):
        bd.fit(c, (torch.randn(32, 1, 12), y), epochs=1, progress=False, local_reparam="conv")
