"""Growth (distill/grow): the grown network keeps the small one's function exactly where promised,
the zero-zero pitfall, the uniform mode's difference, the prior, plan persistence and refusals.

Function preservation is checked in float64 on random inputs (and random values of the new
inputs) to 1e-6: at the posterior means the large network's old outputs equal the small
network's outputs, in evaluation and in training mode (BatchNorm with batch statistics).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdistill as bd
from bayesdistill.distill.grow import GROWTH_MODES, GrowthPlan, GrowthPrior, grow, student_from_small
from bayesdistill.errors import FileFormatError, ShapeMismatchError, UnsupportedLayerError

PRESERVING = [m for m, ok in GROWTH_MODES.items() if ok]


def _random_small(net: nn.Module, seed: int = 0, bn_batches: int = 0, in_dim=None) -> bd.BNN:
    """A 'trained' small BNN in float64: random posterior means and scales (and BN statistics)."""
    torch.manual_seed(seed)
    small = bd.BNN(net.double(), dataset_size=100)
    with torch.no_grad():
        small.loc.copy_(torch.randn_like(small.loc) * 0.5)
        small.rho.copy_(torch.randn_like(small.rho) - 3)
    for _ in range(bn_batches):
        small.train()
        small(torch.randn(32, *in_dim, dtype=torch.float64) + 0.5)
    return small.eval()


def cnn(channels: int, classes: int, extra: int = 0) -> nn.Sequential:
    return bd.models.cnn1d(40, classes, channels=channels, extra_layers=extra)


def mlp(inputs: int, hidden: int, outputs: int, bn: bool = False, extra: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(inputs, hidden), *([nn.BatchNorm1d(hidden)] if bn else []), nn.ReLU(),
                               nn.Linear(hidden, hidden), nn.ReLU()]
    for _ in range(extra):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, outputs))


def cnn2d_bn(channels: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * 16, classes))


CASES = {
    # name: (small net, large net, grow options, small input shape, large input shape)
    "cnn wider+deeper+classes": (lambda: cnn(6, 5), lambda: cnn(12, 10, extra=2), {}, (40,), (40,)),
    "mlp features+classes+bn+deeper": (lambda: mlp(10, 8, 3, bn=True), lambda: mlp(20, 16, 7, bn=True, extra=1),
                                       {"inputs": list(range(0, 20, 2)), "outputs": [6, 0, 3]}, (10,), (20,)),
    "conv2d channels in+bn": (lambda: cnn2d_bn(4, 3), lambda: cnn2d_bn(9, 4), {}, (2, 8, 8), (2, 8, 8)),
}


def _grown(case: str, mode: str, seed: int = 0):
    make_small, make_large, opts, in_small, _ = CASES[case]
    small = _random_small(make_small(), seed, bn_batches=3, in_dim=in_small)
    large_net = make_large().double()
    plan = grow(small, large_net, mode=mode, seed=seed, **opts)
    large = student_from_small(small, large_net, plan=plan).eval()
    return small, large, plan


def _old_outputs(small, large, plan, case, seed=1):
    _, _, _, in_small, in_large = CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, *in_small, generator=g, dtype=torch.float64)
    fill = torch.randn(16, *in_large, generator=g, dtype=torch.float64)  # whatever the new inputs hold
    with torch.no_grad():
        return small(x), plan.old_outputs(large(plan.embed_inputs(x, new=fill)))


@pytest.mark.parametrize("mode", PRESERVING)
@pytest.mark.parametrize("case", list(CASES))
def test_function_preserving_modes_keep_the_old_outputs_exactly(case, mode):
    small, large, plan = _grown(case, mode)
    assert plan.function_preserving
    a, b = _old_outputs(small, large, plan, case)
    assert a.abs().max() > 0.1  # a non-trivial function
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", PRESERVING)
def test_preserved_in_training_mode_with_batch_statistics(mode):
    """BatchNorm in training mode normalizes with the batch's statistics: the old channels' are
    unchanged, so the old outputs are too."""
    case = "mlp features+classes+bn+deeper"
    small, large, plan = _grown(case, mode)
    small, large = copy.deepcopy(small).train(), copy.deepcopy(large).train()
    a, b = _old_outputs(small, large, plan, case)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_uniform_mode_is_not_function_preserving():
    case = "cnn wider+deeper+classes"
    small, large, plan = _grown(case, "uniform")
    assert not plan.function_preserving and not GROWTH_MODES["uniform"]
    a, b = _old_outputs(small, large, plan, case)
    diff = (a - b).abs().max()
    assert diff > 1e-2 * a.abs().max(), float(diff)  # new units feed old ones at random: the function moves
    # ... while the old block itself is the small posterior
    q, g = small.posterior(), plan.apply(small.posterior())
    large_path = next(L.path for L in plan.layers if L.source == "3")
    torch.testing.assert_close(g.locs[f"{large_path}.weight"][:6, :6], q.locs["3.weight"])


def test_net2net_copies_units_and_splits_their_outgoing_weights():
    small = _random_small(mlp(4, 3, 2))
    plan = grow(small, mlp(4, 7, 2).double(), mode="net2net", seed=3)
    hidden = plan.unit_maps[plan.layers[0].outputs]
    assert hidden.old == (0, 1, 2) and hidden.source[:3] == (0, 1, 2) and all(0 <= s < 3 for s in hidden.source[3:])
    q, g = small.posterior(), plan.apply(small.posterior())
    src = torch.tensor(hidden.source)
    torch.testing.assert_close(g.locs["0.weight"], q.locs["0.weight"][src])  # copies: incoming rows copied
    counts = torch.bincount(src, minlength=3).double()
    second = plan.unit_maps[plan.layers[1].outputs]
    rows = torch.tensor(second.source)
    torch.testing.assert_close(g.locs["2.weight"], q.locs["2.weight"][rows][:, src] / counts[src])
    torch.testing.assert_close(g.scales["2.weight"], q.scales["2.weight"][rows][:, src] / counts[src].sqrt())


def test_inserted_layers_start_as_the_identity():
    small = _random_small(cnn(4, 3))
    plan = grow(small, cnn(4, 3, extra=1).double(), mode="embed")
    assert [L.inserted for L in plan.layers] == [False, True, False, False, False]
    w = plan.apply(small.posterior()).locs["3.weight"]
    eye = torch.zeros_like(w)
    eye[torch.arange(4), torch.arange(4), 1] = 1
    assert torch.equal(w, eye)
    assert not plan.old_masks()["3.weight"].any()


# --------------------------------------------------------------------------- the zero pitfall
def _hidden_new_grads(mode: str, sample: bool = False):
    torch.manual_seed(0)
    small = _random_small(mlp(6, 4, 3))
    large = student_from_small(small, mlp(6, 8, 3).double(), mode=mode)
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    if sample:  # one reparameterized draw of the weights, as an SVI step takes (init_scale 1e-2)
        flat = large.loc + large.scale() * torch.randn_like(large.loc)
        weights = dict(zip(large.site_names, flat.split([s.numel() for s in large.shapes.values()])))
        weights = {k: v.view(large.shapes[k]) for k, v in weights.items()}
        F.cross_entropy(large.forward_with(x, weights), y).backward()
    else:
        F.cross_entropy(large(x), y).backward()
    grads = dict(zip(large.site_names, large.loc.grad.split([s.numel() for s in large.shapes.values()])))
    grads = {k: v.view(large.shapes[k]) for k, v in grads.items()}
    new = slice(4, 8)
    return {"in": grads["0.weight"][new], "in_bias": grads["0.bias"][new], "out": grads["2.weight"][:, new]}


def test_zero_zero_pitfall_new_units_get_no_gradient():
    """New units with zero incoming and outgoing weights: under ReLU their activation is 0 and so is
    every gradient through them; gradient descent on the means never moves them."""
    g = _hidden_new_grads("zero")
    assert all(torch.count_nonzero(t) == 0 for t in g.values())
    e = _hidden_new_grads("embed")  # random incoming weights: the outgoing ones learn at once
    assert torch.count_nonzero(e["out"]) > 0


def test_zero_mode_units_move_only_through_the_posterior_noise():
    """Under SVI the weights are sampled: the zero units get a gradient of the order of the
    posterior scale (init_scale 1e-2), far below the embed mode's."""
    z = _hidden_new_grads("zero", sample=True)
    e = _hidden_new_grads("embed", sample=True)
    assert torch.count_nonzero(z["out"]) > 0
    assert z["out"].abs().max() < 0.2 * e["out"].abs().max()


