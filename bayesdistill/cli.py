"""The ``bayesdistill`` command: argument parsing onto :mod:`bayesdistill.experiments`.

::

    bayesdistill fit --dataset mnist1d --model cnn-deep --epochs 100 --out runs/teacher
    bayesdistill evaluate --posterior runs/teacher/model.pt --json
    bayesdistill distill --teacher runs/teacher/model.pt --student cnn-small --train-fraction 0.1 --out runs/student
    bayesdistill distill --teacher runs/teacher --student mlp --method kd,vid --transfer 50000 --out runs/mlp
    bayesdistill fit --config run.toml --model mypkg.nets:resnet --allow-imports --threads 1 --out runs/mine
    bayesdistill demo --out bayesdistill-demo            # add --quick for a seconds-long smoke run
    bayesdistill generalized --dataset privileged-clean-labels --seeds 0 1 2 --out runs/gd
    bayesdistill record --teacher runs/teacher/model.pt --kind top --out runs/teacher.record.pt
    bayesdistill datafree --teacher runs/teacher/model.pt --record runs/teacher.record.pt --student mlp --out runs/df
    bayesdistill grow --small runs/small/model.pt --model mlp --hidden 128,128 --compare --out runs/grown
    torchrun --nproc-per-node 2 -m bayesdistill fit ...  # data-parallel; rank 0 writes the files

What each command computes and writes is documented with its pipeline:
:func:`~bayesdistill.experiments.fit_teacher`, :func:`~bayesdistill.experiments.evaluate_model`,
:func:`~bayesdistill.experiments.distill`, :func:`~bayesdistill.experiments.demo`,
:func:`~bayesdistill.experiments.generalized`, :func:`~bayesdistill.experiments.record_teacher`,
:func:`~bayesdistill.experiments.datafree`, :func:`~bayesdistill.experiments.grow`; the defaults
are the recipes of :mod:`bayesdistill.experiments.recipes`; ``--config`` reads a TOML file
(:mod:`bayesdistill.experiments.config`). Errors in the input (a missing or damaged file, an
unknown dataset or model, an import path without ``--allow-imports``, a folder that holds a run,
data that do not fit the network) print one line on stderr and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from . import experiments as ex
from .distill import CRITERIA, GROWTH_MODES
from .distill.datafree.reconstruct import OBJECTIVES
from .distill.datafree.record import RECORD_KINDS
from .distill.generalized import TEACHER_MODES
from .distill.grow.student import GROWN_INITS
from .distill.student import STUDENT_INITS
from .distill.terms.registry import TERMS, add_term_options, available_terms, term_defaults, term_options
from .errors import BayesDistillError
from .experiments import reports
from .experiments.config import config_arguments, read_config

__all__ = ["main", "build_parser", "METHODS", "FUNCTION_SPACE_DEFAULTS"]

EXIT_USAGE = 2


def __getattr__(name: str) -> Any:
    """``METHODS`` (``prior`` and the registered terms) and ``FUNCTION_SPACE_DEFAULTS`` (their
    options' defaults), read from the registry when asked for."""
    if name == "METHODS":
        return (ex.PRIOR_METHOD, *available_terms())
    if name == "FUNCTION_SPACE_DEFAULTS":
        return term_defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CLIError(Exception):
    """A user error detected by the command line itself (reported in one line, exit 2)."""


# --------------------------------------------------------------------------- argument types
def _number(kind: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], Any]:
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


def _teacher_prior_scale(text: str) -> Any:
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


def _init(text: str) -> str:
    if text == "random":
        raise argparse.ArgumentTypeError("'random' is now 'module' (the network's own initialization)")
    if text not in STUDENT_INITS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STUDENT_INITS)}, got {text!r}")
    return text


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _methods(text: str) -> tuple[str, ...]:
    methods = (ex.PRIOR_METHOD, *available_terms())
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in methods]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(methods)}; got {text!r}"
                                         + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return values


