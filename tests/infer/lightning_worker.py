"""Worker of tests/infer/test_lightning.py: a Lightning Trainer with strategy="ddp" on 2 CPU
processes (Lightning launches the second process itself by re-running this script)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import bayesdistill as bd  # noqa: E402
from bayesdistill.infer.lightning import SVIModule  # noqa: E402
from _helpers import tiny_mlp, toy_classification  # noqa: E402


def main(out: Path, strategy: str, devices: int) -> None:
    pl.seed_everything(0, verbose=False)
    x, y = toy_classification(128, seed=3)
    teacher = bd.BNN(tiny_mlp(seed=5), dataset_size=128)
    bnn = bd.BNN(tiny_mlp(seed=1), dataset_size=128)
    terms = [bd.distill.KD(teacher, weight=0.5, calibration="temperature"), bd.distill.VID(teacher, {"1": "1"}, weight=0.3)]
    module = SVIModule(bnn, lr=0.02, distill=terms, example=bd.infer.Batch(x, y), seed=0)  # labelled: KD calibrates
    before = bnn.loc.detach().clone()
    trainer = pl.Trainer(max_epochs=3, strategy=strategy, devices=devices, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
                         log_every_n_steps=1)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
    torch.save({"loc": bnn.loc.detach(), "rho": bnn.rho.detach(), "before": before,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "terms": {k: v.detach() for k, v in module.terms.state_dict().items() if torch.is_tensor(v)}},
               out / f"rank{trainer.global_rank}.pt")
    trainer.save_checkpoint(out / "final.ckpt")  # collective: every rank calls it, rank 0 writes


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