# --------------------------------------------------------------------------- the prior
def test_prior_small_posterior_on_old_weights_broad_on_new():
    small = _random_small(mlp(4, 3, 2))
    large_net = mlp(6, 5, 4).double()
    plan = grow(small, large_net, mode="net2net", inputs=[5, 0, 2, 3])
    q = small.posterior()
    large = student_from_small(small, large_net, plan=plan, new_prior_scale=2.5, prior_scale="posterior")
    masks, g = plan.old_masks(), plan.apply(q)
    # every small weight is exactly one old entry
    assert sum(int(m.sum()) for m in masks.values()) == small.num_weights
    locs = dict(zip(large.site_names, large.prior_loc.split([s.numel() for s in large.shapes.values()])))
    scales = dict(zip(large.site_names, large.prior_scale.split([s.numel() for s in large.shapes.values()])))
    for name, mask in masks.items():
        loc, scale = locs[name].view(mask.shape), scales[name].view(mask.shape)
        torch.testing.assert_close(loc[mask], g.locs[name][mask])
        torch.testing.assert_close(scale[mask], g.scales[name][mask])
        assert torch.all(loc[~mask] == 0) and torch.all(scale[~mask] == 2.5)
    # the old input features sit at their positions: column 5 of the large layer is small column 0
    w = locs["0.weight"].view(5, 6)
    torch.testing.assert_close(w[:3, 5], q.locs["0.weight"][:, 0] / 1)  # old rows, not divided (inputs are not copied)


