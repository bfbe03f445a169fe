"""Device placement: priors, training, posterior files and predictions on CPU and CUDA.

Tests parametrized over ``DEVICES`` run on the CPU everywhere and on CUDA where a GPU is
present; the CUDA cases are skipped with the reason "needs CUDA" otherwise. The dtype test at
the bottom exercises the same ``.to()`` plumbing on any machine.
"""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from pyro import poutine

import bayesdistill as bd
from _helpers import randomize_posterior, tiny_bn_net, tiny_conv1d, tiny_mlp, toy_classification

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda], id="cuda")
DEVICES = ["cpu", CUDA]


@pytest.mark.parametrize("device", DEVICES)
def test_priors_and_guide_move_with_to(device):
    bnn = bd.BNN(tiny_mlp(), prior=bd.priors.Normal(loc=0.1, scale={"*.bias": 2.0, "*": 0.5})).to(device)
    for t in (bnn.prior_loc, bnn.prior_scale, bnn.loc, bnn.rho):
        assert t.device.type == device
    x, y = toy_classification(8)
    x, y = x.to(device), y.to(device)
    guide_trace = poutine.trace(bnn.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(bnn.model, trace=guide_trace)).get_trace(x, y)
    for name in bnn.site_names:
        for trace in (guide_trace, model_trace):
            base = trace.nodes[name]["fn"].base_dist
            assert base.loc.device.type == base.scale.device.type == device
            assert trace.nodes[name]["value"].device.type == device
    loss = bd.MeanFieldELBO().differentiable_loss(bnn.model, bnn.guide, x, y)
    assert loss.device.type == device and torch.isfinite(loss)
    assert bnn.kl().device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_fit_on_device(device, tmp_path):
    x, y = toy_classification(64)  # CPU tensors: fit moves the batches
    bnn = bd.BNN(tiny_mlp(), dataset_size=64)
    result = bd.fit(bnn, (x, y), epochs=6, batch_size=16, lr=0.03, device=device, progress=False,
                    eval_data=(x, y), checkpoint_dir=tmp_path, local_reparam=True)
    assert bnn.loc.device.type == device and bnn.prior_loc.device.type == device
    assert [r["epoch"] for r in result.history] == list(range(1, 7))
    assert result.history[-1]["elbo"] > result.history[0]["elbo"]
    assert result.history[-1]["eval_accuracy"] >= 0.8
    ckpt = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 6
    # resume on the same device continues the history without a gap
    more = bd.fit(bd.BNN(tiny_mlp(), dataset_size=64), (x, y), epochs=8, batch_size=16, lr=0.03,
                  device=device, progress=False, eval_data=(x, y), checkpoint_dir=tmp_path, resume=True,
                  extend=True, local_reparam=True)
    assert [r["epoch"] for r in more.history] == list(range(1, 9))


@pytest.mark.parametrize("load_on", DEVICES)
@pytest.mark.parametrize("save_on", DEVICES)
def test_posterior_save_on_one_device_load_on_another(save_on, load_on, tmp_path):
    bnn = bd.BNN(tiny_bn_net())
    randomize_posterior(bnn, seed=1)
    bnn.to(save_on)
    q = bnn.posterior()
    assert q.device.type == save_on
    q.save(tmp_path / "q.pt")
    r = bd.MeanFieldPosterior.load(tmp_path / "q.pt", map_location=load_on)
    assert r.device.type == load_on
    assert all(t.device.type == load_on for t in r.point_estimates.values())
    for name in q:
        assert torch.equal(r.locs[name].cpu(), q.locs[name].cpu())
        assert torch.equal(r.scales[name].cpu(), q.scales[name].cpu())
    # a BNN on the load device accepts it and reproduces the means
    target = bd.BNN(tiny_bn_net(seed=5)).to(load_on).load_posterior(r)
    assert torch.equal(target.loc.cpu(), bnn.loc.detach().cpu())
    assert target.loc.device.type == load_on


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("make_net, x_shape", [(tiny_bn_net, (9, 4)), (tiny_conv1d, (9, 1, 12))], ids=["bn", "conv1d"])
def test_predict_on_cuda_equals_cpu_under_fixed_weights(device, make_net, x_shape):
    cpu = bd.BNN(make_net())
    randomize_posterior(cpu, seed=2, scale_range=(0.05, 0.3))
    dev = copy.deepcopy(cpu).to(device)
    x = torch.randn(x_shape)
    w = cpu.sample_weights(4, generator=torch.Generator().manual_seed(0))  # the same draws for both
    cpu.eval()
    dev.eval()
    with torch.no_grad():
        ref = torch.stack([cpu.forward_with(x, {k: v[i] for k, v in w.items()}) for i in range(4)])
        w_dev = {k: v.to(device) for k, v in w.items()}
        out = torch.func.vmap(lambda ws: dev.forward_with(x.to(device), ws))(w_dev)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dev(x.to(device)).cpu(), cpu(x), rtol=1e-4, atol=1e-4)
    # bd.predict on the device: same generator seed -> same outputs, on the device
    a, _ = bd.predict(dev, x, num_samples=3, seed=1)
    b, _ = bd.predict(dev, x, num_samples=3, seed=1)
    assert a.device.type == device and torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_elbo_matches_trace_meanfield_on_device(device):
    x, y = toy_classification(16)
    x, y = x.to(device), y.to(device)
    bnn = bd.BNN(tiny_mlp(), dataset_size=50).to(device)
    bnn.kl_weight = 0.5
    pyro.set_rng_seed(3)
    ours = bd.MeanFieldELBO(num_particles=2).loss(bnn.model, bnn.guide, x, y)
    pyro.set_rng_seed(3)
    ref = pyro.infer.TraceMeanField_ELBO(num_particles=2).loss(bnn.model, bnn.guide, x, y)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-3)


