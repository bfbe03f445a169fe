"""Worker of the multi-process tests (tests/infer/test_distributed.py), run by torchrun:

    python -m torch.distributed.run --nproc-per-node 2 tests/infer/dist_worker.py MODE OUT [options]

MODE ``grads``: one backward pass on this rank's half of a fixed batch with fixed weight noise;
rank 0 saves the (averaged) gradients. MODE ``fit``: ``bd.fit`` on toy data; rank 0 saves the
history and the final posterior. MODE ``adversarial``: ``bd.fit`` with an adversarial weight prior
(critics trained after each epoch); every rank saves its critics, lambdas and student (``--config
nosync`` turns the critics' synchronization off, to show that the check can fail). Nothing here is
a test by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bayesdistill as bd  # noqa: E402
from bayesdistill.infer import Batch, SVIEngine  # noqa: E402
from bayesdistill.infer.engine import EpochStats  # noqa: E402
from _helpers import tiny_mlp, toy_classification  # noqa: E402


def build(config: str, n: int = 64):
    """The student, its terms and the data of a configuration (identical on every rank)."""
    x, y = toy_classification(n, seed=3)
    terms = []
    if config == "plain":
        bnn = bd.BNN(tiny_mlp(seed=1), dataset_size=n)
    else:  # a teacher-posterior prior and two function-space terms
        teacher = bd.BNN(tiny_mlp(seed=5), dataset_size=n)
        with torch.no_grad():
            teacher.rho.fill_(-2.0)
        bnn = bd.BNN(tiny_mlp(seed=1), prior=bd.priors.TeacherPosterior(teacher.posterior(), scale="posterior"),
                     dataset_size=n, init="module")
        terms = [bd.distill.KD(teacher, weight=0.5, calibration="temperature"), bd.distill.VID(teacher, {"1": "1"}, weight=0.3)]
    return bnn, terms, x, y


def grads(out: Path, config: str, rank: int, world: int, batch: int = 16) -> None:
    """Saves (rank 0) the averaged gradients and, for contrast, the summed ones."""
    saved = {}
    for reduce in ("mean", "sum"):
        bnn, terms, x, y = build(config)
        engine = SVIEngine(bnn, (x, y), batch_size=batch // world, seed=0, terms=terms).init()
        if reduce == "sum" and engine.group is not None:  # the classic bug: gradients summed (KL counted R times)
            object.__setattr__(engine.group, "all_reduce_mean_", lambda t: torch.distributed.all_reduce(t) or t)
        part = torch.tensor_split(torch.arange(batch), world)[rank]
        torch.manual_seed(0)  # the same weight noise on every rank: comparable with one process
        bnn.register_params = False
        engine.backward(Batch(x[part], y[part]), EpochStats(engine.device))
        saved[reduce] = [p.grad.clone() for p in engine.params]
    if rank == 0:
        torch.save(saved, out)


def fit(out: Path, epochs: int, ckpt: str, resume: bool, stop_at: int) -> None:
    x, y = toy_classification(400, seed=3)
    bnn = bd.BNN(tiny_mlp(seed=1, hidden=16), dataset_size=400)
    callbacks = [lambda r, b: r["epoch"] == stop_at] if stop_at else []
    result = bd.fit(bnn, (x, y), epochs=epochs, batch_size=32, lr=0.02, seed=0, progress=False,
                    checkpoint_dir=ckpt or None, resume=resume, callbacks=callbacks, eval_data=(x, y))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        torch.save({"history": result.history, "loc": bnn.loc.detach(), "rho": bnn.rho.detach()}, out)


def adversarial(out: Path, config: str, rank: int) -> None:
    from torch import nn

    from bayesdistill.distill.adversarial import AdversarialPrior, CriticTraining

    if config == "nosync":
        CriticTraining._sync = lambda self, engine: None
    def cnn(channels: int) -> nn.Module:
        return nn.Sequential(bd.models.Unsqueeze(), nn.Conv1d(1, channels, 3, padding=1), nn.ReLU(),
                             nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(channels * 8, 2))

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    teacher = bd.BNN(cnn(4), dataset_size=64)
    student = bd.BNN(cnn(3), dataset_size=64)
    term = AdversarialPrior(teacher, {"1": "1", "3": "3"}, critic_steps=3, critic_batch=16)
    bd.fit(student, (x, y), epochs=2, batch_size=16, lr=0.01, seed=0, progress=False, distill=[term])
    torch.save({"critics": {k: v.detach().clone() for k, v in term.critics.state_dict().items()},
                "lambdas": list(term.lambdas), "loc": student.loc.detach().clone()}, out.with_suffix(f".{rank}.pt"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["grads", "fit", "adversarial"])
    p.add_argument("out", type=Path)
    p.add_argument("--config", default="plain")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--ckpt", default="")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-at", type=int, default=0)
    a = p.parse_args()
    if a.mode == "grads":
        from bayesdistill.infer import distributed

        group = distributed.current()
        grads(a.out, a.config, group.rank if group else 0, group.world_size if group else 1)
    elif a.mode == "adversarial":
        from bayesdistill.infer import distributed

        group = distributed.current()
        adversarial(a.out, a.config, group.rank if group else 0)
    else:
        fit(a.out, a.epochs, a.ckpt, a.resume, a.stop_at)


if __name__ == "__main__":
    main()
