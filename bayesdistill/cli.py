"""The ``bayesdistill`` command: train a Bayesian teacher, evaluate a saved posterior, run the demo.

::

    bayesdistill fit --dataset mnist1d --model cnn-deep --epochs 100 --out runs/teacher
    bayesdistill evaluate --posterior runs/teacher/posterior.pt --dataset mnist1d --json
    bayesdistill distill --teacher runs/teacher/posterior.pt --student cnn-small \
        --train-fraction 0.1 --out runs/student
    bayesdistill distill --teacher runs/teacher/posterior.pt --student mlp --method kd,vid \
        --transfer 50000 --out runs/mlp-student
    bayesdistill demo --out bayesdistill-demo            # add --quick for a seconds-long smoke run
    python -m bayesdistill --version

``fit`` (and ``demo``) write into ``--out``:

- ``posterior.pt``: the mean-field posterior q(w) (:class:`~bayesdistill.MeanFieldPosterior`)
  with metadata naming the architecture, so ``evaluate`` can rebuild the network;
- ``metrics.json``: test-set metrics of the posterior predictive, the dataset, model and
  configuration, and the wall time;
- ``history.csv``: per-epoch ELBO, NLL, KL (nats), loss, learning rate, ...;
- ``elbo.png``, ``calibration.png``, ``snr.png``: training curves, reliability diagram and
  the posterior signal-to-noise histogram;
- ``checkpoints/checkpoint.pt``: written after every epoch; ``--resume`` continues from it.

``distill --method`` chooses how knowledge moves (a comma list, default ``prior``):

- ``prior``: aligns the teacher posterior to a smaller student architecture (``bd.align``) and
  trains the student with the aligned teacher posterior as its prior
  (``priors.TeacherPosterior(q, plan=plan)``); only for students reachable by alignment (a
  CNN teacher cannot be aligned to an MLP: exit 2 with a one-line reason);
- ``kd``, ``vid``, ``pkt``, ``hint``: function-space terms (``bayesdistill.distill.KD``, ``VID``,
  ``PKT``, ``Hint``) in the student's objective, for any teacher/student pair; the feature pairs
  of vid/pkt/hint default to the teacher's last hidden activation -> the student's
  (``--vid-pairs T:S,...`` overrides), and ``--transfer N`` adds N generated unlabelled MNIST-1D
  inputs on which only these terms act. Without ``prior`` the student's prior is Normal(0, 1).

As a reference the same student is trained with a plain ``Normal(0, 1)`` prior and no terms.
``distill`` writes into ``--out``: ``metrics.json`` (both students' test metrics, the teacher's,
the methods; with ``prior`` the aligned teacher's before training and the plan's per-layer data;
with terms their settings, pairs and last values), ``posterior.pt`` (the distilled student;
``evaluate`` works on it), ``history.csv`` / ``plain_history.csv``, ``elbo.png``,
``cosine_distances.png`` (cosine distances of same-class and different-class test pairs in the
last hidden representations of teacher, plain and distilled student), with ``prior``
``plan.json``, ``plan.pt``, ``alignment.png``, ``pruning_curve.png``, with ``vid``
``vid_bounds.png`` (and ``students.png`` with ``--monitor``).

``demo`` trains a teacher (``cnn-deep`` on MNIST-1D) into ``OUT/teacher``, distills it into
``cnn-small`` on 10 % of the training set into ``OUT/student``, distills the same teacher into
Bayesian MLPs (plain vs KD vs VID+KD, ``FS_DEMO``) into ``OUT/function-space``, and writes
``OUT/report.md``.
Errors in the input (a missing or damaged posterior file,
an unknown dataset or model, data that do not fit the network) print one line on stderr and
exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from ._io import atomic_write

__all__ = ["main", "build_parser", "TEACHER_DEFAULTS", "DISTILL_DEFAULTS", "FUNCTION_SPACE_DEFAULTS", "METHODS",
           "QUICK_DEMO", "FS_DEMO", "run_fit", "run_distill", "run_function_space_demo"]

#: Default teacher hyperparameters, used by ``fit`` (for options not given) and ``demo``.
TEACHER_DEFAULTS: dict[str, Any] = {
    "epochs": 100,
    "lr": 3e-3,
    "batch_size": 128,
    "prior_scale": 1.0,
    "lr_schedule": "cosine",
    "channels": 32,
    # A tempered ("cold") posterior: the converged mean-field posterior of the full ELBO
    # (kl_weight=1) is under-confident on MNIST-1D (benchmarks/quality.py, 3 seeds: ECE
    # 0.066-0.075); with 0.5 the ECE is 0.033-0.040 at 93.0-95.3% accuracy. docs/benchmarks.md.
    "kl_weight": 0.5,
}

#: Default distillation settings, used by ``distill`` (for options not given) and ``demo``:
#: student training (``epochs``, ``lr``, ``batch_size``, ``kl_weight``, ``lr_schedule``), the
#: alignment (``criterion``, ``compensation``: least-squares re-fits on the teacher's training
#: inputs), the prior (``variance``: the ``scale`` of ``priors.TeacherPosterior``) and the initialization
#: (``init``: ``"prior-mean"`` = the aligned teacher means, ``"random"`` = the network's own).
DISTILL_DEFAULTS: dict[str, Any] = {
    "epochs": 150,
    "lr": 3e-3,
    "batch_size": 128,
    "criterion": "snr",
    "variance": "unit",
    "init": "prior-mean",
    "compensation": True,
    "kl_weight": 0.5,
    "lr_schedule": "cosine",
}

#: ``METHODS``: the distillation methods of ``distill --method``: ``prior`` is the Bayesian route
#: (the aligned teacher posterior as the student's prior, ``bd.align``; only for students
#: reachable by alignment), the others are the registered function-space terms of the student's
#: objective (``bayesdistill.distill.available_terms()``: kd, vid, pkt, hint, ...), which work for
#: any teacher/student pair. ``FUNCTION_SPACE_DEFAULTS``: the defaults of their options
#: (``--kd-temperature`` ...: ``{"kd_temperature": 4.0, ...}``, from each term's registration).
#: Both are read from the registry when asked for, so a term registered later is included.
_PRIOR_METHOD = "prior"


def __getattr__(name: str) -> Any:
    if name == "METHODS":
        return _method_names()
    if name == "FUNCTION_SPACE_DEFAULTS":
        from .distill.terms.registry import term_defaults

        return term_defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _method_names() -> tuple[str, ...]:
    from .distill.terms.registry import available_terms

    return (_PRIOR_METHOD, *available_terms())

#: Overrides of ``demo --quick``: a seconds-long smoke run on a small subset.
QUICK_DEMO: dict[str, Any] = {"epochs": 3, "train_fraction": 0.1, "num_samples": 8}

#: The demo's student: ``cnn-small`` (narrower and one layer shallower than the ``cnn-deep``
#: teacher) on this fraction of the training set; ``QUICK_DEMO["epochs"]`` epochs with ``--quick``.
DEMO_STUDENT: dict[str, Any] = {"teacher_model": "cnn-deep", "student": "cnn-small", "train_fraction": 0.1}

#: The demo's function-space comparison: the demo's teacher (cnn-deep) into Bayesian MLPs (the
#: default 40-256-256-10, prior Normal(0, 1)) on the whole training set, plain vs KD vs VID+KD
#: (``variants``: name -> methods), ``epochs`` each (``QUICK_DEMO["epochs"]`` with ``--quick``, on
#: ``QUICK_DEMO["train_fraction"]`` of the data), the other settings from DISTILL_DEFAULTS and
#: FUNCTION_SPACE_DEFAULTS. Students reading the teacher's features need a mean-field net that
#: runs the teacher on every step, so this stage is kept short.
FS_DEMO: dict[str, Any] = {
    "student": "mlp",
    "epochs": 50,
    "train_fraction": 1.0,
    "variants": {"plain": [], "kd": ["kd"], "vid+kd": ["vid", "kd"]},
}

#: Fractions of hidden units removed in ``distill``'s pruning_curve.png, and the most probe
#: inputs those curves' compensating re-fits use (kept cheap: a diagnostic plot).
PRUNING_PLOT_FRACTIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
PRUNING_PLOT_MAX_PROBE = 1024

#: Defaults of the options that are not teacher hyperparameters.
RUN_DEFAULTS: dict[str, Any] = {
    "dataset": "mnist1d",
    "model": "cnn",
    "hidden": (256, 256),
    "seed": 0,
    "device": "auto",
    "train_fraction": 1.0,
    "num_samples": 32,
    "local_reparam": False,
    "monitor": False,
    "checkpoint": True,
    "resume": False,
    "overwrite": False,
    "extend": False,
    "quiet": False,
}

#: Observation noise of the regression likelihood (initial value; it is learned).
REGRESSION_NOISE = 0.1

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error detected by the command line itself (reported in one line, exit 2)."""