def _feature_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        t, sep, s = item.partition(":")
        if not sep or not t.strip() or not s.strip():
            raise argparse.ArgumentTypeError(
                f"expected TEACHER_MODULE:STUDENT_MODULE pairs separated by commas (e.g. 8:4), got {text!r}")
        if t.strip() in pairs:
            raise argparse.ArgumentTypeError(f"teacher module {t.strip()!r} appears twice in {text!r}")
        pairs[t.strip()] = s.strip()
    if not pairs:
        raise argparse.ArgumentTypeError(f"expected TEACHER_MODULE:STUDENT_MODULE pairs, got {text!r}")
    return pairs


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"depth\": 8}}', got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _packages(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names or not all(all(b.isidentifier() for b in p.split(".")) for p in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated package names, got {text!r}")
    return names


# --------------------------------------------------------------------------- parser
#: Appended to a help text that states its default itself (stops "(default: None)").
_NO_DEFAULT = "%(default).0s"


def _add_run_options(p: argparse.ArgumentParser, *, seed: bool = True, num_samples: bool = True) -> None:
    """Options every command has: device, threads, imports, config, quiet (and seed, draws)."""
    r = ex.RunSettings()
    if num_samples:
        p.add_argument("--num-samples", type=_positive_int, default=r.num_samples,
                       help="posterior draws S for the test metrics")
    if seed:
        p.add_argument("--seed", type=int, default=r.seed,
                       help="seeds initialization, batch order, SVI noise, alignment and the evaluation draws")
    p.add_argument("--device", default=r.device, help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (torch.set_num_threads; default: torch's own); recorded with the run"
                   + _NO_DEFAULT)
    p.add_argument("--allow-imports", nargs="?", const=True, default=False, type=_packages, metavar="PACKAGES",
                   help="allow models and data sets named by import path package.module:factory: all, or only "
                   "those in the comma-separated packages (importing runs their code; default: refused)")
    p.add_argument("--config", type=Path, default=None, metavar="TOML",
                   help="read options from a run-configuration file; flags given here override it" + _NO_DEFAULT)
    p.add_argument("--quiet", action="store_true", help="no progress bar, stage counter or messages")
    p.add_argument("--no-ood", dest="ood", action="store_false",
                   help="skip every network's OOD detection (AUROC against the data set's transformed test inputs) "
                   "and selective prediction, which cost a predictive pass over the test set and one per OOD set "
                   "(default: computed, for classifiers on mnist1d and digits)" + _NO_DEFAULT)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks for errors")


def _add_optimization_options(p: argparse.ArgumentParser, d: Any) -> None:
    """The SVI options shared by ``fit`` and ``distill`` (defaults from the recipe ``d``)."""
    p.add_argument("--epochs", type=_nonnegative_int, default=d.epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="examples per SVI step")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="Adam learning rate")
    p.add_argument("--lr-schedule", choices=["cosine", "none"], default=d.lr_schedule or "none",
                   help="learning-rate schedule over the epochs")
    p.add_argument("--kl-weight", type=_nonnegative_float, default=d.kl_weight,
                   help="multiplies KL(q||p) in the objective (< 1: a 'cold' posterior)")


def _add_architecture_options(p: argparse.ArgumentParser, who: str, *, channels: Optional[int] = None,
                              hidden: Optional[tuple[int, ...]] = None) -> None:
    """``--channels`` (cnn) and ``--hidden`` (mlp) of the network ``who`` builds ("", "students")."""
    who = f" {who}" if who else ""
    p.add_argument("--channels", type=_positive_int, default=channels,
                   help=f"cnn{who}: channels per conv layer" + ("" if channels else " (default: the architecture's own)"
                                                               + _NO_DEFAULT))
    p.add_argument("--hidden", type=_int_list, default=hidden,
                   help=f"mlp{who}: hidden layer widths, comma-separated (e.g. 256,256)"
                   + ("" if hidden else " (default: 256,256)" + _NO_DEFAULT))


