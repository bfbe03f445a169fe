"""The recipes: frozen dataclasses holding the measured defaults."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bayesdistill.experiments import (DEMO, QUICK, QUICK_DEMO, DemoRecipe, DistillRecipe, FunctionSpaceRecipe,
                                      RunSettings, TeacherRecipe, UncertaintyRecipe)
from bayesdistill.experiments.recipes import PRUNING_PLOT_FRACTIONS, PRUNING_PLOT_MAX_PROBE, REGRESSION_NOISE


def test_teacher_recipe_keeps_the_measured_defaults() -> None:
    assert TeacherRecipe().to_dict() == {"epochs": 100, "lr": 3e-3, "batch_size": 128, "prior_scale": 1.0,
                                         "lr_schedule": "cosine", "channels": 32, "kl_weight": 0.5}


def test_distill_recipe_speaks_the_library_s_words() -> None:
    assert DistillRecipe().to_dict() == {"epochs": 150, "lr": 3e-3, "batch_size": 128, "criterion": "snr",
                                         "prior_scale": "unit", "init": "prior-mean", "compensation": True,
                                         "kl_weight": 0.5, "lr_schedule": "cosine"}


def test_function_space_recipe_and_its_variants() -> None:
    fs = FunctionSpaceRecipe()
    assert (fs.student, fs.epochs, fs.train_fraction) == ("mlp", 50, 1.0)
    assert fs.variant_methods() == {"plain": [], "kd": ["kd"], "vid+kd": ["vid", "kd"]}
    d = DistillRecipe()
    assert (fs.lr, fs.batch_size, fs.kl_weight, fs.lr_schedule) == (d.lr, d.batch_size, d.kl_weight, d.lr_schedule)
    assert json.loads(json.dumps(fs.to_dict()))["variants"] == [["plain", []], ["kd", ["kd"]], ["vid+kd", ["vid", "kd"]]]


def test_recipes_are_frozen_and_replaced_not_edited() -> None:
    r = TeacherRecipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 3  # type: ignore[misc]
    assert r.replace(epochs=3).epochs == 3 and r.epochs == 100


def test_the_demo_and_its_quick_variant() -> None:
    assert (DEMO.dataset, DEMO.teacher_model, DEMO.student, DEMO.student_fraction) == ("mnist1d", "cnn-deep",
                                                                                      "cnn-small", 0.1)
    assert DEMO.teacher == TeacherRecipe() and DEMO.distill == DistillRecipe() and DEMO.num_samples == 32
    assert QUICK.to_dict() == {"epochs": 3, "train_fraction": 0.1, "num_samples": 8, "ood_samples": 4}
    assert QUICK_DEMO == DEMO.quick() and QUICK_DEMO.is_quick
    assert QUICK_DEMO.teacher == TeacherRecipe(epochs=3) and QUICK_DEMO.distill == DistillRecipe(epochs=3)
    assert QUICK_DEMO.function_space == FunctionSpaceRecipe(epochs=3, train_fraction=0.1)
    assert QUICK_DEMO.teacher_fraction == 0.1 and QUICK_DEMO.num_samples == 8
    assert DEMO.uncertainty == UncertaintyRecipe() and QUICK_DEMO.uncertainty == UncertaintyRecipe(num_samples=4)
    assert isinstance(DemoRecipe().to_dict()["teacher"], dict)


def test_run_settings_and_constants() -> None:
    assert RunSettings().to_dict() == {"seed": 0, "device": "auto", "num_samples": 32, "monitor": False,
                                       "quiet": False, "threads": None, "allow_imports": False, "overwrite": False,
                                       "ood": True}
    assert PRUNING_PLOT_FRACTIONS == (0.0, 0.25, 0.5, 0.75) and PRUNING_PLOT_MAX_PROBE == 1024
    assert REGRESSION_NOISE == 0.1


def test_the_uncertainty_recipe() -> None:
    u = UncertaintyRecipe()
    assert u.to_dict() == {"kinds": None, "scores": ["entropy", "mutual_information"],
                           "selective_score": "max_probability", "coverage": 0.9, "num_samples": None}
    assert UncertaintyRecipe(kinds=["noise"]).kinds == ("noise",)  # a list becomes a tuple (frozen, hashable)
    with pytest.raises(ValueError, match="num_samples"):
        UncertaintyRecipe(num_samples=0)
