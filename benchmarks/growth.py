"""Growth ("anti-distillation") on MNIST-1D: a large network started from a small trained one vs
the same network trained from scratch.

Usage::

    python benchmarks/growth.py                       # both variants, seeds 0-4 (docs/growth.md)
    python benchmarks/growth.py --quick               # smoke run (~1 min)
    python benchmarks/growth.py --from-json docs/results/growth.json --update-docs   # re-render

Variants (``VARIANTS``), per seed:

* ``classes``: the small network ``cnn1d(40, 5, channels=16)`` is trained on the training examples
  of classes 0-4 (about 2000); the large ``cnn1d(40, 10, channels=32)`` (2x wider, all 10 classes)
  is trained on all 4000 training examples, started from the small one
  (``bd.distill.student_from_small(small, large_net, mode=...)``: the small posterior as the prior
  of the old weights and as their start, ``Normal(0, 1)`` on the new ones) or from scratch
  (``Normal(0, 1)``, PyTorch initialization).
* ``features``: the small network is an MLP ``20 -> 64 -> 64 -> 10`` that sees every other
  position of the signal (``x[:, ::2]``, the old data have half the features), all 10 classes; the
  large MLP ``40 -> 128 -> 128 -> 10`` sees all 40 positions (``inputs=range(0, 40, 2)``).

Modes: ``net2net``, ``embed``, ``zero``, ``uniform`` (``bd.distill.grow``) and ``scratch``. Every
large network gets the same recipe (``RECIPE``: Adam lr 3e-3, cosine, batch 128, kl_weight 0.5,
``--epochs`` epochs, 30 by default); held-out accuracy and NLL after every epoch (8 posterior
draws) give the learning curves; at the end ``bd.evaluate(num_samples=32)`` (accuracy, NLL, ECE)
and ``bd.diagnostics.weight_noise_robustness`` (accuracy of the mean network under additive
Gaussian weight noise, 5 draws per level). Before training (epoch 0) the grown network is
evaluated too, and the largest difference between its old outputs and the small network's (mean
networks, eval mode, the 1000 test inputs) is recorded: 0 up to rounding for the
function-preserving modes.

Output: JSON (``--json``, default ``benchmarks/results/growth.json``), Markdown tables on stdout,
figures with ``--figures`` (``docs/figures/growth_*.png``), and with ``--update-docs`` the tables
of ``docs/growth.md`` rendered from the JSON (between its ``BEGIN``/``END`` markers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bayesdistill as bd
from _common import RESULTS_DIR, machine_info, save_figure, table, write_json
from _report import fill_blocks, fmt, per_seed

ROOT = Path(__file__).resolve().parent.parent
FIG_DIR = ROOT / "docs" / "figures"
DOC = ROOT / "docs" / "growth.md"

RECIPE = {"lr": 3e-3, "lr_schedule": "cosine", "batch_size": 128, "kl_weight": 0.5}
MODES = ("scratch", "net2net", "embed", "zero", "uniform")
VARIANTS = ("classes", "features")
SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)
EARLY = (1, 2, 3, 5, 10)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


def setting(variant: str, data: bd.datasets.DatasetBundle, cfg: argparse.Namespace) -> dict[str, Any]:
    """The small and large architectures, the small network's data and the growth options."""
    x, y = data.tensors("train")
    xt, yt = data.tensors("test")
    w = cfg.width
    if variant == "classes":
        keep, keep_t = y < 5, yt < 5
        return {"small_net": lambda: bd.models.cnn1d(40, 5, channels=w), "large_net": lambda: bd.models.cnn1d(40, 10, channels=2 * w),
                "small_train": (x[keep], y[keep]), "small_test": (xt[keep_t], yt[keep_t]),
                "small_view": lambda t: t, "grow": {}}
    return {"small_net": lambda: mlp(20, 4 * w, 10), "large_net": lambda: mlp(40, 8 * w, 10),
            "small_train": (x[:, ::2].contiguous(), y), "small_test": (xt[:, ::2].contiguous(), yt),
            "small_view": lambda t: t[:, ::2].contiguous(), "grow": {"inputs": list(range(0, 40, 2))}}


def scores(bnn: bd.BNN, test, samples: int, seed: int) -> dict[str, float]:
    s = bd.evaluate(bnn, test, num_samples=samples, seed=seed)
    return {"accuracy": s["accuracy"], "nll": s["nll"], "ece": s["ece"]}


