"""Generalized distillation of privileged information (Lopez-Paz et al., ICLR 2016), section 5.

Usage::

    python benchmarks/privileged.py                     # the table, the kl_weight=1 ablation, the n sweep
    python benchmarks/privileged.py --quick             # smoke run (< 1 min)
    python benchmarks/privileged.py --reps 100          # the paper's 100 repetitions (default 30)
    python benchmarks/privileged.py --from-json benchmarks/results/privileged.json --docs   # tables + figures

Every repetition ``r`` (seed ``r``) draws one problem with
``bd.datasets.privileged_synthetic(experiment, seed=r)`` (``d = 50``, 200 training and 10,000
test triplets, inputs standardized with the training statistics as in the authors' code) and
calls ``bd.distill.generalized_distillation`` once: a **teacher** ``bd.BNN(nn.Linear(d*, 2))``
on ``(x*, y)``, a **student** ``bd.BNN(nn.Linear(50, 2))`` on ``(x, y)`` and a **distilled**
student (same initialization as the student) on ``(x, y)`` with ``PrivilegedKD`` (lambda = T = 1,
the paper's values: pure imitation of the teacher's soft labels on x*, ``teacher_mode="sample"``:
one teacher posterior draw per step, the teacher's posterior predictive in expectation). Prior
``Normal(0, 1)`` on every weight and bias; SVI: Adam lr 0.05 with a cosine decay, 300 epochs of
one full batch (200), ``kl_weight=0.2`` (a cold posterior: the likelihood and the distillation
factor count 5x against the prior; ``--kl-weight``). Accuracy: the posterior predictive's
(64 draws) on the 10,000 test triplets, the teacher on x*. Reported: mean ± standard deviation
over repetitions, in %, as in the paper.

* **table**: the four experiments, experiment 4 in three versions: the paper's text (``text``: a
  random column set per example), the authors' generating code (``code``: one random column set
  per data set, another for the test set) and that code with its commented-out line
  (``code-top3``: x* = the three largest entries of each x), ``--reps`` each;
* **ablation**: experiments 1-3 with ``kl_weight=1`` (the plain ELBO), ``--ablation-reps`` each;
* **sweep**: the distillation gain (distilled - student) against the number of training examples
  ``n`` (``--sweep-n``) for experiments 1 and 3, ``--sweep-reps`` each; for n > 200, batches of
  200 and ``300 * 200 / n`` epochs (300 steps), else one full batch and 300 epochs.

Bar: experiments 1-3 within 2 points of the paper in every column (teacher, student, distilled).
Results are written incrementally (``--json``); ``--resume`` continues a partial file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import bayesdistill as bd
from _common import bar_lines, machine_info, save_figure, table, write_json

ROOT = Path(__file__).resolve().parent.parent
DOCS_JSON = ROOT / "docs" / "results" / "privileged.json"
FIGURES = ROOT / "docs" / "figures"

#: the paper's section 5 numbers (accuracy %, mean ± std over 100 repetitions)
PAPER = {
    "privileged-clean-labels": {"teacher": (96, 0), "student": (88, 1), "distilled": (95, 1)},
    "privileged-clean-features": {"teacher": (90, 1), "student": (68, 1), "distilled": (70, 1)},
    "privileged-relevant-features": {"teacher": (98, 0), "student": (89, 1), "distilled": (97, 1)},
    "privileged-sample-dependent": {"teacher": (96, 2), "student": (55, 3), "distilled": (56, 4)},
    "privileged-sample-dependent-code": {"teacher": (96, 2), "student": (55, 3), "distilled": (56, 4)},
    "privileged-sample-dependent-top3": {"teacher": (96, 2), "student": (55, 3), "distilled": (56, 4)},
}
LABELS = {
    "privileged-clean-labels": "1 clean labels",
    "privileged-clean-features": "2 clean features",
    "privileged-relevant-features": "3 relevant features",
    "privileged-sample-dependent": "4 sample-dependent (paper's text)",
    "privileged-sample-dependent-code": "4 sample-dependent (authors' code)",
    "privileged-sample-dependent-top3": "4 sample-dependent (code, commented line: top 3)",
}
SHORT = {
    "privileged-clean-labels": "1 clean labels",
    "privileged-clean-features": "2 clean features",
    "privileged-relevant-features": "3 relevant features",
    "privileged-sample-dependent": "4 text",
    "privileged-sample-dependent-code": "4 code",
    "privileged-sample-dependent-top3": "4 code, top 3",
}
REPRODUCE = ("privileged-clean-labels", "privileged-clean-features", "privileged-relevant-features")
SWEEP = ("privileged-clean-labels", "privileged-relevant-features")
ROLES = ("teacher", "student", "distilled")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fit_settings(n: int, cfg: argparse.Namespace, kl_weight: float) -> dict[str, Any]:
    batch = min(n, 200)
    epochs = cfg.epochs if n <= 200 else max(1, round(cfg.epochs * 200 / n))
    return dict(epochs=epochs, batch_size=batch, lr=cfg.lr, lr_schedule="cosine", prior_scale=cfg.prior_scale,
                temperature=1.0, imitation=1.0, teacher_mode="sample", num_samples=cfg.samples,
                kl_weight=kl_weight)


def run_one(part: str, name: str, seed: int, n: int, kl_weight: float, cfg: argparse.Namespace) -> dict[str, Any]:
    experiment, variant = bd.datasets.PRIVILEGED_EXPERIMENTS[name]
    data = bd.datasets.privileged_synthetic(experiment, variant=variant, n_train=n, n_test=cfg.n_test, seed=seed)
    t0 = time.perf_counter()
    result = bd.distill.generalized_distillation(data, seed=seed, **fit_settings(n, cfg, kl_weight))
    return {"part": part, "dataset": name, "seed": seed, "n": n, "kl_weight": kl_weight,
            **{f"acc_{r}": a for r, a in result.accuracy.items()},
            **{f"nll_{r}": float(m["nll"]) for r, m in result.metrics.items()},
            "wall_s": time.perf_counter() - t0}


def tasks(cfg: argparse.Namespace) -> list[tuple[str, str, int, int, float]]:
    out = []
    for name in cfg.datasets:
        out += [("table", name, s, 200, cfg.kl_weight) for s in range(cfg.reps)]
    for name in [d for d in cfg.datasets if d in REPRODUCE]:
        out += [("ablation", name, s, 200, 1.0) for s in range(cfg.ablation_reps)]
    for name in [d for d in cfg.datasets if d in SWEEP]:
        for n in cfg.sweep_n:
            out += [("sweep", name, 1000 + s, n, cfg.kl_weight) for s in range(cfg.sweep_reps)]
    return out


# ---------------------------------------------------------------------------------- summaries
def _ms(values: list[float]) -> tuple[float, float]:
    m = statistics.mean(values)
    return m, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict[str, Any]], part: str, reps: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """Mean ± std per data set over the repetitions (seeds below ``reps`` when given)."""
    if reps is not None:
        rows = [r for r in rows if r["part"] != part or r["seed"] < reps]
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["dataset"] for r in rows if r["part"] == part):
        rs = [r for r in rows if r["part"] == part and r["dataset"] == name]
        entry: dict[str, Any] = {"reps": len(rs), "wall_s": sum(r["wall_s"] for r in rs)}
        for role in ROLES:
            m, s = _ms([100 * r[f"acc_{role}"] for r in rs])
            entry[role] = {"mean": m, "std": s}
        gains = [100 * (r["acc_distilled"] - r["acc_student"]) for r in rs]
        m, s = _ms(gains)
        entry["gain"] = {"mean": m, "std": s, "se": s / math.sqrt(len(gains)) if len(gains) > 1 else 0.0}
        out[name] = entry
    return out


def summarize_sweep(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in dict.fromkeys(r["dataset"] for r in rows if r["part"] == "sweep"):
        out[name] = []
        for n in sorted({r["n"] for r in rows if r["part"] == "sweep" and r["dataset"] == name}):
            rs = [r for r in rows if r["part"] == "sweep" and r["dataset"] == name and r["n"] == n]
            entry: dict[str, Any] = {"n": n, "reps": len(rs)}
            for role in ROLES:
                m, s = _ms([100 * r[f"acc_{role}"] for r in rs])
                entry[role] = {"mean": m, "std": s}
            g = [100 * (r["acc_distilled"] - r["acc_student"]) for r in rs]
            m, s = _ms(g)
            entry["gain"] = {"mean": m, "std": s, "se": s / math.sqrt(len(g)) if len(g) > 1 else 0.0}
            out[name].append(entry)
    return out


def check_bars(summary: dict[str, dict[str, Any]]) -> dict[str, tuple[bool, str]]:
    bars = {}
    for name in REPRODUCE:
        if name not in summary:
            continue
        diffs = {r: summary[name][r]["mean"] - PAPER[name][r][0] for r in ROLES}
        ok = all(abs(d) <= 2.0 for d in diffs.values())
        bars[f"{LABELS[name]}: every column within 2 points of the paper"] = (
            ok, ", ".join(f"{r} {d:+.1f}" for r, d in diffs.items()))
    return bars


def summary_payload(payload: dict[str, Any]) -> dict[str, Any]:
    rows = payload["results"]
    cfg = payload["config"]
    table_s = summarize(rows, "table", cfg["reps"])
    return {"config": payload["config"], "machine": payload.get("machine", {}), "paper": PAPER,
            "table": table_s, "ablation": summarize(rows, "ablation", cfg["ablation_reps"]),
            "sweep": summarize_sweep([r for r in rows if r["part"] != "sweep" or r["seed"] < 1000 + cfg["sweep_reps"]]),
            "bars": {k: list(v) for k, v in check_bars(table_s).items()},
            "wall_s": sum(r["wall_s"] for r in rows)}


# ---------------------------------------------------------------------------------- report
def _pm(entry: dict[str, float]) -> str:
    return f"{entry['mean']:.1f} ± {entry['std']:.1f}"


def render(summary: dict[str, Any]) -> str:
    """The markdown tables of a summary (what docs/privileged.md shows)."""
    lines = []
    cfg = summary["config"]
    t = summary["table"]
    if t:
        reps = sorted({e["reps"] for e in t.values()})
        lines.append(f"Test accuracy %, mean ± std over {'/'.join(map(str, reps))} repetitions "
                     f"(kl_weight {cfg['kl_weight']:g}); paper: 100 repetitions.\n")
        body = []
        for name, e in t.items():
            p = summary["paper"][name]
            body.append([LABELS[name], *(_pm(e[r]) for r in ROLES), *(f"{p[r][0]} ± {p[r][1]}" for r in ROLES),
                         f"{e['gain']['mean']:+.1f} ± {e['gain']['se']:.1f}"])
        lines.append(table(body, ["experiment", "teacher", "student", "distilled", "paper teacher", "paper student",
                                  "paper distilled", "gain (± s.e.)"]))
    a = summary["ablation"]
    if a:
        reps = sorted({e["reps"] for e in a.values()})
        lines.append(f"\nThe plain ELBO (kl_weight 1), {'/'.join(map(str, reps))} repetitions:\n")
        lines.append(table([[LABELS[n], *(_pm(e[r]) for r in ROLES), f"{e['gain']['mean']:+.1f} ± {e['gain']['se']:.1f}"]
                            for n, e in a.items()], ["experiment", "teacher", "student", "distilled", "gain (± s.e.)"]))
    s = summary["sweep"]
    if s:
        lines.append("\nGain of the distilled student over the student (points, mean ± s.e.) against the number of "
                     "training examples n:\n")
        ns = sorted({e["n"] for entries in s.values() for e in entries})
        body = []
        for name, entries in s.items():
            by_n = {e["n"]: e for e in entries}
            body.append([LABELS[name], *(f"{by_n[n]['gain']['mean']:+.1f} ± {by_n[n]['gain']['se']:.1f}"
                                         if n in by_n else "" for n in ns)])
        reps = sorted({e["reps"] for entries in s.values() for e in entries})
        lines.append(table(body, ["experiment", *(f"n={n}" for n in ns)]))
        lines.append(f"\n({'/'.join(map(str, reps))} repetitions per n.)")
    lines += bar_lines(summary.get("bars"))
    if "wall_s" in summary:
        lines.append(f"\nWall time: {summary['wall_s'] / 60:.0f} min for all the runs above, one after the other, "
                     f"{cfg.get('threads', 1)} thread (torch.set_num_threads), on a shared 2-core machine.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- figures
def figures(summary: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    t = summary["table"]
    if t:
        fig, ax = plt.subplots(figsize=(9, 3.6))
        names = list(t)
        width = 0.13
        colors = {"teacher": "tab:green", "student": "tab:gray", "distilled": "tab:blue"}
        for i, role in enumerate(ROLES):
            xs = [k + (i - 1) * 2 * width for k in range(len(names))]
            ax.bar([x - width / 2 for x in xs], [t[n][role]["mean"] for n in names], width,
                   yerr=[t[n][role]["std"] for n in names], color=colors[role], label=f"{role} (ours)")
            ax.bar([x + width / 2 for x in xs], [summary["paper"][n][role][0] for n in names], width,
                   yerr=[summary["paper"][n][role][1] for n in names], color=colors[role], alpha=0.35,
                   hatch="//", label=f"{role} (paper)")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([SHORT[n] for n in names], fontsize=8)
        ax.set_ylim(40, 100)
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7, ncol=3, loc="lower left")
        ax.set_title("Generalized distillation, section 5 (ours: Bayesian softmax regression)")
        out.append(save_figure(fig, folder / "privileged_table.png"))
    s = summary["sweep"]
    if s:
        fig, axes = plt.subplots(1, len(s), figsize=(4.6 * len(s), 3.5), squeeze=False)
        for ax, (name, entries) in zip(axes[0], s.items()):
            ns = [e["n"] for e in entries]
            for role, c in (("teacher", "tab:green"), ("student", "tab:gray"), ("distilled", "tab:blue")):
                ax.errorbar(ns, [e[role]["mean"] for e in entries], yerr=[e[role]["std"] for e in entries],
                            marker="o", ms=3, capsize=2, color=c, label=role)
            ax.set_xscale("log")
            ax.set_xlabel("training examples n")
            ax.set_ylabel("test accuracy %")
            ax.set_title(LABELS[name])
            ax2 = ax.twinx()
            ax2.bar(ns, [e["gain"]["mean"] for e in entries], width=[0.25 * n for n in ns], alpha=0.2, color="tab:red")
            ax2.set_ylabel("gain (points)", color="tab:red")
            ax.legend(fontsize=7, loc="lower right")
        out.append(save_figure(fig, folder / "privileged_sweep.png"))
    return out


# ---------------------------------------------------------------------------------- main
def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(PAPER), choices=list(PAPER))
    p.add_argument("--reps", type=int, default=30, help="repetitions per experiment (paper: 100)")
    p.add_argument("--ablation-reps", type=int, default=12)
    p.add_argument("--sweep-reps", type=int, default=8)
    p.add_argument("--sweep-n", type=int, nargs="+", default=[50, 100, 200, 500, 1000, 2000])
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--kl-weight", type=float, default=0.2)
    p.add_argument("--samples", type=int, default=64, help="posterior draws at test time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 repetitions, 30 epochs, 2000 test examples, n in 50 200")
    p.add_argument("--json", default=None, help="default benchmarks/results/privileged.json")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --json and run the rest")
    p.add_argument("--from-json", default=None, help="re-print (and with --docs/--figures, draw) a finished run")
    p.add_argument("--docs", action="store_true", help="write docs/results/privileged.json and the figures")
    p.add_argument("--figures", default=None, help="folder for the figures (default docs/figures with --docs)")
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.reps, cfg.ablation_reps, cfg.sweep_reps = 2, 2, 2
        cfg.epochs, cfg.n_test, cfg.sweep_n = 30, 2000, [50, 200]
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    cfg = parse(argv)
    torch.set_num_threads(cfg.threads)
    if cfg.from_json:
        payload = json.loads(Path(cfg.from_json).read_text())
    else:
        out = Path(cfg.json) if cfg.json else None
        path = out or (Path(__file__).resolve().parent / "results" / "privileged.json")
        rows: list[dict[str, Any]] = []
        if cfg.resume and path.exists():
            rows = json.loads(path.read_text())["results"]
        done = {(r["part"], r["dataset"], r["seed"], r["n"], r["kl_weight"]) for r in rows}
        config = {k: v for k, v in vars(cfg).items() if k not in ("from_json", "docs", "figures", "resume", "json")}
        payload = {"config": config, "machine": machine_info(torch.device("cpu")), "results": rows}
        todo = [t for t in tasks(cfg) if t not in done]
        log(f"{len(todo)} runs ({len(done)} done)")
        for i, (part, name, seed, n, klw) in enumerate(todo, 1):
            row = run_one(part, name, seed, n, klw, cfg)
            rows.append(row)
            log(f"{i}/{len(todo)} {part} {name} seed {seed} n {n} kl {klw:g}: "
                + " ".join(f"{r} {100 * row[f'acc_{r}']:.1f}" for r in ROLES) + f" ({row['wall_s']:.1f} s)")
            if i % 5 == 0 or i == len(todo):
                write_json(str(path), "privileged.json", payload)
    summary = summary_payload(payload)
    print(render(summary))
    if cfg.docs:
        print(f"wrote {write_json(str(DOCS_JSON), DOCS_JSON.name, summary)}")
    folder = Path(cfg.figures) if cfg.figures else (FIGURES if cfg.docs else None)
    if folder is not None:
        for f in figures(summary, folder):
            print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
