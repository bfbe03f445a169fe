"""Data-free distillation (Lopes, Fenu & Starner 2017): records against statistics computed
independently, the spectral bases against a hand computation, reconstruction against its
objective, the record file (round trip, damaged files, another teacher's record), distillation
on reconstructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdistill as bd
from _helpers import randomize_posterior
from bayesdistill.distill import datafree as df
from bayesdistill.errors import DataError, FileFormatError, RecordMismatchError, UnsupportedLayerError

T = 4.0


def mlp(seed=0, widths=(5, 7, 6, 3)):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return bd.models.mlp(widths[0], widths[-1], widths[1:-1])  # Flatten, Linear, ReLU, Linear, ReLU, Linear


def data(n=90, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(classes, d, generator=g)[y] + 0.7 * torch.randn(n, d, generator=g)
    return x, y


def trained_mlp(seed=0, steps=300):
    """The MLP fit to ``data()`` by plain cross-entropy (a teacher that separates the classes)."""
    net = mlp(seed)
    x, y = data()
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def bnn_teacher(seed=0):
    t = bd.BNN(mlp(seed))
    randomize_posterior(t, seed=seed, scale_range=(0.05, 0.2))
    return t


# ----------------------------------------------------------------------------- records
@pytest.mark.parametrize("as_bnn", [False, True])
def test_all_layers_record_is_the_per_class_mean_and_covariance(as_bnn):
    x, y = data()
    teacher = bnn_teacher() if as_bnn else mlp()
    rec = df.record(teacher, (x, y), kind="all", temperature=T, batch_size=16)  # several batches
    assert rec.layers == ["2", "4", "output"] and [b.name for b in rec.blocks] == ["2", "4", "output"]
    # the activations, computed independently: the posterior-mean network, layer by layer
    net = teacher.net if as_bnn else teacher
    with torch.no_grad():
        if as_bnn:
            w = teacher.posterior().locs
            h1 = F.relu(x @ w["1.weight"].T + w["1.bias"])
            h2 = F.relu(h1 @ w["3.weight"].T + w["3.bias"])
            out = h2 @ w["5.weight"].T + w["5.bias"]
        else:
            h1 = net[2](net[1](x))
            h2 = net[4](net[3](h1))
            out = net[5](h2)
    for name, acts in (("2", h1), ("4", h2), ("output", out / T)):
        b = rec.block(name)
        for c in range(3):
            a = acts[y == c]
            torch.testing.assert_close(b.mean[c], a.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(b.cov[c], torch.cov(a.T), rtol=1e-3, atol=1e-5)
        assert b.nonnegative == (name != "output")
    assert rec.counts.tolist() == [30, 30, 30] and rec.num_classes == 3
    assert rec.input_shape == (5,)
    assert rec.input_mean == pytest.approx(float(x.mean()), abs=1e-5)
    assert rec.input_std == pytest.approx(float(x.std(unbiased=False)), rel=1e-4)
    top = df.record(teacher, (x, y), kind="top", temperature=T)
    assert [b.name for b in top.blocks] == ["output"]
    torch.testing.assert_close(top.block("output").mean, rec.block("output").mean)
    # the marginal statistics (DeepInversion's): the class mixture's mean and variance
    mu, var = rec.marginal("2")
    torch.testing.assert_close(mu, h1.mean(0), rtol=1e-4, atol=1e-5)
    share = [float((y == c).float().mean()) for c in range(3)]
    second = sum(p * (h1[y == c].var(0) + h1[y == c].mean(0) ** 2) for c, p in enumerate(share))
    torch.testing.assert_close(var, second - h1.mean(0) ** 2, rtol=1e-3, atol=1e-5)


def test_spectral_bases_and_coefficients_match_a_hand_computation():
    x, y = data()
    teacher = mlp()
    w3, w5 = teacher[3].weight.detach().double(), teacher[5].weight.detach().double()  # [6, 7], [3, 6]
    # the layer graph of the recorded layers (7 + 6 + 3 units), by hand
    A = np.zeros((16, 16))
    A[7:13, 0:7] = np.abs(w3.numpy())
    A[13:16, 7:13] = np.abs(w5.numpy())
    A = A + A.T
    L = np.diag(A.sum(1)) - A
    vals, vecs = np.linalg.eigh(L)
    k = df.num_components(16, 0.25)
    assert k == 4
    U = df.spectral_basis([7, 6, 3], [w3, w5], k).double().numpy()
    for j in range(k):  # eigenvectors up to sign
        assert min(np.abs(U[:, j] - vecs[:, j]).max(), np.abs(U[:, j] + vecs[:, j]).max()) < 1e-5
    np.testing.assert_allclose(df.graph_laplacian(df.layer_graph_adjacency([7, 6, 3], [w3, w5])).numpy(), L,
                               atol=1e-12)
    assert vals[0] == pytest.approx(0, abs=1e-9)  # the constant vector of a connected graph
    rec = df.record(teacher, (x, y), kind="spectral-all", temperature=T, spectral_fraction=0.25)
    (block,) = rec.blocks
    assert block.name == "spectral" and block.layers == ["2", "4", "output"] and block.dim == k
    with torch.no_grad():
        h1 = teacher[2](teacher[1](x))
        h2 = teacher[4](teacher[3](h1))
        a = torch.cat([h1, h2, teacher[5](h2) / T], 1).double()
    coef = a @ torch.from_numpy(U)
    for c in range(3):
        torch.testing.assert_close(block.mean[c].double(), coef[y == c].mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(block.cov[c].double(), torch.cov(coef[y == c].T), rtol=1e-3, atol=1e-5)
    pairs = df.record(teacher, (x, y), kind="spectral-pairs", temperature=T, spectral_fraction=0.5)
    assert [b.name for b in pairs.blocks] == ["spectral:2+4", "spectral:4+output"]
    assert [b.dim for b in pairs.blocks] == [round(0.5 * 13), round(0.5 * 9)]
    U2 = df.spectral_basis([6, 3], [w5], round(0.5 * 9)).double()
    c2 = torch.cat([h2, teacher[5](h2).detach() / T], 1).double() @ U2
    torch.testing.assert_close(pairs.blocks[1].mean[0].double(), c2[y == 0].mean(0), rtol=1e-4, atol=1e-5)


def test_record_errors():
    x, y = data()
    teacher = mlp()
    with pytest.raises(DataError, match="labelled data"):
        df.record(teacher, x)
    keep = (y != 2) | (torch.arange(len(y)) == 2)  # class 2: one example
    with pytest.raises(DataError, match=r"classes \[2\] have fewer than 2 examples"):
        df.record(teacher, (x[keep], y[keep]))
    with pytest.raises(DataError, match="labels up to 4 but the teacher has 3 outputs"):
        df.record(teacher, (torch.cat([x, x[:2]]), torch.cat([y, torch.tensor([4, 4])])))
    with pytest.raises(ValueError, match="kind"):
        df.record(teacher, (x, y), kind="middle")
    with pytest.raises(KeyError, match="no module 'nope'"):
        df.record(teacher, (x, y), layers=["nope"])
    conv = nn.Sequential(bd.models.Unsqueeze(), nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(2, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(10, 3))
    with pytest.raises(UnsupportedLayerError, match=r"exactly one nn.Linear.*between '2' and '4'.*Conv1d"):
        df.record(conv, (x, y), kind="spectral-all")
    df.record(conv, (x, y), kind="all")  # per-layer statistics work for any network


# ----------------------------------------------------------------------------- files
def test_record_round_trip_and_damaged_files(tmp_path):
    x, y = data()
    teacher = bnn_teacher()
    rec = df.record(teacher, (x, y), kind="spectral-pairs", temperature=T, metadata={"dataset": "toy"})
    path = rec.save(tmp_path / "teacher.record.pt")
    again = df.ActivationRecord.load(path)
    assert (again.kind, again.temperature, again.layers, again.input_shape) == (rec.kind, T, rec.layers, (5,))
    assert again.fingerprint == rec.fingerprint and again.metadata == {"dataset": "toy"}
    assert again.input_mean == rec.input_mean and again.input_std == rec.input_std
    assert torch.equal(again.counts, rec.counts)
    for a, b in zip(again.blocks, rec.blocks):
        assert a.name == b.name and a.layers == b.layers and a.nonnegative == b.nonnegative
        assert torch.equal(a.mean, b.mean) and torch.equal(a.cov, b.cov) and torch.equal(a.basis, b.basis)
    # a plain torch file readable with weights_only (no pickled classes)
    torch.load(path, weights_only=True)
    again.check_teacher(teacher)
    (tmp_path / "junk.pt").write_bytes(b"not a record")
    with pytest.raises(FileFormatError, match="activation record"):
        df.ActivationRecord.load(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(FileFormatError, match="not a bayesdistill activation record"):
        df.ActivationRecord.load(tmp_path / "other.pt")
    state = rec.state()
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(FileFormatError, match="version 99"):
        df.ActivationRecord.load(tmp_path / "future.pt")
    state = rec.state()
    state["blocks"][0]["cov"] = state["blocks"][0]["cov"][:2]  # 2 classes of 3
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(FileFormatError, match="covariances"):
        df.ActivationRecord.load(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError):
        df.ActivationRecord.load(tmp_path / "missing.pt")


def test_a_record_from_another_teacher_is_refused():
    x, y = data()
    teacher = bnn_teacher(seed=0)
    rec = df.record(teacher, (x, y), kind="top")
    same_arch = bnn_teacher(seed=1)
    with pytest.raises(RecordMismatchError, match="same architecture but other weights"):
        df.reconstruct(same_arch, rec, 6, steps=1, progress=False)
    wider = bd.BNN(mlp(0, widths=(5, 8, 6, 3)))
    with pytest.raises(RecordMismatchError, match="architecture digest"):
        df.reconstruct(wider, rec, 6, steps=1, progress=False)
    plain = mlp(0)
    with pytest.raises(RecordMismatchError):  # the module itself is another teacher than the BNN
        df.reconstruct(plain, rec, 6, steps=1, progress=False)
    # the same teacher, its posterior saved and loaded into a new BNN: accepted
    clone = bd.BNN(mlp(5)).load_posterior(teacher.posterior())
    df.reconstruct(clone, rec, 6, steps=1, progress=False)


# ----------------------------------------------------------------------------- reconstruction
def test_reconstruction_reduces_the_distance_to_the_sampled_targets():
    x, y = data()
    teacher = mlp()
    rec = df.record(teacher, (x, y), kind="top", temperature=T)
    r = df.reconstruct(teacher, rec, 12, steps=300, lr=0.05, batch_size=5, progress=False, seed=3)
    assert r.x.shape == (12, 5) and r.classes.tolist() == [i % 3 for i in range(12)]
    # the targets b: the same generator stream as reconstruct (noise first, then the targets)
    g = torch.Generator().manual_seed(3)
    start = rec.input_mean + rec.input_std * torch.randn(12, 5, generator=g)
    b = df.sample_targets(rec, r.classes, g)["output"]
    with torch.no_grad():
        by_hand_start = ((teacher(start) / T - b) ** 2).sum(1) / 3
        by_hand_end = ((teacher(r.x) / T - b) ** 2).sum(1) / 3
    torch.testing.assert_close(r.loss_start, by_hand_start, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r.loss_end, by_hand_end, rtol=1e-4, atol=1e-6)
    assert float(r.loss_end.mean()) < 0.05 * float(r.loss_start.mean())
    # steps=0: the starting noise; the same seed gives the same inputs
    noise = df.reconstruct(teacher, rec, 12, steps=0, progress=False, seed=3)
    assert torch.equal(noise.x, start) and torch.equal(noise.loss_end, noise.loss_start)
    again = df.reconstruct(teacher, rec, 12, steps=300, lr=0.05, batch_size=5, progress=False, seed=3)
    assert torch.equal(again.x, r.x)


def test_all_layers_and_deepinversion_objectives():
    x, y = data()
    teacher = bd.BNN(trained_mlp(), init_scale=1e-3)
    rec = df.record(teacher, (x, y), kind="all", temperature=T)
    g = torch.Generator().manual_seed(0)
    targets = df.sample_targets(rec, torch.arange(300) % 3, g)
    assert (targets["2"] >= 0).all() and (targets["4"] >= 0).all() and (targets["output"] < 0).any()
    r = df.reconstruct(teacher, rec, 9, steps=200, progress=False)
    assert float(r.loss_end.mean()) < 0.5 * float(r.loss_start.mean())
    di = df.reconstruct(teacher, rec, 30, steps=200, objective="deepinversion", tv_weight=1e-3, progress=False)
    assert float(di.loss_end.mean()) < float(di.loss_start.mean())
    assert (df.teacher_labels(teacher, x) == y).float().mean() > 0.9
    agree = (df.teacher_labels(teacher, di.x) == di.classes).float().mean()
    assert agree >= 0.7  # the cross-entropy drives inputs to their class, against the feature statistics
    ce_only = df.reconstruct(teacher, rec, 30, steps=200, objective="deepinversion", feature_weight=0.0,
                             progress=False)
    assert (df.teacher_labels(teacher, ce_only.x) == ce_only.classes).float().mean() >= 0.9
    spectral = df.record(teacher, (x, y), kind="spectral-all")
    with pytest.raises(ValueError, match="deepinversion"):
        df.reconstruct(teacher, spectral, 6, objective="deepinversion", progress=False)
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 2\]"):
        df.reconstruct(teacher, rec, 3, classes=torch.tensor([0, 1, 3]), progress=False)
    with pytest.raises(ValueError, match="shape"):
        df.reconstruct(teacher, rec, 3, classes=torch.tensor([0, 1]), progress=False)
    with pytest.raises(ValueError, match="objective"):
        df.reconstruct(teacher, rec, 3, objective="dream", progress=False)


def test_data_free_student_uses_only_reconstructed_inputs_and_the_teachers_labels():
    x, y = data(n=120)
    teacher = bnn_teacher()
    rec = df.record(teacher, (x, y), kind="all", temperature=T)
    student = bd.BNN(mlp(1, widths=(5, 4, 3)), dataset_size=60)
    result = df.data_free_student(student, teacher, rec, 60, reconstruct_options={"steps": 50, "progress": False},
                                  epochs=3, batch_size=20, lr=0.01)
    assert len(result.reconstruction) == 60 and result.reconstruction.steps == 50
    assert len(result.fit.history) == 3 and "distill/kd/loss" in result.fit.history[-1]
    labels = df.teacher_labels(teacher, result.reconstruction.x)
    assert labels.shape == (60,) and labels.dtype == torch.long
    with pytest.raises(DataError, match="inputs"):
        df.distill_on_inputs(student, teacher, torch.zeros(5), epochs=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reconstruction_on_cuda_matches_the_cpu():
    x, y = data()
    teacher = mlp()
    rec = df.record(teacher, (x, y), kind="all", temperature=T)
    cpu = df.reconstruct(teacher, rec, 12, steps=50, batch_size=5, progress=False, seed=1, device="cpu")
    gpu = df.reconstruct(teacher, rec, 12, steps=50, batch_size=5, progress=False, seed=1, device="cuda")
    assert gpu.x.device.type == "cpu"  # results come back to the CPU
    torch.testing.assert_close(gpu.x, cpu.x, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.loss_end, cpu.loss_end, rtol=1e-3, atol=1e-4)
