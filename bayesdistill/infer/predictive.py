"""Posterior predictive evaluation of a :class:`~bayesdistill.BNN`.

p(y | x, D) ~= (1/S) sum_s p(y | f(x; w_s)),  w_s ~ q(w)

The same S weight draws serve every batch; per batch they run either in one vectorized pass
(``torch.func.vmap`` over the stacked draws) or in S plain passes, chosen by
:meth:`BNN.outputs <bayesdistill.BNN.outputs>` (``vectorize="auto"``: vmap on GPUs and for small
CPU batches, where per-pass overhead dominates; plain passes for compute-bound CPU batches).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..bnn.likelihoods import Categorical
from ..bnn.likelihoods import Normal as NormalLikelihood
from .._checks import check_int
from ..bnn.network import BNN
from .batches import Batches
from .metrics import classification_metrics, regression_metrics

__all__ = ["evaluate", "predict"]


@torch.no_grad()
def predict(
    bnn: BNN,
    data: Union[Dataset, DataLoader, Tensor, tuple[Tensor, ...]],
    *,
    num_samples: int = 32,
    batch_size: int = 1024,
    seed: Optional[int] = None,
    vectorize: Union[bool, str] = "auto",
) -> tuple[Tensor, Optional[Tensor]]:
    """Network outputs under ``num_samples`` posterior draws for a whole data set.

    The same S weight draws are used for every batch, so each column s is the prediction of one
    network w_s. Runs in eval mode without gradients and restores the BNN's mode afterwards.

    Args:
        bnn: the Bayesian network.
        data: a ``Dataset``, ``DataLoader``, an input tensor ``[N, *in]`` or an ``(x, y)`` tuple.
        num_samples: S, the posterior draws.
        batch_size: examples per forward pass (ignored for a ``DataLoader``).
        seed: reproducible draws from a private generator (the global RNG is untouched);
            ``None``: fresh draws.
        vectorize: per batch, as in :meth:`BNN.outputs <bayesdistill.BNN.outputs>`: ``"auto"``
            (one ``vmap`` pass on a GPU and for CPU batches of at most 32 examples, S plain
            passes for larger CPU batches), ``True`` or ``False``.

    Returns:
        ``(outputs, targets)``: outputs ``[S, N, *out]`` on the BNN's device (logits for
        classification), targets ``[N, ...]`` or ``None`` when the data hold inputs only.

    Raises:
        TypeError: ``bnn`` is not a :class:`~bayesdistill.BNN`, or unsupported ``data``.
        ValueError: a bad ``num_samples``, ``batch_size``, ``seed`` or ``vectorize``.
        DataError: inputs the network cannot run on (checked on the first batch, before the work).
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"predict expects a bd.BNN, got {type(bnn).__name__}")
    num_samples = check_int("num_samples", num_samples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if seed is not None:
        seed = check_int("seed", seed)
    device = bnn.loc.device
    if isinstance(data, Batches):
        batches = data
    else:
        batches = Batches(_as_data(data), batch_size, device, 0, shuffle=False, what="evaluation data")
        first = batches.first()  # inputs the network cannot run on: one clear error, before the work
        bnn.check_data(first.x, first.y)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    weights = bnn.sample_weights(num_samples, generator=gen)
    was_training = bnn.training
    bnn.eval()
    outs, ys = [], []
    try:
        for batch in batches.epoch(0):
            outs.append(bnn.outputs(batch.x, weights, vectorize))
            if batch.y is not None:
                ys.append(batch.y)
    finally:
        bnn.train(was_training)
    return torch.cat(outs, dim=1), (torch.cat(ys) if ys else None)


def _as_data(data):
    if isinstance(data, (Dataset, DataLoader)):
        return data
    if torch.is_tensor(data):
        return (data,)
    if isinstance(data, tuple):
        return data
    raise TypeError(f"data must be a Dataset, DataLoader, tensor or (x, y) tuple, got {type(data).__name__}")


def evaluate(
    bnn: BNN,
    data: Union[Dataset, DataLoader, tuple[Tensor, Tensor]],
    *,
    num_samples: int = 32,
    batch_size: int = 1024,
    seed: Optional[int] = 0,
    n_bins: int = 15,
) -> dict[str, float]:
    """Posterior predictive metrics of ``bnn`` on labelled ``data``.

    Computed by :func:`predict` from ``num_samples`` weight draws (the mixture of the S
    networks' predictive distributions).

    Args:
        bnn: the Bayesian network.
        data: labelled data: a ``Dataset``, ``DataLoader`` or ``(x, y)`` tuple.
        num_samples: posterior draws.
        batch_size: examples per forward pass.
        seed: seeds the draws without touching the global RNG (``None``: fresh draws).
        n_bins: confidence bins of the ECE.

    Returns:
        Classification (:class:`~bayesdistill.likelihoods.Categorical`): ``accuracy``, ``nll``
        (nats per example), ``ece`` (``n_bins`` bins, torchmetrics' L1 definition), ``brier``,
        ``predictive_entropy``, ``expected_entropy``, ``mutual_information`` (nats; see
        :func:`~bayesdistill.diagnostics.classification_metrics`). Regression
        (:class:`~bayesdistill.likelihoods.Normal`): ``rmse``, ``mse``, ``nll`` (mixture, nats per
        example), ``gaussian_nll``, ``predictive_std`` (see
        :func:`~bayesdistill.diagnostics.regression_metrics`). Both include ``num_samples``.

    Raises:
        ValueError: unlabelled data, or targets the metrics reject.
        TypeError: another likelihood, or unsupported ``data``.
    """
    n_bins = check_int("n_bins", n_bins, minimum=1)
    outputs, targets = predict(bnn, data, num_samples=num_samples, batch_size=batch_size, seed=seed)
    if targets is None:
        raise ValueError("evaluate needs labelled data (inputs and targets)")
    lik = bnn.likelihood
    if isinstance(lik, Categorical):
        return classification_metrics(outputs, targets, n_bins=n_bins)
    if isinstance(lik, NormalLikelihood):
        if targets.dim() == 1 and outputs.dim() == 3 and outputs.shape[-1] == 1:
            targets = targets.unsqueeze(-1)
        return regression_metrics(outputs, targets, lik.scale.detach())
    raise TypeError(f"evaluate does not know the likelihood {type(lik).__name__}")