# --------------------------------------------------------------------------- argument types
def _number(kind: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: parse ``kind`` from text and check ``ok`` (finite values only)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
_fraction = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def _variance(text: str) -> Any:
    if text in ("posterior", "unit", "learned"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected posterior, unit, learned or a positive number (a prior standard deviation), got {text!r}"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive prior standard deviation, got {text!r}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _methods(text: str) -> tuple[str, ...]:
    methods = _method_names()
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in methods]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(methods)}; got {text!r}"
            + (f" (unknown: {', '.join(bad)})" if bad else "")
        )
    return values


def _feature_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        t, sep, s = item.partition(":")
        if not sep or not t.strip() or not s.strip():
            raise argparse.ArgumentTypeError(
                f"expected TEACHER_MODULE:STUDENT_MODULE pairs separated by commas (e.g. 8:4), got {text!r}"
            )
        if t.strip() in pairs:
            raise argparse.ArgumentTypeError(f"teacher module {t.strip()!r} appears twice in {text!r}")
        pairs[t.strip()] = s.strip()
    if not pairs:
        raise argparse.ArgumentTypeError(f"expected TEACHER_MODULE:STUDENT_MODULE pairs, got {text!r}")
    return pairs


# --------------------------------------------------------------------------- parser
#: Appended to a help text that states its default itself: "%(default).0s" expands to nothing
#: but stops ArgumentDefaultsHelpFormatter from adding "(default: None)".
_NO_DEFAULT = "%(default).0s"

def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bayesdistill",
        description="Bayesian knowledge distillation: train mean-field Bayesian teachers and "
        "evaluate their posteriors.",
        epilog="Run 'bayesdistill COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"bayesdistill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = TEACHER_DEFAULTS
    fit = sub.add_parser(
        "fit",
        help="train a Bayesian teacher by SVI and write its posterior, metrics and plots",
        description="Train a mean-field Bayesian network (a teacher) by stochastic variational "
        "inference and write posterior.pt, metrics.json, history.csv and plots into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fit.add_argument("--dataset", default=RUN_DEFAULTS["dataset"],
                     help="mnist1d, digits or synthetic-regression")
    fit.add_argument("--model", default=RUN_DEFAULTS["model"], help="cnn, cnn-deep, cnn-small (1-D CNNs) or mlp (see bayesdistill.models)")
    fit.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    _add_training_options(fit, d)
    fit.set_defaults(handler=_cmd_fit)

    ev = sub.add_parser(
        "evaluate",
        help="evaluate a saved posterior on a dataset's test split",
        description="Rebuild the network from a posterior written by 'bayesdistill fit' and print "
        "its test-set metrics (posterior predictive averaged over --num-samples draws).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("--posterior", type=Path, required=True, help="posterior.pt written by fit")
    ev.add_argument("--dataset", default=None,
                    help="dataset to evaluate on (default: the one the posterior was trained on)")
    ev.add_argument("--num-samples", type=_positive_int, default=RUN_DEFAULTS["num_samples"],
                    help="posterior draws S for the predictive")
    ev.add_argument("--seed", type=int, default=None,
                    help="seed of the posterior draws (default: the one fit used, so the metrics "
                    "reproduce metrics.json)")
    ev.add_argument("--device", default=RUN_DEFAULTS["device"], help="cpu, cuda, cuda:1, or auto")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(handler=_cmd_evaluate)

    from .distill.terms.registry import TERMS, add_term_options

    dd = DISTILL_DEFAULTS
    dist = sub.add_parser(
        "distill",
        help="distill a teacher posterior into a Bayesian student (aligned-teacher prior, KD, VID, PKT, Hint)",
        description="Distill a teacher posterior (written by 'bayesdistill fit') into a Bayesian student. "
        "--method prior (the default) aligns the teacher posterior to a smaller student architecture "
        "and trains the student with the aligned teacher posterior as its prior; kd, vid, pkt and hint "
        "add function-space terms (outputs, features) to the student's objective and work for any "
        "student, e.g. a CNN teacher and an MLP student. As a reference the same student is trained "
        "with a plain Normal(0, 1) prior and no terms. Writes metrics.json, the student's posterior.pt, "
        "histories and plots (plan.json/plan.pt with prior, vid_bounds.png with vid, "
        "cosine_distances.png) into --out and prints a comparison.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dist.add_argument("--teacher", type=Path, required=True, help="the teacher's posterior.pt (from fit)" + _NO_DEFAULT)
    dist.add_argument("--student", required=True,
                      help="student architecture: cnn-small, cnn, cnn-deep or mlp (for --method prior no wider, "
                      "no deeper than the teacher and of the same kind; any for kd, vid, pkt, hint)"
                      + _NO_DEFAULT)
    dist.add_argument("--out", type=Path, required=True, help="output folder (created if needed)" + _NO_DEFAULT)
    dist.add_argument("--dataset", default=None, help="dataset (default: the teacher's)" + _NO_DEFAULT)
    dist.add_argument("--method", type=_methods, default=None,
                      help="comma-separated distillation methods: prior (aligned teacher posterior as the "
                      "prior; needs a student reachable by alignment), "
                      + ", ".join(f"{n} ({s.description})" for n, s in TERMS.items()).replace("%", "%%")
                      + "; e.g. prior,vid or kd,vid (default: prior)" + _NO_DEFAULT)
    dist.add_argument("--transfer", type=_positive_int, default=None, metavar="N",
                      help="also train the function-space terms on N unlabelled MNIST-1D inputs generated by "
                      "bd.datasets.mnist1d_samples(N, seed=1000+SEED) (mnist1d only; default: none)" + _NO_DEFAULT)
    dist.add_argument("--vid-pairs", "--pairs", dest="pairs", type=_feature_pairs, default=None, metavar="T:S,...",
                      help="teacher:student module paths of the feature pairs of "
                      + ", ".join(n for n, s in TERMS.items() if s.pairs) + " (default: the "
                      "teacher's last hidden activation, e.g. the ReLU before the Flatten, -> the student's)"
                      + _NO_DEFAULT)
    add_term_options(dist)  # --<term>-<option> of every registered term (--kd-temperature, --vid-weight, ...)
    dist.add_argument("--train-fraction", type=_fraction, default=RUN_DEFAULTS["train_fraction"],
                      help="train the students on this class-balanced fraction of the training set")
    _add_optimization_options(dist, dd)
    dist.add_argument("--criterion", choices=["snr", "data", "random"], default=dd["criterion"],
                      help="which units alignment removes: lowest signal-to-noise ratio, smallest "
                      "contribution on the probe data, or random (the paper's choice)")
    dist.add_argument("--variance", type=_variance, default=dd["variance"],
                      help="prior scale of the distilled student: posterior (the teacher's), unit, "
                      "learned (empirical Bayes, one scale per tensor) or a number")
    dist.add_argument("--init", choices=["prior-mean", "random"], default=dd["init"],
                      help="initial means of the distilled student: the aligned teacher means or the "
                      "network's random initialization")
    dist.add_argument("--no-compensation", dest="compensation", action="store_false", default=dd["compensation"],
                      help="do not re-fit the next layer on the teacher's training inputs after each removal (default: re-fit)" + _NO_DEFAULT)
    dist.add_argument("--probe-size", type=_positive_int, default=None,
                      help="use this many of the teacher's training inputs (a seeded random subset) as "
                      "probe data for alignment (default: all of them)" + _NO_DEFAULT)
    dist.add_argument("--channels", type=_positive_int, default=None,
                      help="cnn students: channels per conv layer (default: the architecture's own)" + _NO_DEFAULT)
    dist.add_argument("--hidden", type=_int_list, default=None,
                      help="mlp students: hidden layer widths, comma-separated (default: 256,256)" + _NO_DEFAULT)
    dist.add_argument("--num-samples", type=_positive_int, default=RUN_DEFAULTS["num_samples"],
                      help="posterior draws S for the test metrics")
    dist.add_argument("--monitor", action="store_true",
                      help="evaluate both students on the test split after every epoch (students.png)")
    dist.add_argument("--seed", type=int, default=RUN_DEFAULTS["seed"],
                      help="seeds the student network, alignment, training and the evaluation draws")
    dist.add_argument("--device", default=RUN_DEFAULTS["device"], help="cpu, cuda, cuda:1, or auto")
    dist.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    dist.set_defaults(handler=_cmd_distill)

    demo = sub.add_parser(
        "demo",
        help="train a teacher (CNN on MNIST-1D), distill it into a smaller student and into MLPs, write a report",
        description="Train a Bayesian teacher (cnn-deep on MNIST-1D with TEACHER_DEFAULTS) into OUT/teacher, "
        "distill it into cnn-small on 10% of the training set (DISTILL_DEFAULTS) against a plain "
        "student into OUT/student, distill it into Bayesian MLPs on the whole training set (plain vs KD "
        "vs VID+KD, FS_DEMO) into OUT/function-space, and write OUT/report.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("bayesdistill-demo"), help="output folder")
    demo.add_argument("--quick", action="store_true",
                      help=f"a smoke run in seconds ({QUICK_DEMO['epochs']} epochs on "
                      f"{QUICK_DEMO['train_fraction']:.0%} of the training set)".replace("%", "%%"))
    demo.add_argument("--seed", type=int, default=RUN_DEFAULTS["seed"], help="random seed")
    demo.add_argument("--device", default=RUN_DEFAULTS["device"], help="cpu, cuda, cuda:1, or auto")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_cmd_demo)
    for p in (fit, ev, dist, demo):  # also accepted after the command; SUPPRESS keeps a leading --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks for errors")
    return parser


def _add_optimization_options(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    """The SVI options shared by `fit` and `distill` (defaults from ``d``)."""
    p.add_argument("--epochs", type=_nonnegative_int, default=d["epochs"], help="passes over the training set")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="examples per SVI step")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="Adam learning rate")
    p.add_argument("--lr-schedule", choices=["cosine", "none"], default=d["lr_schedule"] or "none",
                   help="learning-rate schedule over the epochs")
    p.add_argument("--kl-weight", type=_nonnegative_float, default=d["kl_weight"],
                   help="multiplies KL(q||p) in the objective (< 1: a 'cold' posterior)")


def _add_training_options(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    _add_optimization_options(p, d)
    p.add_argument("--prior-scale", type=_positive_float, default=d["prior_scale"],
                   help="standard deviation of the isotropic Normal(0, s^2) weight prior")
    p.add_argument("--local-reparam", nargs="?", const="all", default=False, choices=["all", "linear"],
                   help="local reparameterization (sample pre-activations; lower-variance gradients): "
                   "all Linear/Conv layers (no value or 'all') or Linear layers only ('linear')")
    p.add_argument("--channels", type=_positive_int, default=d["channels"], help="cnn: channels per conv layer")
    p.add_argument("--hidden", type=_int_list, default=RUN_DEFAULTS["hidden"],
                   help="mlp: hidden layer widths, comma-separated (e.g. 256,256)")
    p.add_argument("--train-fraction", type=_fraction, default=RUN_DEFAULTS["train_fraction"],
                   help="train on this class-balanced fraction of the training set")
    p.add_argument("--num-samples", type=_positive_int, default=RUN_DEFAULTS["num_samples"],
                   help="posterior draws S for the test metrics and the calibration plot")
    p.add_argument("--seed", type=int, default=RUN_DEFAULTS["seed"],
                   help="seeds initialization, batch order, SVI noise and the evaluation draws")
    p.add_argument("--device", default=RUN_DEFAULTS["device"], help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--monitor", action="store_true",
                   help="evaluate on the test split after every epoch (eval_* columns in history.csv)")
    ck = p.add_mutually_exclusive_group()
    ck.add_argument("--resume", action="store_true",
                    help="continue from OUT/checkpoints/checkpoint.pt if it exists (same settings)")
    ck.add_argument("--overwrite", action="store_true",
                    help="replace a run that OUT already holds (default: refuse)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: train a run on to more --epochs than it was planned for "
                   "(the learning-rate schedule continues)")
    ck.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                    help="do not write OUT/checkpoints/checkpoint.pt after each epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")


# --------------------------------------------------------------------------- helpers
def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} was requested but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or auto")
    return device


