"""The term registry: names, specs, options and factories; the CLI's --method choices and
--<term>-<option> flags generated from it; and the proof that a new term needs nothing but its
class: a toy term registered here trains with bd.fit, runs from the command line and is plotted."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import bayesdistill as bd
from _helpers import run_cli, tiny_mlp, toy_classification
from bayesdistill import cli
from bayesdistill.distill import KD, PKT, VID, DistillTerm, Hint, TinyBERT
from bayesdistill.distill.terms import (
    TERMS,
    TermOption,
    add_term_options,
    available_terms,
    get_term,
    register_term,
    term_defaults,
    term_options,
    terms_from_options,
    unregister_term,
)

SMALL = ["--train-fraction", "0.1", "--epochs", "1", "--num-samples", "2", "--quiet", "--device", "cpu"]


# ----------------------------------------------------------------------------- the built-in terms
def test_the_built_in_terms_are_registered_in_order():
    assert available_terms()[:5] == ("kd", "vid", "pkt", "hint", "tinybert")
    for name, cls in (("kd", KD), ("vid", VID), ("pkt", PKT), ("hint", Hint), ("tinybert", TinyBERT)):
        spec = get_term(name)
        assert spec.name == name and spec.cls is cls and TERMS[name] is spec
        assert spec.description and "\n" not in spec.description
        assert "weight" in {o.name for o in spec.options}
    assert [get_term(n).pairs for n in ("kd", "vid", "pkt", "hint", "tinybert")] == [False, True, True, True, True]
    assert get_term("kd").tasks == ("classification",) and get_term("vid").tasks is None
    # the weight convention's defaults (docs/function-space.md, "Weights")
    assert term_defaults() == {"kd_temperature": 1.0, "kd_weight": 0.5, "kd_calibration": "none", "kd_likelihood": "share",
                               "vid_weight": 1.0, "vid_reduction": "mean",
                               "pkt_weight": 1.0, "pkt_normalize": "uniform",
                               "hint_weight": 1.0, "hint_reduction": "mean", "hint_normalize": "variance",
                               "tinybert_temperature": 1.0, "tinybert_weight": 1.0, "tinybert_reduction": "mean",
                               "tinybert_normalize": "variance",
                               "privileged_kd_temperature": 1.0, "privileged_kd_weight": 1.0,
                               "privileged_kd_key": "privileged",
                               # the adversarial weight prior (distill/adversarial.py)
                               "adversarial_prior_layers": "auto", "adversarial_prior_weight": 1.0,
                               "adversarial_prior_init_lambda": 1e-3, "adversarial_prior_critic_steps": 100,
                               "adversarial_prior_critic_lr": 1e-3, "adversarial_prior_penalty": "log_sigmoid",
                               "adversarial_prior_schedule": "adaptive"}
    with pytest.raises(KeyError, match="no distillation term named 'magic'; registered: kd, vid"):
        get_term("magic")


def test_specs_build_terms_from_options():
    teacher = tiny_mlp(hidden=8, seed=1)
    (kd,) = get_term("kd").make(teacher, None, temperature=2.0)
    assert isinstance(kd, KD) and kd.temperature == 2.0 and kd.weight == 0.5  # the default weight
    (pkt,) = get_term("pkt").make(teacher, {"0": "0", "1": "1"}, weight=0.5)
    assert isinstance(pkt, PKT) and pkt.pairs == {"0": "0", "1": "1"} and pkt.pair_weights == [0.5, 0.5]
    (vid,) = get_term("vid").make(teacher, None)
    assert vid.default_pairs and vid.weight == 1.0 and vid.reduction == "mean"  # the pair: resolved by the objective
    (exact,) = get_term("vid").make(teacher, None, reduction="sum")
    assert exact.reduction == "sum"
    with pytest.raises(ValueError, match="vid option 'reduction' must be one of mean, sum"):
        get_term("vid").make(teacher, None, reduction="max")
    with pytest.raises(TypeError, match="no option"):
        get_term("kd").make(teacher, None, temp=2.0)
    with pytest.raises(ValueError, match=r"kd option 'weight' must be a number in \(0, 1\], got 1.5"):
        get_term("kd").make(teacher, None, weight=1.5)
    terms = terms_from_options(["hint", "kd"], teacher, {"1": "1"}, {"kd_weight": 0.5, "hint_weight": None})
    assert [type(t) for t in terms] == [Hint, KD] and terms[1].weight == 0.5 and terms[0].weight == 1.0
    assert terms[0].pairs == {"1": "1"}
    ns = argparse.Namespace(kd_temperature=3.0, kd_weight=0.2)
    assert term_options(ns, ["kd", "prior"]) == {"kd_temperature": 3.0, "kd_weight": 0.2, "kd_calibration": "none",
                                                     "kd_likelihood": "share"}
    assert term_options({}, ["pkt"]) == {"pkt_weight": 1.0, "pkt_normalize": "uniform"}


def test_term_options_check_their_values():
    o = TermOption("weight", float, 0.9, "a weight", range="(0, 1]")
    assert o.check(1) == 1.0 and o.check("0.5") == 0.5 and o.describe() == "a number in (0, 1]"
    for bad in (0.0, 1.01, math.nan, math.inf, "x", True):
        with pytest.raises(ValueError, match=r"must be a number in \(0, 1\]"):
            o.check(bad)
    n = TermOption("layers", int, 2, "layers", range="[1, 8]")
    assert n.check(3.0) == 3
    with pytest.raises(ValueError):
        n.check(2.5)
    c = TermOption("kind", str, "mlp", "regressor", choices=("mlp", "linear"))
    assert c.check("linear") == "linear" and c.describe() == "one of mlp, linear"
    with pytest.raises(ValueError, match="one of mlp, linear"):
        c.check("deep")
    with pytest.raises(ValueError, match="interval"):
        TermOption("w", float, 1.0, range="0..1")
    with pytest.raises(ValueError, match="the default must be"):
        TermOption("w", float, 0.0, range="(0, 1]")
    with pytest.raises(TypeError, match="float, int or str"):
        TermOption("w", list)


def test_register_term_refuses_bad_registrations():
    with pytest.raises(ValueError, match="already registered"):
        register_term("kd")(type("Other", (DistillTerm,), {}))
    with pytest.raises(ValueError, match="lower-case"):
        register_term("My-Term")
    with pytest.raises(TypeError, match="subclass of bd.infer.Term"):
        register_term("notaterm")(int)
    with pytest.raises(ValueError, match="repeat"):
        register_term("twice", options=[TermOption("w"), TermOption("w")])
    assert "notaterm" not in TERMS and "twice" not in TERMS
    with pytest.raises(KeyError):
        unregister_term("notaterm")

    @register_term("broken", build=lambda teacher, pairs: [torch.nn.Linear(2, 2)])
    class Broken(DistillTerm):
        """A term whose factory returns a module that is no term."""

    try:
        with pytest.raises(TypeError, match="returned \\['Linear'\\]"):
            get_term("broken").make(None, None)
    finally:
        unregister_term("broken")


def test_the_cli_flags_are_generated_from_the_registry():
    parser = argparse.ArgumentParser()
    add_term_options(parser)
    args = parser.parse_args(["--kd-temperature", "2", "--vid-weight", "0.3"])
    assert args.kd_temperature == 2.0 and args.vid_weight == 0.3 and args.pkt_weight == 1.0
    assert term_options(args) == {**term_defaults(), "kd_temperature": 2.0, "vid_weight": 0.3}
    assert cli.METHODS == ("prior", *available_terms())
    assert cli.FUNCTION_SPACE_DEFAULTS == term_defaults()


# ----------------------------------------------------------------------------- a new term: the proof
@pytest.fixture
def toyterm():
    """A toy term registered for one test (and unregistered afterwards): nothing else is edited."""

    @register_term("toyterm", options=[TermOption("scale", float, 2.0, "multiplies the squared logit gap",
                                                  range="(0, inf)")])
    class ToyTerm(DistillTerm):
        """A toy term: minus scale times the mean squared gap between student and teacher logits."""

        def __init__(self, teacher, scale: float = 2.0, weight: float = 1.0):
            super().__init__(teacher, weight, "toyterm")
            self.scale = scale

        def log_factor(self, s_out, s_feats, t_out, t_feats):
            return -self.scale * (s_out - t_out).square().mean(-1)

    yield ToyTerm
    unregister_term("toyterm")


def test_a_registered_toy_term_trains_with_fit_and_is_plotted(toyterm):
    x, y = toy_classification(32)
    teacher = tiny_mlp(hidden=8, seed=1)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
    term = toyterm(teacher, scale=0.5)
    result = bd.fit(student, (x, y), epochs=3, batch_size=8, lr=0.02, progress=False, distill=[term])
    losses = result.column("distill/toyterm/loss")
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    # the column is the mean over the epoch's steps of -log_factor, before the weight
    assert set(k for k in result.history[-1] if k.startswith("distill/")) == {"distill/toyterm/loss"}
    fig = bd.plots.elbo(result)
    assert len(fig.axes) == 3  # ELBO, NLL and KL, and the terms' panel
    panel = fig.axes[2]
    assert [line.get_label() for line in panel.lines] == ["toyterm"]
    assert list(panel.lines[0].get_ydata()) == pytest.approx(losses)


@pytest.fixture(scope="module")
def teacher(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn teacher with 4 channels: 1 epoch on 10 % of MNIST-1D."""
    out = tmp_path_factory.mktemp("toy-teacher")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn", "--channels", "4", "--epochs", "1",
                   "--train-fraction", "0.1", "--num-samples", "2", "--quiet", "--no-checkpoint", "--device", "cpu",
                   "--out", str(out)])
    assert code == 0
    return out / "posterior.pt"