def _add_fit(sub: Any) -> None:
    d = ex.TeacherRecipe()
    p = sub.add_parser("fit", help="train a Bayesian teacher by SVI and write its model, metrics and plots",
                       description="Train a mean-field Bayesian network (a teacher) by stochastic variational "
                       "inference and write model.pt, posterior.pt, metrics.json, history.csv and plots into --out.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist1d",
                   help="mnist1d, digits, synthetic-regression, or package.module:factory (--allow-imports)")
    p.add_argument("--model", default="cnn", help="cnn, cnn-deep, cnn-small (1-D CNNs), mlp, or "
                   "package.module:factory called as factory(input_shape, output_dim, **model_kwargs)")
    p.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="the model factory's keyword arguments" + _NO_DEFAULT)
    p.add_argument("--dataset-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="keyword arguments of a data-set factory named by import path" + _NO_DEFAULT)
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    _add_optimization_options(p, d)
    p.add_argument("--prior-scale", type=_positive_float, default=d.prior_scale,
                   help="standard deviation of the isotropic Normal(0, s^2) weight prior")
    p.add_argument("--local-reparam", nargs="?", const="all", default=False, choices=["all", "linear"],
                   help="local reparameterization (sample pre-activations; lower-variance gradients): "
                   "all Linear/Conv layers (no value or 'all') or Linear layers only ('linear')")
    _add_architecture_options(p, "", channels=d.channels, hidden=(256, 256))
    p.add_argument("--train-fraction", type=_fraction, default=1.0,
                   help="train on this class-balanced fraction of the training set")
    p.add_argument("--monitor", action="store_true",
                   help="evaluate on the test split after every epoch (eval_* columns in history.csv)")
    ck = p.add_mutually_exclusive_group()
    ck.add_argument("--resume", action="store_true",
                    help="continue from OUT/checkpoints/checkpoint.pt if it exists (same settings)")
    ck.add_argument("--overwrite", action="store_true", help="replace a run that OUT already holds (default: refuse)")
    p.add_argument("--extend", action="store_true", help="with --resume: train a run on to more --epochs than it "
                   "was planned for (the learning-rate schedule continues)")
    ck.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                    help="do not write OUT/checkpoints/checkpoint.pt after each epoch")
    _add_run_options(p)
    p.set_defaults(handler=_cmd_fit)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset's test split",
                       description="Rebuild the network saved by 'bayesdistill fit' or 'distill' (model.pt, "
                       "posterior.pt or the run folder) and print its test-set metrics (posterior predictive "
                       "averaged over --num-samples draws), its OOD detection against the data set's transformed "
                       "test inputs and its selective prediction (--no-ood: the test metrics only).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--posterior", "--model-file", dest="posterior", type=Path, required=True,
                   help="model.pt or posterior.pt written by fit or distill, or their run folder")
    p.add_argument("--dataset", default=None,
                   help="dataset to evaluate on (default: the one the model was trained on)")
    p.add_argument("--dataset-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="keyword arguments of a data-set factory named by import path" + _NO_DEFAULT)
    p.add_argument("--seed", type=int, default=None, help="seed of the posterior draws (default: the one the run "
                   "used, so the metrics reproduce its metrics.json)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_run_options(p, seed=False)
    p.set_defaults(handler=_cmd_evaluate)


def _add_distill_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", type=_methods, default=None,
                   help="comma-separated distillation methods: prior (aligned teacher posterior as the prior; "
                   "needs a student reachable by alignment), "
                   + ", ".join(f"{n} ({s.description})" for n, s in TERMS.items()).replace("%", "%%")
                   + "; e.g. prior,vid or kd,vid (default: prior)" + _NO_DEFAULT)
    p.add_argument("--transfer", type=_positive_int, default=None, metavar="N",
                   help="also train the function-space terms on N unlabelled MNIST-1D inputs generated by "
                   "bd.datasets.mnist1d_samples(N, seed=1000+SEED) (mnist1d only; default: none)" + _NO_DEFAULT)
    p.add_argument("--vid-pairs", "--pairs", dest="pairs", type=_feature_pairs, default=None, metavar="T:S,...",
                   help="teacher:student module paths of the feature pairs of "
                   + ", ".join(n for n, s in TERMS.items() if s.pairs) + " (default: the teacher's last hidden "
                   "activation, e.g. the ReLU before the Flatten, -> the student's)" + _NO_DEFAULT)
    add_term_options(p)  # --<term>-<option> of every registered term (--kd-temperature, --vid-weight, ...)


def _add_distill(sub: Any) -> None:
    d = ex.DistillRecipe()
    p = sub.add_parser(
        "distill", help="distill a teacher into a Bayesian student (aligned-teacher prior, KD, VID, PKT, Hint)",
        description="Distill a teacher (model.pt or posterior.pt from 'bayesdistill fit') into a Bayesian student. "
        "--method prior (the default) aligns the teacher posterior to a smaller student architecture and trains "
        "the student with the aligned teacher posterior as its prior; kd, vid, pkt and hint add function-space "
        "terms (outputs, features) to the student's objective and work for any student, e.g. a CNN teacher and "
        "an MLP student. As a reference the same student is trained with a plain Normal(0, 1) prior and no terms.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True,
                   help="the teacher's model.pt or posterior.pt (from fit), or its run folder" + _NO_DEFAULT)
    p.add_argument("--student", required=True, help="student architecture: cnn-small, cnn, cnn-deep, mlp or "
                   "package.module:factory (for --method prior no wider, no deeper than the teacher and of the "
                   "same kind; any for kd, vid, pkt, hint)" + _NO_DEFAULT)
    p.add_argument("--student-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="the student factory's keyword arguments" + _NO_DEFAULT)
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)" + _NO_DEFAULT)
    p.add_argument("--overwrite", action="store_true", help="replace a run that OUT already holds (default: refuse)")
    p.add_argument("--dataset", default=None, help="dataset (default: the teacher's)" + _NO_DEFAULT)
    p.add_argument("--dataset-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="keyword arguments of a data-set factory named by import path" + _NO_DEFAULT)
    _add_distill_method_options(p)
    p.add_argument("--train-fraction", type=_fraction, default=1.0,
                   help="train the students on this class-balanced fraction of the training set")
    _add_optimization_options(p, d)
    p.add_argument("--criterion", choices=sorted(CRITERIA), default=d.criterion,
                   help="which units alignment removes (bd.distill.CRITERIA): e.g. lowest signal-to-noise ratio "
                   "(snr), smallest contribution on the probe data (data), or random (the paper's choice)")
    p.add_argument("--prior-scale", type=_teacher_prior_scale, default=d.prior_scale,
                   help="prior scale of the distilled student (TeacherPosterior(scale=...)): posterior (the "
                   "teacher's), unit, learned (empirical Bayes, one scale per tensor) or a number")
    p.add_argument("--init", type=_init, default=d.init, metavar="{" + ",".join(STUDENT_INITS) + "}",
                   help="where the distilled student starts (student_from_teacher(init=...)): the aligned teacher "
                   "means, the aligned teacher posterior, or the network's own initialization")
    p.add_argument("--no-compensation", dest="compensation", action="store_false", default=d.compensation,
                   help="do not re-fit the next layer on the teacher's training inputs after each removal "
                   "(default: re-fit)" + _NO_DEFAULT)
    p.add_argument("--probe-size", type=_positive_int, default=None,
                   help="use this many of the teacher's training inputs (a seeded random subset) as the probe "
                   "for alignment (default: all of them)" + _NO_DEFAULT)
    _add_architecture_options(p, "students")
    p.add_argument("--monitor", action="store_true",
                   help="evaluate both students on the test split after every epoch (students.png)")
    _add_run_options(p)
    p.set_defaults(handler=_cmd_distill)


def _add_demo(sub: Any) -> None:
    q = ex.QUICK
    p = sub.add_parser(
        "demo", help="train a teacher (CNN on MNIST-1D), distill it into a smaller student and into MLPs, write a report",
        description="Train a Bayesian teacher (the demo recipe: cnn-deep on MNIST-1D) into OUT/teacher, distill it "
        "into cnn-small on 10%% of the training set against a plain student into OUT/student, distill it into "
        "Bayesian MLPs (plain vs KD vs VID+KD) into OUT/function-space, and write OUT/report.md from this run's "
        "numbers.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bayesdistill-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help=f"a smoke run in seconds ({q.epochs} epochs on "
                   f"{q.train_fraction:.0%} of the training set)".replace("%", "%%"))
    p.add_argument("--overwrite", action="store_true", help="replace a demo that OUT already holds (default: refuse)")
    _add_run_options(p, num_samples=False)
    p.set_defaults(handler=_cmd_demo)


def _add_train_options(p: argparse.ArgumentParser, d: Any) -> None:
    """The SVI options of the family commands (defaults from the recipe ``d``)."""
    _add_optimization_options(p, d)
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)" + _NO_DEFAULT)
    p.add_argument("--overwrite", action="store_true", help="replace a run that OUT already holds (default: refuse)")


def _add_generalized(sub: Any) -> None:
    d = ex.GeneralizedRecipe()
    p = sub.add_parser("generalized", help="generalized distillation (teacher on privileged inputs) on a "
                       "privileged-* data set", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Per seed, one draw of a privileged-* data set: a Bayesian teacher on the "
                       "privileged inputs x*, a student on x, and a student distilled on x from the teacher's soft "
                       "labels on x* (Lopez-Paz et al. 2016). Writes metrics.json and report.md into --out.")
    p.add_argument("--dataset", default="privileged-clean-labels", help="a privileged-* data set: "
                   + ", ".join(ex.generalized_datasets()))
    p.add_argument("--seeds", type=_nonnegative_int, nargs="+", default=list(d.seeds), help="one run per seed (data and fits)")
    p.add_argument("--temperature", type=_positive_float, default=d.temperature, help="T of the soft labels")
    p.add_argument("--imitation", type=_fraction, default=d.imitation,
                   help="lambda: weight of the teacher's soft labels (the likelihood gets 1 - lambda)")
    p.add_argument("--prior-scale", type=_positive_float, default=d.prior_scale, help="Normal(0, s^2) prior")
    p.add_argument("--teacher-mode", choices=TEACHER_MODES, default=d.teacher_mode,
                   help="a teacher posterior draw per step, or its posterior mean")
    _add_train_options(p, d)
    _add_run_options(p, seed=False)
    p.set_defaults(handler=_cmd_generalized)


def _add_record(sub: Any) -> None:
    d = ex.RecordRecipe()
    p = sub.add_parser("record", help="record a teacher's activation statistics for data-free distillation",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Record the per-class activation statistics of a saved teacher on its own "
                       "training data (read from its model file) and write them, atomically, to --out: what the "
                       "teacher ships instead of its data (Lopes et al. 2017; 'bayesdistill datafree' reads it).")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher's model.pt or run folder" + _NO_DEFAULT)
    p.add_argument("--kind", choices=RECORD_KINDS, default=d.kind,
                   help="what is recorded: the output, every layer, or spectral coefficients (docs/datafree.md)")
    p.add_argument("--temperature", type=_positive_float, default=d.temperature, help="T of the recorded f(x)/T")
    p.add_argument("--spectral-fraction", type=_fraction, default=d.spectral_fraction,
                   help="spectral kinds: the share of each layer graph's eigenvectors kept")
    p.add_argument("--out", type=Path, required=True, help="the record file (e.g. teacher.record.pt)" + _NO_DEFAULT)
    p.add_argument("--overwrite", action="store_true", help="replace an existing record file (default: refuse)")
    _add_run_options(p, seed=False, num_samples=False)
    p.set_defaults(handler=_cmd_record)


def _add_datafree(sub: Any) -> None:
    d = ex.DataFreeRecipe()
    p = sub.add_parser("datafree", help="distill a teacher into a student from its activation record, without data",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Reconstruct inputs from a teacher's record ('bayesdistill record'), distill a "
                       "Bayesian student on them by KD (no training example, no label), then evaluate teacher and "
                       "student on the test split of the teacher's data set. Writes model.pt, metrics.json, "
                       "report.md, history.csv and elbo.png into --out.")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher's model.pt or run folder" + _NO_DEFAULT)
    p.add_argument("--record", type=Path, required=True, help="the teacher's record file" + _NO_DEFAULT)
    p.add_argument("--student", default="mlp", help="student architecture (built-in or package.module:factory)")
    _add_architecture_options(p, "students")
    p.add_argument("--inputs", type=_positive_int, default=d.inputs, help="inputs to reconstruct")
    p.add_argument("--steps", type=_nonnegative_int, default=d.steps, help="Adam steps of the reconstruction")
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective,
                   help="the reconstruction objective")
    p.add_argument("--feature-weight", type=_nonnegative_float, default=d.feature_weight,
                   help="deepinversion: weight of the hidden layers' batch statistics")
    p.add_argument("--tv-weight", type=_nonnegative_float, default=d.tv_weight,
                   help="deepinversion: weight of the inputs' total variation")
    p.add_argument("--kd-weight", type=_fraction, default=d.kd_weight, help="weight of the KD term (1: soft labels only)")
    _add_train_options(p, d)
    _add_run_options(p)
    p.set_defaults(handler=_cmd_datafree)


def _add_grow(sub: Any) -> None:
    d = ex.GrowRecipe()
    p = sub.add_parser("grow", help="grow a small trained model into a larger network and train it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Map a small saved model's posterior onto a larger network (bd.grow), train the "
                       "grown network by SVI (bd.student_from_small: the small posterior is the prior of the old "
                       "weights) and, with --compare, the same network from scratch. Writes model.pt, plan.pt, "
                       "plan.json, metrics.json, report.md, history.csv and elbo.png into --out.")
    p.add_argument("--small", type=Path, required=True, help="the small model's model.pt or run folder" + _NO_DEFAULT)
    p.add_argument("--model", required=True, help="the large architecture (cnn, cnn-deep, mlp, ...)" + _NO_DEFAULT)
    _add_architecture_options(p, "")
    p.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="the model factory's keyword arguments" + _NO_DEFAULT)
    p.add_argument("--dataset", default=None, help="data set (default: the small model's)" + _NO_DEFAULT)
    p.add_argument("--dataset-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="keyword arguments of a data-set factory named by import path" + _NO_DEFAULT)
    p.add_argument("--mode", choices=list(GROWTH_MODES), default=d.mode,
                   help="how new units, inputs and layers start (docs/growth.md)")
    p.add_argument("--prior-scale", type=_teacher_prior_scale, default=d.prior_scale,
                   help="prior scale of the old weights: unit, posterior or a number")
    p.add_argument("--new-prior-scale", type=_positive_float, default=d.new_prior_scale,
                   help="prior scale of the new weights")
    p.add_argument("--init", choices=GROWN_INITS, default=d.init,
                   help="where the grown network's posterior starts")
    p.add_argument("--train-fraction", type=_fraction, default=1.0, help="class-balanced fraction of the training set")
    p.add_argument("--compare", action="store_true", help="also train the same network from scratch")
    p.add_argument("--monitor", action="store_true", help="evaluate on the test split after every epoch")
    _add_train_options(p, d)
    _add_run_options(p)
    p.set_defaults(handler=_cmd_grow)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="bayesdistill", description="Bayesian knowledge distillation: train mean-field Bayesian teachers, "
        "distill them into students and evaluate their posteriors.",
        epilog="Run 'bayesdistill COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"bayesdistill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_fit, _add_evaluate, _add_distill, _add_demo, _add_generalized, _add_record, _add_datafree,
                _add_grow):
        add(sub)
    return parser