def test_to_float64_moves_priors_posterior_and_likelihood():
    """Device/dtype plumbing that runs on every machine: .to(torch.float64) moves everything."""
    bnn = bd.BNN(tiny_mlp(out_dim=2), likelihood=bd.likelihoods.Normal(scale=0.5, learn_scale=True),
                 prior=bd.priors.Normal(loc=0.2, scale=0.7), dataset_size=32)
    bnn.to(torch.float64)
    for t in (bnn.prior_loc, bnn.prior_scale, bnn.loc, bnn.rho, bnn.likelihood.raw_scale):
        assert t.dtype == torch.float64
    assert torch.equal(bnn.prior_loc, torch.full((bnn.num_weights,), 0.2).double())  # built in float32, then cast
    q = bnn.posterior()
    assert all(t.dtype == torch.float64 for t in [*q.locs.values(), *q.scales.values()])
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randn(32, 2, dtype=torch.float64)
    result = bd.fit(bnn, (x, y), epochs=2, batch_size=16, lr=0.01, progress=False)
    assert bnn.loc.dtype == torch.float64 and len(result.history) == 2
    assert bnn.predict(x, 2).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_loss_on_device(device, monkeypatch):
    """A NaN at step 2 of epoch 1. The CPU loop stops at that step, before the update, so the
    parameters stay finite; the CUDA loop checks once per epoch, so the NaN reaches the parameters
    and the error must say they diverged. Either way the network is restored to the start state."""
    x, y = toy_classification(32)
    bnn = bd.BNN(tiny_mlp(), dataset_size=32).to(device)
    start = {k: v.detach().clone() for k, v in bnn.state_dict().items()}
    calls = {"n": 0}
    real = bnn.likelihood.observe

    def observe(output, target):
        calls["n"] += 1
        return real(output * float("nan") if calls["n"] == 2 else output, target)

    monkeypatch.setattr(bnn.likelihood, "observe", observe)
    with pytest.raises(bd.NonFiniteLossError) as info:
        bd.fit(bnn, (x, y), epochs=2, batch_size=8, lr=0.01, device=device, progress=False)
    assert (info.value.epoch, info.value.step) == (1, 2)
    expected = "variational parameters diverged" if device == "cuda" else "not finite with finite parameters"
    assert expected in str(info.value)
    assert all(torch.isfinite(p).all() for p in bnn.parameters())
    assert all(torch.equal(v, start[k]) for k, v in bnn.state_dict().items())


@pytest.mark.parametrize("device", DEVICES)
def test_plots_of_a_network_on_device(device):
    """The diagnostics accept networks and posteriors that live on the device (the regression
    coverage once compared CUDA errors with CPU levels), and their results plot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from _helpers import toy_regression

    x, y = toy_regression(32)
    reg = bd.BNN(tiny_mlp(out_dim=2), likelihood=bd.likelihoods.Normal(scale=0.3), dataset_size=32).to(device)
    coverage = bd.diagnostics.calibration(reg, (x, y), num_samples=3, seed=0)
    assert 0.0 <= coverage.coverage_error <= 1.0
    figs = [bd.plots.calibration(coverage), bd.plots.snr_histogram(reg)]
    xc, yc = toy_classification(32)
    clf = bd.BNN(tiny_mlp(), dataset_size=32).to(device)
    reliability = bd.diagnostics.calibration(clf, (xc, yc), num_samples=3, seed=0)
    assert 0.0 <= reliability.ece <= 1.0
    figs.append(bd.plots.calibration(reliability))
    figs.append(bd.plots.snr_histogram(clf.posterior()))
    distances = bd.diagnostics.cosine_distances([("student", clf, "1")], (xc, yc), max_pairs=50)
    assert distances["student"].num_similar + distances["student"].num_dissimilar == 50
    figs.append(bd.plots.cosine_distances(distances))
    for f in figs:
        plt.close(f)
