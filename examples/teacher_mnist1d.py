"""Train a Bayesian CNN teacher on MNIST-1D, evaluate it, save its posterior and two plots.

    python examples/teacher_mnist1d.py             # 100 epochs on 4000 sequences (~1 min, 2 CPU cores)
    python examples/teacher_mnist1d.py --quick     # a smoke run: 3 epochs on 10% of the data
    python examples/teacher_mnist1d.py --epochs 30 --out runs/t30 --device cuda

What it does:

1. loads MNIST-1D (Greydanus & Kobak, 2020; generated offline and cached),
2. builds the built-in 1-D CNN (``bd.models.build("cnn", ...)``) and wraps it in a mean-field
   ``bd.BNN`` with an isotropic prior N(0, 1) on every weight and a categorical likelihood,
3. fits q(w) by SVI with ``bd.fit`` (Adam, lr 3e-3, cosine learning-rate schedule),
4. evaluates the posterior predictive on the test set (accuracy, NLL, ECE, Brier, entropies),
5. writes to ``--out``: ``posterior.pt`` (``bd.MeanFieldPosterior``), ``metrics.json``,
   ``history.csv``, ``elbo.png`` (ELBO and its parts per epoch) and ``calibration.png``
   (reliability diagram of the predictive probabilities).

The plots are drawn with matplotlib directly, to show what goes into them, from
``result.history`` and from the ``CalibrationResult`` of ``bd.diagnostics.calibration``
(``bd.plots.elbo(result)`` and ``bd.plots.calibration(cal)`` draw the same results ready-made).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesdistill as bd  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--out", type=Path, default=Path("runs/example-teacher"), help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 epochs on 10%% of the training data, 8 posterior samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights' noise and batch order")
    p.add_argument("--device", default=None, help="'cpu', 'cuda', ... (default: cuda if available, else cpu)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="posterior samples for evaluation (default 32; 8 with --quick)")
    return p.parse_args(argv)


def plot_elbo(history: list[dict[str, float]], path: Path) -> None:
    """ELBO per epoch (left) and its two parts, expected NLL and KL(q||p), on a log scale (right)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["elbo"] for h in history], color="C0")
    ax1.set(xlabel="epoch", ylabel="ELBO (nats, whole training set)", title="ELBO = -(NLL + KL)")
    ax2.plot(epochs, [h["nll"] for h in history], color="C1", label="expected NLL  E_q[-log p(y|x,w)]")
    ax2.plot(epochs, [h["kl"] for h in history], color="C2", label="KL(q || p)")
    ax2.set_yscale("log")
    ax2.set(xlabel="epoch", ylabel="nats", title="the two parts of the negative ELBO")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_calibration(cal: bd.diagnostics.CalibrationResult, path: Path) -> None:
    """Reliability diagram: accuracy vs confidence per bin, with the count of each bin below.

    The result holds ``n_bins + 1`` buckets; the last one holds confidences of exactly 1.0 and
    is drawn as a thin bar at 1.0.
    """
    lower, upper = np.array(cal.bin_lower), np.array(cal.bin_upper)
    acc, conf, count = np.array(cal.accuracy), np.array(cal.confidence), np.array(cal.count)
    width = upper - lower
    width[width == 0] = 0.01  # the degenerate [1.0, 1.0] bucket
    keep = count > 0
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax1.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax1.bar(lower[keep], acc[keep], width=width[keep], align="edge", edgecolor="k", alpha=0.7, label="accuracy")
    ax1.plot(conf[keep], acc[keep], "o", color="C3", ms=4, label="(mean confidence, accuracy)")
    ax1.set(ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1), title=f"reliability diagram (ECE = {cal.ece:.3f})")
    ax1.legend(loc="upper left")
    ax2.bar(lower, count, width=width, align="edge", edgecolor="k", color="C7")
    ax2.set(xlabel="confidence (top-1 predictive probability)", ylabel="examples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    epochs = min(args.epochs, 3) if args.quick else args.epochs
    train_fraction = 0.1 if args.quick else 1.0
    num_samples = args.num_samples or (8 if args.quick else 32)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. data: .train/.test are TensorDatasets of float32 [N, 40] inputs and int64 [N] labels
    data = bd.datasets.load("mnist1d", train_fraction=train_fraction, seed=args.seed)
    print(data)

    # 2. the teacher: any nn.Module becomes a mean-field Bayesian network
    net = bd.models.build("cnn", data.input_shape, data.output_dim)
    teacher = bd.BNN(
        net,
        prior=bd.priors.Normal(scale=1.0),
        likelihood=bd.likelihoods.Categorical(),
        dataset_size=len(data.train),
    )
    print(f"{teacher.num_weights} Bayesian weights in {len(teacher.site_names)} sites: {teacher.site_names}")

    # 3. SVI
    result = bd.fit(
        teacher,
        data.train,
        epochs=epochs,
        lr=3e-3,
        lr_schedule="cosine",
        seed=args.seed,
        device=device,
        progress=not args.quick,
    )
    last = result.history[-1]
    print(f"epoch {last['epoch']}: ELBO {last['elbo']:.1f} = -(NLL {last['nll']:.1f} + KL {last['kl']:.1f}) nats")

    # 4. posterior-predictive evaluation on the test set
    metrics = bd.evaluate(teacher, data.test, num_samples=num_samples, seed=args.seed)
    for key, value in metrics.items():
        print(f"  test {key:<20} {value:.4f}" if isinstance(value, float) else f"  test {key:<20} {value}")

    # 5. outputs
    q = teacher.posterior()
    q.metadata.update({"dataset": "mnist1d", "model": "cnn", "epochs": epochs, "train_fraction": train_fraction})
    q.save(args.out / "posterior.pt")
    result.to_csv(args.out / "history.csv")
    with open(args.out / "metrics.json", "w") as fh:
        json.dump({k: (v if math.isfinite(v) else None) for k, v in metrics.items()}, fh, indent=2)

    plot_elbo(result.history, args.out / "elbo.png")
    # the reliability curve of the posterior predictive p(y|x, D) (mean of S softmax outputs),
    # with the bins and the ECE of bd.evaluate
    cal = bd.diagnostics.calibration(teacher, data.test, num_samples=num_samples, seed=args.seed, n_bins=15)
    plot_calibration(cal, args.out / "calibration.png")

    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")
    return metrics


if __name__ == "__main__":
    main()
