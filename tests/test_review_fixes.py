"""Behaviour found in review: parallel Predictive, container selectors, plain metadata, unseeded batches."""

import pytest
import pyro
import torch
from pyro.infer import Predictive
from torch import nn

import bayesdistill as bd


def _net():
    return nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 2))


def test_parallel_predictive_on_guide_gives_independent_draws():
    bnn = bd.BNN(_net(), dataset_size=10)
    x = torch.randn(5, 3)
    pyro.set_rng_seed(0)
    samples = Predictive(bnn.model, guide=bnn.guide, num_samples=7, parallel=True)(x)
    w = samples["1.weight"]
    assert w.shape[0] == 7 and w.shape[-2:] == (2, 4)
    # each particle has its own noise (an expanded guide site draws fresh noise)
    assert not torch.allclose(w[0], w[1])
    assert samples["obs"].shape == (7, 5)


def test_container_pattern_keeps_everything_inside_deterministic():
    bnn = bd.BNN(_net(), deterministic="0")
    assert bnn.site_names == ["1.weight", "1.bias"]
    names = [n for n, _ in bnn.named_parameters()]
    assert "net.0.0.weight" in names and "net.0.0.bias" in names


def test_pattern_matching_no_module_is_an_error():
    with pytest.raises(KeyError, match="encoder"):
        bd.BNN(_net(), deterministic=["encoder"])


def test_non_plain_metadata_is_refused_at_save(tmp_path):
    q = bd.BNN(_net()).posterior()
    q.metadata["where"] = tmp_path  # a Path would not load with weights_only=True
    with pytest.raises(TypeError, match="where"):
        q.save(tmp_path / "q.pt")
    assert not (tmp_path / "q.pt").exists()
    q.metadata["where"] = str(tmp_path)
    assert bd.MeanFieldPosterior.load(q.save(tmp_path / "q.pt")).metadata["where"] == str(tmp_path)


def test_unseeded_fit_draws_its_batch_order_from_the_global_rng():
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    torch.manual_seed(123)
    base = bd.BNN(_net(), dataset_size=64)
    a, b = bd.BNN(_net(), dataset_size=64, init=base.posterior()), bd.BNN(_net(), dataset_size=64, init=base.posterior())
    torch.manual_seed(1)
    bd.fit(a, (x, y), epochs=1, batch_size=8, seed=None, progress=False)
    torch.manual_seed(2)
    bd.fit(b, (x, y), epochs=1, batch_size=8, seed=None, progress=False)
    assert not torch.equal(a.loc, b.loc)


def test_bad_label_in_a_later_batch_of_a_generic_dataset_is_a_data_error():
    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return torch.randn(3), torch.tensor(5 if i >= 8 else i % 2)

    loader = torch.utils.data.DataLoader(Data(), batch_size=8, shuffle=False)
    with pytest.raises(bd.DataError, match="batch 2 of epoch 1.*labels must lie in"):
        bd.fit(bd.BNN(_net(), dataset_size=16), loader, epochs=1, progress=False)


def test_posterior_clone_is_independent():
    q = bd.BNN(_net()).posterior()
    c = q.clone()
    c.locs["1.weight"].add_(1.0)
    assert not torch.equal(q.locs["1.weight"], c.locs["1.weight"])
    assert list(c) == list(q)


def test_auto_vectorize_uses_vmap_for_small_cpu_batches_only(monkeypatch):
    bnn = bd.BNN(_net())
    calls = []
    real = torch.func.vmap

    def spy(fn, *a, **k):
        calls.append(True)
        return real(fn, *a, **k)

    monkeypatch.setattr(torch.func, "vmap", spy)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    small = torch.randn(bnn.AUTO_VECTORIZE_MAX_BATCH_CPU, 3)
    large = torch.randn(bnn.AUTO_VECTORIZE_MAX_BATCH_CPU + 1, 3)
    out_small = bnn.predict(small, 4, generator=g())
    assert calls == [True]
    bnn.predict(large, 4, generator=g())
    assert calls == [True]  # compute-bound CPU batch: plain passes
    torch.testing.assert_close(out_small, bnn.predict(small, 4, vectorize=False, generator=g()))
    with pytest.raises(ValueError, match="vectorize"):
        bnn.predict(small, 4, vectorize="yes")