def fit(bnn: bd.BNN, train, test, epochs: int, seed: int, cfg: argparse.Namespace, curve: bool):
    return bd.fit(bnn, train, epochs=epochs, seed=seed, progress=False, eval_data=test if curve else None,
                  eval_samples=8, **RECIPE)


def run_seed(variant: str, seed: int, cfg: argparse.Namespace) -> dict[str, Any]:
    data = bd.datasets.load("mnist1d", seed=seed)
    test = data.test
    st = setting(variant, data, cfg)
    torch.manual_seed(seed)
    small = bd.BNN(st["small_net"](), prior=bd.priors.Normal(scale=1.0), dataset_size=len(st["small_train"][1]))
    t0 = time.perf_counter()
    fit(small, st["small_train"], None, cfg.small_epochs, seed, cfg, curve=False)
    small_fit_s = time.perf_counter() - t0
    small_scores = scores(small, st["small_test"], cfg.samples, seed)
    log(f"{variant} seed {seed}: small network acc {small_scores['accuracy']:.3f} on its own task ({small_fit_s:.0f} s)")
    xt, yt = data.tensors("test")
    out: dict[str, Any] = {"seed": seed, "small": {**small_scores, "fit_s": small_fit_s,
                                                   "num_weights": small.num_weights}, "runs": {}}
    for mode in cfg.modes:
        torch.manual_seed(1000 + seed)
        large_net = st["large_net"]()
        if mode == "scratch":
            bnn = bd.BNN(large_net, prior=bd.priors.Normal(scale=1.0), dataset_size=len(data.train))
            preserve = None
        else:
            plan = bd.distill.grow(small, large_net, mode=mode, seed=seed, **st["grow"])
            bnn = bd.distill.student_from_small(small, large_net, plan=plan, dataset_size=len(data.train))
            bnn.eval()
            small.eval()
            with torch.no_grad():
                old = small(st["small_view"](xt))
                new = plan.old_outputs(bnn(xt))
            preserve = float((old - new).abs().max())
        start = scores(bnn, test, cfg.samples, seed)
        t0 = time.perf_counter()
        res = fit(bnn, data.train, test, cfg.epochs, seed, cfg, curve=True)
        fit_s = time.perf_counter() - t0
        final = scores(bnn, test, cfg.samples, seed)
        rob = bd.diagnostics.weight_noise_robustness(bnn, test, SIGMAS, draws=cfg.noise_draws, seed=seed)
        out["runs"][mode] = {
            **final, "start": start, "max_old_output_diff": preserve, "fit_s": fit_s, "num_weights": bnn.num_weights,
            "curve": {"accuracy": [start["accuracy"]] + res.column("eval_accuracy"),
                      "nll": [start["nll"]] + res.column("eval_nll")},
            "noise": {"sigmas": rob.sigmas, "accuracy": rob.accuracy, "std": rob.std, "area": rob.area()},
        }
        log(f"{variant} seed {seed}: {mode:<8} start acc {start['accuracy']:.3f} -> acc {final['accuracy']:.3f} "
            f"nll {final['nll']:.3f} ece {final['ece']:.3f} noise-area {rob.area():.3f}"
            + (f" | old-output diff {preserve:.2e}" if preserve is not None else "") + f" ({fit_s:.0f} s)")
    return out


# ---------------------------------------------------------------------------------- report
def _runs(payload: dict, variant: str, mode: str) -> list[dict]:
    return [s["runs"][mode] for s in payload["variants"][variant]["seeds"] if mode in s["runs"]]


