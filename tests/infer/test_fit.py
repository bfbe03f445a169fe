"""bd.fit: history, reproducibility, schedules, callbacks, evaluation, checkpoints and resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributions as td

import bayesdistill as bd
import bayesdistill.bnn.local_reparam as lrt_module
from _helpers import (
    PlainDataset,
    randomize_posterior,
    states_equal,
    tiny_conv1d,
    tiny_mlp,
    toy_classification,
    without_time,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
COLUMNS = {"epoch", "elbo", "nll", "kl", "loss", "kl_weight", "lr", "time_s"}


def _bnn(seed: int = 0, **kw) -> bd.BNN:
    kw.setdefault("dataset_size", 64)
    return bd.BNN(tiny_mlp(seed=seed), **kw)


def _fit(bnn, data=None, **kw):
    kw.setdefault("epochs", 3)
    kw.setdefault("batch_size", 16)
    kw.setdefault("lr", 0.01)
    kw.setdefault("seed", 7)
    kw.setdefault("progress", False)
    return bd.fit(bnn, data if data is not None else toy_classification(64), **kw)


# ----------------------------------------------------------------------------- history
def test_history_columns_and_elbo_identity():
    bnn = _bnn()
    result = _fit(bnn, epochs=3)
    assert result.bnn is bnn and not result.stopped_early and result.checkpoint is None
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for row in result.history:
        assert set(row) == COLUMNS
        assert all(math.isfinite(row[k]) for k in COLUMNS)
        assert row["elbo"] == -(row["nll"] + row["kl"])
        assert row["kl_weight"] == 1.0 and row["lr"] == 0.01 and row["time_s"] > 0
        assert row["nll"] > 0 and row["kl"] > 0
        # the columns are the averages over the epoch's steps of what the optimizer saw
        assert row["loss"] == pytest.approx(row["nll"] + row["kl_weight"] * row["kl"], rel=1e-6)
    assert result.column("elbo") == [r["elbo"] for r in result.history]


def _exact_kl(q) -> float:
    return float(sum(td.kl_divergence(td.Normal(loc.double(), scale.double()), td.Normal(0.0, 1.0)).sum()
                     for loc, scale in q.values()))


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_kl_column_is_the_kl_the_optimizer_saw(kl_weight):
    """One step per epoch: the kl column is the exact, unweighted KL of the posterior at that
    step (before its update), so loss = nll + kl_weight * kl holds for the history."""
    bnn = _bnn()
    before = _exact_kl(bnn.posterior())
    result = _fit(bnn, epochs=1, batch_size=64, kl_weight=kl_weight)
    row = result.history[0]
    assert row["kl"] == pytest.approx(before, rel=1e-5)
    assert row["loss"] == pytest.approx(row["nll"] + kl_weight * row["kl"], rel=1e-6)
    assert row["kl"] != pytest.approx(_exact_kl(bnn.posterior()), rel=1e-5)  # the update moved q


def test_kl_column_with_zero_weight_is_the_end_of_epoch_kl():
    bnn = _bnn()
    result = _fit(bnn, epochs=2, kl_weight=0.0)
    assert result.history[-1]["kl"] == pytest.approx(_exact_kl(bnn.posterior()), rel=1e-5)
    assert result.history[-1]["loss"] == pytest.approx(result.history[-1]["nll"], rel=1e-6)


def test_history_to_csv(tmp_path):
    result = _fit(_bnn(), epochs=2)
    text = result.to_csv(tmp_path / "h.csv").read_text().splitlines()
    assert text[0].split(",")[:2] == ["epoch", "elbo"] and len(text) == 3


def test_training_improves_the_fit():
    x, y = toy_classification(64)
    bnn = _bnn()
    result = _fit(bnn, (x, y), epochs=15, lr=0.03)
    nll = result.column("nll")
    assert nll[-1] < 0.5 * nll[0]
    assert float((bnn(x).argmax(-1) == y).float().mean()) >= 0.9


# ----------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("as_dataset", [False, True], ids=["tensors", "dataset"])
def test_seed_makes_cpu_runs_bit_identical(as_dataset):
    x, y = toy_classification(64)
    data = (lambda: PlainDataset(x, y)) if as_dataset else (lambda: (x, y))
    a, b, c = _bnn(), _bnn(), _bnn()
    ra = _fit(a, data(), seed=3)
    rb = _fit(b, data(), seed=3)
    _fit(c, data(), seed=4)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.rho, b.rho)
    assert without_time(ra.history) == without_time(rb.history)
    assert not torch.equal(a.loc, c.loc)  # the seed matters, so the check above can fail


def test_num_particles_and_local_reparam_runs_are_reproducible():
    a, b = _bnn(), _bnn()
    _fit(a, num_particles=2, local_reparam=True, seed=1)
    _fit(b, num_particles=2, local_reparam=True, seed=1)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.rho, b.rho)


# ----------------------------------------------------------------------------- schedules and callbacks
def test_kl_weight_callable_is_applied():
    """One step per epoch: loss - nll of epoch e is w(e) * KL of the parameters before that step."""
    weight = lambda epoch: 0.1 * epoch  # noqa: E731
    bnn = _bnn(init_scale=0.05)
    kl_before = float(bnn.kl().detach())
    result = _fit(bnn, epochs=4, batch_size=64, kl_weight=weight)
    assert result.column("kl_weight") == [pytest.approx(weight(e)) for e in (1, 2, 3, 4)]
    assert result.history[0]["kl"] == pytest.approx(kl_before, rel=1e-5)
    for row in result.history:
        assert row["loss"] - row["nll"] == pytest.approx(weight(row["epoch"]) * row["kl"], rel=1e-4, abs=1e-3)
        assert row["elbo"] == -(row["nll"] + row["kl"])  # the ELBO column stays unweighted
    # the network keeps the last weight: plain Pyro SVI continuing from it optimizes the same objective
    assert bnn.kl_weight == pytest.approx(weight(4))


def test_kl_weight_changes_the_result():
    a, b = _bnn(), _bnn()
    _fit(a, kl_weight=1.0)
    result = _fit(b, kl_weight=lambda e: 0.0)  # zero weight (the start of a KL warm-up) is allowed
    assert not torch.equal(a.loc, b.loc)
    for row in result.history:
        assert row["kl_weight"] == 0.0 and row["loss"] == row["nll"] and row["kl"] > 0
    with pytest.raises(ValueError, match="kl_weight"):
        _fit(_bnn(), kl_weight=lambda e: -1.0)


def test_cosine_lr_schedule():
    result = _fit(_bnn(), epochs=5, lr=0.02, lr_schedule="cosine")
    # the rate each epoch's steps used: from lr down towards 0
    expected = [0.02 * (1 + math.cos(math.pi * (e - 1) / 5)) / 2 for e in range(1, 6)]
    assert result.column("lr") == [pytest.approx(v, rel=1e-9, abs=1e-12) for v in expected]
    constant = _fit(_bnn(), epochs=2, lr=0.02)
    assert constant.column("lr") == [0.02, 0.02]


def test_callable_lr_schedule():
    result = _fit(_bnn(), epochs=3, lr=0.04, lr_schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    assert result.column("lr") == pytest.approx([0.04, 0.02, 0.01])  # stepped after each epoch


def test_callbacks_see_every_epoch_and_can_stop_early():
    seen = []

    def cb(record, bnn):
        seen.append((record["epoch"], bnn))
        return record["epoch"] == 2

    def quiet(record, bnn):
        return None

    bnn = _bnn()
    result = _fit(bnn, epochs=10, callbacks=[quiet, cb])
    assert result.stopped_early
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert [e for e, _ in seen] == [1, 2] and all(b is bnn for _, b in seen)


def test_eval_data_adds_eval_columns():
    x, y = toy_classification(96)
    result = _fit(_bnn(), (x[:64], y[:64]), epochs=2, eval_data=(x[64:], y[64:]))
    for row in result.history:
        assert {"eval_accuracy", "eval_nll", "eval_ece"} <= set(row)
        assert 0.0 <= row["eval_accuracy"] <= 1.0
        assert "eval_num_samples" not in row


def test_digits_mlp_reaches_90_percent():
    data = bd.datasets.load("digits")
    torch.manual_seed(0)
    net = bd.models.build("mlp", data.input_shape, data.num_classes, hidden=(64,))
    bnn = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), dataset_size=len(data.train))
    t0 = time.perf_counter()
    result = bd.fit(bnn, data.train, epochs=8, batch_size=64, lr=0.02, seed=0, progress=False)
    elapsed = time.perf_counter() - t0
    scores = bd.evaluate(bnn, data.test, num_samples=16)
    assert scores["accuracy"] >= 0.9, scores
    assert scores["num_samples"] == 16 and 0 <= scores["ece"] <= 1
    assert result.history[-1]["elbo"] > result.history[0]["elbo"]
    assert elapsed < 30, f"8 epochs on digits took {elapsed:.1f} s"


# ----------------------------------------------------------------------------- local reparameterization
@pytest.mark.parametrize(
    "make_net, x_shape",
    [(lambda: tiny_mlp(in_dim=12), (64, 12)), (tiny_conv1d, (64, 1, 12))],
    ids=["linear", "conv1d"],
)
def test_local_reparam_training_decreases_the_loss(make_net, x_shape, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g)
    y = (x.reshape(64, -1)[:, :4].sum(-1) > 0).long() + (x.reshape(64, -1)[:, 4:8].sum(-1) > 0).long()
    bnn = bd.BNN(make_net(), dataset_size=64)
    layer_types = []
    real = lrt_module.lrt_forward

    def spy(module, *args):
        layer_types.append(type(module).__name__)
        return real(module, *args)

    monkeypatch.setattr(lrt_module, "lrt_forward", spy)
    result = _fit(bnn, (x, y), epochs=12, lr=0.05, local_reparam=True)
    expected_types = {type(m).__name__ for m in bnn.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}
    assert set(layer_types) == expected_types  # every layer sampled its pre-activations
    loss, nll = result.column("loss"), result.column("nll")
    assert loss[-1] < 0.6 * loss[0], loss
    assert nll[-1] < 0.5 * nll[0], nll
    assert float((bnn(x).argmax(-1) == y).float().mean()) >= 0.85


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("as_dataset", [False, True], ids=["tensors", "dataset"])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, as_dataset):
    x, y = toy_classification(64)
    data = (lambda: PlainDataset(x, y)) if as_dataset else (lambda: (x, y))
    straight = _bnn()
    r_straight = _fit(straight, data(), epochs=4)

    part = _bnn()
    r_first = _fit(part, data(), epochs=2, checkpoint_dir=tmp_path)
    assert r_first.checkpoint == tmp_path / "checkpoint.pt"
    resumed = _bnn()  # a fresh object, as after a restart
    # the first run was planned for 2 epochs: training on to 4 is an explicit extension
    r_resumed = _fit(resumed, data(), epochs=4, checkpoint_dir=tmp_path, resume=True, extend=True)

    assert torch.equal(resumed.loc, straight.loc) and torch.equal(resumed.rho, straight.rho)
    assert without_time(r_resumed.history) == without_time(r_straight.history)
    assert r_resumed.history[:2] == r_first.history  # the first epochs come from the checkpoint
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 4 and without_time(ckpt["history"]) == without_time(r_straight.history)


def test_resume_with_schedules_after_an_interruption(tmp_path):
    """Cosine lr, a kl_weight schedule and local reparameterization: interrupted at epoch 2 by a
    callback, then resumed with the same arguments, the run equals an uninterrupted one."""
    kw = dict(epochs=5, lr_schedule="cosine", kl_weight=lambda e: min(1.0, e / 3), local_reparam=True)
    straight = _bnn()
    r_straight = _fit(straight, **kw)
    _fit(_bnn(), checkpoint_dir=tmp_path, callbacks=[lambda r, b: r["epoch"] == 2], **kw)
    resumed = _bnn()
    r_resumed = _fit(resumed, checkpoint_dir=tmp_path, resume=True, **kw)
    assert states_equal(resumed.state_dict(), straight.state_dict())
    assert without_time(r_resumed.history) == without_time(r_straight.history)


def test_checkpoint_is_written_after_the_callbacks(tmp_path):
    """What a callback adds to the record, and the RNG it consumes, are in the epoch's
    checkpoint: a run stopped and resumed equals an uninterrupted one, columns included. A
    callback that raises still leaves the epoch's checkpoint behind."""
    def noisy(record, bnn):  # records a column and draws from the global RNGs
        record["draw"] = float(torch.rand(()))
        return None

    straight = _bnn()
    r_straight = _fit(straight, epochs=4, callbacks=[noisy])
    _fit(_bnn(), epochs=4, checkpoint_dir=tmp_path, callbacks=[noisy, lambda r, b: r["epoch"] == 2])
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert [r["draw"] for r in ckpt["history"]] == [r["draw"] for r in r_straight.history[:2]]
    resumed = _bnn()
    r_resumed = _fit(resumed, epochs=4, checkpoint_dir=tmp_path, resume=True, callbacks=[noisy])
    assert without_time(r_resumed.history) == without_time(r_straight.history)
    assert states_equal(resumed.state_dict(), straight.state_dict())

    def broken(record, bnn):
        if record["epoch"] == 2:
            raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        _fit(_bnn(), epochs=4, checkpoint_dir=tmp_path / "broken", callbacks=[broken])
    assert torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=False)["epoch"] == 2


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    a, b = _bnn(), _bnn()
    _fit(a, epochs=2)
    result = _fit(b, epochs=2, checkpoint_dir=tmp_path / "new", resume=True)
    assert torch.equal(a.loc, b.loc) and [r["epoch"] for r in result.history] == [1, 2]