def test_student_from_small_starts_and_options():
    small = _random_small(mlp(4, 3, 2))
    large_net = mlp(4, 6, 2).double()
    grown = student_from_small(small, large_net, mode="embed", init="grown-posterior")
    plan = grow(small, large_net, mode="embed")
    torch.testing.assert_close(grown.posterior().scales["0.weight"][:3], small.posterior().scales["0.weight"])
    module = student_from_small(small, large_net, plan=plan, init="module")
    assert not torch.allclose(module.posterior().locs["0.weight"][:3], small.posterior().locs["0.weight"])
    with pytest.raises(TypeError, match="either plan= or"):
        student_from_small(small, large_net, plan=plan, mode="zero")
    with pytest.raises(ValueError, match="init must be one of"):
        student_from_small(small, large_net, init="teacher")
    with pytest.raises(ValueError, match="scale must be"):
        GrowthPrior(small.posterior(), plan, scale="learned")


# --------------------------------------------------------------------------- persistence
def test_plan_save_load_and_replay(tmp_path):
    case = "mlp features+classes+bn+deeper"
    small, _, plan = _grown(case, "net2net")
    path = plan.save(tmp_path / "plan.pt")
    again = GrowthPlan.load(path)
    q = small.posterior()
    a, b = plan.apply(q), again.apply(q)
    assert list(a.locs) == list(b.locs)
    for k in a.locs:
        assert torch.equal(a.locs[k], b.locs[k]) and torch.equal(a.scales[k], b.scales[k])
    assert a.point_estimates.keys() == b.point_estimates.keys()
    # replay on another posterior of the small shapes: its own values, embedded the same way
    other = q.clone()
    for k in other.locs:
        other.locs[k] = other.locs[k] + 1.0
    r = again.apply(other)
    src = torch.tensor(again.unit_maps[again.layers[0].outputs].source)
    cols = torch.tensor(again.inputs.source)
    keep = cols >= 0
    torch.testing.assert_close(r.locs["0.weight"][:, keep], other.locs["0.weight"][src][:, cols[keep]])
    assert '"mode": "net2net"' in again.to_json()
    assert "GrowthPlan (mode=net2net" in again.summary()


def test_plan_load_refuses_damaged_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(FileFormatError):
        GrowthPlan.load(bad)
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(FileFormatError, match="not a growth plan"):
        GrowthPlan.load(tmp_path / "foreign.pt")
    small = _random_small(mlp(4, 3, 2))
    state = grow(small, mlp(4, 5, 2).double()).state()
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(FileFormatError, match="version 99"):
        GrowthPlan.load(tmp_path / "future.pt")


