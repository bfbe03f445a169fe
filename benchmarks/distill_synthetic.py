"""Bayesian distillation on the synthetic regression of Grabovoy & Strijov (2021).

Usage::

    python benchmarks/distill_synthetic.py --figures       # 5 seeds, the full grid (~14 min on 2 busy cores)
    python benchmarks/distill_synthetic.py --quick         # smoke run: 1 seed, 3 variants, short training
    python benchmarks/distill_synthetic.py --variants plain snr-refit/unit/prior-mean

Setup (the paper's). Data: ``bd.datasets.load("synthetic-regression", seed=s)``: x ~ N(0, I_10),
y = x^T w + 0.1 eps, 900 train / 124 test. Likelihood ``Normal(scale=0.1)`` (the true noise,
fixed), batch size 8, Adam lr 3e-3 everywhere. Per seed s (data seed = training seed = s):

* Teacher [10, 100, 50, 1] (Linear-ReLU-Linear-ReLU-Linear), prior Normal(0, 1), 50 epochs with a
  cosine learning-rate schedule (``--teacher-epochs``, ``--teacher-schedule``).
* Students [10, 10, 10, 1] ("width": units removed, phi only) and [10, 50, 1] ("depth": teacher
  layer 2 removed by psi after phi), 10 epochs, constant lr, test set evaluated after every
  epoch (``eval_samples=32``) and before training (epoch 0). All students of a seed and setting
  start from the same random network (``torch.manual_seed(s)``), so ``init="module"`` variants
  and the plain student share their initial weights.
* ``plain``: prior Normal(0, 1), ``init="module"``.
* Distilled ``<alignment>/<scale>/<init>``:

  - alignment (``ALIGNMENTS``): ``paper`` = criterion random, removal identity, no data, no
    compensation (the paper's experiments); ``snr-perm`` = criterion snr, removal permutation,
    no data; ``snr-refit`` = criterion snr, removal refit, probe data = the teacher's 900
    training inputs, compensation on (what ``bd.align``'s defaults give with ``probe=``);
    ``data-refit`` = the same with criterion data.
  - scale: ``TeacherPosterior(q, plan=plan, scale=...)`` with ``posterior`` (the paper's
    full variant), ``unit`` (the paper's mean-only variant), ``learned`` (empirical Bayes).
  - init: ``prior-mean`` (the aligned teacher means, as the paper's code did) or ``random``
    (``init="module"``: the same random start as the plain student).

  The grid (``default_variants``): the full factorial paper/snr-perm/snr-refit x 3 prior scales x 2
  inits (18), plus data-refit x 3 prior scales at prior-mean init (the criterion ablation; with a
  random init the alignment enters only through the prior means), plus plain: 22 runs per seed
  and setting.

Measured per run: final test MSE and NLL (``bd.evaluate(bnn, test, num_samples=32)``, keys
``mse`` and ``nll``), the per-epoch test log-likelihood ``-eval_nll`` (nats per test point) and
``eval_mse``, the same at epoch 0, and the paper's metric
``S = sum_{epoch=1..E} (loglik_distilled(epoch) - loglik_plain(epoch))`` (positive: the
distilled student's test log-likelihood curve lies above the plain one's). For learned prior
variances the fitted per-tensor prior scales are recorded.

Bar (from the issue): the package's default distilled variant beats the plain student on final
test MSE in every seed, in both settings, by >= 25% on average (mean over seeds of
1 - mse_distilled / mse_plain). ``--default`` names the variant checked (default
``snr-refit/unit/prior-mean``; see docs/distillation.md for why).

Other options: ``--student-schedule cosine`` (the students' lr decays to 0 over their epochs;
the paper's recipe, and the default here, is a constant lr), ``--tag NAME`` (suffix of the
default JSON and figure names), ``--teacher-cache DIR`` (trained teacher posteriors are saved
there and reused; default ``benchmarks/results/synthetic_teachers``), ``--from-json PATH`` (no
training: tables, bar and ``--figures`` from a results file) with ``--plain-from PATH`` (compare
against the plain students of another results file, e.g. constant-lr plain students against
cosine-schedule distilled ones).

Output: a table per setting (mean +- std over seeds, and [min, max] over seeds), JSON at
``benchmarks/results/distill_synthetic[_TAG].json`` and, with ``--figures``, the mean test
log-likelihood and MSE curves in ``docs/figures/synthetic_loglik_{width,depth}[_TAG].png``.
Results and their reading: ``docs/distillation.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import bayesdistill as bd
from _common import bar_text, machine_info, save_figure, table, write_json

ROOT = Path(__file__).resolve().parent.parent
FIG_DIR = ROOT / "docs" / "figures"

NOISE = 0.1
SETTINGS = {"width": [10, 10, 1], "depth": [50, 1]}  # hidden/out sizes after the 10 inputs
TEACHER = [100, 50, 1]

# alignment name -> bd.align keyword arguments ("data" = use the teacher's training inputs)
ALIGNMENTS: dict[str, dict[str, Any]] = {
    "paper": {"criterion": "random", "removal": "identity", "compensation": False, "data": False},
    "snr-perm": {"criterion": "snr", "removal": "permutation", "compensation": False, "data": False},
    "snr-refit": {"criterion": "snr", "removal": "refit", "compensation": True, "data": True},
    "data-refit": {"criterion": "data", "removal": "refit", "compensation": True, "data": True},
}
VARIANCES = ("posterior", "unit", "learned")
INITS = ("prior-mean", "random")
DEFAULT_VARIANT = "snr-refit/unit/prior-mean"
# variants drawn in the figures (besides plain)
FIGURE_VARIANTS = (
    "paper/posterior/prior-mean",  # the paper's full variant (their code initialized at the teacher's means)
    "paper/unit/prior-mean",  # the paper's mean-only variant
    "snr-perm/unit/prior-mean",
    "snr-refit/unit/prior-mean",
    "snr-refit/posterior/prior-mean",
    "snr-refit/posterior/random",  # the library's current defaults with probe data
)


def default_variants() -> list[str]:
    out = ["plain"]
    for a in ("paper", "snr-perm", "snr-refit"):
        for v in VARIANCES:
            for i in INITS:
                out.append(f"{a}/{v}/{i}")
    out += [f"data-refit/{v}/prior-mean" for v in VARIANCES]
    return out


def mlp(sizes: list[int], d_in: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, n in enumerate(sizes):
        layers.append(nn.Linear(d_in, n))
        if k + 1 < len(sizes):
            layers.append(nn.ReLU())
        d_in = n
    return nn.Sequential(*layers)


def likelihood() -> bd.likelihoods.Normal:
    return bd.likelihoods.Normal(scale=NOISE)


def train_teacher(data, seed: int, args) -> tuple[bd.BNN, dict[str, Any]]:
    """Train (or load from ``--teacher-cache``) the teacher of one seed."""
    cache = None
    if args.teacher_cache:
        cache = Path(args.teacher_cache) / (
            f"teacher_s{seed}_e{args.teacher_epochs}_{args.teacher_schedule}_lr{args.lr:g}_b{args.batch_size}.pt")
    t0 = time.perf_counter()
    if cache is not None and cache.exists():
        teacher = bd.BNN(mlp(TEACHER), prior=bd.priors.Normal(0.0, 1.0), likelihood=likelihood(),
                         dataset_size=len(data.train), init=bd.MeanFieldPosterior.load(cache))
    else:
        torch.manual_seed(seed)
        teacher = bd.BNN(mlp(TEACHER), prior=bd.priors.Normal(0.0, 1.0), likelihood=likelihood(),
                         dataset_size=len(data.train))
        bd.fit(teacher, data.train, epochs=args.teacher_epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
               lr_schedule=None if args.teacher_schedule == "constant" else args.teacher_schedule, progress=False)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            teacher.posterior().save(cache)
    scores = bd.evaluate(teacher, data.test, num_samples=32)
    return teacher, {"mse": scores["mse"], "nll": scores["nll"], "time_s": time.perf_counter() - t0,
                     "cached": cache is not None and cache.exists()}


def make_plan(teacher: bd.BNN, student_net: nn.Module, alignment: str, data, seed: int) -> bd.AlignmentPlan:
    kw = dict(ALIGNMENTS[alignment])
    use_data = kw.pop("data")
    return bd.align(teacher, student_net, probe=data.train.tensors[0] if use_data else None, seed=seed, **kw)


def run_student(variant: str, student_net: nn.Module, teacher_q, plan: Optional[bd.AlignmentPlan], data,
                seed: int, args) -> dict[str, Any]:
    if variant == "plain":
        prior: bd.priors.Prior = bd.priors.Normal(0.0, 1.0)
        init = "module"
    else:
        _, scale, init_name = variant.split("/")
        prior = bd.priors.TeacherPosterior(teacher_q, plan=plan, scale=scale)
        init = "prior-mean" if init_name == "prior-mean" else "module"
    bnn = bd.BNN(student_net, prior=prior, likelihood=likelihood(), dataset_size=len(data.train), init=init)
    start = bd.evaluate(bnn, data.test, num_samples=32)
    t0 = time.perf_counter()
    res = bd.fit(bnn, data.train, epochs=args.student_epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                 lr_schedule=None if args.student_schedule == "constant" else args.student_schedule,
                 eval_data=data.test, eval_samples=32, progress=False)
    elapsed = time.perf_counter() - t0
    final = bd.evaluate(bnn, data.test, num_samples=32)
    rec: dict[str, Any] = {
        "mse": final["mse"],
        "nll": final["nll"],
        "loglik_curve": [-start["nll"]] + [-h["eval_nll"] for h in res.history],  # epochs 0..E
        "mse_curve": [start["mse"]] + [h["eval_mse"] for h in res.history],
        "time_s": elapsed,
    }
    if bnn.learn_prior_scale:
        rec["learned_prior_scales"] = {k: float(v.reshape(-1)[0]) for k, v in bnn.prior_scales().items()}
    return rec


def run_seed(seed: int, variants: list[str], settings: list[str], args) -> dict[str, Any]:
    data = bd.datasets.load("synthetic-regression", seed=seed)
    teacher, tinfo = train_teacher(data, seed, args)
    q = teacher.posterior()
    print(f"seed {seed}: teacher test mse {tinfo['mse']:.4f} nll {tinfo['nll']:.3f} ({tinfo['time_s']:.0f} s)",
          flush=True)
    out: dict[str, Any] = {"teacher": tinfo, "settings": {}}
    for setting in settings:
        torch.manual_seed(seed)
        student_net = mlp(SETTINGS[setting])
        plans: dict[str, bd.AlignmentPlan] = {}
        plan_info: dict[str, Any] = {}
        runs: dict[str, Any] = {}
        for variant in variants:
            plan = None
            if variant != "plain":
                alignment = variant.split("/")[0]
                if alignment not in plans:
                    plans[alignment] = make_plan(teacher, student_net, alignment, data, seed)
                    p = plans[alignment]
                    plan_info[alignment] = {
                        "output_error": p.output_error,
                        "removed": [L["teacher"] for L in p.layers if L["removed"]],
                        "residual": [L["residual"] for L in p.layers if L["removed"]],
                    }
                plan = plans[alignment]
            runs[variant] = run_student(variant, student_net, q, plan, data, seed, args)
        base = runs.get("plain")
        compare(runs, base)
        tot = sum(r["time_s"] for r in runs.values())
        print(f"  {setting}: {len(runs)} students in {tot:.0f} s; plain mse {base['mse'] if base else float('nan'):.4f}; "
              + ", ".join(f"{v} {r['mse']:.4f}" for v, r in runs.items() if v in (DEFAULT_VARIANT,)), flush=True)
        out["settings"][setting] = {"plans": plan_info, "runs": runs}
    return out


# ------------------------------------------------------------------------------- summary
def compare(runs: dict[str, Any], base: Optional[dict[str, Any]]) -> None:
    """Add ``S`` and ``rel_improvement`` (1 - mse / mse_plain) of every run against ``base`` (plain)."""
    if base is None:
        return
    for rec in runs.values():
        rec["S"] = sum(a - b for a, b in zip(rec["loglik_curve"][1:], base["loglik_curve"][1:]))
        rec["rel_improvement"] = 1.0 - rec["mse"] / base["mse"]


def use_reference(results: dict[str, Any], reference: dict[str, Any]) -> None:
    """Replace the plain runs of ``results`` by those of ``reference`` (same seeds) and recompare."""
    for seed, res in results.items():
        if seed not in reference:
            raise SystemExit(f"--plain-from: seed {seed} is missing from the reference results")
        for setting, block in res["settings"].items():
            block["runs"]["plain"] = reference[seed]["settings"][setting]["runs"]["plain"]
            compare(block["runs"], block["runs"]["plain"])

def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(results: dict[str, Any], variants: list[str], settings: list[str]) -> dict[str, Any]:
    seeds = sorted(results, key=int)
    summary: dict[str, Any] = {}
    for setting in settings:
        rows = {}
        for v in variants:
            recs = [results[s]["settings"][setting]["runs"][v] for s in seeds]
            row = {
                "mse": _stats([r["mse"] for r in recs]),
                "nll": _stats([r["nll"] for r in recs]),
                "mse_epoch0": _stats([r["mse_curve"][0] for r in recs]),
                "loglik_curve_mean": [statistics.fmean(c) for c in zip(*(r["loglik_curve"] for r in recs))],
                "mse_curve_mean": [statistics.fmean(c) for c in zip(*(r["mse_curve"] for r in recs))],
            }
            if "S" in recs[0]:
                row["S"] = _stats([r["S"] for r in recs])
                row["rel_improvement"] = _stats([r["rel_improvement"] for r in recs])
                row["wins"] = sum(r["rel_improvement"] > 0 for r in recs)
            rows[v] = row
        summary[setting] = rows
    return summary


def _fmt(st: dict[str, float], digits: int = 4) -> str:
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f} [{st['min']:.{digits}f}, {st['max']:.{digits}f}]"


def print_tables(results: dict[str, Any], summary: dict[str, Any], variants: list[str]) -> None:
    seeds = sorted(results, key=int)
    t = [results[s]["teacher"]["mse"] for s in seeds]
    print(f"\nteacher [10,100,50,1] test MSE: {_fmt(_stats(t))} over seeds {', '.join(seeds)}")
    for setting, rows in summary.items():
        n = len(seeds)
        print(f"\n{setting}: student {[10] + SETTINGS[setting]}, mean ± std [min, max] over {n} seeds")
        body = []
        for v in variants:
            r = rows[v]
            body.append([
                v, _fmt(r["mse"]), f"{r['mse_epoch0']['mean']:.3f}",
                _fmt(r["S"], 1) if "S" in r else "-",
                (f"{100 * r['rel_improvement']['mean']:+.0f}% [{100 * r['rel_improvement']['min']:+.0f}, "
                 f"{100 * r['rel_improvement']['max']:+.0f}]") if "rel_improvement" in r else "-",
                f"{r['wins']}/{n}" if "wins" in r else "-",
            ])
        print(table(body, ["variant", "final test MSE", "MSE ep0", "S (nats)", "MSE gain vs plain", "wins"]))


def check_bar(summary: dict[str, Any], variant: str, n_seeds: int) -> dict[str, Any]:
    verdict: dict[str, Any] = {"variant": variant}
    ok = True
    for setting, rows in summary.items():
        r = rows.get(variant)
        if r is None or "wins" not in r:
            verdict[setting] = None
            ok = False
            continue
        every = r["wins"] == n_seeds
        avg = r["rel_improvement"]["mean"] >= 0.25
        verdict[setting] = {"wins": r["wins"], "mean_gain": r["rel_improvement"]["mean"],
                            "min_gain": r["rel_improvement"]["min"], "every_seed": every, "mean_ge_25pct": avg}
        ok = ok and every and avg
    verdict["met"] = ok
    return verdict


def report_bar(bar: dict[str, Any], settings: list[str], n_seeds: int) -> None:
    print(f"\nbar (default {bar['variant']}: beats plain on final test MSE in every seed, both settings, "
          f">= 25% on average): {bar_text(bar['met'])}")
    for setting in settings:
        b = bar.get(setting)
        if b:
            print(f"  {setting}: wins {b['wins']}/{n_seeds}, mean gain {100 * b['mean_gain']:+.1f}%, "
                  f"worst seed {100 * b['min_gain']:+.1f}%")


def plot(summary: dict[str, Any], out_dir: Path, tag: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for setting, rows in summary.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
        names = ["plain"] + [v for v in FIGURE_VARIANTS if v in rows]
        for v in names:
            r = rows[v]
            ep = list(range(len(r["loglik_curve_mean"])))
            style = dict(color="black", lw=2.2) if v == "plain" else dict(lw=1.5)
            axes[0].plot(ep, r["loglik_curve_mean"], marker="o", ms=3, label=v, **style)
            axes[1].plot(ep, r["mse_curve_mean"], marker="o", ms=3, label=v, **style)
        axes[0].set_ylim(-2.0, 1.0)
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("test log-likelihood (nats / point), mean over seeds")
        axes[0].axhline(0.5 * math.log(1 / (2 * math.pi * NOISE**2)) - 0.5, color="grey", ls=":", lw=1)
        axes[1].set_yscale("log")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("test MSE, mean over seeds")
        axes[1].axhline(NOISE**2, color="grey", ls=":", lw=1)
        axes[0].set_title(f"{setting}: student {[10] + SETTINGS[setting]} (y clipped at -2)", fontsize=9)
        axes[1].set_title("dotted: noise floor (true-model values)", fontsize=9)
        axes[1].legend(fontsize=7, loc="upper right")
        path = save_figure(fig, out_dir / f"synthetic_loglik_{setting}{'_' + tag if tag else ''}.png", dpi=90)
        paths.append(path)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--variants", nargs="+", default=None, help="default: the grid (see the module docstring)")
    ap.add_argument("--default", default=DEFAULT_VARIANT, help="the variant checked against the bar")
    ap.add_argument("--teacher-epochs", type=int, default=50)
    ap.add_argument("--teacher-schedule", default="cosine", choices=["cosine", "constant"])
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--student-schedule", default="constant", choices=["constant", "cosine"],
                    help="students' learning-rate schedule (the paper: constant)")
    ap.add_argument("--tag", default="", help="suffix of the default JSON and figure names, e.g. 'cosine'")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 variants, 5/2 epochs (smoke run)")
    ap.add_argument("--figures", action="store_true", help="write docs/figures/synthetic_loglik_*.png")
    ap.add_argument("--json", default=None)
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="no training: print the tables (and --figures) from a results JSON of this script")
    ap.add_argument("--plain-from", default=None, metavar="PATH",
                    help="with --from-json: take the plain student from another results JSON (same seeds), "
                         "e.g. plain with a constant lr against distilled students with a cosine schedule")
    ap.add_argument("--teacher-cache", default=str(Path(__file__).resolve().parent / "results" / "synthetic_teachers"),
                    help="folder for trained teacher posteriors (reused by later runs); '' disables")
    args = ap.parse_args(argv)
    if args.from_json:
        import json

        with open(args.from_json) as fh:
            payload = json.load(fh)
        variants, settings = payload["variants"], list(next(iter(payload["results"].values()))["settings"])
        if args.plain_from:
            with open(args.plain_from) as fh:
                ref = json.load(fh)
            use_reference(payload["results"], ref["results"])
            print(f"plain student from {args.plain_from}: {ref['command']}")
        summary = summarize(payload["results"], variants, settings)
        print(f"from {args.from_json}: {payload['command']}")
        print_tables(payload["results"], summary, variants)
        report_bar(check_bar(summary, args.default, len(payload["results"])), settings, len(payload["results"]))
        if args.figures:
            for p in plot(summary, FIG_DIR, args.tag or payload["config"].get("tag", "")):
                print(f"wrote {p.relative_to(ROOT)}")
        return 0
    torch.set_num_threads(args.threads)

    variants = args.variants or default_variants()
    if args.quick:
        args.seeds, args.teacher_epochs, args.student_epochs = args.seeds[:1], 5, 2
        variants = args.variants or ["plain", "paper/posterior/prior-mean", DEFAULT_VARIANT]
    if "plain" not in variants:
        variants = ["plain"] + variants
    for v in variants:
        if v != "plain":
            parts = v.split("/")
            if len(parts) != 3 or parts[0] not in ALIGNMENTS or parts[1] not in VARIANCES or parts[2] not in INITS:
                ap.error(f"unknown variant {v!r}: use plain or <{'|'.join(ALIGNMENTS)}>/<{'|'.join(VARIANCES)}>/"
                         f"<{'|'.join(INITS)}>")

    payload: dict[str, Any] = {
        "machine": machine_info(torch.device("cpu")),
        "command": " ".join(["python", "benchmarks/distill_synthetic.py"] + (argv if argv is not None else sys.argv[1:])),
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "variants": variants,
        "alignments": ALIGNMENTS,
        "results": {},
    }
    json_name = f"distill_synthetic{'_' + args.tag if args.tag else ''}.json"
    t0 = time.perf_counter()
    for seed in args.seeds:
        payload["results"][str(seed)] = run_seed(seed, variants, args.settings, args)
        write_json(args.json, json_name, payload)  # partial results survive an interruption
    payload["summary"] = summarize(payload["results"], variants, args.settings)
    payload["bar"] = check_bar(payload["summary"], args.default, len(args.seeds))
    payload["total_time_s"] = time.perf_counter() - t0
    print_tables(payload["results"], payload["summary"], variants)
    report_bar(payload["bar"], args.settings, len(args.seeds))
    if args.figures:
        for p in plot(payload["summary"], FIG_DIR, args.tag):
            print(f"wrote {p.relative_to(ROOT)}")
    out = write_json(args.json, json_name, payload)
    print(f"wrote {out} ({payload['total_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
