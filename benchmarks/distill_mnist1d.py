"""Bayesian distillation on MNIST-1D with little data: does the aligned teacher posterior help?

Usage::

    python benchmarks/distill_mnist1d.py                      # seeds 0 1 2, the full experiment
    python benchmarks/distill_mnist1d.py --workers 2          # seeds in parallel processes
    python benchmarks/distill_mnist1d.py --quick              # smoke run (seconds-to-a-minute)

Per seed:

* Teacher: ``bd.models.build("cnn-deep", ...)`` (4 convs, 32 channels) on all 4000 training
  examples with the command line's teacher recipe, ``bayesdistill.experiments.TeacherRecipe``
  (100 epochs, Adam lr 3e-3, cosine, batch 128, prior ``Normal(0, 1)``, kl_weight 0.5). Posteriors are cached in ``--cache``.
* Alignment: ``bd.align(teacher, cnn-small, criterion=..., probe=<the teacher's 4000 training
  inputs>, max_probe=4000)`` for criteria snr/data/random with compensation (re-fit of the next
  layer's means on the probe data, removal="refit") and without (removal="permutation", nothing
  re-fitted). The aligned teacher itself (a student-shaped BNN with ``init=plan.apply(q)``) is
  evaluated before any student training.
* Students ``cnn-small`` (3 convs, 16 channels) on a class-stratified 10% subset (400 examples,
  ``datasets.load("mnist1d", train_fraction=0.1, seed=seed)``; ``--small-epochs`` 150, batch 64)
  and on 100% (4000; ``--full-epochs`` 100, batch 128), lr 3e-3, cosine, kl_weight 0.5 unless
  the variant says otherwise. Variants (``VARIANTS``): plain (prior Normal(0, 1), init="module"),
  distill (snr + compensation, TeacherPosterior(q, plan, scale="unit"), init="prior-mean"),
  and one-factor changes of distill (prior scale learned/posterior, init module, aligned init
  under the plain prior, criterion data/random, no compensation, kl_weight 1).

Metrics: ``bd.evaluate(bnn, test, num_samples=32)`` on the 1000 test examples (accuracy, NLL in
nats per example, ECE with 15 bins); mean and std over seeds. The issue's bar: with 10% of the
data the distilled student beats the plain one by >= 5 accuracy points and has lower NLL, per
seed.

``--pruning-curve``: the teacher's accuracy vs the
fraction of units removed for criteria snr/data/random, with and without compensation, on the
first seed; plotted to ``docs/figures/mnist1d_pruning_curve.png``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import bayesdistill as bd
from bayesdistill.experiments import TeacherRecipe

TEACHER = TeacherRecipe()  # the command line's teacher recipe (bayesdistill.experiments.recipes)
from _common import RESULTS_DIR, bar_text, machine_info, save_figure, table, write_json

ROOT = Path(__file__).resolve().parent.parent
FIG_DIR = ROOT / "docs" / "figures"

# alignment settings: name -> bd.align keyword arguments
PLANS: dict[str, dict[str, Any]] = {
    "snr+comp": {"criterion": "snr", "compensation": True, "removal": "refit"},
    "data+comp": {"criterion": "data", "compensation": True, "removal": "refit"},
    "random+comp": {"criterion": "random", "compensation": True, "removal": "refit"},
    # compensation off: no re-fit after unit removal, the removed layer folded by a scaled permutation
    "snr": {"criterion": "snr", "compensation": False, "removal": "permutation"},
    "data": {"criterion": "data", "compensation": False, "removal": "permutation"},
    "random": {"criterion": "random", "compensation": False, "removal": "permutation"},
    # the removed layer is re-fitted, unit removals are not
    "snr+fold-refit": {"criterion": "snr", "compensation": False, "removal": "refit"},
}

# student variants: prior ("normal" or "teacher"), plan, prior scale, init, kl_weight
_D = {"prior": "teacher", "plan": "snr+comp", "scale": "unit", "init": "prior-mean", "kl_weight": 0.5}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"prior": "normal", "plan": None, "scale": None, "init": "module", "kl_weight": 0.5},
    "distill": dict(_D),
    "distill var=learned": {**_D, "scale": "learned"},
    "distill var=posterior": {**_D, "scale": "posterior"},
    "teacher prior, init=module": {**_D, "init": "module"},
    "aligned init, plain prior": {**_D, "prior": "normal", "init": "aligned"},
    "distill crit=data": {**_D, "plan": "data+comp"},
    "distill crit=random": {**_D, "plan": "random+comp"},
    "distill no-comp": {**_D, "plan": "snr"},
    "plain kl=1": {"prior": "normal", "plan": None, "scale": None, "init": "module", "kl_weight": 1.0},
    "distill kl=1": {**_D, "kl_weight": 1.0},
}
SMALL_VARIANTS = list(VARIANTS)
FULL_VARIANTS = ["plain", "distill", "distill var=learned", "distill var=posterior"]
CURVE_VARIANTS = ["plain", "distill", "distill var=learned", "distill no-comp"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(name: str, data: bd.datasets.DatasetBundle, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return bd.models.build(name, data.input_shape, data.num_classes)


def metrics(bnn: bd.BNN, test, samples: int, seed: int) -> dict[str, float]:
    s = bd.evaluate(bnn, test, num_samples=samples, seed=seed)
    return {"accuracy": s["accuracy"], "nll": s["nll"], "ece": s["ece"]}


def teacher_for(seed: int, full: bd.datasets.DatasetBundle, cfg: argparse.Namespace) -> tuple[bd.BNN, dict]:
    d = TEACHER
    epochs = cfg.teacher_epochs
    net = build("cnn-deep", full, seed)
    cache = Path(cfg.cache) / f"teacher_cnn-deep_seed{seed}_ep{epochs}.pt" if cfg.cache else None
    info: dict[str, Any] = {"epochs": epochs, "lr": d.lr, "batch_size": d.batch_size,
                            "kl_weight": d.kl_weight, "prior_scale": d.prior_scale}
    if cache is not None and cache.exists():
        q = bd.MeanFieldPosterior.load(cache)
        teacher = bd.BNN(net, prior=bd.priors.Normal(scale=d.prior_scale), dataset_size=len(full.train), init=q)
        info["cached"] = str(cache)
        info["fit_s"] = q.metadata.get("fit_s")
        return teacher, info
    teacher = bd.BNN(net, prior=bd.priors.Normal(scale=d.prior_scale), dataset_size=len(full.train))
    t0 = time.perf_counter()
    bd.fit(teacher, full.train, epochs=epochs, lr=d.lr, lr_schedule=d.lr_schedule, batch_size=d.batch_size,
           kl_weight=d.kl_weight, seed=seed, progress=False)
    info["fit_s"] = time.perf_counter() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        q = teacher.posterior()
        q.metadata = {**(q.metadata or {}), "fit_s": info["fit_s"], "seed": seed, "epochs": epochs}
        q.save(cache)
    return teacher, info


def layer_errors(plan) -> list[dict[str, Any]]:
    out = []
    for L in plan.layers:
        err = L.get("error")
        out.append({"teacher": L["teacher"], "student": L["student"], "removed": L["removed"], "residual": L["residual"],
                    "restricted": err["restricted"] if err else None, "compensated": err["compensated"] if err else None})
    return out


def train_student(variant: str, seed: int, data: bd.datasets.DatasetBundle, test, q, plans: dict,
                  epochs: int, batch_size: int, cfg: argparse.Namespace, curve: bool) -> dict[str, Any]:
    v = VARIANTS[variant]
    net = build("cnn-small", data, seed)
    n = len(data.train)
    plan = plans[v["plan"]] if v["plan"] else None
    if v["prior"] == "normal":
        prior = bd.priors.Normal(scale=1.0)
    else:
        prior = bd.priors.TeacherPosterior(q, plan=plan, scale=v["scale"])
    if v["init"] == "aligned":
        init: Any = plan.apply(q)
        # means of the aligned teacher, small initial scales as with init="prior-mean"
        init = bd.MeanFieldPosterior(
            {k: t.detach().clone() for k, t in init.locs.items()},
            {k: torch.full_like(t, 1e-2) for k, t in init.scales.items()},
            init.info,
        )
    else:
        init = v["init"]
    bnn = bd.BNN(net, prior=prior, dataset_size=n, init=init)
    trace: list[dict[str, float]] = []
    callbacks = []
    if curve:
        every = max(1, epochs // 15)

        def cb(record, model):
            if record["epoch"] % every == 0 or record["epoch"] == epochs:
                s = bd.evaluate(model, test, num_samples=8, seed=0)
                trace.append({"epoch": record["epoch"], "accuracy": s["accuracy"], "nll": s["nll"]})
                model.train()
            return None

        callbacks.append(cb)
    t0 = time.perf_counter()
    res = bd.fit(bnn, data.train, epochs=epochs, lr=cfg.lr, lr_schedule="cosine", batch_size=batch_size,
                 kl_weight=v["kl_weight"], seed=seed, progress=False, callbacks=callbacks)
    fit_s = time.perf_counter() - t0
    out = {"variant": variant, "seed": seed, "n_train": n, "epochs": epochs, "batch_size": batch_size,
           **metrics(bnn, test, cfg.samples, seed), "fit_s": fit_s,
           "final_kl": res.history[-1]["kl"] if res.history else None}
    if trace:
        out["curve"] = trace
    if v["scale"] == "learned":
        out["learned_prior_scales"] = {k: float(t.reshape(-1)[0]) for k, t in bnn.prior_scales().items()}
    return out


def run_seed(seed: int, cfg: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    t_seed = time.perf_counter()
    full = bd.datasets.load("mnist1d", seed=seed)
    small = bd.datasets.load("mnist1d", train_fraction=cfg.small_fraction, seed=seed)
    test = full.test
    teacher, tinfo = teacher_for(seed, full, cfg)
    tinfo.update(metrics(teacher, test, cfg.samples, seed))
    log(f"seed {seed}: teacher acc {tinfo['accuracy']:.3f} nll {tinfo['nll']:.3f} ece {tinfo['ece']:.3f} "
        f"({tinfo.get('fit_s') or 0:.0f} s)")
    q = teacher.posterior()
    x_probe, _ = full.tensors("train")
    needed = set(cfg.plans)
    for name in list(cfg.small_variants) + list(cfg.full_variants):
        if VARIANTS[name]["plan"]:
            needed.add(VARIANTS[name]["plan"])
    plans, aligned = {}, {}
    for name in PLANS:
        if name not in needed:
            continue
        t0 = time.perf_counter()
        plan = bd.align(teacher, build("cnn-small", full, seed), probe=x_probe, max_probe=len(x_probe), seed=seed,
                        **PLANS[name])
        align_s = time.perf_counter() - t0
        plans[name] = plan
        at = bd.BNN(build("cnn-small", full, seed), prior=bd.priors.Normal(scale=1.0), dataset_size=len(full.train),
                    init=plan.apply(q))
        aligned[name] = {**metrics(at, test, cfg.samples, seed), "output_error": plan.output_error,
                         "align_s": align_s, "layers": layer_errors(plan)}
        log(f"seed {seed}: aligned teacher [{name}] acc {aligned[name]['accuracy']:.3f} "
            f"output error {plan.output_error:.4f} ({align_s:.1f} s)")
    students: list[dict[str, Any]] = []
    for frac, variants, epochs, bs in (
        ("10%", cfg.small_variants, cfg.small_epochs, cfg.small_batch),
        ("100%", cfg.full_variants, cfg.full_epochs, cfg.full_batch),
    ):
        data = small if frac == "10%" else full
        for variant in variants:
            r = train_student(variant, seed, data, test, q, plans, epochs, bs, cfg,
                              curve=frac == "10%" and variant in CURVE_VARIANTS)
            r["fraction"] = frac
            students.append(r)
            log(f"seed {seed}: {frac:>4} {variant:<28} acc {r['accuracy']:.3f} nll {r['nll']:.3f} "
                f"ece {r['ece']:.3f} ({r['fit_s']:.0f} s)")
    return {"seed": seed, "teacher": tinfo, "aligned": aligned, "students": students,
            "seconds": time.perf_counter() - t_seed}


# ---------------------------------------------------------------------------------- pruning curve
def pruning_curve(seed: int, cfg: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    full = bd.datasets.load("mnist1d", seed=seed)
    teacher, _ = teacher_for(seed, full, cfg)
    x, _ = full.tensors("train")
    probe = x[: cfg.curve_probe]
    fractions = [round(0.1 * i, 1) for i in range(10)]
    curves = {}
    for crit in ("snr", "data", "random"):
        for comp in (True, False):
            t0 = time.perf_counter()
            res = bd.distill.pruning_curve(teacher, full.test, fractions=fractions, criterion=crit, probe=probe,
                                           compensation=comp, num_samples=cfg.curve_samples, seed=seed)
            name = f"{crit}{'+comp' if comp else ''}"
            curves[name] = [{"fraction": f, "accuracy": a, "nll": n, "output_error": e, "units": u}
                            for f, a, n, e, u in zip(res.fraction, res.values, res.nll, res.output_error, res.units)]
            log(f"pruning curve {name}: " + " ".join(f"{100 * a:.1f}" for a in res.values)
                + f" ({time.perf_counter() - t0:.0f} s)")
    return {"seed": seed, "fractions": fractions, "probe": len(probe), "num_samples": cfg.curve_samples,
            "curves": curves}


# ---------------------------------------------------------------------------------- reporting
def ms(values: list[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(m)} ± {fmt.format(s)}"


def pct(values: list[float]) -> str:
    return ms([100 * v for v in values], "{:.1f}")


def report(results: list[dict[str, Any]], cfg: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    seeds = [r["seed"] for r in results]
    lines = []
    t = results
    lines.append(f"Teacher cnn-deep (4000 examples), seeds {seeds}: acc {pct([r['teacher']['accuracy'] for r in t])} %, "
                 f"NLL {ms([r['teacher']['nll'] for r in t])}, ECE {ms([r['teacher']['ece'] for r in t])}")
    rows = []
    for name in PLANS:
        vals = [r["aligned"][name] for r in t if name in r["aligned"]]
        if not vals:
            continue
        rows.append([name, pct([v["accuracy"] for v in vals]), ms([v["nll"] for v in vals]),
                     ms([v["ece"] for v in vals]), ms([v["output_error"] for v in vals], "{:.4f}"),
                     " ".join(f"{100 * v['accuracy']:.1f}" for v in vals)])
    if rows:
        lines.append("\nAligned teacher (cnn-small shape, before student training), mean ± std over seeds")
        lines.append(table(rows, ["plan", "acc %", "NLL", "ECE", "rel. output error", "acc per seed"]))
    summary: dict[str, Any] = {}
    for frac in ("10%", "100%"):
        rows = []
        for variant in VARIANTS:
            vals = [s for r in t for s in r["students"] if s["fraction"] == frac and s["variant"] == variant]
            if not vals:
                continue
            summary.setdefault(frac, {})[variant] = {
                k: {"mean": statistics.fmean([v[k] for v in vals]),
                    "std": statistics.stdev([v[k] for v in vals]) if len(vals) > 1 else 0.0}
                for k in ("accuracy", "nll", "ece")}
            rows.append([variant, pct([v["accuracy"] for v in vals]), ms([v["nll"] for v in vals]),
                         ms([v["ece"] for v in vals]), " ".join(f"{100 * v['accuracy']:.1f}" for v in vals)])
        if rows:
            n = cfg.small_epochs if frac == "10%" else cfg.full_epochs
            lines.append(f"\nStudents cnn-small, {frac} of the training set ({n} epochs), mean ± std over seeds")
            lines.append(table(rows, ["variant", "acc %", "NLL", "ECE", "acc per seed"]))
    # the bar, per seed
    rows, all_ok = [], True
    for r in t:
        by = {s["variant"]: s for s in r["students"] if s["fraction"] == "10%"}
        if "plain" not in by or "distill" not in by:
            continue
        gain = 100 * (by["distill"]["accuracy"] - by["plain"]["accuracy"])
        ok = gain >= 5 and by["distill"]["nll"] < by["plain"]["nll"]
        all_ok &= ok
        rows.append([r["seed"], f"{100 * by['plain']['accuracy']:.1f}", f"{100 * by['distill']['accuracy']:.1f}",
                     f"{gain:+.1f}", f"{by['plain']['nll']:.3f}", f"{by['distill']['nll']:.3f}", bar_text(ok)])
    if rows:
        lines.append("\nBar (10%): distill - plain >= 5 accuracy points and lower NLL, per seed")
        lines.append(table(rows, ["seed", "plain acc %", "distill acc %", "gain", "plain NLL", "distill NLL", "bar"]))
        lines.append(f"bar over all seeds: {bar_text(all_ok)}")
    summary["bar_met_all_seeds"] = all_ok if rows else None
    return "\n".join(lines), summary


def curve_table(curve: dict[str, Any]) -> str:
    rows = [[name] + [f"{100 * r['accuracy']:.1f}" for r in rows] for name, rows in curve["curves"].items()]
    ptext = table(rows, ["criterion"] + [f"{f:.1f}" for f in curve["fractions"]])
    return (f"\nTeacher pruning curve (seed {curve['seed']}, {curve.get('probe')} probe inputs, "
            f"{curve.get('num_samples')} samples), test accuracy % vs fraction of units removed\n{ptext}")


def plot_variants(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    names = [v for v in VARIANTS if any(s["variant"] == v and s["fraction"] == "10%" for r in results for s in r["students"])]
    for i, v in enumerate(names):
        accs = [100 * s["accuracy"] for r in results for s in r["students"] if s["variant"] == v and s["fraction"] == "10%"]
        ax.barh(i, statistics.fmean(accs), color="tab:gray" if v.startswith("plain") else "tab:blue", alpha=0.7)
        ax.plot(accs, [i] * len(accs), "k.", ms=5)
    teacher = statistics.fmean([100 * r["teacher"]["accuracy"] for r in results])
    ax.axvline(teacher, color="tab:red", ls="--", lw=1, label=f"teacher (100% data) {teacher:.1f}%")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy % (bars: mean, dots: seeds)")
    ax.set_title("cnn-small students, 10% of MNIST-1D (400 examples)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    colors = {"plain": "tab:gray", "distill": "tab:blue", "distill var=learned": "tab:green", "distill no-comp": "tab:orange"}
    for v in CURVE_VARIANTS:
        curves = [s["curve"] for r in results for s in r["students"] if s["variant"] == v and s["fraction"] == "10%" and "curve" in s]
        if not curves:
            continue
        ep = [c["epoch"] for c in curves[0]]
        acc = [statistics.fmean(100 * c[i]["accuracy"] for c in curves) for i in range(len(ep))]
        ax.plot(ep, acc, "-o", ms=3, color=colors.get(v), label=v)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy % (8 samples, mean over seeds)")
    ax.set_title("learning curves, 10% data", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=90)


def plot_pruning(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = {"snr": "tab:blue", "data": "tab:green", "random": "tab:gray"}
    for name, rows in curve["curves"].items():
        crit = name.split("+")[0]
        ax.plot([r["fraction"] for r in rows], [100 * r["accuracy"] for r in rows], "-o" if "+comp" in name else "--x",
                ms=4, color=colors[crit], label=f"{crit}, {'compensated' if '+comp' in name else 'no compensation'}")
    ax.set_xlabel("fraction of units removed (every hidden layer)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"teacher cnn-deep pruning curve, MNIST-1D (seed {curve['seed']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=90)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="smoke run: seed 0, few epochs, few variants, no cache")
    p.add_argument("--json", default=str(RESULTS_DIR / "distill_mnist1d.json"), help="where to write the results")
    p.add_argument("--workers", type=int, default=1, help="seeds run in this many processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--teacher-epochs", type=int, default=TEACHER.epochs)
    p.add_argument("--small-fraction", type=float, default=0.1)
    p.add_argument("--small-epochs", type=int, default=150)
    p.add_argument("--small-batch", type=int, default=64)
    p.add_argument("--full-epochs", type=int, default=100)
    p.add_argument("--full-batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--samples", type=int, default=32, help="posterior samples for evaluation")
    p.add_argument("--small-variants", nargs="*", default=SMALL_VARIANTS, choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--full-variants", nargs="*", default=FULL_VARIANTS, choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--plans", nargs="*", default=list(PLANS), choices=list(PLANS),
                   help="alignments whose aligned teacher is evaluated")
    p.add_argument("--cache", default=str(RESULTS_DIR / "distill_mnist1d_teachers"),
                   help="teacher posterior cache ('' = none)")
    p.add_argument("--pruning-curve", action="store_true", help="also the teacher's pruning curve (first seed)")
    p.add_argument("--curve-probe", type=int, default=2048, help="probe inputs for the pruning curve")
    p.add_argument("--curve-samples", type=int, default=16, help="posterior samples per pruning-curve point")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="no training: re-print the tables (and --figures) from a results JSON of this script")
    p.add_argument("--figures", action="store_true", help="write docs/figures/mnist1d_*.png")
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.seeds = cfg.seeds[:1] if cfg.seeds != [0, 1, 2] else [0]
        cfg.teacher_epochs, cfg.small_epochs, cfg.full_epochs, cfg.samples = 3, 5, 2, 4
        cfg.small_variants = ["plain", "distill", "distill var=learned"]
        cfg.full_variants = ["plain", "distill"]
        cfg.plans = ["snr+comp", "snr"]
        cfg.cache = ""
    if cfg.from_json:
        import json

        saved = json.load(open(cfg.from_json))
        for key in ("small_epochs", "full_epochs"):
            setattr(cfg, key, saved["config"][key])
        text, _ = report(saved["results"], cfg)
        print(text)
        if cfg.figures and any(r["students"] for r in saved["results"]):
            plot_variants(saved["results"], FIG_DIR / "mnist1d_distill_students.png")
        if saved.get("pruning_curve"):
            print(curve_table(saved["pruning_curve"]))
        if cfg.figures and saved.get("pruning_curve"):
            plot_pruning(saved["pruning_curve"], FIG_DIR / "mnist1d_pruning_curve.png")
        return 0
    torch.set_num_threads(cfg.threads)
    info = machine_info(torch.device("cpu"))
    t0 = time.perf_counter()
    if cfg.workers > 1 and len(cfg.seeds) > 1:
        with mp.get_context("spawn").Pool(min(cfg.workers, len(cfg.seeds))) as pool:
            results = pool.starmap(run_seed, [(s, cfg) for s in cfg.seeds])
    else:
        results = [run_seed(s, cfg) for s in cfg.seeds]
    curve = pruning_curve(cfg.seeds[0], cfg) if cfg.pruning_curve else None
    text, summary = report(results, cfg)
    print("\n" + text)
    if curve is not None:
        print(curve_table(curve))
    if cfg.figures and any(r["students"] for r in results):
        plot_variants(results, FIG_DIR / "mnist1d_distill_students.png")
    if cfg.figures:
        if curve is not None:
            plot_pruning(curve, FIG_DIR / "mnist1d_pruning_curve.png")
    config = {k: v for k, v in vars(cfg).items()}
    out = write_json(cfg.json, "distill_mnist1d.json", {
        "benchmark": "distill_mnist1d", "config": config, "machine": info, "variants": VARIANTS, "plans": PLANS,
        "results": results, "pruning_curve": curve, "summary": summary, "seconds": time.perf_counter() - t0,
    })
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
