"""Cost of one SVI step: bayesdistill vs hand-written PyTorch Bayes-by-backprop vs naive Pyro.

Usage::

    python benchmarks/svi_overhead.py                       # CPU, torch's default threads
    python benchmarks/svi_overhead.py --device cuda         # on a GPU
    python benchmarks/svi_overhead.py --threads 1 --rounds 31 --steps 25 --json out.json

Networks (batch 128, data set size N = 4000, 10 classes, random data):

* ``mlp``: ``bd.models.mlp(40, 10, (256, 256))`` (Linear 40-256-256-10, ReLU);
* ``cnn``: ``bd.models.cnn1d(40, 10, channels=32)`` on ``[B, 40]`` inputs (three Conv1d + Linear).

Implementations (same network shapes, same data, same batch sequence, prior N(0, 1),
initial posterior scale 1e-2, Adam lr 1e-3):

* ``ours``: :class:`_common.FitStep`, i.e. the training engine's own step
  (``SVIEngine.step``: ``MeanFieldELBO.differentiable_loss(bnn.model, bnn.guide, x, y)``, backward,
  ``torch.optim.Adam`` step, finiteness check and on-device accumulation of the epoch's loss, NLL
  and KL); checked bit-identical against ``bd.fit`` before timing (``--no-verify`` skips the check).
* ``ours+lrt``: the same with ``bd.local_reparameterization()`` (``fit(..., local_reparam=True)``).
* ``plain``: hand-written PyTorch Bayes-by-backprop: per-layer ``mu``/``rho`` parameters,
  ``w = mu + softplus(rho) * eps``, closed-form KL to N(0, 1), ``F.linear``/``F.conv1d``,
  ``cross_entropy * N`` (= summed CE scaled by N/B), ``torch.optim.Adam``.
* ``naive``: ``PyroModule`` with ``PyroSample(Normal(0, 1).expand(shape).to_event(k))`` on
  every parameter, ``AutoNormal``, ``Trace_ELBO``, ``pyro.optim.Adam``, ``pyro.infer.SVI``,
  with Pyro's default settings (validation on).
* ``naive-noval``: the same with ``pyro.validation_enabled(False)`` (how much of the gap is
  validation); omit with ``--no-naive-noval``.

Timing: ``--rounds`` rounds; in each round every implementation runs ``--steps`` steps, in an
order rotated from round to round; the time of a round / steps is one sample. Reported: the
median and IQR over rounds (ms per step) and the per-round paired ratios ours/plain and
naive/ours. Data batches are prepared once on the device and cycled (no data loading timed).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from functools import partial

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroSample
from torch import nn

import bayesdistill as bd
from _common import (
    Cycle,
    FitStep,
    alternate,
    bar_text,
    fixed_batches,
    machine_info,
    paired_ratio,
    resolve_device,
    setup_threads,
    summarize,
    table,
    verify_fit_step,
    write_json,
)

N, D, C, B = 4000, 40, 10, 128
INIT_SCALE = 1e-2
LR = 1e-3
NETS = {
    "mlp": lambda: bd.models.mlp(D, C, (256, 256)),
    "cnn": lambda: bd.models.cnn1d(D, C, channels=32),
}


# ---------------------------------------------------------------------------------- plain BBB
def _softplus_inv(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class BayesLayer(nn.Module):
    """Bayes-by-backprop version of one ``nn.Linear`` / ``nn.Conv1d`` (weights and bias).

    ``forward`` samples ``w = mu + softplus(rho) * eps`` and returns the layer output and the
    closed-form KL(N(mu, sigma^2) || N(0, 1)) of its weights and bias.
    """

    def __init__(self, layer: nn.Module, init_scale: float = INIT_SCALE):
        super().__init__()
        rho0 = _softplus_inv(init_scale)
        self.w_mu = nn.Parameter(layer.weight.detach().clone())
        self.w_rho = nn.Parameter(torch.full_like(layer.weight, rho0))
        self.b_mu = nn.Parameter(layer.bias.detach().clone())
        self.b_rho = nn.Parameter(torch.full_like(layer.bias, rho0))
        if isinstance(layer, nn.Linear):
            self.op = F.linear
        elif isinstance(layer, nn.Conv1d):
            self.op = partial(F.conv1d, stride=layer.stride, padding=layer.padding,
                              dilation=layer.dilation, groups=layer.groups)
        else:
            raise TypeError(type(layer).__name__)

    @staticmethod
    def _sample_kl(mu: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = F.softplus(rho)
        w = mu + sigma * torch.randn_like(sigma)
        kl = 0.5 * (sigma.square() + mu.square() - 1.0).sum() - sigma.log().sum()
        return w, kl

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, kl_w = self._sample_kl(self.w_mu, self.w_rho)
        b, kl_b = self._sample_kl(self.b_mu, self.b_rho)
        return self.op(x, w, b), kl_w + kl_b


class PlainBBB(nn.Module):
    """A ``nn.Sequential`` with every Linear/Conv1d replaced by a :class:`BayesLayer`."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.layers = nn.ModuleList(
            BayesLayer(m) if isinstance(m, (nn.Linear, nn.Conv1d)) else copy.deepcopy(m) for m in net
        )
        self.bayes = [isinstance(m, BayesLayer) for m in self.layers]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl = 0.0
        for layer, bayes in zip(self.layers, self.bayes):
            if bayes:
                x, k = layer(x)
                kl = kl + k
            else:
                x = layer(x)
        return x, kl


