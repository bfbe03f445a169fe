"""Does the student know what it does not know? Uncertainty transfer from a Bayesian teacher (MNIST-1D).

Usage::

    python benchmarks/uncertainty.py                     # seeds 0 1 2 (about 10 min on one core)
    python benchmarks/uncertainty.py --workers 2         # seeds in parallel processes
    python benchmarks/uncertainty.py --quick             # smoke run (about a minute)
    python benchmarks/uncertainty.py --from-json benchmarks/results/uncertainty.json   # re-print

Data: ``bd.datasets.ood("mnist1d", kind, held_out=(7, 8, 9), seed=seed)`` for every MNIST-1D kind
(held-out-classes, reversed, phase-shuffled, scaled x5, noise). Every model is trained on the
in-distribution digits 0..6 only (relabelled 0..6); its in-distribution test set is the 704
test sequences of those digits, and each kind gives the OOD inputs scored against them.

Per seed:

* **Teacher**: ``cnn-deep`` (7 outputs) on all 2796 in-distribution training sequences with the
  package's teacher recipe (the command line's ``TEACHER_DEFAULTS``, copied here so that the
  benchmark does not import the CLI): 100 epochs, Adam lr 3e-3, cosine, batch 128, prior
  ``Normal(0, 1)``, ``kl_weight=0.5``. Cached in ``--cache``.
* **Students** ``cnn-small`` (7 outputs) on a class-stratified 10% of the in-distribution
  training set (280 sequences, ``train_fraction=0.1``, a different subset per seed), 150 epochs,
  batch 64, Adam lr 3e-3, cosine, ``kl_weight=0.5`` (the recipe of docs/distillation-mnist1d.md):

  - ``plain``: Bayesian, prior ``Normal(0, 1)``, PyTorch initialization;
  - ``teacher prior``: ``bd.align(teacher, cnn-small, probe=<the teacher's 2796 training inputs>)``
    (snr, compensation) and ``bd.student_from_teacher(teacher, net, plan=plan)`` (prior
    ``TeacherPosterior(scale="unit")``, start at the aligned means);
  - ``kd``: the plain Bayesian student with ``bd.distill.KD(teacher, temperature=4, weight=0.9)``
    (the teacher's posterior-mean network) on the 280 labelled sequences only;
  - ``kd +T``: the same with a transfer set of generated MNIST-1D inputs of the kept digits
    (``bd.datasets.mnist1d_samples(10000, seed=1000 + seed, return_labels=True)``, digits 7-9
    dropped: about 7000 sequences);
  - ``kd sample +T``: ``KD(..., teacher_mode="sample")``, one teacher draw per step;
  - ``pkd +T`` (the knob): ``PredictiveKD(teacher, temperature=4, weight=0.9, num_samples=8)``
    (defined below; it was measured and not kept in the package): KD against the teacher's
    posterior predictive, averaged over 8 fresh draws per step; a one-factor change of ``kd +T``;
  - ``prior + kd +T`` / ``prior + pkd +T``: the teacher-prior student with ``kd +T``'s / ``pkd +T``'s
    term and transfer set (the knob on the strongest student);
  - ``deterministic``: a plain ``cnn-small`` ``nn.Module`` (a point estimate), Adam lr 3e-3,
    cosine, batch 64, 150 epochs on cross-entropy.

``teacher mean net``: the teacher's posterior-mean network evaluated as a point estimate (no
training; how much of the teacher's OOD detection is the Bayesian average).

Metrics (in-distribution test set, ``--samples`` 32 posterior draws, seed = the run's seed):
accuracy, NLL (nats), ECE (15 bins); ``bd.diagnostics.ood_detection`` for each OOD kind:
AUROC and AUPR (OOD positive) of the predictive entropy, the mutual information and the max
probability; ``bd.diagnostics.selective_prediction`` (max probability): area under the
accuracy-coverage curve, e-AURC, accuracy at 90% coverage. "kept" = the fraction of the
teacher's above-chance AUROC a student keeps, (AUROC_s - 0.5) / (AUROC_t - 0.5), of the mean
AUROC over the five kinds; for the selective area, area_s / area_t.

The knob's verdict: ``PredictiveKD`` is kept only if, for both pairs (``pkd +T`` vs ``kd +T``,
``prior + pkd +T`` vs ``prior + kd +T``), paired by seed, its mean AUROC over kinds is higher on
every seed (entropy or mutual information) and its mean accuracy is not lower by more than the
seed noise (the std over seeds of the paired accuracy difference).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

import bayesdistill as bd
from bayesdistill.diagnostics import classification_metrics, ood_detection, selective_prediction
from bayesdistill.distill import DistillTerm
from bayesdistill.infer import Batch
from _common import RESULTS_DIR, machine_info, table, write_json

ROOT = Path(__file__).resolve().parent.parent
FIG_DIR = ROOT / "docs" / "figures"

#: the package's teacher recipe (the command line's TEACHER_DEFAULTS), copied: benchmarks use the library only
TEACHER = {"epochs": 100, "lr": 3e-3, "batch_size": 128, "prior_scale": 1.0, "lr_schedule": "cosine",
           "kl_weight": 0.5}
HELD_OUT = (7, 8, 9)
KINDS = ["held-out-classes", "reversed", "phase-shuffled", "scaled", "noise"]
SCORES = ["entropy", "mutual_information", "max_probability"]
SHORT = {"entropy": "H", "mutual_information": "MI", "max_probability": "maxp"}
MODELS = ["teacher", "teacher mean net", "plain", "teacher prior", "kd", "kd +T", "kd sample +T", "pkd +T", "prior + kd +T",
          "prior + pkd +T", "deterministic"]
#: the knob against its one-factor baseline: (baseline, with the knob)
KNOB_PAIRS = [("kd +T", "pkd +T"), ("prior + kd +T", "prior + pkd +T")]
STUDENTS = MODELS[2:]


class PredictiveKD(DistillTerm):
    r"""KD against the teacher's tempered posterior predictive (the knob; not kept in the package).

    log f(x; w) = -T^2 KL(p̄_T(. | x) || softmax(z_s(x; w) / T)) with
    p̄_T = (1/S) sum_s softmax(z_t(x; w_s) / T) over S fresh teacher draws per step, the
    likelihood scaled by 1 - a (as :class:`bayesdistill.distill.KD`, whose target is the
    posterior-mean network instead). The reference output is log p̄_T ``[B, C]``.
    """

    def __init__(self, teacher: bd.BNN, temperature: float = 4.0, weight: float = 0.9, num_samples: int = 8):
        if not (0.0 <= weight <= 1.0 and temperature > 0 and int(num_samples) >= 1):
            raise ValueError(f"PredictiveKD: weight in [0, 1], temperature > 0, num_samples >= 1; got "
                             f"{weight}, {temperature}, {num_samples}")
        super().__init__(teacher, float(weight), "predictive_kd", "mean")
        self.temperature, self.num_samples = float(temperature), int(num_samples)

    @property
    def likelihood_weight(self) -> float:  # type: ignore[override]
        return 1.0 - self.weight

    def reference_key(self):
        return "predictive", id(self.teacher_features.teacher), self.num_samples, self.temperature

    def reference_paths(self) -> list[str]:
        return []

    @torch.no_grad()
    def reference(self, batch: Batch, paths) -> tuple[torch.Tensor, dict]:
        t, T = self.teacher_features.teacher, self.temperature
        was = t.training
        t.eval()
        try:
            out = t.outputs(batch.x, t.sample_weights(self.num_samples))  # [S, B, C], global RNG (seeded by fit)
            log_p = torch.logsumexp(F.log_softmax(out / T, dim=-1), dim=0) - math.log(self.num_samples)
        finally:
            t.train(was)
        return log_p, {}

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> torch.Tensor:
        T = self.temperature
        log_p_s = F.log_softmax(s_out / T, dim=-1)
        return -(T * T) * (t_out.exp() * (t_out - log_p_s)).sum(-1)


class MeanNet(torch.nn.Module):
    """A BNN's posterior-mean network as a point estimate (``bnn(x)``): what the teacher knows
    without the Bayesian average."""

    def __init__(self, bnn: bd.BNN):
        super().__init__()
        self.bnn = bnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bnn(x)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(name: str, data: bd.datasets.DatasetBundle, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return bd.models.build(name, data.input_shape, data.num_classes)


# ---------------------------------------------------------------------------------- training
def train_teacher(seed: int, data: bd.datasets.DatasetBundle, cfg: argparse.Namespace) -> tuple[bd.BNN, float]:
    d = TEACHER
    net = build("cnn-deep", data, seed)
    n = len(data.train)
    cache = (Path(cfg.cache) / f"teacher_cnn-deep_in{''.join(map(str, data.info['classes']))}_seed{seed}"
             f"_ep{cfg.teacher_epochs}.pt") if cfg.cache else None
    if cache is not None and cache.exists():
        q = bd.MeanFieldPosterior.load(cache)
        return bd.BNN(net, prior=bd.priors.Normal(scale=d["prior_scale"]), dataset_size=n, init=q), \
            float(q.metadata.get("fit_s") or 0.0)
    teacher = bd.BNN(net, prior=bd.priors.Normal(scale=d["prior_scale"]), dataset_size=n)
    t0 = time.perf_counter()
    bd.fit(teacher, data.train, epochs=cfg.teacher_epochs, lr=d["lr"], lr_schedule=d["lr_schedule"],
           batch_size=d["batch_size"], kl_weight=d["kl_weight"], seed=seed, progress=False)
    fit_s = time.perf_counter() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        q = teacher.posterior()
        q.metadata = {**(q.metadata or {}), "fit_s": fit_s, "seed": seed, "epochs": cfg.teacher_epochs}
        q.save(cache)
    return teacher, fit_s


def transfer_set(seed: int, kept: tuple[int, ...], n: int) -> torch.Tensor:
    """Generated MNIST-1D inputs of the kept digits only (the held-out digits would leak the OOD classes)."""
    x, y = bd.datasets.mnist1d_samples(n, seed=1000 + seed, return_labels=True)
    return x[torch.isin(y, torch.tensor(kept))].contiguous()


def train_student(variant: str, seed: int, small: bd.datasets.DatasetBundle, teacher: bd.BNN, plan: Any,
                  x_transfer: torch.Tensor, cfg: argparse.Namespace) -> Any:
    n = len(small.train)
    net = build("cnn-small", small, seed)
    if variant == "deterministic":
        return train_deterministic(net, small, seed, cfg)
    if variant.startswith(("teacher prior", "prior +")):
        student = bd.student_from_teacher(teacher, net, plan=plan, dataset_size=n)
    else:
        student = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), dataset_size=n)
    terms: list[Any] = []
    transfer = None
    method = variant.removeprefix("prior + ")
    if method.startswith("kd"):
        mode = "sample" if "sample" in method else "mean"
        terms = [bd.distill.KD(teacher, temperature=cfg.temperature, weight=cfg.kd_weight, teacher_mode=mode)]
    elif method.startswith("pkd"):
        terms = [PredictiveKD(teacher, temperature=cfg.temperature, weight=cfg.kd_weight,
                              num_samples=cfg.teacher_draws)]
    if variant.endswith("+T"):
        transfer = x_transfer
    bd.fit(student, small.train, epochs=cfg.student_epochs, lr=cfg.lr, lr_schedule="cosine",
           batch_size=cfg.student_batch, kl_weight=0.5, seed=seed, progress=False, distill=terms, transfer=transfer)
    return student


def train_deterministic(net: torch.nn.Module, small: bd.datasets.DatasetBundle, seed: int,
                        cfg: argparse.Namespace) -> torch.nn.Module:
    """A point estimate: Adam on the cross-entropy, the students' epochs, batch, lr and cosine schedule."""
    x, y = small.tensors("train")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps = cfg.student_epochs * math.ceil(len(x) / cfg.student_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    net.train()
    for _ in range(cfg.student_epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), cfg.student_batch):
            idx = perm[i:i + cfg.student_batch]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


