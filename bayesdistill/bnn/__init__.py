"""Bayesian networks: any nn.Module as a Pyro model with mean-field Gaussian weights."""

from . import likelihoods, priors
from .local_reparam import LocalReparameterization, local_reparameterization
from .network import BAYESIAN_LAYERS, BNN, NORM_LAYERS
from .posterior import MeanFieldPosterior, ParamInfo
from .taps import FeatureTaps, last_hidden_layer

__all__ = [
    "BNN",
    "BAYESIAN_LAYERS",
    "NORM_LAYERS",
    "MeanFieldPosterior",
    "ParamInfo",
    "FeatureTaps",
    "last_hidden_layer",
    "LocalReparameterization",
    "local_reparameterization",
    "likelihoods",
    "priors",
]