def make_plain(net: nn.Sequential, device: torch.device):
    model = PlainBBB(net).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, kl = model(x)
        loss = F.cross_entropy(logits, y) * N + kl  # mean CE * N = summed CE * N / B
        loss.backward()
        optimizer.step()

    return step


# ---------------------------------------------------------------------------------- naive Pyro
def make_naive(net: nn.Module, device: torch.device):
    pnet = copy.deepcopy(net).to(device)
    pyro.nn.module.to_pyro_module_(pnet)
    for m in list(pnet.modules()):
        for name, p in list(m.named_parameters(recurse=False)):
            prior = dist.Normal(torch.tensor(0.0, device=device), torch.tensor(1.0, device=device))
            setattr(m, name, PyroSample(prior.expand(p.shape).to_event(p.dim())))
    subsample = torch.arange(B, device=device)

    def model(x, y=None):
        logits = pnet(x)
        with pyro.plate("data", size=N, subsample=subsample):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        svi.step(x, y)

    return step


# ---------------------------------------------------------------------------------- ours
def make_ours(net: nn.Module, device: torch.device, local_reparam: bool, data):
    bnn = bd.BNN(net, prior=bd.priors.Normal(0.0, 1.0), likelihood=bd.likelihoods.Categorical(),
                 dataset_size=N, init_scale=INIT_SCALE).to(device)
    fit_step = FitStep(bnn, data, lr=LR, local_reparam=local_reparam)
    return fit_step, fit_step.running


# ---------------------------------------------------------------------------------- main
def runner(step, next_batch, unpack: bool = True):
    def run(k: int) -> None:
        for _ in range(k):
            batch = next_batch()
            step(batch) if not unpack else step(batch.x, batch.y)

    return run


