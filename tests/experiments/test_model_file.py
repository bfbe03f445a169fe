"""The saved model (``bayesdistill.Model`` v1): one file -> a ready BNN; no code runs from a file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import bayesdistill as bd
from _helpers import randomize_posterior, toy_classification, toy_regression, write_factory_package
from bayesdistill.experiments import ImportNotAllowedError, ModelFile, read_model_file
from bayesdistill.experiments.model_file import MODEL_FORMAT, SavedPrior


def _same_bnn(a: bd.BNN, b: bd.BNN, x: torch.Tensor) -> None:
    assert torch.equal(a.loc, b.loc) and torch.equal(a.rho, b.rho)
    assert torch.equal(a.prior_loc, b.prior_loc) and torch.equal(a.prior_scale, b.prior_scale)
    assert torch.equal(a.kl().detach(), b.kl().detach()) and a.kl_weight == b.kl_weight
    assert a.dataset_size == b.dataset_size
    for k, v in a.point_estimates().items():
        assert torch.equal(v, b.point_estimates()[k]), k
    a.eval(), b.eval()
    pa, _ = bd.predict(a, x, num_samples=4, seed=0)
    pb, _ = bd.predict(b, x, num_samples=4, seed=0)
    assert torch.equal(pa, pb)


def test_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    x, _ = toy_classification(32, in_dim=4, num_classes=3)
    prior = bd.priors.Normal(scale={"*.bias": 2.0, "*": 0.5})
    bnn = bd.BNN(bd.models.build("mlp", (4,), 3, hidden=[5]), prior=prior, dataset_size=50)
    randomize_posterior(bnn, seed=1)
    bnn.kl_weight = 0.5
    path = bd.save_model(bnn, tmp_path / "m.pt", model="mlp", model_kwargs={"hidden": [5]}, input_shape=(4,),
                         output_dim=3, dataset="toy", training={"seed": 3}, metadata={"note": "hi"})
    loaded = bd.load_model(path)
    _same_bnn(bnn, loaded, x)
    assert loaded.prior.scale == {"*.bias": 2.0, "*": 0.5} and isinstance(loaded.likelihood, bd.likelihoods.Categorical)
    mf = read_model_file(path)
    assert (mf.dataset, mf.seed, mf.metadata, mf.task) == ("toy", 3, {"note": "hi"}, "classification")
    assert mf.environment["torch_threads"] == torch.get_num_threads() and mf.environment["world_size"] == 1
    assert mf.architecture.model == "mlp" and not mf.architecture.by_import_path
    state = torch.load(path, weights_only=True)  # tensors and plain data only
    assert state["format"] == MODEL_FORMAT and state["version"] == 1
    assert bd.load_model(path, device="cpu").loc.device.type == "cpu"


def test_learned_noise_and_learned_prior_scales_come_back(tmp_path: Path) -> None:
    x, y = toy_regression(40, in_dim=4, out_dim=1)
    bnn = bd.BNN(bd.models.build("mlp", (4,), 1, hidden=[6]), prior=bd.priors.Normal(scale=1.0, learn_scale=True),
                 likelihood=bd.likelihoods.Normal(scale=0.3, learn_scale=True), dataset_size=40)
    bd.fit(bnn, (x, y), epochs=2, batch_size=16, lr=0.05, progress=False)
    assert not torch.equal(bnn.prior_log_scale, torch.zeros_like(bnn.prior_log_scale))
    path = bd.save_model(bnn, tmp_path / "reg.pt", model="mlp", model_kwargs={"hidden": [6]}, input_shape=(4,),
                         output_dim=1)
    loaded = bd.load_model(path)
    _same_bnn(bnn, loaded, x)
    assert torch.equal(loaded.prior_log_scale, bnn.prior_log_scale)
    assert float(loaded.likelihood.scale.detach()) == float(bnn.likelihood.scale.detach())
    assert loaded.likelihood.learn_scale


def test_a_teacher_posterior_prior_is_recorded_and_restored(tmp_path: Path) -> None:
    x, _ = toy_classification(32, in_dim=4, num_classes=3)
    teacher = bd.BNN(bd.models.build("mlp", (4,), 3, hidden=[8, 8]), init_scale=0.1)
    randomize_posterior(teacher, seed=2)
    net = bd.models.build("mlp", (4,), 3, hidden=[4, 4])
    plan = bd.align(teacher, net, compensation=False)
    student = bd.student_from_teacher(teacher, net, plan=plan, prior_scale="posterior", temperature=2.0)
    path = bd.save_model(student, tmp_path / "s.pt", model="mlp", model_kwargs={"hidden": [4, 4]}, input_shape=(4,),
                         output_dim=3)
    mf = read_model_file(path)
    assert mf.prior == {"name": "teacher-posterior", "scale": "posterior", "temperature": 2.0, "aligned": True}
    loaded = mf.build()
    assert isinstance(loaded.prior, bd.priors.TeacherPosterior) and loaded.prior.plan is None
    _same_bnn(student, loaded, x)


def test_other_priors_come_back_as_their_tensors(tmp_path: Path) -> None:
    class Ramp(bd.priors.Prior):
        def materialize(self, shapes):
            return ({k: torch.full(s, 0.1) for k, s in shapes.items()},
                    {k: torch.linspace(0.5, 1.5, torch.Size(s).numel()).reshape(s) for k, s in shapes.items()})

    bnn = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=[3]), prior=Ramp())
    loaded = bd.load_model(bd.save_model(bnn, tmp_path / "r.pt", model="mlp", model_kwargs={"hidden": [3]},
                                         input_shape=(4,), output_dim=2))
    assert isinstance(loaded.prior, SavedPrior) and "Ramp" in repr(loaded.prior)
    _same_bnn(bnn, loaded, torch.randn(5, 4))


def test_a_factory_by_import_path_is_imported_only_when_allowed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    marker = write_factory_package(tmp_path / "src", "bdmf_pkg")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    spec = importlib_spec("bdmf_pkg.nets", tmp_path / "src" / "bdmf_pkg" / "nets.py")
    net = spec.bn_tiny((6,), 2, hidden=4)  # built here the way a user would, from their own module
    marker.unlink()
    x = torch.randn(16, 6)
    bnn = bd.BNN(net, dataset_size=16, deterministic=["3"])  # the LayerNorm stays a point estimate
    randomize_posterior(bnn, seed=3)
    with torch.no_grad():
        bnn.train()
        bnn.outputs(x, bnn.sample_weights(1))  # BatchNorm running statistics move
    path = bd.save_model(bnn, tmp_path / "mine.pt", model="bdmf_pkg.nets:bn_tiny", model_kwargs={"hidden": 4},
                         input_shape=(6,), output_dim=2)
    assert not marker.exists()  # saving imports nothing
    with pytest.raises(ImportNotAllowedError, match="bdmf_pkg.nets.*allow_imports"):
        bd.load_model(path)
    with pytest.raises(ImportNotAllowedError):
        bd.load_model(path, allow_imports=["other"])
    assert not marker.exists() and "bdmf_pkg.nets" not in sys.modules
    loaded = bd.load_model(path, allow_imports=["bdmf_pkg"])
    assert marker.exists()
    assert set(loaded.site_names) == set(bnn.site_names) and "3.weight" not in loaded.site_names
    _same_bnn(bnn, loaded, x)


def importlib_spec(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name + "_direct", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Evil:
    """A pickle that would create a folder when unpickled by a loader that runs code."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_no_code_runs_from_a_malicious_file(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "version": 1, "payload": _Evil(str(target))}, path)
    with pytest.raises(bd.PosteriorFormatError, match="could not be read.*nothing in it was run"):
        bd.load_model(path)
    assert not target.exists()


