"""Two-step transfer through a heavy student (Passalis, Tzelepi & Tefas 2020) on MNIST-1D.

Usage::

    python benchmarks/distill_heavy.py                 # seeds 0 1 2, ~10 min on 2 cores
    python benchmarks/distill_heavy.py --quick         # smoke run (one seed, 2 epochs)

Per seed s, with the cached Bayesian ``cnn-deep`` teacher of ``distill_function_space.py``
(12,714 weights; trained on all 4000 examples with the CLI recipe if not cached):

* **student**: a small Bayesian MLP ``bd.models.mlp(40, 10, (64, 64))`` (7,434 weights);
* **auxiliary** ("heavy") student: the student's layout with more capacity,
  ``bd.models.mlp(40, 10, (256, 256))`` (78,858 weights).

Variants of the student (all: prior N(0, 1), all 4000 labelled examples, ``--epochs`` per
stage, Adam lr 3e-3, cosine, batch 128, ``kl_weight`` 0.5, seed s):

* ``plain``: no transfer term;
* ``pkt``: one PKT term, teacher ``"9"`` (flattened last conv block, 320) -> student ``"4"``
  (2nd hidden ReLU), weight 1;
* ``heavy``: ``bd.distill.heavy_student``: stage 1 fits the auxiliary student with PKT teacher
  ``"9"`` -> auxiliary ``"4"``; stage 2 fits the student with PKT auxiliary ``"2"`` -> student
  ``"2"`` (intermediate, weight 10 decaying x0.7 per epoch) and ``"4"`` -> ``"4"`` (final,
  weight 1).

The auxiliary student after stage 1 (``aux``) is reported too. Metrics: ``bd.evaluate(...,
num_samples=32)`` on the 1000 test examples (accuracy, NLL, ECE), mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bayesdistill as bd
from bayesdistill.distill import PKT
from _common import machine_info, table, write_json
from distill_function_space import TEACHER_CACHES, load_teacher, metrics, prepare_seed

STUDENT_HIDDEN = (64, 64)
AUX_HIDDEN = (256, 256)
VARIANTS = ("plain", "pkt", "heavy")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(task: tuple[int, str, argparse.Namespace]) -> list[dict[str, Any]]:
    seed, variant, cfg = task
    torch.set_num_threads(cfg.threads)
    data = bd.datasets.load("mnist1d")
    teacher = load_teacher(seed, cfg, data)
    fit_kw = dict(lr=3e-3, lr_schedule="cosine", batch_size=128, kl_weight=0.5, seed=seed, progress=False)

    def bnn(hidden):
        torch.manual_seed(seed)
        return bd.BNN(bd.models.mlp(40, 10, hidden), prior=bd.priors.Normal(scale=1.0), dataset_size=len(data.train))

    student = bnn(STUDENT_HIDDEN)
    t0 = time.perf_counter()
    rows = []
    if variant == "plain":
        bd.fit(student, data.train, epochs=cfg.epochs, **fit_kw)
    elif variant == "pkt":
        # PKT in nats (normalize="none"): the setting of the documented runs (docs/function-space.md)
        bd.fit(student, data.train, epochs=cfg.epochs, distill=[PKT(teacher, {"9": "4"}, normalize="none")], **fit_kw)
    else:
        aux = bnn(AUX_HIDDEN)
        bd.distill.heavy_student(teacher, aux, student, data.train, teacher_pairs={"9": "4"},
                                 pairs={"2": "2", "4": "4"}, epochs=cfg.epochs, weight=1.0,
                                 intermediate_weight=10.0, decay=0.7, normalize="none", **fit_kw)
        rows.append({"seed": seed, "variant": "aux", "weights": aux.num_weights,
                     **metrics(aux, data.test, cfg.samples, seed)})
    fit_s = time.perf_counter() - t0
    rows.append({"seed": seed, "variant": variant, "weights": student.num_weights, "fit_s": fit_s,
                 **metrics(student, data.test, cfg.samples, seed)})
    for r in rows:
        log(f"seed {seed} {r['variant']:<6} acc {r['accuracy']:.3f} nll {r['nll']:.3f} ece {r['ece']:.3f}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100, help="epochs per stage (and of plain/pkt)")
    p.add_argument("--quick", action="store_true", help="one seed, 2 epochs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--teacher-epochs", type=int, default=100)
    p.add_argument("--teacher-cache", nargs="+", default=[str(c) for c in TEACHER_CACHES])
    p.add_argument("--json", default=None, help="default benchmarks/results/distill_heavy.json")
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.seeds, cfg.epochs = cfg.seeds[:1], 2
    # what prepare_seed needs to train and cache a missing teacher (no transfer set, no alignment)
    cfg.experiments, cfg.variants_b, cfg.work = "", [], str(Path(cfg.teacher_cache[-1]))
    torch.set_num_threads(cfg.threads)
    info = machine_info(torch.device("cpu"))
    teachers = [prepare_seed(s, cfg) for s in cfg.seeds]

    tasks = [(s, v, cfg) for s in cfg.seeds for v in VARIANTS]
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            results = [r for rows in pool.map(run, tasks, chunksize=1) for r in rows]
    else:
        results = [r for t in tasks for r in run(t)]

    table_rows = []
    for v in ("aux", *VARIANTS):
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        cell = []
        for k in ("accuracy", "nll", "ece"):
            vals = [r[k] for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cell.append(f"{statistics.fmean(vals):.4f} +- {sd:.4f}")
        table_rows.append([v, rs[0]["weights"], *cell, " ".join(f"{r['accuracy']:.3f}" for r in rs)])
    print()
    print(table(table_rows, ["student", "weights", "accuracy", "NLL", "ECE", "accuracy per seed"]))
    out = write_json(cfg.json, "distill_heavy.json", {
        "benchmark": "distill_heavy", "machine": info,
        "config": {"seeds": cfg.seeds, "epochs": cfg.epochs, "student_hidden": STUDENT_HIDDEN,
                   "aux_hidden": AUX_HIDDEN, "kl_weight": 0.5, "lr": 3e-3},
        "teachers": [{k: t[k] for k in ("seed", "accuracy", "nll", "ece")} for t in teachers],
        "results": results,
    })
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
