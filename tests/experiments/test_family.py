"""The family pipelines as a library: recipes and their documented defaults, the refusals before
any work, the seeds' summary (mean ± sample std) and the reports rendered from metrics only."""

from __future__ import annotations

import math

import pytest

from bayesdistill.distill.datafree import RECORD_KINDS
from bayesdistill.distill.grow import GROWN_INITS, GROWTH_MODES
from bayesdistill.experiments import (DataFreeRecipe, ExperimentError, GeneralizedRecipe, GrowRecipe, RecordRecipe,
                                      RunSettings, generalized, generalized_datasets)
from bayesdistill.experiments.family_reports import generalized_report, mean_pm_std
from bayesdistill.experiments.generalized import check_privileged, mean_std


def test_recipes_hold_the_documented_defaults() -> None:
    g = GeneralizedRecipe()
    assert (g.seeds, g.temperature, g.imitation, g.epochs, g.lr, g.kl_weight) == ((0, 1, 2), 1.0, 1.0, 300, 0.05, 0.2)
    assert RecordRecipe().kind in RECORD_KINDS and RecordRecipe().temperature == 8.0
    assert DataFreeRecipe().objective == "match" and DataFreeRecipe().kd_weight == 1.0
    assert GrowRecipe().mode in GROWTH_MODES and GrowRecipe().init in GROWN_INITS
    assert GeneralizedRecipe(seeds=[3]).to_dict()["seeds"] == [3]
    with pytest.raises(ValueError, match="seeds"):
        GeneralizedRecipe(seeds=())
    with pytest.raises(ValueError, match="seeds"):
        GeneralizedRecipe(seeds=(-1,))


def test_mean_std_is_the_sample_standard_deviation() -> None:
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": math.sqrt(2.0)}
    assert mean_std([0.5]) == {"mean": 0.5, "std": None}
    assert mean_pm_std({"mean": 0.5, "std": None}) == "0.5000"
    assert mean_pm_std({"mean": 0.5, "std": 0.25}) == "0.5000 ± 0.2500"


def test_only_privileged_data_sets_are_accepted(tmp_path) -> None:
    assert check_privileged("Privileged_Clean_Labels") == "privileged-clean-labels"
    assert set(generalized_datasets()) >= {"privileged-clean-labels", "privileged-relevant-features"}
    with pytest.raises(ExperimentError, match="privileged-clean-features"):
        generalized(tmp_path / "x", "digits")
    assert not (tmp_path / "x").exists()


def test_generalized_pipeline_summarizes_its_seeds(tmp_path) -> None:
    r = generalized(tmp_path / "gd", "privileged-relevant-features", GeneralizedRecipe(seeds=(0, 1), epochs=2),
                    run=RunSettings(num_samples=2, quiet=True, device="cpu", ood=False))
    m = r.to_dict()
    for role in ("teacher", "student", "distilled"):
        assert m["summary"][role]["nll"] == mean_std([e[role]["test"]["nll"] for e in m["per_seed"]])
        assert m["per_seed"][0][role]["uncertainty"] is None  # ood=False
    assert m["gain"]["per_seed"] == [e["distilled"]["test"]["accuracy"] - e["student"]["test"]["accuracy"]
                                     for e in m["per_seed"]]
    assert (tmp_path / "gd" / "report.md").read_text() == generalized_report(m)
    assert set(r.models[1]) == {"teacher", "student", "distilled"}
