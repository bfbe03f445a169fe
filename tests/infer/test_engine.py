"""The training engine (infer/engine.py): arguments checked where they enter, the step API, the
data-set size, the state a resume needs."""

from __future__ import annotations

import pytest
import torch

import bayesdistill as bd
from bayesdistill.infer import SVIEngine
from bayesdistill.infer.engine import EpochStats
from _helpers import states_equal, tiny_mlp, toy_classification


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lr": "0.01"}, TypeError, r"lr must be a number > 0.0, got '0.01' \(str\)"),
    ({"lr": 0.0}, ValueError, "lr must be a finite number > 0.0, got 0.0"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite number"),
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
    ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
    ({"clip_grad_norm": -1.0}, ValueError, "clip_grad_norm must be a finite number > 0.0, got -1.0"),
    ({"num_particles": 0}, ValueError, "num_particles must be an int >= 1, got 0"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay must be a finite number >= 0.0"),
    ({"kl_weight": float("inf")}, ValueError, "kl_weight must be a finite number >= 0.0"),
    ({"seed": "7"}, TypeError, "seed must be an int"),
    ({"local_reparam": "conv"}, ValueError, "local_reparam must be True, False, 'all' or 'linear'"),
    ({"eval_samples": 0, "eval_data": toy_classification(8)}, ValueError, "eval_samples must be an int >= 1"),
    ({"epochs": -1}, ValueError, "epochs must be an int >= 0, got -1"),
    ({"epochs": 2.5}, TypeError, "epochs must be an int"),
    ({"lr_schedule": "linear"}, ValueError, "lr_schedule must be None, 'cosine' or a callable"),
    ({"device": "tpu:0"}, ValueError, "device must be"),
])
def test_bad_arguments_are_named_with_value_and_range(kwargs, error, match):
    bnn = bd.BNN(tiny_mlp(), dataset_size=16)
    before = bnn.loc.detach().clone()
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        bd.fit(bnn, toy_classification(16), progress=False, **kwargs)
    assert torch.equal(before, bnn.loc)


def test_evaluate_and_predict_check_their_arguments_and_the_data_first():
    bnn = bd.BNN(tiny_mlp(), dataset_size=16)
    x, y = toy_classification(16)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        bd.evaluate(bnn, (x, y), num_samples=0)
    with pytest.raises(ValueError, match="n_bins must be an int >= 1"):
        bd.evaluate(bnn, (x, y), n_bins=0)
    with pytest.raises(bd.DataError, match=r"could not run on inputs of shape \(16, 5\)"):
        bd.evaluate(bnn, (torch.randn(16, 5), y))
    with pytest.raises(bd.DataError, match="NaN or inf"):
        bd.evaluate(bnn, (torch.full((16, 4), float("nan")), y))
    with pytest.raises(TypeError, match="predict expects a bd.BNN"):
        bd.predict(tiny_mlp(), x)


def test_dataset_size_is_taken_from_the_data_or_warned_about():
    x, y = toy_classification(64)
    bnn = bd.BNN(tiny_mlp())  # no dataset_size: the KL would swamp the batch likelihood
    bd.fit(bnn, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16), epochs=1,
           progress=False)
    assert bnn.dataset_size == 64
    with pytest.warns(UserWarning, match=r"dataset_size is 1000000 but the training data hold 64"):
        bd.fit(bd.BNN(tiny_mlp(), dataset_size=1_000_000), (x, y), epochs=1, progress=False)
    with pytest.warns(UserWarning, match=r"dataset_size is 1 but"):
        bd.fit(bd.BNN(tiny_mlp(), dataset_size=1), (x, y), epochs=1, progress=False)


def test_step_by_step_equals_fit_and_state_dict_round_trips():
    x, y = toy_classification(32)
    a, b = bd.BNN(tiny_mlp(), dataset_size=32), bd.BNN(tiny_mlp(), dataset_size=32)
    bd.fit(a, (x, y), epochs=2, batch_size=8, lr=0.01, seed=3, progress=False)
    engine = SVIEngine(b, (x, y), batch_size=8, lr=0.01, seed=3).init()
    b.register_params = False
    for epoch in (1, 2):
        stats = EpochStats(engine.device)
        for batch in engine.batches.epoch(epoch):
            engine.step(batch, stats)
        assert stats.steps == 4 and engine.global_step == 4 * epoch
    assert torch.equal(a.loc, b.loc) and torch.equal(a.rho, b.rho)
    state = engine.state_dict()
    c = bd.BNN(tiny_mlp(seed=5), dataset_size=32)
    other = SVIEngine(c, (x, y), batch_size=8, lr=0.01, seed=3).init()
    other.load_state_dict(state)
    assert states_equal(c.state_dict(), b.state_dict()) and other.global_step == 8


def test_fit_rejects_a_network_that_is_not_a_bnn_and_transfer_without_terms():
    x, y = toy_classification(8)
    with pytest.raises(TypeError, match="wrap your network with bd.BNN"):
        bd.fit(tiny_mlp(), (x, y), epochs=1)
    with pytest.raises(ValueError, match="transfer= only makes sense with distill= terms"):
        bd.fit(bd.BNN(tiny_mlp()), (x, y), epochs=1, transfer=x)
    with pytest.raises(ValueError, match="overwrite= and extend= apply to a checkpoint"):
        bd.fit(bd.BNN(tiny_mlp()), (x, y), epochs=1, overwrite=True)