def bench_net(name: str, args, device: torch.device, data) -> dict:
    x, y = data
    batches = fixed_batches(x, y, B, device)
    torch.manual_seed(0)
    net = NETS[name]()
    pyro.clear_param_store()
    default_validation = pyro.infer.util.is_validation_enabled()

    ours, ours_ctx = make_ours(net, device, local_reparam=False, data=data)
    lrt, lrt_ctx = make_ours(net, device, local_reparam=True, data=data)
    naive = make_naive(net, device)
    runners = {
        "ours": runner(ours, Cycle(batches), unpack=False),
        "ours+lrt": runner(lrt, Cycle(batches), unpack=False),
        "plain": runner(make_plain(net, device), Cycle(batches)),
        "naive": runner(naive, Cycle(batches)),
    }
    contexts = {
        "ours": ours_ctx,
        "ours+lrt": lrt_ctx,
        "naive": lambda: pyro.validation_enabled(default_validation),
    }
    if args.naive_noval:
        # the same SVI object (AutoNormal keeps its parameters in the global param store, so a
        # second guide would share them anyway), stepped with validation off
        runners["naive-noval"] = runner(naive, Cycle(batches))
        contexts["naive-noval"] = lambda: pyro.validation_enabled(False)
    times = alternate(runners, rounds=args.rounds, steps=args.steps, warmup=args.warmup, device=device,
                      contexts=contexts, verbose=args.verbose)
    summary = {k: summarize(v) for k, v in times.items()}
    ratios = {
        "ours/plain": paired_ratio(times["ours"], times["plain"]),
        "ours+lrt/plain": paired_ratio(times["ours+lrt"], times["plain"]),
        "naive/ours": paired_ratio(times["naive"], times["ours"]),
    }
    if "naive-noval" in times:
        ratios["naive-noval/ours"] = paired_ratio(times["naive-noval"], times["ours"])
    return {"times_ms": times, "summary": summary, "ratios": ratios,
            "num_weights": int(ours.bnn.num_weights), "num_sites": len(ours.bnn.site_names)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=21, help="alternating rounds (default 21)")
    p.add_argument("--steps", type=int, default=20, help="SVI steps per implementation per round (default 20)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up steps per implementation (default 20)")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--no-naive-noval", dest="naive_noval", action="store_false",
                   help="skip the naive-Pyro variant with validation off")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the check that the timed step reproduces bd.fit bit for bit")
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/results/svi_overhead.json)")
    p.add_argument("--verbose", action="store_true", help="print every round")
    args = p.parse_args(argv)

    setup_threads(args.threads)
    device = resolve_device(args.device)
    info = machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, C, (N,), generator=g)

    verified = {}
    if args.verify:
        for name in args.nets:
            for lrt in (False, True):
                key = f"{name}{'+lrt' if lrt else ''}"
                verified[key] = verify_fit_step(NETS[name], x, y, device=device, local_reparam=lrt)
                print(f"fit-step mirror {key}: {'bit-identical to bd.fit' if verified[key] else 'DIFFERS from bd.fit'}",
                      flush=True)

    results = {}
    for name in args.nets:
        print(f"\n== {name}: {args.rounds} rounds x {args.steps} steps, batch {B}, N={N}", flush=True)
        results[name] = bench_net(name, args, device, (x, y))

    rows, ratio_rows = [], []
    for name, res in results.items():
        for impl, s in res["summary"].items():
            rows.append([name, impl, f"{s['median']:.3f}", f"{s['iqr']:.3f}", f"{s['min']:.3f}"])
        r = res["ratios"]
        op, no = r["ours/plain"], r["naive/ours"]
        ratio_rows.append([
            name,
            f"{op['median']:.2f} (IQR {op['q25']:.2f}-{op['q75']:.2f})",
            f"{r['ours+lrt/plain']['median']:.2f}",
            f"{no['median']:.2f} (IQR {no['q25']:.2f}-{no['q75']:.2f})",
            f"{r['naive-noval/ours']['median']:.2f}" if "naive-noval/ours" in r else "-",
            bar_text(op["median"] <= 1.25),
            bar_text(no["median"] >= 2.0),
        ])
    print()
    print(table(rows, ["net", "impl", "median ms/step", "IQR ms", "min ms"]))
    print()
    print(table(ratio_rows, ["net", "ours/plain", "ours+lrt/plain", "naive/ours", "naive-noval/ours",
                             "bar ours<=1.25x plain", "bar naive>=2x ours"]))
    out = write_json(args.json, "svi_overhead.json", {
        "benchmark": "svi_overhead",
        "machine": info,
        "config": {"batch_size": B, "dataset_size": N, "input_dim": D, "classes": C, "rounds": args.rounds,
                   "steps_per_round": args.steps, "warmup": args.warmup, "lr": LR, "init_scale": INIT_SCALE},
        "fit_step_verified": verified,
        "results": results,
        "bars": {name: {"ours_le_1.25x_plain": res["ratios"]["ours/plain"]["median"] <= 1.25,
                        "naive_ge_2x_ours": res["ratios"]["naive/ours"]["median"] >= 2.0}
                 for name, res in results.items()},
    })
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