# --------------------------------------------------------------------------- handlers
def _run(args: argparse.Namespace, **changes: Any) -> ex.RunSettings:
    values = {k: getattr(args, k) for k in ("seed", "device", "num_samples", "monitor", "quiet", "threads",
                                            "allow_imports", "overwrite", "ood") if hasattr(args, k)}
    return ex.RunSettings(**{**values, **changes})


def _recipe(cls: type, args: argparse.Namespace) -> Any:
    names = [f for f in cls.__dataclass_fields__ if hasattr(args, f)]
    values = {f: getattr(args, f) for f in names}
    if values.get("lr_schedule") == "none":
        values["lr_schedule"] = None
    return cls(**values)


def _cmd_fit(args: argparse.Namespace) -> int:
    result = ex.fit_teacher(args.out, _recipe(ex.TeacherRecipe, args), dataset=args.dataset, model=args.model,
                            model_kwargs=args.model_kwargs, hidden=args.hidden, dataset_kwargs=args.dataset_kwargs,
                            train_fraction=args.train_fraction, local_reparam=args.local_reparam,
                            checkpoint=args.checkpoint, resume=args.resume, extend=args.extend, run=_run(args))
    if ex.is_main():
        print(reports.teacher_summary(result, args.out))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    result = ex.evaluate_model(args.posterior, dataset=args.dataset, dataset_kwargs=args.dataset_kwargs,
                               num_samples=args.num_samples, seed=args.seed, device=args.device,
                               threads=args.threads, allow_imports=args.allow_imports, ood=args.ood)
    print(json.dumps(result.to_dict(), indent=2) if args.json else reports.evaluation_summary(result))
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    result = ex.distill(args.out, args.teacher, args.student, _recipe(ex.DistillRecipe, args),
                        methods=args.method or (ex.PRIOR_METHOD,), dataset=args.dataset,
                        student_kwargs=args.student_kwargs, channels=args.channels, hidden=args.hidden,
                        dataset_kwargs=args.dataset_kwargs, train_fraction=args.train_fraction,
                        transfer=args.transfer, pairs=args.pairs, term_settings=term_options(args),
                        probe_size=args.probe_size, run=_run(args))
    if ex.is_main():
        print(reports.distill_summary(result, args.out))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    recipe = ex.QUICK_DEMO if args.quick else ex.DEMO
    result = ex.demo(args.out, recipe, run=_run(args))
    if ex.is_main():
        if not args.quiet:
            print(reports.teacher_summary(result.teacher, args.out / "teacher"))
        print(reports.distill_summary(result.student, args.out))
        print(reports.function_space_summary(result.function_space))
        print(f"report: {result.report}")
    return 0


