"""Cost at the scale people distill: SVI step and peak memory vs the deterministic model; bd.align time.

Usage::

    python benchmarks/scale.py --threads 1                 # both networks, CPU
    python benchmarks/scale.py --nets resnet18 --rounds 5 --steps 2
    python benchmarks/scale.py --quick                     # small sizes, a smoke run (about a minute)

Networks (random data, 10 classes, Adam lr 1e-3, prior N(0, 1), initial posterior scale 1e-2):

* ``resnet18``: ``bd.models.resnet`` (ResNet-18, CIFAR stem: 3x3 conv, no max-pool; 11.2M
  weights), batch 64 of 32x32 RGB images;
* ``transformer``: ``bd.models.transformer`` with 4 pre-norm layers, width 256, 8 heads, FFN
  1024, sequences of 64 token ids (vocabulary 1000), batch 64 (3.4M weights);
* ``torch-transformer``: the same sizes with torch's ``nn.TransformerEncoder`` (post-norm,
  packed ``nn.MultiheadAttention``) between an Embedding and a Linear read-out.

Implementations:

* ``det``: the deterministic network, ``cross_entropy`` + backward + ``torch.optim.Adam`` step;
* ``ours``: the training engine's own SVI step (``_common.FitStep`` = ``SVIEngine.step``, what
  ``bd.fit`` runs per batch; no local reparameterization, ``bd.fit``'s default).

Time: ``--rounds`` rounds, each running ``--steps`` steps of every implementation in an order
rotated from round to round; the ratio ours/det is taken per round (``_common.alternate``).
Peak memory: each implementation runs ``--memory-steps`` steps in a fresh child process (the
same command with ``--child``); reported is the child's peak resident set size (``VmHWM``,
reset just before the network is built) minus its resident size at that moment: what the
network, its optimizer state and the steps added; and the ratio ours/det (Linux only).

Alignment: ``bd.align`` of the teacher onto a student with half the blocks (ResNet-18 -> ResNet-10
with widths 32-64-128-256; 4 -> 2 Transformer layers with 4 heads and FFN 512), timed once per
setting: ``snr`` without probe data, and ``data`` with ``--probe`` (128) probe inputs, each
group narrowed in one round (``step=1.0``) and compensation (the default with probe data);
``--no-align`` skips it. The progress bar shows its steps.

Targets (issue 13): ours <= 1.5x det step time and <= 2.5x det peak memory on CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
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
    setup_threads,
    summarize,
    table,
    write_json,
)

B, CLASSES, SEQ, VOCAB = 64, 10, 64, 1000


class TorchEncoder(nn.Module):
    """Embedding -> nn.TransformerEncoder -> mean over positions -> Linear."""

    def __init__(self, width: int, heads: int, ffn: int, layers: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, x):
        return self.fc(self.enc(self.emb(x)).mean(1))


def networks(quick: bool) -> dict[str, dict]:
    """name -> builder of (teacher net, student net, inputs factory)."""
    w = (16, 32, 64, 128) if quick else (64, 128, 256, 512)
    d, heads, ffn = (64, 4, 256) if quick else (256, 8, 1024)
    return {
        "resnet18": dict(
            net=lambda: bd.models.resnet(CLASSES, widths=w),
            student=lambda: bd.models.resnet(CLASSES, blocks=(1, 1, 1, 1), widths=tuple(c // 2 for c in w)),
            inputs=lambda g, n: torch.randn(n, 3, 32, 32, generator=g)),
        "transformer": dict(
            net=lambda: bd.models.transformer(CLASSES, SEQ, vocab_size=VOCAB, d_model=d, num_heads=heads, ffn_dim=ffn,
                                              num_layers=4),
            student=lambda: bd.models.transformer(CLASSES, SEQ, vocab_size=VOCAB, d_model=d, num_heads=heads // 2,
                                                  head_dim=d // heads, ffn_dim=ffn // 2, num_layers=2),
            inputs=lambda g, n: torch.randint(0, VOCAB, (n, SEQ), generator=g)),
        "torch-transformer": dict(
            net=lambda: TorchEncoder(d, heads, ffn, 4), student=None,
            inputs=lambda g, n: torch.randint(0, VOCAB, (n, SEQ), generator=g)),
    }


def data(spec: dict, n: int = 2 * B):
    g = torch.Generator().manual_seed(0)
    return spec["inputs"](g, n), torch.randint(0, CLASSES, (n,), generator=g)


def make_det(net: nn.Module):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()

    def step(batch) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(batch.x), batch.y).backward()
        opt.step()

    return step


def make_ours(net: nn.Module, x, y):
    bnn = bd.BNN(net, dataset_size=len(x))
    return FitStep(bnn, (x, y), lr=1e-3)


# ---------------------------------------------------------------------------------- memory
def child(name: str, impl: str, steps: int, quick: bool) -> None:
    """Run ``steps`` steps of one implementation; print the peak RSS growth (MiB) as JSON."""
    spec = networks(quick)[name]
    x, y = data(spec)
    batches = fixed_batches(x, y, B, torch.device("cpu"))
    base = _status_mib("VmRSS")
    _reset_peak()
    torch.manual_seed(0)
    if impl == "det":
        step = make_det(spec["net"]())
        for i in range(steps):
            step(batches[i % len(batches)])
    else:
        fs = make_ours(spec["net"](), x, y)
        with fs.running():
            for i in range(steps):
                fs(batches[i % len(batches)])
    peak = _status_mib("VmHWM")
    print(json.dumps({"base_mib": base, "peak_mib": peak, "growth_mib": peak - base}))


def _status_mib(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status, MiB (Linux).

    Not ``ru_maxrss``: on Linux a child's ru_maxrss includes the parent's resident size at the
    fork that started it."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {key}: peak memory needs Linux")


def _reset_peak() -> None:
    """Reset the peak (VmHWM) to the current resident size (Linux >= 4.0), so the peak is the steps'."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def memory(name: str, args) -> dict:
    out = {}
    for impl in ("det", "ours"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, impl, "--memory-steps",
               str(args.memory_steps)] + (["--threads", str(args.threads)] if args.threads else []) + (
            ["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ratio"] = out["ours"]["growth_mib"] / out["det"]["growth_mib"]
    return out


# ---------------------------------------------------------------------------------- time
def timing(name: str, args) -> dict:
    spec = networks(args.quick)[name]
    x, y = data(spec)
    batches = fixed_batches(x, y, B, torch.device("cpu"))
    torch.manual_seed(0)
    det = make_det(spec["net"]())
    fs = make_ours(spec["net"](), x, y)
    cyc = {"det": Cycle(batches), "ours": Cycle(batches)}

    def run_det(k: int) -> None:
        for _ in range(k):
            det(cyc["det"]())

    def run_ours(k: int) -> None:
        with fs.running():
            for _ in range(k):
                fs(cyc["ours"]())

    times = alternate({"det": run_det, "ours": run_ours}, rounds=args.rounds, steps=args.steps, warmup=args.warmup,
                      device=torch.device("cpu"), verbose=args.verbose)
    return {"ms": {k: summarize(v) for k, v in times.items()}, "ratio": paired_ratio(times["ours"], times["det"]),
            "weights": sum(p.numel() for p in spec["net"]().parameters())}


def align_time(name: str, args) -> dict:
    spec = networks(args.quick)[name]
    if spec["student"] is None:
        return {}
    torch.manual_seed(0)
    teacher = bd.BNN(spec["net"](), dataset_size=50000)
    g = torch.Generator().manual_seed(1)
    probe = spec["inputs"](g, args.probe)
    out = {}
    settings = (("snr", dict(example=probe[:2])),
                ("data+compensation", dict(probe=probe, criterion="data", step=1.0)))
    for label, kw in settings:
        t0 = time.perf_counter()
        plan = bd.align(teacher, spec["student"](), progress=True, **kw)
        out[label] = {"seconds": time.perf_counter() - t0, "output_error": plan.output_error,
                      "edits": len(plan.edits)}
        print(f"  bd.align {name} ({label}): {out[label]['seconds']:.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=["resnet18", "transformer", "torch-transformer"],
                   choices=["resnet18", "transformer", "torch-transformer"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--steps", type=int, default=3, help="steps per implementation per round (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per implementation (default 2)")
    p.add_argument("--memory-steps", type=int, default=3, help="steps of each memory child (default 3)")
    p.add_argument("--no-align", dest="align", action="store_false", help="skip the bd.align timings")
    p.add_argument("--align-only", action="store_true", help="only the bd.align timings")
    p.add_argument("--probe", type=int, default=128, help="probe inputs of the data-driven alignment (default 128)")
    p.add_argument("--quick", action="store_true", help="small widths (a smoke run)")
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/results/scale.json)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("NET", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_threads(args.threads)
    if args.child:
        child(args.child[0], args.child[1], args.memory_steps, args.quick)
        return 0
    info = machine_info(torch.device("cpu"))
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    results = {}
    for name in args.nets:
        print(f"\n== {name}: {args.rounds} rounds x {args.steps} steps, batch {B}", flush=True)
        results[name] = {} if args.align_only else {"time": timing(name, args), "memory": memory(name, args)}
        if args.align or args.align_only:
            results[name]["align"] = align_time(name, args)
    report(results, args, info)
    return 0


def report(results: dict, args, info: dict) -> None:
    rows = []
    for name, r in results.items():
        if "time" not in r:
            continue
        t, m = r["time"], r["memory"]
        rows.append([name, f"{t['weights'] / 1e6:.1f}M", f"{t['ms']['det']['median']:.0f}", f"{t['ms']['ours']['median']:.0f}",
                     f"{t['ratio']['median']:.2f} (IQR {t['ratio']['q25']:.2f}-{t['ratio']['q75']:.2f})",
                     f"{m['det']['growth_mib']:.0f}", f"{m['ours']['growth_mib']:.0f}", f"{m['ratio']:.2f}",
                     bar_text(t["ratio"]["median"] <= 1.5), bar_text(m["ratio"] <= 2.5)])
    if rows:
        print()
        print(table(rows, ["net", "weights", "det ms/step", "ours ms/step", "ours/det time", "det MiB", "ours MiB",
                           "ours/det memory", "time <= 1.5x", "memory <= 2.5x"]))
    align_rows = [[name, label, f"{a['seconds']:.1f}", f"{a['output_error']:.3g}" if a["output_error"] is not None else "-"]
                  for name, r in results.items() for label, a in r.get("align", {}).items()]
    if align_rows:
        print()
        print(table(align_rows, ["net", "bd.align setting", "seconds", "output error"]))
    out = write_json(args.json, "scale.json", {"benchmark": "scale", "machine": info, "settings": vars(args),
                                                "results": results})
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    sys.exit(main())