def test_a_registered_toy_term_runs_from_the_command_line(toyterm, teacher: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert "toyterm" in cli.METHODS and cli.FUNCTION_SPACE_DEFAULTS["toyterm_scale"] == 2.0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    assert "--toyterm-scale" in capsys.readouterr().out
    out = tmp_path / "toy"
    assert cli.main(["distill", "--teacher", str(teacher), "--student", "mlp", "--hidden", "8", "--method", "toyterm",
                     "--toyterm-scale", "0.5", *SMALL, "--out", str(out)]) == 0
    with open(out / "history.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert math.isfinite(float(row["distill/toyterm/loss"]))
    fs = json.loads((out / "metrics.json").read_text())["function_space"]
    assert fs["terms"] == ["toyterm"] and fs["settings"] == {"toyterm_scale": 0.5} and fs["pairs"] is None
    assert set(fs["final"]) == {"distill/toyterm/loss"}
    assert (out / "elbo.png").is_file() and not (out / "vid_bounds.png").exists()
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["distill", "--teacher", "t.pt", "--student", "mlp", "--out", "x",
                                       "--toyterm-scale", "0"])
    assert exc.value.code == 2


def test_an_unregistered_term_is_gone():
    """The toy term of the tests above was unregistered by its fixture."""
    assert "toyterm" not in TERMS and "toyterm" not in cli.METHODS
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["distill", "--teacher", "t.pt", "--student", "mlp", "--out", "x",
                                       "--method", "toyterm"])


@pytest.mark.parametrize("name", ["kd", "vid", "pkt", "hint", "tinybert"])
def test_registered_defaults_are_the_classes_defaults(name):
    """A user writing ``VID(teacher)`` gets what ``--method vid`` gets: every registered option's
    default is the class's own default."""
    import inspect

    spec = get_term(name)
    params = inspect.signature(spec.cls.__init__).parameters
    for o in spec.options:
        assert params[o.name].default == o.default, (name, o.name)
