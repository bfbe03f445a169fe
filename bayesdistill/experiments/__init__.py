"""Experiments: recipes, pipelines returning typed results, reports, the saved model.

The command line (``bayesdistill``) parses its arguments onto these; benchmarks and notebooks
import them directly.

- :mod:`.recipes`: the defaults as frozen dataclasses (:class:`TeacherRecipe`,
  :class:`DistillRecipe`, :class:`FunctionSpaceRecipe`, :class:`DemoRecipe` and
  :data:`QUICK_DEMO`, :class:`UncertaintyRecipe`, :class:`RunSettings`);
- the pipelines: :func:`fit_teacher` -> :class:`TeacherResult`, :func:`distill` ->
  :class:`DistillResult`, :func:`function_space` -> :class:`FunctionSpaceResult`, :func:`demo` ->
  :class:`DemoResult`, :func:`evaluate_model` -> :class:`EvaluationResult` (each ``to_dict()`` is
  the run's ``metrics.json``); under ``torchrun`` every process computes and rank 0 writes;
- the family methods: :func:`generalized` -> :class:`GeneralizedResult`, :func:`record_teacher`
  -> :class:`RecordResult`, :func:`datafree` -> :class:`DataFreeResult`, :func:`grow` ->
  :class:`GrowResult` (reports in :mod:`.family_reports`);
- :mod:`.uncertainty`: every evaluated network's OOD detection and selective prediction
  (:class:`UncertaintyResult`, the ``uncertainty`` entry next to its test metrics);
- :mod:`.reports`: console tables and the demo's Markdown report, from a run's numbers only;
- :mod:`.model_file`: the saved model (``bayesdistill.Model`` v1): :func:`save_model`,
  :func:`load_model` (a ready ``BNN``), :func:`read_model_file`;
- :mod:`.factories`: models and data sets by name or import path ``package.module:factory``
  (imported only when allowed); :mod:`.config`: the TOML run-configuration file;
  :mod:`.progress`: the stage counter; :mod:`.runs`: devices, run folders, threads, processes.
"""

from . import config, factories, family_reports, progress, recipes, reports, runs, uncertainty
from .config import ConfigError, read_config
from .datafree import DataFreeResult, RecordResult, datafree, record_teacher
from .demo import DemoResult, demo
from .distill import DistillResult, TeacherSummary, TrainedStudent, distill
from .evaluation import EvaluationResult, evaluate_model
from .factories import FactoryError, ImportNotAllowedError, build_model, load_dataset
from .growth import GrowResult, grow
from .generalized import GeneralizedResult, generalized, generalized_datasets
from .function_space import FunctionSpaceResult, FunctionSpaceStudent, function_space
from .model_file import Architecture, ModelFile, load_model, read_model_file, save_model
from .progress import Stages
from .recipes import (
    DEMO,
    PRIOR_METHOD,
    QUICK,
    QUICK_DEMO,
    DataFreeRecipe,
    DemoRecipe,
    DistillRecipe,
    FunctionSpaceRecipe,
    GeneralizedRecipe,
    GrowRecipe,
    QuickSettings,
    RecordRecipe,
    RunSettings,
    TeacherRecipe,
    UncertaintyRecipe,
)
from .runs import ExperimentError, is_main
from .teacher import TeacherResult, fit_teacher
from .uncertainty import UncertaintyResult

__all__ = [
    "TeacherRecipe", "DistillRecipe", "FunctionSpaceRecipe", "DemoRecipe", "QuickSettings", "RunSettings",
    "UncertaintyRecipe", "UncertaintyResult",
    "DEMO", "QUICK", "QUICK_DEMO", "PRIOR_METHOD",
    "fit_teacher", "TeacherResult", "distill", "DistillResult", "TeacherSummary", "TrainedStudent",
    "function_space", "FunctionSpaceResult", "FunctionSpaceStudent", "demo", "DemoResult",
    "evaluate_model", "EvaluationResult",
    "save_model", "load_model", "read_model_file", "ModelFile", "Architecture",
    "build_model", "load_dataset", "ImportNotAllowedError", "FactoryError", "ConfigError", "read_config",
    "ExperimentError", "Stages", "is_main",
    "GeneralizedRecipe", "RecordRecipe", "DataFreeRecipe", "GrowRecipe", "generalized", "GeneralizedResult",
    "generalized_datasets", "record_teacher", "RecordResult", "datafree", "DataFreeResult",
    "grow", "GrowResult",
    "config", "factories", "family_reports", "progress", "recipes", "reports", "runs", "uncertainty",
]