def _model_kwargs(model: str, cfg: dict[str, Any]) -> dict[str, Any]:
    if model == "cnn":
        return {"channels": int(cfg["channels"])}
    if model == "mlp":
        return {"hidden": [int(h) for h in cfg["hidden"]]}
    return {}


def _likelihood(task: str):
    from .bnn import likelihoods

    if task == "classification":
        return likelihoods.Categorical(), "categorical"
    return likelihoods.Normal(scale=REGRESSION_NOISE, learn_scale=True), "normal"


def _write_json(obj: Any, path: Path) -> Path:
    def write(fh) -> None:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")

    return atomic_write(path, write, binary=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _table(metrics: dict[str, Any], title: str) -> str:
    width = max(len(k) for k in metrics)
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{k:<{width}}  {_fmt(v):>10}" for k, v in metrics.items()]
    return "\n".join(lines)


def _say(quiet: bool, *parts: Any) -> None:
    if not quiet:
        print(*parts, flush=True)


# --------------------------------------------------------------------------- fit
def run_fit(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train a teacher as described by ``cfg`` (the parsed options) and write the artefacts.

    Returns the content of ``metrics.json``.
    """
    import torch

    import bayesdistill as bd

    from .diagnostics import calibration, plots

    t_start = time.perf_counter()
    quiet = bool(cfg["quiet"])
    device = _resolve_device(cfg["device"])
    data = bd.datasets.load(cfg["dataset"], train_fraction=cfg["train_fraction"], seed=cfg["seed"])
    model_kwargs = _model_kwargs(cfg["model"], cfg)
    torch.manual_seed(cfg["seed"])  # network initialization
    net = bd.models.build(cfg["model"], data.input_shape, data.output_dim, **model_kwargs)
    likelihood, likelihood_name = _likelihood(data.task)
    bnn = bd.BNN(
        net,
        prior=bd.priors.Normal(scale=cfg["prior_scale"]),
        likelihood=likelihood,
        dataset_size=len(data.train),
    )
    out.mkdir(parents=True, exist_ok=True)  # only once the dataset and model are known
    _say(quiet, f"fit: {cfg['model']} ({bnn.num_weights} Bayesian weights) on {data.name} "
         f"({len(data.train)} train / {len(data.test)} test, {data.task}), device {device}")
    lr_schedule = None if cfg["lr_schedule"] in (None, "none") else cfg["lr_schedule"]
    result = bd.fit(
        bnn,
        data.train,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        device=device,
        seed=cfg["seed"],
        local_reparam=cfg["local_reparam"],
        kl_weight=cfg["kl_weight"],
        lr_schedule=lr_schedule,
        eval_data=data.test if cfg["monitor"] else None,
        progress=not quiet,
        checkpoint_dir=out / "checkpoints" if cfg["checkpoint"] else None,
        resume=cfg["resume"],
        **({"overwrite": bool(cfg.get("overwrite")), "extend": bool(cfg.get("extend"))} if cfg["checkpoint"] else {}),
    )

    q = bnn.posterior()
    q.metadata = {
        "model": cfg["model"],
        "model_kwargs": model_kwargs,
        "dataset": data.name,
        "input_shape": list(data.input_shape),
        "output_dim": int(data.output_dim),
        "task": data.task,
        "likelihood": likelihood_name,
        "prior_scale": float(cfg["prior_scale"]),
        "seed": int(cfg["seed"]),
        "train_fraction": float(cfg["train_fraction"]),
        "epochs": len(result.history),
        "bayesdistill_version": bd.__version__,
    }
    q.save(out / "posterior.pt")
    # evaluate exactly what evaluate() will rebuild from the file (rho = softplus^-1(scale))
    bnn.load_posterior(q)
    test = bd.evaluate(bnn, data.test, num_samples=cfg["num_samples"], seed=cfg["seed"])
    last = result.history[-1] if result.history else {}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k not in ("quiet",)}
    config["device"] = str(device)
    metrics = {
        "dataset": data.name,
        "model": cfg["model"],
        "task": data.task,
        "test": test,
        "train": {k: last[k] for k in ("elbo", "nll", "kl") if k in last},
        "epochs_trained": len(result.history),
        "train_size": len(data.train),
        "test_size": len(data.test),
        "num_weights": bnn.num_weights,
        "config": config,
        "train_time_s": float(sum(r.get("time_s", 0.0) for r in result.history)),
        "wall_time_s": None,  # filled in below
        "bayesdistill_version": bd.__version__,
    }
    if result.history:
        result.to_csv(out / "history.csv")
    else:
        (out / "history.csv").write_text("epoch\n")

    if result.history:
        plots.save(plots.elbo(result), out / "elbo.png")
    cal = calibration(bnn, data.test, num_samples=cfg["num_samples"], seed=cfg["seed"])
    metrics["calibration"] = cal.to_dict()
    plots.save(plots.calibration(cal, title=f"{cfg['model']} on {data.name}"), out / "calibration.png")
    plots.save(plots.snr_histogram(q), out / "snr.png")
    metrics["wall_time_s"] = time.perf_counter() - t_start
    _write_json(metrics, out / "metrics.json")
    return metrics


def _print_metrics(metrics: dict[str, Any], out: Optional[Path], quiet: bool) -> None:
    shown = {k: v for k, v in metrics["test"].items()}
    title = f"test metrics: {metrics['model']} on {metrics['dataset']} (S = {shown.pop('num_samples', '?')} draws)"
    print(_table(shown, title))
    if out is not None:
        print(f"wall time {metrics['wall_time_s']:.1f} s; artefacts in {out}")


def _cfg_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("dataset", "model", "epochs", "batch_size", "lr", "lr_schedule", "prior_scale", "kl_weight",
            "local_reparam", "channels", "hidden", "train_fraction", "num_samples", "seed", "device",
            "monitor", "checkpoint", "resume", "overwrite", "extend", "quiet")
    return {k: getattr(args, k) for k in keys}


def _cmd_fit(args: argparse.Namespace) -> int:
    cfg = _cfg_from_args(args)
    metrics = run_fit(cfg, args.out)
    _print_metrics(metrics, args.out, cfg["quiet"])
    return 0


# --------------------------------------------------------------------------- evaluate
_ARCH_KEYS = ("model", "input_shape", "output_dim")


def load_teacher(path: Path, device=None):
    """Rebuild the :class:`~bayesdistill.BNN` described by a posterior file's metadata.

    Returns ``(bnn, posterior)``. Raises :class:`~bayesdistill.PosteriorFormatError` for a file
    whose metadata lack the architecture (``model``, ``input_shape``, ``output_dim``).
    """
    import bayesdistill as bd

    q = bd.MeanFieldPosterior.load(path)
    meta = q.metadata
    missing = [k for k in _ARCH_KEYS if k not in meta]
    if missing:
        raise bd.PosteriorFormatError(
            f"{str(path)!r} holds a posterior without architecture metadata (missing {missing}); "
            "it was not written by 'bayesdistill fit'. Rebuild the network in Python and use "
            "bnn.load_posterior(MeanFieldPosterior.load(path))"
        )
    try:
        net = bd.models.build(meta["model"], meta["input_shape"], meta["output_dim"], **dict(meta.get("model_kwargs") or {}))
    except TypeError as err:
        raise bd.PosteriorFormatError(f"{str(path)!r}: bad model_kwargs in the metadata ({err})") from err
    task = meta.get("task") or ("regression" if meta.get("likelihood") == "normal" else "classification")
    likelihood, _ = _likelihood(task)
    bnn = bd.BNN(net, prior=bd.priors.Normal(scale=float(meta.get("prior_scale", 1.0))), likelihood=likelihood)
    bnn.load_posterior(q)
    if device is not None:
        bnn.to(device)
    return bnn, q


def _check_fits(meta: dict[str, Any], data: Any, what: str = "the posterior") -> None:
    """Raise ShapeMismatchError unless ``data`` has the input shape and outputs of ``meta``."""
    import bayesdistill as bd

    if tuple(data.input_shape) != tuple(meta["input_shape"]) or int(data.output_dim) != int(meta["output_dim"]):
        raise bd.ShapeMismatchError(
            f"{what} was trained on inputs of shape {tuple(meta['input_shape'])} with "
            f"{meta['output_dim']} outputs, but {data.name!r} has inputs {tuple(data.input_shape)} "
            f"and {data.output_dim} outputs"
        )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import bayesdistill as bd

    device = _resolve_device(args.device)
    bnn, q = load_teacher(args.posterior, device)
    meta = q.metadata
    name = args.dataset or meta.get("dataset")
    if not name:
        raise CLIError(f"{str(args.posterior)!r} does not record its dataset; pass --dataset")
    data = bd.datasets.load(name)
    _check_fits(meta, data)
    seed = args.seed if args.seed is not None else int(meta.get("seed", 0))
    scores = bd.evaluate(bnn, data.test, num_samples=args.num_samples, seed=seed)
    if args.json:
        print(json.dumps({"posterior": str(args.posterior), "dataset": data.name, "model": meta["model"],
                          "seed": seed, "test": scores}, indent=2))
    else:
        _print_metrics({"test": scores, "model": meta["model"], "dataset": data.name}, None, False)
    return 0


# --------------------------------------------------------------------------- distill
def _student_kwargs(model: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Architecture options of the student given on the command line (``--channels``/``--hidden``)."""
    kw: dict[str, Any] = {}
    if cfg.get("channels") is not None:
        if not model.startswith("cnn"):
            raise CLIError(f"--channels applies to cnn students, not {model!r}")
        kw["channels"] = int(cfg["channels"])
    if cfg.get("hidden") is not None:
        if model != "mlp":
            raise CLIError(f"--hidden applies to mlp students, not {model!r}")
        kw["hidden"] = [int(h) for h in cfg["hidden"]]
    return kw


def _probe_inputs(meta: dict[str, Any], name: str, size: Optional[int], seed: int):
    """The teacher's training inputs (its dataset, train fraction and seed from the metadata).

    ``size``: a seeded random subset of that many (kept in dataset order).
    """
    import torch

    import bayesdistill as bd

    teacher_data = bd.datasets.load(name, train_fraction=float(meta.get("train_fraction", 1.0)),
                                    seed=int(meta.get("seed", 0)))
    x = teacher_data.train.tensors[0]
    if size is not None and size < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size].sort().values
        x = x[idx]
    return x


def _compare_table(columns: dict[str, dict[str, Any]], title: str) -> str:
    """Metrics side by side: one column per network (name -> metrics dict)."""
    keys = list(dict.fromkeys(k for m in columns.values() for k in m if k != "num_samples"))
    width = max([len(k) for k in keys] + [8])
    colw = max([len(c) for c in columns] + [10])
    header = f"{'':<{width}}  " + "  ".join(f"{c:>{colw}}" for c in columns)
    lines = [title, "-" * max(len(title), len(header)), header]
    for k in keys:
        cells = "  ".join(f"{_fmt(m[k]) if k in m else '-':>{colw}}" for m in columns.values())
        lines.append(f"{k:<{width}}  {cells}")
    return "\n".join(lines)


def _last_hidden(net: Any, what: str = "network") -> str:
    """The default feature module of ``net`` (:func:`~bayesdistill.bnn.last_hidden_layer`), or a
    one-line error when it has none."""
    from .bnn.taps import last_hidden_layer

    layer = last_hidden_layer(net)
    if layer is None:
        raise CLIError(f"the {what} has no activation module before its read-out to take features from; "
                       "name the feature pairs with --vid-pairs TEACHER_MODULE:STUDENT_MODULE")
    return layer


def _default_pairs(teacher_net: Any, student_net: Any) -> dict[str, str]:
    return {_last_hidden(teacher_net, "teacher"): _last_hidden(student_net, "student")}


def _check_pairs(teacher_net: Any, student_net: Any, pairs: dict[str, str]) -> None:
    """One-line errors for module paths that do not exist (before anything is trained)."""
    from .bnn.taps import FeatureTaps

    FeatureTaps(teacher_net, list(pairs), "teacher")
    FeatureTaps(student_net, list(pairs.values()), "student")


def _fs_terms(methods: Sequence[str], teacher: Any, pairs: Optional[dict[str, str]], cfg: dict[str, Any]) -> list[Any]:
    """The function-space terms of ``methods`` (registered term names), in the order given, built
    through the registry with the ``<term>_<option>`` values of ``cfg`` (defaults for the rest)."""
    from .distill.terms.registry import terms_from_options

    return terms_from_options(methods, teacher, pairs, cfg)


def _has_term_metric(history: list[dict[str, float]], metric: str) -> bool:
    """Whether the last epoch of ``history`` has a ``distill/<term>/.../<metric>`` column."""
    return bool(history) and any(k.startswith("distill/") and k.endswith("/" + metric) for k in history[-1])


def _cosine_figure(models: list[tuple[str, Any, Optional[str]]], test: Any, seed: int, title: str):
    """The cosine distances of ``models`` on ``test`` (bd.diagnostics.cosine_distances), their
    figure and their per-model numbers for metrics.json."""
    from .diagnostics import cosine_distances, plots

    result = cosine_distances(models, test, seed=seed)
    return plots.cosine_distances(result, title=title), result.to_dict()["models"]


def _term_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """The last epoch's distillation-term columns (``distill/<term>/<metric>``: losses, VID log q
    and bounds, ... of whatever terms were trained)."""
    last = history[-1] if history else {}
    return {k: v for k, v in last.items() if k.startswith("distill/")}


def run_distill(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Distill the teacher posterior ``cfg["teacher"]`` into ``cfg["student"]`` and write the artefacts.

    ``cfg`` holds the parsed options of ``bayesdistill distill``. ``cfg["method"]`` (default
    ``("prior",)``) chooses the route: ``prior`` aligns the teacher posterior to the student and
    makes it the student's prior; ``kd``, ``vid``, ``pkt``, ``hint`` add function-space terms.
    Returns the content of ``metrics.json``.
    """
    import torch

    import bayesdistill as bd

    from .bnn.taps import last_hidden_layer
    from .diagnostics import plots
    from .distill.terms.registry import TERMS, available_terms, term_options

    t_start = time.perf_counter()
    quiet = bool(cfg["quiet"])
    methods = tuple(cfg.get("method") or ("prior",))
    use_prior = "prior" in methods
    fs_methods = [m for m in methods if m != _PRIOR_METHOD]
    pair_methods = [n for n, s in TERMS.items() if s.pairs]
    device = _resolve_device(cfg["device"])
    teacher, q_file = load_teacher(Path(cfg["teacher"]), device)
    meta = q_file.metadata
    q_teacher = teacher.posterior()  # the plan's source (plan.apply recognizes it exactly)
    name = cfg["dataset"] or meta.get("dataset")
    if not name:
        raise CLIError(f"{str(cfg['teacher'])!r} does not record its dataset; pass --dataset")
    transfer_n = cfg.get("transfer")
    if transfer_n:
        canonical = name.lower().replace("_", "-")
        if canonical != "mnist1d":
            raise CLIError(f"--transfer generates unlabelled MNIST-1D inputs (bd.datasets.mnist1d_samples) and "
                           f"only works with --dataset mnist1d, not {name!r}")
        if not fs_methods:
            raise CLIError("--transfer feeds unlabelled inputs to function-space terms; add one to --method "
                           f"({', '.join(available_terms())})")
    if cfg.get("pairs") and not any(m in pair_methods for m in fs_methods):
        raise CLIError(f"--vid-pairs names the feature pairs of {', '.join(pair_methods)}; none of them is in --method")
    data = bd.datasets.load(name, train_fraction=cfg["train_fraction"], seed=cfg["seed"])
    _check_fits(meta, data, "the teacher")
    for m in fs_methods:
        tasks = TERMS[m].tasks
        if tasks is not None and data.task not in tasks:
            raise CLIError(f"--method {m} ({TERMS[m].description}) needs a {' or '.join(tasks)} dataset; "
                           f"{data.name!r} is {data.task}")
    student_kwargs = _student_kwargs(cfg["student"], cfg)
    torch.manual_seed(cfg["seed"])  # the student network's initialization (both students share it)
    student_net = bd.models.build(cfg["student"], data.input_shape, data.output_dim, **student_kwargs)
    pairs: Optional[dict[str, str]] = None
    if any(m in pair_methods for m in fs_methods):
        pairs = dict(cfg["pairs"]) if cfg.get("pairs") else _default_pairs(teacher.net, student_net)
        _check_pairs(teacher.net, student_net, pairs)

    compensation = bool(cfg["compensation"])
    needs_probe = use_prior and (compensation or cfg["criterion"] == "data")
    plan, probe, align_time = None, None, 0.0
    if use_prior:
        probe = _probe_inputs(meta, data.name, cfg["probe_size"], cfg["seed"])
        hint = (f"; the function-space methods work for any student: --method {', '.join(available_terms())} "
                "(e.g. --method kd,vid)")
        asked = "--method prior: " if cfg.get("method") else ""
        t_align = time.perf_counter()
        try:
            bd.distill.check_alignable(teacher.net, student_net)
            plan = bd.align(teacher, student_net, criterion=cfg["criterion"], probe=probe if needs_probe else None,
                            compensation=compensation, seed=cfg["seed"], max_probe=len(probe))
        except (bd.ShapeMismatchError, bd.UnsupportedLayerError) as err:
            raise type(err)(f"{asked}cannot align teacher {meta['model']} to student {cfg['student']}: {err}{hint}") from err
        align_time = time.perf_counter() - t_align

    warnings: list[str] = []
    if use_prior and cfg["variance"] == "posterior":
        # a degenerate aligned scale (e.g. a folded layer's unmatched unit) makes KL(q || p) explode
        scales = plan.apply(q_teacher).scales
        tiny = {k: int((v < 1e-8).sum()) for k, v in scales.items() if bool((v < 1e-8).any())}
        if tiny:
            warnings.append(
                f"--variance posterior: {sum(tiny.values())} aligned teacher scales are below 1e-8 ({tiny}); "
                "the prior pins those weights and KL(q || p) will be huge; consider --variance unit or learned"
            )
    for w in warnings:
        print(f"bayesdistill distill: warning: {w}", file=sys.stderr)
    likelihood_name = _likelihood(data.task)[1]
    if use_prior:
        distilled = bd.student_from_teacher(
            teacher, student_net, plan=plan, prior_scale=cfg["variance"], likelihood=_likelihood(data.task)[0],
            init="prior-mean" if cfg["init"] == "prior-mean" else "module", dataset_size=len(data.train))
    else:
        distilled = bd.BNN(student_net, prior=bd.priors.Normal(scale=1.0), likelihood=_likelihood(data.task)[0],
                           dataset_size=len(data.train), init="module")
    plain = bd.BNN(student_net, prior=bd.priors.Normal(scale=1.0), likelihood=_likelihood(data.task)[0],
                   dataset_size=len(data.train), init="module")
    terms = _fs_terms(fs_methods, teacher, pairs, cfg)
    x_transfer = bd.datasets.mnist1d_samples(int(transfer_n), seed=1000 + int(cfg["seed"])) if transfer_n else None
    out.mkdir(parents=True, exist_ok=True)  # only once teacher, dataset, student and plan are known
    _say(quiet, f"distill: teacher {meta['model']} ({teacher.num_weights} Bayesian weights) -> student "
         f"{cfg['student']} ({distilled.num_weights}) on {data.name} ({len(data.train)} train / "
         f"{len(data.test)} test), method {','.join(methods)}"
         + (f", probe {len(probe) if needs_probe else 0} teacher inputs" if use_prior else "")
         + (f", transfer {len(x_transfer)} unlabelled inputs" if x_transfer is not None else "")
         + f", device {device}")
    if plan is not None:
        _say(quiet, plan.summary())

    lr_schedule = None if cfg["lr_schedule"] in (None, "none") else cfg["lr_schedule"]
    fit_kw = dict(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], device=device, seed=cfg["seed"],
                  kl_weight=cfg["kl_weight"], lr_schedule=lr_schedule, progress=not quiet,
                  eval_data=data.test if cfg["monitor"] else None)
    what = []
    if use_prior:
        what.append(f"prior: aligned teacher posterior, variance={cfg['variance']}, init={cfg['init']}")
    else:
        what.append("prior: Normal(0, 1), random init")
    if terms:
        what.append("terms: " + ", ".join(t.name for t in terms) + (f" on pairs {pairs}" if pairs else ""))
    _say(quiet, f"training the distilled student ({'; '.join(what)})")
    distill_kw: dict[str, Any] = dict(distill=terms, transfer=x_transfer) if terms else {}
    res_distilled = bd.fit(distilled, data.train, **fit_kw, **distill_kw)
    _say(quiet, "training the plain student (prior: Normal(0, 1), random init, no distillation terms)")
    res_plain = bd.fit(plain, data.train, **fit_kw)

    ev = dict(num_samples=cfg["num_samples"], seed=cfg["seed"])
    q_student = distilled.posterior()
    q_student.metadata = {
        "model": cfg["student"],
        "model_kwargs": student_kwargs,
        "dataset": data.name,
        "input_shape": list(data.input_shape),
        "output_dim": int(data.output_dim),
        "task": data.task,
        "likelihood": likelihood_name,
        "prior": "teacher-posterior" if use_prior else "normal",
        "seed": int(cfg["seed"]),
        "train_fraction": float(cfg["train_fraction"]),
        "epochs": len(res_distilled.history),
        "teacher": str(cfg["teacher"]),
        "teacher_model": meta["model"],
        "distill": {"method": list(methods),
                    **{k: cfg[k] for k in ("criterion", "variance", "init", "compensation", "kl_weight")}},
        "bayesdistill_version": bd.__version__,
    }
    if not use_prior:
        q_student.metadata["prior_scale"] = 1.0
    q_student.save(out / "posterior.pt")
    distilled.load_posterior(q_student)  # evaluate exactly what `evaluate` rebuilds from the file
    results = {"teacher": bd.evaluate(teacher, data.test, **ev)}
    if plan is not None:
        results["aligned"] = bd.evaluate(bd.distill.aligned_network(teacher, student_net, plan), data.test, **ev)
    results["distilled"] = bd.evaluate(distilled, data.test, **ev)
    results["plain"] = bd.evaluate(plain, data.test, **ev)
    if plan is not None:
        plan.save(out / "plan.pt")
        plan.to_json(out / "plan.json")

    def part(bnn, result):
        last = result.history[-1] if result.history else {}
        return {"num_weights": bnn.num_weights, "train": {k: last[k] for k in ("elbo", "nll", "kl") if k in last},
                "epochs_trained": len(result.history),
                "train_time_s": float(sum(r.get("time_s", 0.0) for r in result.history))}

    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k != "quiet"}
    config["teacher"] = str(cfg["teacher"])
    config["device"] = str(device)
    config["method"] = list(methods)
    fs_info: Optional[dict[str, Any]] = None
    distilled_history = res_distilled.history
    if terms:
        fs_info = {
            "terms": [t.name for t in terms],
            "pairs": pairs,
            "settings": term_options(cfg, fs_methods),
            "transfer_size": len(x_transfer) if x_transfer is not None else 0,
            "final": _term_summary(distilled_history),
        }
    metrics: dict[str, Any] = {
        "dataset": data.name,
        "task": data.task,
        "methods": list(methods),
        "teacher": {"posterior": str(cfg["teacher"]), "model": meta["model"], "num_weights": teacher.num_weights,
                    "test": results["teacher"]},
        "student": {"model": cfg["student"], "model_kwargs": student_kwargs},
        "distilled": {"test": results["distilled"], **part(distilled, res_distilled)},
        "plain": {"test": results["plain"], **part(plain, res_plain)},
        "aligned": {"test": results["aligned"]} if plan is not None else None,
        "plan": plan.overview() if plan is not None else None,
        "function_space": fs_info,
        "cosine": None,  # filled in below
        "train_size": len(data.train),
        "test_size": len(data.test),
        "probe_size": len(probe) if needs_probe else 0,
        "align_time_s": align_time,
        "config": config,
        "warnings": warnings,
        "pruning_curve": None,  # filled in below (with prior)
        "wall_time_s": None,
        "bayesdistill_version": bd.__version__,
    }
    for result, fname in ((res_distilled, "history.csv"), (res_plain, "plain_history.csv")):
        if result.history:
            result.to_csv(out / fname)
        else:
            (out / fname).write_text("epoch\n")
    if res_distilled.history:
        plots.save(plots.elbo(distilled_history), out / "elbo.png")
        if _has_term_metric(distilled_history, "mi_bound"):
            plots.save(plots.vid_bounds(distilled_history, labels=[f"teacher {t} -> student {s}" for t, s in pairs.items()]),
                       out / "vid_bounds.png")
    if cfg["monitor"] and res_distilled.history:
        plots.save(plots.learning_curves({"distilled": res_distilled.history, "plain": res_plain.history},
                                         results["teacher"],
                                         title=f"distilled (--method {','.join(methods)}) vs plain student"),
                   out / "students.png")
    if data.task == "classification":
        s_layer = last_hidden_layer(student_net)
        fig, metrics["cosine"] = _cosine_figure(
            [(f"teacher {meta['model']}", teacher, last_hidden_layer(teacher.net)),
             (f"plain {cfg['student']}", plain, s_layer),
             (f"distilled {cfg['student']} ({','.join(methods)})", distilled, s_layer)],
            data.test, cfg["seed"], f"{data.name} test pairs: cosine distances of the last hidden representations "
            "(posterior-mean networks; vertical lines: means)")
        plots.save(fig, out / "cosine_distances.png")
    if plan is not None:
        plots.save(plots.alignment(plan), out / "alignment.png")
        # the teacher's width-pruning curve with the chosen criterion, with and without compensation
        curve_probe = probe[:PRUNING_PLOT_MAX_PROBE]
        curves = [bd.distill.pruning_curve(teacher, data.test, criterion=cfg["criterion"],
                                           fractions=PRUNING_PLOT_FRACTIONS, compensation=c, probe=curve_probe,
                                           num_samples=cfg["num_samples"], seed=cfg["seed"]) for c in (False, True)]
        metrics["pruning_curve"] = [c.to_dict() for c in curves]
        plots.save(plots.pruning_curve(curves, title=f"teacher {meta['model']} aligned to narrower copies of itself "
                                       f"(no training; probe {len(curve_probe)} inputs)"), out / "pruning_curve.png")
    metrics["wall_time_s"] = time.perf_counter() - t_start
    _write_json(metrics, out / "metrics.json")
    return metrics


def _print_comparison(metrics: dict[str, Any], out: Optional[Path]) -> None:
    s = metrics["distilled"]["test"].get("num_samples", "?")
    keys = [k for k in ("teacher", "aligned", "distilled", "plain") if metrics.get(k)]
    cols = {key: dict(metrics[key]["test"]) for key in keys}
    for key in cols:
        cols[key]["weights"] = metrics["teacher" if key == "teacher" else "distilled"]["num_weights"]
    cos = metrics.get("cosine") or {}
    for key, name in zip(("teacher", "plain", "distilled"), cos):
        cols[key]["separation AUC"] = cos[name]["separation_auc"]
    methods = ",".join(metrics.get("methods") or ["prior"])
    title = (f"test metrics on {metrics['dataset']} (S = {s} draws): teacher {metrics['teacher']['model']}, "
             f"student {metrics['student']['model']} " + ("aligned (before training), " if "aligned" in keys else "")
             + f"distilled (--method {methods}), plain")
    print(_compare_table(cols, title))
    if out is not None:
        print(f"wall time {metrics['wall_time_s']:.1f} s; artefacts in {out}")


def _distill_cfg_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("teacher", "student", "dataset", "train_fraction", "epochs", "batch_size", "lr", "lr_schedule",
            "kl_weight", "criterion", "variance", "init", "compensation", "probe_size", "channels", "hidden",
            "num_samples", "monitor", "seed", "device", "quiet", "method", "transfer", "pairs")
    from .distill.terms.registry import term_options

    return {**{k: getattr(args, k) for k in keys}, **term_options(args)}


def _cmd_distill(args: argparse.Namespace) -> int:
    metrics = run_distill(_distill_cfg_from_args(args), args.out)
    _print_comparison(metrics, args.out)
    return 0


def run_function_space_demo(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """The demo's function-space comparison: the teacher ``cfg["teacher"]`` (a posterior file)
    into Bayesian students of another kind (``FS_DEMO["student"]``, an MLP), one per variant of
    ``cfg["variants"]`` (name -> methods; ``[]`` = plain), all from the same initialization with a
    Normal(0, 1) prior, the DISTILL_DEFAULTS training settings and FUNCTION_SPACE_DEFAULTS terms.

    ``cfg``: teacher, epochs, train_fraction, variants, num_samples, seed, device, quiet. Writes
    metrics.json, history_<variant>.csv, students.png, elbo.png and vid_bounds.png (of the last
    variant with VID), cosine_distances.png into ``out``; returns the metrics.
    """
    import torch

    import bayesdistill as bd

    from .bnn.taps import last_hidden_layer
    from .diagnostics import plots
    from .distill.terms.registry import term_defaults

    t_start = time.perf_counter()
    quiet = bool(cfg["quiet"])
    device = _resolve_device(cfg["device"])
    teacher, q_file = load_teacher(Path(cfg["teacher"]), device)
    meta = q_file.metadata
    data = bd.datasets.load(meta.get("dataset", "mnist1d"), train_fraction=cfg["train_fraction"], seed=cfg["seed"])
    _check_fits(meta, data, "the teacher")
    student_name = cfg.get("student", FS_DEMO["student"])
    torch.manual_seed(cfg["seed"])
    student_net = bd.models.build(student_name, data.input_shape, data.output_dim)
    pairs = _default_pairs(teacher.net, student_net)
    d = DISTILL_DEFAULTS
    fit_kw = dict(epochs=cfg["epochs"], batch_size=d["batch_size"], lr=d["lr"], device=device, seed=cfg["seed"],
                  kl_weight=d["kl_weight"], lr_schedule=d["lr_schedule"], progress=not quiet, eval_data=data.test)
    out.mkdir(parents=True, exist_ok=True)
    _say(quiet, f"function space: teacher {meta['model']} -> Bayesian {student_name} students on {len(data.train)} "
         f"training examples, {cfg['epochs']} epochs each: {', '.join(cfg['variants'])}")
    students: dict[str, Any] = {}
    term_histories: dict[str, list[dict[str, float]]] = {}  # the histories with distill/<term>/<metric> columns
    results: dict[str, Any] = {}
    ev = dict(num_samples=cfg["num_samples"], seed=cfg["seed"])
    for name, methods in cfg["variants"].items():
        bnn = bd.BNN(student_net, prior=bd.priors.Normal(scale=1.0), likelihood=_likelihood(data.task)[0],
                     dataset_size=len(data.train), init="module")
        terms = _fs_terms(methods, teacher, pairs, {})
        _say(quiet, f"training the {name} student" + (f" (terms {', '.join(t.name for t in terms)})" if terms else ""))
        res = bd.fit(bnn, data.train, **fit_kw, **({"distill": terms} if terms else {}))
        students[name] = (bnn, res, list(methods))
        term_histories[name] = res.history
        results[name] = {
            "methods": list(methods),
            "test": bd.evaluate(bnn, data.test, **ev),
            "num_weights": bnn.num_weights,
            "epochs_trained": len(res.history),
            "train_time_s": float(sum(r.get("time_s", 0.0) for r in res.history)),
            "final_terms": _term_summary(term_histories[name]),
        }
        if res.history:
            res.to_csv(out / f"history_{name}.csv")
        else:
            (out / f"history_{name}.csv").write_text("epoch\n")
    teacher_test = bd.evaluate(teacher, data.test, **ev)
    histories = {name: r.history for name, (_, r, _) in students.items()}
    if all(histories.values()):
        plots.save(plots.learning_curves(histories, teacher_test,
                                         title=f"teacher {meta['model']} -> Bayesian {student_name} students "
                                         "(function space)"),
                   out / "students.png")
    vid_names = [n for n, (_, r, m) in students.items() if _has_term_metric(r.history, "mi_bound")]
    last_distilled = vid_names[-1] if vid_names else next((n for n, (_, r, m) in students.items() if m and r.history),
                                                            None)
    if last_distilled is not None:
        plots.save(plots.elbo(term_histories[last_distilled]), out / "elbo.png")
    if vid_names:
        plots.save(plots.vid_bounds(term_histories[vid_names[-1]],
                                    labels=[f"teacher {t} -> student {s}" for t, s in pairs.items()]),
                   out / "vid_bounds.png")
    s_layer = last_hidden_layer(student_net)
    fig, cosine = _cosine_figure(
        [(f"teacher {meta['model']}", teacher, last_hidden_layer(teacher.net))]
        + [(name, bnn, s_layer) for name, (bnn, _, _) in students.items()],
        data.test, cfg["seed"], f"{data.name} test pairs: cosine distances of the last hidden representations "
        "(posterior-mean networks; vertical lines: means)")
    plots.save(fig, out / "cosine_distances.png")
    metrics = {
        "dataset": data.name,
        "teacher": {"posterior": str(cfg["teacher"]), "model": meta["model"], "num_weights": teacher.num_weights,
                    "test": teacher_test},
        "student": {"model": student_name, "prior": "Normal(0, 1)"},
        "pairs": pairs,
        "students": results,
        "cosine": cosine,
        "train_size": len(data.train),
        "test_size": len(data.test),
        "config": {"epochs": cfg["epochs"], "train_fraction": cfg["train_fraction"], "seed": cfg["seed"],
                   "num_samples": cfg["num_samples"], "device": str(device),
                   "variants": {k: list(v) for k, v in cfg["variants"].items()},
                   **{k: d[k] for k in ("lr", "batch_size", "kl_weight", "lr_schedule")}, **term_defaults()},
        "wall_time_s": None,
        "bayesdistill_version": bd.__version__,
    }
    metrics["wall_time_s"] = time.perf_counter() - t_start
    _write_json(metrics, out / "metrics.json")
    return metrics


# --------------------------------------------------------------------------- demo
def _md_table(columns: dict[str, dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for m in columns.values() for k in m if k != "num_samples"))
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(m[k]) if k in m else "-" for m in columns.values()) + " |")
    return "\n".join(lines)


def _fs_columns(fs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Test metrics of the function-space stage: the teacher and each student, plus the separation
    AUC of the cosine distances, the weights and the training time."""
    names = list(fs["cosine"])  # the teacher first, then the students in order
    cols = {names[0]: dict(fs["teacher"]["test"])}
    cols[names[0]]["Bayesian weights"] = fs["teacher"]["num_weights"]
    cols[names[0]]["separation AUC"] = fs["cosine"][names[0]]["separation_auc"]
    for name, r in fs["students"].items():
        cols[name] = dict(r["test"])
        cols[name]["Bayesian weights"] = r["num_weights"]
        cols[name]["separation AUC"] = fs["cosine"][name]["separation_auc"]
        cols[name]["train time (s)"] = r["train_time_s"]
    return cols


def _print_fs_comparison(fs: dict[str, Any]) -> None:
    s = fs["teacher"]["test"].get("num_samples", "?")
    print(_compare_table(_fs_columns(fs), f"function space: teacher {fs['teacher']['model']} -> Bayesian "
                         f"{fs['student']['model']} students on {fs['dataset']} (S = {s} draws)"))


def _fs_report(fs: dict[str, Any]) -> str:
    c = fs["config"]
    pairs = ", ".join(f"teacher `{t}` -> student `{s_}`" for t, s_ in fs["pairs"].items())
    st = fs["students"]
    lines = []
    if "plain" in st:
        base = st["plain"]["test"]
        for name, r in st.items():
            if name == "plain" or "accuracy" not in r["test"]:
                continue
            t = r["test"]
            lines.append(f"{name} vs plain: accuracy {100 * (t['accuracy'] - base['accuracy']):+.1f} points, "
                         f"NLL {t['nll'] - base['nll']:+.3f} nats, ECE {t['ece'] - base['ece']:+.3f}")
    delta = ("In this run (one seed): " + "; ".join(lines) + ".") if lines else ""
    tf = f" --train-fraction {c['train_fraction']}" if c["train_fraction"] != 1.0 else ""
    images = "\n\n".join(f"![{alt}](function-space/{f})" for alt, f in (
        ("students", "students.png"), ("VID bounds", "vid_bounds.png"), ("cosine distances", "cosine_distances.png"))
        if f != "vid_bounds.png" or any(k.endswith("/mi_bound") for r in st.values() for k in r["final_terms"]))
    return f"""## Function space: a CNN teacher into Bayesian MLP students

An MLP has no convolutions: the teacher's posterior cannot be aligned to it, so there is no
teacher prior. Knowledge moves through what the networks compute instead. The same teacher
(`{fs['teacher']['model']}`) is distilled into Bayesian `{fs['student']['model']}` students (40-256-256-10, prior
N(0, 1), random initialization shared by all) on {fs['train_size']} training sequences, {c['epochs']} epochs each
(lr={c['lr']}, batch_size={c['batch_size']}, kl_weight={c['kl_weight']}, lr_schedule={c['lr_schedule']}). The point
is a student of another kind, not a smaller one: this MLP has more weights than the CNN. The students:

- **plain**: the ELBO alone;
- **kd**: Hinton knowledge distillation, `KD(teacher, temperature={c['kd_temperature']}, weight={c['kd_weight']})`: the
  likelihood is scaled by 1 - a and T^2 KL(softmax(z_t/T) || softmax(z_s/T)) is added per example;
- **vid+kd**: KD plus variational information distillation, `VID(teacher, pairs, weight={c['vid_weight']})` on
  {pairs} (the teacher's last hidden ReLU -> the student's): an amortized Gaussian
  q(t | s) whose log-density at the teacher's feature is an observed Pyro site of the student's model.

Every term is part of the student's ELBO and is fitted by the same SVI (`bd.fit(..., distill=[...])`).
Test metrics (posterior predictive, {fs['teacher']['test'].get('num_samples')} weight draws, {fs['test_size']} test
sequences); "separation AUC": how well the cosine distances of the last hidden representations separate
pairs of test examples of different classes from pairs of the same class (0.5: not at all, 1: perfectly).

{_md_table(_fs_columns(fs))}

{delta}

These students see only the 4000 labelled sequences. Measured over 3 seeds with 100 epochs
(docs/function-space.md): KD alone does not help this MLP without more inputs (71.5 % vs 71.9 %
plain, ECE 0.108), VID does (82.1 %, ECE 0.033), and with a transfer set of 50,000 generated
unlabelled sequences VID + KD reaches 89.3 %, ECE 0.031. The command line does it with
`bayesdistill distill --teacher teacher/posterior.pt --student mlp --method kd,vid --vid-pairs 6:2,9:4
--transfer 50000 --epochs 100` (one run on a demo teacher: 88.6 %, ECE 0.044, against 72.4 % for
its plain student; about a minute on 2 cores).

{images}

`vid_bounds.png` plots the lower bound H(t) + E[log q(t|s)] on the mutual information between the
teacher's and the student's features (nats per example) over training. H(t) is the entropy of a
diagonal Gaussian fitted to the teacher's features on (up to 1024) training inputs; ReLU units that
are always zero contribute about -12.4 nats each, so the bound can sit far below 0 (vacuous as a
number): its rise over training, as q(t | s) learns to predict the teacher's feature from the
student's, is what it shows (docs/function-space.md, "Caveats").
`cosine_distances.png` shows,
as for sentence encoders, the distances of similar (same class) and dissimilar pairs for the teacher
and each student. Files in `function-space/`: `metrics.json`, `history_<student>.csv`, `elbo.png`
(vid+kd), the plots above. The command line does the same for one student:
`bayesdistill distill --teacher teacher/posterior.pt --student mlp --method kd,vid --epochs {c['epochs']}{tf}`.
"""


def _report(teacher: dict[str, Any], student: dict[str, Any], quick: bool, fs: Optional[dict[str, Any]] = None) -> str:
    cfg, dcfg = teacher["config"], student["config"]
    hyper = ", ".join(f"{k}={cfg[k]}" for k in ("epochs", "lr", "batch_size", "prior_scale", "lr_schedule",
                                                "kl_weight", "train_fraction", "seed"))
    dhyper = ", ".join(f"{k}={dcfg[k]}" for k in ("epochs", "lr", "batch_size", "kl_weight", "lr_schedule",
                                                  "criterion", "variance", "init", "compensation",
                                                  "train_fraction", "seed"))
    note = ("\n> This is a `--quick` smoke run (few epochs on a small subset); the numbers are not "
            "representative. Run `bayesdistill demo` for the full run.\n" if quick else "")
    cols = {name: dict(student[key]["test"]) for name, key in (
        ("teacher", "teacher"), ("aligned, untrained", "aligned"), ("distilled", "distilled"), ("plain", "plain"))}
    for name in cols:
        cols[name]["Bayesian weights"] = student["teacher" if name == "teacher" else "distilled"]["num_weights"]
    plan = student["plan"]
    layer_rows = "\n".join(
        f"| {L['teacher']} | {L['student'] if not L['removed'] else 'removed'} | {L['teacher_units']} -> "
        f"{L['student_units'] if not L['removed'] else 0} | "
        + (f"{L['error']['restricted']:.3g} -> {L['error']['compensated']:.3g}" if L.get("error") else "-")
        + " |"
        for L in plan["layers"]
    )
    n_removed = sum(1 for L in plan["layers"] if L["removed"])
    folded = (f"{n_removed} layer{'s' if n_removed > 1 else ''} folded away by `{plan['removal']}`" if n_removed
              else "no layer removed")
    out_err = (f" The aligned teacher reproduces the full teacher's outputs on the probe data up to a relative "
               f"error of {plan['output_error']:.3g}." if plan.get("output_error") is not None else "")
    images = "\n\n".join(f"![{alt}]({path})" for alt, path in (
        ("students", "student/students.png"), ("alignment", "student/alignment.png"),
        ("pruning curve", "student/pruning_curve.png")))
    fs_section = (_fs_report(fs) + "\n") if fs is not None else ""
    fs_files = ("\n- `function-space/`: the MLP students of the function-space comparison: `metrics.json`, "
                "`history_<student>.csv`, `students.png`, `elbo.png`, `vid_bounds.png`, `cosine_distances.png`"
                if fs is not None else "")
    return f"""# bayesdistill demo: Bayesian distillation on MNIST-1D
{note}
## The teacher

A mean-field Bayesian 1-D CNN (`{teacher['model']}`, {teacher['num_weights']} Bayesian weights, prior
N(0, {cfg['prior_scale']}^2)) trained by stochastic variational inference on {teacher['train_size']} MNIST-1D
sequences for {teacher['epochs_trained']} epochs ({teacher['wall_time_s']:.1f} s). Hyperparameters: {hyper}.
Artefacts in `teacher/` (posterior, metrics, history, [ELBO](teacher/elbo.png),
[calibration](teacher/calibration.png), [SNR](teacher/snr.png)).

## The students

The student `{student['student']['model']}` is narrower and one layer shallower than the teacher, and is
trained on only {student['train_size']} training sequences. The teacher's posterior is aligned to the
student's structure (Grabovoy & Strijov, 2021: units removed by the `{plan['criterion']}` criterion,
{folded}, compensation {'on' if plan['compensation'] else 'off'}
with {student['probe_size']} teacher training inputs as probe data) and becomes the **distilled**
student's prior (and, with `init=prior-mean`, its starting point). The **plain** student has the same
architecture, a Normal(0, 1) prior and a random initialization; both are trained with the same settings:
{dhyper}.

Test metrics (posterior predictive, {student['distilled']['test'].get('num_samples')} weight draws,
{student['test_size']} test sequences; NLL and entropies in nats per example). "aligned, untrained" is
the aligned teacher posterior used as the student's q(w) before any training.

{_md_table(cols)}

Alignment, per teacher layer (relative reconstruction error of the layer's pre-activations on the probe
data: by the unit selection alone -> with the compensating re-fits):{out_err}

| teacher layer | student layer | units | reconstruction error |
|---|---|---|---|
{layer_rows}

{images}

The pruning curve narrows every hidden layer of the teacher (keeping its depth) and evaluates the
aligned posterior without training: it shows what the unit selection, and the least-squares
compensation on probe data, keep of the teacher's function.

{fs_section}## Files

- `teacher/`: `posterior.pt` (the teacher), `metrics.json`, `history.csv`, plots, `checkpoints/`
- `student/`: `posterior.pt` (the distilled student), `metrics.json` (all four columns above, the plan's
  per-layer data and the pruning curves), `plan.json` / `plan.pt` (`bd.AlignmentPlan.load`),
  `history.csv` (distilled), `plain_history.csv`, `elbo.png`, `students.png`, `alignment.png`,
  `pruning_curve.png`, `cosine_distances.png`{fs_files}

Reproduce the distilled student's evaluation:
`bayesdistill evaluate --posterior student/posterior.pt --num-samples {student['distilled']['test'].get('num_samples')}`
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    cfg = dict(RUN_DEFAULTS)
    cfg.update(TEACHER_DEFAULTS)
    cfg.update(dataset="mnist1d", model=DEMO_STUDENT["teacher_model"], seed=args.seed, device=args.device,
               quiet=args.quiet, monitor=True, checkpoint=True)
    if args.quick:
        cfg.update(QUICK_DEMO)
    teacher = run_fit(cfg, args.out / "teacher")
    if not args.quiet:
        _print_metrics(teacher, args.out / "teacher", False)
    dcfg: dict[str, Any] = dict(DISTILL_DEFAULTS)
    dcfg.update(teacher=args.out / "teacher" / "posterior.pt", student=DEMO_STUDENT["student"], dataset="mnist1d",
                train_fraction=DEMO_STUDENT["train_fraction"], probe_size=None, channels=None, hidden=None,
                num_samples=cfg["num_samples"], monitor=True, seed=args.seed, device=args.device, quiet=args.quiet)
    if args.quick:
        dcfg["epochs"] = QUICK_DEMO["epochs"]
    student = run_distill(dcfg, args.out / "student")
    fcfg: dict[str, Any] = dict(teacher=args.out / "teacher" / "posterior.pt", student=FS_DEMO["student"],
                                epochs=FS_DEMO["epochs"], train_fraction=FS_DEMO["train_fraction"],
                                variants=FS_DEMO["variants"], num_samples=cfg["num_samples"], seed=args.seed,
                                device=args.device, quiet=args.quiet)
    if args.quick:
        fcfg.update(epochs=QUICK_DEMO["epochs"], train_fraction=QUICK_DEMO["train_fraction"])
    fs = run_function_space_demo(fcfg, args.out / "function-space")
    report = args.out / "report.md"
    report.write_text(_report(teacher, student, args.quick, fs))
    _print_comparison(student, args.out)
    _print_fs_comparison(fs)
    print(f"report: {report}")
    return 0


# --------------------------------------------------------------------------- entry point
_MAX_MESSAGE = 400


def _message(err: BaseException) -> str:
    """One line: KeyError quotes dropped, whitespace (newlines of wrapped torch errors) collapsed,
    the middle of a very long message elided (``--debug`` shows it all)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # KeyError's str() would add quotes
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 140] + " [...] " + text[-130:]
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from .errors import BayesDistillError

    try:
        return int(args.handler(args) or 0)
    except (CLIError, BayesDistillError, FileNotFoundError, KeyError, ValueError, NotADirectoryError,
            IsADirectoryError, PermissionError) as err:
        if args.debug:
            raise
        print(f"bayesdistill {args.command}: error: {_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"bayesdistill {args.command}: interrupted"
              + ("; rerun with --resume to continue from the last finished epoch" if args.command == "fit" else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
