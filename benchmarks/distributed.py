"""Throughput of data-parallel SVI: 1 process vs 2 processes (torch.distributed, gloo), and the
cost of the one all-reduce per step, from which multi-GPU / multi-node speedups can be estimated.

Usage::

    python benchmarks/distributed.py                 # MLP 40-1024-1024-10, batch 128 per process
    python benchmarks/distributed.py --hidden 2048 --steps 40 --json out.json

What runs (each configuration in its own launch, alternated over ``--rounds`` rounds):

* ``1p x 1t``: one process, one thread: ``SVIEngine.step`` on batches of B;
* ``1p x 2t``: one process, two threads (torch's intra-op parallelism uses both cores);
* ``2p x 1t``: ``torchrun --nproc-per-node 2``, one thread each, batches of B per process (a
  global batch of 2B): the engine's step with its all-reduce of the flattened gradient.

Reported per configuration: ms per step and examples per second (global), and for two processes
the time of the all-reduce alone (``2 x weights x 4`` bytes: the gradients of loc and rho) and its
share of the step. The scaling model: with compute time ``c(B)`` per step of B examples on one
worker and all-reduce time ``a(W, R)``, R data-parallel workers process ``R B`` examples in
``c(B) + a``, a speedup of ``R c(B) / (c(B) + a)`` over one worker; for a ring all-reduce
``a ~ 2 (R - 1) / R x bytes / bandwidth + latency``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    """Runs inside each launched process: times steps, writes JSON (rank 0)."""
    import torch

    torch.set_num_threads(args.threads)
    import bayesdistill as bd
    from bayesdistill.infer import Batch, SVIEngine
    from bayesdistill.infer.engine import EpochStats

    torch.manual_seed(0)
    n = 4096
    x, y = torch.randn(n, 40), torch.randint(0, 10, (n,))
    bnn = bd.BNN(bd.models.mlp(40, 10, (args.hidden, args.hidden)), dataset_size=n)
    engine = SVIEngine(bnn, (x, y), batch_size=args.batch, seed=0).init()
    group = engine.group
    rank, world = (group.rank, group.world_size) if group else (0, 1)
    bnn.register_params = False
    stats = EpochStats(engine.device)
    g = torch.Generator().manual_seed(rank)
    batches = [Batch(x[idx], y[idx]) for idx in (torch.randint(0, n, (args.batch,), generator=g)
                                                 for _ in range(8))]
    for i in range(args.warmup):
        engine.step(batches[i % 8], stats)
    if group:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    for i in range(args.steps):
        engine.step(batches[i % 8], stats)
    if group:
        torch.distributed.barrier()
    step_ms = (time.perf_counter() - t0) / args.steps * 1e3
    comm_ms = None
    if group:  # the all-reduce alone, on a tensor of the flattened gradient's size
        flat = torch.zeros(sum(p.numel() for p in engine.params) + 1)
        for _ in range(3):
            torch.distributed.all_reduce(flat)
        torch.distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            torch.distributed.all_reduce(flat)
        comm_ms = (time.perf_counter() - t0) / args.steps * 1e3
    if rank == 0:
        Path(args.out).write_text(json.dumps({
            "world_size": world, "threads": args.threads, "step_ms": step_ms, "allreduce_ms": comm_ms,
            "examples_per_s": world * args.batch / step_ms * 1e3, "num_weights": bnn.num_weights,
            "allreduce_bytes": 4 * (sum(p.numel() for p in engine.params) + 1),
        }))


def launch(nproc: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(HERE / "distributed.py"), "--worker", "--threads", str(threads), "--hidden", str(args.hidden),
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", *cmd]
    else:
        cmd = [sys.executable, *cmd]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "distributed_run.json"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=1024, help="hidden width of the MLP 40-H-H-10")
    p.add_argument("--batch", type=int, default=128, help="examples per step per process")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=str(HERE / "results" / "distributed.json"))
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    tmp = HERE / "results" / "distributed_run.json"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    configs = {"1p x 1t": (1, 1), "1p x 2t": (1, 2), "2p x 1t": (2, 1)}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.rounds):
        order = list(configs)[r % 3:] + list(configs)[: r % 3]
        for name in order:
            runs[name].append(launch(*configs[name], args, tmp))
    rows = {}
    for name, rs in runs.items():
        rows[name] = {
            "step_ms": statistics.median(x["step_ms"] for x in rs),
            "examples_per_s": statistics.median(x["examples_per_s"] for x in rs),
            "allreduce_ms": statistics.median(x["allreduce_ms"] for x in rs) if rs[0]["allreduce_ms"] else None,
        }
    first = runs["2p x 1t"][0]
    base = rows["1p x 1t"]["examples_per_s"]
    print(f"MLP 40-{args.hidden}-{args.hidden}-10 ({first['num_weights']} Bayesian weights), batch {args.batch} per "
          f"process, all-reduce of {first['allreduce_bytes'] / 1e6:.2f} MB per step; medians of {args.rounds} rounds "
          f"of {args.steps} steps\n")
    print("| configuration | ms per step | examples / s | speedup vs 1p x 1t | all-reduce ms (share of step) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        comm = (f"{row['allreduce_ms']:.2f} ({row['allreduce_ms'] / row['step_ms']:.0%})"
                if row["allreduce_ms"] is not None else "-")
        print(f"| {name} | {row['step_ms']:.2f} | {row['examples_per_s']:.0f} | "
              f"{row['examples_per_s'] / base:.2f}x | {comm} |")
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
