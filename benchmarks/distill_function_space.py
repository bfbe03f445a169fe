"""Function-space distillation on MNIST-1D: KD, VID and transfer sets into Bayesian students.

Usage::

    python benchmarks/distill_function_space.py                 # seeds 0 1 2, experiments A and B
    python benchmarks/distill_function_space.py --quick         # smoke run (< 1 min)
    python benchmarks/distill_function_space.py --sweep 1e-3 1e-2 1e-1   # VID weight sweep, first seed
    python benchmarks/distill_function_space.py --from-json A.json B.json --json merged.json --figures

Per seed s:

* **Teacher**: a Bayesian ``cnn-deep`` (``bd.models.build("cnn-deep", (40,), 10)``: four Conv1d
  with 32 channels, ``Linear(320, 10)``) on all 4000 training examples with the command line's
  recipe ``bayesdistill.experiments.TeacherRecipe`` (prior ``Normal(0, 1)``, 100 epochs, Adam lr
  3e-3, cosine, batch 128, ``kl_weight=0.5``). Posteriors are read from (or written to) ``--teacher-cache``; the first
  directory holding ``teacher_cnn-deep_seed<s>_ep<epochs>.pt`` wins (``distill_mnist1d.py``
  writes the same files with the same recipe).
* **A. CNN teacher -> Bayesian MLP** (``bd.models.build("mlp", (40,), 10)``, 40-256-256-10;
  ``bd.BNN(mlp, prior=Normal(0, 1), dataset_size=4000)``), all 4000 labelled examples,
  ``--epochs`` 100, Adam lr 3e-3, cosine, batch 128, ``kl_weight`` 0.5. Variants: ``plain``;
  ``kd`` (Hinton KD, T=4, a=0.9); ``vid`` (VID, pairs teacher ``"6"`` (2nd conv block, 32 x 20
  map) -> student ``"2"`` (1st hidden ReLU) and teacher ``"9"`` (flattened last conv block, 320)
  -> student ``"4"`` (2nd hidden ReLU), MLP regressors, one weight ``--vid-weight`` per pair);
  ``vid+kd``; each distilled variant also with ``+T``: a transfer set of 50,000 generated
  unlabelled inputs (``bd.datasets.mnist1d_samples(50000, seed=1000 + s)``). Extra variants
  (``EXTRA_A``) probe calibration: teacher posterior samples instead of its mean, T, kl_weight.
* **B. CNN teacher -> Bayesian CNN student** (``cnn-small``: three Conv1d with 16 channels) on a
  class-stratified 10% subset (400 examples, ``load("mnist1d", train_fraction=0.1, seed=s)``),
  ``--cnn-epochs`` 100, batch 64, lr 3e-3, cosine, kl_weight 0.5. Variants: ``plain`` (prior
  Normal(0, 1), PyTorch init); ``prior`` (``bd.align(teacher, cnn-small, probe=<the teacher's
  training inputs>, max_probe=--probe 2048)``, SNR criterion with compensation, then
  ``TeacherPosterior(q, plan, scale="unit")`` and ``init="prior-mean"``); ``vid`` (VID pairs
  teacher ``"6"`` -> student ``"4"`` (32x20 vs 16x20 maps) and ``"8"`` -> ``"6"`` (32x10 vs
  16x10), 1x1-conv regressors, ``--cnn-vid-weight``); ``prior+vid``.

Metrics: ``bd.evaluate(bnn, test, num_samples=32)`` on the 1000 test examples: accuracy, NLL
(nats per example), ECE (15 bins); mean and std over seeds. ``sep`` is the AUC with which the
cosine distance of penultimate-layer representations (posterior-mean network) separates pairs of
test examples of different classes from pairs of the same class (1 = every dissimilar pair is
farther apart than every similar pair).

A note on transfer sets: ``bd.fit`` adds the full negative ELBO of each transfer batch, KL term
included, so with ``transfer=`` the KL is counted twice per step (measured by
:func:`transfer_kl_factor`). To train every variant under the same objective, transfer runs pass
``kl_weight / factor`` (the factor is measured at start-up, so the correction disappears by
itself once ``fit`` counts the KL once).

Figures (``--figures``): ``docs/figures/fs_vid_bounds.png`` (per-pair VID lower bound on I(t; s),
``vid.<i>.mi_bound`` from the fit history, over epochs) and ``docs/figures/fs_cosine_distances.png``
(cosine distances of similar and dissimilar test pairs for the teacher, the plain MLP and the best
distilled MLP, first seed).
"""

