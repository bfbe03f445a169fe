"""Experiments: recipes, the saved model, models and data by import path, the run-configuration
file, the stage counter, and what every pipeline needs around its work (devices, run folders,
threads, processes)."""

from . import config, factories, progress, recipes, runs
from .config import ConfigError, read_config
from .factories import FactoryError, ImportNotAllowedError, build_model, load_dataset
from .model_file import Architecture, ModelFile, load_model, read_model_file, save_model
from .progress import Stages
from .recipes import (
    DEMO,
    PRIOR_METHOD,
    QUICK,
    QUICK_DEMO,
    DemoRecipe,
    DistillRecipe,
    FunctionSpaceRecipe,
    QuickSettings,
    RunSettings,
    TeacherRecipe,
)
from .runs import ExperimentError, is_main

__all__ = [
    "TeacherRecipe", "DistillRecipe", "FunctionSpaceRecipe", "DemoRecipe", "QuickSettings", "RunSettings",
    "DEMO", "QUICK", "QUICK_DEMO", "PRIOR_METHOD",
    "save_model", "load_model", "read_model_file", "ModelFile", "Architecture",
    "build_model", "load_dataset", "ImportNotAllowedError", "FactoryError", "ConfigError", "read_config",
    "ExperimentError", "Stages", "is_main",
    "config", "factories", "progress", "recipes", "runs",
]
