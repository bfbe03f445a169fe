"""Bad input raises the named bayesdistill error, with a message naming what is wrong.

Data errors must come from ``fit`` before any training step: the tests check that no callback
ran and that the network's state is bit-identical to its state before the call.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import bayesdistill as bd
from _helpers import PlainDataset, clone_state, states_equal, tiny_mlp, toy_classification, toy_regression


class Scale(nn.Module):
    """A custom module with a raw nn.Parameter (not a layer type bayesdistill knows)."""

    def __init__(self, n: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.gain


# ----------------------------------------------------------------------------- unsupported layers
def test_lstm_is_unsupported_and_named_by_path():
    net = nn.Sequential(OrderedDict(embed=nn.Linear(3, 4), rnn=nn.LSTM(4, 4)))
    with pytest.raises(bd.UnsupportedLayerError, match=r"'rnn' \(LSTM\)") as info:
        bd.BNN(net)
    assert "deterministic=['rnn']" in str(info.value)
    assert isinstance(info.value, TypeError)  # catchable as the built-in it refines
    # the suggested fix works: keep it as a point estimate
    bnn = bd.BNN(net, deterministic=["rnn"])
    assert bnn.site_names == ["embed.weight", "embed.bias"]


def test_custom_module_with_raw_parameter_is_unsupported():
    net = nn.Sequential(OrderedDict(block=nn.Sequential(OrderedDict(lin=nn.Linear(3, 3), gain=Scale(3)))))
    with pytest.raises(bd.UnsupportedLayerError, match=r"'block\.gain' \(Scale\).*\['gain'\]"):
        bd.BNN(net)
    bnn = bd.BNN(net, deterministic=lambda path, m: isinstance(m, Scale))
    assert bnn.site_names == ["block.lin.weight", "block.lin.bias"]
    assert "net.block.gain.gain" in dict(bnn.named_parameters())


def test_root_parameter_and_no_bayesian_layers():
    with pytest.raises(bd.UnsupportedLayerError, match="<root>"):
        bd.BNN(Scale(3))
    with pytest.raises(bd.UnsupportedLayerError, match="no Bayesian parameters"):
        bd.BNN(nn.Sequential(nn.Linear(2, 2)), deterministic=["*"])
    with pytest.raises(TypeError, match="nn.Module"):
        bd.BNN(lambda x: x)


# ----------------------------------------------------------------------------- data errors in fit
def _assert_fit_rejects(bnn, data, match, **kw):
    """fit raises DataError(match) before any step: no callback, state bit-identical."""
    state = clone_state(bnn)
    calls = []
    with pytest.raises(bd.DataError, match=match) as info:
        bd.fit(bnn, data, epochs=2, batch_size=8, progress=False, callbacks=[lambda r, b: calls.append(r)], **kw)
    assert calls == []
    assert states_equal(state, bnn.state_dict())
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize("bad_label", [3, -1, 7])
@pytest.mark.parametrize("where", [0, 37], ids=["first-batch", "last-batch"])
def test_labels_out_of_range(bad_label, where, tmp_path):
    x, y = toy_classification(40)
    y = y.clone()
    y[where] = bad_label
    err = _assert_fit_rejects(bd.BNN(tiny_mlp()), (x, y), r"\[0, 3\)", checkpoint_dir=tmp_path)
    assert str(bad_label) in str(err)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_labels_out_of_range_in_a_dataset_or_loader():
    """Other Datasets and DataLoaders are validated on their first batch."""
    x, y = toy_classification(40)
    _assert_fit_rejects(bd.BNN(tiny_mlp()), PlainDataset(x, torch.full_like(y, 5)), r"\[0, 3\).*5 to 5")
    y = y.clone()
    y[2] = 5
    _assert_fit_rejects(bd.BNN(tiny_mlp()), DataLoader(PlainDataset(x, y), batch_size=8), r"\[0, 3\)")


def test_float_labels_for_categorical():
    x, y = toy_classification(16)
    _assert_fit_rejects(bd.BNN(tiny_mlp()), (x, y.float()), r"integer class labels.*float32")


@pytest.mark.parametrize("shape", [(16, 1), (16, 3), (4, 4)])
def test_wrong_label_shape(shape):
    x, _ = toy_classification(16)
    y = torch.zeros(shape, dtype=torch.long)
    match = r"shape \[batch\]" if shape[0] == 16 else "differ in length"
    _assert_fit_rejects(bd.BNN(tiny_mlp()), (x, y), match)


def test_int_targets_for_normal_likelihood():
    x, y = toy_regression(16)
    bnn = bd.BNN(tiny_mlp(out_dim=2), likelihood=bd.likelihoods.Normal())
    _assert_fit_rejects(bnn, (x, y.round().long()), r"float targets.*int64")
    _assert_fit_rejects(bnn, (x, y[:, :1]), r"targets of shape \(16, 2\)")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs(value):
    x, y = toy_classification(16)
    x = x.clone()
    x[11, 2] = value
    _assert_fit_rejects(bd.BNN(tiny_mlp()), (x, y), r"NaN or inf.*example 11")
    _assert_fit_rejects(bd.BNN(tiny_mlp()), PlainDataset(x[8:], y[8:]), "NaN or inf")


def test_non_finite_regression_targets():
    x, y = toy_regression(16)
    y = y.clone()
    y[3, 0] = float("nan")
    _assert_fit_rejects(bd.BNN(tiny_mlp(out_dim=2), likelihood=bd.likelihoods.Normal()), (x, y), "targets contain NaN")


def test_inputs_the_network_cannot_run():
    x, y = toy_classification(16, in_dim=5)
    _assert_fit_rejects(bd.BNN(tiny_mlp(in_dim=4)), (x, y), r"could not run on inputs of shape \(8, 5\)")


def test_inputs_without_targets():
    x, _ = toy_classification(16)
    _assert_fit_rejects(bd.BNN(tiny_mlp()), torch.utils.data.TensorDataset(x), "inputs only")
    with pytest.raises(bd.DataError, match="training data must be"):
        bd.fit(bd.BNN(tiny_mlp()), [1, 2, 3], epochs=1, progress=False)


# ----------------------------------------------------------------------------- priors and posteriors
def test_teacher_prior_from_another_network():
    teacher = bd.BNN(tiny_mlp(hidden=7)).posterior()
    with pytest.raises(bd.ShapeMismatchError, match=r"'0\.weight'.*\(6, 4\).*\(7, 4\)"):
        bd.BNN(tiny_mlp(hidden=6), prior=bd.priors.TeacherPosterior(teacher))
    deeper = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(bd.ShapeMismatchError, match=r"'4\.weight'"):
        bd.BNN(deeper, prior=bd.priors.TeacherPosterior(bd.BNN(tiny_mlp()).posterior()))


def test_prior_spec_errors():
    class WrongShape(bd.priors.Prior):
        def materialize(self, shapes):
            return ({k: torch.zeros(2, 2) for k in shapes}, {k: torch.ones(()) for k in shapes})

    with pytest.raises(bd.ShapeMismatchError, match=r"prior loc for parameter '0\.weight'"):
        bd.BNN(tiny_mlp(), prior=WrongShape())
    with pytest.raises(KeyError, match="'0.bias'"):
        bd.BNN(tiny_mlp(), prior=bd.priors.Normal(scale={"*.weight": 1.0}))
    with pytest.raises(ValueError, match="scale"):
        bd.priors.Normal(scale=0.0)
    with pytest.raises(ValueError, match=r"'2\.bias'"):
        bd.BNN(tiny_mlp(), prior=bd.priors.Normal(scale={"2.bias": -1.0, "*": 1.0}))
    with pytest.raises(ValueError, match="scale"):
        bd.priors.TeacherPosterior(bd.BNN(tiny_mlp()).posterior(), scale="mean")


def _write_corrupt(path, kind: str) -> None:
    if kind == "random-bytes":
        path.write_bytes(os.urandom(2048))
    elif kind == "truncated":
        bd.BNN(tiny_mlp()).posterior().save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "plain-dict":
        torch.save({"locs": {"0.weight": torch.zeros(6, 4)}}, path)
    elif kind == "future-version":
        state = bd.BNN(tiny_mlp()).posterior().state()
        state["version"] = 99
        torch.save(state, path)
    elif kind == "missing-field":
        state = bd.BNN(tiny_mlp()).posterior().state()
        del state["scales"]
        torch.save(state, path)
    elif kind == "negative-scale":
        state = bd.BNN(tiny_mlp()).posterior().state()
        state["scales"]["2.bias"] = -state["scales"]["2.bias"]
        torch.save(state, path)
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    "kind, match",
    [
        ("random-bytes", "could not be read"),
        ("truncated", "could not be read"),
        ("empty", "could not be read"),
        ("plain-dict", "not a bayesdistill posterior"),
        ("future-version", "version 99"),
        ("missing-field", "damaged"),
        ("negative-scale", r"'2\.bias'"),
    ],
)
def test_corrupt_posterior_file(tmp_path, kind, match):
    path = tmp_path / "q.pt"
    _write_corrupt(path, kind)
    with pytest.raises(bd.PosteriorFormatError, match=match) as info:
        bd.MeanFieldPosterior.load(path)
    assert isinstance(info.value, ValueError)
    if kind not in ("plain-dict", "future-version", "missing-field", "negative-scale"):
        assert str(path) in str(info.value)


def test_missing_posterior_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no posterior file"):
        bd.MeanFieldPosterior.load(tmp_path / "nothing.pt")


def test_posterior_from_another_network():
    bnn = bd.BNN(tiny_mlp())
    before = clone_state(bnn)
    with pytest.raises(bd.PosteriorMismatchError, match=r"'0\.weight'.*\(6, 4\).*\(9, 4\)"):
        bnn.load_posterior(bd.BNN(tiny_mlp(hidden=9)).posterior())
    deeper = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(bd.PosteriorMismatchError, match=r"posterior has but the BNN lacks: \['4\.weight', '4\.bias'\]"):
        bnn.load_posterior(bd.BNN(deeper).posterior())
    with pytest.raises(bd.PosteriorMismatchError, match=r"BNN has but the posterior lacks"):
        bd.BNN(deeper).load_posterior(bnn.posterior())
    with_bn = nn.Sequential(OrderedDict([("0", nn.Linear(4, 6)), ("1", nn.ReLU()), ("2", nn.Linear(6, 3)), ("bn", nn.BatchNorm1d(3))]))
    with pytest.raises(bd.PosteriorMismatchError, match=r"point estimates.*net\.bn\.running_mean"):
        bnn.load_posterior(bd.BNN(with_bn).posterior())
    with pytest.raises(bd.PosteriorMismatchError, match=r"'2\.weight'"):
        bd.BNN(tiny_mlp(out_dim=4), init=bnn.posterior())
    assert states_equal(before, bnn.state_dict())  # a failed load changes nothing


# ----------------------------------------------------------------------------- non-finite loss
class TurnsBad(Dataset):
    """Finite data until armed; then, after ``countdown`` more items, every input is +inf."""

    def __init__(self, x, y):
        self.x, self.y, self.countdown = x, y, None

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.countdown is not None:
            if self.countdown <= 0:
                x = torch.full_like(x, float("inf"))
            self.countdown -= 1
        return x, self.y[i]


def test_non_finite_loss_mid_epoch_restores_the_epoch_start(tmp_path, monkeypatch):
    x, y = toy_classification(32)
    bnn = bd.BNN(tiny_mlp(), dataset_size=32)
    at_epoch_end = {}
    countdown = {"n": None}
    real = bnn.likelihood.observe

    def observe(output, target):  # armed after epoch 1: the 2nd step after that returns NaN
        if countdown["n"] is not None:
            countdown["n"] -= 1
            if countdown["n"] == 0:
                output = output * float("nan")
        return real(output, target)

    monkeypatch.setattr(bnn.likelihood, "observe", observe)

    def arm(record, b):
        at_epoch_end[record["epoch"]] = clone_state(b)
        countdown["n"] = 2

    with pytest.raises(bd.NonFiniteLossError, match=r"epoch 2, step 2") as info:
        bd.fit(bnn, (x, y), epochs=4, batch_size=8, lr=0.01, progress=False, callbacks=[arm], checkpoint_dir=tmp_path)
    err = info.value
    assert (err.epoch, err.step) == (2, 2)
    assert isinstance(err, FloatingPointError)
    assert list(at_epoch_end) == [1]
    # restored to the state at the start of epoch 2 (= end of epoch 1), not the state after step 1
    assert states_equal(at_epoch_end[1], bnn.state_dict())
    assert all(torch.isfinite(p).all() for p in bnn.parameters())
    # the last good checkpoint is named and still loads
    path = tmp_path / "checkpoint.pt"
    assert err.checkpoint == str(path) and str(path) in str(err)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 1 and [r["epoch"] for r in ckpt["history"]] == [1]
    assert torch.equal(ckpt["bnn"]["loc"], bnn.loc.detach())
    # and training resumes from it once the model is fine again
    monkeypatch.undo()
    result = bd.fit(bd.BNN(tiny_mlp(), dataset_size=32), (x, y), epochs=4, batch_size=8, lr=0.01,
                    progress=False, checkpoint_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]


def test_nan_inputs_in_a_later_batch_of_a_dataset_are_a_data_error_naming_the_batch():
    """Data that are not in-memory tensors are checked batch by batch: a NaN input is the data's
    fault, reported as a DataError naming the batch (not as a diverged loss)."""
    x, y = toy_classification(32)
    data = TurnsBad(x, y)
    bnn = bd.BNN(tiny_mlp(), dataset_size=32)

    def arm(record, b):
        data.countdown = 8  # epoch 2: the first batch of 8 is fine, the second is not

    with pytest.raises(bd.DataError, match=r"batch 2 of epoch 2 has inputs with NaN or inf"):
        bd.fit(bnn, data, epochs=4, batch_size=8, lr=0.01, progress=False, callbacks=[arm])


def test_non_finite_loss_from_a_huge_learning_rate():
    x, y = toy_classification(32)
    bnn = bd.BNN(tiny_mlp(), dataset_size=32)
    start = clone_state(bnn)
    with pytest.raises(bd.NonFiniteLossError, match="lr=1000000.0") as info:
        bd.fit(bnn, (x, y), epochs=3, batch_size=8, lr=1e6, progress=False)
    err = info.value
    assert err.epoch == 1 and err.step is not None and err.step > 1 and err.checkpoint is None
    assert all(torch.isfinite(p).all() for p in bnn.parameters())
    assert states_equal(start, bnn.state_dict())


def test_non_finite_loss_from_the_model(monkeypatch):
    """A likelihood that returns NaN at one step (monkeypatched) is caught at that step."""
    x, y = toy_regression(32)
    bnn = bd.BNN(tiny_mlp(out_dim=2), likelihood=bd.likelihoods.Normal(), dataset_size=32)
    calls = {"n": 0}
    real = bnn.likelihood.observe

    def observe(output, target):
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2 (4 steps per epoch), step 3
            output = output * float("nan")
        return real(output, target)

    monkeypatch.setattr(bnn.likelihood, "observe", observe)
    states = []
    with pytest.raises(bd.NonFiniteLossError) as info:
        bd.fit(bnn, (x, y), epochs=3, batch_size=8, lr=0.01, progress=False,
               callbacks=[lambda r, b: states.append(clone_state(b))])
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert len(states) == 1 and states_equal(states[0], bnn.state_dict())
