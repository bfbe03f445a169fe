"""Models and data sets by name or import path; imports only where allowed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import bayesdistill as bd
from _helpers import write_factory_package
from bayesdistill.experiments.factories import (FactoryError, ImportNotAllowedError, ImportPath, architecture_kwargs,
                                                as_bundle, build_model, check_dataset_name, check_model_name,
                                                import_allowed, is_import_path, load_dataset, resolve)


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = f"bdfact_{tmp_path.name[-12:].replace('-', '_')}"
    marker = write_factory_package(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_import_paths_parse_and_allow_rules() -> None:
    p = ImportPath.parse("mypkg.sub.nets:Factory.build")
    assert (p.module, p.attribute, p.package, str(p)) == ("mypkg.sub.nets", "Factory.build", "mypkg",
                                                           "mypkg.sub.nets:Factory.build")
    for bad in ("mypkg.nets", "mypkg.nets:", ":f", "my-pkg:f", "a:b:c"):
        with pytest.raises(FactoryError, match="import path"):
            ImportPath.parse(bad)
    assert is_import_path("a.b:c") and not is_import_path("cnn")
    assert import_allowed(p, True) and not import_allowed(p, False)
    assert import_allowed(p, ["mypkg"]) and import_allowed(p, "mypkg") and import_allowed(p, ["mypkg.sub"])
    assert not import_allowed(p, ["mypk"]) and not import_allowed(p, ["other", "mypkg.subx"])


def test_a_refused_import_runs_no_code(package) -> None:
    name, marker = package
    with pytest.raises(ImportNotAllowedError, match=rf"{name}\.nets.*--allow-imports.*allow_imports=\['{name}'\]"):
        resolve(f"{name}.nets:tiny")
    with pytest.raises(ImportNotAllowedError):
        resolve(f"{name}.nets:tiny", allow_imports=["somebody_else"])
    assert not marker.exists() and f"{name}.nets" not in sys.modules
    assert callable(resolve(f"{name}.nets:tiny", allow_imports=[name])) and marker.exists()


def test_bad_import_paths_are_clear_errors(package) -> None:
    name, _ = package
    with pytest.raises(FactoryError, match="cannot import module"):
        resolve("bd_no_such_package_xyz.nets:f", allow_imports=True)
    with pytest.raises(FactoryError, match="no attribute 'missing'"):
        resolve(f"{name}.nets:missing", allow_imports=True)
    with pytest.raises(FactoryError, match="not a callable"):
        resolve(f"{name}.nets:NOT_CALLABLE", allow_imports=True)
    with pytest.raises(KeyError, match="unknown model 'resnet'.*import path"):
        check_model_name("resnet")
    with pytest.raises(KeyError, match="unknown dataset 'imagenet'"):
        check_dataset_name("imagenet")
    check_model_name("cnn-deep")
    check_dataset_name("MNIST1D")


def test_models_by_name_and_by_import_path(package) -> None:
    name, _ = package
    net = build_model(f"{name}.nets:tiny", (6,), 3, {"hidden": 5}, allow_imports=True)
    assert net(torch.zeros(2, 6)).shape == (2, 3) and net[1].out_features == 5
    assert isinstance(build_model("mlp", (4,), 2, {"hidden": [3]}), torch.nn.Sequential)
    with pytest.raises(FactoryError, match="bad architecture options"):
        build_model("mlp", (4,), 2, {"depth": 3})
    with pytest.raises(FactoryError, match="failed"):
        build_model(f"{name}.nets:tiny", (6,), 3, {"depth": 3}, allow_imports=True)
    with pytest.raises(FactoryError, match="not an nn.Module"):
        build_model(f"{name}.nets:not_a_model", (6,), 3, allow_imports=True)


def test_data_sets_by_import_path(package) -> None:
    name, _ = package
    data = load_dataset(f"{name}.nets:data", train_fraction=0.5, seed=0, allow_imports=True)
    assert isinstance(data, bd.datasets.DatasetBundle) and data.name == f"{name}.nets:data"
    assert len(data.train) == 36 and len(data.test) == 24 and data.num_classes == 2 and data.input_shape == (6,)
    assert len(load_dataset(f"{name}.nets:data", kwargs={"n": 40}, allow_imports=True).train) == 30
    with pytest.raises(ImportNotAllowedError):
        load_dataset(f"{name}.nets:data")
    with pytest.raises(FactoryError, match="apply to a data set named by import path"):
        load_dataset("digits", kwargs={"n": 3})
    with pytest.raises(FactoryError, match="without \\['task'"):
        as_bundle(object(), "x")
    with pytest.raises(FactoryError, match="TensorDataset"):
        as_bundle(type("D", (), {"task": "classification", "train": [1], "test": [2], "input_shape": (1,),
                                 "output_dim": 2})(), "x")


def test_architecture_kwargs_of_the_built_in_models() -> None:
    assert architecture_kwargs("cnn", channels=8, hidden=(4,)) == {"channels": 8}
    assert architecture_kwargs("cnn-deep", channels=8) == {}  # a teacher recipe's channels are cnn's
    assert architecture_kwargs("mlp", channels=8, hidden=(4, 4)) == {"hidden": [4, 4]}
    assert architecture_kwargs("cnn-small", channels=8, strict=True) == {"channels": 8}
    with pytest.raises(FactoryError, match="--channels applies to cnn students"):
        architecture_kwargs("mlp", channels=8, strict=True, what="student")
    with pytest.raises(FactoryError, match="--hidden applies to mlp"):
        architecture_kwargs("cnn", hidden=(3,), strict=True)
