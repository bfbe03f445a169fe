"""Steps the pipelines share: a teacher from its file, data that fit it, probes, histories, summaries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..bnn import BNN, likelihoods
from ..errors import ShapeMismatchError
from ..infer import FitResult
from .factories import AllowImports, load_dataset
from .model_file import ModelFile, read_model_file
from .recipes import REGRESSION_NOISE
from .runs import ExperimentError

__all__ = ["likelihood_for", "likelihood_name", "load_teacher", "check_fits", "teacher_dataset", "probe_inputs",
           "fit_summary", "write_history", "term_summary", "has_term_metric", "lr_schedule"]


def likelihood_for(task: str) -> likelihoods.Likelihood:
    """The likelihood of a task: Categorical, or Normal with learned noise (initially REGRESSION_NOISE)."""
    if task == "classification":
        return likelihoods.Categorical()
    return likelihoods.Normal(scale=REGRESSION_NOISE, learn_scale=True)


def likelihood_name(task: str) -> str:
    return "categorical" if task == "classification" else "normal"


def lr_schedule(value: Optional[str]) -> Optional[str]:
    """``"none"`` (the CLI's word) and ``None`` both mean no schedule."""
    return None if value in (None, "none") else value


def load_teacher(path: Union[str, os.PathLike], device: torch.device,
                 allow_imports: AllowImports = False) -> tuple[BNN, ModelFile]:
    """The teacher BNN saved at ``path`` (a model file, a posterior file from ``fit`` or a run
    folder), on ``device``, and what its file says."""
    mf = read_model_file(path)
    return mf.build(allow_imports=allow_imports, device=device), mf


def check_fits(mf: ModelFile, data: Any, what: str = "the posterior") -> None:
    """``ShapeMismatchError`` unless ``data`` has the input shape and outputs of the saved model."""
    if tuple(data.input_shape) != tuple(mf.input_shape) or int(data.output_dim) != int(mf.output_dim):
        raise ShapeMismatchError(
            f"{what} was trained on inputs of shape {tuple(mf.input_shape)} with {mf.output_dim} outputs, but "
            f"{data.name!r} has inputs {tuple(data.input_shape)} and {data.output_dim} outputs"
        )


def teacher_dataset(mf: ModelFile, dataset: Optional[str], source: str) -> str:
    """The data set to use: the one given, else the one the saved model records."""
    name = dataset or mf.dataset
    if not name:
        raise ExperimentError(f"{source!r} does not record its dataset; pass --dataset")
    return name


def probe_inputs(mf: ModelFile, name: str, size: Optional[int], seed: int,
                 allow_imports: AllowImports = False) -> torch.Tensor:
    """The teacher's training inputs (its data set, train fraction and seed as recorded);
    ``size``: a seeded random subset of that many, kept in data-set order."""
    t = mf.training
    data = load_dataset(name, train_fraction=float(t.get("train_fraction", 1.0)), seed=int(t.get("seed", 0)),
                        kwargs=t.get("dataset_kwargs"), allow_imports=allow_imports)
    x = data.train.tensors[0]
    if size is not None and size < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size].sort().values
        x = x[idx]
    return x


def fit_summary(bnn: BNN, result: FitResult) -> dict[str, Any]:
    """Weights, last training ELBO/NLL/KL, epochs and training time of a fit."""
    last = result.history[-1] if result.history else {}
    return {"num_weights": bnn.num_weights, "train": {k: last[k] for k in ("elbo", "nll", "kl") if k in last},
            "epochs_trained": len(result.history),
            "train_time_s": float(sum(r.get("time_s", 0.0) for r in result.history))}


def write_history(result: FitResult, path: Path) -> None:
    """``history.csv`` of a fit (a header alone for zero epochs)."""
    if result.history:
        result.to_csv(path)
    else:
        path.write_text("epoch\n")


def term_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """The last epoch's distillation-term columns (``distill/<term>/<metric>``)."""
    last = history[-1] if history else {}
    return {k: v for k, v in last.items() if k.startswith("distill/")}


def has_term_metric(history: list[dict[str, float]], metric: str) -> bool:
    """Whether the last epoch has a ``distill/<term>/.../<metric>`` column."""
    return bool(history) and any(k.startswith("distill/") and k.endswith("/" + metric) for k in history[-1])