from __future__ import annotations

import argparse
import json
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
from bayesdistill.distill import KD, VID, FeatureTaps
from _common import RESULTS_DIR, bar_text, machine_info, save_figure, table, write_json

ROOT = Path(__file__).resolve().parent.parent
FIG_DIR = ROOT / "docs" / "figures"
TEACHER_CACHES = [RESULTS_DIR / "distill_mnist1d_teachers", RESULTS_DIR / "distill_function_space_teachers"]

# penultimate representations (the input of the read-out layer)
PENULTIMATE = {"cnn-deep": "9", "cnn-small": "7", "mlp": "4"}
VID_PAIRS_MLP = {"6": "2", "9": "4"}  # teacher path -> student path
VID_PAIRS_CNN = {"6": "4", "8": "6"}

_A = {"kd": False, "vid": False, "transfer": False, "T": 4.0, "kd_weight": 0.9, "teacher_mode": "mean",
      "kl_weight": None, "vid_weight": None}
VARIANTS_A: dict[str, dict[str, Any]] = {
    "plain": dict(_A),
    "kd": {**_A, "kd": True},
    "vid": {**_A, "vid": True},
    "vid+kd": {**_A, "vid": True, "kd": True},
    "kd +T": {**_A, "kd": True, "transfer": True},
    "vid +T": {**_A, "vid": True, "transfer": True},
    "vid+kd +T": {**_A, "vid": True, "kd": True, "transfer": True},
}
# calibration probes on the transfer-set variants (kl_weight = the effective weight of the KL)
EXTRA_A: dict[str, dict[str, Any]] = {
    "kd +T sample": {**_A, "kd": True, "transfer": True, "teacher_mode": "sample"},
    "vid+kd +T sample": {**_A, "vid": True, "kd": True, "transfer": True, "teacher_mode": "sample"},
    "kd +T T=2": {**_A, "kd": True, "transfer": True, "T": 2.0},
    "kd +T kl=1": {**_A, "kd": True, "transfer": True, "kl_weight": 1.0},
    "kd +T kl=0.2": {**_A, "kd": True, "transfer": True, "kl_weight": 0.2},
    "vid +T sample": {**_A, "vid": True, "transfer": True, "teacher_mode": "sample"},
    "vid +T kl=0.1": {**_A, "vid": True, "transfer": True, "kl_weight": 0.1},
    "vid+kd +T kl=0.1": {**_A, "vid": True, "kd": True, "transfer": True, "kl_weight": 0.1},
}
ALL_A = {**VARIANTS_A, **EXTRA_A}
VARIANTS_B: dict[str, dict[str, Any]] = {
    "plain": {"prior": False, "vid": False},
    "prior": {"prior": True, "vid": False},
    "vid": {"prior": False, "vid": True},
    "prior+vid": {"prior": True, "vid": True},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- pieces
def teacher_path(seed: int, epochs: int, caches: list[Path]) -> Optional[Path]:
    for c in caches:
        p = Path(c) / f"teacher_cnn-deep_seed{seed}_ep{epochs}.pt"
        if p.exists():
            return p
    return None


def load_teacher(seed: int, cfg: argparse.Namespace, full) -> bd.BNN:
    net = bd.models.build("cnn-deep", full.input_shape, full.num_classes)
    path = teacher_path(seed, cfg.teacher_epochs, cfg.teacher_cache)
    q = bd.MeanFieldPosterior.load(path)
    return bd.BNN(net, prior=bd.priors.Normal(scale=TEACHER.prior_scale), dataset_size=len(full.train),
                  init=q)


def prepare_seed(seed: int, cfg: argparse.Namespace) -> dict[str, Any]:
    """Teacher (cached or trained), transfer set (cached by the datasets module), alignment plan."""
    torch.set_num_threads(cfg.threads)
    full = bd.datasets.load("mnist1d")
    info: dict[str, Any] = {"seed": seed}
    t0 = time.perf_counter()
    path = teacher_path(seed, cfg.teacher_epochs, cfg.teacher_cache)
    if path is None:
        d = TEACHER
        torch.manual_seed(seed)
        net = bd.models.build("cnn-deep", full.input_shape, full.num_classes)
        teacher = bd.BNN(net, prior=bd.priors.Normal(scale=d.prior_scale), dataset_size=len(full.train))
        bd.fit(teacher, full.train, epochs=cfg.teacher_epochs, lr=d.lr, lr_schedule=d.lr_schedule,
               batch_size=d.batch_size, kl_weight=d.kl_weight, seed=seed, progress=False)
        path = Path(cfg.teacher_cache[-1]) / f"teacher_cnn-deep_seed{seed}_ep{cfg.teacher_epochs}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        teacher.posterior().save(path)
        info["trained_s"] = time.perf_counter() - t0
    info["posterior"] = str(path)
    teacher = load_teacher(seed, cfg, full)
    info.update(metrics(teacher, full.test, cfg.samples, seed))
    info.update(separation(teacher, "cnn-deep", full.tensors("test"), hist=True))
    t0 = time.perf_counter()
    if "A" in cfg.experiments:
        bd.datasets.mnist1d_samples(cfg.transfer_size, seed=1000 + seed)
    info["transfer_s"] = time.perf_counter() - t0
    if "B" in cfg.experiments and any(VARIANTS_B[v]["prior"] for v in cfg.variants_b):
        t0 = time.perf_counter()
        x_probe, _ = full.tensors("train")
        student = bd.models.build("cnn-small", full.input_shape, full.num_classes)
        plan = bd.align(teacher, student, criterion="snr", compensation=True, removal="refit", probe=x_probe,
                        max_probe=cfg.probe, seed=seed)
        plan_path = Path(cfg.work) / f"plan_seed{seed}.pt"
        plan.save(plan_path)
        info["align_s"] = time.perf_counter() - t0
        info["plan"] = str(plan_path)
        info["align_output_error"] = plan.output_error
    log(f"seed {seed}: teacher acc {info['accuracy']:.3f} nll {info['nll']:.3f} ece {info['ece']:.3f} "
        f"sep {info['sep']:.3f}")
    return info


def metrics(bnn: bd.BNN, test, samples: int, seed: int) -> dict[str, float]:
    """Accuracy, NLL, ECE of ``bd.evaluate`` and the mean top-class probability (``confidence``:
    below the accuracy = under-confident)."""
    m = bd.evaluate(bnn, test, num_samples=samples, seed=seed)
    out, _ = bd.predict(bnn, test, num_samples=samples, seed=seed)
    conf = out.softmax(-1).mean(0).max(-1).values.mean()
    return {**{k: float(m[k]) for k in ("accuracy", "nll", "ece")}, "confidence": float(conf)}


@torch.no_grad()
def penultimate(bnn: bd.BNN, arch: str, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer representations of the posterior-mean network."""
    with FeatureTaps(bnn.net, [PENULTIMATE[arch]]) as taps:
        bnn.eval()
        bnn(x)
    return taps.features[PENULTIMATE[arch]].reshape(len(x), -1)


HIST_BINS = 50


def separation(bnn: bd.BNN, arch: str, test, hist: bool = False) -> dict[str, Any]:
    """Cosine distances of all pairs of test examples, split into same class / different class.

    ``sep``: AUC of "dissimilar pairs are farther apart" (Mann-Whitney U / (n_s n_d)).
    """
    x, y = test
    f = torch.nn.functional.normalize(penultimate(bnn, arch, x).double(), dim=1)
    d = (1 - f @ f.T).clamp(0, 2)
    iu = torch.triu_indices(len(x), len(x), 1)
    dist = d[iu[0], iu[1]]
    same = (y[iu[0]] == y[iu[1]])
    ranks = torch.empty_like(dist)
    ranks[dist.argsort()] = torch.arange(1, len(dist) + 1, dtype=dist.dtype)
    n_s, n_d = int(same.sum()), int((~same).sum())
    u = ranks[~same].sum() - n_d * (n_d + 1) / 2
    out: dict[str, Any] = {"sep": float(u / (n_s * n_d)), "dist_similar": float(dist[same].mean()),
                           "dist_dissimilar": float(dist[~same].mean())}
    if hist:
        hi = float(dist.max())
        edges = torch.linspace(0, max(hi, 1e-6), HIST_BINS + 1, dtype=dist.dtype)
        out["hist"] = {"edges": edges.tolist(),
                       "similar": torch.histogram(dist[same], edges)[0].tolist(),
                       "dissimilar": torch.histogram(dist[~same], edges)[0].tolist()}
    return out


def transfer_kl_factor() -> float:
    """How many times ``bd.fit`` counts the KL per step when a transfer set is given.

    One epoch of one step at a negligible learning rate: the recorded loss minus the recorded
    expected NLL (labelled + transfer terms) divided by kl_weight * KL.
    """
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    teacher = torch.nn.Linear(4, 3)
    student = bd.BNN(torch.nn.Linear(4, 3), dataset_size=16)
    r = bd.fit(student, (x, y), epochs=1, batch_size=16, lr=1e-12, kl_weight=0.5, seed=0, progress=False,
               distill=[KD(teacher, 4.0, 0.5)], transfer=torch.randn(16, 4, generator=g))
    h = r.history[-1]
    return (h["loss"] - h["nll"]) / (0.5 * h["kl"])


# ---------------------------------------------------------------------------------- students
def run_a(seed: int, variant: str, spec: dict[str, Any], cfg: argparse.Namespace, vid_weight: float) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    full = bd.datasets.load("mnist1d")
    teacher = load_teacher(seed, cfg, full)
    terms = []
    if spec["vid"]:
        w = spec["vid_weight"] if spec["vid_weight"] is not None else vid_weight
        # reduction="sum": lambda multiplies the exact log-density (the setting of the documented runs)
        terms.append(VID(teacher, VID_PAIRS_MLP, weight=w, reduction="sum", teacher_mode=spec["teacher_mode"]))
    if spec["kd"]:
        terms.append(KD(teacher, temperature=spec["T"], weight=spec["kd_weight"], teacher_mode=spec["teacher_mode"]))
    transfer = bd.datasets.mnist1d_samples(cfg.transfer_size, seed=1000 + seed) if spec["transfer"] else None
    kl_eff = spec["kl_weight"] if spec["kl_weight"] is not None else cfg.kl_weight
    kl_pass = kl_eff / cfg.kl_factor if transfer is not None else kl_eff
    torch.manual_seed(seed)
    student = bd.BNN(bd.models.build("mlp", full.input_shape, full.num_classes), prior=bd.priors.Normal(scale=1.0),
                     dataset_size=len(full.train))
    t0 = time.perf_counter()
    res = bd.fit(student, full.train, epochs=cfg.epochs, lr=cfg.lr, lr_schedule="cosine", batch_size=128,
                 kl_weight=kl_pass, seed=seed, progress=False, distill=terms, transfer=transfer)
    fit_s = time.perf_counter() - t0
    out = {"exp": "A", "seed": seed, "variant": variant, "fit_s": fit_s, "kl_weight_effective": kl_eff,
           "kl_weight_passed": kl_pass, "vid_weight": (spec["vid_weight"] or vid_weight) if spec["vid"] else None,
           **metrics(student, full.test, cfg.samples, seed),
           **separation(student, "mlp", full.tensors("test"), hist=seed == cfg.seeds[0])}
    out["history"] = {k: [row.get(k) for row in res.history] for k in res.history[-1]
                      if k.startswith("vid") or k in ("kd", "nll", "kl")}
    log(f"A seed {seed} {variant:<18}{'' if out['vid_weight'] is None else ' vid ' + format(out['vid_weight'], 'g')} acc {out['accuracy']:.3f} nll {out['nll']:.3f} ece {out['ece']:.3f} "
        f"sep {out['sep']:.3f} ({fit_s:.0f} s)")
    return out


def run_b(seed: int, variant: str, spec: dict[str, Any], cfg: argparse.Namespace, prep: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    full = bd.datasets.load("mnist1d")
    small = bd.datasets.load("mnist1d", train_fraction=cfg.fraction, seed=seed)
    teacher = load_teacher(seed, cfg, full)
    torch.manual_seed(seed)
    net = bd.models.build("cnn-small", full.input_shape, full.num_classes)
    if spec["prior"]:
        plan = bd.AlignmentPlan.load(prep["plan"])
        prior = bd.priors.TeacherPosterior(teacher.posterior(), plan=plan, scale="unit")
        student = bd.BNN(net, prior=prior, dataset_size=len(small.train), init="prior-mean")
    else:
        student = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), dataset_size=len(small.train))
    terms = [VID(teacher, VID_PAIRS_CNN, weight=cfg.cnn_vid_weight, reduction="sum")] if spec["vid"] else []
    t0 = time.perf_counter()
    res = bd.fit(student, small.train, epochs=cfg.cnn_epochs, lr=cfg.lr, lr_schedule="cosine", batch_size=64,
                 kl_weight=cfg.kl_weight, seed=seed, progress=False, distill=terms)
    fit_s = time.perf_counter() - t0
    out = {"exp": "B", "seed": seed, "variant": variant, "fit_s": fit_s,
           **metrics(student, full.test, cfg.samples, seed), **separation(student, "cnn-small", full.tensors("test"))}
    out["history"] = {k: [row.get(k) for row in res.history] for k in res.history[-1] if k.startswith("vid")}
    log(f"B seed {seed} {variant:<18} acc {out['accuracy']:.3f} nll {out['nll']:.3f} ece {out['ece']:.3f} "
        f"sep {out['sep']:.3f} ({fit_s:.0f} s)")
    return out


def run_task(task: tuple) -> dict[str, Any]:
    kind, seed, variant, cfg, extra = task
    if kind == "A":
        return run_a(seed, variant, ALL_A[variant], cfg, extra)
    return run_b(seed, variant, VARIANTS_B[variant], cfg, extra)


# ---------------------------------------------------------------------------------- report
def ms(values: list[float], pct: bool = False) -> str:
    k = 100.0 if pct else 1.0
    mean = statistics.mean(values) * k
    sd = statistics.stdev(values) * k if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}" if pct else f"{mean:.3f} ± {sd:.3f}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        out[variant] = {}
        for key in ("accuracy", "nll", "ece", "sep", "fit_s"):
            v = [r[key] for r in rs]
            out[variant][key] = {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                                 "n": len(v)}
    return out


def report(payload: dict[str, Any]) -> str:
    lines = []
    teachers = payload["teachers"]
    lines.append(f"Teacher cnn-deep (Bayesian, {len(teachers)} seeds): acc "
                 f"{ms([t['accuracy'] for t in teachers], True)}%, NLL {ms([t['nll'] for t in teachers])}, "
                 f"ECE {ms([t['ece'] for t in teachers])}, sep {ms([t['sep'] for t in teachers])}")
    kl_factor = payload.get("kl_factor")
    if kl_factor is not None:
        lines.append(f"bd.fit counts the KL {kl_factor:.2f}x per step with transfer=; transfer runs pass "
                     f"kl_weight / {round(kl_factor)}")
    for exp, title in (("A", "A. cnn-deep -> Bayesian MLP 40-256-256-10, 4000 labelled (+T: 50k generated unlabelled)"),
                       ("B", "B. cnn-deep -> Bayesian cnn-small, 10% of the data (400 labelled)")):
        rows = [r for r in payload["results"] if r["exp"] == exp]
        if not rows:
            continue
        seeds = sorted({r["seed"] for r in rows})
        body = []
        order = list(ALL_A if exp == "A" else VARIANTS_B)
        for v in sorted(dict.fromkeys(r["variant"] for r in rows), key=order.index):
            rs = [r for r in rows if r["variant"] == v]
            body.append([v, len(rs), ms([r["accuracy"] for r in rs], True), ms([r["nll"] for r in rs]),
                         ms([r["ece"] for r in rs]), ms([r["sep"] for r in rs]),
                         f"{statistics.mean(r['fit_s'] for r in rs):.0f}"])
        lines.append(f"\n{title}; seeds {seeds}")
        lines.append(table(body, ["variant", "n", "accuracy %", "NLL", "ECE", "sep (AUC)", "fit s"]))
    sweep = payload.get("sweep")
    if sweep:
        lines.append(f"\nVID weight sweep (A, seed {sweep[0]['seed']})")
        lines.append(table([[r["variant"], r["vid_weight"], f"{100 * r['accuracy']:.1f}", f"{r['nll']:.3f}",
                             f"{r['ece']:.3f}", f"{r['sep']:.3f}",
                             " ".join(f"{r['history'][k][-1]:.0f}" for k in r["history"] if k.endswith("mi_bound"))]
                            for r in sweep],
                           ["variant", "lambda per pair", "acc %", "NLL", "ECE", "sep", "final MI bounds (nats)"]))
    bars = payload.get("bars")
    if bars:
        lines.append("")
        for name, (ok, why) in bars.items():
            lines.append(f"bar: {name}: {bar_text(ok)} ({why})")
    return "\n".join(lines)


def check_bars(payload: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    rows = [r for r in payload["results"] if r["exp"] == "A"]
    if not rows:
        return {}
    s = summarize(rows)
    distilled = [v for v in s if v != "plain"]
    best = max(distilled, key=lambda v: s[v]["accuracy"]["mean"]) if distilled else None
    bars = {}
    if best:
        ok = [v for v in distilled if s[v]["accuracy"]["mean"] >= 0.85 and s[v]["ece"]["mean"] <= 0.05]
        bars["best distilled MLP >= 85% with ECE <= 0.05"] = (
            bool(ok), f"best by accuracy: {best} {100 * s[best]['accuracy']['mean']:.1f}% ECE "
            f"{s[best]['ece']['mean']:.3f}; variants meeting both: {ok or 'none'}")
    if "vid" in s and "plain" in s:
        seeds = sorted({r["seed"] for r in rows if r["variant"] == "vid"})
        acc = {(r["variant"], r["seed"]): r["accuracy"] for r in rows}
        per_seed = all(acc[("vid", k)] > acc[("plain", k)] for k in seeds if ("plain", k) in acc)
        bars["VID alone improves on plain MLP"] = (
            per_seed and s["vid"]["nll"]["mean"] < s["plain"]["nll"]["mean"],
            f"acc {100 * s['vid']['accuracy']['mean']:.1f} vs {100 * s['plain']['accuracy']['mean']:.1f}%, "
            f"NLL {s['vid']['nll']['mean']:.3f} vs {s['plain']['nll']['mean']:.3f}, every seed: {per_seed}")
    return bars


# ---------------------------------------------------------------------------------- figures
def plot_vid_bounds(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["results"] if "vid" in r["variant"] and r["history"]]
    panels = [("A", "A: cnn-deep -> MLP", VID_PAIRS_MLP), ("B", "B: cnn-deep -> cnn-small (10%)", VID_PAIRS_CNN)]
    panels = [p for p in panels if any(r["exp"] == p[0] for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    styles = ["-", "--", ":", "-."]
    seed = payload["config"]["seeds"][0]
    for ax, (exp, title, pairs) in zip(axes[0], panels):
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["exp"] == exp))
        variants = [v for v in variants if v in VARIANTS_A or exp == "B"]
        for vi, v in enumerate(variants):
            # one seed: H(t) differs between the seeds' teachers by hundreds of nats (dead ReLU
            # units), which would swamp the differences between variants
            rs = [r for r in rows if r["exp"] == exp and r["variant"] == v and r["seed"] == seed]
            for r in rs:
                for i, (tp, sp) in enumerate(pairs.items()):
                    curve = r["history"][f"vid.{i}.mi_bound"]
                    ax.plot(range(1, len(curve) + 1), curve, styles[vi % len(styles)], color=f"C{i}", lw=1.4,
                            label=f"{v}: pair {i} (t:{tp} -> s:{sp})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("H(t) + E[log q(t|s)]  (nats per example)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle(f"VID bound H(t) + E[log q(t|s)] per pair over training (seed {seed})", fontsize=10)
    save_figure(fig, path, dpi=80)


def plot_cosine(payload: dict[str, Any], best: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = payload["config"]["seeds"][0]
    teacher = next(t for t in payload["teachers"] if t["seed"] == seed)
    pick = {r["variant"]: r for r in payload["results"] if r["exp"] == "A" and r["seed"] == seed}
    models = [("teacher cnn-deep", teacher), ("plain MLP", pick["plain"]), (f"distilled MLP ({best})", pick[best])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=False)
    for ax, (name, r) in zip(axes, models):
        h = r["hist"]
        edges = torch.tensor(h["edges"])
        centers = (0.5 * (edges[1:] + edges[:-1])).numpy()
        width = float(edges[1] - edges[0])
        for key, color, label in (("similar", "tab:green", "similar (same class)"),
                                  ("dissimilar", "tab:red", "dissimilar (different class)")):
            counts = torch.tensor(h[key])
            dens = (counts / (counts.sum() * width)).numpy()
            ax.bar(centers, dens, width=width, color=color, alpha=0.45, label=label)
        ax.axvline(r["dist_similar"], color="tab:green", lw=1)
        ax.axvline(r["dist_dissimilar"], color="tab:red", lw=1)
        ax.set_title(f"{name}\nacc {100 * r['accuracy']:.1f}%, sep AUC {r['sep']:.3f}", fontsize=9)
        ax.set_xlabel("cosine distance of penultimate representations")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MNIST-1D test pairs, seed {seed} (vertical lines: means)", fontsize=10)
    save_figure(fig, path, dpi=80)


def best_distilled(payload: dict[str, Any]) -> Optional[str]:
    s = summarize([r for r in payload["results"] if r["exp"] == "A"])
    distilled = [v for v in s if v != "plain"]
    return max(distilled, key=lambda v: s[v]["accuracy"]["mean"]) if distilled else None


def figures(payload: dict[str, Any]) -> None:
    plot_vid_bounds(payload, FIG_DIR / "fs_vid_bounds.png")
    best = best_distilled(payload)
    if best and any(r["exp"] == "A" and r["variant"] == "plain" for r in payload["results"]):
        plot_cosine(payload, best, FIG_DIR / "fs_cosine_distances.png")


# ---------------------------------------------------------------------------------- main
def run_pool(tasks: list, workers: int, fn) -> list:
    if workers > 1 and len(tasks) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            return pool.map(fn, tasks, chunksize=1)
    return [fn(t) for t in tasks]


def _prepare(args: tuple) -> dict[str, Any]:
    return prepare_seed(*args)


def merge(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """One payload from several runs: each experiment's rows from the first run that has them."""
    out = dict(payloads[0])
    results = []
    for exp in ("A", "B"):
        for pl in payloads:
            rows = [r for r in pl["results"] if r["exp"] == exp]
            if rows:
                results += rows
                out.setdefault("sources", {})[exp] = {k: pl["config"][k] for k in
                                                       ("epochs", "cnn_epochs", "vid_weight", "cnn_vid_weight")}
                break
    out["results"] = results
    out["sweep"] = next((pl["sweep"] for pl in payloads if pl.get("sweep")), None)
    out["bars"] = check_bars(out)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="smoke run: one seed, 2 epochs, small transfer set")
    p.add_argument("--json", default=None, help="results JSON (default benchmarks/results/distill_function_space.json)")
    p.add_argument("--workers", type=int, default=2, help="processes (tasks = seed x variant)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--experiments", default="AB", help="A, B or AB")
    p.add_argument("--variants-a", nargs="*", default=list(VARIANTS_A), choices=list(ALL_A), metavar="V")
    p.add_argument("--variants-b", nargs="*", default=list(VARIANTS_B), choices=list(VARIANTS_B), metavar="V")
    p.add_argument("--epochs", type=int, default=100, help="student epochs (A)")
    p.add_argument("--cnn-epochs", type=int, default=100, help="student epochs (B)")
    p.add_argument("--teacher-epochs", type=int, default=TEACHER.epochs)
    p.add_argument("--teacher-cache", nargs="+", default=[str(c) for c in TEACHER_CACHES],
                   help="directories searched for teacher posteriors; a newly trained one goes to the last")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--kl-weight", type=float, default=0.5)
    p.add_argument("--vid-weight", type=float, default=0.1, help="lambda per VID pair (A)")
    p.add_argument("--cnn-vid-weight", type=float, default=0.1, help="lambda per VID pair (B)")
    p.add_argument("--fraction", type=float, default=0.1, help="labelled fraction for B")
    p.add_argument("--probe", type=int, default=2048, help="teacher training inputs used by bd.align (B)")
    p.add_argument("--transfer-size", type=int, default=50_000)
    p.add_argument("--samples", type=int, default=32, help="posterior samples for evaluation")
    p.add_argument("--sweep", type=float, nargs="*", default=None, metavar="LAMBDA",
                   help="only the VID weight sweep (A variants --sweep-variants, first seed)")
    p.add_argument("--sweep-variants", nargs="*", default=["vid"], choices=list(ALL_A), metavar="V")
    p.add_argument("--from-json", nargs="+", default=None, metavar="PATH",
                   help="no training: re-print (and --figures) results JSONs of this script; with several, "
                        "experiment A is taken from the first that has it, B likewise")
    p.add_argument("--figures", action="store_true", help="write docs/figures/fs_*.png")
    cfg = p.parse_args(argv)
    default_json = "distill_function_space.json" if cfg.sweep is None else "distill_function_space_sweep.json"
    if cfg.quick:
        default_json = default_json.replace(".json", "_quick.json")
    if cfg.from_json:
        payload = merge([json.load(open(f)) for f in cfg.from_json])
        print(report(payload))
        if cfg.json:
            log(f"wrote the merged results to {write_json(cfg.json, default_json, payload)}")
        if cfg.figures:
            figures(payload)
        return 0
    import tempfile

    cfg.work = tempfile.mkdtemp(prefix="fs_bench_")
    if cfg.quick:
        cfg.probe = 256
        cfg.seeds = [cfg.seeds[0]]
        cfg.epochs, cfg.cnn_epochs, cfg.teacher_epochs, cfg.samples = 2, 2, 2, 4
        cfg.transfer_size = 2000
        cfg.variants_a = ["plain", "kd", "vid", "vid+kd +T"]
        cfg.variants_b = ["plain", "prior+vid"]
        cfg.teacher_cache = [str(Path(cfg.work) / "teachers")]
        if cfg.sweep is not None:
            cfg.sweep = cfg.sweep[:2]
    torch.set_num_threads(cfg.threads)
    cfg.teacher_cache = [Path(c) for c in cfg.teacher_cache]
    info = machine_info(torch.device("cpu"))
    t_start = time.perf_counter()
    cfg.kl_factor = transfer_kl_factor()
    log(f"bd.fit counts the KL {cfg.kl_factor:.3f}x per step with transfer=")
    cfg.kl_factor = max(1, round(cfg.kl_factor))
    if cfg.sweep is not None:
        cfg.experiments = "A"
        cfg.variants_b = []
        seeds = cfg.seeds[:1]
    else:
        seeds = cfg.seeds
    teachers = run_pool([(s, cfg) for s in seeds], cfg.workers, _prepare)
    prep = {t["seed"]: t for t in teachers}
    tasks: list[tuple] = []
    if cfg.sweep is not None:
        for v in cfg.sweep_variants:
            for w in cfg.sweep:
                tasks.append(("A", seeds[0], v, cfg, w))
    else:
        # longest first, so that the pool ends together
        if "A" in cfg.experiments:
            tasks += [("A", s, v, cfg, cfg.vid_weight) for v in cfg.variants_a for s in seeds]
        if "B" in cfg.experiments:
            tasks += [("B", s, v, cfg, prep[s]) for v in cfg.variants_b for s in seeds]
        cost = lambda t: (2 if t[0] == "A" and ALL_A[t[2]]["transfer"] else 1) * (  # noqa: E731
            3 if t[0] == "A" else 1) * (1.5 if "vid" in t[2] else 1)
        tasks.sort(key=cost, reverse=True)
    results = run_pool(tasks, cfg.workers, run_task)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k != "teacher_cache"}
    config["teacher_cache"] = [str(c) for c in cfg.teacher_cache]
    config["seeds"] = seeds
    payload: dict[str, Any] = {
        "benchmark": "distill_function_space", "config": config, "machine": info,
        "variants_a": ALL_A, "variants_b": VARIANTS_B, "vid_pairs": {"A": VID_PAIRS_MLP, "B": VID_PAIRS_CNN},
        "kl_factor": cfg.kl_factor, "teachers": teachers,
        "results": results if cfg.sweep is None else [], "sweep": results if cfg.sweep is not None else None,
    }
    payload["summary"] = {exp: summarize([r for r in results if r["exp"] == exp])
                          for exp in ("A", "B") if any(r["exp"] == exp for r in results)}
    if cfg.sweep is None:
        payload["bars"] = check_bars(payload)
    payload["seconds"] = time.perf_counter() - t_start
    print("\n" + report(payload))
    out = write_json(cfg.json, default_json, payload)
    log(f"wrote {out} ({payload['seconds']:.0f} s)")
    if cfg.figures and cfg.sweep is None:
        figures(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
