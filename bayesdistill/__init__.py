"""bayesdistill: Bayesian knowledge distillation on PyTorch and Pyro.

    import bayesdistill as bd
    data = bd.datasets.load("mnist1d")
    teacher = bd.BNN(net, prior=bd.priors.Normal(scale=1.0),
                     likelihood=bd.likelihoods.Categorical(), dataset_size=len(data.train))
    result = bd.fit(teacher, data.train, epochs=30)
    bd.evaluate(teacher, data.test)
    teacher.posterior().save("teacher.pt")
    bd.save_model(teacher, "teacher-model.pt", model="cnn", input_shape=data.input_shape, output_dim=10)
    teacher = bd.load_model("teacher-model.pt")          # a ready BNN
"""

from . import datasets, diagnostics, distill, errors, models
from .bnn import (
    BNN,
    LocalReparameterization,
    MeanFieldPosterior,
    likelihoods,
    local_reparameterization,
    priors,
)
from .errors import (
    DataError,
    NonFiniteLossError,
    PosteriorFormatError,
    PosteriorMismatchError,
    RecordMismatchError,
    ResumeMismatchError,
    RunExistsError,
    ShapeMismatchError,
    UnsupportedLayerError,
)
from .distill import AlignmentPlan, GrowthPlan, align, grow, student_from_small, student_from_teacher
from . import infer
from .infer import FitResult, MeanFieldELBO, SVIEngine, evaluate, fit, predict
from .infer import callbacks
from .diagnostics import plots
from . import experiments
from .experiments import load_model, save_model
from ._version import __version__

__all__ = [
    "BNN",
    "MeanFieldPosterior",
    "MeanFieldELBO",
    "LocalReparameterization",
    "local_reparameterization",
    "fit",
    "FitResult",
    "SVIEngine",
    "infer",
    "callbacks",
    "align",
    "AlignmentPlan",
    "student_from_teacher",
    "grow",
    "GrowthPlan",
    "student_from_small",
    "distill",
    "evaluate",
    "predict",
    "priors",
    "likelihoods",
    "datasets",
    "diagnostics",
    "plots",
    "experiments",
    "save_model",
    "load_model",
    "models",
    "errors",
    "DataError",
    "NonFiniteLossError",
    "PosteriorFormatError",
    "PosteriorMismatchError",
    "RecordMismatchError",
    "ShapeMismatchError",
    "UnsupportedLayerError",
    "RunExistsError",
    "ResumeMismatchError",
]
