"""MeanFieldPosterior: save/load round trips, atomic writes, derived quantities and sampling."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import bayesdistill as bd
from bayesdistill.bnn.posterior import FORMAT_NAME, FORMAT_VERSION
from _helpers import randomize_posterior, states_equal, tiny_bn_net, tiny_mlp, toy_classification


def _trained_bn_bnn() -> bd.BNN:
    """A BNN with BatchNorm whose posterior and running statistics moved away from their init."""
    x, y = toy_classification(48)
    bnn = bd.BNN(tiny_bn_net(), dataset_size=48)
    bd.fit(bnn, (3.0 * x + 1.0, y), epochs=2, batch_size=16, lr=0.05, progress=False)
    assert not torch.equal(bnn.net[1].running_mean, torch.zeros(6))
    return bnn


def _assert_same_posterior(a: bd.MeanFieldPosterior, b: bd.MeanFieldPosterior) -> None:
    assert list(a) == list(b)
    assert states_equal(a.locs, b.locs) and states_equal(a.scales, b.scales)
    assert sorted(a.point_estimates) == sorted(b.point_estimates)
    assert all(torch.equal(a.point_estimates[k], b.point_estimates[k]) for k in a.point_estimates)
    assert a.info == b.info and a.metadata == b.metadata


def test_posterior_mirrors_the_bnn():
    bnn = bd.BNN(tiny_mlp())
    randomize_posterior(bnn, seed=1)
    q = bnn.posterior()
    assert list(q) == bnn.site_names and len(q) == 4 and q.num_weights() == bnn.num_weights
    flat_loc = torch.cat([q.locs[n].reshape(-1) for n in q])
    flat_scale = torch.cat([q.scales[n].reshape(-1) for n in q])
    assert torch.equal(flat_loc, bnn.loc.detach())
    assert torch.equal(flat_scale, F.softplus(bnn.rho.detach()))
    assert q.shapes == bnn.shapes
    loc, scale = q["2.weight"]
    assert loc.shape == scale.shape == (3, 6)
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        q["nope"]
    # a detached copy: training the BNN later does not change it
    with torch.no_grad():
        bnn.loc.add_(1.0)
    assert torch.equal(q.locs["0.weight"], flat_loc[:24].view(6, 4))
    assert "MeanFieldPosterior(4 tensors" in repr(q)


def test_save_load_round_trip(tmp_path):
    bnn = _trained_bn_bnn()
    q = bnn.posterior()
    q.metadata["dataset"] = "toy"
    path = q.save(tmp_path / "sub" / "q.pt")  # creates the folder
    assert path == tmp_path / "sub" / "q.pt"
    r = bd.MeanFieldPosterior.load(path)
    _assert_same_posterior(q, r)
    assert {"net.1.running_mean", "net.1.running_var", "net.1.weight"} <= set(r.point_estimates)
    state = torch.load(path, weights_only=True)  # a plain, weights-only-loadable file
    assert state["format"] == FORMAT_NAME and state["version"] == FORMAT_VERSION
    assert state["names"] == bnn.site_names


def test_metadata_that_a_weights_only_load_cannot_read_is_refused_before_writing(tmp_path):
    """A str subclass (torch.__version__) pickles as its own class, which torch.load(weights_only=True)
    refuses: save must refuse it first, naming where it is, and write nothing."""
    q = bd.BNN(tiny_mlp()).posterior()
    q.metadata["env"] = {"torch": torch.__version__}
    with pytest.raises(TypeError, match=r"posterior metadata\['env'\]\['torch'\] holds a TorchVersion"):
        q.save(tmp_path / "q.pt")
    assert not (tmp_path / "q.pt").exists()
    q.metadata["env"] = {"torch": str(torch.__version__)}
    q.save(tmp_path / "q.pt")
    assert bd.MeanFieldPosterior.load(tmp_path / "q.pt").metadata["env"]["torch"] == str(torch.__version__)


@pytest.mark.parametrize("map_location", ["cpu", torch.device("cpu"), None])
def test_load_map_location(tmp_path, map_location):
    q = bd.BNN(tiny_mlp()).posterior()
    q.save(tmp_path / "q.pt")
    r = bd.MeanFieldPosterior.load(tmp_path / "q.pt", map_location=map_location)
    assert all(t.device.type == "cpu" for t in [*r.locs.values(), *r.scales.values()])
    _assert_same_posterior(q, r)


def test_loaded_posterior_gives_identical_predictions(tmp_path):
    bnn = _trained_bn_bnn()
    bnn.posterior().save(tmp_path / "q.pt")
    x, y = toy_classification(20, seed=1)
    fresh = bd.BNN(tiny_bn_net(seed=123), dataset_size=48)  # same architecture, other init
    before = bd.predict(fresh, (x, y), num_samples=4, seed=0)[0]
    fresh.load_posterior(bd.MeanFieldPosterior.load(tmp_path / "q.pt"))

    out_a, y_a = bd.predict(bnn, (x, y), num_samples=5, seed=3)
    out_b, y_b = bd.predict(fresh, (x, y), num_samples=5, seed=3)
    assert out_a.shape == (5, 20, 3) and torch.equal(y_a, y)
    # the file stores scale = softplus(rho); rho is recovered as softplus^-1(scale), which is exact
    # up to float32 rounding, so the reloaded predictions agree to rounding error
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, out_b[:4])  # loading changed something
    # point estimates (BatchNorm statistics and affine parameters) came along bit for bit
    assert states_equal(bnn.net.state_dict(), fresh.net.state_dict())
    assert torch.equal(fresh.loc, bnn.loc)
    torch.testing.assert_close(fresh.scale(), bnn.scale(), rtol=1e-6, atol=1e-9)

    # two networks loaded from the same file predict bit-identically under the same seed
    other = bd.BNN(tiny_bn_net(seed=7), dataset_size=48).load_posterior(bd.MeanFieldPosterior.load(tmp_path / "q.pt"))
    out_c, _ = bd.predict(other, (x, y), num_samples=5, seed=3)
    assert torch.equal(out_c, out_b)
    assert torch.equal(
        other.predict(x, 5, generator=torch.Generator().manual_seed(9)),
        fresh.predict(x, 5, generator=torch.Generator().manual_seed(9)),
    )
    # the generator seed is what makes them equal
    assert not torch.allclose(out_b, bd.predict(fresh, (x, y), num_samples=5, seed=4)[0])


def test_predict_on_inputs_only():
    bnn = bd.BNN(tiny_mlp())
    x, _ = toy_classification(10)
    out, targets = bd.predict(bnn, x, num_samples=3, seed=0, batch_size=4)
    assert out.shape == (3, 10, 3) and targets is None
    # batches use the same S weight draws: splitting the data does not change the outputs
    whole, _ = bd.predict(bnn, x, num_samples=3, seed=0, batch_size=1024)
    torch.testing.assert_close(out, whole)
    seq, _ = bd.predict(bnn, x, num_samples=3, seed=0, vectorize=False)
    torch.testing.assert_close(seq, whole, rtol=1e-5, atol=1e-6)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "q.pt"
    old = bd.BNN(tiny_mlp(seed=1)).posterior()
    old.save(path)
    new = bd.BNN(tiny_mlp(seed=2)).posterior()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk, then the writer dies
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        new.save(path)
    monkeypatch.setattr(torch, "save", real_save)

    assert os.listdir(tmp_path) == ["q.pt"]  # no temporary file left behind
    _assert_same_posterior(bd.MeanFieldPosterior.load(path), old)
    new.save(path)  # and a later save replaces it
    _assert_same_posterior(bd.MeanFieldPosterior.load(path), new)
    assert os.listdir(tmp_path) == ["q.pt"]


def test_snr_is_abs_loc_over_scale():
    bnn = bd.BNN(tiny_mlp())
    randomize_posterior(bnn, seed=4)
    q = bnn.posterior()
    snr = q.snr()
    assert list(snr) == bnn.site_names
    flat = torch.cat([snr[n].reshape(-1) for n in bnn.site_names])
    torch.testing.assert_close(flat, bnn.loc.detach().abs() / F.softplus(bnn.rho.detach()))
    assert snr["0.weight"].shape == (6, 4)


def test_sample_shapes_and_statistics():
    bnn = bd.BNN(tiny_mlp())
    randomize_posterior(bnn, seed=5, scale_range=(0.1, 0.5))
    q = bnn.posterior()
    one = q.sample()
    assert {k: v.shape for k, v in one.items()} == q.shapes
    many = q.sample((4, 2))
    assert {k: v.shape for k, v in many.items()} == {k: (4, 2, *s) for k, s in q.shapes.items()}
    a = q.sample((3,), generator=torch.Generator().manual_seed(0))
    b = q.sample((3,), generator=torch.Generator().manual_seed(0))
    assert states_equal(a, b)
    big = q.sample((20_000,), generator=torch.Generator().manual_seed(1))
    for name, (loc, scale) in q.items():
        assert ((big[name].mean(0) - loc).abs() < 5 * scale / 20_000**0.5).all()
        torch.testing.assert_close(big[name].std(0), scale, rtol=0.05, atol=0)


def test_to_dtype_and_mapping_checks():
    q = bd.BNN(tiny_bn_net()).posterior()
    d = q.to(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in d.locs.values())
    assert d.point_estimates["net.1.num_batches_tracked"].dtype == torch.int64  # integers untouched
    assert d.device.type == "cpu"
    with pytest.raises(bd.PosteriorMismatchError, match="'w'"):
        bd.MeanFieldPosterior({"w": torch.zeros(2)}, {"w": torch.ones(3)})
    with pytest.raises(bd.PosteriorMismatchError, match="same names"):
        bd.MeanFieldPosterior({"w": torch.zeros(2)}, {"v": torch.ones(2)})
