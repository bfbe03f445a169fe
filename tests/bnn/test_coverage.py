"""Every parameter of the reference architectures becomes a Bayesian site (bnn/network.py).

For each architecture of ``bd.models`` (and torch's Transformer encoder, and torchvision / timm
models where they import): the model and guide sample exactly one site per parameter the user did
not keep deterministic (bare parameters such as ``MultiheadAttention.in_proj_weight``, LayerNorm
and Embedding included), with the parameter's shape; the KL equals torch.distributions'; the
posterior survives save/load and reproduces the network's outputs.
"""

from __future__ import annotations

import importlib

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch import nn

import bayesdistill as bd
from bayesdistill.bnn.local_reparam import INFER_KEY


class TorchEncoder(nn.Module):
    """Embedding -> nn.TransformerEncoder (4 heads, post-norm) -> mean -> Linear: torch's own modules."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.enc(self.emb(x)).mean(1))


def _image(name, **kw):
    return lambda: (bd.models.build(name, (3, 16, 16), 3, **kw), torch.randn(2, 3, 16, 16))


def _tokens(net):
    return lambda: (net(), torch.randint(0, 20, (2, 6)))


ARCHITECTURES = {
    "resnet18": _image("resnet18", widths=(8, 8, 16, 16)),
    "resnet10": _image("resnet10", widths=(8, 8, 16, 16)),
    "resnet8x4": _image("resnet8x4"),
    "resnet20": _image("resnet20"),
    "wrn-16-2": _image("wrn-16-2"),
    "wrn-40-1": _image("wrn-40-1"),
    "mobile-half": _image("mobile-half", last_channels=32),
    "transformer": _tokens(lambda: bd.models.build("transformer", (6,), 3, vocab_size=20, d_model=16, num_layers=2)),
    "torch-transformer": _tokens(TorchEncoder),
}


def _norm_params(net: nn.Module) -> set[str]:
    from bayesdistill.bnn.network import NORM_LAYERS

    return {f"{p}.{a}" for p, m in net.named_modules() if isinstance(m, NORM_LAYERS) for a, _ in m.named_parameters(recurse=False)}


def _sample_sites(fn, *args) -> dict[str, torch.Size]:
    tr = poutine.trace(fn).get_trace(*args)
    return {k: v["value"].shape for k, v in tr.nodes.items() if v["type"] == "sample" and not v["is_observed"]}


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    torch.manual_seed(0)
    net, x = ARCHITECTURES[request.param]()
    return request.param, net, x


def test_every_parameter_is_a_site_of_the_model_and_the_guide(arch):
    name, net, x = arch
    params = dict(net.named_parameters())
    for bayesian_norm in (True, False):
        bnn = bd.BNN(net, bayesian_norm=bayesian_norm)
        expected = [k for k in params if bayesian_norm or k not in _norm_params(net)]
        assert bnn.site_names == expected, name
        assert bnn.num_weights == sum(params[k].numel() for k in expected)
        guide, model = _sample_sites(bnn.guide, x), _sample_sites(bnn.model, x)
        assert set(model) - set(guide) == {"data", "obs"}  # the data plate and the (unobserved) likelihood
        assert guide == {k: model[k] for k in guide} == {k: params[k].shape for k in expected}
        # what is not a site is a point estimate (normalization parameters, buffers)
        points = bnn.point_estimates()
        assert all(f"net.{k}" in points for k in params if k not in expected)
        if name == "torch-transformer" and bayesian_norm:  # bare parameters, LayerNorm, Embedding
            assert {"enc.layers.0.self_attn.in_proj_weight", "enc.layers.0.self_attn.in_proj_bias",
                    "enc.layers.1.norm2.weight", "emb.weight"} <= set(guide)
        if name == "transformer":
            assert ("layers.0.norm1.weight" in guide) == bayesian_norm and "pos.weight" in guide


def test_the_kl_equals_torch_distributions(arch):
    name, net, x = arch
    bnn = bd.BNN(net, prior=bd.priors.Normal(0.1, 0.7), bayesian_norm=True, init_scale=0.05)
    q = bnn.posterior()
    expected = sum(td.kl_divergence(td.Normal(q.locs[k].double(), q.scales[k].double()),
                                    td.Normal(torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))).sum()
                   for k in q.locs)
    torch.testing.assert_close(bnn.kl().double(), expected, rtol=1e-4, atol=1e-2)


def test_the_posterior_round_trips_through_save_and_load(arch, tmp_path):
    name, net, x = arch
    bnn = bd.BNN(net, bayesian_norm=True).eval()
    with torch.no_grad():  # move the means and scales away from the initialization
        bnn.loc.add_(0.01 * torch.randn_like(bnn.loc))
        bnn.rho.add_(0.1 * torch.randn_like(bnn.rho))
    q = bd.MeanFieldPosterior.load(bnn.posterior().save(tmp_path / "q.pt"))
    again = bd.BNN(net, bayesian_norm=True).load_posterior(q).eval()
    q2 = again.posterior()
    assert list(q2.locs) == list(q.locs) and set(q2.point_estimates) == set(q.point_estimates)
    for k in q.locs:
        assert torch.equal(q.locs[k], q2.locs[k])
        torch.testing.assert_close(q.scales[k], q2.scales[k], rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(again(x), bnn(x), rtol=0, atol=0)


def test_an_svi_step_runs_and_local_reparameterization_skips_what_its_parent_reads_directly():
    torch.manual_seed(0)
    net, x = ARCHITECTURES["torch-transformer"]()
    bnn = bd.BNN(net, dataset_size=2)
    with bd.local_reparameterization():
        tr = poutine.trace(bnn.guide).get_trace(x)
    lrt = {k for k, v in tr.nodes.items() if v["type"] == "sample" and v["infer"].get(INFER_KEY)}
    # MultiheadAttention reads out_proj.weight itself (out_proj.forward never runs): sampled as weights
    assert not any("out_proj" in k for k in lrt)
    assert "enc.layers.0.linear1.weight" in lrt and "fc.weight" in lrt
    y = torch.tensor([0, 2])
    result = bd.fit(bnn, (x, y), epochs=1, batch_size=2, progress=False, local_reparam=True)
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except Exception as err:  # not installed, or installed but unimportable next to this torch
        pytest.skip(f"{module} cannot be imported here ({type(err).__name__}: {str(err)[:80]})")


def test_a_torchvision_model_when_torchvision_imports():
    tv = _optional("torchvision")
    net = tv.models.resnet18(num_classes=3)
    bnn = bd.BNN(net)
    assert bnn.site_names == [k for k, _ in net.named_parameters() if k not in _norm_params(net)]
    assert bnn(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_a_timm_model_when_timm_imports():
    timm = _optional("timm")
    net = timm.create_model("resnet18", num_classes=3, pretrained=False)
    bnn = bd.BNN(net)
    assert bnn.site_names == [k for k, _ in net.named_parameters() if k not in _norm_params(net)]
    assert pyro.__version__  # the model runs under Pyro like any other
    assert bnn(torch.randn(1, 3, 32, 32)).shape == (1, 3)
