"""Callbacks (infer/callbacks.py): each one a class with resumable state."""

from __future__ import annotations

import csv
import sys
import types

import pytest
import torch

import bayesdistill as bd
from bayesdistill.infer import Callback, CSVLogger, EarlyStopping, TensorBoardLogger
from _helpers import tiny_mlp, toy_classification, without_time


def _fit(bnn, **kw):
    kw.setdefault("epochs", 6)
    kw.setdefault("batch_size", 16)
    kw.setdefault("lr", 0.01)
    kw.setdefault("progress", False)
    return bd.fit(bnn, toy_classification(64), **kw)


def test_early_stopping_stops_and_resumes_its_patience(tmp_path):
    stop = EarlyStopping(monitor="elbo", mode="min", patience=2)  # "min" of a rising ELBO: no improvement
    result = _fit(bd.BNN(tiny_mlp(), dataset_size=64), callbacks=[stop])
    assert result.stopped_early and len(result.history) == 3 and stop.wait == 2
    # its state is checkpointed: an interrupted run stops where an uninterrupted one does
    first = EarlyStopping(monitor="elbo", mode="min", patience=3)
    _fit(bd.BNN(tiny_mlp(), dataset_size=64), callbacks=[first, lambda r, b: r["epoch"] == 2],
         checkpoint_dir=tmp_path)
    again = EarlyStopping(monitor="elbo", mode="min", patience=3)
    resumed = _fit(bd.BNN(tiny_mlp(), dataset_size=64), callbacks=[again], checkpoint_dir=tmp_path, resume=True)
    assert len(resumed.history) == 4 and again.wait == 3
    with pytest.raises(KeyError, match="no column 'accuracy'"):
        _fit(bd.BNN(tiny_mlp(), dataset_size=64), callbacks=[EarlyStopping(monitor="accuracy")])
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        EarlyStopping(patience=0)


def test_csv_logger_writes_the_history_after_every_epoch(tmp_path):
    seen = []

    class Peek(Callback):
        order = 2000  # after the logger

        def on_epoch_end(self, engine, record):
            with open(tmp_path / "h.csv") as fh:
                seen.append(len(list(csv.DictReader(fh))))

    result = _fit(bd.BNN(tiny_mlp(), dataset_size=64), epochs=3, callbacks=[CSVLogger(tmp_path / "h.csv"), Peek()])
    assert seen == [1, 2, 3]
    with open(tmp_path / "h.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["elbo"]) for r in rows] == pytest.approx(result.column("elbo"))


def test_tensorboard_logger_logs_every_numeric_column(monkeypatch, tmp_path):
    logged = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            logged.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            logged.append("closed")

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _fit(bd.BNN(tiny_mlp(), dataset_size=64), epochs=2, callbacks=[TensorBoardLogger(tmp_path)])
    tags = {t for t, *_ in logged[:-1]}
    assert {"elbo", "nll", "kl", "loss", "lr"} <= tags and "epoch" not in tags
    assert [s for t, v, s in logged[:-1] if t == "elbo"] == [1, 2] and logged[-1] == "closed"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_a_callback_with_state_is_resumed_exactly(tmp_path):
    class Counter(Callback):
        def __init__(self):
            self.n = 0

        def on_epoch_end(self, engine, record):
            self.n += 1
            record["count"] = self.n
            record["draw"] = float(torch.rand(()))  # consumes the global RNG, which is checkpointed

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    straight = _fit(bd.BNN(tiny_mlp(), dataset_size=64), epochs=4, callbacks=[Counter()])
    _fit(bd.BNN(tiny_mlp(), dataset_size=64), epochs=4, callbacks=[Counter(), lambda r, b: r["epoch"] == 2],
         checkpoint_dir=tmp_path)
    resumed = _fit(bd.BNN(tiny_mlp(), dataset_size=64), epochs=4, callbacks=[Counter()], checkpoint_dir=tmp_path,
                   resume=True)
    assert without_time(resumed.history) == without_time(straight.history)
    assert resumed.column("count") == [1, 2, 3, 4]


def test_plain_functions_and_bad_callbacks():
    with pytest.raises(TypeError, match="a callback must be a bd.infer.Callback or a callable"):
        _fit(bd.BNN(tiny_mlp(), dataset_size=64), callbacks=["not a callback"])