def _cmd_generalized(args: argparse.Namespace) -> int:
    result = ex.generalized(args.out, args.dataset, _recipe(ex.GeneralizedRecipe, args), run=_run(args))
    if ex.is_main():
        print(ex.family_reports.generalized_summary(result, args.out))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    result = ex.record_teacher(args.out, args.teacher, _recipe(ex.RecordRecipe, args), run=_run(args))
    if ex.is_main():
        print(ex.family_reports.record_summary(result))
    return 0


def _cmd_datafree(args: argparse.Namespace) -> int:
    result = ex.datafree(args.out, args.teacher, args.record, args.student, _recipe(ex.DataFreeRecipe, args),
                         hidden=args.hidden, channels=args.channels, run=_run(args))
    if ex.is_main():
        print(ex.family_reports.datafree_summary(result, args.out))
    return 0


def _cmd_grow(args: argparse.Namespace) -> int:
    result = ex.grow(args.out, args.small, args.model, _recipe(ex.GrowRecipe, args), dataset=args.dataset,
                     hidden=args.hidden, channels=args.channels, model_kwargs=args.model_kwargs,
                     dataset_kwargs=args.dataset_kwargs, train_fraction=args.train_fraction, compare=args.compare,
                     run=_run(args))
    if ex.is_main():
        print(ex.family_reports.grow_summary(result, args.out))
    return 0