# ---------------------------------------------------------------------------------- evaluation
def basic_metrics(model: Any, test, samples: int, seed: int) -> dict[str, float]:
    if isinstance(model, bd.BNN):
        m = bd.evaluate(model, test, num_samples=samples, seed=seed)
    else:
        x, y = test.tensors
        with torch.no_grad():
            m = classification_metrics(model(x).unsqueeze(0), y)
    return {k: m[k] for k in ("accuracy", "nll", "ece")}


def evaluate_model(name: str, model: Any, sets: dict[str, Any], cfg: argparse.Namespace, seed: int,
                   keep_results: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    test = next(iter(sets.values())).data.test
    out: dict[str, Any] = basic_metrics(model, test, cfg.samples, seed)
    sel = selective_prediction(model, test, num_samples=cfg.samples, seed=seed, name=name)
    out["selective"] = sel.to_dict()
    out["ood"] = {}
    objects: dict[str, Any] = {"selective": sel, "ood": {}}
    for kind, s in sets.items():
        res = ood_detection(model, test, s.ood, num_samples=cfg.samples, seed=seed, scores=SCORES, name=name)
        out["ood"][kind] = res.to_dict()
        if keep_results:
            objects["ood"][kind] = res
    return out, objects


def mean_auroc(entry: dict[str, Any], score: str, kinds: list[str]) -> float:
    return statistics.fmean(entry["ood"][k]["scores"][score]["auroc"] for k in kinds)


# ---------------------------------------------------------------------------------- one seed
def run_seed(seed: int, cfg: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    t_seed = time.perf_counter()
    sets = {kind: bd.datasets.ood("mnist1d", kind, held_out=HELD_OUT, seed=seed, factor=cfg.factor)
            for kind in cfg.kinds}
    full = next(iter(sets.values())).data
    small = bd.datasets.ood("mnist1d", "reversed", held_out=HELD_OUT, seed=seed,
                            train_fraction=cfg.fraction).data
    kept = tuple(full.info["classes"])
    teacher, fit_s = train_teacher(seed, full, cfg)
    log(f"seed {seed}: teacher trained ({fit_s:.0f} s)")
    x_probe, _ = full.tensors("train")
    plan = None
    if any(m.startswith(("teacher prior", "prior +")) for m in cfg.models):
        plan = bd.align(teacher, build("cnn-small", full, seed), probe=x_probe, max_probe=len(x_probe), seed=seed)
    x_transfer = transfer_set(seed, kept, cfg.transfer) if any(m.endswith("+T") for m in cfg.models) else None
    figures = cfg.figures and seed == cfg.seeds[0]
    results: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for name in cfg.models:
        t0 = time.perf_counter()
        if name == "teacher":
            model, train_s = teacher, fit_s
        elif name == "teacher mean net":
            model, train_s = MeanNet(teacher), 0.0
        else:
            model = train_student(name, seed, small, teacher, plan, x_transfer, cfg)
            train_s = time.perf_counter() - t0
        entry, objs = evaluate_model(name, model, sets, cfg, seed, keep_results=figures)
        entry["fit_s"] = train_s
        results[name] = entry
        objects[name] = objs
        aurocs = " ".join(f"{SHORT[s]} {mean_auroc(entry, s, cfg.kinds):.3f}" for s in SCORES)
        log(f"seed {seed}: {name:<16} acc {entry['accuracy']:.3f} nll {entry['nll']:.3f} ece {entry['ece']:.3f} "
            f"| mean AUROC {aurocs} | sel. area {entry['selective']['area_accuracy']:.3f} ({train_s:.0f} s)")
    if figures:
        draw_figures(objects, cfg)
    return {"seed": seed, "n_train_teacher": len(full.train), "n_train_student": len(small.train),
            "n_test": len(full.test), "n_ood": {k: len(s.ood) for k, s in sets.items()},
            "n_transfer": 0 if x_transfer is None else len(x_transfer),
            "descriptions": {k: s.description for k, s in sets.items()}, "models": results,
            "seconds": time.perf_counter() - t_seed}


def draw_figures(objects: dict[str, Any], cfg: argparse.Namespace) -> None:
    plots = bd.plots
    sel = {name: o["selective"] for name, o in objects.items()}
    plots.save(plots.selective(sel, title=f"selective prediction on the in-distribution test set (seed "
                                           f"{cfg.seeds[0]}, ranked by max probability)"),
                FIG_DIR / "uncertainty_selective.png", dpi=100)
    if "teacher" in objects and "held-out-classes" in objects["teacher"]["ood"]:
        plots.save(plots.ood(objects["teacher"]["ood"]["held-out-classes"],
                              title="teacher: held-out digits 7-9 vs in-distribution digits 0-6"),
                    FIG_DIR / "uncertainty_teacher_heldout.png", dpi=100)
    from matplotlib.figure import Figure

    kinds = [k for k in cfg.kinds if all(k in o["ood"] for o in objects.values())]
    fig = Figure(figsize=(4.2 * len(kinds), 4.2), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        plots.roc({name: o["ood"][kind] for name, o in objects.items()}, score="entropy",
                  title=f"{kind}: predictive entropy", ax=ax)
    plots.save(fig, FIG_DIR / "uncertainty_roc_entropy.png", dpi=100)


# ---------------------------------------------------------------------------------- reporting
def ms(values: list[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(m)} ± {fmt.format(s)}"


def kept_fraction(student: float, teacher: float) -> float:
    return (student - 0.5) / (teacher - 0.5) if abs(teacher - 0.5) > 1e-9 else float("nan")


def report(results: list[dict[str, Any]], cfg: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    seeds = [r["seed"] for r in results]
    kinds = [k for k in KINDS if all(k in m["ood"] for r in results for m in r["models"].values())]
    models = [m for m in MODELS if all(m in r["models"] for r in results)]
    lines = [f"In distribution: MNIST-1D digits 0-6 (teacher {results[0]['n_train_teacher']} training sequences, "
             f"students {results[0]['n_train_student']}), test {results[0]['n_test']} sequences; seeds {seeds}; "
             f"OOD kinds {kinds}; {cfg.samples} posterior draws per evaluation.",
             "Mean ± std over seeds; AUROC = mean over the OOD kinds; kept = (AUROC - 0.5) / (teacher AUROC - 0.5) "
             "per seed; sel. area = area under the accuracy-coverage curve (max probability), kept = area / teacher's."]
    summary: dict[str, Any] = {}
    rows = []
    for name in models:
        per = [r["models"][name] for r in results]
        tea = [r["models"]["teacher"] for r in results] if "teacher" in models else None
        auc = {s: [mean_auroc(p, s, kinds) for p in per] for s in SCORES}
        kept = {s: ([kept_fraction(a, mean_auroc(t, s, kinds)) for a, t in zip(auc[s], tea)] if tea else [])
                for s in SCORES}
        area = [p["selective"]["area_accuracy"] for p in per]
        area_kept = [a / t["selective"]["area_accuracy"] for a, t in zip(area, tea)] if tea else []
        eaurc = [p["selective"]["e_aurc"] for p in per]
        acc90 = [p["selective"]["accuracy_at"]["0.9"] for p in per]
        summary[name] = {
            "accuracy": [p["accuracy"] for p in per], "nll": [p["nll"] for p in per], "ece": [p["ece"] for p in per],
            "mean_auroc": auc, "kept_auroc": kept, "selective_area": area, "kept_selective_area": area_kept,
            "e_aurc": eaurc, "accuracy_at_0.9": acc90,
            "auroc": {k: {s: [p["ood"][k]["scores"][s]["auroc"] for p in per] for s in SCORES} for k in kinds},
            "aupr": {k: {s: [p["ood"][k]["scores"][s]["aupr"] for p in per] for s in SCORES} for k in kinds},
        }
        rows.append([name, ms([100 * p["accuracy"] for p in per], "{:.1f}"), ms([p["nll"] for p in per]),
                     ms([p["ece"] for p in per])]
                    + [ms(auc[s]) for s in SCORES]
                    + [ms(kept["entropy"], "{:.2f}") if name != "teacher" else "1",
                       ms(kept["mutual_information"], "{:.2f}") if name != "teacher" else "1"]
                    + [ms(area), ms(area_kept, "{:.3f}") if name != "teacher" else "1", ms(eaurc, "{:.4f}"),
                       ms([100 * a for a in acc90], "{:.1f}")])
    lines.append("\n" + table(rows, ["model", "acc %", "NLL", "ECE", "AUROC H", "AUROC MI", "AUROC maxp",
                                     "kept H", "kept MI", "sel. area", "kept area", "e-AURC", "acc@90% cov."]))
    for score in SCORES:
        rows = []
        for name in models:
            rows.append([name] + [ms(summary[name]["auroc"][k][score]) for k in kinds])
        lines.append(f"\nAUROC of the {score.replace('_', ' ')} per OOD kind (OOD positive; 0.5 = chance)")
        lines.append(table(rows, ["model"] + kinds))
    rows = []
    for name in models:
        rows.append([name] + [ms(summary[name]["aupr"][k]["entropy"]) for k in kinds])
    lines.append("\nAUPR of the predictive entropy per OOD kind (OOD positive; chance = the OOD fraction: "
                 + ", ".join(f"{k} {results[0]['n_ood'][k] / (results[0]['n_ood'][k] + results[0]['n_test']):.2f}"
                             for k in kinds) + ")")
    lines.append(table(rows, ["model"] + kinds))
    verdict = knob_verdict(results, kinds)
    if verdict:
        lines.append("\n" + verdict["text"])
        summary["knob"] = {k: v for k, v in verdict.items() if k != "text"}
    return "\n".join(lines), summary


def knob_verdict(results: list[dict[str, Any]], kinds: list[str]) -> Optional[dict[str, Any]]:
    """The knob against its baseline, paired by seed, for every pair whose both models ran."""
    pairs = [(b, k) for b, k in KNOB_PAIRS if all(b in r["models"] and k in r["models"] for r in results)]
    if not pairs:
        return None
    texts, out, keep_all = [], {}, True
    for base, knob in pairs:
        rows, d_acc, d_auc = [], [], {s: [] for s in SCORES}
        for r in results:
            b, k = r["models"][base], r["models"][knob]
            d_acc.append(k["accuracy"] - b["accuracy"])
            for s in SCORES:
                d_auc[s].append(mean_auroc(k, s, kinds) - mean_auroc(b, s, kinds))
            rows.append([r["seed"], f"{100 * d_acc[-1]:+.1f}"] + [f"{d_auc[s][-1]:+.3f}" for s in SCORES]
                        + [f"{k['nll'] - b['nll']:+.3f}", f"{k['selective']['area_accuracy'] - b['selective']['area_accuracy']:+.4f}"])
        noise = statistics.stdev(d_acc) if len(d_acc) > 1 else 0.0
        better = {s: all(d > 0 for d in d_auc[s]) for s in SCORES}
        acc_ok = statistics.fmean(d_acc) >= -noise
        keep = (better["entropy"] or better["mutual_information"]) and acc_ok
        keep_all &= keep
        texts.append(
            f"The knob: {knob} - {base}, per seed (accuracy points; mean AUROC over kinds; NLL; selective area)\n"
            + table(rows, ["seed", "Δ acc", "Δ AUROC H", "Δ AUROC MI", "Δ AUROC maxp", "Δ NLL", "Δ sel. area"])
            + f"\nmean Δ acc {100 * statistics.fmean(d_acc):+.1f} points (paired std {100 * noise:.1f}); "
            + ", ".join(f"Δ AUROC {SHORT[s]} {statistics.fmean(d_auc[s]):+.3f} ± {statistics.stdev(d_auc[s]) if len(d_auc[s]) > 1 else 0.0:.3f} "
                        f"({'higher on every seed' if better[s] else 'not higher on every seed'})" for s in SCORES)
            + f"\n{knob} vs {base}: {'improves' if keep else 'does not improve'}")
        out[f"{knob} - {base}"] = {"delta_accuracy": d_acc, "delta_mean_auroc": d_auc, "keep": keep}
    texts.append(f"verdict: {'KEEP' if keep_all else 'DO NOT KEEP'} PredictiveKD (rule, for every pair: AUROC H or MI "
                 "higher on every seed and mean Δ acc >= -paired std)")
    return {"text": "\n\n".join(texts), "pairs": out, "keep": keep_all}


# ---------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="smoke run: seed 0, few epochs, 4 draws, no cache")
    p.add_argument("--json", default=str(RESULTS_DIR / "uncertainty.json"), help="where to write the results")
    p.add_argument("--workers", type=int, default=1, help="seeds run in this many processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--teacher-epochs", type=int, default=TEACHER["epochs"])
    p.add_argument("--student-epochs", type=int, default=150)
    p.add_argument("--student-batch", type=int, default=64)
    p.add_argument("--fraction", type=float, default=0.1, help="the students' share of the in-distribution training set")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--temperature", type=float, default=4.0, help="KD and PredictiveKD temperature")
    p.add_argument("--kd-weight", type=float, default=0.9, help="KD and PredictiveKD weight a")
    p.add_argument("--teacher-draws", type=int, default=8, help="PredictiveKD: teacher draws per step")
    p.add_argument("--transfer", type=int, default=10000, help="generated MNIST-1D inputs (before dropping digits 7-9)")
    p.add_argument("--factor", type=float, default=5.0, help="amplitude factor of the 'scaled' OOD kind")
    p.add_argument("--samples", type=int, default=32, help="posterior draws per evaluation")
    p.add_argument("--models", nargs="*", default=MODELS, choices=MODELS, metavar="MODEL")
    p.add_argument("--kinds", nargs="*", default=KINDS, choices=KINDS, metavar="KIND")
    p.add_argument("--cache", default=str(RESULTS_DIR / "uncertainty_teachers"), help="teacher cache ('' = none)")
    p.add_argument("--figures", action="store_true", help="write docs/figures/uncertainty_*.png (first seed)")
    p.add_argument("--from-json", default=None, metavar="PATH", help="no training: re-print the tables from a JSON")
    cfg = p.parse_args(argv)
    if "teacher" not in cfg.models:
        cfg.models = ["teacher"] + list(cfg.models)
    if cfg.quick:
        cfg.seeds = cfg.seeds[:1] if cfg.seeds != [0, 1, 2] else [0]
        cfg.teacher_epochs, cfg.student_epochs, cfg.samples, cfg.transfer = 3, 5, 4, 1000
        cfg.cache = ""
    if cfg.from_json:
        import json

        saved = json.load(open(cfg.from_json))
        cfg.samples = saved["config"]["samples"]
        text, _ = report(saved["results"], cfg)
        print(text)
        return 0
    torch.set_num_threads(cfg.threads)
    info = machine_info(torch.device("cpu"))
    t0 = time.perf_counter()
    if cfg.workers > 1 and len(cfg.seeds) > 1:
        with mp.get_context("spawn").Pool(min(cfg.workers, len(cfg.seeds))) as pool:
            results = pool.starmap(run_seed, [(s, cfg) for s in cfg.seeds])
    else:
        results = [run_seed(s, cfg) for s in cfg.seeds]
    text, summary = report(results, cfg)
    print("\n" + text)
    out = write_json(cfg.json, "uncertainty.json", {
        "benchmark": "uncertainty", "config": vars(cfg), "machine": info, "results": results, "summary": summary,
        "seconds": time.perf_counter() - t0})
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
