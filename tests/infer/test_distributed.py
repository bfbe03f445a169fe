"""Data-parallel SVI (infer/distributed.py) on 2 CPU processes with gloo, launched by torchrun."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bayesdistill as bd
from bayesdistill.infer.distributed import global_batches, noise_seed, steps_per_epoch

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
REPO = Path(__file__).resolve().parents[2]


def _worker_module():
    spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torchrun(*args: str, nproc: int = 2, timeout: int = 180) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", "0",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", str(WORKER), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[:3000]


# ----------------------------------------------------------------------------- the batch split
@pytest.mark.parametrize("n, batch, world", [(64, 8, 2), (65, 8, 2), (17, 8, 2), (100, 7, 3), (10, 4, 1), (33, 16, 2)])
def test_global_batches_split_every_example_exactly_once_with_equal_step_counts(n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    parts = [global_batches(order, batch, r, world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 == len({steps_per_epoch(n, batch, world), len(parts[0])})
    seen = torch.cat([torch.cat(p) for p in parts])
    assert sorted(seen.tolist()) == list(range(n))  # no padding, no drop
    assert all(len(b) >= 1 for p in parts for b in p)
    if world == 1:  # one process: the plain consecutive batches
        assert [b.tolist() for b in parts[0]] == [order[i:i + batch].tolist() for i in range(0, n, batch)]
    with pytest.raises(ValueError, match="cannot feed"):
        global_batches(torch.arange(1), 4, 0, 2)


def test_noise_seeds_differ_per_rank_and_epoch():
    seeds = {noise_seed(0, r, e) for r in range(4) for e in range(1, 50)}
    assert len(seeds) == 4 * 49


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("config", ["plain", "prior+kd+vid"])
def test_two_rank_averaged_gradient_equals_the_one_process_gradient_on_the_union(tmp_path, config):
    """Each rank: full KL + N / B_local x its NLL (and terms); gradients averaged over ranks. With
    the same weight noise, that is exactly the one-process gradient on the union of the batches;
    summing instead of averaging (the KL counted twice) is caught by the same comparison."""
    worker = _worker_module()
    worker.grads(tmp_path / "one.pt", config, rank=0, world=1)
    reference = torch.load(tmp_path / "one.pt")["mean"]
    torchrun("grads", str(tmp_path / "two.pt"), "--config", config)
    two = torch.load(tmp_path / "two.pt")
    averaged, summed = two["mean"], two["sum"]
    assert len(averaged) == len(reference) >= 2
    for a, r in zip(averaged, reference):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(s, r, rtol=1e-3, atol=1e-4) for s, r in zip(summed, reference))


# ----------------------------------------------------------------------------- training
def test_two_process_fit_matches_one_process_and_resumes_on_any_number_of_processes(tmp_path):
    import shutil

    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    worker = _worker_module()
    torchrun("fit", str(tmp_path / "straight.pt"), "--epochs", "4", "--ckpt", str(tmp_path / "straight"))
    worker.fit(tmp_path / "one.pt", 4, "", False, 0)
    two, one = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "one.pt")
    h2, h1 = two["history"], one["history"]
    assert [r["epoch"] for r in h2] == [1, 2, 3, 4]
    # the global batch is twice as large with two processes: the same data, half the steps
    assert h2[-1]["eval_accuracy"] >= 0.9 and h1[-1]["eval_accuracy"] >= 0.9
    assert abs(h2[-1]["eval_accuracy"] - h1[-1]["eval_accuracy"]) <= 0.05
    assert h2[-1]["elbo"] > h2[0]["elbo"]

    # interrupted after epoch 2 and resumed on two processes: what the uninterrupted run gave
    ckpt = tmp_path / "ckpt"
    torchrun("fit", str(tmp_path / "first.pt"), "--epochs", "4", "--ckpt", str(ckpt), "--stop-at", "2")
    shutil.copytree(ckpt, tmp_path / "copy")
    torchrun("fit", str(tmp_path / "resumed.pt"), "--epochs", "4", "--ckpt", str(ckpt), "--resume")
    resumed = torch.load(tmp_path / "resumed.pt")
    assert strip(resumed["history"]) == strip(h2)
    assert torch.equal(resumed["loc"], two["loc"]) and torch.equal(resumed["rho"], two["rho"])

    # the same checkpoint resumed on one process continues where the two-process run stopped
    worker.fit(tmp_path / "cont.pt", 4, str(tmp_path / "copy"), True, 0)
    cont = torch.load(tmp_path / "cont.pt")["history"]
    assert [r["epoch"] for r in cont] == [1, 2, 3, 4]
    assert strip(cont[:2]) == strip(torch.load(tmp_path / "first.pt")["history"])
    assert cont[-1]["eval_accuracy"] >= 0.9


def test_adversarial_prior_critics_and_lambdas_stay_the_same_on_every_rank(tmp_path):
    """Each rank trains its critics on its own draws; after every epoch all ranks take rank 0's,
    so every rank's student sees the same prior (and the students stay identical). Without the
    synchronization the critics differ, so this check can fail."""
    torchrun("adversarial", str(tmp_path / "sync"))
    r0, r1 = (torch.load(tmp_path / f"sync.{r}.pt") for r in (0, 1))
    assert r0["lambdas"] == r1["lambdas"]
    assert all(torch.equal(r0["critics"][k], r1["critics"][k]) for k in r0["critics"])
    assert torch.equal(r0["loc"], r1["loc"])
    torchrun("adversarial", str(tmp_path / "nosync"), "--config", "nosync")
    n0, n1 = (torch.load(tmp_path / f"nosync.{r}.pt") for r in (0, 1))
    assert not all(torch.equal(n0["critics"][k], n1["critics"][k]) for k in n0["critics"])


def test_a_dataloader_without_a_distributed_sampler_is_refused_in_a_process_group(monkeypatch):
    from bayesdistill.infer import Batches
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.randn(8, 4), torch.arange(8) % 3
    with pytest.raises(bd.DataError, match="DistributedSampler"):
        Batches(DataLoader(TensorDataset(x, y), batch_size=4), 4, torch.device("cpu"), 0, rank=0, world_size=2)