def tables(payload: dict) -> dict[str, str]:
    """Markdown blocks ``growth:<variant>:final``, ``growth:<variant>:early``, ``growth:setup``."""
    blocks: dict[str, str] = {}
    cfg = payload["config"]
    for variant, vdata in payload["variants"].items():
        seeds = vdata["seeds"]
        small = [s["small"] for s in seeds]
        modes = [m for m in MODES if m in seeds[0]["runs"]]
        rows = []
        for m in modes:
            runs = _runs(payload, variant, m)
            diffs = [r["max_old_output_diff"] for r in runs if r["max_old_output_diff"] is not None]
            rows.append([m, fmt([r["start"]["accuracy"] for r in runs], 1, 100), fmt([r["accuracy"] for r in runs], 1, 100),
                         fmt([r["nll"] for r in runs], 3), fmt([r["ece"] for r in runs], 3),
                         fmt([r["noise"]["area"] for r in runs], 1, 100),
                         f"{max(diffs):.1e}" if diffs else "-", per_seed([r["accuracy"] for r in runs])])
        header = ["mode", "epoch-0 acc %", f"acc % (epoch {cfg['epochs']})", "NLL", "ECE",
                  "acc % under noise (mean over sigma)", "max old-output diff at start", "acc per seed"]
        blocks[f"growth:{variant}:final"] = (
            f"Small network on its own task: acc {fmt([s['accuracy'] for s in small], 1, 100)} %, "
            f"NLL {fmt([s['nll'] for s in small], 3)} ({len(seeds)} seeds).\n\n" + table(rows, header))
        erows = []
        for m in modes:
            runs = _runs(payload, variant, m)
            erows.append([m] + [fmt([r["curve"]["accuracy"][e] for r in runs if len(r["curve"]["accuracy"]) > e], 1, 100)
                                for e in (0, *EARLY)])
        blocks[f"growth:{variant}:early"] = table(erows, ["mode"] + [f"epoch {e}" for e in (0, *EARLY)])
        blocks[f"growth:{variant}:paired"] = paired(payload, variant, modes)
        nrows = []
        base = {s["seed"]: s["runs"].get("scratch") for s in seeds}
        for m in modes:
            runs = _runs(payload, variant, m)
            sig = runs[0]["noise"]["sigmas"]
            row = [m]
            for i in range(len(sig)):
                cell = fmt([r["noise"]["accuracy"][i] for r in runs], 1, 100)
                if m != "scratch" and all(base.values()):
                    wins = sum(1 for s in seeds if s["runs"][m]["noise"]["accuracy"][i] > base[s["seed"]]["noise"]["accuracy"][i])
                    cell += f" ({wins}/{len(seeds)})"
                row.append(cell)
            nrows.append(row)
        blocks[f"growth:{variant}:noise"] = table(nrows, ["mode"] + [f"sigma {s:g}" for s in sig])
    m = payload["machine"]
    blocks["growth:setup"] = (
        f"Run: `{payload['command']}`; {payload['seconds']:.0f} s wall time on {m['nproc']} shared cores "
        f"(torch threads {m['torch_threads']}, load average at start {m.get('loadavg_at_start')}), "
        f"Python {m['python']}, torch {m['torch']}, pyro {m['pyro']}, commit {m['git']}. Seeds "
        f"{cfg['seeds']}; small network {cfg['small_epochs']} epochs, large network {cfg['epochs']} epochs; "
        f"{cfg['samples']} posterior draws for the final metrics; weight noise: {cfg['noise_draws']} draws per level.")
    return blocks


def paired(payload: dict, variant: str, modes: list[str]) -> str:
    """Per mode, the per-seed differences grown - scratch (same seed: same data order and test draws)."""
    seeds = payload["variants"][variant]["seeds"]
    rows = []
    for m in modes:
        if m == "scratch":
            continue
        pairs = [(s["runs"][m], s["runs"]["scratch"]) for s in seeds if m in s["runs"] and "scratch" in s["runs"]]
        row = [m]
        for key, scale, better in (("accuracy", 100, 1), ("nll", 1, -1), ("ece", 1, -1)):
            d = [(g[key] - b[key]) * scale for g, b in pairs]
            wins = sum(1 for v in d if v * better > 0)
            row.append(f"{fmt(d, 1 if key == 'accuracy' else 3)} ({wins}/{len(d)})")
        for e in (1, 5, 10):
            d = [(g["curve"]["accuracy"][e] - b["curve"]["accuracy"][e]) * 100 for g, b in pairs
                 if len(g["curve"]["accuracy"]) > e]
            row.append(f"{fmt(d, 1)} ({sum(1 for v in d if v > 0)}/{len(d)})" if d else "-")
        noise = [(g["noise"]["area"] - b["noise"]["area"]) * 100 for g, b in pairs]
        row.append(f"{fmt(noise, 1)} ({sum(1 for v in noise if v > 0)}/{len(noise)})")
        rows.append(row)
    header = ["mode - scratch", "acc points (better/seeds)", "NLL", "ECE", "acc at epoch 1", "acc at epoch 5",
              "acc at epoch 10", "acc under noise"]
    return table(rows, header)


