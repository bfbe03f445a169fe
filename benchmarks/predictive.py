"""Posterior predictive with S samples: one vectorized pass vs S sequential passes.

Usage::

    python benchmarks/predictive.py                      # CPU, S = 32, both networks
    python benchmarks/predictive.py --device cuda
    python benchmarks/predictive.py --threads 1 --profile

On the MNIST-1D test set (1000 examples, length 40) for the ``cnn`` (``bd.models.build("cnn",
(40,), 10)``: three Conv1d with 32 channels + Linear) and the ``mlp`` (``bd.models.build("mlp",
(40,), 10)``: 40-256-256-10) as mean-field BNNs, it times

* ``vectorized``: ``bnn.predict(x, S, vectorize=True)`` (``torch.func.vmap`` over the S weight
  draws: one batched pass), and
* ``sequential``: ``bnn.predict(x, S, vectorize=False)`` (S Python-level passes),

alternately (rounds of ``--calls`` calls each, order rotated per round), and reports the median
and IQR over rounds and the per-round paired ratio sequential/vectorized. Bar: >= 4x on the
1000 test examples. As a diagnostic it repeats the comparison on the first ``--small-batch``
(default 16) test examples, where per-pass overhead rather than arithmetic dominates: the
ratio there shows what vectorization saves when the passes are not compute-bound.

The benchmark also checks that the vectorized call really takes the vmap path (``predict``
silently falls back to sequential passes when an op has no batching rule), that both paths
give the same outputs for the same draws, and with ``--profile`` prints the top operators of
each path (``torch.profiler``) so that a missed bar can be explained.
"""

from __future__ import annotations

import argparse
import sys

import torch

import bayesdistill as bd
from _common import (
    alternate,
    bar_text,
    machine_info,
    paired_ratio,
    resolve_device,
    setup_threads,
    summarize,
    table,
    write_json,
)


def build_bnn(name: str, n_train: int, device: torch.device) -> bd.BNN:
    torch.manual_seed(0)
    net = bd.models.build(name, (40,), 10)
    return bd.BNN(net, prior=bd.priors.Normal(0.0, 1.0), dataset_size=n_train).to(device)


def vmap_path_works(bnn: bd.BNN, x: torch.Tensor, samples: int) -> tuple[bool, str]:
    """Whether ``predict(vectorize=True)`` really runs under vmap (no silent fallback)."""
    bnn.eval()
    try:
        with torch.no_grad():
            w = bnn.sample_weights(samples)
            torch.func.vmap(lambda ws: bnn.forward_with(x, ws))(w)
        return True, ""
    except (RuntimeError, NotImplementedError) as err:
        return False, f"{type(err).__name__}: {err}"
    finally:
        bnn.train()


def same_outputs(bnn: bd.BNN, x: torch.Tensor, samples: int) -> float:
    """Max |vectorized - sequential| for the same weight draws."""
    g1 = torch.Generator(device=x.device).manual_seed(7)
    g2 = torch.Generator(device=x.device).manual_seed(7)
    a = bnn.predict(x, samples, vectorize=True, generator=g1)
    b = bnn.predict(x, samples, vectorize=False, generator=g2)
    return float((a - b).abs().max())


def profile(bnn: bd.BNN, x: torch.Tensor, samples: int, vectorize: bool, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    bnn.predict(x, samples, vectorize=vectorize)
    with tprofile(activities=acts) as prof:
        for _ in range(3):
            bnn.predict(x, samples, vectorize=vectorize)
    key = "self_device_time_total" if x.is_cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--samples", type=int, default=32, help="S, posterior samples (default 32)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=3, help="predict calls per implementation per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--nets", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    p.add_argument("--small-batch", type=int, default=16,
                   help="also time a batch of this many test examples (overhead-bound regime; 0: skip)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of both paths")
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/results/predictive.json)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    setup_threads(args.threads)
    device = resolve_device(args.device)
    info = machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    data = bd.datasets.load("mnist1d")
    x, _ = data.tensors("test")
    x = x.to(device)
    S = args.samples

    results, rows = {}, []
    cases = [(name, len(x)) for name in args.nets]
    if args.small_batch:
        cases += [(name, args.small_batch) for name in args.nets]
    for name, n in cases:
        key = name if n == len(x) else f"{name}@{n}"
        xs = x[:n]
        bnn = build_bnn(name, len(data.train), device)
        vmap_ok, why = vmap_path_works(bnn, xs, S)
        diff = same_outputs(bnn, xs, S)
        print(f"\n== {key}: x {tuple(xs.shape)}, S={S}; vmap path used: {vmap_ok} {why}; "
              f"max |vectorized - sequential| = {diff:.2e}", flush=True)

        def run(vectorize: bool, bnn=bnn, xs=xs):
            def go(k: int) -> None:
                for _ in range(k):
                    bnn.predict(xs, S, vectorize=vectorize)
            return go

        calls = args.calls if n == len(x) else max(args.calls, 20)
        times = alternate({"vectorized": run(True), "sequential": run(False)}, rounds=args.rounds,
                          steps=calls, warmup=args.warmup, device=device, verbose=args.verbose)
        summary = {k: summarize(v) for k, v in times.items()}
        ratio = paired_ratio(times["sequential"], times["vectorized"])
        results[key] = {"examples": n, "times_ms": times, "summary": summary,
                        "ratio_sequential_over_vectorized": ratio, "vmap_path_used": vmap_ok,
                        "vmap_error": why, "max_abs_diff": diff, "bar_ge_4x": ratio["median"] >= 4.0}
        for impl, s in summary.items():
            rows.append([key, impl, f"{s['median']:.2f}", f"{s['iqr']:.2f}", f"{s['min']:.2f}",
                         f"{s['median'] / S:.3f}"])
        if args.profile and n == len(x):
            for vec in (True, False):
                txt = profile(bnn, xs, S, vec)
                print(f"\n-- profile {key} {'vectorized' if vec else 'sequential'} (3 calls)\n{txt}")
                results[key][f"profile_{'vectorized' if vec else 'sequential'}"] = txt

    print()
    print(table(rows, ["net", "impl", "median ms/call", "IQR ms", "min ms", "ms per sample"]))
    print()
    print(table([[n, f"{r['ratio_sequential_over_vectorized']['median']:.2f} "
                     f"(IQR {r['ratio_sequential_over_vectorized']['q25']:.2f}-"
                     f"{r['ratio_sequential_over_vectorized']['q75']:.2f})",
                  r["vmap_path_used"],
                  bar_text(r["bar_ge_4x"]) if r["examples"] == len(x) else "(diagnostic)"]
                 for n, r in results.items()],
                ["net", "sequential/vectorized", "vmap path", "bar >= 4x (1000 examples)"]))
    out = write_json(args.json, "predictive.json", {
        "benchmark": "predictive", "machine": info,
        "config": {"samples": S, "examples": int(len(x)), "rounds": args.rounds, "calls_per_round": args.calls},
        "results": results,
    })
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
