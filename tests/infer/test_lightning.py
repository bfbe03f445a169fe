"""The Lightning integration (infer/lightning.py): a LightningModule around a BNN and its terms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="the optional extra bayesdistill[lightning] is not installed")

import bayesdistill as bd  # noqa: E402
from bayesdistill.infer.lightning import SVIModule  # noqa: E402
from _helpers import tiny_mlp, toy_classification  # noqa: E402

WORKER = Path(__file__).resolve().parent / "lightning_worker.py"
REPO = Path(__file__).resolve().parents[2]


def test_ddp_on_two_cpu_processes_trains_and_keeps_the_ranks_in_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path), "ddp", "2"], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(r0["loc"], r0["before"])  # it trained
    # DDP averaged the gradients: both ranks hold the same parameters, the terms' too
    assert torch.equal(r0["loc"], r1["loc"]) and torch.equal(r0["rho"], r1["rho"])
    assert all(torch.equal(r0["terms"][k], r1["terms"][k]) for k in r0["terms"])
    m = r0["metrics"]
    assert {"train/loss", "train/nll", "train/kl", "distill/kd/loss", "distill/vid/pair0/mi_bound"} <= set(m)
    # Lightning's checkpoint holds the BNN and the terms and loads into a fresh module
    ckpt = torch.load(tmp_path / "final.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(ckpt["bnn.loc"], r0["loc"]) and any(k.startswith("terms.") for k in ckpt)


def test_the_module_computes_the_engine_objective():
    """One training step's loss is MeanFieldELBO's negative ELBO of the same batch and noise."""
    x, y = toy_classification(32)
    bnn = bd.BNN(tiny_mlp(), dataset_size=32)
    module = SVIModule(bnn, kl_weight=0.5)
    torch.manual_seed(0)
    loss = module._loss((x[:8], y[:8]))
    ref_bnn = bd.BNN(tiny_mlp(), dataset_size=32)
    ref_bnn.kl_weight = 0.5
    torch.manual_seed(0)
    ref = bd.MeanFieldELBO().differentiable_loss(ref_bnn.model, ref_bnn.guide, x[:8], y[:8])
    torch.testing.assert_close(loss, ref)
    assert {n for n, _ in module.named_parameters()} == {"bnn.loc", "bnn.rho"}
    with pytest.raises(ValueError, match="pass example="):
        SVIModule(bd.BNN(tiny_mlp()), distill=[bd.distill.VID(tiny_mlp(seed=3), {"1": "1"})])
    with pytest.raises(TypeError, match="expects a bd.BNN"):
        SVIModule(tiny_mlp())
