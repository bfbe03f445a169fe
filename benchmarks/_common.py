"""Shared helpers of the benchmarks: the fit step, alternating timing, tables, JSON.

Nothing here is part of the library. The one piece that matters for correctness is
:class:`FitStep`: it calls the training engine's own step (``SVIEngine.step``, what
:func:`bayesdistill.fit` runs per batch, with the state ``fit`` holds around the loop).
:func:`verify_fit_step` checks that training with ``FitStep`` on ``fit``'s batches gives
bit-identical variational parameters to ``bd.fit``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Optional

import pyro
import torch

import bayesdistill as bd
from bayesdistill.infer import Batch, Batches, SVIEngine
from bayesdistill.infer.engine import EpochStats

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------- machine
def setup_threads(threads: Optional[int]) -> None:
    if threads is not None:
        torch.set_num_threads(int(threads))


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} was requested but CUDA is not available on this machine")
    return device


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "bayesdistill": bd.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    info["git"] = _git_state()
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    try:
        load = os.getloadavg()
        info["loadavg_at_start"] = [round(v, 2) for v in load]
    except OSError:
        pass
    return info


def _git_state() -> str:
    """``<commit>[+dirty]`` of the repository the benchmarks run from, or ``"unknown"``."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """``tight_layout``, write ``fig`` atomically (``bd.plots.save``, which creates the folder),
    close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = bd.plots.save(fig, path, dpi=dpi)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------- fit step
class FitStep:
    """The training engine's own SVI step (:meth:`bayesdistill.infer.SVIEngine.step`), the step
    ``bd.fit`` runs: the benchmark times the library's code, not a copy of it.

    Use as ``with step.running(): step(batch)``; ``running`` sets the state the engine holds for
    the whole training loop (validation off, no param-store registration, train mode).
    """

    def __init__(self, bnn: bd.BNN, data: tuple[torch.Tensor, torch.Tensor], *, lr: float = 1e-3,
                 local_reparam: bool = False, num_particles: int = 1, weight_decay: float = 0.0):
        self.bnn = bnn
        self.engine = SVIEngine(bnn, data, lr=lr, local_reparam=local_reparam, num_particles=num_particles,
                                weight_decay=weight_decay, seed=0).init()
        self.stats = EpochStats(bnn.loc.device)

    @contextmanager
    def running(self):
        bnn = self.bnn
        saved_register, was_training = bnn.register_params, bnn.training
        bnn.register_params = False
        bnn.train()
        try:
            with pyro.validation_enabled(False):
                yield self
        finally:
            bnn.register_params = saved_register
            bnn.train(was_training)

    def __call__(self, batch: Batch) -> None:
        self.engine.step(batch, self.stats)
        if self.engine.check_each_step and int(self.stats.first_bad) >= 0:
            raise FloatingPointError(f"non-finite ELBO at step {self.stats.steps}")


def verify_fit_step(make_net: Callable[[], torch.nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                    device: torch.device, local_reparam: bool = False, epochs: int = 1,
                    batch_size: int = 128) -> bool:
    """``FitStep`` on ``fit``'s own batches reproduces ``bd.fit`` bit for bit (True) or not:
    the timed step is what training runs, with nothing around it that ``fit`` adds.

    On CUDA, cuDNN picks convolution algorithms by benchmark and some of their backward
    kernels accumulate with atomics, so two identical runs can differ in the last bits; the
    check therefore runs with deterministic cuDNN algorithms (the timed steps do not).
    """
    if device.type == "cuda":
        flags = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True)
    else:
        flags = nullcontext()
    with flags:
        return _verify_fit_step(make_net, x, y, device=device, local_reparam=local_reparam, epochs=epochs,
                                batch_size=batch_size)


def _verify_fit_step(make_net, x, y, *, device, local_reparam, epochs, batch_size) -> bool:
    torch.manual_seed(123)
    net = make_net()
    n = len(x)
    a = bd.BNN(net, dataset_size=n).to(device)
    b = bd.BNN(net, dataset_size=n).to(device)  # BNN deep-copies net: same initial state
    bd.fit(a, (x, y), epochs=epochs, batch_size=batch_size, lr=1e-3, seed=0, progress=False,
           local_reparam=local_reparam, device=device)
    step = FitStep(b, (x, y), lr=1e-3, local_reparam=local_reparam)  # seeds as fit does (seed=0)
    batches = Batches((x, y), batch_size, device, 0)
    with step.running():
        for epoch in range(1, epochs + 1):
            for batch in batches.epoch(epoch):
                step(batch)
    return bool(torch.equal(a.loc, b.loc) and torch.equal(a.rho, b.rho))


def fixed_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full mini-batches in ``fit``'s order (``Batches.epoch(1)``), on the device, made once."""
    batches = [b for b in Batches((x, y), batch_size, device, seed).epoch(1) if len(b) == batch_size]
    return [Batch(b.x.contiguous(), b.y.contiguous()) for b in batches]


class Cycle:
    """Endless iterator over a list (each implementation gets its own cursor)."""

    def __init__(self, items: Sequence):
        self.items, self.i = items, 0

    def __call__(self):
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


# ---------------------------------------------------------------------------------- timing
def alternate(
    runners: dict[str, Callable[[int], None]],
    *,
    rounds: int,
    steps: int,
    warmup: int,
    device: torch.device,
    contexts: Optional[dict[str, Callable[[], Any]]] = None,
    verbose: bool = False,
) -> dict[str, list[float]]:
    """Time ``runner(k)`` (k iterations) alternately, ``rounds`` times each; ms per iteration.

    Each round runs every implementation once, in an order rotated from round to round so that
    none is always first after another; a slow phase of the machine (other processes) then hits
    all implementations alike. ``contexts[name]()`` is entered around each of that
    implementation's timed blocks (e.g. ``pyro.validation_enabled``).
    """
    contexts = contexts or {}
    names = list(runners)
    for name in names:  # warm-up, also per implementation
        with contexts.get(name, nullcontext)():
            runners[name](warmup)
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            with contexts.get(name, nullcontext)():
                sync(device)
                t0 = time.perf_counter()
                runners[name](steps)
                sync(device)
                dt = time.perf_counter() - t0
            times[name].append(1e3 * dt / steps)
        if verbose:
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names), flush=True)
    return times


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "q25": quantile(values, 0.25),
        "q75": quantile(values, 0.75),
        "iqr": quantile(values, 0.75) - quantile(values, 0.25),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Per-round ratios num[r] / den[r] (measured in the same round), summarized."""
    return summarize([a / b for a, b in zip(num, den)])


# ---------------------------------------------------------------------------------- output
def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def write_json(path: Optional[str], default_name: str, payload: dict[str, Any]) -> Path:
    out = Path(path) if path else RESULTS_DIR / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False)
    return out


def bar_text(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def bar_lines(bars: Optional[dict[str, Any]]) -> list[str]:
    """Markdown lines ``- bar: NAME: **MET** (why)`` for ``{name: (ok, why)}``, after a blank line."""
    return [""] + [f"- bar: {name}: **{bar_text(ok)}** ({why})" for name, (ok, why) in bars.items()] if bars else []
