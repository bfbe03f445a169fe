"""An adversarial weight prior on MNIST-1D with 10 % of the data: does it carry the teacher to a
differently shaped student, and how does it compare with the aligned teacher posterior?

Usage::

    python benchmarks/adversarial_prior.py                 # seeds 0-4 (docs/adversarial-prior.md)
    python benchmarks/adversarial_prior.py --quick         # smoke run (~1 min)
    python benchmarks/adversarial_prior.py --from-json docs/results/adversarial_prior.json --update-docs

Per seed:

* Teacher: ``cnn-deep`` (4 convolutions, 32 channels) on all 4000 training examples, the teacher
  recipe of the package (``TEACHER``: 100 epochs, Adam lr 3e-3, cosine, batch 128, prior
  ``Normal(0, 1)``, kl_weight 0.5; the values of ``bayesdistill.experiments.TeacherRecipe``, copied: the
  benchmarks do not import the CLI). Cached in ``--cache``.
* Students on a class-stratified 10 % subset (400 examples, ``train_fraction=0.1, seed=seed``),
  ``STUDENT``: 150 epochs, batch 64, Adam lr 3e-3, cosine, kl_weight 0.5 (as
  ``benchmarks/distill_mnist1d.py``). Arms (``ARMS``):

  - ``normal``: ``cnn-small`` (3 convolutions, 16 channels), prior ``Normal(0, 1)``, PyTorch init;
  - ``aligned``: ``cnn-small`` from ``bd.student_from_teacher(teacher, net, plan=bd.align(...,
    criterion="snr", probe=<4000 training inputs>))``: the aligned teacher posterior as prior
    (scale 1) and start, the package's default distilled student;
  - ``aligned prior, init=module``: the same prior, PyTorch init (the prior alone);
  - ``adversarial``: ``cnn-small``, prior ``Normal(0, 1)``, PyTorch init, plus
    ``bd.distill.AdversarialPrior(teacher)`` (pairs by kernel shape and depth: teacher convs 1, 5, 7
    -> student convs 1, 3, 5; the reference's critics, schedule and constants);
  - ``wide normal`` / ``wide adversarial``: a student ``bd.align`` cannot reach, ``cnn1d(40, 10,
    channels=48)`` (wider than the teacher), without and with the adversarial prior.

Metrics: ``bd.evaluate(num_samples=32)`` on the 1000 test examples (accuracy, NLL, ECE); for the
adversarial arms the final lambdas and the critics' p_fake. Output: JSON, Markdown tables on
stdout, ``--figures`` (``docs/figures/adversarial_prior_*.png``), ``--update-docs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bayesdistill as bd
from _common import RESULTS_DIR, machine_info, save_figure, table, write_json
from _report import fill_blocks, fmt, per_seed

ROOT = Path(__file__).resolve().parent.parent
FIG_DIR = ROOT / "docs" / "figures"
DOC = ROOT / "docs" / "adversarial-prior.md"

TEACHER = {"epochs": 100, "lr": 3e-3, "lr_schedule": "cosine", "batch_size": 128, "kl_weight": 0.5, "prior_scale": 1.0}
STUDENT = {"epochs": 150, "lr": 3e-3, "lr_schedule": "cosine", "batch_size": 64, "kl_weight": 0.5}
ARMS = ("normal", "aligned", "aligned prior, init=module", "adversarial", "wide normal", "wide adversarial")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scores(bnn: bd.BNN, test, samples: int, seed: int) -> dict[str, float]:
    s = bd.evaluate(bnn, test, num_samples=samples, seed=seed)
    return {"accuracy": s["accuracy"], "nll": s["nll"], "ece": s["ece"]}


def teacher_for(seed: int, full, cfg) -> tuple[bd.BNN, dict[str, Any]]:
    torch.manual_seed(seed)
    net = bd.models.build("cnn-deep", full.input_shape, full.num_classes)
    prior = bd.priors.Normal(scale=TEACHER["prior_scale"])
    epochs = cfg.teacher_epochs
    cache = Path(cfg.cache) / f"teacher_cnn-deep_seed{seed}_ep{epochs}.pt" if cfg.cache else None
    if cache is not None and cache.exists():
        q = bd.MeanFieldPosterior.load(cache)
        return bd.BNN(net, prior=prior, dataset_size=len(full.train), init=q), {"cached": True, "fit_s": q.metadata.get("fit_s")}
    teacher = bd.BNN(net, prior=prior, dataset_size=len(full.train))
    t0 = time.perf_counter()
    bd.fit(teacher, full.train, epochs=epochs, lr=TEACHER["lr"], lr_schedule=TEACHER["lr_schedule"],
           batch_size=TEACHER["batch_size"], kl_weight=TEACHER["kl_weight"], seed=seed, progress=False)
    fit_s = time.perf_counter() - t0
    if cache is not None:
        q = teacher.posterior()
        q.metadata = {"fit_s": fit_s, "seed": seed, "epochs": epochs}
        q.save(cache)
    return teacher, {"cached": False, "fit_s": fit_s}


def student_arm(arm: str, seed: int, teacher: bd.BNN, plan, data, test, cfg) -> dict[str, Any]:
    torch.manual_seed(100 + seed)
    wide = arm.startswith("wide")
    net = bd.models.cnn1d(40, 10, channels=cfg.wide_channels) if wide else bd.models.build("cnn-small", (40,), 10)
    n = len(data.train)
    terms: list[Any] = []
    if arm == "aligned":
        bnn = bd.student_from_teacher(teacher, net, plan=plan, dataset_size=n)
    elif arm == "aligned prior, init=module":
        bnn = bd.student_from_teacher(teacher, net, plan=plan, dataset_size=n, init="module")
    else:
        bnn = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), dataset_size=n)
    if arm.endswith("adversarial"):
        terms = [bd.distill.AdversarialPrior(teacher, critic_steps=cfg.critic_steps)]
    curve: list[dict[str, float]] = []
    every = max(1, cfg.epochs // 15)

    def probe(record, model):
        if record["epoch"] % every == 0 or record["epoch"] == cfg.epochs:
            s = bd.evaluate(model, test, num_samples=8, seed=0)
            curve.append({"epoch": record["epoch"], "accuracy": s["accuracy"], "nll": s["nll"]})
            model.train()

    t0 = time.perf_counter()
    res = bd.fit(bnn, data.train, epochs=cfg.epochs, lr=STUDENT["lr"], lr_schedule=STUDENT["lr_schedule"],
                 batch_size=STUDENT["batch_size"], kl_weight=STUDENT["kl_weight"], seed=seed, progress=False,
                 distill=terms, callbacks=[probe])
    fit_s = time.perf_counter() - t0
    out: dict[str, Any] = {**scores(bnn, test, cfg.samples, seed), "fit_s": fit_s, "num_weights": bnn.num_weights,
                           "curve": curve}
    if terms:
        t = terms[0]
        keys = [k for k in res.history[-1] if k.startswith("distill/adversarial_prior/pair")]
        out["pairs"] = dict(t.pairs)
        out["final"] = {k.split("/", 2)[2]: res.history[-1][k] for k in keys}
        out["dynamics"] = {k.split("/", 2)[2]: res.column(k) for k in keys if k.endswith(("lambda", "p_fake", "p_real"))}
        out["penalty"] = res.column("distill/adversarial_prior/loss")
    return out


def run_seed(seed: int, cfg) -> dict[str, Any]:
    full = bd.datasets.load("mnist1d", seed=seed)
    small = bd.datasets.load("mnist1d", train_fraction=cfg.fraction, seed=seed)
    teacher, tinfo = teacher_for(seed, full, cfg)
    tinfo.update(scores(teacher, full.test, cfg.samples, seed))
    log(f"seed {seed}: teacher acc {tinfo['accuracy']:.3f} nll {tinfo['nll']:.3f} ({tinfo['fit_s'] or 0:.0f} s)")
    plan = None
    if any(a.startswith("aligned") for a in cfg.arms):
        x, _ = full.tensors("train")
        t0 = time.perf_counter()
        plan = bd.align(teacher, bd.models.build("cnn-small", (40,), 10), criterion="snr", probe=x, max_probe=len(x),
                        seed=seed)
        tinfo["align_s"] = time.perf_counter() - t0
    try:  # the point of the wide student: alignment cannot reach it
        bd.align(teacher, bd.models.cnn1d(40, 10, channels=cfg.wide_channels))
        wide_alignable = True
    except bd.ShapeMismatchError as err:
        wide_alignable = False
        tinfo["wide_align_error"] = str(err)[:200]
    out: dict[str, Any] = {"seed": seed, "teacher": tinfo, "wide_alignable": wide_alignable, "arms": {}}
    for arm in cfg.arms:
        r = student_arm(arm, seed, teacher, plan, small, full.test, cfg)
        out["arms"][arm] = r
        extra = ""
        if "final" in r:
            extra = " | " + " ".join(f"{k}={v:.3g}" for k, v in r["final"].items() if k.endswith(("lambda", "p_fake")))
        log(f"seed {seed}: {arm:<28} acc {r['accuracy']:.3f} nll {r['nll']:.3f} ece {r['ece']:.3f} ({r['fit_s']:.0f} s){extra}")
    return out


# ---------------------------------------------------------------------------------- report
def tables(payload: dict) -> dict[str, str]:
    seeds = payload["seeds"]
    cfg = payload["config"]
    arms = [a for a in ARMS if a in seeds[0]["arms"]]
    rows = []
    for a in arms:
        rs = [s["arms"][a] for s in seeds]
        rows.append([a, f"{rs[0]['num_weights']:,}", fmt([r["accuracy"] for r in rs], 1, 100), fmt([r["nll"] for r in rs], 3),
                     fmt([r["ece"] for r in rs], 3), per_seed([r["accuracy"] for r in rs])])
    t = [s["teacher"] for s in seeds]
    results = (f"Teachers (cnn-deep, 4000 examples): acc {fmt([x['accuracy'] for x in t], 1, 100)} %, NLL "
               f"{fmt([x['nll'] for x in t], 3)}; students on {cfg['fraction']:.0%} of the data, {len(seeds)} seeds "
               f"(mean ± sample std).\n\n"
               + table(rows, ["student", "weights", "acc %", "NLL", "ECE", "acc per seed"]))
    drows = []
    for a in arms:
        rs = [s["arms"][a] for s in seeds if "final" in s["arms"][a]]
        if not rs:
            continue
        pairs = sorted({k.split("/")[0] for r in rs for k in r["final"]})
        for p in pairs:
            lam = [r["final"][f"{p}/lambda"] for r in rs]
            drows.append([a, f"{p}: {rs[0]['pairs'] and list(rs[0]['pairs'].items())[int(p[4:])]}",
                          " ".join(f"{v:.3g}" for v in lam),
                          fmt([r["final"][f"{p}/p_fake"] for r in rs], 2), fmt([r["final"][f"{p}/p_real"] for r in rs], 2)])
    dynamics = table(drows, ["student", "pair (teacher -> student)", "final lambda per seed", "final p_fake", "final p_real"])
    comparisons = [(a, b) for a, b in (("aligned", "normal"), ("aligned prior, init=module", "normal"),
                                         ("adversarial", "normal"), ("wide adversarial", "wide normal"),
                                         ("wide normal", "normal"), ("wide adversarial", "aligned"))
                   if a in arms and b in arms]
    prows = []
    for a, b in comparisons:
        row = [f"{a} - {b}"]
        for key, scale, better, digits in (("accuracy", 100, 1, 1), ("nll", 1, -1, 3), ("ece", 1, -1, 3)):
            d = [(s["arms"][a][key] - s["arms"][b][key]) * scale for s in seeds]
            row.append(f"{fmt(d, digits)} ({sum(1 for v in d if v * better > 0)}/{len(d)})")
        prows.append(row)
    paired = table(prows, ["arm - reference", "acc points (better/seeds)", "NLL", "ECE"])
    acc = {a: fmt([s["arms"][a]["accuracy"] for s in seeds], 1, 100) for a in arms}
    nll = {a: fmt([s["arms"][a]["nll"] for s in seeds], 3) for a in arms}
    headline = "Test accuracy % (NLL), mean ± std over " + f"{len(seeds)} seeds: " + "; ".join(
        f"{a} {acc[a]} ({nll[a]})" for a in arms) + "."
    m = payload["machine"]
    setup = (f"Run: `{payload['command']}`; {payload['seconds']:.0f} s wall time on {m['nproc']} shared cores (torch "
             f"threads {m['torch_threads']}, load average at start {m.get('loadavg_at_start')}), Python {m['python']}, "
             f"torch {m['torch']}, pyro {m['pyro']}, commit {m['git']}. Seeds {cfg['seeds']}; teacher {cfg['teacher_epochs']} "
             f"epochs, students {cfg['epochs']} epochs, {cfg['critic_steps']} critic steps per epoch; {cfg['samples']} "
             f"posterior draws for the metrics. The wide student ({cfg['wide_channels']} channels) is alignable: "
             f"{any(s['wide_alignable'] for s in seeds)}.")
    return {"adversarial:headline": headline, "adversarial:results": results, "adversarial:paired": paired,
            "adversarial:dynamics": dynamics, "adversarial:setup": setup}


def figures(payload: dict, folder: Path = FIG_DIR) -> list[Path]:
    import matplotlib.pyplot as plt

    seeds = payload["seeds"]
    arms = [a for a in ARMS if a in seeds[0]["arms"]]
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, a in enumerate(arms):
        for ax, key in ((axes[0], "accuracy"), (axes[1], "nll")):
            curves = [s["arms"][a]["curve"] for s in seeds]
            ep = [c["epoch"] for c in curves[0]]
            vals = torch.tensor([[c[key] for c in cur] for cur in curves])
            mu = vals.mean(0)
            sd = vals.std(0) if len(seeds) > 1 else torch.zeros_like(mu)
            ax.plot(ep, mu, color=f"C{i}", label=a)
            ax.fill_between(ep, mu - sd, mu + sd, color=f"C{i}", alpha=0.12)
        accs = [s["arms"][a]["accuracy"] for s in seeds]
        axes[2].scatter([i] * len(accs), accs, color=f"C{i}", s=14)
        axes[2].errorbar([i + 0.15], [sum(accs) / len(accs)], fmt="_", color="k")
    axes[0].set(xlabel="epoch", ylabel="test accuracy (8 draws)", title="learning curves, 10% of MNIST-1D")
    axes[1].set(xlabel="epoch", ylabel="test NLL (8 draws)", title="test NLL", yscale="log")
    axes[2].set(xticks=range(len(arms)), ylabel="test accuracy (32 draws)", title="per seed")
    axes[2].set_xticklabels(arms, rotation=30, ha="right", fontsize="small")
    for ax in axes[:2]:
        ax.legend(fontsize="x-small")
    for ax in axes:
        ax.grid(alpha=0.3)
    paths.append(save_figure(fig, folder / "adversarial_prior_students.png"))
    adv = [a for a in arms if a.endswith("adversarial")]
    if adv:
        fig, axes = plt.subplots(2, len(adv), figsize=(6 * len(adv), 7), squeeze=False)
        s0 = seeds[0]
        for col, a in enumerate(adv):
            dyn = s0["arms"][a]["dynamics"]
            pairs = sorted({k.split("/")[0] for k in dyn})
            for j, p in enumerate(pairs):
                axes[0, col].plot(dyn[f"{p}/lambda"], color=f"C{j}", label=p)
                axes[1, col].plot(dyn[f"{p}/p_fake"], color=f"C{j}", label=f"{p} p_fake")
                axes[1, col].plot(dyn[f"{p}/p_real"], color=f"C{j}", ls=":", label=f"{p} p_real")
            axes[0, col].set(yscale="log", title=f"{a}: adaptive lambda (seed {s0['seed']})", xlabel="epoch")
            axes[1, col].axhspan(0.2, 0.45, color="0.9")
            axes[1, col].set(ylim=(0, 1), title="critic: mean P(real) of teacher / student slices", xlabel="epoch")
            for ax in axes[:, col]:
                ax.legend(fontsize="x-small")
                ax.grid(alpha=0.3)
        paths.append(save_figure(fig, folder / "adversarial_prior_dynamics.png"))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--epochs", type=int, default=STUDENT["epochs"])
    p.add_argument("--teacher-epochs", type=int, default=TEACHER["epochs"])
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--critic-steps", type=int, default=100)
    p.add_argument("--wide-channels", type=int, default=48)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(RESULTS_DIR / "adversarial_prior_teachers"))
    p.add_argument("--quick", action="store_true", help="1 seed, 5-epoch teacher, 5-epoch students: a smoke run")
    p.add_argument("--json", default=None)
    p.add_argument("--figures", action="store_true")
    p.add_argument("--update-docs", action="store_true")
    p.add_argument("--from-json", default=None)
    cfg = p.parse_args(argv)
    if cfg.from_json:
        payload = json.loads(Path(cfg.from_json).read_text())
    else:
        if cfg.quick:
            cfg.seeds, cfg.epochs, cfg.teacher_epochs, cfg.samples, cfg.critic_steps = cfg.seeds[:1], 5, 5, 8, 10
            cfg.arms = [a for a in cfg.arms if a in ("normal", "aligned", "adversarial")]
        torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        payload = {"command": "python benchmarks/adversarial_prior.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "config": {k: getattr(cfg, k) for k in ("seeds", "arms", "epochs", "teacher_epochs", "fraction",
                                                           "critic_steps", "wide_channels", "samples")}
                   | {"teacher": TEACHER, "student": STUDENT},
                   "machine": machine_info(torch.device("cpu")), "seeds": [run_seed(s, cfg) for s in cfg.seeds]}
        payload["seconds"] = time.perf_counter() - t0
        out = write_json(cfg.json, "adversarial_prior_quick.json" if cfg.quick else "adversarial_prior.json", payload)
        log(f"wrote {out}")
    blocks = tables(payload)
    for name, text in blocks.items():
        print(f"\n### {name}\n\n{text}")
    if cfg.figures:
        quick = payload["config"]["epochs"] < 20
        for path in figures(payload, RESULTS_DIR / "figures" if quick else FIG_DIR):
            log(f"wrote {path}")
    if cfg.update_docs:
        fill_blocks(DOC, blocks)
        log(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