def test_apply_refuses_a_posterior_of_other_shapes():
    small = _random_small(mlp(4, 3, 2))
    plan = grow(small, mlp(4, 5, 2).double())
    other = _random_small(mlp(4, 4, 2)).posterior()
    with pytest.raises(ShapeMismatchError, match="'0.weight' has shape"):
        plan.apply(other)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("large, match", [
    (lambda: mlp(4, 2, 2), "cannot shrink: layer '0' of the large network has 2 output units, fewer than the 3"),
    (lambda: mlp(3, 5, 2), "cannot shrink: layer '0' of the large network reads 3 inputs"),
    (lambda: mlp(4, 5, 1), "cannot shrink: layer '4' of the large network has 1 output units"),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), "cannot remove layers"),
])
def test_a_plan_that_shrinks_is_refused_naming_the_layer(large, match):
    small = _random_small(mlp(4, 3, 2))
    with pytest.raises(ShapeMismatchError, match=match):
        grow(small, large().double())


def test_bad_arguments_are_named():
    small = _random_small(mlp(4, 3, 2))
    large = mlp(6, 5, 3).double()
    with pytest.raises(ValueError, match="mode must be one of"):
        grow(small, large, mode="random")
    with pytest.raises(TypeError, match="trained bd.BNN"):
        grow(small.net, large)
    with pytest.raises(ValueError, match="inputs must give a position for each of the small network's 4"):
        grow(small, large, inputs=[0, 1])
    with pytest.raises(ValueError, match="distinct positions"):
        grow(small, large, inputs=[0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"outputs must be distinct positions in \[0, 3\)"):
        grow(small, large, outputs=[0, 5])
    with pytest.raises(ValueError, match="layer_map must name every layer"):
        grow(small, large, layer_map={"0": "0"})


def test_layers_that_cannot_start_as_the_identity_are_refused():
    small = _random_small(cnn(4, 3))
    strided = nn.Sequential(*cnn(4, 3)[:3], nn.Conv1d(4, 4, 3, stride=2, padding=1), nn.ReLU(), *cnn(4, 3)[3:])
    with pytest.raises((ShapeMismatchError, UnsupportedLayerError)):
        grow(small, strided.double())
    wrong_kind = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ShapeMismatchError, match="followed by"):
        grow(_random_small(mlp(4, 3, 2)), wrong_kind.double())


def test_longer_inputs_are_refused():
    small = _random_small(cnn(4, 3))
    with pytest.raises(ShapeMismatchError, match="positions per channel"):
        grow(small, bd.models.cnn1d(80, 3, channels=4).double())


# --------------------------------------------------------------------------- robustness diagnostic
def test_weight_noise_robustness():
    torch.manual_seed(0)
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    bnn = bd.BNN(mlp(6, 8, 3), dataset_size=200)
    bd.fit(bnn, (x, y), epochs=5, progress=False, lr=1e-2)
    rob = bd.diagnostics.weight_noise_robustness(bnn, (x, y), sigmas=(0.0, 0.5, 5.0), draws=4, seed=0)
    with torch.no_grad():
        clean = float((bnn(x).argmax(-1) == y).float().mean())
    assert rob.accuracy[0] == pytest.approx(clean) and rob.std[0] == 0
    assert rob.accuracy[2] < rob.accuracy[0]
    assert rob.area() == pytest.approx((0.5 * (rob.accuracy[0] + rob.accuracy[1]) / 2
                                        + 4.5 * (rob.accuracy[1] + rob.accuracy[2]) / 2) / 5.0)
    again = bd.diagnostics.weight_noise_robustness(bnn, (x, y), sigmas=(0.0, 0.5, 5.0), draws=4, seed=0)
    assert again.accuracy == rob.accuracy
    fig = bd.plots.weight_noise({"a": rob, "b": again})
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="increasing"):
        bd.diagnostics.weight_noise_robustness(bnn, (x, y), sigmas=(0.1, 0.0))
    with pytest.raises(TypeError, match="draws"):
        bd.diagnostics.weight_noise_robustness(bnn, (x, y), draws=1.5)