# --------------------------------------------------------------------------- entry point
_MAX_MESSAGE = 400
_USER_ERRORS = (CLIError, BayesDistillError, FileNotFoundError, FileExistsError, KeyError, ValueError,
                NotADirectoryError, IsADirectoryError, PermissionError)


def _message(err: BaseException) -> str:
    """One line: KeyError quotes dropped, whitespace collapsed, a very long middle elided."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # KeyError's str() would add quotes
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 140] + " [...] " + text[-130:]
    return text


def _with_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the values of ``--config FILE`` inserted after the command (the flags the
    user gave, which follow, override them)."""
    commands = {a.dest: a for a in parser._actions if isinstance(a, argparse._SubParsersAction)}["command"].choices
    at = next((i for i, a in enumerate(argv) if a in commands), None)
    if at is None:
        return argv
    rest = argv[at + 1:]
    path = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--config"), None)
    path = path or next((a.split("=", 1)[1] for a in rest if a.startswith("--config=")), None)
    if path is None:
        return argv
    extra = config_arguments(read_config(path), commands[argv[at]], argv[at], rest, source=repr(path))
    return argv[:at + 1] + extra + rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _with_config(parser, argv)
    except _USER_ERRORS as err:
        print(f"bayesdistill: error: {_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except _USER_ERRORS as err:
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
