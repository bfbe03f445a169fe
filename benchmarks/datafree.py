"""Data-free distillation from a teacher's activation record (Lopes, Fenu & Starner 2017) on MNIST-1D.

Usage::

    python benchmarks/datafree.py                       # seeds 0 1 2, every method
    python benchmarks/datafree.py --quick               # smoke run (< 2 min)
    python benchmarks/datafree.py --from-json benchmarks/results/datafree.json --docs   # tables + figures
    python benchmarks/datafree.py --teacher cnn --seeds $(seq -s ' ' 0 19)   # a 1-D CNN teacher instead

Per seed s:

* **teacher**: a Bayesian MLP ``bd.models.mlp(40, 10, (128, 128))`` (22,026 weights; the paper's
  teachers are fully connected too), prior ``Normal(0, 1)``, on all 4000 MNIST-1D training
  examples: ``--teacher-epochs`` 100, Adam lr 3e-3 with a cosine decay, batch 128,
  ``kl_weight`` 0.5 (cached under ``benchmarks/results/datafree_cache/``); with ``--teacher cnn``
  a Bayesian 1-D CNN ``bd.models.cnn1d(40, 10, channels=16)`` (three conv layers with ReLU, 16 x 40,
  16 x 20 and 16 x 10 maps, a linear read-out), 60 epochs, the rest the same; its records hold
  the flattened conv maps, and the spectral records (and "all layers, joint", a spectral record)
  do not apply to it: they need fully connected layers between the recorded layers;
* **records** (once, with the training data): ``bd.distill.datafree.record(teacher, train, kind=k,
  temperature=8)`` for ``k`` in top, all, spectral-all, spectral-pairs (``--spectral-fraction``
  0.3 of each graph's eigenvectors), and spectral-all with fraction 1 ("all layers, joint": the
  joint Gaussian of all layers' units, rotated into the graph basis);
* **transfer inputs** (``--n`` 2000), per method:

  - ``data (labels)``: no teacher, the student fit on the first n labelled training examples
    (reference);
  - ``KD, real inputs``: the first n training inputs (the teacher's data: not data-free);
  - ``random noise``: ``N(input_mean, input_std^2)`` noise (the record's two input statistics),
    not optimized;
  - ``top layer``, ``all layers``, ``spectral all layers``, ``spectral layer pairs``, ``all
    layers, joint``: inputs reconstructed from the record with the paper's objective
    (``reconstruct(..., steps=--steps 300, lr=0.05, batch_size=1000)``; per-layer targets sampled
    independently from each layer's class Gaussian, or jointly for "joint");
  - ``DeepInversion``: inputs reconstructed from the all-layers record with DeepInversion's
    objective (cross-entropy on the input's class + the distance of each hidden layer's batch mean
    and variance to the record's, ``--di-feature-weight`` 1, + a total-variation prior
    ``--di-tv-weight`` 1e-3);

* **student**: a Bayesian MLP ``bd.models.mlp(40, 10, (32, 32))`` (2,698 weights), prior
  ``Normal(0, 1)``, ``dataset_size`` n, fit by ``bd.distill.datafree.distill_on_inputs``: the
  inputs labelled by the teacher's predictive argmax, KD at T = 8 with weight 1 (pure imitation
  of the teacher's posterior predictive, ``teacher_mode="sample"``), ``--epochs`` 100, Adam
  ``--student-lr`` 1e-2 cosine, batch 128, ``kl_weight`` 0.5.

Metrics: the student's test accuracy and NLL (``bd.evaluate``, 32 draws, the 1000 MNIST-1D test
examples) and its agreement with the teacher's predictions on the test set; for reconstructions
the fraction of inputs the teacher assigns to the class they were made for. Mean ± std over seeds.

Bar (the paper's ordering): KD on real inputs > all layers > top layer > random noise, in the mean
over seeds and in every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import bayesdistill as bd
from bayesdistill.distill import datafree as df
from _common import bar_lines, machine_info, save_figure, table, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "datafree_cache"
DOCS_JSON = ROOT / "docs" / "results" / "datafree.json"
FIGURES = ROOT / "docs" / "figures"

#: method -> (record kind or None, reconstruction objective or None)
METHODS = {
    "data (labels)": (None, None),
    "KD, real inputs": (None, None),
    "random noise": ("top", None),
    "top layer": ("top", "match"),
    "all layers": ("all", "match"),
    "spectral all layers": ("spectral-all", "match"),
    "spectral layer pairs": ("spectral-pairs", "match"),
    "all layers, joint": ("joint", "match"),
    "DeepInversion": ("all", "deepinversion"),
}
#: Lopes et al.'s MNIST fully connected results (student accuracy %), for the ordering
PAPER = {"data (labels)": 95.70, "KD, real inputs": 95.74, "top layer": 68.75, "all layers": 76.38,
         "spectral all layers": 89.41, "spectral layer pairs": 91.24}
TEACHER_HIDDEN, STUDENT_HIDDEN = (128, 128), (32, 32)
#: --teacher -> (description, network factory, default epochs); the records of a CNN teacher are
#: its conv maps flattened per example (channels x positions), so only the kinds that need no
#: chain of Linear layers apply to it
TEACHERS = {
    "mlp": ("Bayesian MLP 40-128-128-10", lambda: bd.models.mlp(40, 10, TEACHER_HIDDEN), 100),
    "cnn": ("Bayesian 1-D CNN `cnn1d(40, 10, channels=16)`: three conv layers (16 x 40, 16 x 20, 16 x 10 "
            "ReLU maps) and a linear read-out", lambda: bd.models.cnn1d(40, 10, channels=16), 60),
}
#: the record kinds that need a chain of fully connected layers between the recorded layers
CHAIN_KINDS = ("spectral-all", "spectral-pairs", "joint")


def applies(method: str, teacher: str) -> bool:
    """Whether a method applies to a teacher kind (the spectral records need fully connected layers)."""
    return teacher == "mlp" or METHODS[method][0] not in CHAIN_KINDS


def tag(config: dict[str, Any]) -> str:
    """The file-name suffix of a run's teacher: "" for the MLP (runs before ``--teacher`` record
    none), "_cnn" for the CNN."""
    teacher = config.get("teacher", "mlp")
    return "" if teacher == "mlp" else f"_{teacher}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def teacher_for(seed: int, cfg: argparse.Namespace, data) -> tuple[bd.BNN, dict[str, Any]]:
    name = f"mlp{TEACHER_HIDDEN[0]}" if cfg.teacher == "mlp" else cfg.teacher
    path = Path(cfg.cache) / f"teacher_{name}_seed{seed}_ep{cfg.teacher_epochs}.pt"
    net = TEACHERS[cfg.teacher][1]()
    info: dict[str, Any] = {}
    if path.exists():
        teacher = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), dataset_size=len(data.train),
                         init=bd.MeanFieldPosterior.load(path))
    else:
        torch.manual_seed(seed)
        teacher = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), dataset_size=len(data.train))
        t0 = time.perf_counter()
        bd.fit(teacher, data.train, epochs=cfg.teacher_epochs, lr=3e-3, lr_schedule="cosine", batch_size=128,
               kl_weight=0.5, seed=seed, progress=False)
        info["teacher_fit_s"] = time.perf_counter() - t0
        teacher.posterior().save(path)
    m = bd.evaluate(teacher, data.test, num_samples=cfg.samples, seed=seed)
    info.update({"teacher_accuracy": float(m["accuracy"]), "teacher_nll": float(m["nll"])})
    return teacher, info


def transfer_inputs(method: str, seed: int, teacher: bd.BNN, records: dict[str, df.ActivationRecord],
                    cfg: argparse.Namespace, data) -> tuple[torch.Tensor, dict[str, Any]]:
    kind, objective = METHODS[method]
    x_train = data.tensors("train")[0]
    if kind is None:
        return x_train[: cfg.n], {}
    t0 = time.perf_counter()
    kw: dict[str, Any] = dict(lr=0.05, batch_size=1000, progress=cfg.progress, seed=seed)
    if objective is None:
        r = df.reconstruct(teacher, records[kind], cfg.n, steps=0, **kw)
    elif objective == "deepinversion":
        r = df.reconstruct(teacher, records[kind], cfg.n, steps=cfg.steps, objective="deepinversion",
                           feature_weight=cfg.di_feature_weight, tv_weight=cfg.di_tv_weight, **kw)
    else:
        r = df.reconstruct(teacher, records[kind], cfg.n, steps=cfg.steps, **kw)
    info = {"reconstruct_s": time.perf_counter() - t0, "loss_start": float(r.loss_start.mean()),
            "loss_end": float(r.loss_end.mean()),
            "teacher_agrees_with_class": float((df.teacher_labels(teacher, r.x, seed=seed) == r.classes)
                                               .float().mean())}
    torch.save({"x": r.x[: cfg.keep], "classes": r.classes[: cfg.keep]},
               Path(cfg.cache) / inputs_file(method, seed, tag(vars(cfg))))
    return r.x, info


def run_method(method: str, seed: int, teacher: bd.BNN, records: dict[str, df.ActivationRecord],
               cfg: argparse.Namespace, data) -> dict[str, Any]:
    x, info = transfer_inputs(method, seed, teacher, records, cfg, data)
    torch.manual_seed(seed)
    student = bd.BNN(bd.models.mlp(40, 10, STUDENT_HIDDEN), prior=bd.priors.Normal(scale=1.0), dataset_size=len(x))
    t0 = time.perf_counter()
    common = dict(epochs=cfg.epochs, batch_size=128, lr=cfg.student_lr, lr_schedule="cosine", kl_weight=0.5,
                  seed=seed, progress=False)
    if method == "data (labels)":
        x_train, y_train = data.tensors("train")
        bd.fit(student, (x_train[: cfg.n], y_train[: cfg.n]), **common)
    else:
        df.distill_on_inputs(student, teacher, x, temperature=cfg.temperature, weight=1.0, teacher_mode="sample",
                             **common)
    fit_s = time.perf_counter() - t0
    m = bd.evaluate(student, data.test, num_samples=cfg.samples, seed=seed)
    x_test = data.tensors("test")[0]
    agree = float((df.teacher_labels(student, x_test, seed=seed) == df.teacher_labels(teacher, x_test, seed=seed))
                  .float().mean())
    return {"seed": seed, "method": method, "accuracy": float(m["accuracy"]), "nll": float(m["nll"]),
            "ece": float(m["ece"]), "agreement": agree, "fit_s": fit_s, "n": len(x), **info}


# ---------------------------------------------------------------------------------- summaries
def _ms(v: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def summarize(payload: dict[str, Any]) -> dict[str, Any]:
    rows = payload["results"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    config = dict(payload["config"])
    if config.get("cache"):  # a path inside the repository, not this machine's
        cache = Path(config["cache"]).resolve()
        config["cache"] = str(cache.relative_to(ROOT)) if cache.is_relative_to(ROOT) else cache.name
    out: dict[str, Any] = {"config": config, "machine": payload.get("machine", {}), "paper": PAPER,
                           "teachers": payload["teachers"], "methods": {}}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        e = {k: _ms([100 * r[k] for r in rs]) for k in ("accuracy", "agreement")}
        e["nll"] = _ms([r["nll"] for r in rs])
        e["per_seed"] = {str(r["seed"]): 100 * r["accuracy"] for r in rs}
        for k in ("teacher_agrees_with_class", "loss_start", "loss_end", "reconstruct_s"):
            if k in rs[0]:
                e[k] = _ms([r[k] * (100 if k == "teacher_agrees_with_class" else 1) for r in rs])
        e["fit_s"] = _ms([r["fit_s"] for r in rs])
        out["methods"][m] = e
    out["paired"] = {}
    if "top layer" in out["methods"]:
        top = {r["seed"]: r["accuracy"] for r in rows if r["method"] == "top layer"}
        for m in methods:
            if m == "top layer":
                continue
            d = [100 * (r["accuracy"] - top[r["seed"]]) for r in rows if r["method"] == m and r["seed"] in top]
            if d:
                e = _ms(d)
                e["se"] = e["std"] / len(d) ** 0.5
                out["paired"][m] = e
    out["records"] = payload.get("records", {})
    out["bars"] = {k: list(v) for k, v in check_bars(out).items()}
    out["wall_s"] = sum(r["fit_s"] + r.get("reconstruct_s", 0.0) for r in rows) + sum(
        t.get("teacher_fit_s", 0.0) for t in payload["teachers"])
    return out


def check_bars(summary: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    order = ["KD, real inputs", "all layers", "top layer", "random noise"]
    ms = summary["methods"]
    if not all(m in ms for m in order):
        return {}
    means = [ms[m]["accuracy"]["mean"] for m in order]
    ok_mean = all(a > b for a, b in zip(means, means[1:]))
    seeds = sorted(set.intersection(*(set(ms[m]["per_seed"]) for m in order)))
    ok_seeds = all(all(ms[a]["per_seed"][s] > ms[b]["per_seed"][s] for a, b in zip(order, order[1:])) for s in seeds)
    bars = {"ordering KD on real inputs > all layers > top layer > random noise (means)": (
                ok_mean, ", ".join(f"{m} {v:.1f}" for m, v in zip(order, means))),
            f"the same ordering in every seed ({len(seeds)})": (ok_seeds, f"{sum(all(ms[a]['per_seed'][s] > ms[b]['per_seed'][s] for a, b in zip(order, order[1:])) for s in seeds)} of {len(seeds)} seeds")}
    free = [m for m in ms if METHODS[m][0] is not None and m != "random noise"]
    if free and "random noise" in ms:
        lo = min(ms[m]["accuracy"]["mean"] for m in free)
        hi = max(ms[m]["accuracy"]["mean"] for m in free)
        bars["KD on real inputs > every data-free reconstruction > random noise (means)"] = (
            ms["KD, real inputs"]["accuracy"]["mean"] > hi and lo > ms["random noise"]["accuracy"]["mean"],
            f"reconstructions {lo:.1f}-{hi:.1f}")
    return bars


def render(summary: dict[str, Any]) -> str:
    t = summary["teachers"]
    seeds = sorted({int(s) for e in summary["methods"].values() for s in e["per_seed"]})
    described = TEACHERS[summary["config"].get("teacher", "mlp")][0]
    lines = [f"Seeds {', '.join(map(str, seeds))}. Teacher ({described}): test accuracy "
             f"{statistics.mean(x['teacher_accuracy'] for x in t) * 100:.1f} ± "
             f"{(statistics.stdev([x['teacher_accuracy'] * 100 for x in t]) if len(t) > 1 else 0):.1f} % "
             f"over {len(t)} seeds (paper's MNIST teacher: 96.95 %).\n"]
    body = []
    for m, e in summary["methods"].items():
        rec = (f"{e['teacher_agrees_with_class']['mean']:.0f}" if "teacher_agrees_with_class" in e else "")
        loss = (f"{e['loss_start']['mean']:.3g} → {e['loss_end']['mean']:.3g}" if "loss_end" in e
                and METHODS[m][1] is not None else "")
        body.append([m, f"{e['accuracy']['mean']:.1f} ± {e['accuracy']['std']:.1f}",
                     f"{e['nll']['mean']:.2f}", f"{e['agreement']['mean']:.1f}", rec, loss,
                     f"{PAPER[m]:.2f}" if m in PAPER else "",
                     "2" if m == "random noise" else f"{summary['records'].get(METHODS[m][0], '')}"])
    lines.append(table(body, ["transfer inputs", "student acc %", "NLL", "agrees with teacher %",
                              "teacher gives the target class %", "reconstruction loss", "paper (MNIST) %",
                              "record size (numbers)"]))
    paired = summary.get("paired") or {}
    if paired:
        lines.append("\nPaired differences to the top-layer record (student accuracy, points, same seed: same teacher, "
                     "same student initialization), mean ± s.e. over seeds:\n")
        lines.append(table([[m, f"{e['mean']:+.1f} ± {e['se']:.1f}", e["n"]] for m, e in paired.items()],
                           ["transfer inputs", "minus top layer", "seeds"]))
    lines += bar_lines(summary.get("bars"))
    if "wall_s" in summary:
        lines.append(f"\nWall time: {summary['wall_s'] / 60:.0f} min for all the runs above (teachers, reconstructions, "
                     f"students), one after the other, {summary['config'].get('threads', 1)} thread, on a shared "
                     "2-core machine.")
    return "\n".join(lines)


def inputs_file(method: str, seed: int, suffix: str = "") -> str:
    return f"inputs{suffix}_{method.replace(' ', '_').replace(',', '')}_seed{seed}.pt"


def figures(summary: dict[str, Any], folder: Path, seed: int, cache: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    data = bd.datasets.load("mnist1d")
    x_real, y_real = data.tensors("train")
    suffix = tag(summary["config"])
    shown = [m for m in METHODS if METHODS[m][0] is not None and (cache / inputs_file(m, seed, suffix)).exists()]
    if shown:
        classes = [0, 3, 7]
        fig, axes = plt.subplots(len(classes), len(shown) + 1, figsize=(2.1 * (len(shown) + 1), 1.6 * len(classes)),
                                 sharex=True, squeeze=False)
        for j, m in enumerate(["real data", *shown]):
            if m == "real data":
                xs, cs = x_real, y_real
            else:
                saved = torch.load(cache / inputs_file(m, seed, suffix))
                xs, cs = saved["x"], saved["classes"]
            for i, c in enumerate(classes):
                ax = axes[i][j]
                for k, row in enumerate(xs[cs == c][:3]):
                    ax.plot(row.numpy(), lw=0.9, alpha=0.9, color=f"C{k}")
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(m, fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"class {c}", fontsize=8)
        fig.suptitle(f"MNIST-1D inputs: real and reconstructed from the teacher's records (seed {seed}, 3 per class)",
                     fontsize=9)
        out.append(save_figure(fig, folder / f"datafree{suffix}_inputs.png"))
    ms = summary["methods"]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    names = list(ms)
    ax.barh(range(len(names)), [ms[m]["accuracy"]["mean"] for m in names],
            xerr=[ms[m]["accuracy"]["std"] for m in names], color=["tab:gray" if METHODS[m][0] is None else "tab:blue"
                                                                   for m in names])
    for i, m in enumerate(names):
        for s, v in ms[m]["per_seed"].items():
            ax.plot(v, i, "k.", ms=4)
    teacher_acc = 100 * statistics.mean(t["teacher_accuracy"] for t in summary["teachers"])
    ax.axvline(teacher_acc, color="tab:green", ls="--", label=f"teacher {teacher_acc:.1f}%")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("student test accuracy % (MNIST-1D)")
    ax.legend(fontsize=8, loc="lower right")
    out.append(save_figure(fig, folder / f"datafree{suffix}_accuracy.png"))
    return out


# ---------------------------------------------------------------------------------- main
def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--teacher-epochs", type=int, default=None, help="default 100 (MLP), 60 (CNN)")
    p.add_argument("--epochs", type=int, default=100, help="student epochs")
    p.add_argument("--n", type=int, default=2000, help="transfer inputs per method (the first n training "
                   "examples for the real-data references)")
    p.add_argument("--steps", type=int, default=300, help="reconstruction steps")
    p.add_argument("--student-lr", type=float, default=1e-2)
    p.add_argument("--temperature", type=float, default=8.0)
    p.add_argument("--spectral-fraction", type=float, default=0.3)
    p.add_argument("--di-feature-weight", type=float, default=1.0)
    p.add_argument("--di-tv-weight", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--keep", type=int, default=200, help="reconstructed inputs kept for the figure")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="teachers, records, inputs (default benchmarks/results/datafree_cache)")
    p.add_argument("--progress", action="store_true", help="progress bars of the reconstructions")
    p.add_argument("--quick", action="store_true", help="one seed, 5+5 epochs, 500 inputs, 50 steps")
    p.add_argument("--teacher", default="mlp", choices=list(TEACHERS),
                   help="the teacher: the MLP (default) or a 1-D CNN (no spectral records: they need Linear layers)")
    p.add_argument("--json", default=None, help="default benchmarks/results/datafree.json (datafree_cnn.json "
                   "with --teacher cnn)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--from-json", default=None)
    p.add_argument("--docs", action="store_true", help="write docs/results/datafree.json (datafree_cnn.json) "
                   "and the figures")
    p.add_argument("--figures", default=None)
    cfg = p.parse_args(argv)
    if cfg.teacher_epochs is None:
        cfg.teacher_epochs = TEACHERS[cfg.teacher][2]
    if cfg.quick:
        cfg.seeds, cfg.teacher_epochs, cfg.epochs, cfg.n, cfg.steps = [0], 5, 5, 500, 50
    skipped = [m for m in cfg.methods if not applies(m, cfg.teacher)]
    if skipped:
        print(f"--teacher {cfg.teacher}: skipping {', '.join(skipped)} (spectral records need fully connected layers)")
        cfg.methods = [m for m in cfg.methods if applies(m, cfg.teacher)]
    if cfg.cache is None:
        cfg.cache = str(CACHE if not cfg.quick else RESULTS / "datafree_cache_quick")
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    cfg = parse(argv)
    torch.set_num_threads(cfg.threads)
    Path(cfg.cache).mkdir(parents=True, exist_ok=True)
    if cfg.from_json:
        payload = json.loads(Path(cfg.from_json).read_text())
    else:
        path = Path(cfg.json) if cfg.json else RESULTS / f"datafree{tag(vars(cfg))}.json"
        payload = {"config": {k: v for k, v in vars(cfg).items()
                              if k not in ("from_json", "docs", "figures", "resume", "json", "progress")},
                   "machine": machine_info(torch.device("cpu")), "teachers": [], "records": {}, "results": []}
        if cfg.resume and path.exists():
            old = json.loads(path.read_text())
            payload.update({k: old[k] for k in ("teachers", "records", "results")})
        done = {(r["seed"], r["method"]) for r in payload["results"]}
        data = bd.datasets.load("mnist1d")
        for seed in cfg.seeds:
            todo = [m for m in cfg.methods if (seed, m) not in done]
            if not todo:
                continue
            teacher, info = teacher_for(seed, cfg, data)
            if not any(t["seed"] == seed for t in payload["teachers"]):
                payload["teachers"].append({"seed": seed, **info})
            log(f"seed {seed}: teacher accuracy {100 * info['teacher_accuracy']:.1f}%")
            kinds = sorted({METHODS[m][0] for m in todo if METHODS[m][0] is not None})
            records = {}
            for k in kinds:
                kind, frac = ("spectral-all", 1.0) if k == "joint" else (k, cfg.spectral_fraction)
                records[k] = df.record(teacher, data.train, kind=kind, temperature=cfg.temperature,
                                       spectral_fraction=frac, metadata={"dataset": "mnist1d"})
                p = records[k].save(Path(cfg.cache) / f"record{tag(vars(cfg))}_{k}_seed{seed}.pt")
                payload["records"][k] = records[k].num_values()
                log(f"  record {k}: {records[k].num_values()} numbers, {p.stat().st_size / 1e6:.2f} MB")
            for m in todo:
                row = run_method(m, seed, teacher, records, cfg, data)
                payload["results"].append(row)
                log(f"  {m:<22} acc {100 * row['accuracy']:.1f}% agree {100 * row['agreement']:.1f}%"
                    + (f" class-hit {100 * row['teacher_agrees_with_class']:.0f}% loss {row['loss_start']:.3g}->"
                       f"{row['loss_end']:.3g} ({row['reconstruct_s']:.0f} s)" if "loss_end" in row else "")
                    + f" fit {row['fit_s']:.0f} s")
                write_json(str(path), "datafree.json", payload)
    summary = summarize(payload)
    print(render(summary))
    if cfg.docs:
        docs_json = DOCS_JSON.with_name(f"datafree{tag(payload['config'])}.json")
        print(f"wrote {write_json(str(docs_json), docs_json.name, summary)}")
    folder = Path(cfg.figures) if cfg.figures else (FIGURES if cfg.docs else None)
    if folder is not None:
        for f in figures(summary, folder, payload["config"]["seeds"][0], Path(payload["config"]["cache"])):
            print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