def figures(payload: dict, folder: Path = FIG_DIR) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for variant in payload["variants"]:
        seeds = payload["variants"][variant]["seeds"]
        modes = [m for m in MODES if m in seeds[0]["runs"]]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for i, m in enumerate(modes):
            runs = _runs(payload, variant, m)
            for ax, key in ((axes[0], "accuracy"), (axes[1], "nll")):
                curves = torch.tensor([r["curve"][key] for r in runs])
                mu, sd = curves.mean(0), curves.std(0) if len(runs) > 1 else torch.zeros(curves.shape[1])
                ep = torch.arange(curves.shape[1])
                ax.plot(ep, mu, color=f"C{i}", label=m)
                ax.fill_between(ep, mu - sd, mu + sd, color=f"C{i}", alpha=0.15)
            sig = runs[0]["noise"]["sigmas"]
            acc = torch.tensor([r["noise"]["accuracy"] for r in runs])
            axes[2].errorbar(sig, acc.mean(0), yerr=acc.std(0) if len(runs) > 1 else None, color=f"C{i}", marker="o",
                             ms=3, capsize=2, label=m)
        axes[0].set(xlabel="epoch (0 = before training)", ylabel="test accuracy", title="learning curve: accuracy")
        axes[1].set(xlabel="epoch (0 = before training)", ylabel="test NLL (nats/example)", title="learning curve: NLL",
                    yscale="log")
        axes[2].set(xlabel="weight noise sigma (weight units)", ylabel="test accuracy",
                    title="accuracy under weight noise (final)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"growth on MNIST-1D: {variant} variant, mean ± std over {len(seeds)} seeds")
        paths.append(save_figure(fig, folder / f"growth_{variant}.png"))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--epochs", type=int, default=30, help="epochs of the large network")
    p.add_argument("--small-epochs", type=int, default=60, help="epochs of the small network")
    p.add_argument("--width", type=int, default=16, help="channels of the small CNN (hidden MLP units / 4)")
    p.add_argument("--samples", type=int, default=32, help="posterior draws of the final metrics")
    p.add_argument("--noise-draws", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 seed, 3+3 epochs, 3 modes: a smoke run")
    p.add_argument("--json", default=None)
    p.add_argument("--figures", action="store_true", help="docs/figures/growth_<variant>.png (a --quick run: "
                   "benchmarks/results/figures/)")
    p.add_argument("--update-docs", action="store_true", help=f"render the tables into {DOC.relative_to(ROOT)}")
    p.add_argument("--from-json", default=None, help="re-render tables/figures from a JSON instead of running")
    cfg = p.parse_args(argv)
    if cfg.from_json:
        payload = json.loads(Path(cfg.from_json).read_text())
    else:
        if cfg.quick:
            cfg.seeds, cfg.epochs, cfg.small_epochs, cfg.samples, cfg.noise_draws = cfg.seeds[:1], 3, 3, 8, 2
            cfg.modes = [m for m in cfg.modes if m in ("scratch", "net2net", "uniform")]
        torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        payload = {"command": "python benchmarks/growth.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "config": {k: getattr(cfg, k) for k in ("seeds", "variants", "modes", "epochs", "small_epochs",
                                                           "width", "samples", "noise_draws")} | {"recipe": RECIPE},
                   "machine": machine_info(torch.device("cpu")), "variants": {}}
        for variant in cfg.variants:
            payload["variants"][variant] = {"seeds": [run_seed(variant, s, cfg) for s in cfg.seeds]}
        payload["seconds"] = time.perf_counter() - t0
        out = write_json(cfg.json, "growth_quick.json" if cfg.quick else "growth.json", payload)
        log(f"wrote {out}")
    blocks = tables(payload)
    for name, text in blocks.items():
        print(f"\n### {name}\n\n{text}")
    if cfg.figures:
        quick = payload["config"]["epochs"] < 10  # a smoke run's figures stay out of the docs
        for path in figures(payload, RESULTS_DIR / "figures" if quick else FIG_DIR):
            log(f"wrote {path}")
    if cfg.update_docs:
        fill_blocks(DOC, blocks)
        log(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