def test_resume_rejects_a_checkpoint_of_another_network(tmp_path):
    _fit(_bnn(), epochs=1, checkpoint_dir=tmp_path)
    other = bd.BNN(tiny_mlp(hidden=7), dataset_size=64)
    with pytest.raises(ValueError, match="another network"):
        _fit(other, epochs=2, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        _fit(_bnn(), epochs=2, resume=True)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests_dir!r})
    import bayesdistill as bd
    from _helpers import tiny_mlp, toy_classification
    x, y = toy_classification(64)
    bnn = bd.BNN(tiny_mlp(), dataset_size=64)
    bd.fit(bnn, (x, y), epochs=100000, batch_size=16, lr=0.01, seed=7, progress=False,
           checkpoint_dir={ckpt_dir!r}, callbacks=[lambda record, bnn: time.sleep(0.02)])
    """
)


def test_sigkill_mid_training_then_resume(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    path = ckpt_dir / "checkpoint.pt"
    script = _KILL_SCRIPT.format(tests_dir=str(TESTS_DIR), ckpt_dir=str(ckpt_dir))
    log_path = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    loads = 0
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"training process exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no checkpoint with epoch >= 3:\n{log_path.read_text()}"
            if path.exists():
                ckpt = torch.load(path, map_location="cpu", weights_only=False)  # never torn: must always load
                loads += 1
                assert [r["epoch"] for r in ckpt["history"]] == list(range(1, ckpt["epoch"] + 1))
                if ckpt["epoch"] >= 3:
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert loads >= 1

    killed_at = torch.load(path, weights_only=False)["epoch"]
    assert killed_at >= 3
    target = killed_at + 2
    x, y = toy_classification(64)
    bnn = bd.BNN(tiny_mlp(), dataset_size=64)
    result = bd.fit(bnn, (x, y), epochs=target, batch_size=16, lr=0.01, seed=7, progress=False,
                    checkpoint_dir=ckpt_dir, resume=True)
    assert [r["epoch"] for r in result.history] == list(range(1, target + 1))
    final = torch.load(path, weights_only=False)
    assert final["epoch"] == target and [r["epoch"] for r in final["history"]] == list(range(1, target + 1))

    # the killed-and-resumed run equals an uninterrupted one
    ref = bd.BNN(tiny_mlp(), dataset_size=64)
    r_ref = bd.fit(ref, (x, y), epochs=target, batch_size=16, lr=0.01, seed=7, progress=False)
    assert torch.equal(bnn.loc, ref.loc) and torch.equal(bnn.rho, ref.rho)
    assert without_time(result.history) == without_time(r_ref.history)


def test_fit_rejects_bad_arguments():
    with pytest.raises(TypeError, match="bd.BNN"):
        bd.fit(tiny_mlp(), toy_classification(8), epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        _fit(_bnn(), epochs=-1)
    with pytest.raises(ValueError, match="lr"):
        _fit(_bnn(), lr=0.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        _fit(_bnn(), lr_schedule="linear")
    with pytest.raises(ValueError, match="batch_size"):
        _fit(_bnn(), batch_size=0)


def test_fit_trains_in_place_from_a_randomized_posterior():
    """A posterior far from the data (random means) still trains without non-finite losses."""
    bnn = _bnn()
    randomize_posterior(bnn, seed=0, scale_range=(0.01, 0.1))
    result = _fit(bnn, epochs=6, lr=0.03)
    assert result.column("elbo")[-1] > result.column("elbo")[0]
