"""Predictive quality of Bayesian networks trained with ``bd.fit``, over several seeds.

Usage::

    python benchmarks/quality.py                              # both tasks, seeds 0 1 2
    python benchmarks/quality.py --tasks cnn --epochs 100 --lr 3e-3 --seeds 0 1 2
    python benchmarks/quality.py --device cuda

Tasks:

* ``cnn``: a mean-field Bayesian CNN teacher (``bd.models.build("cnn", (40,), 10)``, prior
  ``bd.priors.Normal(scale=1.0)``, dataset_size = 4000) on MNIST-1D (4000 train / 1000 test),
  ``bd.fit(epochs=100, lr=3e-3, lr_schedule="cosine", batch_size=128)``. Bars: test accuracy
  >= 90% and ECE <= 0.05.
* ``mlp``: a mean-field Bayesian MLP (``bd.models.build("mlp", (64,), 10)``: 64-256-256-10,
  same prior) on scikit-learn's digits (1437 train / 360 test), same fit settings by default. Bar:
  test accuracy >= 95%.

Metrics come from ``bd.evaluate(bnn, test, num_samples=32)`` (posterior predictive with 32
samples; NLL in nats per example; ECE with 15 bins). Reported per seed, and mean/std/min over
seeds; a bar counts as met when every seed meets it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import bayesdistill as bd
from _common import bar_text, machine_info, resolve_device, setup_threads, table, write_json

TASKS = {
    "cnn": {"dataset": "mnist1d", "model": ("cnn", {}), "bars": {"accuracy": (">=", 0.90), "ece": ("<=", 0.05)}},
    "mlp": {"dataset": "digits", "model": ("mlp", {}), "bars": {"accuracy": (">=", 0.95)}},
}


def run_one(task: str, seed: int, *, epochs: int, lr: float, batch_size: int, samples: int,
            device: torch.device, kl_weight: float = 1.0) -> dict:
    spec = TASKS[task]
    data = bd.datasets.load(spec["dataset"])
    name, kw = spec["model"]
    torch.manual_seed(seed)
    net = bd.models.build(name, data.input_shape, data.num_classes, **kw)
    bnn = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), likelihood=bd.likelihoods.Categorical(),
                 dataset_size=len(data.train))
    t0 = time.perf_counter()
    result = bd.fit(bnn, data.train, epochs=epochs, lr=lr, lr_schedule="cosine", batch_size=batch_size,
                    seed=seed, device=device, progress=False, kl_weight=kl_weight)
    fit_s = time.perf_counter() - t0
    scores = bd.evaluate(bnn, data.test, num_samples=samples, seed=seed)
    last = result.history[-1] if result.history else {}
    return {
        "seed": seed,
        "accuracy": scores["accuracy"],
        "nll": scores["nll"],
        "ece": scores["ece"],
        "brier": scores.get("brier"),
        "fit_seconds": fit_s,
        "final_elbo": last.get("elbo"),
        "final_kl": last.get("kl"),
        "num_weights": bnn.num_weights,
    }


def aggregate(runs: list[dict], key: str) -> dict[str, float]:
    vals = [r[key] for r in runs]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=32, help="posterior samples for evaluation")
    p.add_argument("--kl-weight", type=float, default=1.0,
                   help="fit's kl_weight (1.0 = the ELBO; < 1 a tempered posterior); the bars assume 1.0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/results/quality.json)")
    args = p.parse_args(argv)

    setup_threads(args.threads)
    device = resolve_device(args.device)
    info = machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    results, rows, bar_rows = {}, [], []
    for task in args.tasks:
        runs = []
        for seed in args.seeds:
            r = run_one(task, seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        samples=args.samples, device=device, kl_weight=args.kl_weight)
            runs.append(r)
            print(f"{task} seed {seed}: acc {r['accuracy']:.4f} nll {r['nll']:.4f} ece {r['ece']:.4f} "
                  f"({r['fit_seconds']:.1f} s fit)", flush=True)
            rows.append([task, seed, f"{r['accuracy']:.4f}", f"{r['nll']:.4f}", f"{r['ece']:.4f}",
                         f"{r['fit_seconds']:.1f}"])
        agg = {k: aggregate(runs, k) for k in ("accuracy", "nll", "ece", "fit_seconds")}
        rows.append([task, "mean+-std", *(f"{agg[k]['mean']:.4f}+-{agg[k]['std']:.4f}" for k in ("accuracy", "nll", "ece")),
                     f"{agg['fit_seconds']['mean']:.1f}"])
        bars = {}
        for metric, (op, thr) in TASKS[task]["bars"].items():
            ok = all((r[metric] >= thr) if op == ">=" else (r[metric] <= thr) for r in runs)
            bars[f"{metric} {op} {thr}"] = ok
            worst = agg[metric]["min"] if op == ">=" else agg[metric]["max"]
            bar_rows.append([task, f"{metric} {op} {thr}", f"{worst:.4f}", bar_text(ok)])
        results[task] = {"runs": runs, "aggregate": agg, "bars": bars,
                         "dataset": TASKS[task]["dataset"], "model": TASKS[task]["model"][0],
                         "model_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in TASKS[task]["model"][1].items()}}

    print()
    print(table(rows, ["task", "seed", "accuracy", "NLL", "ECE", "fit s"]))
    print()
    print(table(bar_rows, ["task", "bar (every seed)", "worst seed", "status"]))
    out = write_json(args.json, "quality.json", {
        "benchmark": "quality", "machine": info,
        "config": {"epochs": args.epochs, "lr": args.lr, "lr_schedule": "cosine", "batch_size": args.batch_size,
                   "seeds": args.seeds, "eval_samples": args.samples, "prior": "Normal(0, 1)",
                   "kl_weight": args.kl_weight},
        "results": results,
    })
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