def test_posterior_files_written_by_fit_before_still_load(tmp_path: Path) -> None:
    x, _ = toy_classification(20, in_dim=40, num_classes=10)
    net = bd.models.build("cnn", (40,), 10, channels=4)
    bnn = bd.BNN(net, prior=bd.priors.Normal(scale=1.0))
    randomize_posterior(bnn, seed=4)
    q = bnn.posterior()
    q.metadata = {"model": "cnn", "model_kwargs": {"channels": 4}, "dataset": "mnist1d", "input_shape": [40],
                  "output_dim": 10, "task": "classification", "likelihood": "categorical", "prior_scale": 1.0,
                  "seed": 5, "train_fraction": 0.1, "epochs": 1, "bayesdistill_version": "0.1.0"}
    q.save(tmp_path / "posterior.pt")
    mf = read_model_file(tmp_path)  # a run folder holding only posterior.pt
    assert mf.legacy and mf.seed == 5 and mf.dataset == "mnist1d" and mf.prior["scale"] == 1.0
    loaded = mf.build()
    rebuilt = bd.BNN(bd.models.build("cnn", (40,), 10, channels=4)).load_posterior(q)
    a, _ = bd.predict(loaded, x, num_samples=3, seed=0)
    b, _ = bd.predict(rebuilt, x, num_samples=3, seed=0)
    assert torch.equal(a, b)
    bare = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=(3,))).posterior().save(tmp_path / "bare.pt")
    with pytest.raises(bd.PosteriorFormatError, match="without architecture metadata.*bd.save_model"):
        bd.load_model(bare)
    with pytest.raises(FileNotFoundError, match="no posterior file"):
        bd.load_model(tmp_path / "missing.pt")


def test_saving_refuses_what_a_safe_loader_cannot_read(tmp_path: Path) -> None:
    bnn = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=[3]))
    with pytest.raises(TypeError, match="PosixPath"):
        bd.save_model(bnn, tmp_path / "a.pt", model="mlp", input_shape=(4,), output_dim=2,
                      metadata={"where": tmp_path})
    with pytest.raises(TypeError, match="model="):
        bd.save_model(bnn, tmp_path / "a.pt", model=None, input_shape=(4,), output_dim=2)  # type: ignore[arg-type]

    class Odd(bd.likelihoods.Categorical):
        pass

    odd = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=[3]), likelihood=Odd())
    with pytest.raises(TypeError, match="built-in likelihoods"):
        bd.save_model(odd, tmp_path / "b.pt", model="mlp", input_shape=(4,), output_dim=2)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_a_posterior_that_does_not_fit_its_architecture_is_named(tmp_path: Path) -> None:
    bnn = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=[3]))
    path = bd.save_model(bnn, tmp_path / "m.pt", model="mlp", model_kwargs={"hidden": [7]}, input_shape=(4,),
                         output_dim=2)
    with pytest.raises(bd.PosteriorMismatchError, match="does not fit the network 'mlp'"):
        bd.load_model(path)
    assert isinstance(read_model_file(path), ModelFile)
